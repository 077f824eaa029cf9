//! The agent against clients and starts that go wrong: idle sockets held open on its API and
//! metrics ports, a start that fails half-way. Needs root; one test at a time.

use std::time::{Duration, Instant};

use lb_agent::health::TargetState;
use tests::{
    agent_views::AgentViews as _,
    lab_configs::{ECHO_GROUP_ON_B1, ECHO_LISTENER, ECHO_ON_B1},
    lab_traffic::{
        agent_binary, config_path, lab_up, start_agent, target, wait_for_state, write_config,
    },
};
use xtask::lab::Lab;

const TOKEN: &str = "s3cret-token-for-the-lab-0123456789";

/// Idle sockets the test holds open on each of the two TCP servers.
const IDLE_SOCKETS: usize = 500;

/// The servers' header-read and idle timeouts in the test's config.
const SERVER_TIMEOUT_S: u64 = 15;

/// Opens `IDLE_SOCKETS` connections to each port, sends nothing, and reports when the
/// agent closes each (`closed PORT SECONDS`, counted from the socket's own connect, per
/// socket; then `open N` for those left when it gives up after `wait_s`).
fn idle_sockets_script(ports: &[u16], wait_s: u64) -> String {
    format!(
        r#"
import select, socket, time
socks = {{}}
for port in {ports:?}:
    for i in range({IDLE_SOCKETS}):
        s = socket.socket()
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks[s.fileno()] = (port, s, time.monotonic())
print("opened", len(socks), flush=True)
start = time.monotonic()
poll = select.poll()
for fd in socks:
    poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
while socks and time.monotonic() - start < {wait_s}:
    for fd, _ in poll.poll(200):
        port, s, connected = socks.pop(fd)
        poll.unregister(fd)
        try:
            data = s.recv(1)
        except OSError:
            data = b""
        print("closed", port, round(time.monotonic() - connected, 2), "data" if data else "", flush=True)
        s.close()
print("open", len(socks), flush=True)
"#
    )
}

#[test]
fn idle_sockets_on_the_api_and_metrics_ports_delay_neither_health_checks_nor_changes_and_are_closed()
 {
    let lab = lab_up("idle", 3);
    xtask::lab::start_backend_servers(&lab).expect("backend servers");
    let token_file = lab.log_dir().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let token_file = token_file.display();
    let config = format!(
        r#"
[agent]
api_listen = "127.0.0.1:9080"
api_token_file = "{token_file}"
metrics_listen = "127.0.0.1:9090"
api_header_timeout = "{SERVER_TIMEOUT_S}s"
api_idle_timeout = "{SERVER_TIMEOUT_S}s"

[[target_group]]
name = "echo"
protocol = "tcp"
port = 8080
targets = [{{ address = "198.18.0.21" }}, {{ address = "198.18.0.22" }}]
health_check = {{ interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }}
{ECHO_LISTENER}"#
    );
    write_config(&lab, &config);
    let agent = start_agent(&lab);
    for b in ["198.18.0.21:8080", "198.18.0.22:8080"] {
        wait_for_state(
            &agent,
            "echo",
            b,
            TargetState::Healthy,
            Duration::from_secs(20),
        );
    }
    // A service's usual soft limit (systemd's default LimitNOFILE is 1024): the idle sockets
    // would take every descriptor the agent has if it held them all.
    let pid = agent.pid().to_string();
    lab.run(lab.lb(), &["prlimit", "--pid", &pid, "--nofile=1024:1024"])
        .expect("prlimit");

    // Every socket is opened after this, so all are held until at least this + the timeout.
    let held_since = Instant::now();
    let holder = lab
        .spawn(
            lab.lb(),
            &[
                "python3",
                "-c",
                &idle_sockets_script(&[9080, 9090], SERVER_TIMEOUT_S + 20),
            ],
        )
        .expect("idle sockets");
    let opened = Instant::now() + Duration::from_secs(30);
    while !lab.log(holder).unwrap_or_default().contains("opened") {
        assert!(
            Instant::now() < opened,
            "the idle sockets did not open: {}",
            lab.log(holder).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Health checks keep their 1 s interval and their verdicts, and the control socket
    // answers at once.
    let checks = |agent| {
        let asked = Instant::now();
        let checks = target(agent, "echo", "198.18.0.21:8080").checks;
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "targets list took {took:?} with idle sockets held"
        );
        checks
    };
    let before = checks(&agent);
    std::thread::sleep(Duration::from_secs(4));
    let after = checks(&agent);
    assert!(
        after >= before + 3,
        "{} health checks in 4 s with idle sockets held (1 s interval): {before} -> {after}",
        after.saturating_sub(before)
    );
    for t in agent.targets() {
        assert_eq!(t.state, TargetState::Healthy, "{t:?}");
    }
    // So does a change.
    let asked = Instant::now();
    agent
        .cli(&["targets", "add", "--group", "echo", "198.18.0.23"])
        .expect("targets add");
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "targets add took {took:?} with idle sockets held"
    );
    assert!(
        held_since.elapsed() < Duration::from_secs(SERVER_TIMEOUT_S),
        "the checks above ran after the sockets may have been closed: they proved nothing"
    );

    // Every idle socket is closed by the agent: those over the cap at once, the others after
    // the header-read timeout.
    lab.wait_ended(holder, Duration::from_secs(SERVER_TIMEOUT_S + 40))
        .expect("the idle sockets' script ends");
    let log = lab.log(holder).expect("log");
    let closed: Vec<(u16, f64, bool)> = log
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("closed")).then(|| {
                let port = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let at = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(f64::MAX);
                (port, at, words.next() == Some("data"))
            })
        })
        .collect();
    assert!(log.contains("open 0"), "sockets left open:\n{log}");
    for port in [9080, 9090] {
        let on_port: Vec<&(u16, f64, bool)> = closed.iter().filter(|c| c.0 == port).collect();
        assert_eq!(on_port.len(), IDLE_SOCKETS, "port {port}:\n{log}");
        let latest = on_port.iter().map(|c| c.1).fold(0.0, f64::max);
        assert!(
            latest <= (SERVER_TIMEOUT_S + 5) as f64,
            "port {port}: the last idle socket closed after {latest} s (timeout {SERVER_TIMEOUT_S} s)"
        );
        // The held ones lasted until the timeout, not less: it is the timeout that closed them.
        let held = on_port
            .iter()
            .filter(|c| c.1 >= (SERVER_TIMEOUT_S - 1) as f64)
            .count();
        assert!(held > 0, "port {port}: none held until the timeout:\n{log}");
    }
    // The agent still answers on TCP afterwards.
    let out = lab
        .run(
            lab.lb(),
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "http://127.0.0.1:9090/metrics",
            ],
        )
        .expect("curl /metrics");
    assert!(out.contains("lb_conntrack_entries"), "{out}");
}

