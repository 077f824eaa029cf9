//! Reloading a running agent's config (`lb-agent reload`, SIGHUP): only what changed is
//! written, a bad file changes nothing, and traffic keeps flowing throughout. Needs root; one
//! test at a time.

use std::time::Duration;

use lb_agent::{health::TargetState, overrides::Overrides};
use tests::{
    agent_views::AgentViews as _,
    lab_traffic::{
        IdleConnection, config_path, end_agent, lab_with_agent, short_connections,
        short_connections_to, start_agent, target, wait_for_state, write_config,
    },
};
use xtask::{agent::LabAgent, lab::VIP4};

/// Three groups over the lab's three backends; `web_weights` sets the web group's.
fn config(web_weights: [u32; 3], extra: &str) -> String {
    Plan {
        web: &[
            ("198.18.0.21", web_weights[0]),
            ("198.18.0.22", web_weights[1]),
            ("198.18.0.23", web_weights[2]),
        ],
        api: Some("api"),
        new: false,
        extra,
    }
    .text()
}

/// A reload test's config, put together from its parts.
struct Plan<'a> {
    /// `web`'s targets and weights.
    web: &'a [(&'a str, u32)],
    /// The group the `api` listener forwards to; none: no `api` group nor listener.
    api: Option<&'a str>,
    /// Group `new` (b3) with a listener on :82.
    new: bool,
    /// Appended as it is.
    extra: &'a str,
}

impl Plan<'_> {
    fn text(&self) -> String {
        let web: Vec<String> = self
            .web
            .iter()
            .map(|(address, weight)| format!("{{ address = \"{address}\", weight = {weight} }}"))
            .collect();
        let mut out = format!(
            r#"
[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
targets = [{}]
health_check = {{ interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }}
"#,
            web.join(", ")
        );
        if self.api.is_some() {
            out.push_str(
                r#"
[[target_group]]
name = "api"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22" }]
"#,
            );
        }
        if self.new {
            out.push_str(
                r#"
[[target_group]]
name = "new"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.23" }]
"#,
            );
        }
        out.push_str(
            r#"
[[target_group]]
name = "iperf"
protocol = "tcp"
port = 5201
health_check = { port = 8081 }
targets = [{ address = "198.18.0.21" }]

[[listener]]
name = "web"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "web" }
"#,
        );
        if let Some(forward) = self.api {
            out.push_str(&format!(
                r#"
[[listener]]
name = "api"
address = "198.18.1.100"
port = 81
protocol = "tcp"
default_action = {{ forward = "{forward}" }}
"#
            ));
        }
        out.push_str(
            r#"
[[listener]]
name = "iperf"
address = "198.18.1.100"
port = 5201
protocol = "tcp"
default_action = { forward = "iperf" }
"#,
        );
        if self.new {
            out.push_str(
                r#"
[[listener]]
name = "new"
address = "198.18.1.100"
port = 82
protocol = "tcp"
default_action = { forward = "new" }
"#,
            );
        }
        out + self.extra
    }
}

/// Each group's `table_version`.
fn table_versions(agent: &LabAgent) -> Vec<(String, u64)> {
    agent
        .groups()
        .into_iter()
        .map(|g| (g.name, g.table_version))
        .collect()
}

#[test]
fn a_reload_that_changes_one_weight_rewrites_only_that_groups_table() {
    let (lab, agent) = lab_with_agent("rw", 3, &config([1, 1, 1], ""));
    let before = table_versions(&agent);
    let served = short_connections(&lab, 40000, 90);
    assert_eq!(served.len(), 3, "{served:?}");

    write_config(&lab, &config([1, 1, 4], ""));
    let said = agent.cli(&["reload"]).expect("reload");
    println!("{said}");
    assert!(said.contains("1 changes"), "{said}");
    assert!(
        said.contains("group web: target 198.18.0.23:8080 weight 1 -> 4"),
        "{said}"
    );
    let after = table_versions(&agent);
    for ((name, v0), (_, v1)) in before.iter().zip(&after) {
        let rebuilt = v1 - v0;
        assert_eq!(
            rebuilt,
            u64::from(name == "web"),
            "{name}: {before:?} -> {after:?}"
        );
    }
    let served = short_connections(&lab, 41000, 180);
    println!("weights 1:1:4 after the reload: {served:?}");
    let b3 = served.get("b3").copied().unwrap_or(0);
    assert!((95..=145).contains(&b3), "b3 got {b3} of 180: {served:?}");

    // The same file again: nothing to do, nothing written.
    let said = agent.cli(&["reload"]).expect("reload");
    assert!(said.contains("no changes"), "{said}");
    assert_eq!(table_versions(&agent), after);
}

