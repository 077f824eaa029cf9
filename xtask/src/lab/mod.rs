//! The namespace lab: a client, the load-balancer node and N backends on one bridge, like a
//! cloud load balancer's one-arm set-up. Built from 198.18.0.0/15 and fd00:198:18::/48 only.
//!
//! ```text
//!   P-cl (client)       198.18.0.10   fd00:198:18::10   routes 198.18.1.0/24, fd00:198:18:1::/64 via the LB
//!   P-lb (LB node)      198.18.0.1    fd00:198:18::1    the XDP program runs on its eth0
//!   P-bN (backend N)    198.18.0.2N   fd00:198:18::2N   (b10 is 198.18.0.30, fd00:198:18::30)
//!   P-sw                bridge br0 joining every host's veth peer; the peer is named after the
//!                       host's role (`cl`, `lb`, `b1`, ...); the LB's runs the `pass` program
//! ```
//!
//! With a router (`LabSpec::router`), the client sits behind one, on a link of its own with a
//! smaller MTU on the router's side: the path a Path MTU discovery test needs.
//!
//! ```text
//!   P-cl (client)       198.18.10.10  fd00:198:18:10::10  MTU 1500; 198.18.0.0/15 and fd00:198:18::/48 via P-rt
//!   P-rt (router)       eth1 198.18.10.1  fd00:198:18:10::1 (the client's link, MTU `client_side_mtu`)
//!                       eth0 198.18.0.2   fd00:198:18::2   (on the bridge); forwards; VIPs via P-lb
//!   P-lb                routes 198.18.10.0/24 and fd00:198:18:10::/64 via P-rt
//! ```
//!
//! `Lab` is an RAII guard: dropping it (also while a test panics) kills the processes it
//! started and deletes its namespaces. The parts: `topology` (hosts, addresses, veths,
//! bridge), `netns` (namespaces and `ip`), `command` and `processes` (what runs in the
//! hosts), `xdp`, `kernel_object` and `bpffs` (the pass program on the LB's bridge port),
//! `servers` (what the backends run).

mod bpffs;
mod command;
pub mod kernel_object;
pub mod netns;
mod processes;
pub mod scripts;
mod servers;
mod topology;
mod xdp;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

use netns::NetNs;
use processes::Processes;
pub use processes::RUN_TIMEOUT;
pub use servers::{
    BackendServers, ECHO_PORT, HEALTH_PORT, HealthMode, IPERF_PORTS, UDP_ECHO_PORT, python3,
    set_health, start_backend_servers, start_echo_server,
};
pub use topology::{Host, MAX_BACKENDS, VIP4, VIP6};
pub use xdp::{AttachMode, XdpAttachment, xdp_attachment};

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Prefix of every namespace: 1-32 of `[A-Za-z0-9-]`, unique on this machine
    /// (`Lab::unique_name`).
    pub name: String,
    /// Number of backends, 1..=`MAX_BACKENDS`.
    pub backends: usize,
    /// `None`: the client on the bridge beside the LB (the default). Else the client behind a
    /// router namespace, as this says.
    pub router: Option<RouterSpec>,
}

/// A router between the client and the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSpec {
    /// The MTU of the router's interface towards the client (the client's own stays 1500, so
    /// it advertises an MSS the path cannot carry).
    pub client_side_mtu: u32,
}