/// `lb-agent run ARGS` in the lab's load-balancer namespace, pinned in the lab's BPF
/// filesystem; it must fail: its stderr.
fn failed_start(lab: &Lab, ifaces: &[&str]) -> String {
    let binary = agent_binary();
    let config = config_path(lab);
    let socket = lab.log_dir().join("failed.sock");
    let pin_dir = pin_dir(lab);
    let mut args = vec![
        binary.to_str().expect("UTF-8"),
        "run",
        "--config",
        config.to_str().expect("UTF-8"),
        "--socket",
        socket.to_str().expect("UTF-8"),
        "--pin-dir",
        pin_dir.to_str().expect("UTF-8"),
    ];
    for iface in ifaces {
        args.extend(["--iface", iface]);
    }
    match lab.run_with_timeout(lab.lb(), &args, Duration::from_secs(60)) {
        Ok(out) => panic!("lb-agent run {ifaces:?} started: {out}"),
        Err(e) => format!("{e:#}"),
    }
}

fn pin_dir(lab: &Lab) -> std::path::PathBuf {
    lab.bpffs().expect("bpffs").join("lb-agent")
}

/// What is pinned below the lab's pin directory.
fn pinned(lab: &Lab) -> Vec<String> {
    let mut found = Vec::new();
    for sub in ["maps", "links"] {
        let dir = pin_dir(lab).join(sub);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            found.push(format!("{sub}/{}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn a_start_that_fails_leaves_nothing_pinned_and_names_a_missing_interface() {
    let lab = lab_up("fs", 1);
    write_config(&lab, ECHO_ON_B1);

    let said = failed_start(&lab, &["eth9"]);
    assert!(said.contains("interface eth9 does not exist"), "{said}");
    assert_eq!(pinned(&lab), Vec::<String>::new());

    // An interface without an IPv4 address: no full-NAT source for the IPv4 listener, which
    // the start finds only after loading (and pinning) the maps.
    // (A veth pair inside the namespace, which the lab removes with it.)
    lab.run(
        lab.lb(),
        &[
            "ip", "link", "add", "noip0", "type", "veth", "peer", "name", "noip1",
        ],
    )
    .expect("an interface without addresses");
    for dev in ["noip0", "noip1"] {
        lab.run(lab.lb(), &["ip", "link", "set", dev, "up"])
            .expect("up");
    }
    let said = failed_start(&lab, &["noip0"]);
    assert!(said.contains("no IPv4 full-NAT source address"), "{said}");
    assert_eq!(pinned(&lab), Vec::<String>::new(), "after: {said}");

    // The next start begins afresh: nothing to adopt.
    let agent = start_agent(&lab);
    assert!(!agent.status().adopted, "{:?}", agent.status());
}

#[test]
fn an_agent_on_a_veth_warns_about_the_senders_checksum_offload() {
    let lab = lab_up("veth", 1);
    write_config(&lab, "");
    // The lab's eth0 is a veth.
    let agent = start_agent(&lab);
    let log = lab.log(agent.pid()).expect("log");
    let warning = log
        .lines()
        .find(|l| l.contains("\"WARN\"") && l.contains("a veth"))
        .unwrap_or_else(|| panic!("no veth warning in:\n{log}"));
    assert!(warning.contains("ethtool -K DEV tx off"), "{warning}");
}

#[test]
fn a_listener_on_snat_ports_of_the_interface_address_is_refused_at_start_with_nothing_pinned() {
    let lab = lab_up("snp", 1);
    // No agent.snat_addresses: the full-NAT source is eth0's own 198.18.0.1, where this
    // listener takes a port of the default range 1024-32767.
    write_config(
        &lab,
        &format!(
            r#"{ECHO_GROUP_ON_B1}
[[listener]]
name = "echo"
address = "198.18.0.1"
port = 20080
protocol = "tcp"
default_action = {{ forward = "echo" }}
"#
        ),
    );
    let said = failed_start(&lab, &["eth0"]);
    for part in [
        "listener `echo`",
        "198.18.0.1 port 20080",
        "snat_port_range [1024, 32767]",
    ] {
        assert!(said.contains(part), "`{part}` missing: {said}");
    }
    assert_eq!(pinned(&lab), Vec::<String>::new(), "after: {said}");
}
