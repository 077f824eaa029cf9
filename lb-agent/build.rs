//! Builds the XDP object (`lb-ebpf`, on nightly, for the BPF target) into OUT_DIR, where
//! `dataplane` embeds it with `include_bytes_aligned!`.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

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
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
