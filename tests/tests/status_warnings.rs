//! `lb-agent status` says when forwarded packets are never answered (issue 9 item 14): a lab
//! whose veths keep TX checksum offload on, as a new user's would, breaks every balanced
//! connection, and the status shows the warning with the fix; the default lab (offload off)
//! after good traffic shows none. Real XDP in namespaces; needs root; one test at a time.

use std::time::{Duration, Instant};

use tests::{
    agent_views::AgentViews as _,
    lab_configs::ECHO_LISTENER,
    lab_traffic::{lab_with_agent, short_connections},
};
use xtask::{agent::LabAgent, lab::Lab};

/// One echo group behind 198.18.1.100:80, the SNAT source the LB's own address.
fn config() -> String {
    [AGENT_AND_ECHO_GROUP, ECHO_LISTENER].concat()
}

/// The agent on eth0 and group `echo` over b1 and b2.
const AGENT_AND_ECHO_GROUP: &str = r#"
[agent]
interface = "eth0"

[[target_group]]
name = "echo"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22" }]
"#;

/// How long the agent may take to notice: it samples its counters once a second.
const NOTICE_WITHIN: Duration = Duration::from_secs(8);

/// Ten connections to VIP:80 at once, each given `timeout_s` seconds; how many were made.
fn parallel_connections(lab: &Lab, timeout_s: u32) -> usize {
    let script = format!(
        "import socket, threading\n\
         made = []\n\
         def one():\n\
         \x20   try:\n\
         \x20       socket.create_connection(('198.18.1.100', 80), timeout={timeout_s}).close()\n\
         \x20       made.append(1)\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         threads = [threading.Thread(target=one) for _ in range(10)]\n\
         for t in threads: t.start()\n\
         for t in threads: t.join()\n\
         print(len(made))\n"
    );
    let out = lab
        .run(lab.client(), &["python3", "-c", &script])
        .expect("connections through the VIP");
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("`{out}`: {e}"))
}

/// The status's warnings once one appears, or the last (empty) ones after `within`.
fn warnings_within(agent: &LabAgent, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let warnings = agent.status().warnings;
        if !warnings.is_empty() || Instant::now() >= deadline {
            return warnings;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn status_warns_when_forwarded_syns_get_no_replies_with_checksum_offload_on() {
    let (lab, agent) = lab_with_agent("wof", 2, &config());
    lab.turn_on_tx_checksum_offload()
        .expect("turning TX checksum offload on");
    // Each unanswered connection sends its SYN and a retransmission within two seconds.
    let made = parallel_connections(&lab, 2);
    assert_eq!(made, 0, "connections should fail with partial checksums");
    let warnings = warnings_within(&agent, NOTICE_WITHIN);
    assert_eq!(warnings.len(), 1, "status warnings: {warnings:?}");
    for part in ["not one reply", "ethtool -K DEV tx off", "route back"] {
        assert!(
            warnings[0].contains(part),
            "`{part}` missing: {}",
            warnings[0]
        );
    }
}

#[test]
fn status_has_no_warning_after_answered_traffic_with_checksum_offload_off() {
    let (lab, agent) = lab_with_agent("wok", 2, &config());
    short_connections(&lab, 20000, 20);
    assert_eq!(
        parallel_connections(&lab, 5),
        10,
        "connections through the VIP"
    );
    // As long as the other test gives the agent to notice.
    let warnings = warnings_within(&agent, NOTICE_WITHIN);
    assert!(warnings.is_empty(), "status warnings: {warnings:?}");
}
