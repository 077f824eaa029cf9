//! Installs what the project needs, and only what is missing: seconds when all is there.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Commands the lab, tests and benchmarks run, and the Debian package of each.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iperf3", "iperf3"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    ("ss", "iproute2"),
    ("python3", "python3"),
    ("nft", "nftables"),
    ("systemd-analyze", "systemd"),
    ("mount", "mount"),
    // The L7 lab tests' clients and `bench l7`'s load generators, peers and certificate.
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("h2load", "nghttp2-client"),
    ("wrk", "wrk"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx"),
];

/// Python modules the tests use, and the Debian package of each.
const PYTHON_MODULES: &[(&str, &str)] = &[
    // The Prometheus project's own text-format parser checks `/metrics`.
    ("prometheus_client", "python3-prometheus-client"),
];

/// bpf-linker release built and tested with this project.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_python_module(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// Everything `demo`, `test` and `bench` need.
pub fn setup() -> anyhow::Result<()> {
    debian_packages()?;
    nightly()?;
    bpf_linker()
}

fn debian_packages() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.extend(
        PYTHON_MODULES
            .iter()
            .filter(|(module, _)| !have_python_module(module))
            .map(|(_, pkg)| *pkg),
    );
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    anyhow::ensure!(
        status.success(),
        "apt-get install {} failed",
        missing.join(" ")
    );
    Ok(())
}

fn nightly() -> anyhow::Result<()> {
    let toolchains = run("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain (the XDP program needs it)");
        run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let components = run(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to nightly (to build core for the BPF target)");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

/// bpf-linker must use the same LLVM as nightly's rustc: it is built against nightly's own
/// libLLVM through a prefix folder holding links to it. The folder must outlive the build:
/// bpf-linker's rpath points into it and finds libLLVM there by its file name.
fn bpf_linker() -> anyhow::Result<()> {
    let version = run("rustc", &["+nightly", "-vV"])?;
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV does not name its LLVM")?;
    let major = llvm.split('.').next().unwrap_or(llvm).trim().to_owned();
    let sysroot = run("rustc", &["+nightly", "--print", "sysroot"])?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        })
        .with_context(|| format!("no libLLVM.so.{major}* in {}", lib.display()))?;
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let prefix = home.join(".local/share/lb-llvm").join(&major);
    std::fs::create_dir_all(prefix.join("lib"))?;
    let file_name = libllvm.file_name().context("libLLVM has no file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), file_name] {
        let link = prefix.join("lib").join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(libllvm.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&libllvm, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    let linker = cargo_bin().join("bpf-linker");
    let works = || {
        Command::new(&linker)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if linker.exists() && works() {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (a few minutes, once)"
    );
    let feature = format!("llvm-{major}");
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &feature,
            "--force",
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    anyhow::ensure!(status.success(), "cargo install bpf-linker failed");
    anyhow::ensure!(
        works(),
        "{} still does not run after installing it",
        linker.display()
    );
    Ok(())
}
