//! Target lifecycle against the in-memory maps, on a clock the tests move: no root, no sleeps.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::{Flow, FlowKey};

use super::*;
use crate::{
    config::HealthProtocol,
    dataplane::memory::MemoryMaps,
    health::probe::{Failure, ProbeResult},
};

/// Both targets of `web`, as the file lists them.
const WEB_TARGETS: &str = r#"{ address = "198.18.0.21" }, { address = "198.18.0.22" }"#;

/// Two groups behind two listeners: `web` (checked: healthy after 2, unhealthy after 2;
/// 10 s deregistration delay; `web_settings` added, `web_targets` registered) and `other`
/// (not checked).
fn config_text(web_settings: &str, web_targets: &str) -> String {
    format!(
        r#"
[agent]
snat_addresses = ["198.18.0.1"]
maglev_table_size = 251

[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
deregistration_delay = "10s"
{web_settings}
targets = [{web_targets}]
[target_group.health_check]
interval = "5s"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 2

[[target_group]]
name = "other"
protocol = "tcp"
port = 9090
targets = [{{ address = "198.18.0.31" }}]
[target_group.health_check]
enabled = false

[[listener]]
name = "web"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = {{ forward = "web" }}

[[listener]]
name = "other"
address = "198.18.1.100"
port = 90
protocol = "tcp"
default_action = {{ forward = "other" }}
"#
    )
}

/// The plain test config.
fn plain() -> String {
    config_text("", WEB_TARGETS)
}

fn config(text: &str) -> Config {
    Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// `seconds` after `t0`.
fn at(t0: Instant, seconds: f64) -> Instant {
    t0 + Duration::from_secs_f64(seconds)
}

/// A state programmed from `text` into fresh in-memory maps, at `t0`.
struct Bed {
    state: State,
    maps: MemoryMaps,
    t0: Instant,
}

impl Bed {
    fn new(text: &str) -> Self {
        let config = config(text);
        let mut maps = MemoryMaps::new(251, 8);
        let t0 = Instant::now();
        let snat: Vec<IpAddr> = config.agent.snat_addresses.clone();
        let state = State::apply(&config, &snat, &mut maps, &Ids::default(), t0).unwrap();
        Self { state, maps, t0 }
    }

    /// Slots of the group's active table per target address.
    fn shares(&self, group: &str) -> BTreeMap<SocketAddr, usize> {
        let g = self.state.group(group).unwrap();
        let by_id: BTreeMap<u32, SocketAddr> = g
            .targets
            .iter()
            .map(|t| (t.backend_id, t.address))
            .collect();
        self.maps
            .table_shares(g.id)
            .into_iter()
            .filter_map(|(id, n)| Some((*by_id.get(&id)?, n)))
            .collect()
    }

    fn in_table(&self, group: &str, target: &str) -> bool {
        self.shares(group).contains_key(&addr(target))
    }

    /// Feeds `n` check results for `target` at `at`.
    fn check(&mut self, group: &str, target: &str, ok: bool, n: usize, at: Instant) {
        let spec = self
            .state
            .checks()
            .into_iter()
            .find(|s| s.group == group && s.target == addr(target))
            .unwrap_or_else(|| panic!("{target} of {group} is not checked"));
        let result = ProbeResult {
            outcome: if ok { Ok(()) } else { Err(Failure::Refused) },
            latency: Duration::from_millis(1),
        };
        for _ in 0..n {
            self.state
                .record_check(&mut self.maps, &spec, &result, at)
                .unwrap();
        }
    }

    /// A live flow in the connection table to `target` of `group`, from client port `port`.
    fn flow(&mut self, group: &str, target: &str, port: u16) {
        let backend_id = self.state.backend_id(group, addr(target)).unwrap();
        let key = FlowKey {
            sport: port.to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_V4,
            ..FlowKey::default()
        };
        let flow = Flow {
            backend_id,
            last_seen: self.maps.clock_ns,
            ..Flow::default()
        };
        self.maps.flows.push((key, flow));
    }

    fn flows_to(&self, backend_id: u32) -> usize {
        self.maps
            .flows
            .iter()
            .filter(|(_, f)| f.backend_id == backend_id)
            .count()
    }

    fn state_of(&self, group: &str, target: &str) -> TargetState {
        let views = self.state.targets(&self.maps, Some(group)).unwrap();
        views
            .into_iter()
            .find(|t| t.address == addr(target))
            .map(|t| t.state)
            .unwrap_or_else(|| panic!("{target} is not in {group}"))
    }
}

#[test]
fn targets_the_agent_starts_with_serve_while_their_first_checks_run() {
    let bed = Bed::new(&plain());
    assert!(bed.in_table("web", "198.18.0.21:8080"));
    assert!(bed.in_table("web", "198.18.0.22:8080"));
    assert_eq!(
        bed.state_of("web", "198.18.0.21:8080"),
        TargetState::Initial
    );
}

#[test]
fn a_target_added_live_waits_for_its_healthy_threshold() {
    let mut bed = Bed::new(&plain());
    let new = "198.18.0.23:8080";
    bed.state
        .add_target(&mut bed.maps, "web", addr(new), 1, at(bed.t0, 1.0))
        .unwrap();
    assert!(!bed.in_table("web", new), "in service before any check");
    bed.check("web", new, true, 1, at(bed.t0, 2.0));
    assert!(!bed.in_table("web", new), "in service after 1 of 2 checks");
    bed.check("web", new, true, 1, at(bed.t0, 3.0));
    assert!(bed.in_table("web", new));
    assert_eq!(bed.state_of("web", new), TargetState::Healthy);
}

#[test]
fn weights_set_each_targets_share_of_the_table() {
    let mut bed = Bed::new(&plain());
    let before = bed
        .state
        .set_weight(
            &mut bed.maps,
            "web",
            addr("198.18.0.21:8080"),
            3,
            at(bed.t0, 1.0),
        )
        .unwrap();
    assert_eq!(before, 1);
    let shares = bed.shares("web");
    let share = shares[&addr("198.18.0.21:8080")] as f64 / 251.0;
    assert!((share - 0.75).abs() < 0.02, "3:1 gave {share}");
    bed.state
        .set_weight(
            &mut bed.maps,
            "web",
            addr("198.18.0.21:8080"),
            0,
            at(bed.t0, 2.0),
        )
        .unwrap();
    assert!(!bed.in_table("web", "198.18.0.21:8080"));
}

#[test]
fn a_weight_above_the_maximum_is_refused_and_changes_nothing() {
    let mut bed = Bed::new(&plain());
    let writes = bed.maps.writes;
    let refused = bed.state.set_weight(
        &mut bed.maps,
        "web",
        addr("198.18.0.21:8080"),
        1001,
        at(bed.t0, 1.0),
    );
    assert!(
        matches!(refused, Err(StateError::Weight(1001))),
        "{refused:?}"
    );
    assert_eq!(bed.maps.writes, writes);
}

#[test]
fn a_deregistered_target_drains_for_the_delay_then_its_flows_are_cut() {
    let mut bed = Bed::new(&plain());
    let (leaving, staying) = ("198.18.0.21:8080", "198.18.0.22:8080");
    bed.flow("web", leaving, 1000);
    bed.flow("web", staying, 1001);
    let (gone_id, kept_id) = (
        bed.state.backend_id("web", addr(leaving)).unwrap(),
        bed.state.backend_id("web", addr(staying)).unwrap(),
    );
    let delay = bed
        .state
        .remove_target(&mut bed.maps, "web", addr(leaving), at(bed.t0, 0.0))
        .unwrap();
    assert_eq!(delay, Duration::from_secs(10));
    assert!(!bed.in_table("web", leaving), "new flows still reach it");
    assert_eq!(bed.state_of("web", leaving), TargetState::Draining);
    bed.state.tick(&mut bed.maps, at(bed.t0, 9.9)).unwrap();
    assert_eq!(bed.flows_to(gone_id), 1, "cut before the delay");
    bed.state.tick(&mut bed.maps, at(bed.t0, 10.0)).unwrap();
    assert_eq!(bed.flows_to(gone_id), 0, "kept after the delay");
    assert_eq!(bed.flows_to(kept_id), 1, "another target's flow was cut");
    assert_eq!(bed.state.backend_id("web", addr(leaving)), None);
}

#[test]
fn draining_ends_early_once_the_target_has_no_live_flow() {
    let mut bed = Bed::new(&plain());
    let leaving = "198.18.0.21:8080";
    bed.flow("web", leaving, 1000);
    bed.state
        .remove_target(&mut bed.maps, "web", addr(leaving), at(bed.t0, 0.0))
        .unwrap();
    bed.state.tick(&mut bed.maps, at(bed.t0, 1.0)).unwrap();
    assert!(
        bed.state.backend_id("web", addr(leaving)).is_some(),
        "a live flow left"
    );
    // The flow closes and goes quiet past closed_timeout (the data plane's clock).
    bed.maps.flows[0].1.closing = 1;
    bed.maps.clock_ns += 61_000_000_000;
    bed.state.tick(&mut bed.maps, at(bed.t0, 6.0)).unwrap();
    assert_eq!(bed.state.backend_id("web", addr(leaving)), None);
}

#[test]
fn draining_waits_for_a_flow_where_only_the_target_still_sends() {
    let mut bed = Bed::new(&plain());
    let leaving = "198.18.0.21:8080";
    bed.flow("web", leaving, 1000);
    // The client went quiet past the idle timeout; the target kept sending until now.
    bed.maps.clock_ns += 400_000_000_000;
    let (key, flow) = bed.maps.flows[0];
    let reverse = lb_common::ReverseFlow {
        client: key.src,
        vip: key.dst,
        client_port: key.sport,
        vip_port: key.dport,
        backend_id: flow.backend_id,
        answered: 1,
        last_seen: bed.maps.clock_ns,
        ..lb_common::ReverseFlow::default()
    };
    bed.maps
        .reverse_flows
        .push((lb_common::conntrack::reverse_key(&key, &flow), reverse));
    bed.state
        .remove_target(&mut bed.maps, "web", addr(leaving), at(bed.t0, 0.0))
        .unwrap();
    bed.state.tick(&mut bed.maps, at(bed.t0, 6.0)).unwrap();
    assert!(
        bed.state.backend_id("web", addr(leaving)).is_some(),
        "draining ended while the target still sends"
    );
}

#[test]
fn a_draining_target_registered_again_returns_to_service() {
    let mut bed = Bed::new(&plain());
    let target = addr("198.18.0.21:8080");
    bed.state
        .remove_target(&mut bed.maps, "web", target, at(bed.t0, 0.0))
        .unwrap();
    bed.state
        .add_target(&mut bed.maps, "web", target, 2, at(bed.t0, 1.0))
        .unwrap();
    assert!(bed.in_table("web", "198.18.0.21:8080"));
    bed.state.tick(&mut bed.maps, at(bed.t0, 20.0)).unwrap();
    assert!(
        bed.state.backend_id("web", target).is_some(),
        "removed anyway"
    );
}

#[test]
fn a_target_failing_its_unhealthy_threshold_leaves_the_table() {
    let mut bed = Bed::new(&plain());
    let sick = "198.18.0.21:8080";
    bed.check("web", sick, false, 1, at(bed.t0, 1.0));
    assert!(bed.in_table("web", sick), "out after 1 of 2 failures");
    bed.check("web", sick, false, 1, at(bed.t0, 2.0));
    assert!(!bed.in_table("web", sick));
    assert_eq!(bed.state_of("web", sick), TargetState::Unhealthy);
    assert_eq!(bed.state.transitions.get("initial->unhealthy"), Some(&1));
}

#[test]
fn with_every_target_unhealthy_the_group_fails_open_and_closes_again() {
    let mut bed = Bed::new(&plain());
    for target in ["198.18.0.21:8080", "198.18.0.22:8080"] {
        bed.check("web", target, false, 2, at(bed.t0, 1.0));
    }
    assert_eq!(bed.shares("web").len(), 2, "not failing open to both");
    assert!(
        bed.state
            .groups()
            .iter()
            .any(|g| g.name == "web" && g.failing_open)
    );
    bed.check("web", "198.18.0.22:8080", true, 2, at(bed.t0, 2.0));
    assert_eq!(
        bed.shares("web").keys().collect::<Vec<_>>(),
        [&addr("198.18.0.22:8080")]
    );
    assert!(!bed.state.groups().iter().any(|g| g.failing_open));
}

#[test]
fn without_fail_open_a_group_with_no_healthy_target_drops_new_flows() {
    let mut bed = Bed::new(&config_text("fail_open = false", WEB_TARGETS));
    for target in ["198.18.0.21:8080", "198.18.0.22:8080"] {
        bed.check("web", target, false, 2, at(bed.t0, 1.0));
    }
    assert!(bed.shares("web").is_empty(), "{:?}", bed.shares("web"));
}

#[test]
fn slow_start_ramps_a_returning_target_up_to_its_full_share() {
    let mut bed = Bed::new(&config_text("slow_start = \"100s\"", WEB_TARGETS));
    let returning = "198.18.0.21:8080";
    bed.check("web", returning, false, 2, at(bed.t0, 1.0));
    bed.check("web", returning, true, 2, at(bed.t0, 2.0));
    let share = |bed: &Bed| {
        bed.shares("web")
            .get(&addr(returning))
            .copied()
            .unwrap_or(0)
    };
    let first = share(&bed);
    assert!(first < 10, "starts with {first} of 251 slots");
    bed.state.tick(&mut bed.maps, at(bed.t0, 52.0)).unwrap();
    // Half its weight against the other's full one: a third of the table.
    let half = share(&bed);
    assert!((70..=100).contains(&half), "half way: {half} slots");
    bed.state.tick(&mut bed.maps, at(bed.t0, 102.0)).unwrap();
    let full = share(&bed);
    assert!((115..=136).contains(&full), "at the end: {full} slots");
}

#[test]
fn terminate_on_unhealthy_cuts_the_targets_established_flows() {
    let mut bed = Bed::new(&config_text("terminate_on_unhealthy = true", WEB_TARGETS));
    let (sick, fine) = ("198.18.0.21:8080", "198.18.0.22:8080");
    bed.flow("web", sick, 1000);
    bed.flow("web", fine, 1001);
    let sick_id = bed.state.backend_id("web", addr(sick)).unwrap();
    bed.check("web", sick, false, 2, at(bed.t0, 1.0));
    assert_eq!(bed.flows_to(sick_id), 0);
    assert_eq!(bed.maps.flows.len(), 1, "the healthy target's flow was cut");
}

#[test]
fn a_refused_map_write_leaves_the_state_and_the_active_table_as_they_were() {
    let mut bed = Bed::new(&plain());
    let shares = bed.shares("web");
    let groups = bed.state.groups();
    // The backend entry is written, the idle table too; the flip is refused.
    bed.maps.refuse_writes_after(2);
    let refused = bed.state.add_target(
        &mut bed.maps,
        "web",
        addr("198.18.0.23:8080"),
        1,
        at(bed.t0, 1.0),
    );
    assert!(
        matches!(refused, Err(StateError::Dataplane(_))),
        "{refused:?}"
    );
    bed.maps.accept_writes();
    assert_eq!(bed.shares("web"), shares);
    assert_eq!(bed.state.backend_id("web", addr("198.18.0.23:8080")), None);
    assert_eq!(
        serde_json::to_value(bed.state.groups()).unwrap(),
        serde_json::to_value(groups).unwrap()
    );
    // And the same change goes through once the maps take writes again.
    bed.state
        .add_target(
            &mut bed.maps,
            "web",
            addr("198.18.0.23:8080"),
            1,
            at(bed.t0, 2.0),
        )
        .unwrap();
}

#[test]
fn a_reload_rebuilds_only_the_groups_that_changed() {
    let mut bed = Bed::new(&plain());
    let version = |bed: &Bed, name: &str| {
        bed.state
            .groups()
            .into_iter()
            .find(|g| g.name == name)
            .unwrap()
            .table_version
    };
    let (web, other) = (version(&bed, "web"), version(&bed, "other"));
    let changed = config(&config_text(
        "",
        r#"{ address = "198.18.0.21" }, { address = "198.18.0.22", weight = 4 }"#,
    ));
    let changes = bed
        .state
        .reload(
            &mut bed.maps,
            &changed,
            &["198.18.0.1".parse().unwrap()],
            at(bed.t0, 1.0),
        )
        .unwrap();
    assert_eq!(
        changes,
        ["group web: target 198.18.0.22:8080 weight 1 -> 4"]
    );
    assert_eq!(version(&bed, "web"), web + 1);
    assert_eq!(version(&bed, "other"), other);
    let again = bed
        .state
        .reload(
            &mut bed.maps,
            &changed,
            &["198.18.0.1".parse().unwrap()],
            at(bed.t0, 2.0),
        )
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_reload_drains_targets_the_file_no_longer_lists() {
    let mut bed = Bed::new(&plain());
    let changed = config(&config_text("", r#"{ address = "198.18.0.21" }"#));
    bed.state
        .reload(
            &mut bed.maps,
            &changed,
            &["198.18.0.1".parse().unwrap()],
            at(bed.t0, 0.0),
        )
        .unwrap();
    assert_eq!(
        bed.state_of("web", "198.18.0.22:8080"),
        TargetState::Draining
    );
    bed.state.tick(&mut bed.maps, at(bed.t0, 10.0)).unwrap();
    assert_eq!(bed.state.backend_id("web", addr("198.18.0.22:8080")), None);
}

#[test]
fn an_adopted_data_plane_keeps_every_targets_id_when_the_config_order_changes() {
    let mut bed = Bed::new(&plain());
    for (i, target) in ["198.18.0.21:8080", "198.18.0.22:8080"]
        .into_iter()
        .enumerate()
    {
        bed.flow("web", target, 1000 + i as u16);
    }
    bed.flow("other", "198.18.0.31:9090", 2000);
    let ids = bed.state.ids();
    // The restarted agent's file lists the groups and targets the other way round.
    let reordered = r#"
[agent]
snat_addresses = ["198.18.0.1"]
maglev_table_size = 251

[[target_group]]
name = "other"
protocol = "tcp"
port = 9090
targets = [{ address = "198.18.0.31" }]
[target_group.health_check]
enabled = false

[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
deregistration_delay = "10s"
targets = [{ address = "198.18.0.22" }, { address = "198.18.0.21" }]

[[listener]]
name = "other"
address = "198.18.1.100"
port = 90
protocol = "tcp"
default_action = { forward = "other" }

[[listener]]
name = "web"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "web" }
"#;
    let mut maps = bed.maps.clone().adopt();
    let snat = ["198.18.0.1".parse().unwrap()];
    let mut adopted = State::apply(&config(reordered), &snat, &mut maps, &ids, bed.t0).unwrap();
    assert_eq!(adopted.ids(), ids, "ids changed on adoption");
    let removed = addr("198.18.0.21:8080");
    let removed_id = adopted.backend_id("web", removed).unwrap();
    adopted
        .remove_target(&mut maps, "web", removed, bed.t0)
        .unwrap();
    adopted
        .tick(&mut maps, bed.t0 + Duration::from_secs(10))
        .unwrap();
    let left: Vec<u32> = maps.flows.iter().map(|(_, f)| f.backend_id).collect();
    assert!(!left.contains(&removed_id));
    assert_eq!(left.len(), 2, "another target's flows were cut: {left:?}");
}

#[test]
fn an_adopted_target_the_config_dropped_drains_instead_of_losing_its_flows() {
    let mut bed = Bed::new(&plain());
    bed.flow("web", "198.18.0.22:8080", 1000);
    let ids = bed.state.ids();
    let without = config(&config_text("", r#"{ address = "198.18.0.21" }"#));
    let mut maps = bed.maps.clone().adopt();
    let snat = ["198.18.0.1".parse().unwrap()];
    let mut state = State::apply(&without, &snat, &mut maps, &ids, bed.t0).unwrap();
    let gone = state.backend_id("web", addr("198.18.0.22:8080"));
    assert_eq!(
        gone,
        ids.backends["web"].get(&addr("198.18.0.22:8080")).copied()
    );
    assert_eq!(maps.flows.len(), 1, "its flow was cut at once");
    state
        .tick(&mut maps, bed.t0 + Duration::from_secs(10))
        .unwrap();
    assert!(maps.flows.is_empty(), "its flow outlived the delay");
}

/// `plain()` with `[agent] flow_hash_seed = seed`.
fn with_seed(seed: u32) -> String {
    plain().replacen(
        "[agent]\n",
        &format!("[agent]\nflow_hash_seed = {seed}\n"),
        1,
    )
}

#[test]
fn the_flow_hash_seed_is_the_configs_and_a_reload_changes_it() {
    let mut bed = Bed::new(&with_seed(12345));
    assert_eq!(bed.maps.settings.hash_seed, 12345);
    let snat = ["198.18.0.1".parse().unwrap()];
    bed.state
        .reload(&mut bed.maps, &config(&with_seed(777)), &snat, bed.t0)
        .unwrap();
    assert_eq!(bed.maps.settings.hash_seed, 777);
}

#[test]
fn without_a_configured_seed_each_fresh_start_draws_its_own() {
    // Two nodes of a cluster without a seed would place flows differently: the README asks
    // for one. 1 in 2^32 that two draws agree.
    let (a, b) = (Bed::new(&plain()), Bed::new(&plain()));
    assert_ne!(a.maps.settings.hash_seed, b.maps.settings.hash_seed);
}

#[test]
fn without_a_configured_seed_adoption_and_reloads_keep_the_seed_in_force() {
    let mut bed = Bed::new(&plain());
    let seed = bed.maps.settings.hash_seed;
    let snat = ["198.18.0.1".parse().unwrap()];
    // The restarted agent adopts the maps: their flows were placed with this seed.
    let mut maps = bed.maps.clone().adopt();
    let ids = bed.state.ids();
    State::apply(&config(&plain()), &snat, &mut maps, &ids, bed.t0).unwrap();
    assert_eq!(maps.settings.hash_seed, seed, "adoption changed the seed");
    let changed = config(&config_text("", r#"{ address = "198.18.0.21" }"#));
    bed.state
        .reload(&mut bed.maps, &changed, &snat, bed.t0)
        .unwrap();
    assert_eq!(
        bed.maps.settings.hash_seed, seed,
        "a reload changed the seed"
    );
}

/// Three L7 groups: `api` (http, `api_version`, no check configured), `secure` (https, http2,
/// no check configured) and `own` (grpc, its own path and matcher).
fn l7_groups(api_version: &str) -> String {
    format!(
        r#"
[agent]
snat_addresses = ["198.18.0.1"]
maglev_table_size = 251

[[target_group]]
name = "api"
protocol = "http"
port = 8080
protocol_version = "{api_version}"
targets = [{{ address = "198.18.0.41" }}]

[[target_group]]
name = "secure"
protocol = "https"
port = 8443
protocol_version = "http2"
targets = [{{ address = "198.18.0.42" }}]

[[target_group]]
name = "own"
protocol = "http"
port = 8080
protocol_version = "grpc"
targets = [{{ address = "198.18.0.43" }}]
[target_group.health_check]
protocol = "http"
path = "/grpc.health.v1.Health/Check"
matcher = "0"
"#
    )
}

/// The check `groups()` shows for `name`: (protocol, path, matcher).
fn shown_check(state: &State, name: &str) -> (HealthProtocol, String, String) {
    let view = state.groups().into_iter().find(|g| g.name == name).unwrap();
    let hc = view.health_check.unwrap();
    (hc.protocol, hc.path, hc.matcher)
}

#[test]
fn groups_show_the_check_that_runs_in_each_groups_protocol_and_version() {
    let bed = Bed::new(&l7_groups("grpc"));
    let owned = |(p, path, m): (HealthProtocol, &str, &str)| (p, path.to_owned(), m.to_owned());
    assert_eq!(
        shown_check(&bed.state, "api"),
        owned((HealthProtocol::Http, "/AWS.ALB/healthcheck", "12"))
    );
    assert_eq!(
        shown_check(&bed.state, "secure"),
        owned((HealthProtocol::Https, "/", "200-399"))
    );
    assert_eq!(
        shown_check(&bed.state, "own"),
        owned((HealthProtocol::Http, "/grpc.health.v1.Health/Check", "0"))
    );
}

#[test]
fn a_reload_that_changes_a_groups_protocol_version_replaces_its_check() {
    let mut bed = Bed::new(&l7_groups("http2"));
    let probe = |bed: &Bed| {
        format!(
            "{:?}",
            bed.state
                .group("api")
                .unwrap()
                .check
                .as_ref()
                .unwrap()
                .probe
        )
    };
    assert!(
        probe(&bed).contains("version: \"http2\""),
        "{}",
        probe(&bed)
    );
    let changes = bed
        .state
        .reload(
            &mut bed.maps,
            &config(&l7_groups("grpc")),
            &["198.18.0.1".parse().unwrap()],
            at(bed.t0, 1.0),
        )
        .unwrap();
    assert_eq!(changes, ["group api: health check replaced"]);
    assert!(probe(&bed).contains("version: \"grpc\""), "{}", probe(&bed));
    assert!(
        probe(&bed).contains("/AWS.ALB/healthcheck"),
        "{}",
        probe(&bed)
    );
}

#[test]
fn draining_ends_at_the_next_look_once_both_sides_have_closed_the_last_flow() {
    let mut bed = Bed::new(&plain());
    let leaving = "198.18.0.21:8080";
    bed.flow("web", leaving, 1000);
    let (key, flow) = bed.maps.flows[0];
    let reverse = lb_common::ReverseFlow {
        client: key.src,
        vip: key.dst,
        client_port: key.sport,
        vip_port: key.dport,
        backend_id: flow.backend_id,
        answered: 1,
        last_seen: bed.maps.clock_ns,
        ..lb_common::ReverseFlow::default()
    };
    let reverse_key = lb_common::conntrack::reverse_key(&key, &flow);
    bed.maps.reverse_flows.push((reverse_key, reverse));
    // Only the client has closed: the target may still send (a half-close).
    bed.maps.flows[0].1.closing = 1;
    bed.state
        .remove_target(&mut bed.maps, "web", addr(leaving), at(bed.t0, 0.0))
        .unwrap();
    bed.state.tick(&mut bed.maps, at(bed.t0, 1.0)).unwrap();
    assert!(
        bed.state.backend_id("web", addr(leaving)).is_some(),
        "a half-closed flow is still open"
    );
    // The target closes too: nothing more can pass, well within closed_timeout.
    bed.maps.reverse_flows[0].1.closing = 1;
    bed.maps.clock_ns += 1_000_000_000;
    bed.state.tick(&mut bed.maps, at(bed.t0, 6.0)).unwrap();
    assert_eq!(bed.state.backend_id("web", addr(leaving)), None);
}
