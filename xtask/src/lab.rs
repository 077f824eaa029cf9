//! The namespace lab: a client, the load-balancer node and N backends on one bridge, like a
//! cloud load balancer's one-arm set-up. Built from 198.18.0.0/15 and fd00:198:18::/48 only.
//!
//! ```text
//!   P-cl (client)       198.18.0.10   fd00:198:18::10   routes 198.18.1.0/24, fd00:198:18:1::/64 via the LB
//!   P-lb (LB node)      198.18.0.1    fd00:198:18::1    the XDP program runs on its eth0
//!   P-bN (backend N)    198.18.0.2N   fd00:198:18::2N
//!   P-sw                bridge br0 joining every host's veth peer
//! ```
//! `Lab` is an RAII guard: dropping it (also while a test panics) kills the processes it
//! started and deletes its namespaces.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The IPv4 VIP the lab's client reaches through the load balancer.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
/// The IPv6 VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 0x100);

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Prefix of every namespace.
    pub name: String,
    /// Number of backends (1..=9).
    pub backends: usize,
}

/// One host of the lab.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    /// Short name: `cl`, `lb`, `b1`, ...
    pub role: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// A running lab; removed on drop.
pub struct Lab {
    name: String,
    client: Host,
    lb: Host,
    backends: Vec<Host>,
    namespaces: Vec<String>,
    processes: std::sync::Mutex<Vec<u32>>,
    log_dir: PathBuf,
    keep: bool,
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run_cmd(Command::new("ip").args(args))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A short name unique to this process and call: `l{tag}{pid%10000}{seq}`.
    pub fn unique_name(tag: &str) -> String {
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(4)
            .collect();
        format!(
            "l{tag}{}{}",
            std::process::id() % 10000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Builds the lab. On failure, whatever was built is removed before the error returns.
    pub fn up(spec: LabSpec) -> anyhow::Result<Lab> {
        anyhow::ensure!((1..=9).contains(&spec.backends), "backends must be 1..=9");
        anyhow::ensure!(
            (1..=32).contains(&spec.name.len())
                && spec
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "lab name `{}` must be 1-32 of [A-Za-z0-9-]",
            spec.name
        );
        let host = |role: &str, last: u8| Host {
            ns: format!("{}-{role}", spec.name),
            role: role.to_owned(),
            v4: Ipv4Addr::new(198, 18, 0, last),
            // ::10, ::1, ::21: the IPv6 address reads like the IPv4 one's last octet.
            v6: Ipv6Addr::new(
                0xfd00,
                0x198,
                0x18,
                0,
                0,
                0,
                0,
                u16::from_str_radix(&last.to_string(), 16).unwrap_or(0),
            ),
        };
        let backends = (1..=spec.backends)
            .map(|i| host(&format!("b{i}"), 20 + i as u8))
            .collect();
        let log_dir = std::env::temp_dir().join(format!("lab-{}", spec.name));
        let mut lab = Lab {
            name: spec.name.clone(),
            client: host("cl", 10),
            lb: host("lb", 1),
            backends,
            namespaces: Vec::new(),
            processes: std::sync::Mutex::new(Vec::new()),
            log_dir,
            keep: false,
        };
        // Leftovers of an earlier run with this name would make `ip netns add` fail.
        Lab::down(&spec.name)?;
        lab.build().context("building the lab")?;
        Ok(lab)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.log_dir)?;
        let sw = format!("{}-sw", self.name);
        ip(&["netns", "add", &sw])?;
        self.namespaces.push(sw.clone());
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        // br_netfilter is built in and on by default: it would validate and filter bridged IP.
        for table in ["iptables", "ip6tables", "arptables"] {
            let path = format!("net.bridge.bridge-nf-call-{table}=0");
            let _ =
                run_cmd(Command::new("ip").args(["netns", "exec", &sw, "sysctl", "-qw", &path]));
        }
        let hosts: Vec<Host> = [self.client.clone(), self.lb.clone()]
            .into_iter()
            .chain(self.backends.iter().cloned())
            .collect();
        for h in &hosts {
            ip(&["netns", "add", &h.ns])?;
            self.namespaces.push(h.ns.clone());
            ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &h.ns, "link", "add", "eth0", "type", "veth", "peer", "name", &h.role,
                "netns", &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &h.role, "master", "br0", "up"])?;
            run_cmd(Command::new("ip").args([
                "netns",
                "exec",
                &h.ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]))?;
            ip(&[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.v4),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/64", h.v6),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&["-n", &h.ns, "link", "set", "eth0", "up"])?;
            // XDP must see whole, checksummed frames: no offloads on the lab's links.
            for (ns, dev) in [(h.ns.as_str(), "eth0"), (sw.as_str(), h.role.as_str())] {
                run_cmd(Command::new("ip").args([
                    "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "rx", "off", "tso",
                    "off", "gso", "off", "gro", "off",
                ]))?;
            }
        }
        let lb = self.lb.clone();
        ip(&[
            "-n",
            &self.client.ns,
            "route",
            "add",
            "198.18.1.0/24",
            "via",
            &lb.v4.to_string(),
        ])?;
        ip(&[
            "-n",
            &self.client.ns,
            "-6",
            "route",
            "add",
            "fd00:198:18:1::/64",
            "via",
            &lb.v6.to_string(),
        ])?;
        // Frames the LB sends with XDP_TX are dropped by its veth peer unless the peer runs an
        // XDP program (measured on this machine): give the bridge port a pass-only one.
        attach_pass_program(&sw, &lb.role)?;
        Ok(())
    }

