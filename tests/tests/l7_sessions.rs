//! The L7 proxy and its targets over time: a load-balancer cookie keeps a client on its
//! target until that target leaves service, and a target removed while a long response
//! streams finishes it (draining) while new requests go elsewhere. Needs root; one test at a
//! time.

use std::{collections::BTreeMap, time::Duration};

use lb_agent::health::TargetState;
use tests::{
    l7_lab::{L7Lab, Seen, TargetKind, TargetSpec, path_str, target_name},
    lab_traffic::wait_for_state,
};

/// One `l7-target` on port 8000 of each of b1 and b2, in both groups.
const TARGETS: [TargetSpec; 2] = [
    TargetSpec {
        backend: 0,
        port: 8000,
        kind: TargetKind::Http,
    },
    TargetSpec {
        backend: 1,
        port: 8000,
        kind: TargetKind::Http,
    },
];

const ADDRESSES: [&str; 2] = ["198.18.0.21:8000", "198.18.0.22:8000"];

const CONFIG: &str = r#"
[[target_group]]
name = "sticky"
protocol = "http"
port = 8000
stickiness = { type = "lb_cookie", duration = "1h" }
targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22" }]
health_check = { protocol = "http", path = "/health", interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }

[[target_group]]
name = "drain"
protocol = "http"
port = 8000
deregistration_delay = "30s"
targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22" }]
health_check = { protocol = "http", path = "/health", interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }

[[listener]]
name = "sticky"
address = "198.18.1.100"
port = 80
protocol = "http"
default_action = { forward = "sticky" }

[[listener]]
name = "drain"
address = "198.18.1.100"
port = 8080
protocol = "http"
default_action = { forward = "drain" }
"#;

fn lab(tag: &str) -> L7Lab {
    let groups: Vec<(&str, &str)> = ["sticky", "drain"]
        .into_iter()
        .flat_map(|g| ADDRESSES.map(|a| (g, a)))
        .collect();
    L7Lab::up(
        tag,
        2,
        env!("CARGO_BIN_EXE_l7-target"),
        &TARGETS,
        |_| CONFIG.to_owned(),
        &groups,
    )
}

/// `count` requests on one curl (kept alive) to `url` with the cookie jar `jar` read and
/// written; who served them.
fn requests_with_jar(l7: &L7Lab, jar: &str, url: &str, count: usize) -> BTreeMap<String, usize> {
    let glob = format!("{url}?n=[1-{count}]");
    let out = l7.curl_raw(&["-s", "-b", jar, "-c", jar, "-w", "\\n", &glob]);
    let mut served = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let seen: Seen = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: `{line}`"));
        *served.entry(seen.target).or_insert(0) += 1;
    }
    assert_eq!(served.values().sum::<usize>(), count, "{served:?}");
    served
}

/// The cookies in curl's jar file (comments left out).
fn cookies(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty() && (!l.starts_with('#') || l.starts_with("#HttpOnly_")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_sticky_cookie_holds_a_client_to_its_target_until_the_target_leaves_service() {
    let l7 = lab("l7stk");
    let jar_path = l7.lab.log_dir().join("cookies.txt");
    let jar = path_str(&jar_path);
    let url = "http://198.18.1.100/sticky";
    let first = requests_with_jar(&l7, jar, url, 50);
    assert_eq!(first.len(), 1, "50 requests with the cookie: {first:?}");
    let cookie = cookies(&jar_path);
    assert!(!cookie.is_empty(), "no cookie set");
    for address in ADDRESSES {
        let ip = address.split(':').next().unwrap_or_default();
        assert!(
            !cookie.contains(ip),
            "the cookie names the target: {cookie}"
        );
    }
    let (old, _) = first.iter().next().expect("a target");
    let index = (0..TARGETS.len())
        .find(|&i| target_name(TARGETS[i].backend, TARGETS[i].port) == *old)
        .expect("a lab target");

    // Its target stops: unhealthy after two failed checks.
    l7.lab.stop(l7.targets[index]).expect("stop the target");
    wait_for_state(
        &l7.agent,
        "sticky",
        ADDRESSES[index],
        TargetState::Unhealthy,
        Duration::from_secs(15),
    );
    let moved = requests_with_jar(&l7, jar, url, 50);
    let new = target_name(TARGETS[1 - index].backend, TARGETS[1 - index].port);
    assert_eq!(moved.get(&new), Some(&50), "after {old} left: {moved:?}");
    let new_cookie = cookies(&jar_path);
    assert_ne!(new_cookie, cookie, "the cookie still names the old target");
    // The new cookie holds the client to the new target.
    let again = requests_with_jar(&l7, jar, url, 20);
    assert_eq!(again.get(&new), Some(&20), "{again:?}");
}

#[test]
fn a_target_removed_while_a_response_streams_finishes_it_and_gets_no_new_requests() {
    let l7 = lab("l7drn");
    // A 5-second response: 50 chunks naming the target, one every 100 ms.
    let curl = l7
        .lab
        .spawn(
            l7.lab.client(),
            &[
                "curl",
                "-s",
                "-N",
                "--max-time",
                "30",
                "http://198.18.1.100:8080/slow?seconds=5",
            ],
        )
        .expect("start the long request");
    // Which target streams it: the first chunk says.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let serving = loop {
        let log = l7.lab.log(curl).unwrap_or_default();
        if let Some(name) = log.lines().next().and_then(|l| l.split_whitespace().next()) {
            break name.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no chunk within 10 s: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let index = (0..TARGETS.len())
        .find(|&i| target_name(TARGETS[i].backend, TARGETS[i].port) == serving)
        .unwrap_or_else(|| panic!("`{serving}` is no target"));
    l7.agent
        .cli(&["targets", "remove", "--group", "drain", ADDRESSES[index]])
        .expect("targets remove");

    // New requests go to the other target while the stream goes on.
    let other = target_name(TARGETS[1 - index].backend, TARGETS[1 - index].port);
    for _ in 0..10 {
        let seen = l7.curl(&["http://198.18.1.100:8080/new"]).seen();
        assert_eq!(seen.target, other, "{seen:?}");
    }
    l7.lab
        .wait_ended(curl, Duration::from_secs(20))
        .expect("the long request ends");
    let log = l7.lab.log(curl).expect("curl output");
    let chunks: Vec<&str> = log.lines().collect();
    assert_eq!(chunks.len(), 50, "the stream was cut:\n{log}");
    assert!(
        chunks.iter().all(|c| c.starts_with(&format!("{serving} "))),
        "{log}"
    );
}
