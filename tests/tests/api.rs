//! The control API as clients other than the CLI use it: curl on the unix socket and on TCP
//! with a bearer token, Prometheus's own parser on `/metrics`, versions against stale writes,
//! config validate and apply. Needs root; one test at a time.

use std::collections::BTreeMap;

use lb_agent::protocol::{ListenerView, RuleSource, RulesView};
use tests::{
    agent_views::AgentViews as _,
    lab_traffic::{
        config_path, end_agent, lab_up, lab_with_agent, short_connections, start_agent, target,
        write_config,
    },
};
use xtask::{agent::LabAgent, lab::Lab};

const TOKEN: &str = "s3cret-token-for-the-lab-0123456789";

fn config(extra_agent: &str) -> String {
    config_with(extra_agent, 80, 1)
}

/// The test's config with `extra_agent` lines, the listener on `port`, and b2 at `b2_weight`.
fn config_with(extra_agent: &str, port: u16, b2_weight: u32) -> String {
    format!(
        r#"
[agent]
{extra_agent}

[[target_group]]
name = "echo"
protocol = "tcp"
port = 8080
targets = [{{ address = "198.18.0.21" }}, {{ address = "198.18.0.22", weight = {b2_weight} }}]
health_check = {{ interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }}

[[listener]]
name = "echo"
address = "198.18.1.100"
port = {port}
protocol = "tcp"
default_action = {{ forward = "echo" }}
"#
    )
}

/// `curl -s -i ARGS` in the load balancer's namespace: (status, headers, body).
fn curl(lab: &Lab, args: &[&str]) -> (u16, String, String) {
    let mut all = vec!["curl", "-s", "-i", "--max-time", "10"];
    all.extend(args);
    let out = lab.run(lab.lb(), &all).expect("curl");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn unix(agent: &LabAgent) -> [&str; 2] {
    ["--unix-socket", agent.socket().to_str().expect("UTF-8")]
}

fn etag(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("etag:")
                .then(|| l[5..].trim().to_owned())
        })
        .expect("an ETag")
}

#[test]
fn the_tcp_api_answers_401_without_the_token_and_registers_a_target_with_it() {
    let lab = lab_up("at", 3);
    xtask::lab::start_backend_servers(&lab).expect("servers");
    let token_file = lab.log_dir().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let text = config(&format!(
        "api_listen = \"127.0.0.1:9080\"\napi_token_file = \"{}\"\nmetrics_listen = \"127.0.0.1:9090\"",
        token_file.display()
    ));
    write_config(&lab, &text);
    let agent = start_agent(&lab);
    let body = r#"{"address": "198.18.0.23", "weight": 2}"#;
    let url = "http://127.0.0.1:9080/v1/target-groups/echo/targets";
    let post = |auth: Option<&str>| {
        let header = auth.map(|a| format!("Authorization: Bearer {a}"));
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ];
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        args.push(url);
        curl(&lab, &args)
    };
    let (status, head, said) = post(None);
    assert_eq!(status, 401, "{head}\n{said}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    let (status, _, _) = post(Some("not-the-token-at-all-0000"));
    assert_eq!(status, 401);
    let count = |agent: &LabAgent| agent.targets().len();
    assert_eq!(count(&agent), 2, "a refused request changed something");

    let (status, head, said) = post(Some(TOKEN));
    assert_eq!(status, 200, "{head}\n{said}");
    assert_eq!(count(&agent), 3);
    assert_eq!(target(&agent, "echo", "198.18.0.23:8080").weight, 2);

    // The metrics address serves /metrics without a token, and nothing else.
    let (status, _, metrics) = curl(&lab, &["http://127.0.0.1:9090/metrics"]);
    assert_eq!(status, 200);
    assert!(metrics.contains("lb_target_new_flows_total"), "{metrics}");
    let (status, _, _) = curl(&lab, &["http://127.0.0.1:9090/v1/status"]);
    assert_eq!(status, 404);
}

