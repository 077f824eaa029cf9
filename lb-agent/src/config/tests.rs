//! Whole config files: the examples, the defaults, and each rule of the validation.

use std::{net::IpAddr, path::Path, time::Duration};

use super::{
    Config, Mode, Stickiness, Target,
    fixture::{ConfigFile, errors, fields},
};

#[test]
fn every_example_file_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n > 0, "no examples");
}

#[test]
fn defaults_apply() {
    let c = ConfigFile::good()
        .set(
            "target_group[0]",
            "health_check",
            r#"{ protocol = "http" }"#,
        )
        .config();
    assert_eq!(c.agent.interface, None);
    assert_eq!(c.agent.control_socket, Path::new("/run/lb-agent.sock"));
    assert_eq!(c.agent.maglev_table_size, 65537);
    assert_eq!(c.agent.snat_port_range, (1024, 32767));
    let g = &c.target_groups[0];
    assert_eq!(g.deregistration_delay, Duration::from_secs(300));
    assert_eq!(g.stickiness, None);
    assert_eq!(g.targets[0].weight, 1);
    assert_eq!(g.targets[0].port_in(g), Some(8080));
    let hc = g.health_check.as_ref().expect("health_check");
    assert_eq!(
        (
            hc.interval,
            hc.timeout,
            hc.healthy_threshold,
            hc.unhealthy_threshold
        ),
        (Duration::from_secs(30), Duration::from_secs(10), 5, 2)
    );
    assert_eq!((hc.path.as_str(), hc.matcher.as_str()), ("/", "200-399"));
    assert_eq!(hc.port, None);
    let l = &c.listeners[0];
    assert_eq!(l.mode, Mode::Nat);
    assert_eq!(l.forward_group(), Some("web"));
    assert!(l.rules.is_empty() && l.certificates.is_empty());
    assert_eq!(c.group("web").map(|g| g.port), Some(Some(8080)));
    assert!(c.group("nope").is_none());
}