/// A running lab; removed on drop unless `leak`ed.
pub struct Lab {
    name: String,
    client: Host,
    lb: Host,
    backends: Vec<Host>,
    /// The router in front of the client, if the lab has one.
    router: Option<(Host, RouterSpec)>,
    /// Namespaces created so far, in order; a half-built lab removes exactly these.
    namespaces: Vec<NetNs>,
    processes: Processes,
    log_dir: PathBuf,
    /// The lab's BPF filesystem (see `bpffs`), once mounted.
    bpffs: Option<PathBuf>,
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
        topology::validate_name(&spec.name)?;
        anyhow::ensure!(
            (1..=MAX_BACKENDS).contains(&spec.backends),
            "a lab has 1..={MAX_BACKENDS} backends, not {}",
            spec.backends
        );
        let (mut client, lb, backends) = topology::plan_hosts(&spec.name, spec.backends);
        let mut lab = match spec.router {
            None => Lab::planned(&spec.name, client, lb, backends),
            Some(router_spec) => {
                let router = topology::plan_router(&spec.name, &mut client);
                let mut lab = Lab::planned(&spec.name, client, lb, backends);
                lab.router = Some((router, router_spec));
                lab
            }
        };
        // Leftovers of an earlier run with this name would make `ip netns add` fail.
        Lab::down(&spec.name).context("removing a stale lab of the same name")?;
        // On error `lab` drops here, which deletes what `build` made.
        lab.build()
            .with_context(|| format!("building lab {}", spec.name))?;
        Ok(lab)
    }

    /// A lab of these hosts, nothing built yet.
    fn planned(name: &str, client: Host, lb: Host, backends: Vec<Host>) -> Lab {
        Lab {
            name: name.to_owned(),
            client,
            lb,
            backends,
            router: None,
            namespaces: Vec::new(),
            processes: Processes::default(),
            log_dir: log_dir_of(name),
            bpffs: None,
            keep: false,
        }
    }

    fn build(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.log_dir)
            .with_context(|| format!("creating {}", self.log_dir.display()))?;
        let bpffs = self.log_dir.join("bpffs");
        bpffs::mount(&bpffs)?;
        self.bpffs = Some(bpffs.clone());
        self.namespaces.push(NetNs::create(&self.switch_ns())?);
        topology::add_bridge(&self.namespaces[0])?;
        // On the bridge: the client, or the router in front of it.
        let first = match &self.router {
            Some((router, _)) => router.clone(),
            None => self.client.clone(),
        };
        let hosts: Vec<Host> = [first, self.lb.clone()]
            .into_iter()
            .chain(self.backends.iter().cloned())
            .collect();
        for host in &hosts {
            self.namespaces.push(NetNs::create(&host.ns)?);
            let (sw, ns) = (
                &self.namespaces[0],
                &self.namespaces[self.namespaces.len() - 1],
            );
            topology::add_host(ns, sw, host).with_context(|| format!("setting up {}", host.ns))?;
        }
        // The client (or its router) was made right after the switch.
        topology::route_vips_via(&self.namespaces[1], &self.lb)?;
        if let Some((router, spec)) = self.router.clone() {
            self.namespaces.push(NetNs::create(&self.client.ns)?);
            // Made in this order: the switch, the router, the LB, the backends, the client.
            let (router_ns, lb_ns) = (&self.namespaces[1], &self.namespaces[2]);
            let client_ns = &self.namespaces[self.namespaces.len() - 1];
            topology::add_client_behind(client_ns, &self.client, router_ns, spec.client_side_mtu)
                .with_context(|| format!("setting up {} behind {}", self.client.ns, router.ns))?;
            topology::route_client_via(lb_ns, &self.client, &router)?;
        }
        // Frames the LB sends with XDP_TX are dropped by its veth peer unless the peer runs
        // an XDP program (see `xdp`): its bridge port gets the pass program.
        let (sw, port) = (self.switch_ns(), &self.lb.role);
        xdp::attach_pass_program(&bpffs, &sw, port)?;
        match xdp_attachment(&sw, port)? {
            Some(a) if a.mode == AttachMode::Native => Ok(()),
            other => bail!("{port} in {sw} should run the pass program natively, has {other:?}"),
        }
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

    /// The router in front of the client, if the lab has one (`LabSpec::router`).
    pub fn router(&self) -> Option<&Host> {
        self.router.as_ref().map(|(router, _)| router)
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

    /// The lab's own BPF filesystem (unmounted with the lab), for agents' pin directories:
    /// pins here outlive the agent's process, as on a real host (see `bpffs`).
    pub fn bpffs(&self) -> anyhow::Result<PathBuf> {
        self.bpffs
            .clone()
            .with_context(|| format!("lab {} has no BPF filesystem mounted", self.name))
    }

    /// Attaches the kernel crate's `pass` program to `dev` in namespace `ns` (one the test
    /// added beside the lab's, say), for as long as the lab lives: a veth delivers XDP_TX and
    /// redirected frames only if its peer runs XDP.
    pub fn attach_pass_program(&self, ns: &str, dev: &str) -> anyhow::Result<()> {
        xdp::attach_pass_program(&self.bpffs()?, ns, dev)
    }

    /// Detaches what `attach_pass_program` attached to `dev` in `ns` (its link's pin goes).
    pub fn detach_pass_program(&self, ns: &str, dev: &str) -> anyhow::Result<()> {
        xdp::detach_pass_program(&self.bpffs()?, ns, dev)
    }

    /// Turns TX checksum offload back on (a veth's default) on every veth of the lab: each
    /// host's `eth0`, its bridge port, and the router's link to the client. The lab turns it
    /// off so that XDP sees whole checksums; with it on, senders hand over frames whose
    /// checksums are still to be computed, as in a new user's own namespaces, and every
    /// balanced connection fails (the symptom `lb-agent status` warns about).
    pub fn turn_on_tx_checksum_offload(&self) -> anyhow::Result<()> {
        let netns = |name: &str| {
            self.namespaces
                .iter()
                .find(|ns| ns.name() == name)
                .with_context(|| format!("lab {} has no namespace {name}", self.name))
        };
        let switch = netns(&self.switch_ns())?;
        let on_bridge = [self.router().unwrap_or(&self.client), &self.lb]
            .into_iter()
            .chain(&self.backends);
        let mut veths = Vec::new();
        for host in on_bridge {
            veths.push((netns(&host.ns)?, "eth0"));
            veths.push((switch, host.role.as_str()));
        }
        if let Some(router) = self.router() {
            veths.push((netns(&router.ns)?, "eth1"));
            veths.push((netns(&self.client.ns)?, "eth0"));
        }
        for (ns, dev) in veths {
            ns.exec(&["ethtool", "-K", dev, "tx", "on"])?;
        }
        Ok(())
    }

    /// Keeps the lab, its processes and logs after this value is gone (`cargo xtask lab up`);
    /// `Lab::down` removes it later.
    pub fn leak(mut self) {
        self.keep = true;
        for ns in self.namespaces.drain(..) {
            ns.keep();
        }
    }

    /// Deletes every namespace of lab `name` (`{name}-sw`, `-cl`, `-lb`, `-b1`, ...), killing
    /// the processes still inside them first, and its BPF filesystem and logs.
    pub fn down(name: &str) -> anyhow::Result<()> {
        topology::validate_name(name)?;
        let mut failures = Vec::new();
        for ns in netns::list()? {
            if topology::is_lab_namespace(name, &ns)
                && let Err(e) = netns::delete(&ns)
            {
                failures.push(format!("{e:#}"));
            }
        }
        let log_dir = log_dir_of(name);
        bpffs::unmount(&log_dir.join("bpffs"));
        let _ = std::fs::remove_dir_all(log_dir);
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("removing lab {name}: {}", failures.join("; "))
        }
    }
}