#[test]
fn metrics_parse_with_prometheus_s_parser_and_count_the_traffic_sent() {
    let (lab, agent) = lab_with_agent("am", 2, &config(""));
    let served = short_connections(&lab, 45000, 60);
    let metrics = agent.cli(&["metrics"]).expect("metrics");
    let path = lab.log_dir().join("metrics.txt");
    std::fs::write(&path, &metrics).expect("write metrics");
    // The Prometheus project's parser; it prints name{labels} value per sample.
    let script = "import sys\n\
                  from prometheus_client.parser import text_string_to_metric_families\n\
                  for family in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
                  \x20   for s in family.samples:\n\
                  \x20       labels = ','.join(k + '=' + v for k, v in sorted(s.labels.items()))\n\
                  \x20       print(family.type, s.name, labels, s.value)\n";
    let parsed = lab
        .run(
            lab.client(),
            &[
                xtask::lab::python3(),
                "-c",
                script,
                path.to_str().expect("UTF-8"),
            ],
        )
        .expect("prometheus_client parses /metrics");
    let mut samples: BTreeMap<(String, String), f64> = BTreeMap::new();
    for line in parsed.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [kind, name, labels, value] = parts[..] else {
            panic!("{line}")
        };
        if name.ends_with("_total") {
            assert_eq!(kind, "counter", "{line}");
        }
        samples.insert(
            (name.to_owned(), labels.to_owned()),
            value.parse().expect("value"),
        );
    }
    let get = |name: &str, labels: &str| {
        samples
            .get(&(name.to_owned(), labels.to_owned()))
            .copied()
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{metrics}"))
    };
    assert_eq!(
        get(
            "lb_listener_new_flows_total",
            "address=198.18.1.100:80,listener=echo,protocol=tcp,target_group=echo"
        ),
        60.0
    );
    for (i, backend) in ["b1", "b2"].iter().enumerate() {
        let labels = format!("target=198.18.0.{}:8080,target_group=echo", 21 + i);
        let sent = served.get(*backend).copied().unwrap_or(0) as f64;
        assert_eq!(get("lb_target_new_flows_total", &labels), sent, "{backend}");
        let states: f64 = [
            "initial",
            "healthy",
            "unhealthy",
            "unavailable",
            "draining",
            "unused",
        ]
        .iter()
        .map(|s| get("lb_target_health_state", &format!("state={s},{labels}")))
        .sum();
        assert_eq!(states, 1.0, "one state at a time");
    }
    assert_eq!(
        get("lb_target_group_new_flows_total", "target_group=echo"),
        60.0
    );
    assert_eq!(
        get(
            "lb_listener_active_flows",
            "address=198.18.1.100:80,listener=echo,protocol=tcp,target_group=echo"
        ),
        60.0
    );
    assert!(get("lb_conntrack_entries", "") >= 60.0);
    assert!(get("lb_conntrack_capacity", "") > 0.0);
    assert!(get("lb_dataplane_packets_total", "verdict=fwd_to_backend") > 0.0);
    assert_eq!(get("lb_agent_build_info", "version=0.1.0"), 1.0);
}

