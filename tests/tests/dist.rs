//! What `dist/` ships: the systemd unit passes `systemd-analyze verify` with nothing to say,
//! and says what the README promises (SIGTERM stops, SIGHUP reloads, restart on failure, only
//! the capabilities the agent needs).

use std::path::PathBuf;

fn unit_text() -> String {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/lb-agent.service"
    ));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `Key=value` lines of the unit for `key`.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let agent = tests::lab_traffic::agent_binary();
    let unit = unit_text().replace("/usr/local/bin/lb-agent", agent.to_str().expect("UTF-8"));
    let dir = std::env::temp_dir().join(format!("lb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("lb-agent.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    // Warnings (an unknown setting, a bad value) leave the status 0: none are allowed either.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_systemd_unit_stops_reloads_restarts_and_holds_only_the_capabilities_needed() {
    let unit = unit_text();
    assert_eq!(values(&unit, "KillSignal"), ["SIGTERM"]);
    assert_eq!(values(&unit, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(values(&unit, "Restart"), ["on-failure"]);
    let caps = |key| {
        let mut caps: Vec<&str> = values(&unit, key)
            .iter()
            .flat_map(|v| v.split_whitespace())
            .collect();
        caps.sort_unstable();
        caps
    };
    let needed = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];
    assert_eq!(caps("CapabilityBoundingSet"), needed);
    assert_eq!(caps("AmbientCapabilities"), needed);
    assert_eq!(values(&unit, "NoNewPrivileges"), ["yes"]);
    let start = values(&unit, "ExecStart").join(" ");
    assert!(
        start.contains(" run ") && start.contains("--state-file"),
        "{start}"
    );
}

#[test]
fn the_systemd_unit_lets_the_agent_rewrite_its_config_and_hold_its_connections() {
    let unit = unit_text();
    let start = values(&unit, "ExecStart").join(" ");
    let config = start
        .split_whitespace()
        .skip_while(|w| *w != "--config")
        .nth(1)
        .expect("ExecStart names --config");
    let config_dir = std::path::Path::new(config).parent().expect("a directory");
    let writable: Vec<&str> = values(&unit, "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert!(
        writable
            .iter()
            .any(|w| config_dir.starts_with(w.trim_start_matches('-'))),
        "PUT /v1/config writes {config} under ProtectSystem={:?}; ReadWritePaths={writable:?}",
        values(&unit, "ProtectSystem")
    );
    let nofile: Vec<u64> = values(&unit, "LimitNOFILE")
        .iter()
        .filter_map(|v| v.split(':').next()?.parse().ok())
        .collect();
    // Three servers of 256 connections each, health checks, the agent's own descriptors.
    assert!(nofile.iter().any(|n| *n >= 4096), "LimitNOFILE={nofile:?}");
}