#[test]
fn a_reload_with_an_invalid_file_is_refused_and_the_old_config_keeps_serving() {
    let good = config([1, 1, 1], "");
    let (lab, agent) = lab_with_agent("ri", 3, &good);
    let before = table_versions(&agent);
    // Two mistakes: both are reported, with file and line.
    let bad = Plan {
        web: &[
            ("198.18.0.21", 5000),
            ("198.18.0.22", 1),
            ("198.18.0.23", 1),
        ],
        api: Some("nope"),
        new: false,
        extra: "",
    }
    .text();
    write_config(&lab, &bad);
    let err = format!("{:#}", agent.cli(&["reload"]).expect_err("a bad file"));
    println!("{err}");
    for field in ["weight", "nope"] {
        assert!(err.contains(field), "{field} not named: {err}");
    }
    let file = config_path(&lab).display().to_string();
    assert!(
        err.matches(&format!("{file}:")).count() >= 2,
        "no file:line: {err}"
    );
    // An unknown field.
    write_config(&lab, &(good.clone() + "\n[agent]\ncolour = \"blue\"\n"));
    let err = format!(
        "{:#}",
        agent.cli(&["reload"]).expect_err("an unknown field")
    );
    assert!(err.contains("agent.colour"), "{err}");
    // A valid file the running data plane cannot take (its Maglev tables have another size).
    write_config(
        &lab,
        &(good.clone() + "\n[agent]\nmaglev_table_size = 251\n"),
    );
    let err = format!("{:#}", agent.cli(&["reload"]).expect_err("needs a restart"));
    assert!(
        err.contains("needs a restart") && err.contains("maglev_table_size"),
        "{err}"
    );
    // SIGHUP with the same file: refused too, and the agent runs on.
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.is_running(agent.pid()));
    assert!(
        lab.log(agent.pid())
            .expect("log")
            .contains("reload refused")
    );
    assert_eq!(table_versions(&agent), before);
    let served = short_connections_to(&lab, &VIP4.to_string(), 81, 42000, 40);
    assert_eq!(served.len(), 2, "{served:?}");
}

#[test]
fn a_reload_adds_a_listener_drains_a_removed_target_and_removes_a_group() {
    let (lab, agent) = lab_with_agent("ra", 3, &config([1, 1, 1], ""));
    wait_for_state(
        &agent,
        "web",
        "198.18.0.21:8080",
        TargetState::Healthy,
        Duration::from_secs(4),
    );
    // A connection open to b1, so that it has something to drain (with none, or only closed
    // ones, deregistration ends at the next look).
    let held = IdleConnection::open(&lab, 80, "b1", 42900);
    // web loses b1; a new listener on :82 forwards to a new group; api and its listener go.
    let next = Plan {
        web: &[("198.18.0.22", 1), ("198.18.0.23", 1)],
        api: None,
        new: true,
        extra: "",
    }
    .text();
    write_config(&lab, &next);
    // SIGHUP, as systemd's reload does.
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lab.log(agent.pid()).expect("log").contains("reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload in the log");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = lab.log(agent.pid()).expect("log");
    for change in [
        "group web: target 198.18.0.21:8080 deregistered",
        "group new: added with 1 targets",
        "listener new: added",
        "listener api: removed",
        "group api: removed",
    ] {
        assert!(log.contains(change), "{change} missing from: {log}");
    }
    assert_eq!(
        target(&agent, "web", "198.18.0.21:8080").state,
        TargetState::Draining
    );
    let web = short_connections(&lab, 43000, 60);
    assert!(!web.contains_key("b1"), "{web:?}");
    let new = short_connections_to(&lab, &VIP4.to_string(), 82, 43100, 20);
    assert_eq!(new.keys().collect::<Vec<_>>(), ["b3"], "{new:?}");
    // :81 is no listener any more: the node's own stack refuses the connection.
    let refused = lab.run_with_timeout(
        lab.client(),
        &[
            "python3",
            "-c",
            &format!("import socket; socket.create_connection(('{VIP4}', 81), timeout=2)"),
        ],
        Duration::from_secs(10),
    );
    assert!(
        refused.is_err(),
        "a connection to the removed listener succeeded"
    );
    drop(held);
}

