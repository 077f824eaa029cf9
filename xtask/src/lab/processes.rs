//! The processes a lab runs in its hosts: commands run to completion under a timeout, and
//! background processes with a log file each, killed when the lab goes.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use super::{
    Host, Lab,
    command::{describe, kill_and_reap, run_command},
};

/// How long `Lab::run` lets a command run before killing it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A process started with `Lab::spawn`.
struct Spawned {
    child: Child,
    log: PathBuf,
}

/// The background processes of a lab.
#[derive(Default)]
pub(super) struct Processes(Mutex<Vec<Spawned>>);

impl Processes {
    fn lock(&self) -> anyhow::Result<MutexGuard<'_, Vec<Spawned>>> {
        self.0.lock().map_err(|_| {
            anyhow!("the lab's process list is poisoned (a thread panicked holding it)")
        })
    }

    /// Kills and reaps every one (at most 5 s each), reporting those that would not die.
    pub(super) fn kill_all(&self, lab: &str) {
        // A poisoned lock still holds the children; kill them all the same.
        let mut processes = match self.0.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        for spawned in processes.iter_mut() {
            if let Err(e) = kill_and_reap(&mut spawned.child, Duration::from_secs(5)) {
                eprintln!("lab {lab}: {e:#}");
            }
        }
    }
}

impl Lab {
    /// `ip netns exec NS program`, for the caller to add arguments to and run.
    pub fn cmd(&self, host: &Host, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.ns, program]);
        cmd
    }

    /// Runs `args` in `host` to completion, killed after `RUN_TIMEOUT`; its stdout, or an
    /// error naming the command with its stderr.
    pub fn run(&self, host: &Host, args: &[&str]) -> anyhow::Result<String> {
        self.run_with_timeout(host, args, RUN_TIMEOUT)
    }

    /// `run` with a timeout of the caller's.
    pub fn run_with_timeout(
        &self,
        host: &Host,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let (program, rest) = args.split_first().context("an empty command")?;
        let mut cmd = self.cmd(host, program);
        cmd.args(rest);
        run_command(cmd, timeout)
    }

    /// Starts `args` in `host` in the background with stdout and stderr to a log file (read
    /// with `log`); the process is killed on drop. Returns its pid.
    pub fn spawn(&self, host: &Host, args: &[&str]) -> anyhow::Result<u32> {
        self.spawn_as(
            host,
            args,
            self.cmd(host, args.first().copied().unwrap_or_default()),
        )
    }

    /// Kills and reaps every process `spawn` started (the lab does it when it goes).
    pub fn stop_processes(&self) {
        self.processes.kill_all(&self.name);
    }

    /// As `spawn`, in `host`'s network namespace only (`nsenter --net`): the process keeps
    /// the machine's mount namespace, so what it mounts or names (`ip netns add`, cgroups,
    /// bpffs) is the machine's, as for an agent run by a service manager; `ip netns exec`
    /// gives each process a mount namespace of its own instead.
    pub fn spawn_in_host_mounts(&self, host: &Host, args: &[&str]) -> anyhow::Result<u32> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", host.ns));
        cmd.arg(args.first().copied().unwrap_or_default());
        self.spawn_as(host, args, cmd)
    }

    fn spawn_as(&self, host: &Host, args: &[&str], mut cmd: Command) -> anyhow::Result<u32> {
        let (program, rest) = args.split_first().context("an empty command")?;
        let mut processes = self.processes.lock()?;
        let base = Path::new(program)
            .file_name()
            .map_or_else(|| program.to_string(), |b| b.to_string_lossy().into_owned());
        let log = self
            .log_dir
            .join(format!("{:02}-{}-{base}.log", processes.len(), host.role));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.args(rest)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", describe(&cmd)))?;
        let pid = child.id();
        processes.push(Spawned { child, log });
        Ok(pid)
    }

    /// Whether a process started with `spawn` still runs.
    pub fn is_running(&self, pid: u32) -> bool {
        let Ok(mut processes) = self.processes.lock() else {
            return false;
        };
        processes
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Waits until a process started with `spawn` has ended, at most `timeout`.
    pub fn wait_ended(&self, pid: u32, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.is_running(pid) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "process {pid} still runs after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills a process started with `spawn` and waits for it (at most 5 s).
    pub fn stop(&self, pid: u32) -> anyhow::Result<()> {
        let mut processes = self.processes.lock()?;
        let spawned = processes
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .with_context(|| format!("{pid} is not a process of lab {}", self.name))?;
        kill_and_reap(&mut spawned.child, Duration::from_secs(5))
    }

    /// The log file of a process started with `spawn`.
    pub fn log_path(&self, pid: u32) -> Option<PathBuf> {
        let processes = self.processes.lock().ok()?;
        processes
            .iter()
            .find(|p| p.child.id() == pid)
            .map(|p| p.log.clone())
    }

    /// What a process started with `spawn` has written so far (stdout and stderr).
    pub fn log(&self, pid: u32) -> anyhow::Result<String> {
        let path = self
            .log_path(pid)
            .with_context(|| format!("{pid} is not a process of lab {}", self.name))?;
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Waits (at most `timeout`) until a socket listens on TCP `port` in `host`.
    pub fn wait_tcp_listening(
        &self,
        host: &Host,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.wait_socket(host, "-Hltn", port, timeout)
            .with_context(|| format!("nothing listens on TCP port {port} in {}", host.ns))
    }

    /// Waits (at most `timeout`) until a socket is bound to UDP `port` in `host`.
    pub fn wait_udp_bound(&self, host: &Host, port: u16, timeout: Duration) -> anyhow::Result<()> {
        self.wait_socket(host, "-Hlun", port, timeout)
            .with_context(|| format!("nothing is bound to UDP port {port} in {}", host.ns))
    }

    fn wait_socket(
        &self,
        host: &Host,
        ss_flags: &str,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let filter = format!("sport = :{port}");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let sockets = self.run_with_timeout(
                host,
                &["ss", ss_flags, &filter],
                remaining.max(Duration::from_secs(1)),
            )?;
            if !sockets.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("gave up after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
