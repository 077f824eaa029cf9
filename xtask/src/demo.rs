//! `cargo xtask demo`: real traffic through the XDP load balancer in a namespace lab.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use xtask::{
    agent::LabAgent,
    lab::{self, Lab, LabSpec, VIP4, VIP6},
};

use crate::{cargo, workspace_root};

/// The example config the demo runs (its addresses are the lab's).
pub const DEMO_CONFIG: &str = "examples/l4-basic.toml";

/// Builds the agent (release) and returns its path.
pub fn build_agent() -> anyhow::Result<std::path::PathBuf> {
    cargo(&["build", "--release", "-p", "lb-agent"])?;
    Ok(workspace_root().join("target/release/lb-agent"))
}

/// `targets list --json`, parsed (untyped: xtask cannot depend on lb-agent for its views).
fn targets_json(agent: &LabAgent) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &agent.cli(&["targets", "list", "--json"])?,
    )?)
}

/// Per-target `bytes`/`new_flows` from `targets list --json`, keyed "group target".
fn target_counters(agent: &LabAgent) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let list = targets_json(agent)?;
    let mut out = BTreeMap::new();
    for t in list.as_array().context("targets list is not an array")? {
        let key = format!(
            "{} {}",
            t["group"].as_str().unwrap_or("?"),
            t["address"].as_str().unwrap_or("?")
        );
        let c = &t["counters"];
        out.insert(
            key,
            (
                c["bytes"].as_u64().unwrap_or(0),
                c["new_flows"].as_u64().unwrap_or(0),
            ),
        );
    }
    Ok(out)
}

fn print_delta(before: &BTreeMap<String, (u64, u64)>, after: &BTreeMap<String, (u64, u64)>) {
    for (key, (bytes, flows)) in after {
        let (b0, f0) = before.get(key).copied().unwrap_or_default();
        if bytes > &b0 || flows > &f0 {
            println!(
                "    {key:<36} {:>12} bytes {:>5} new flows",
                bytes - b0,
                flows - f0
            );
        }
    }
}

/// Runs iperf3 from the client and returns (Gbit/s received, the JSON).
pub fn iperf3(lab: &Lab, target: &str, extra: &[&str]) -> anyhow::Result<(f64, serde_json::Value)> {
    let mut args = vec!["iperf3", "-c", target, "-J"];
    args.extend(extra);
    if !extra.contains(&"-p") {
        args.extend(["-p", "5201"]);
    }
    let out = lab.run(lab.client(), &args)?;
    let json: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let end = &json["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .or_else(|| end["sum"]["bits_per_second"].as_f64())
        .context("iperf3 reported no throughput")?;
    Ok((bps / 1e9, json))
}

/// Opens `count` short TCP connections from the client to `addr:port`; returns who answered.
pub fn short_connections(
    lab: &Lab,
    addr: &str,
    port: u16,
    count: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let script = format!(
        "import socket\n\
         for i in range({count}):\n\
         \x20   s = socket.create_connection(('{addr}', {port}), timeout=5)\n\
         \x20   f = s.makefile('r')\n\
         \x20   print(f.readline().strip())\n\
         \x20   s.close()\n"
    );
    let out = lab.run(lab.client(), &["python3", "-c", &script])?;
    let mut served = BTreeMap::new();
    for line in out.lines() {
        *served.entry(line.to_owned()).or_insert(0) += 1;
    }
    Ok(served)
}

/// A backend's health endpoint starts answering 500: the agent's HTTP check takes it out of
/// the `web` group, and new connections avoid it.
fn health_demo(lab: &Lab, agent: &LabAgent, vip: &str) -> anyhow::Result<()> {
    let sick = &lab.backends()[1];
    lab::set_health(lab, sick, lab::HealthMode::Status(500))?;
    let address = format!("{}:8080", sick.v4);
    println!(
        "\n{}'s health endpoint now answers 500 (web checks it every 5 s)...",
        sick.role
    );
    let started = Instant::now();
    loop {
        let list = targets_json(agent)?;
        let state = list
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|t| t["group"] == "web" && t["address"] == address.as_str())
            })
            .map(|t| t["state"].clone());
        if state.as_ref().is_some_and(|s| s == "unhealthy") {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("{address} not unhealthy after 30 s: {state:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "marked unhealthy after {:.1} s:\n{}",
        started.elapsed().as_secs_f64(),
        agent.cli(&["targets", "list", "--group", "web"])?
    );
    let served = short_connections(lab, vip, 80, 30)?;
    println!("30 short TCP connections to {vip}:80 now: {served:?}");
    lab::set_health(lab, sick, lab::HealthMode::Status(200))?;
    Ok(())
}

pub fn demo() -> anyhow::Result<()> {
    let agent_bin = build_agent()?;
    let started = Instant::now();
    let lab = Lab::up(LabSpec {
        name: Lab::unique_name("demo"),
        backends: 3,
        router: None,
    })?;
    println!(
        "lab up: client {}, load balancer {}, backends {}",
        lab.client().v4,
        lab.lb().v4,
        lab.backends()
            .iter()
            .map(|b| b.v4.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    lab::start_backend_servers(&lab)?;
    // Canonical, so the agent's logs and this line name the file, not `xtask/../examples/..`.
    let config = workspace_root().join(DEMO_CONFIG);
    let config = config
        .canonicalize()
        .with_context(|| format!("finding {}", config.display()))?;
    let agent = LabAgent::start(&lab, &agent_bin, &config)?;
    println!("lb-agent running with {}; VIP {VIP4}\n", config.display());
    let vip = VIP4.to_string();

    let before = target_counters(&agent)?;
    let (tcp, _) = iperf3(&lab, &vip, &["-t", "5"])?;
    println!("iperf3 TCP client -> {vip}:5201: {tcp:.2} Gbit/s");
    let mid = target_counters(&agent)?;
    print_delta(&before, &mid);

    let (udp, json) = iperf3(&lab, &vip, &["-u", "-b", "200M", "-t", "3"])?;
    let lost = json["end"]["sum"]["lost_percent"]
        .as_f64()
        .unwrap_or(f64::NAN);
    println!("iperf3 UDP client -> {vip}:5201: {udp:.3} Gbit/s received, {lost:.2}% lost");
    let after_udp = target_counters(&agent)?;
    print_delta(&mid, &after_udp);

    for addr in [vip.clone(), VIP6.to_string()] {
        let served = short_connections(&lab, &addr, 80, 30)?;
        println!(
            "30 short TCP connections to [{addr}]:80, answered by (b3 has weight 2 for IPv4):"
        );
        for (backend, n) in &served {
            println!("    {backend:<8} {n}");
        }
    }
    health_demo(&lab, &agent, &vip)?;
    println!("\n{}", agent.cli(&["status"])?);
    println!("{}", agent.cli(&["stats"])?);
    drop(lab);
    println!(
        "lab removed; demo took {:.1} s after the build",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
