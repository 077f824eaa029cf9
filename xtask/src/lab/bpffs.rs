//! The lab's own BPF filesystem, `/tmp/lab-NAME/bpffs`: where its pass program's link and its
//! agents' pins live. `ip netns exec` gives each command a fresh `/sys`, so pins in
//! `/sys/fs/bpf` die with the process that made them; pins here outlive it, as on a real host,
//! until the lab unmounts it (which detaches whatever they held).

use std::{os::unix::fs::MetadataExt as _, path::Path, process::Command};

use anyhow::Context as _;

/// Mounts a BPF filesystem on `path` (created if missing).
pub fn mount(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let out = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(path)
        .output()
        .context("running mount")?;
    anyhow::ensure!(
        out.status.success(),
        "mount -t bpf bpf {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Unmounts `path` lazily (a process may still hold a pin open), if something is mounted
/// there.
pub fn unmount(path: &Path) {
    if is_mount_point(path) {
        let _ = Command::new("umount").arg("-l").arg(path).output();
    }
}

/// Whether `path` is a mount point: it lies on another device than its parent.
fn is_mount_point(path: &Path) -> bool {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(path), path.parent().and_then(dev)) {
        (Some(own), Some(parent)) => own != parent,
        _ => false,
    }
}
