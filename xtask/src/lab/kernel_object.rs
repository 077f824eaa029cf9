//! Where the lab finds the kernel crate's object (`lb-ebpf`, holding the `pass` program it
//! attaches). xtask must build before bpf-linker exists (`cargo xtask setup` installs it), so
//! it cannot depend on `lb-agent`, whose build script compiles the object; instead it asks
//! cargo to build the agent (a no-op when it is fresh) and takes the object from the build
//! script's `out_dir`, which cargo reports with `--message-format=json`. A runner that has
//! built it already (`cargo xtask test`) hands the path to its test processes in
//! `LB_EBPF_OBJECT`, so they need not ask cargo at all.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

use super::command::run_command;

/// A fresh machine compiles the agent and the kernel crate from scratch: minutes.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The object found by the first caller in this process; later labs reuse it.
static OBJECT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Where a runner that built the object tells the processes it starts (see the module doc).
pub const OBJECT_ENV: &str = "LB_EBPF_OBJECT";

/// The path of the kernel object the agent embeds (`cargo build -p lb-agent`'s): the one
/// `LB_EBPF_OBJECT` names, else built if needed, once per process.
pub fn lb_ebpf_object() -> anyhow::Result<PathBuf> {
    // Held while building, so concurrent labs wait for one build instead of racing.
    let mut found = OBJECT
        .lock()
        .map_err(|_| anyhow!("the kernel object's lock is poisoned"))?;
    if let Some(path) = &*found {
        return Ok(path.clone());
    }
    let path = match std::env::var_os(OBJECT_ENV) {
        Some(path) => PathBuf::from(path),
        None => build_object()?,
    };
    check_object(&path)?;
    *found = Some(path.clone());
    Ok(path)
}

fn build_object() -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "-p", "lb-agent", "--message-format=json"])
        .current_dir(&workspace);
    // Under `cargo test` or `cargo run` this process carries its own package's CARGO_PKG_*
    // and CARGO_MANIFEST_*; some dependencies' builds track them, so passing them on would
    // make cargo rebuild those (and the agent) unlike a plain `cargo build -p lb-agent`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key == "CARGO_CRATE_NAME"
            || key == "CARGO_PRIMARY_PACKAGE"
        {
            cargo.env_remove(key.as_ref());
        }
    }
    let messages = run_command(cargo, BUILD_TIMEOUT).context("building lb-agent")?;
    let out_dir = agent_out_dir(&messages)
        .context("cargo reported no build-script run of lb-agent (no `out_dir`)")?;
    Ok(out_dir.join("lb-ebpf"))
}

/// Fails unless `object` is a real object (the build script writes an empty stub under
/// AYA_BUILD_SKIP).
fn check_object(object: &Path) -> anyhow::Result<()> {
    let size = std::fs::metadata(object)
        .with_context(|| format!("reading {}", object.display()))?
        .len();
    if size == 0 {
        bail!(
            "{} is an empty stub (built with AYA_BUILD_SKIP): rebuild lb-agent without it",
            object.display()
        );
    }
    Ok(())
}

/// The `out_dir` of lb-agent's build script in cargo's JSON messages (one per line).
fn agent_out_dir(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "build-script-executed")
        .find(|m| m["package_id"].as_str().is_some_and(is_agent_package))
        .and_then(|m| m["out_dir"].as_str().map(PathBuf::from))
}

/// Whether a cargo package id is lb-agent's, in either of cargo's spellings:
/// `path+file:///…/lb-agent#0.1.0` (1.77+) or `lb-agent 0.1.0 (path+file:///…)`.
fn is_agent_package(id: &str) -> bool {
    id.starts_with("lb-agent ")
        || id
            .split('#')
            .next()
            .is_some_and(|url| url.ends_with("/lb-agent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_build_script_out_dir_is_found_among_other_messages() {
        let messages = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/lb-common#0.1.0"}
{"reason":"build-script-executed","package_id":"registry+https://github.com/rust-lang/crates.io-index#libc@0.2.1","out_dir":"/t/build/libc-1/out"}
{"reason":"build-script-executed","package_id":"path+file:///w/lb-agent#0.1.0","out_dir":"/t/build/lb-agent-2/out"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            agent_out_dir(messages),
            Some(PathBuf::from("/t/build/lb-agent-2/out"))
        );
        assert!(is_agent_package("lb-agent 0.1.0 (path+file:///w/lb-agent)"));
        assert!(!is_agent_package("path+file:///w/not-lb-agent#0.1.0"));
    }
}