#[test]
fn a_stale_write_is_refused_and_the_config_is_validated_and_applied_through_the_api() {
    let (lab, agent) = lab_with_agent("av", 3, &config(""));
    let sock = unix(&agent);
    let (status, head, _) = curl(
        &lab,
        &[sock[0], sock[1], "http://lb-agent/v1/target-groups"],
    );
    assert_eq!(status, 200);
    let seen = etag(&head);
    // The API documents itself.
    let (status, _, doc) = curl(&lab, &[sock[0], sock[1], "http://lb-agent/openapi.json"]);
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("OpenAPI JSON");
    assert!(
        doc["paths"]["/v1/target-groups/{group}/targets"]["post"].is_object(),
        "{doc}"
    );
    let add = |address: &str, if_match: &str| {
        let body = format!(r#"{{"address": "{address}"}}"#);
        let header = format!("If-Match: {if_match}");
        curl(
            &lab,
            &[
                sock[0],
                sock[1],
                "-X",
                "POST",
                "-H",
                &header,
                "-d",
                &body,
                "http://lb-agent/v1/target-groups/echo/targets",
            ],
        )
    };
    let (status, _, said) = add("198.18.0.23", &seen);
    assert_eq!(status, 200, "{said}");
    // Based on the same, now old, version: refused, nothing changed.
    let (status, _, said) = add("198.18.0.24", &seen);
    assert_eq!(status, 412, "{said}");
    assert!(said.contains("stale"), "{said}");
    assert_eq!(agent.targets().len(), 3);

    // Validate: every error with its line; apply refuses a bad file and keeps the old one.
    // Two mistakes: both reported.
    let bad = config_with("", 0, 5000);
    let bad_file = lab.log_dir().join("bad.toml");
    std::fs::write(&bad_file, &bad).expect("write");
    let err = agent
        .cli(&[
            "config",
            "validate",
            "--file",
            bad_file.to_str().expect("UTF-8"),
        ])
        .expect_err("invalid");
    let err = format!("{err:#}");
    assert!(
        err.contains("listener[0].port") && err.contains("weight"),
        "{err}"
    );
    let before = std::fs::read_to_string(config_path(&lab)).expect("config");
    let err = agent
        .cli(&[
            "config",
            "apply",
            "--file",
            bad_file.to_str().expect("UTF-8"),
        ])
        .expect_err("not applied");
    assert!(format!("{err:#}").contains("not applied"), "{err:#}");
    assert_eq!(
        std::fs::read_to_string(config_path(&lab)).expect("config"),
        before
    );

    let good = config_with("", 80, 3);
    let good_file = lab.log_dir().join("good.toml");
    std::fs::write(&good_file, &good).expect("write");
    let said = agent
        .cli(&[
            "config",
            "apply",
            "--file",
            good_file.to_str().expect("UTF-8"),
        ])
        .expect("applied");
    assert!(said.contains("weight 1 -> 3"), "{said}");
    assert_eq!(
        std::fs::read_to_string(config_path(&lab)).expect("config"),
        good
    );
    assert_eq!(target(&agent, "echo", "198.18.0.22:8080").weight, 3);
    let shown = agent.cli(&["config", "show"]).expect("show");
    assert_eq!(shown, good);
}

#[test]
fn a_change_that_would_make_the_config_invalid_is_refused_and_a_restart_still_starts() {
    let (lab, agent) = lab_with_agent("az", 2, &config(""));
    let sock = unix(&agent);
    let (status, _, said) = curl(
        &lab,
        &[
            sock[0],
            sock[1],
            "-X",
            "POST",
            "-d",
            r#"{"address": "0.0.0.0"}"#,
            "http://lb-agent/v1/target-groups/echo/targets",
        ],
    );
    assert_eq!(status, 422, "{said}");
    assert!(said.contains("0.0.0.0"), "{said}");
    assert_eq!(
        agent.targets().len(),
        2,
        "the refused target was registered"
    );
    assert!(agent.overrides().is_empty(), "the refused target was kept");
    // The next agent starts from the file and the state file: nothing there stops it.
    let pid = agent.pid();
    end_agent(&lab, pid, libc::SIGTERM);
    let again = start_agent(&lab);
    assert_eq!(again.targets().len(), 2);
}

/// An http listener `site` (a rule at 10) beside the tcp listener `echo`; http groups `web`
/// and `api` on the lab's backends.
const RULES_CONFIG: &str = r#"
[agent]

[[target_group]]
name = "echo"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.21" }]

[[target_group]]
name = "web"
protocol = "http"
port = 8080
targets = [{ address = "198.18.0.21" }]

[[target_group]]
name = "api"
protocol = "http"
port = 8080
targets = [{ address = "198.18.0.22" }]

[[listener]]
name = "echo"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "echo" }

[[listener]]
name = "site"
address = "198.18.1.100"
port = 8000
protocol = "http"
default_action = { forward = "web" }
[[listener.rule]]
priority = 10
conditions = { host = ["api.example.com"] }
action = { forward = "api" }
"#;

/// `lb-agent ARGS` (with `--json` among them) read as a `T`.
fn cli_json<T: serde::de::DeserializeOwned>(agent: &LabAgent, args: &[&str]) -> T {
    let out = agent
        .cli(args)
        .unwrap_or_else(|e| panic!("lb-agent {}: {e:#}", args.join(" ")));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lb-agent {}: {e}\n{out}", args.join(" ")))
}