#[test]
fn api_changes_survive_a_reload_and_a_restart_until_cleared() {
    let (lab, agent) = lab_with_agent("rs", 3, &config([1, 1, 1], ""));
    wait_for_state(
        &agent,
        "web",
        "198.18.0.22:8080",
        TargetState::Healthy,
        Duration::from_secs(4),
    );
    agent
        .cli(&["targets", "add", "--group", "api", "198.18.0.23"])
        .expect("add b3 to api");
    agent
        .cli(&[
            "targets",
            "weight",
            "--group",
            "web",
            "198.18.0.21:8080",
            "--weight",
            "0",
        ])
        .expect("web b1 weight 0");
    agent
        .cli(&["targets", "remove", "--group", "web", "198.18.0.22:8080"])
        .expect("remove web b2");
    let state_file = config_path(&lab).with_extension("state.json");
    let saved = std::fs::read_to_string(&state_file).expect("a state file beside the config");
    println!("{saved}");

    // A reload of the unchanged file keeps them: nothing changes.
    let said = agent.cli(&["reload"]).expect("reload");
    assert!(said.contains("no changes"), "{said}");

    // So does a restart.
    end_agent(&lab, agent.pid(), libc::SIGTERM);
    let agent = start_agent(&lab);
    assert!(
        lab.log(agent.pid())
            .expect("log")
            .contains("earlier changes")
    );
    wait_for_state(
        &agent,
        "api",
        "198.18.0.23:8080",
        TargetState::Healthy,
        Duration::from_secs(40),
    );
    assert_eq!(target(&agent, "web", "198.18.0.21:8080").weight, 0);
    let web: Vec<String> = agent
        .targets()
        .iter()
        .filter(|t| t.group == "web")
        .map(|t| t.address.to_string())
        .collect();
    assert_eq!(web, ["198.18.0.21:8080", "198.18.0.23:8080"]);
    let status = agent.cli(&["status"]).expect("status");
    println!("{status}");
    assert!(status.contains("+ 3 API changes"), "{status}");
    assert_eq!(agent.status().overrides, 3);
    let api = short_connections_to(&lab, &VIP4.to_string(), 81, 44000, 60);
    assert!(api.contains_key("b3"), "{api:?}");
    // Open while the API's changes are cleared: b3 has something to drain.
    let held = IdleConnection::open(&lab, 81, "b3", 44100);

    // Cleared: the file rules again, at once.
    let said = agent.cli(&["overrides", "clear"]).expect("clear");
    println!("{said}");
    assert!(said.contains("198.18.0.23:8080 deregistered"), "{said}");
    assert_eq!(target(&agent, "web", "198.18.0.21:8080").weight, 1);
    assert_eq!(
        target(&agent, "api", "198.18.0.23:8080").state,
        TargetState::Draining
    );
    let listed = agent.cli(&["overrides", "list"]).expect("list");
    assert!(listed.contains("no API changes"), "{listed}");
    assert_eq!(agent.overrides(), Overrides::default());
    drop(held);
}
