//! An agent that adopts a pinned data plane gives every target the id its flows and counters
//! carry, whatever order the new config lists groups and targets in. Needs root; one test at
//! a time.

use std::{collections::BTreeMap, net::SocketAddr};

use tests::{
    agent_views::AgentViews as _,
    lab_traffic::{end_agent, lab_with_agent, short_connections, start_agent, write_config},
};
use xtask::agent::LabAgent;

/// `echo` lists b1, b2, b3; `other` comes second.
const FIRST: &str = r#"
[[target_group]]
name = "echo"
protocol = "tcp"
port = 8080
deregistration_delay = "0s"
targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22" }, { address = "198.18.0.23" }]

[[target_group]]
name = "other"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.23" }]

[[listener]]
name = "echo"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "echo" }

[[listener]]
name = "other"
address = "198.18.1.100"
port = 81
protocol = "tcp"
default_action = { forward = "other" }
"#;

/// The same groups, listeners and targets, each list in another order.
const REORDERED: &str = r#"
[[target_group]]
name = "other"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.23" }]

[[target_group]]
name = "echo"
protocol = "tcp"
port = 8080
deregistration_delay = "0s"
targets = [{ address = "198.18.0.23" }, { address = "198.18.0.22" }, { address = "198.18.0.21" }]

[[listener]]
name = "other"
address = "198.18.1.100"
port = 81
protocol = "tcp"
default_action = { forward = "other" }

[[listener]]
name = "echo"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "echo" }
"#;

/// Connection-table entries per target.
fn entries(agent: &LabAgent) -> BTreeMap<SocketAddr, usize> {
    let mut out = BTreeMap::new();
    for flow in agent.flows() {
        *out.entry(flow.backend).or_insert(0) += 1;
    }
    out
}

/// New flows counted per target of `echo`.
fn new_flows(agent: &LabAgent) -> BTreeMap<SocketAddr, u64> {
    agent
        .targets()
        .into_iter()
        .filter(|t| t.group == "echo")
        .map(|t| (t.address, t.counters.new_flows))
        .collect()
}

#[test]
fn an_adopted_data_plane_keeps_each_targets_flows_and_counters_when_the_config_is_reordered() {
    let (lab, agent) = lab_with_agent("ad", 3, FIRST);
    let served = short_connections(&lab, 32000, 60);
    assert_eq!(served.len(), 3, "{served:?}");
    let before_entries = entries(&agent);
    let before_counters = new_flows(&agent);
    println!("before the restart: entries {before_entries:?}, new flows {before_counters:?}");

    // SIGTERM leaves the data plane pinned and serving; the next agent runs the reordered file.
    let pid = agent.pid();
    end_agent(&lab, pid, libc::SIGTERM);
    write_config(&lab, REORDERED);
    let agent = start_agent(&lab);
    let log = lab.log(agent.pid()).expect("agent log");
    assert!(log.contains("adopting the data plane"), "{log}");

    assert_eq!(
        new_flows(&agent),
        before_counters,
        "counters moved to other targets"
    );
    assert_eq!(entries(&agent), before_entries);

    // Deregistering b1 (no delay) cuts b1's flows, and only those.
    let b1: SocketAddr = "198.18.0.21:8080".parse().expect("address");
    agent
        .cli(&["targets", "remove", "--group", "echo", "198.18.0.21:8080"])
        .expect("targets remove");
    let mut expected = before_entries.clone();
    expected.remove(&b1);
    assert_eq!(
        entries(&agent),
        expected,
        "another target's flows were cut, or b1's kept"
    );
}
