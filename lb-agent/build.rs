//! Builds the XDP object (`lb-ebpf`, on nightly, for the BPF target) into OUT_DIR, where
//! `dataplane` embeds it with `include_bytes_aligned!`.
//!
//! aya-build passes everything the nested cargo says on as cargo warnings, its progress lines
//! (`Compiling ..`, `Finished ..`) included, so every build of the agent would show them. It
//! runs in a child process (this script again, with [`EBPF_BUILD`] set) whose output is held
//! back: directives pass through, progress shows only when the eBPF build fails, and anything
//! else (the compiler's warnings) always shows.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::Context as _;

/// Set for the child process that runs aya-build.
const EBPF_BUILD: &str = "LB_AGENT_EBPF_BUILD";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Check-only builds (clippy, docs, helper crates) need no BPF toolchain: an empty
        // object compiles, and loading it fails with a clear error at run time.
        fs::write(out_dir.join("lb-ebpf"), []).context("write stub object")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    if env::var_os(EBPF_BUILD).is_some() {
        return build_ebpf();
    }
    let script = env::current_exe().context("finding the build script")?;
    let child = Command::new(&script)
        .env(EBPF_BUILD, "1")
        // Its error becomes this script's: one backtrace is enough.
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let failed = !child.status.success();
    for line in String::from_utf8_lossy(&child.stdout).lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(warning) if !failed && is_progress(warning) => {}
            _ => println!("{line}"),
        }
    }
    if failed {
        let stderr = String::from_utf8_lossy(&child.stderr);
        let error = stderr.trim().trim_start_matches("Error: ");
        anyhow::bail!(
            "building the eBPF program failed ({}): {error}",
            child.status
        );
    }
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

/// A cargo status line: a capitalised verb right-aligned in 12 columns, then a space
/// (`   Compiling lb-ebpf v0.1.0`, `    Finished ..`).
fn is_progress(line: &str) -> bool {
    let Some((verb, rest)) = line.split_at_checked(12) else {
        return false;
    };
    let word = verb.trim_start();
    rest.starts_with(' ')
        && word.len() < 12
        && word.starts_with(|c: char| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_alphabetic())
}