/// `/tmp/lab-NAME`: the logs, health-mode files and BPF filesystem of lab `name`.
fn log_dir_of(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lab-{name}"))
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.processes.kill_all(&self.name);
        // Unmounting frees the pins: the pass program, and whatever an agent left attached,
        // go with them.
        if let Some(path) = &self.bpffs {
            bpffs::unmount(path);
        }
        // Last made, first removed (each reports its own failure).
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn namespaces_of(name: &str) -> Vec<String> {
        netns::list()
            .expect("ip netns list")
            .into_iter()
            .filter(|ns| topology::is_lab_namespace(name, ns))
            .collect()
    }

    #[test]
    fn unique_names_differ_and_fit() {
        let (a, b) = (Lab::unique_name("demo-x"), Lab::unique_name("demo-x"));
        assert_ne!(a, b);
        assert!(a.starts_with("ldemo") && a.len() <= 32, "{a}");
        topology::validate_name(&a).expect("valid");
    }

    #[test]
    fn two_backend_lab_serves_and_vanishes_on_drop() {
        let name = Lab::unique_name("t");
        let mut stray = {
            let lab = Lab::up(LabSpec {
                name: name.clone(),
                backends: 2,
                router: None,
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
            assert_eq!(pass.mode, AttachMode::Native);
            assert_eq!(
                pass.prog_name.as_deref(),
                Some(lb_common::program_names::PASS)
            );

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
        assert!(!log_dir_of(&name).exists());
    }

    #[test]
    fn a_panicking_test_still_removes_its_lab() {
        let name = Lab::unique_name("p");
        let result = std::panic::catch_unwind(|| {
            let lab = Lab::up(LabSpec {
                name: name.clone(),
                backends: 1,
                router: None,
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
        let (client, lb, backends) = topology::plan_hosts(&name, 1);
        let backends = vec![Host {
            role: "a-name-too-long-for-linux".into(),
            ..backends[0].clone()
        }];
        let mut lab = Lab::planned(&name, client, lb, backends);
        let err = lab.build().expect_err("the long name must fail");
        assert!(format!("{err:#}").contains("a-name-too-long"), "{err:#}");
        assert!(!lab.namespaces.is_empty());
        drop(lab);
        assert_eq!(namespaces_of(&name), Vec::<String>::new());
    }
}
