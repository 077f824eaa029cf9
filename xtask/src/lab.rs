//! The namespace lab: a client, the load-balancer node and N backends on one bridge, like a
//! cloud load balancer's one-arm set-up. Built from 198.18.0.0/15 and fd00:198:18::/48 only.
//!
//! ```text
//!   P-cl (client)       198.18.0.10   fd00:198:18::10   routes 198.18.1.0/24, fd00:198:18:1::/64 via the LB
//!   P-lb (LB node)      198.18.0.1    fd00:198:18::1    the XDP program runs on its eth0
//!   P-bN (backend N)    198.18.0.2N   fd00:198:18::2N   (b10 is 198.18.0.30, fd00:198:18::30)
//!   P-sw                bridge br0 joining every host's veth peer; the peer is named after the
//!                       host's role (`cl`, `lb`, `b1`, ...)
//! ```
//!
//! `Lab` is an RAII guard: dropping it (also while a test panics) kills the processes it
//! started and deletes its namespaces.

use std::{
    ffi::CString,
    fs::File,
    io::Read as _,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

/// The IPv4 VIP the lab's client reaches through the load balancer (nothing configures it on a
/// host; the client routes 198.18.1.0/24 to the LB node).
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
/// The IPv6 VIP (the client routes fd00:198:18:1::/64 to the LB node).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 0x100);

/// The most backends a lab has: their addresses end in .21 ..= .120.
pub const MAX_BACKENDS: usize = 100;

/// How long `Lab::run` lets a command run before killing it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Prefix of every namespace: 1-32 of `[A-Za-z0-9-]`, unique on this machine
    /// (`Lab::unique_name`).
    pub name: String,
    /// Number of backends, 1..=`MAX_BACKENDS`.
    pub backends: usize,
}

/// One host of the lab: a namespace with one interface, `eth0`, on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its network namespace, `{lab}-{role}`.
    pub ns: String,
    /// Short name: `cl`, `lb`, `b1`, ...; also the name of its bridge port in the switch
    /// namespace, and what a backend's servers answer with.
    pub role: String,
    /// The IPv4 address of its `eth0`.
    pub v4: Ipv4Addr,
    /// The IPv6 address of its `eth0`.
    pub v6: Ipv6Addr,
}

/// A process started with `Lab::spawn`.
struct Spawned {
    child: Child,
    log: PathBuf,
}

