//! Running `lb-agent` inside a lab: start it in the load-balancer namespace, wait until it
//! serves its control socket, and talk to it through its own CLI (as an operator would).
//! Its answers are read as the agent's typed views by the tests crate (`tests::agent_views`),
//! which can depend on `lb-agent`; xtask cannot (its build script needs bpf-linker, which
//! `cargo xtask setup` installs).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::lab::Lab;

/// An agent started in a lab's load-balancer namespace; the lab stops it on drop.
pub struct LabAgent {
    binary: PathBuf,
    socket: PathBuf,
    pid: u32,
}

impl LabAgent {
    /// Starts `binary run --config CONFIG --iface eth0` in the lab's LB namespace, pinned in
    /// the lab's BPF filesystem, and waits (at most 30 s) until its control socket answers. A
    /// second start in the same lab adopts what the first left pinned.
    pub fn start(lab: &Lab, binary: &Path, config: &Path) -> anyhow::Result<Self> {
        Self::start_on(lab, binary, config, &["eth0"])
    }

    /// As `start`, attached to each of `ifaces` of the LB node.
    pub fn start_on(
        lab: &Lab,
        binary: &Path,
        config: &Path,
        ifaces: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(lab, binary, config, ifaces, false)
    }

    /// As `start`, in the machine's mount namespace (`Lab::spawn_in_host_mounts`): the
    /// auto scaling groups' `local` instances (their `ip netns` names, cgroups) are then the
    /// machine's, and a restarted agent finds them.
    pub fn start_in_host_mounts(lab: &Lab, binary: &Path, config: &Path) -> anyhow::Result<Self> {
        Self::start_with(lab, binary, config, &["eth0"], true)
    }

    fn start_with(
        lab: &Lab,
        binary: &Path,
        config: &Path,
        ifaces: &[&str],
        host_mounts: bool,
    ) -> anyhow::Result<Self> {
        // In the lab's directory, which goes with the lab.
        let socket = lab.log_dir().join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let pin_dir = lab.bpffs()?.join("lb-agent");
        // JSON logs: tests read them as the structured events they are.
        let mut args = vec![
            binary.to_str().context("agent path is not UTF-8")?,
            "--log-format",
            "json",
            "run",
            "--config",
            config.to_str().context("config path is not UTF-8")?,
            "--socket",
            socket.to_str().context("socket path is not UTF-8")?,
            "--pin-dir",
            pin_dir.to_str().context("pin path is not UTF-8")?,
        ];
        for iface in ifaces {
            args.extend(["--iface", iface]);
        }
        let pid = if host_mounts {
            lab.spawn_in_host_mounts(lab.lb(), &args)?
        } else {
            lab.spawn(lab.lb(), &args)?
        };
        let agent = Self {
            binary: binary.to_owned(),
            socket,
            pid,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.cli(&["stats", "--json"]).is_ok() {
                return Ok(agent);
            }
            if !lab.is_running(pid) {
                bail!(
                    "lb-agent exited; its log:\n{}",
                    lab.log(pid).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "lb-agent did not serve {} within 30 s; its log:\n{}",
                    agent.socket.display(),
                    lab.log(pid).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Runs `lb-agent ARGS --socket SOCKET` (a control-socket client) and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.binary)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .context("running lb-agent")?;
        if !out.status.success() {
            bail!(
                "lb-agent {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