/// `site`'s rules as (priority, source).
fn site_rules(agent: &LabAgent) -> Vec<(u32, RuleSource)> {
    let view: RulesView = cli_json(agent, &["rules", "list", "--listener", "site", "--json"]);
    view.rules.iter().map(|r| (r.priority, r.source)).collect()
}

#[test]
fn rules_are_added_listed_moved_and_removed_through_the_api_and_kept_across_a_restart() {
    let (lab, agent) = lab_with_agent("ar", 2, RULES_CONFIG);
    let sock = unix(&agent);
    let rules_url = "http://lb-agent/v1/listeners/site/rules";
    let post = |body: &str| {
        curl(
            &lab,
            &[sock[0], sock[1], "-X", "POST", "-d", body, rules_url],
        )
    };

    // Through the API, as JSON in the file's vocabulary.
    let (status, _, said) = post(
        r#"{"priority": 20, "conditions": {"path": ["/v2/*"]},
            "action": {"forward": [{"target_group": "api", "weight": 90},
                                   {"target_group": "web", "weight": 10}]}}"#,
    );
    assert_eq!(status, 200, "{said}");
    // Through the CLI's flags.
    let said = agent
        .cli(&[
            "rules",
            "add",
            "--listener",
            "site",
            "--priority",
            "30",
            "--path",
            "/old/*",
            "--redirect-path",
            "/new/#{path}",
        ])
        .expect("rules add");
    assert!(said.contains("rule 30 added"), "{said}");
    assert_eq!(
        site_rules(&agent),
        [
            (10, RuleSource::File),
            (20, RuleSource::Api),
            (30, RuleSource::Api)
        ]
    );

    // Refused whole: a taken priority, an unknown group. Nothing changes.
    let (status, _, said) =
        post(r#"{"priority": 10, "conditions": {"path": ["/x"]}, "action": {"forward": "web"}}"#);
    assert_eq!(status, 422, "{said}");
    assert!(said.contains("priority 10 already"), "{said}");
    let (status, _, said) =
        post(r#"{"priority": 40, "conditions": {"path": ["/x"]}, "action": {"forward": "nope"}}"#);
    assert_eq!(status, 422, "{said}");
    assert!(said.contains("no target group named `nope`"), "{said}");
    assert_eq!(site_rules(&agent).len(), 3);

    // Moved through the API, removed through the CLI.
    let (status, _, said) = curl(
        &lab,
        &[
            sock[0],
            sock[1],
            "-X",
            "PUT",
            "-d",
            r#"{"priority": 25}"#,
            "http://lb-agent/v1/listeners/site/rules/20/priority",
        ],
    );
    assert_eq!(status, 200, "{said}");
    agent
        .cli(&["rules", "remove", "--listener", "site", "--priority", "10"])
        .expect("rules remove");
    assert_eq!(
        site_rules(&agent),
        [(25, RuleSource::Api), (30, RuleSource::Api)]
    );

    // Listeners of both kinds, with what they do.
    let listeners: Vec<ListenerView> = cli_json(&agent, &["listeners", "list", "--json"]);
    let site = listeners.iter().find(|l| l.name == "site").expect("site");
    assert_eq!(site.protocol, "http");
    assert_eq!(site.settings.rules, 2);
    let echo = listeners.iter().find(|l| l.name == "echo").expect("echo");
    assert_eq!(echo.target_group, "echo");
    assert_eq!(echo.settings.rules, 0);
    let table = agent.cli(&["listeners", "list"]).expect("listeners list");
    assert!(
        table.contains("forward web") && table.contains("forward echo"),
        "{table}"
    );
    assert_eq!(
        agent.overrides().rules["site"].len(),
        3,
        "25, 30 set; 10 removed"
    );

    // A restart runs the file with the state file: the same rules.
    end_agent(&lab, agent.pid(), libc::SIGTERM);
    let again = start_agent(&lab);
    assert_eq!(
        site_rules(&again),
        [(25, RuleSource::Api), (30, RuleSource::Api)]
    );
}