    /// The lab's name (namespace prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client host.
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

    /// `ip netns exec NS program`, to add arguments to.
    pub fn cmd(&self, host: &Host, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.ns, program]);
        cmd
    }

    /// Runs `args` in `host` to completion (killed after 60 s); its stdout, or an error with
    /// its stderr.
    pub fn run(&self, host: &Host, args: &[&str]) -> anyhow::Result<String> {
        let (program, rest) = args.split_first().context("empty command")?;
        let mut child = self
            .cmd(host, program)
            .args(rest)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {args:?} in {}", host.ns))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{args:?} in {} did not finish within 60 s", host.ns);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{args:?} in {} failed ({}): {}{}",
                host.ns,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `args` in `host` in the background, output to a log file; killed on drop.
    pub fn spawn(&self, host: &Host, args: &[&str]) -> anyhow::Result<u32> {
        let (program, rest) = args.split_first().context("empty command")?;
        let seq = self.processes.lock().map(|p| p.len()).unwrap_or(0);
        let log = self.log_dir.join(format!("{}-{seq}.log", host.role));
        let out = File::create(&log)?;
        let child = self
            .cmd(host, program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {args:?} in {}", host.ns))?;
        let pid = child.id();
        if let Ok(mut p) = self.processes.lock() {
            p.push(pid);
        }
        // The child is reaped on drop (kill + waitpid); the Child handle is not needed.
        std::mem::forget(child);
        Ok(pid)
    }

    /// Whether a process started with `spawn` still runs (an exited one is reaped here).
    pub fn is_running(&self, pid: u32) -> bool {
        let mut status = 0;
        // SAFETY: waitpid on our own child, without blocking.
        unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) == 0 }
    }

    /// The log of a process started with `spawn`.
    pub fn log(&self, pid: u32) -> anyhow::Result<String> {
        let processes = self
            .processes
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let seq = processes
            .iter()
            .position(|p| *p == pid)
            .context("not a process of this lab")?;
        let dir = std::fs::read_dir(&self.log_dir)?;
        for entry in dir.filter_map(Result::ok) {
            if entry
                .file_name()
                .to_string_lossy()
                .ends_with(&format!("-{seq}.log"))
            {
                return Ok(std::fs::read_to_string(entry.path())?);
            }
        }
        bail!("no log for process {pid}")
    }

    /// Waits until something listens on TCP `port` in `host`.
    pub fn wait_tcp_listening(
        &self,
        host: &Host,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let want = format!(":{port}");
        loop {
            let out = self.run(host, &["ss", "-Hltn"])?;
            if out.lines().any(|l| {
                l.split_whitespace()
                    .nth(3)
                    .is_some_and(|a| a.ends_with(&want))
            }) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nothing listens on TCP port {port} in {} after {timeout:?}",
                    host.ns
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keeps the lab after this process ends (`cargo xtask lab up`).
    pub fn leak(mut self) {
        self.keep = true;
    }

    /// Deletes every namespace of lab `name`.
    pub fn down(name: &str) -> anyhow::Result<()> {
        let list = ip(&["netns", "list"])?;
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&format!("{name}-")) {
                ip(&["netns", "del", ns])?;
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Ok(processes) = self.processes.lock() {
            for pid in processes.iter() {
                // SAFETY: plain kill/waitpid on our own children.
                unsafe {
                    libc::kill(*pid as i32, libc::SIGKILL);
                    libc::waitpid(*pid as i32, std::ptr::null_mut(), 0);
                }
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

/// Loads `r0 = XDP_PASS; exit` with bpf(2) and attaches it in driver mode to `dev` in `ns`
/// (through a bpffs pin that `ip` reads, removed again right after).
fn attach_pass_program(ns: &str, dev: &str) -> anyhow::Result<()> {
    let bpffs = lab_bpffs()?;
    // mov64 r0, 2 (XDP_PASS); exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&6u32.to_ne_bytes()); // BPF_PROG_TYPE_XDP
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes()); // insn_cnt
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(BPF_PROG_LOAD) with a zeroed attr whose pointers outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        bail!(
            "loading the pass program: {}",
            std::io::Error::last_os_error()
        );
    }
    let pin = format!(
        "{bpffs}/pass-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let c_pin = std::ffi::CString::new(pin.clone())?;
    let mut attr = [0u8; 16];
    attr[0..8].copy_from_slice(&(c_pin.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: bpf(BPF_OBJ_PIN) with a valid path and fd.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, attr.as_mut_ptr(), attr.len()) };
    // SAFETY: our fd; the pin (and then the attachment) keeps the program alive.
    unsafe { libc::close(fd as i32) };
    if rc < 0 {
        bail!(
            "pinning the pass program: {}",
            std::io::Error::last_os_error()
        );
    }
    let attached = ip(&[
        "-n", ns, "link", "set", "dev", dev, "xdpdrv", "pinned", &pin,
    ]);
    let _ = std::fs::remove_file(&pin);
    attached.map(|_| ())
}

/// A bpffs of the lab's own, outside /sys: `ip -n` remounts /sys in the namespace it enters,
/// which hides /sys/fs/bpf from it.
fn lab_bpffs() -> anyhow::Result<&'static str> {
    const DIR: &str = "/run/lb-lab-bpffs";
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(DIR))
    {
        std::fs::create_dir_all(DIR)?;
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", DIR]))?;
    }
    Ok(DIR)
}

/// The small server every backend runs, for IPv4 and IPv6: on TCP 8080 a greeting with the
/// backend's name (`b1\n`), then an echo of everything received; on UDP 7, a reply of the name
/// followed by the datagram.
const SERVER: &str = r#"
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

/// Starts the backend servers on every backend and waits until they listen.
pub fn start_backend_servers(lab: &Lab) -> anyhow::Result<()> {
    for b in lab.backends() {
        lab.spawn(b, &["python3", "-c", SERVER, &b.role])?;
        lab.spawn(b, &["iperf3", "-s", "-p", "5201"])?;
    }
    for b in lab.backends() {
        lab.wait_tcp_listening(b, 8080, Duration::from_secs(10))?;
        lab.wait_tcp_listening(b, 5201, Duration::from_secs(10))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_hosts_reach_each_other_and_vanish_on_drop() {
        let name = Lab::unique_name("t");
        {
            let lab = Lab::up(LabSpec {
                name: name.clone(),
                backends: 2,
            })
            .expect("lab up");
            for b in lab.backends() {
                lab.run(lab.client(), &["ping", "-c1", "-W2", &b.v4.to_string()])
                    .expect("ping v4");
                lab.run(
                    lab.client(),
                    &["ping", "-6", "-c1", "-W2", &b.v6.to_string()],
                )
                .expect("ping v6");
            }
            let link =
                ip(&["-n", &format!("{name}-sw"), "-d", "link", "show", "lb"]).expect("link");
            assert!(
                link.contains("xdp"),
                "no XDP program on the LB's bridge port: {link}"
            );
            start_backend_servers(&lab).expect("servers");
            let greeting = lab
                .run(lab.client(), &["python3", "-c", "import socket; s=socket.create_connection(('198.18.0.21',8080),timeout=5); print(s.makefile().readline().strip())"])
                .expect("connect");
            assert_eq!(greeting.trim(), "b1");
        }
        let list = ip(&["netns", "list"]).expect("list");
        assert!(!list.contains(&format!("{name}-")), "left behind: {list}");
    }
}
