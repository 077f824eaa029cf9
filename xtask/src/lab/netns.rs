//! Named network namespaces (`/run/netns/NAME`) and the `ip` command: the one helper the lab
//! and the integration tests' test bed build their namespaces with.
//!
//! `NetNs` is an RAII guard (after aya's `NetNsGuard`): the namespace goes on drop, with
//! whatever still runs inside it. `Inside` moves the current thread into a namespace until it
//! drops; `run_inside` does the same on a thread of its own, for calls (netlink, bpf links)
//! that act on the caller's namespace.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use super::command::run_command;

/// How long one `ip` call may take.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// `ip ARGS` in the caller's namespace, at most 30 s; its stdout.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_command(cmd, IP_TIMEOUT)
}

/// The names of the named network namespaces (`ip netns list`).
pub fn list() -> anyhow::Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Kills whatever still runs in `ns` (at most 5 s to die), then deletes it: a process keeps
/// its namespace, and so its interfaces, alive after `ip netns del`.
pub fn delete(ns: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = ip(&["netns", "pids", ns])?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!("processes {pids:?} in {ns} survived SIGKILL for 5 s");
        }
        for pid in pids {
            // SAFETY: kill(2) has no memory effects; `pid` runs inside the namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ip(&["netns", "del", ns]).map(|_| ())
}

/// A named network namespace, deleted on drop (see `delete`) unless `keep`.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` with `lo` up; a leftover of the same name (a crashed earlier
    /// run) is deleted first.
    pub fn create(name: &str) -> anyhow::Result<NetNs> {
        if list()?.iter().any(|ns| ns == name) {
            delete(name).with_context(|| format!("removing the leftover namespace {name}"))?;
        }
        ip(&["netns", "add", name])?;
        // From here on the guard removes it, also when the next step fails.
        let ns = NetNs {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`, at most 30 s; its stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_command(cmd, IP_TIMEOUT)
    }

    /// `ip netns exec NAME ARGS`, at most 30 s; its stdout.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        run_command(cmd, IP_TIMEOUT)
    }

    /// Leaves the namespace in place after this guard is gone (`cargo xtask lab up`).
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("namespace {}: {e:#}", self.name);
        }
    }
}

/// The current thread inside a named namespace; back where it was on drop.
#[derive(Debug)]
pub struct Inside {
    original: File,
}

impl Inside {
    /// Moves the current thread into namespace `ns`.
    pub fn enter(ns: &str) -> anyhow::Result<Inside> {
        let original =
            File::open("/proc/thread-self/ns/net").context("opening this thread's namespace")?;
        let target = File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening namespace {ns}"))?;
        set_thread_netns(&target).with_context(|| format!("entering namespace {ns}"))?;
        Ok(Inside { original })
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Err(e) = set_thread_netns(&self.original) {
            eprintln!("returning to the original namespace: {e:#}");
        }
    }
}

/// Runs `f` on a thread of its own inside namespace `ns` (interface names, netlink sockets
/// and bpf links resolve in the namespace of the thread that makes them); its result.
pub fn run_inside<T: Send>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let _inside = Inside::enter(ns)?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("the thread working in namespace {ns} panicked"))?
    })
}

fn set_thread_netns(ns: &File) -> anyhow::Result<()> {
    // SAFETY: setns(2) on an open namespace file; it changes only this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