/// A running lab; removed on drop unless `leak`ed.
pub struct Lab {
    name: String,
    client: Host,
    lb: Host,
    backends: Vec<Host>,
    /// Namespaces created so far, in order; a half-built lab removes exactly these.
    namespaces: Vec<String>,
    processes: Mutex<Vec<Spawned>>,
    log_dir: PathBuf,
    /// A BPF filesystem mounted for the lab's agents (see `bpffs`).
    bpffs: Mutex<Option<PathBuf>>,
    keep: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A lab name unique on this machine while this process lives: `l`, up to 4 letters of
    /// `tag`, the process id, `s`, a per-process sequence number (e.g. `ldemo4711s0`). Letters
    /// and digits only, so `down` of one lab never matches another's namespaces.
    pub fn unique_name(tag: &str) -> String {
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphabetic)
            .take(4)
            .collect();
        format!(
            "l{tag}{}s{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Builds the lab (removing leftovers of an earlier lab with the same name first). On
    /// failure, whatever was built is removed before the error returns.
    pub fn up(spec: LabSpec) -> anyhow::Result<Lab> {
        validate_name(&spec.name)?;
        anyhow::ensure!(
            (1..=MAX_BACKENDS).contains(&spec.backends),
            "a lab has 1..={MAX_BACKENDS} backends, not {}",
            spec.backends
        );
        let (client, lb, backends) = plan_hosts(&spec.name, spec.backends);
        let mut lab = Lab {
            name: spec.name.clone(),
            client,
            lb,
            backends,
            namespaces: Vec::new(),
            processes: Mutex::new(Vec::new()),
            bpffs: Mutex::new(None),
            log_dir: std::env::temp_dir().join(format!("lab-{}", spec.name)),
            keep: false,
        };
        // Leftovers of an earlier run with this name would make `ip netns add` fail.
        Lab::down(&spec.name).context("removing a stale lab of the same name")?;
        // On error `lab` drops here, which deletes what `build` made.
        lab.build()
            .with_context(|| format!("building lab {}", spec.name))?;
        Ok(lab)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.log_dir)
            .with_context(|| format!("creating {}", self.log_dir.display()))?;
        let sw = self.switch_ns();
        self.add_namespace(&sw)?;
        ip(&["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        // br_netfilter is built into this kernel and on by default: it would validate bridged
        // IP (malformed test frames would never reach the XDP program) and run it through
        // iptables.
        in_ns(
            &sw,
            &[
                "sysctl",
                "-qw",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        )?;
        let hosts: Vec<Host> = [self.client.clone(), self.lb.clone()]
            .into_iter()
            .chain(self.backends.iter().cloned())
            .collect();
        for host in &hosts {
            self.add_host(host)
                .with_context(|| format!("setting up {}", host.ns))?;
        }
        let client = &self.client.ns;
        ip(&[
            "-n",
            client,
            "route",
            "add",
            "198.18.1.0/24",
            "via",
            &self.lb.v4.to_string(),
        ])?;
        ip(&[
            "-n",
            client,
            "-6",
            "route",
            "add",
            "fd00:198:18:1::/64",
            "via",
            &self.lb.v6.to_string(),
        ])?;
        // Frames the LB sends with XDP_TX are dropped by its veth peer (`xdp_tx_errors`)
        // unless the peer runs an XDP program (measured on this machine): give the LB's bridge
        // port a pass-only one.
        let port = &self.lb.role;
        let pass = load_pass_program()?;
        attach_xdp(&sw, port, pass.as_fd(), XdpMode::Driver)
            .with_context(|| format!("attaching the pass program to {port} in {sw}"))?;
        match xdp_attachment(&sw, port)? {
            Some(a) if a.mode == XdpMode::Driver => Ok(()),
            other => bail!("{port} in {sw} should run the pass program natively, has {other:?}"),
        }
    }

    fn add_namespace(&mut self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A namespace with `eth0` on the bridge, addressed and stripped of offloads.
    fn add_host(&mut self, host: &Host) -> anyhow::Result<()> {
        let (ns, sw, port) = (host.ns.as_str(), self.switch_ns(), host.role.as_str());
        self.add_namespace(ns)?;
        // Before eth0 exists, so it inherits `default`: addresses usable at once, also the
        // link-local one neighbour discovery uses.
        in_ns(
            ns,
            &[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &sw,
        ])?;
        ip(&["-n", &sw, "link", "set", port, "master", BRIDGE, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", host.v4),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/64", host.v6),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        // An XDP program must see whole frames with real checksums: no checksum offload (a
        // veth would otherwise pass CHECKSUM_PARTIAL frames), no TSO/GSO super-frames, no GRO.
        for (ns, dev) in [(ns, "eth0"), (sw.as_str(), port)] {
            in_ns(
                ns,
                &[
                    "ethtool", "-K", dev, "rx", "off", "tx", "off", "tso", "off", "gso", "off",
                    "gro", "off",
                ],
            )?;
        }
        Ok(())
    }

    /// The lab's name (the prefix of its namespaces).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace holding the bridge; each host's bridge port there is named after its role.
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.name)
    }

    /// The client.
    pub fn client(&self) -> &Host {
        &self.client
    }

    /// The load-balancer node.
    pub fn lb(&self) -> &Host {
        &self.lb
    }

    /// The backends, b1 first.
    pub fn backends(&self) -> &[Host] {
        &self.backends
    }

    /// Where the logs of spawned processes go (`/tmp/lab-NAME`); removed on drop unless the
    /// thread is panicking (then kept for the post-mortem).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// A BPF filesystem of the lab's own (mounted on first use, unmounted with the lab), for
    /// agents' pin directories. `ip netns exec` gives each command a fresh `/sys`, so pins in
    /// `/sys/fs/bpf` die with the agent's process; pins here outlive it, as on a real host.
    pub fn bpffs(&self) -> anyhow::Result<PathBuf> {
        let mut mounted = self.bpffs.lock().map_err(|_| poisoned())?;
        if let Some(path) = &*mounted {
            return Ok(path.clone());
        }
        let path = self.log_dir.join("bpffs");
        std::fs::create_dir_all(&path)?;
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .output()
            .context("running mount")?;
        anyhow::ensure!(
            out.status.success(),
            "mount -t bpf bpf {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        *mounted = Some(path.clone());
        Ok(path)
    }

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
        let (program, rest) = args.split_first().context("an empty command")?;
        let mut processes = self.processes.lock().map_err(|_| poisoned())?;
        let base = Path::new(program)
            .file_name()
            .map_or_else(|| program.to_string(), |b| b.to_string_lossy().into_owned());
        let log = self
            .log_dir
            .join(format!("{:02}-{}-{base}.log", processes.len(), host.role));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = self.cmd(host, program);
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
        let mut processes = self.processes.lock().map_err(|_| poisoned())?;
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

    /// Keeps the lab, its processes and logs after this value is gone (`cargo xtask lab up`);
    /// `Lab::down` removes it later.
    pub fn leak(mut self) {
        self.keep = true;
    }

    /// Deletes every namespace of lab `name` (`{name}-sw`, `-cl`, `-lb`, `-b1`, ...), killing
    /// the processes still inside them first: a process keeps its namespace, and so the
    /// lab's veths, alive after `ip netns del`.
    pub fn down(name: &str) -> anyhow::Result<()> {
        validate_name(name)?;
        let list = ip(&["netns", "list"])?;
        let mut failures = Vec::new();
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if is_lab_namespace(name, ns)
                && let Err(e) = delete_namespace(ns)
            {
                failures.push(format!("{e:#}"));
            }
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("lab-{name}")));
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("removing lab {name}: {}", failures.join("; "))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // A poisoned lock still holds the children; kill them all the same.
        let mut processes = match self.processes.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        for spawned in processes.iter_mut() {
            if let Err(e) = kill_and_reap(&mut spawned.child, Duration::from_secs(5)) {
                eprintln!("lab {}: {e:#}", self.name);
            }
        }
        drop(processes);
        // Unmounting frees the pins: whatever an agent left attached goes with them.
        let bpffs = match self.bpffs.lock() {
            Ok(b) => b.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(path) = bpffs {
            let _ = Command::new("umount").arg("-l").arg(&path).output();
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = delete_namespace(ns) {
                eprintln!("lab {}: {e:#}", self.name);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "lab {}: logs of its processes kept in {}",
                self.name,
                self.log_dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// Lab names become namespace names and file names; nothing else may get in.
fn validate_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=32).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "lab name `{name}` must be 1-32 of [A-Za-z0-9-]"
    );
    Ok(())
}

/// The client, the LB node and the backends of lab `name`, with their addresses.
fn plan_hosts(name: &str, backends: usize) -> (Host, Host, Vec<Host>) {
    let host = |role: String, last: u8| Host {
        ns: format!("{name}-{role}"),
        role,
        v4: Ipv4Addr::new(198, 18, 0, last),
        v6: Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, decimal_as_hex(last)),
    };
    let backends = (1..=backends.min(MAX_BACKENDS))
        .map(|i| host(format!("b{i}"), 20 + i as u8))
        .collect();
    (host("cl".into(), 10), host("lb".into(), 1), backends)
}

/// 21 → 0x21: an IPv6 address ending in `::21` reads like the IPv4 one ending in `.21`.
fn decimal_as_hex(n: u8) -> u16 {
    let n = u16::from(n);
    ((n / 100) << 8) | ((n / 10 % 10) << 4) | (n % 10)
}

/// Whether namespace `ns` belongs to lab `name`: `{name}-` and a role, exactly, so that lab
/// `a` never claims lab `a-b`'s namespaces (or a test bed's `{name}-7`).
fn is_lab_namespace(name: &str, ns: &str) -> bool {
    let Some(role) = ns.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    match role {
        "sw" | "cl" | "lb" => true,
        _ => role
            .strip_prefix('b')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    }
}

/// Kills whatever still runs in `ns` (at most 5 s to die), then deletes it.
fn delete_namespace(ns: &str) -> anyhow::Result<()> {
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
            // SAFETY: kill(2) has no memory effects; `pid` runs inside the lab's namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ip(&["netns", "del", ns]).map(|_| ())
}

/// SIGKILL, then wait at most `timeout` for the child to be reaped.
fn kill_and_reap(child: &mut Child, timeout: Duration) -> anyhow::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    // Fails only when it has just exited, which the wait below sees.
    let _ = child.kill();
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            bail!("process {} did not die within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn poisoned() -> anyhow::Error {
    anyhow!("the lab's process list is poisoned (a thread panicked holding it)")
}

/// `ip ARGS` in this namespace, at most 30 s.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_command(cmd, Duration::from_secs(30))
}

/// `ip netns exec NS ARGS`, at most 30 s.
fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    run_command(cmd, Duration::from_secs(30))
}

/// Runs `cmd` to completion, killed after `timeout`; its stdout, or an error naming the
/// command with its stderr.
fn run_command(mut cmd: Command, timeout: Duration) -> anyhow::Result<String> {
    let line = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    // Read both pipes while the child runs: one that fills a pipe would never exit.
    let (tx, rx) = mpsc::channel();
    for (stream, pipe) in [
        (
            0,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
        (
            1,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            let _ = tx.send((stream, text));
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            kill_and_reap(&mut child, Duration::from_secs(5))?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A background grandchild may hold the pipes open; do not wait for it past a second.
    let mut output = [Vec::new(), Vec::new()];
    let pipes_deadline = deadline.max(Instant::now()) + Duration::from_secs(1);
    for _ in 0..2 {
        match rx.recv_timeout(pipes_deadline.saturating_duration_since(Instant::now())) {
            Ok((stream, text)) => output[stream] = text,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = output.map(|o| String::from_utf8_lossy(&o).into_owned());
    match status {
        None => bail!(
            "`{line}` did not finish within {timeout:?} (killed); stderr: {}",
            stderr.trim()
        ),
        Some(status) if !status.success() => bail!(
            "`{line}` failed ({status}): {}",
            if stderr.trim().is_empty() {
                stdout.trim()
            } else {
                stderr.trim()
            }
        ),
        Some(_) => Ok(stdout),
    }
}

/// A command line for messages: quoted where needed, long arguments (inline scripts) cut.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            let arg = match arg.char_indices().nth(60) {
                Some((cut, _)) => format!("{}…", &arg[..cut]),
                None => arg.into_owned(),
            };
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", arg.replace('\'', r"'\''").replace('\n', "\\n"))
            } else {
                arg
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How an XDP program is attached to an interface (the kernel's `XDP_ATTACHED_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (native).
    Driver,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded to the NIC.
    Offload,
    /// Several programs in several modes.
    Multi,
}

impl XdpMode {
    /// The `XDP_FLAGS_*_MODE` flag that asks for this mode (`Multi` is a state, not a request).
    fn attach_flag(self) -> anyhow::Result<u32> {
        match self {
            XdpMode::Generic => Ok(1 << 1),
            XdpMode::Driver => Ok(1 << 2),
            XdpMode::Offload => Ok(1 << 3),
            XdpMode::Multi => bail!("attach in one mode: driver, generic or offload"),
        }
    }
}

/// The XDP program attached to an interface, as `ip -d -j link show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpAttachment {
    /// How it is attached.
    pub mode: XdpMode,
    /// The program's id (`bpftool prog show id N`), when reported.
    pub prog_id: Option<u64>,
    /// The program's name, when reported.
    pub prog_name: Option<String>,
}

/// The XDP program on `dev` in namespace `ns`, if any.
pub fn xdp_attachment(ns: &str, dev: &str) -> anyhow::Result<Option<XdpAttachment>> {
    let out = ip(&["-n", ns, "-d", "-j", "link", "show", "dev", dev])?;
    let links: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -j link`: {out}"))?;
    let Some(xdp) = links.get(0).and_then(|l| l.get("xdp")) else {
        return Ok(None);
    };
    let mode = match xdp.get("mode").and_then(serde_json::Value::as_u64) {
        Some(1) => XdpMode::Driver,
        Some(2) => XdpMode::Generic,
        Some(3) => XdpMode::Offload,
        Some(4) => XdpMode::Multi,
        other => bail!("unknown XDP attach mode {other:?} on {dev} in {ns}: {xdp}"),
    };
    let prog = xdp.get("prog");
    Ok(Some(XdpAttachment {
        mode,
        prog_id: prog
            .and_then(|p| p.get("id"))
            .and_then(serde_json::Value::as_u64),
        prog_name: prog
            .and_then(|p| p.get("name"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
    }))
}

/// `union bpf_attr` as `BPF_PROG_LOAD` reads it, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// One eBPF instruction, `struct bpf_insn`, encoded.
fn bpf_insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut insn = [0; 8];
    insn[0] = code;
    insn[1] = (src << 4) | (dst & 0xf);
    insn[2..4].copy_from_slice(&off.to_ne_bytes());
    insn[4..8].copy_from_slice(&imm.to_ne_bytes());
    insn
}

/// Loads the XDP program `r0 = XDP_PASS; exit` (named `lab_xdp_pass`) with bpf(2): no eBPF
/// toolchain needed. The lab gives it to veth peers that must receive XDP_TX frames.
pub fn load_pass_program() -> anyhow::Result<OwnedFd> {
    const BPF_ALU64_MOV_K: u8 = 0x07 | 0xb0;
    const BPF_JMP_EXIT: u8 = 0x05 | 0x90;
    const XDP_PASS: i32 = 2;
    let insns = [
        bpf_insn(BPF_ALU64_MOV_K, 0, 0, 0, XDP_PASS),
        bpf_insn(BPF_JMP_EXIT, 0, 0, 0, 0),
    ];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let name = b"lab_xdp_pass";
    attr.prog_name[..name.len()].copy_from_slice(name);
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute whose pointers (insns, license) live
    // until the call returns; the kernel reads `size_of` bytes of it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut attr as *mut ProgLoadAttr,
            size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("loading the pass-only XDP program (bpf BPF_PROG_LOAD)");
    }
    // SAFETY: bpf(2) returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the XDP program `prog` to `dev` in namespace `ns` with rtnetlink (RTM_SETLINK,
/// IFLA_XDP), from a thread that enters `ns` and leaves it again. The attachment holds its own
/// reference: the program stays after `prog` is closed, until the interface goes.
pub fn attach_xdp(ns: &str, dev: &str, prog: BorrowedFd<'_>, mode: XdpMode) -> anyhow::Result<()> {
    let flags = mode.attach_flag()?;
    let target = File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                let home = File::open("/proc/thread-self/ns/net")
                    .context("opening this thread's namespace")?;
                enter_netns(&target).with_context(|| format!("entering {ns}"))?;
                // The netlink socket and the interface lookup belong to the namespace the
                // thread is in when they are made.
                let attached = set_link_xdp(dev, prog, flags);
                let back = enter_netns(&home).context("returning to the original namespace");
                attached.and(back)
            })
            .join()
            .map_err(|_| anyhow!("the XDP attach thread panicked"))?
    })
}

fn enter_netns(ns: &File) -> anyhow::Result<()> {
    // SAFETY: setns(2) on an open namespace file; it changes only this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Appends a netlink attribute (header, payload, padding to 4 bytes).
fn push_nlattr(msg: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(payload);
    msg.resize(msg.len().next_multiple_of(4), 0);
}

/// RTM_SETLINK { ifindex of `dev`, IFLA_XDP { FD, FLAGS } } in the thread's namespace, and
/// the kernel's answer (with its extended-ack message on error).
fn set_link_xdp(dev: &str, prog: BorrowedFd<'_>, flags: u32) -> anyhow::Result<()> {
    const IFLA_XDP: u16 = 43;
    const IFLA_XDP_FD: u16 = 1;
    const IFLA_XDP_FLAGS: u16 = 3;
    const NLA_F_NESTED: u16 = 1 << 15;
    const NETLINK_CAP_ACK: libc::c_int = 10;
    const NETLINK_EXT_ACK: libc::c_int = 11;
    const NLM_F_CAPPED: u16 = 0x100;
    const NLM_F_ACK_TLVS: u16 = 0x200;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    const SEQ_NO: u32 = 1;

    let c_dev = CString::new(dev)?;
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    let ifindex = unsafe { libc::if_nametoindex(c_dev.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {dev}"));
    }
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("opening an rtnetlink socket");
    }
    // SAFETY: a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let on: libc::c_int = 1;
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // Best effort: without them the error message is poorer; the timeout bounds the recv.
    // SAFETY: setsockopt with pointers to values that outlive the calls, and their sizes.
    unsafe {
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_NETLINK,
                opt,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }

    // struct nlmsghdr (length filled in last), then struct ifinfomsg.
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_SETLINK.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&SEQ_NO.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, pad, ifi_type
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ifi_change
    let mut xdp = Vec::with_capacity(16);
    push_nlattr(&mut xdp, IFLA_XDP_FD, &prog.as_raw_fd().to_ne_bytes());
    push_nlattr(&mut xdp, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    push_nlattr(&mut msg, IFLA_XDP | NLA_F_NESTED, &xdp);
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());

    // SAFETY: send(2) of an initialised buffer; an unbound netlink socket sends to the kernel.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error()).context("sending RTM_SETLINK");
    }
    let mut buf = vec![0u8; 8192];
    // Bounded: a few unrelated messages at most, each recv at most 5 s (SO_RCVTIMEO).
    for _ in 0..8 {
        // SAFETY: recv(2) into a buffer of the given length.
        let got = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(std::io::Error::last_os_error()).context("reading the RTM_SETLINK ack");
        }
        let reply = &buf[..got as usize];
        let mut at = 0;
        while at + 16 <= reply.len() {
            let u32_at =
                |o: usize| u32::from_ne_bytes(reply[o..o + 4].try_into().unwrap_or([0; 4]));
            let u16_at =
                |o: usize| u16::from_ne_bytes(reply[o..o + 2].try_into().unwrap_or([0; 2]));
            let msg_len = u32_at(at) as usize;
            let (kind, msg_flags, seq) = (u16_at(at + 4), u16_at(at + 6), u32_at(at + 8));
            if msg_len < 16 || at + msg_len > reply.len() {
                bail!("malformed rtnetlink reply");
            }
            if kind == libc::NLMSG_ERROR as u16 && seq == SEQ_NO && msg_len >= 20 {
                let errno = -(u32_at(at + 16) as i32);
                if errno == 0 {
                    return Ok(());
                }
                let mut detail = String::new();
                if msg_flags & NLM_F_ACK_TLVS != 0 && msg_len >= 36 {
                    // After the error code: the request's header, and its body unless capped.
                    let mut tlv = at + 20 + 16;
                    if msg_flags & NLM_F_CAPPED == 0 {
                        tlv += (u32_at(at + 20) as usize).saturating_sub(16);
                    }
                    while tlv + 4 <= at + msg_len {
                        let (a_len, a_kind) = (u16_at(tlv) as usize, u16_at(tlv + 2));
                        if a_len < 4 || tlv + a_len > at + msg_len {
                            break;
                        }
                        if a_kind == NLMSGERR_ATTR_MSG {
                            let text = &reply[tlv + 4..tlv + a_len];
                            let text = text.split(|b| *b == 0).next().unwrap_or_default();
                            detail = format!(" ({})", String::from_utf8_lossy(text));
                        }
                        tlv += a_len.next_multiple_of(4);
                    }
                }
                return Err(std::io::Error::from_raw_os_error(errno))
                    .with_context(|| format!("RTM_SETLINK IFLA_XDP on {dev}{detail}"));
            }
            at += msg_len.next_multiple_of(4);
        }
    }
    bail!("no answer to RTM_SETLINK on {dev}")
}

/// The small server every backend runs, dual-stack: on TCP 8080 a greeting with the backend's
/// name (`b1\n`), then an echo of everything received until EOF, a thread per connection; on
/// UDP 7, a reply of the name followed by the datagram.
const BACKEND_SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def serve(c):
    try:
        c.sendall((name + "\n").encode())
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()
def tcp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", 8080))
    s.listen(512)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 7))
    while True:
        d, a = s.recvfrom(65536)
        s.sendto((name + "\n").encode() + d, a)
threading.Thread(target=udp, daemon=True).start()
tcp()
"#;

/// The TCP port of the backends' greet-and-echo server.
pub const ECHO_PORT: u16 = 8080;
/// The UDP port of the backends' greet-and-echo responder.
pub const UDP_ECHO_PORT: u16 = 7;
/// The ports the backends' `iperf3 -s` instances listen on (one test at a time each).
pub const IPERF_PORTS: [u16; 2] = [5201, 5202];
/// The HTTP port of the backends' health endpoint (any path; answer set by `set_health`).
pub const HEALTH_PORT: u16 = 8081;

/// The HTTP server every backend runs on `HEALTH_PORT`, dual-stack. Each request reads the
/// mode file: missing or `200`: 200 OK; a code: that status; `hang`: no answer for 60 s;
/// `alternate`: 200 and 503 by turns.
const HEALTH_SERVER: &str = r#"
import http.server, socket, sys, threading, time
name, mode_file = sys.argv[1], sys.argv[2]
turn = [0]
lock = threading.Lock()
def mode():
    try:
        with open(mode_file) as f:
            return f.read().strip() or "200"
    except OSError:
        return "200"
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body):
        m = mode()
        if m == "hang":
            time.sleep(60)
            return
        if m == "alternate":
            with lock:
                turn[0] += 1
                code = 200 if turn[0] % 2 else 503
        else:
            code = int(m)
        text = (name + " " + str(code) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(text)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(text)
    def do_GET(self):
        self.answer(True)
    def do_HEAD(self):
        self.answer(False)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
Server(("::", 8081), Handler).serve_forever()
"#;

/// What `set_health` makes a backend's health endpoint answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthMode {
    /// Every request gets this status (200: healthy).
    Status(u16),
    /// Requests are accepted and never answered.
    Hang,
    /// 200 and 503 by turns: a flapping target.
    Alternate,
}

/// The system's python3 when there is one: a pyenv shim on PATH costs a shell and pyenv's
/// start-up per process.
pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The pids of the servers `start_backend_servers` started, per backend (in lab order).
#[derive(Debug, Clone)]
pub struct BackendServers {
    /// The greet-and-echo server (TCP `ECHO_PORT`, UDP `UDP_ECHO_PORT`).
    pub echo: Vec<u32>,
}

/// Starts on every backend the greet-and-echo server (TCP `ECHO_PORT`, UDP `UDP_ECHO_PORT`,
/// IPv4 and IPv6), the health endpoint (`HEALTH_PORT`, answering 200) and `iperf3 -s` on
/// each of `IPERF_PORTS`, and waits (at most 10 s each) until they listen.
pub fn start_backend_servers(lab: &Lab) -> anyhow::Result<BackendServers> {
    let mut echo = Vec::new();
    for b in lab.backends() {
        echo.push(lab.spawn(b, &[python3(), "-c", BACKEND_SERVER, &b.role])?);
        let mode_file = health_mode_file(lab, b);
        let mode_file = mode_file.to_str().context("lab directory is not UTF-8")?;
        lab.spawn(b, &[python3(), "-c", HEALTH_SERVER, &b.role, mode_file])?;
        for port in IPERF_PORTS {
            lab.spawn(b, &["iperf3", "-s", "-p", &port.to_string()])?;
        }
    }
    let timeout = Duration::from_secs(10);
    for b in lab.backends() {
        lab.wait_tcp_listening(b, ECHO_PORT, timeout)?;
        lab.wait_udp_bound(b, UDP_ECHO_PORT, timeout)?;
        lab.wait_tcp_listening(b, HEALTH_PORT, timeout)?;
        for port in IPERF_PORTS {
            lab.wait_tcp_listening(b, port, timeout)?;
        }
    }
    Ok(BackendServers { echo })
}

/// Starts `backend`'s greet-and-echo server (again, after a `lab.stop` of it) and waits (at
/// most 10 s) until it listens; its pid.
pub fn start_echo_server(lab: &Lab, backend: &Host) -> anyhow::Result<u32> {
    let pid = lab.spawn(backend, &[python3(), "-c", BACKEND_SERVER, &backend.role])?;
    lab.wait_tcp_listening(backend, ECHO_PORT, Duration::from_secs(10))?;
    Ok(pid)
}

/// Sets what `backend`'s health endpoint answers from its next request on.
pub fn set_health(lab: &Lab, backend: &Host, mode: HealthMode) -> anyhow::Result<()> {
    let text = match mode {
        HealthMode::Status(code) => code.to_string(),
        HealthMode::Hang => "hang".into(),
        HealthMode::Alternate => "alternate".into(),
    };
    let path = health_mode_file(lab, backend);
    // Written whole, then renamed: a request never reads half a mode.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

fn health_mode_file(lab: &Lab, backend: &Host) -> PathBuf {
    lab.log_dir().join(format!("health-{}", backend.role))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces_of(name: &str) -> Vec<String> {
        ip(&["netns", "list"])
            .expect("ip netns list")
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|ns| is_lab_namespace(name, ns))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn backends_are_numbered_from_21_in_both_families() {
        let (client, lb, backends) = plan_hosts("x", 10);
        assert_eq!(client.v6, "fd00:198:18::10".parse::<Ipv6Addr>().unwrap());
        assert_eq!(lb.v4, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(backends[0].ns, "x-b1");
        assert_eq!(backends[0].v4, Ipv4Addr::new(198, 18, 0, 21));
        assert_eq!(
            backends[0].v6,
            "fd00:198:18::21".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(backends[9].v4, Ipv4Addr::new(198, 18, 0, 30));
        assert_eq!(
            backends[9].v6,
            "fd00:198:18::30".parse::<Ipv6Addr>().unwrap()
        );
        let (_, _, most) = plan_hosts("x", MAX_BACKENDS);
        assert_eq!(most[MAX_BACKENDS - 1].v6.segments()[7], 0x120);
    }

    #[test]
    fn a_lab_claims_only_its_own_namespaces() {
        assert!(is_lab_namespace("lt1s0", "lt1s0-sw"));
        assert!(is_lab_namespace("lt1s0", "lt1s0-b12"));
        assert!(!is_lab_namespace("lt1s0", "lt1s0-b"));
        assert!(!is_lab_namespace("lt1s0", "lt1s0-7"));
        assert!(!is_lab_namespace("a", "a-b-cl"));
        assert!(!is_lab_namespace("lt1s0", "lt1s01-cl"));
    }

    #[test]
    fn unique_names_differ_and_fit() {
        let (a, b) = (Lab::unique_name("demo-x"), Lab::unique_name("demo-x"));
        assert_ne!(a, b);
        assert!(a.starts_with("ldemo") && a.len() <= 32, "{a}");
        validate_name(&a).expect("valid");
    }

    #[test]
    fn pass_program_loads() {
        let fd = load_pass_program().expect("load r0 = XDP_PASS; exit");
        assert!(fd.as_raw_fd() >= 0);
    }

    #[test]
    fn two_backend_lab_serves_and_vanishes_on_drop() {
        let name = Lab::unique_name("t");
        let mut stray = {
            let lab = Lab::up(LabSpec {
                name: name.clone(),
                backends: 2,
            })
            .expect("lab up");
            assert_eq!(namespaces_of(&name).len(), 5);
            for b in lab.backends() {
                for addr in [b.v4.to_string(), b.v6.to_string()] {
                    lab.run(lab.client(), &["ping", "-c1", "-W1", &addr])
                        .unwrap_or_else(|e| panic!("ping {addr}: {e:#}"));
                }
            }
            let pass = xdp_attachment(&lab.switch_ns(), &lab.lb().role)
                .expect("ip link")
                .expect("an XDP program on the LB's bridge port");
            assert_eq!(pass.mode, XdpMode::Driver);
            assert_eq!(pass.prog_name.as_deref(), Some("lab_xdp_pass"));

            start_backend_servers(&lab).expect("backend servers");
            let greeting = lab
                .run(
                    lab.client(),
                    &[
                        "bash",
                        "-c",
                        "exec 3<>/dev/tcp/198.18.0.21/8080; head -n1 <&3",
                    ],
                )
                .expect("connect to b1:8080");
            assert_eq!(greeting, "b1\n");
            let udp = "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); \
                       s.settimeout(5); s.sendto(b'hi', ('fd00:198:18::22', 7)); \
                       print(s.recv(100))";
            let reply = lab
                .run(lab.client(), &[python3(), "-c", udp])
                .expect("udp to b2:7");
            assert_eq!(reply.trim(), r"b'b2\nhi'");

            let timed_out =
                lab.run_with_timeout(lab.client(), &["sleep", "30"], Duration::from_millis(300));
            assert!(format!("{:#}", timed_out.unwrap_err()).contains("did not finish"));
            let failed = lab.run(lab.client(), &["ls", "/no/such/file"]).unwrap_err();
            assert!(format!("{failed:#}").contains("No such file"), "{failed:#}");

            let pid = lab
                .spawn(lab.client(), &["sh", "-c", "echo started; sleep 30"])
                .expect("spawn");
            let deadline = Instant::now() + Duration::from_secs(5);
            while !lab.log(pid).expect("log").contains("started") {
                assert!(Instant::now() < deadline, "no output in the log");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(lab.is_running(pid));
            // A process started outside `spawn` must not keep the namespace alive either.
            lab.cmd(&lab.backends()[0], "sleep")
                .arg("30")
                .spawn()
                .expect("stray")
        };
        let status = stray.wait().expect("wait for the stray process");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert_eq!(namespaces_of(&name), Vec::<String>::new());
        assert!(!std::env::temp_dir().join(format!("lab-{name}")).exists());
    }

    #[test]
    fn a_panicking_test_still_removes_its_lab() {
        let name = Lab::unique_name("p");
        let result = std::panic::catch_unwind(|| {
            let lab = Lab::up(LabSpec {
                name: name.clone(),
                backends: 1,
            })
            .expect("lab up");
            lab.spawn(lab.backends().first().expect("b1"), &["sleep", "30"])
                .expect("spawn");
            panic!("a failing test");
        });
        assert!(result.is_err());
        assert_eq!(namespaces_of(&name), Vec::<String>::new());
        // A failing test's logs are kept for whoever reads its failure; this one failed on
        // purpose, so they go now.
        let logs = std::env::temp_dir().join(format!("lab-{name}"));
        assert!(logs.is_dir(), "no logs kept in {}", logs.display());
        std::fs::remove_dir_all(&logs).expect("remove the kept logs");
    }

    #[test]
    fn a_failed_build_leaves_nothing_behind() {
        let name = Lab::unique_name("f");
        // A bridge port name over 15 characters fails `ip link add` half way through.
        let mut lab = Lab {
            name: name.clone(),
            client: plan_hosts(&name, 1).0,
            lb: plan_hosts(&name, 1).1,
            backends: vec![Host {
                role: "a-name-too-long-for-linux".into(),
                ..plan_hosts(&name, 1).2[0].clone()
            }],
            namespaces: Vec::new(),
            processes: Mutex::new(Vec::new()),
            bpffs: Mutex::new(None),
            log_dir: std::env::temp_dir().join(format!("lab-{name}")),
            keep: false,
        };
        let err = lab.build().expect_err("the long name must fail");
        assert!(format!("{err:#}").contains("a-name-too-long"), "{err:#}");
        assert!(!lab.namespaces.is_empty());
        drop(lab);
        assert_eq!(namespaces_of(&name), Vec::<String>::new());
    }
}