#[test]
fn design_contract_example_parses() {
    // The file from DESIGN.md's "user's contract", with an `api` and `canary` group added
    // so its forwards resolve, and the https listener's default action sent to `api`
    // (DESIGN.md sends it to `web`, a tcp group, which an HTTP listener cannot forward to):
    // it must parse whole.
    let text = r#"
[agent]
interface = "eth0"
snat_addresses = ["198.18.0.1"]
control_socket = "/run/lb-agent.sock"

[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
deregistration_delay = "30s"
stickiness = { type = "source_ip" }
targets = [{ address = "198.18.2.2" }, { address = "198.18.2.3", port = 8081, weight = 2 }]
[target_group.health_check]
protocol = "http"
path = "/health"
matcher = "200-299"
interval = "5s"
timeout = "2s"
healthy_threshold = 3
unhealthy_threshold = 2

[[target_group]]
name = "api"
protocol = "http"
port = 8080
stickiness = { type = "app_cookie", cookie_name = "SESSION", duration = "1h" }

[[target_group]]
name = "canary"
protocol = "http"
port = 8080
stickiness = { type = "lb_cookie", duration = "1h30m" }

[[listener]]
name = "web-l4"
address = "198.18.1.100"
port = 80
protocol = "tcp"
mode = "nat"
default_action = { forward = "web" }

[[listener]]
name = "web-https"
address = "198.18.1.100"
port = 443
protocol = "https"
certificates = [{ cert = "certs/a.pem", key = "certs/a.key" }]
default_action = { forward = "api" }
[[listener.rule]]
priority = 10
conditions = { host = ["api.example.com"], path = ["/v1/*"] }
action = { forward = [{ target_group = "api", weight = 90 }, { target_group = "canary", weight = 10 }] }
[[listener.rule]]
priority = 20
conditions = { path = ["/old/*"] }
action = { redirect = { protocol = "https", path = "/new/#{path}", status_code = 302 } }
[[listener.rule]]
priority = 30
conditions = { http_request_method = ["DELETE"] }
action = { fixed_response = { status_code = 403, content_type = "text/plain", message_body = "no" } }
"#;
    let config = Config::parse(text, "t.toml").expect("the contract parses");
    assert_eq!(config.listeners[1].rules.len(), 3);
    assert_eq!(
        config.listeners[1].forwarded_groups().collect::<Vec<_>>(),
        ["api", "api", "canary"]
    );
    // The same listener forwarding to the tcp group is refused, naming the field.
    let e = errors(&text.replace(
        "default_action = { forward = \"api\" }",
        "default_action = { forward = \"web\" }",
    ));
    assert_eq!(fields(&e), ["listener[1].default_action.forward"], "{e:?}");
    assert!(e[0].message.contains("tcp group"), "{}", e[0]);
}

#[test]
fn duplicate_names_are_refused() {
    let e = ConfigFile::good()
        .listener("web", 81, "tcp", r#""web""#)
        .entry(
            "target_group",
            &[("name", r#""web""#), ("protocol", r#""udp""#)],
        )
        .errors();
    assert_eq!(
        fields(&e),
        ["listener[1].name", "target_group[1].name"],
        "{e:?}"
    );
    assert!(e[0].message.contains("listener[0]"), "{}", e[0]);
    assert_eq!(e[0].line, 19, "{}", e[0]);
    assert!(e[1].message.contains("target_group[0]"), "{}", e[1]);

    let e = ConfigFile::good()
        .set("listener[0]", "name", r#""a b""#)
        .errors();
    assert_eq!(fields(&e), ["listener[0].name"]);
}

#[test]
fn overlapping_listeners_name_both() {
    // tcp_udp on the same VIP and port overlaps the tcp listener.
    let e = ConfigFile::good()
        .listener("web-both", 80, "tcp_udp", r#""web""#)
        .errors();
    let overlap: Vec<_> = e
        .iter()
        .filter(|e| e.message.contains("overlaps"))
        .collect();
    assert_eq!(overlap.len(), 1, "{e:?}");
    let o = overlap[0];
    assert_eq!((o.field.as_str(), o.line), ("listener[1].port", 21), "{o}");
    assert!(
        o.message.contains("`web-both`") && o.message.contains("`web`"),
        "{o}"
    );
    assert!(o.message.contains("198.18.1.100:80"), "{o}");

    // udp and tcp on one port share nothing.
    ConfigFile::good()
        .listener("dns", 80, "udp", r#""dns""#)
        .entry("target_group", &dns_group())
        .config();
}

/// A udp group `dns` on port 53, without targets.
fn dns_group() -> [(&'static str, &'static str); 3] {
    [
        ("name", r#""dns""#),
        ("protocol", r#""udp""#),
        ("port", "53"),
    ]
}

#[test]
fn maglev_size_must_be_a_prime_in_range() {
    for (size, why) in [
        (65536, "not prime"),
        (7, "out of range"),
        (1_000_033, "out of range"),
    ] {
        let e = ConfigFile::good()
            .set("agent", "maglev_table_size", &size.to_string())
            .errors();
        assert_eq!(fields(&e), ["agent.maglev_table_size"], "{e:?}");
        assert!(e[0].message.contains(why), "{}", e[0]);
        assert_eq!((e[0].line, e[0].column), (4, 21), "{}", e[0]);
    }
    for size in [251, 65537, 1_000_003] {
        let c = ConfigFile::good()
            .set("agent", "maglev_table_size", &size.to_string())
            .config();
        assert_eq!(c.agent.maglev_table_size, size);
    }
}

#[test]
fn unsupported_features_are_refused_clearly() {
    // A tls listener (TLS ends at the proxy, bytes go to a tcp group) needs a certificate.
    let e = ConfigFile::good()
        .set("listener[0]", "protocol", "\"tls\"")
        .errors();
    assert_eq!(fields(&e), ["listener[0].certificates"], "{e:?}");
    let c = ConfigFile::good()
        .set("listener[0]", "protocol", "\"tls\"")
        .set(
            "listener[0]",
            "certificates",
            r#"[{ cert = "a.pem", key = "a.key" }]"#,
        )
        .config();
    assert!(c.listeners[0].is_l7());
    // L7 settings on an L4 listener are refused, not ignored.
    let e = ConfigFile::good()
        .set("listener[0]", "idle_timeout", "\"30s\"")
        .errors();
    assert_eq!(fields(&e), ["listener[0].idle_timeout"], "{e:?}");
    let e = ConfigFile::good()
        .set("listener[0]", "mode", r#""dsr""#)
        .errors();
    assert_eq!(fields(&e), ["listener[0].mode"], "{e:?}");
    assert!(e[0].message.contains("not supported yet"), "{}", e[0]);

    let e = ConfigFile::good()
        .set(
            "target_group[0]",
            "stickiness",
            r#"{ type = "lb_cookie", duration = "1h" }"#,
        )
        .errors();
    assert_eq!(fields(&e), ["target_group[0].stickiness"], "{e:?}");
    assert!(e[0].message.contains("not supported yet"), "{}", e[0]);
}

#[test]
fn l4_listeners_forward_to_one_compatible_group() {
    let e = ConfigFile::good()
        .entry("target_group", &dns_group())
        .set(
            "listener[0]",
            "default_action",
            r#"{ forward = [{ target_group = "web", weight = 50 }, { target_group = "dns", weight = 50 }] }"#,
        )
        .errors();
    assert_eq!(fields(&e), ["listener[0].default_action.forward"], "{e:?}");
    assert!(e[0].message.contains("exactly one"), "{}", e[0]);

    let e = ConfigFile::good()
        .set("listener[0]", "protocol", r#""udp""#)
        .errors();
    assert_eq!(fields(&e), ["listener[0].default_action.forward"], "{e:?}");
    assert!(e[0].message.contains("udp or tcp_udp"), "{}", e[0]);

    let e = ConfigFile::good()
        .set(
            "listener[0]",
            "default_action",
            "{ fixed_response = { status_code = 503 } }",
        )
        .errors();
    assert_eq!(fields(&e), ["listener[0].default_action"]);
}

#[test]
fn targets_need_a_port_and_are_unique() {
    let e = ConfigFile::good()
        .without("target_group[0]", "port")
        .set(
            "target_group[0]",
            "targets",
            r#"[{ address = "198.18.0.21" }, { address = "198.18.0.21", port = 1 }, { address = "198.18.0.21", port = 1 }]"#,
        )
        .errors();
    assert_eq!(
        fields(&e),
        [
            "target_group[0].targets[0].address",
            "target_group[0].targets[2].address"
        ],
        "{e:?}"
    );
    assert!(e[0].message.contains("no port"), "{}", e[0]);
    assert!(e[1].message.contains("targets[1]"), "{}", e[1]);
}

#[test]
fn mixed_families_are_refused() {
    let e = ConfigFile::good()
        .set(
            "target_group[0]",
            "targets",
            r#"[{ address = "fd00:198:18::21" }, { address = "198.18.0.22", weight = 2 }]"#,
        )
        .errors();
    assert_eq!(fields(&e), ["target_group[0].targets[0].address"], "{e:?}");
    assert!(e[0].message.contains("family"), "{}", e[0]);
}

#[test]
fn addresses_must_be_unicast_and_snat_one_per_family() {
    let e = ConfigFile::good()
        .set(
            "agent",
            "snat_addresses",
            r#"["198.18.0.1", "198.18.0.2", "ff02::1"]"#,
        )
        .set("listener[0]", "address", r#""0.0.0.0""#)
        .errors();
    assert_eq!(
        fields(&e),
        [
            "agent.snat_addresses[1]",
            "agent.snat_addresses[2]",
            "listener[0].address"
        ],
        "{e:?}"
    );
    assert_eq!(
        e[1].message,
        "ff02::1 is a multicast address; a SNAT source needs a unicast address"
    );
}

#[test]
fn a_listener_on_a_snat_address_must_keep_its_port_out_of_the_snat_range() {
    let on_snat = ConfigFile::good().set("listener[0]", "address", r#""198.18.0.1""#);
    // Port 80 is below the range (1024-32767): no clash.
    on_snat.config();
    let e = on_snat.set("listener[0]", "port", "8080").errors();
    assert_eq!(fields(&e), ["listener[0].port"], "{e:?}");
    assert!(
        e[0].message
            .contains("inside agent.snat_port_range [1024, 32767]")
            && e[0].message.contains("agent.snat_addresses[0]"),
        "{}",
        e[0]
    );
    // Another address may use any port.
    ConfigFile::good()
        .set("listener[0]", "port", "8080")
        .config();
}

/// `good()` in IPv6: the SNAT address, targets and VIP from fd00:198:18::/48.
fn good_v6() -> ConfigFile {
    ConfigFile::good()
        .set("agent", "snat_addresses", r#"["fd00:198:18::1"]"#)
        .set(
            "target_group[0]",
            "targets",
            r#"[{ address = "fd00:198:18::21" }, { address = "fd00:198:18::22", weight = 2 }]"#,
        )
        .set("listener[0]", "address", r#""fd00:198:18:1::100""#)
}

/// Addresses that are not one host's, in both families, with what each is called.
const NOT_UNICAST: [(&str, &str); 6] = [
    ("0.0.0.0", "the unspecified address"),
    ("224.0.0.1", "a multicast address"),
    ("255.255.255.255", "the broadcast address"),
    ("::", "the unspecified address"),
    ("ff02::1", "a multicast address"),
    ("::ffff:0.0.0.0", "the unspecified address"),
];

#[test]
fn a_target_needs_a_unicast_address() {
    for (address, what) in NOT_UNICAST {
        let ip: IpAddr = address.parse().expect("an address");
        let (file, good) = if ip.is_ipv4() {
            (ConfigFile::good(), "198.18.0.21")
        } else {
            (good_v6(), "fd00:198:18::21")
        };
        let e = file
            .set(
                "target_group[0]",
                "targets",
                &format!(r#"[{{ address = "{good}" }}, {{ address = "{address}" }}]"#),
            )
            .errors();
        assert_eq!(
            fields(&e),
            ["target_group[0].targets[1].address"],
            "{address}: {e:?}"
        );
        assert_eq!(e[0].line, 9, "{}", e[0]);
        assert!(
            e[0].to_string().ends_with(&format!(
                ": target_group[0].targets[1].address: {address} is {what}; \
                 a target needs a unicast address"
            )),
            "{}",
            e[0]
        );
    }
}

#[test]
fn a_listener_needs_a_unicast_address() {
    for (address, what) in NOT_UNICAST {
        let ip: IpAddr = address.parse().expect("an address");
        let file = if ip.is_ipv4() {
            ConfigFile::good()
        } else {
            good_v6()
        };
        let e = file
            .set("listener[0]", "address", &format!("\"{address}\""))
            .errors();
        assert_eq!(fields(&e), ["listener[0].address"], "{address}: {e:?}");
        assert_eq!(e[0].line, 13, "{}", e[0]);
        assert_eq!(
            e[0].message,
            format!("{address} is {what}; a listener needs a unicast address")
        );
    }
}

#[test]
fn a_target_added_in_memory_is_checked_too() {
    // The control API changes a config in memory, then asks `problems()` before saving it.
    let mut config = ConfigFile::good().config();
    assert_eq!(config.problems(), []);
    config.target_groups[0].targets.push(Target {
        address: "0.0.0.0".parse().expect("an address"),
        port: None,
        weight: 1,
    });
    assert_eq!(
        config.problems(),
        [(
            "target_group[0].targets[2].address".to_owned(),
            "0.0.0.0 is the unspecified address; a target needs a unicast address".to_owned()
        )]
    );
}

#[test]
fn health_checks_are_range_checked() {
    let e = ConfigFile::good()
        .table(
            "target_group[0].health_check",
            &[
                ("protocol", r#""http""#),
                ("path", r#""health""#),
                ("matcher", r#""200,99""#),
                ("interval", r#""5s""#),
                ("timeout", r#""6s""#),
                ("healthy_threshold", "1"),
                ("unhealthy_threshold", "11"),
                ("port", "0"),
            ],
        )
        .errors();
    assert_eq!(
        fields(&e),
        [
            "target_group[0].health_check.path",
            "target_group[0].health_check.matcher",
            "target_group[0].health_check.timeout",
            "target_group[0].health_check.healthy_threshold",
            "target_group[0].health_check.unhealthy_threshold",
            "target_group[0].health_check.port",
        ],
        "{e:?}"
    );
    assert_eq!(e[0].line, 13, "{}", e[0]);
    assert!(
        e[2].message.contains("shorter than the interval"),
        "{}",
        e[2]
    );
}

#[test]
fn a_grpc_groups_matcher_takes_grpc_codes_and_other_groups_http_ones() {
    let rpc = |version: &str| {
        ConfigFile::good()
            .entry(
                "target_group",
                &[
                    ("name", r#""rpc""#),
                    ("protocol", r#""http""#),
                    ("port", "50051"),
                    ("protocol_version", version),
                ],
            )
            .table(
                "target_group[1].health_check",
                &[("protocol", r#""http""#), ("matcher", r#""0,12""#)],
            )
    };
    rpc(r#""grpc""#).config();
    let e = rpc(r#""http2""#).errors();
    assert_eq!(
        fields(&e),
        ["target_group[1].health_check.matcher"],
        "{e:?}"
    );
    assert!(e[0].message.contains("codes 100-599"), "{}", e[0]);
}

#[test]
fn stickiness_takes_only_its_own_fields() {
    let sticky = |s: &str| ConfigFile::good().set("target_group[0]", "stickiness", s);
    let c = sticky(r#"{ type = "source_ip" }"#).config();
    assert_eq!(c.target_groups[0].stickiness, Some(Stickiness::SourceIp));
    for (bad, says) in [
        (
            r#"{ type = "source_ip", duration = "1h" }"#,
            "takes no `duration`",
        ),
        (r#"{ type = "lb_cookie" }"#, "needs a `duration`"),
        (
            r#"{ type = "app_cookie", duration = "1h" }"#,
            "needs `cookie_name`",
        ),
        (
            r#"{ type = "magic" }"#,
            "`source_ip`, `lb_cookie`, `app_cookie`",
        ),
        (r#"{ type = "lb_cookie", duration = 60 }"#, "\"60s\""),
    ] {
        let e = sticky(bad).errors();
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].field.starts_with("target_group[0].stickiness"),
            "{}",
            e[0]
        );
        assert!(e[0].message.contains(says), "{bad}: {}", e[0]);
        assert_eq!(e[0].line, 10, "{}", e[0]);
    }
}
