//! `lb-agent`: runs the load balancer, and talks to a running one.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_agent::{
    api,
    config::{Config, HealthCheck, HealthProtocol, duration_text},
    control::{self, Agent, ConfigSource, Request},
    dataplane::{self, Dataplane},
    health, neighbor, node,
    overrides::{Overrides, TargetOverride},
    pinning::PinDir,
    state::{FlowView, GroupView, State, StatsView, TargetView},
};

/// Default control socket, as in the config's `agent.control_socket`.
const DEFAULT_SOCKET: &str = "/run/lb-agent.sock";

/// Exit status for a bad config file (EX_DATAERR-like, as sysexits' EX_USAGE family).
const EXIT_BAD_CONFIG: u8 = 64;

/// Target groups the maps are sized for beyond those in the config.
const MIN_GROUP_CAPACITY: u32 = 16;

#[derive(Parser)]
#[command(name = "lb-agent", version, about = "XDP load balancer agent")]
struct Cli {
    /// Log lines for people (`human`, the default) or one JSON object per line (`json`), on
    /// stderr; RUST_LOG filters them (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the XDP program, program it from the config, serve the control socket.
    ///
    /// The data plane is pinned in the pin directory (a BPF filesystem): when the agent stops
    /// (SIGTERM, ctrl-c, even SIGKILL) the program stays attached and keeps forwarding with its
    /// last tables and connection table. The next `lb-agent run` on the same pin directory
    /// adopts it without a gap: established flows keep their targets, health checks resume.
    /// `lb-agent detach` (or `run --detach-on-exit`) removes it all.
    Run {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Interface to attach to (overrides `agent.interface`); repeat it for a two-arm node
        /// (clients on one NIC, targets on another). The default full-NAT source addresses
        /// are the first one's.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Control socket (overrides `agent.control_socket`).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Pin directory on a BPF filesystem (overrides `agent.pin_dir`).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// On SIGTERM or ctrl-c, detach the program and remove the pins (the default leaves
        /// the data plane serving).
        #[arg(long)]
        detach_on_exit: bool,
        /// Where changes made through the control socket are kept, so that reloads and
        /// restarts keep them (default: NAME.state.json beside NAME.toml).
        #[arg(long)]
        state_file: Option<PathBuf>,
    },
    /// Validate a config file without touching anything.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Register, deregister or list targets of a running agent.
    Targets {
        #[command(subcommand)]
        command: TargetsCommand,
    },
    /// Show target groups, or change a group's health check.
    Groups {
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Counters of listeners, targets and data-plane verdicts.
    Stats {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The connection table: each flow's client, listener, target and full-NAT source.
    Flows {
        #[arg(long)]
        json: bool,
        /// At most this many (the table can hold a million).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// One screen: what runs, where, and whether it is healthy.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The Prometheus metrics, as `GET /metrics` serves them.
    Metrics {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The running agent's config file: show it, check a new one, or replace it and apply the
    /// difference (nothing changes if it is invalid).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The changes made through the control socket, kept on top of the config file.
    Overrides {
        #[command(subcommand)]
        command: OverridesCommand,
    },
    /// Make the running agent read its config file again and apply what changed (as SIGHUP
    /// does); prints the changes. A file with errors changes nothing: they are printed, and
    /// the exit status is 64.
    Reload {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Detach the XDP program, remove its pins (connection table included) and stop the
    /// running agent; with no agent running, remove what one left pinned in `--pin-dir`.
    Detach {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The pin directory to clean up when no agent answers on the socket.
        #[arg(long, default_value = lb_agent::pinning::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TargetsCommand {
    /// Register ADDR[:PORT] in a group; new flows reach it once it passes the group's health
    /// checks (at once without checks). Re-registering a draining target returns it to service.
    Add {
        #[arg(long)]
        group: String,
        /// IPv4 or IPv6 address, optionally with a port (`[v6]:port`); default port: the group's.
        target: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Deregister ADDR[:PORT]: no new flows; established flows keep their target while it
    /// drains (the group's deregistration_delay), then are cut.
    Remove {
        #[arg(long)]
        group: String,
        target: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Change a registered target's weight (0..=1000; 0: no new flows).
    Weight {
        #[arg(long)]
        group: String,
        target: String,
        #[arg(long)]
        weight: u32,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// List targets: state and reason, weight, last check latency, active flows, counters.
    List {
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the config file the agent runs.
    Show {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Check FILE as the agent would, without applying it.
    Validate {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Replace the agent's config file with FILE and apply the difference.
    Apply {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum OverridesCommand {
    /// List them (targets registered, deregistered or re-weighted; health checks).
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Drop them (of one group, or all): the config file rules again, applied at once.
    Clear {
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum GroupsCommand {
    /// Each group's protocol, port, health check, draining, slow start and fail-open settings.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Change a group's health check: the fields given replace the current ones (with
    /// `--reset`, AWS's defaults), checked as in the config file; checks restart at once.
    HealthCheck(Box<HealthCheckArgs>),
}

/// `groups health-check`'s options.
#[derive(clap::Args)]
struct HealthCheckArgs {
    #[arg(long)]
    group: String,
    /// Start from the defaults (TCP, 30s, 10s, 5, 2) instead of the current check.
    #[arg(long)]
    reset: bool,
    /// Stop checking: every target is in service.
    #[arg(long, conflicts_with = "enable")]
    disable: bool,
    /// Check again after `--disable`.
    #[arg(long)]
    enable: bool,
    /// tcp, http or https.
    #[arg(long)]
    protocol: Option<String>,
    /// Port to check (default: the traffic port).
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    path: Option<String>,
    /// GET or HEAD.
    #[arg(long)]
    method: Option<String>,
    #[arg(long)]
    host: Option<String>,
    /// Status codes that pass, like 200-299,301.
    #[arg(long)]
    matcher: Option<String>,
    /// Like 10s.
    #[arg(long)]
    interval: Option<String>,
    /// Like 2s.
    #[arg(long)]
    timeout: Option<String>,
    #[arg(long)]
    healthy_threshold: Option<u32>,
    #[arg(long)]
    unhealthy_threshold: Option<u32>,
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run {
            config,
            ifaces,
            socket,
            pin_dir,
            detach_on_exit,
            state_file,
        } => match Config::load(&config) {
            Ok(cfg) => run(
                cfg,
                RunOptions {
                    state_file: state_file.unwrap_or_else(|| Overrides::path_beside(&config)),
                    config_path: config,
                    ifaces,
                    socket,
                    pin_dir,
                    detach_on_exit,
                },
            ),
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        },
        Command::Targets { command } => targets(command),
        Command::Groups { command } => groups(command),
        Command::Stats { json, socket } => stats(&socket, json),
        Command::Flows {
            json,
            limit,
            socket,
        } => flows(&socket, json, limit),
        Command::Status { json, socket } => status(&socket, json),
        Command::Overrides { command } => overrides(command),
        Command::Metrics { socket } => control::get_text(&socket, "/metrics")
            .map(|text| print!("{text}"))
            .map_err(Into::into),
        Command::Config { command } => match config_command(command) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Reload { socket } => match control::request(&socket, &Request::Reload) {
            Ok(r) => {
                let changes: Vec<String> =
                    serde_json::from_value(r["changes"].clone()).unwrap_or_default();
                if changes.is_empty() {
                    println!("reloaded: no changes");
                } else {
                    println!("reloaded: {} changes", changes.len());
                    for change in changes {
                        println!("  {change}");
                    }
                }
                Ok(())
            }
            Err(control::ControlError::Refused(message)) => {
                eprintln!("reload refused, the running config stays:\n{message}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            Err(e) => Err(e.into()),
        },
        Command::Detach { socket, pin_dir } => detach(&socket, &pin_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} listeners, {} target groups)",
                path.display(),
                cfg.listeners.len(),
                cfg.target_groups.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

/// Parses `ADDR`, `ADDR:PORT`, `[V6]:PORT`.
fn parse_target(text: &str) -> anyhow::Result<(IpAddr, Option<u16>)> {
    api::parse_target(text).map_err(anyhow::Error::msg)
}

fn targets(command: TargetsCommand) -> anyhow::Result<()> {
    match command {
        TargetsCommand::Add {
            group,
            target,
            weight,
            socket,
        } => {
            let (address, port) = parse_target(&target)?;
            let r = control::request(
                &socket,
                &Request::TargetsAdd {
                    group,
                    address,
                    port,
                    weight,
                },
            )?;
            println!(
                "registered {} in {} (weight {})",
                r["target"].as_str().unwrap_or("?"),
                r["group"].as_str().unwrap_or("?"),
                r["weight"]
            );
        }
        TargetsCommand::Remove {
            group,
            target,
            socket,
        } => {
            let (address, port) = parse_target(&target)?;
            let r = control::request(
                &socket,
                &Request::TargetsRemove {
                    group,
                    address,
                    port,
                },
            )?;
            let draining = r["draining_seconds"].as_f64().unwrap_or(0.0);
            println!(
                "deregistered {} from {}: {}",
                r["target"].as_str().unwrap_or("?"),
                r["group"].as_str().unwrap_or("?"),
                if draining > 0.0 {
                    format!("draining, its established flows are cut in {draining}s")
                } else {
                    "its established flows were cut".to_owned()
                }
            );
        }
        TargetsCommand::Weight {
            group,
            target,
            weight,
            socket,
        } => {
            let (address, port) = parse_target(&target)?;
            let r = control::request(
                &socket,
                &Request::TargetsWeight {
                    group,
                    address,
                    port,
                    weight,
                },
            )?;
            println!(
                "{} in {}: weight {} (was {})",
                r["target"].as_str().unwrap_or("?"),
                r["group"].as_str().unwrap_or("?"),
                r["weight"],
                r["previous_weight"]
            );
        }
        TargetsCommand::List {
            group,
            json,
            socket,
        } => {
            let r = control::request(&socket, &Request::TargetsList { group })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let list: Vec<TargetView> = serde_json::from_value(r)?;
                print_targets(&list);
            }
        }
    }
    Ok(())
}

fn groups(command: GroupsCommand) -> anyhow::Result<()> {
    match command {
        GroupsCommand::List { json, socket } => {
            let r = control::request(&socket, &Request::Groups)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let list: Vec<GroupView> = serde_json::from_value(r)?;
            print_groups(&list);
        }
        GroupsCommand::HealthCheck(args) => {
            let HealthCheckArgs {
                group,
                reset,
                disable,
                enable,
                protocol,
                port,
                path,
                method,
                host,
                matcher,
                interval,
                timeout,
                healthy_threshold,
                unhealthy_threshold,
                socket,
            } = *args;
            let current = if reset {
                None
            } else {
                let list: Vec<GroupView> =
                    serde_json::from_value(control::request(&socket, &Request::Groups)?)?;
                list.into_iter()
                    .find(|g| g.name == group)
                    .with_context(|| format!("no target group `{group}`"))?
                    .health_check
            };
            // Edited as JSON and read back: the same names, defaults and errors as the file.
            let mut fields = serde_json::to_value(current.unwrap_or_default())?;
            let mut set = |key: &str, value: serde_json::Value| fields[key] = value;
            if disable {
                set("enabled", false.into());
            }
            if enable {
                set("enabled", true.into());
            }
            for (key, value) in [
                ("protocol", protocol),
                ("path", path),
                ("method", method),
                ("host", host),
                ("matcher", matcher),
                ("interval", interval),
                ("timeout", timeout),
            ] {
                if let Some(value) = value {
                    set(key, value.into());
                }
            }
            for (key, value) in [
                ("port", port.map(u32::from)),
                ("healthy_threshold", healthy_threshold),
                ("unhealthy_threshold", unhealthy_threshold),
            ] {
                if let Some(value) = value {
                    set(key, value.into());
                }
            }
            let health_check: HealthCheck =
                serde_json::from_value(fields).context("invalid health check")?;
            control::request(
                &socket,
                &Request::HealthCheckSet {
                    group: group.clone(),
                    health_check: health_check.clone(),
                },
            )?;
            println!("{group}: {}", describe_check(Some(&health_check)));
        }
    }
    Ok(())
}

/// A health check in one line.
fn describe_check(check: Option<&HealthCheck>) -> String {
    let Some(c) = check else {
        return "not checked".into();
    };
    if !c.enabled {
        return "checks disabled".into();
    }
    let port = c.port.map_or("traffic port".to_owned(), |p| p.to_string());
    let what = match c.protocol {
        HealthProtocol::Tcp => format!("tcp connect to {port}"),
        _ => format!(
            "{} {} {}:{port}{} expecting {}",
            c.protocol.as_str(),
            c.method.as_str(),
            c.host.as_deref().unwrap_or("(target)"),
            c.path,
            c.matcher
        ),
    };
    format!(
        "{what}, every {}, timeout {}, healthy after {}, unhealthy after {}",
        duration_text(c.interval),
        duration_text(c.timeout),
        c.healthy_threshold,
        c.unhealthy_threshold
    )
}

fn print_groups(list: &[GroupView]) {
    for g in list {
        println!(
            "{}  {}{}  {}/{} targets in service{}{}",
            g.name,
            g.protocol,
            g.port.map_or(String::new(), |p| format!(":{p}")),
            g.in_service,
            g.targets,
            if g.failing_open { "  FAILING OPEN" } else { "" },
            if g.in_use { "" } else { "  (no listener)" },
        );
        println!(
            "    health check: {}",
            describe_check(g.health_check.as_ref())
        );
        println!(
            "    deregistration delay {}, slow start {}, terminate on unhealthy {}, fail open {}",
            g.deregistration_delay,
            if g.slow_start == "0s" {
                "off"
            } else {
                &g.slow_start
            },
            g.terminate_on_unhealthy,
            g.fail_open
        );
    }
}

fn print_targets(list: &[TargetView]) {
    println!(
        "{:<12} {:<28} {:<11} {:<32} {:>6} {:>6} {:>8} {:>7} {:>10} {:>10}",
        "GROUP",
        "TARGET",
        "STATE",
        "REASON",
        "WEIGHT",
        "NOW",
        "CHECK",
        "FLOWS",
        "PACKETS",
        "NEW FLOWS"
    );
    for t in list {
        println!(
            "{:<12} {:<28} {:<11} {:<32} {:>6} {:>6} {:>8} {:>7} {:>10} {:>10}",
            t.group,
            t.address.to_string(),
            serde_json::to_value(t.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            t.reason.as_deref().unwrap_or("-"),
            t.weight,
            format!("{:.2}", t.effective_weight),
            t.last_check_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms")),
            t.active_flows,
            t.counters.packets,
            t.counters.new_flows
        );
        if let Some(description) = &t.description {
            println!("{:<12} {:<28} ↳ {description}", "", "");
        }
    }
}

fn flows(socket: &Path, json: bool, limit: Option<usize>) -> anyhow::Result<()> {
    let r = control::request(socket, &Request::Flows { limit })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let list: Vec<FlowView> = serde_json::from_value(r)?;
    println!(
        "{:<5} {:<46} {:<46} {:<46} {:<46} {:<12} {:>6} STATE",
        "PROTO", "CLIENT", "LISTENER", "TARGET", "SNAT", "GROUP", "IDLE"
    );
    for f in &list {
        let state = match (f.active, f.closing) {
            (true, false) => "open",
            (true, true) => "closing",
            (false, _) => "over",
        };
        println!(
            "{:<5} {:<46} {:<46} {:<46} {:<46} {:<12} {:>5}s {state}",
            f.protocol,
            f.client.to_string(),
            f.listener.to_string(),
            f.backend.to_string(),
            f.snat.to_string(),
            f.target_group.as_deref().unwrap_or("-"),
            f.idle_seconds
        );
    }
    let active = list.iter().filter(|f| f.active).count();
    println!("{} flows, {active} active", list.len());
    Ok(())
}

fn stats(socket: &Path, json: bool) -> anyhow::Result<()> {
    let r = control::request(socket, &Request::Stats)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let s: StatsView = serde_json::from_value(r)?;
    println!(
        "{:<16} {:<40} {:<8} {:<16} {:>12} {:>14} {:>10}",
        "LISTENER", "ADDRESS", "PROTO", "GROUP", "PACKETS", "BYTES", "NEW FLOWS"
    );
    for l in &s.listeners {
        println!(
            "{:<16} {:<40} {:<8} {:<16} {:>12} {:>14} {:>10}",
            l.name,
            l.address,
            l.protocol,
            l.target_group,
            l.counters.packets,
            l.counters.bytes,
            l.counters.new_flows
        );
    }
    println!();
    print_targets(&s.targets);
    println!(
        "\nconnection table: {} flows, {} active",
        s.flows, s.active_flows
    );
    if !s.health_transitions.is_empty() {
        println!("target state changes:");
        for (change, count) in &s.health_transitions {
            println!("  {change:<24} {count}");
        }
    }
    println!("verdicts:");
    for (name, count) in s.verdicts.iter().filter(|(_, c)| **c > 0) {
        println!("  {name:<24} {count}");
    }
    Ok(())
}

/// `lb-agent run`'s options beside the config.
struct RunOptions {
    /// Read again on SIGHUP and `lb-agent reload`.
    config_path: PathBuf,
    state_file: PathBuf,
    ifaces: Vec<String>,
    socket: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    detach_on_exit: bool,
}

fn run(file: Config, options: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        config_path,
        state_file,
        mut ifaces,
        socket,
        pin_dir,
        detach_on_exit,
    } = options;
    // The API's earlier changes apply on top of the file.
    let overrides = Overrides::load(&state_file)?;
    let cfg = control::with_overrides(&file, &overrides).map_err(anyhow::Error::msg)?;
    if !overrides.is_empty() {
        tracing::info!(state_file = %state_file.display(), overrides = overrides.len(), "applied the control API's earlier changes on top of the config file");
    }
    if ifaces.is_empty() {
        ifaces.extend(cfg.agent.interface.clone());
    }
    let iface = ifaces
        .first()
        .cloned()
        .context("no interface: set agent.interface in the config or pass --iface")?;
    let socket = socket.unwrap_or_else(|| cfg.agent.control_socket.clone());
    let addresses = node::addresses()?;
    let snat = node::snat_addresses(&cfg, &addresses, &iface);
    for ip in &snat {
        // Targets answer the SNAT address: if no interface has it, replies never come back.
        if !addresses.iter().any(|(_, a)| a == ip) {
            tracing::warn!(snat = %ip, "no interface of this node has the full-NAT source address: targets' replies will not reach the load balancer");
        }
    }
    let group_capacity = (cfg.target_groups.len() as u32).max(MIN_GROUP_CAPACITY);
    let api_token = match cfg.agent.api_listen {
        Some(_) => Some(Arc::new(api_token(cfg.agent.api_token_file.as_deref())?)),
        None => None,
    };
    // One agent per pin directory: its lock is held until this process ends, however it ends.
    let pin_dir = pin_dir.unwrap_or_else(|| cfg.agent.pin_dir.clone());
    let pins = PinDir::open(&pin_dir)?;
    // Refuse before touching anything if another agent serves the socket.
    let listener = control::bind(&socket)?;
    let mut dataplane = Dataplane::load_pinned(cfg.agent.maglev_table_size, group_capacity, pins)
        .context("loading the XDP program")?;
    if dataplane.adopted() {
        tracing::info!(pin_dir = %pin_dir.display(), "adopting the data plane an earlier agent left pinned: its connection table is kept");
    }
    let state = State::apply(&cfg, &snat, &mut dataplane).context("programming the data plane")?;
    // Once per address: a target on many ports, or in many groups, has one next hop.
    neighbor::keep_all_resolved_blocking(cfg.target_addresses());
    let mut modes = Vec::new();
    for iface in &ifaces {
        let changed = dataplane::enable_forwarding(iface)
            .with_context(|| format!("enabling forwarding on {iface} (bpf_fib_lookup needs it)"))?;
        if !changed.is_empty() {
            tracing::info!(sysctls = ?changed, "enabled forwarding: the XDP program routes through the kernel's FIB");
        }
        let (mode, taken_over) = dataplane.attach(iface)?;
        if taken_over {
            tracing::info!(
                iface,
                "took over the pinned attachment: the new program replaced the old one without a gap"
            );
        }
        modes.push(mode);
    }
    for iface in dataplane.drop_other_links(&ifaces)? {
        tracing::info!(iface, "detached from an interface this run does not serve");
    }
    tracing::info!(
        ifaces = ?ifaces,
        modes = ?modes,
        socket = %socket.display(),
        snat = ?snat,
        listeners = cfg.listeners.len(),
        target_groups = cfg.target_groups.len(),
        "load balancer running"
    );
    let agent = Arc::new(Mutex::new(Agent {
        dataplane,
        state,
        source: Some(ConfigSource {
            path: config_path,
            iface: iface.clone(),
            state_file,
        }),
        overrides,
        started: std::time::SystemTime::now(),
        version: 1,
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
        let mut servers = vec![tokio::spawn(api::serve(
            tokio::net::UnixListener::from_std(listener)?,
            agent.clone(),
            api::Access::Local,
            shutdown.clone(),
        ))];
        if let Some(address) = cfg.agent.api_listen {
            let tcp = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the API to {address}"))?;
            let token = api_token.clone().context("no API token")?;
            tracing::info!(%address, "control API on TCP (bearer token required)");
            servers.push(tokio::spawn(api::serve(tcp, agent.clone(), api::Access::Token(token), shutdown.clone())));
        }
        if let Some(address) = cfg.agent.metrics_listen {
            let tcp = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding /metrics to {address}"))?;
            tracing::info!(%address, "metrics on TCP");
            servers.push(tokio::spawn(api::serve(tcp, agent.clone(), api::Access::MetricsOnly, shutdown.clone())));
        }
        let monitor = tokio::spawn(health::monitor::run(agent.clone(), shutdown.subscribe()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
                _ = stopped.changed() => {}
                _ = hangup.recv() => {
                    let agent = agent.clone();
                    let result = tokio::task::spawn_blocking(move || control::reload(&agent)).await;
                    match result {
                        Ok(Ok(changes)) if changes.is_empty() => tracing::info!("SIGHUP: the config is unchanged"),
                        Ok(Ok(_)) => {}
                        Ok(Err(message)) => tracing::error!(%message, "SIGHUP: reload refused; the running config stays"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
                    }
                    continue;
                }
            }
            break;
        }
        let _ = shutdown.send(true);
        for server in servers {
            let _ = server.await;
        }
        let _ = monitor.await;
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_file(&socket);
    let mut agent = agent
        .lock()
        .map_err(|_| anyhow::anyhow!("agent state poisoned"))?;
    if detach_on_exit {
        agent.dataplane.detach()?;
        tracing::info!("detached and unpinned (--detach-on-exit)");
    } else if agent.dataplane.attachments().next().is_some() {
        tracing::info!(pin_dir = %pin_dir.display(), "the data plane keeps serving, pinned; `lb-agent run` adopts it, `lb-agent detach` removes it");
    }
    Ok(())
}

fn status(socket: &Path, json: bool) -> anyhow::Result<()> {
    let r = control::request(socket, &Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!(
        "lb-agent {} (pid {}), up {}",
        text(&r["version"]),
        r["pid"],
        duration_text(std::time::Duration::from_secs(
            r["uptime_seconds"].as_u64().unwrap_or(0)
        ))
    );
    println!(
        "config      {}  (+ {} API changes kept in {})",
        text(&r["config"]),
        r["overrides"],
        text(&r["state_file"])
    );
    let ifaces: Vec<String> = r["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| format!("{} ({})", text(&i["name"]), text(&i["mode"])))
        .collect();
    println!(
        "data plane  XDP on {}; pinned in {}{}",
        if ifaces.is_empty() {
            "nothing".to_owned()
        } else {
            ifaces.join(", ")
        },
        text(&r["pin_dir"]),
        if r["adopted"] == true {
            " (adopted from an earlier agent)"
        } else {
            ""
        }
    );
    println!(
        "flows       {} active, {} in the connection table",
        r["active_flows"], r["flows"]
    );
    println!("listeners");
    for l in r["listeners"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:<40} {:<8} -> {}",
            text(&l["name"]),
            text(&l["address"]),
            text(&l["protocol"]),
            text(&l["target_group"])
        );
    }
    println!("target groups");
    let mut problems = 0;
    for g in r["groups"].as_array().into_iter().flatten() {
        let (up, all) = (
            g["in_service"].as_u64().unwrap_or(0),
            g["targets"].as_u64().unwrap_or(0),
        );
        let unhealthy = g["unhealthy"].as_u64().unwrap_or(0);
        let verdict = if g["failing_open"] == true {
            "FAILING OPEN: no target healthy".to_owned()
        } else if all > 0 && up == 0 {
            "DOWN: no target in service".to_owned()
        } else if unhealthy > 0 {
            format!("degraded: {unhealthy} unhealthy")
        } else {
            "ok".to_owned()
        };
        if verdict != "ok" {
            problems += 1;
        }
        println!(
            "  {:<16} {up}/{all} targets in service  {verdict}",
            text(&g["name"])
        );
    }
    println!(
        "{}",
        if problems == 0 {
            "all target groups healthy".to_owned()
        } else {
            format!("{problems} target groups need attention: `lb-agent targets list`")
        }
    );
    Ok(())
}

fn config_command(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    let read = |file: &Path| {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    };
    match command {
        ConfigCommand::Show { socket } => {
            let r = control::request(&socket, &Request::ConfigGet)?;
            eprintln!(
                "# {} (+ {} API changes in {})",
                r["path"].as_str().unwrap_or("?"),
                r["overrides"],
                r["state_file"].as_str().unwrap_or("?")
            );
            print!("{}", r["text"].as_str().unwrap_or(""));
        }
        ConfigCommand::Validate { file, socket } => {
            let r = control::request(&socket, &Request::ConfigValidate { text: read(&file)? })?;
            if r["valid"] == true {
                println!("{}: ok", file.display());
            } else {
                for e in r["errors"].as_array().into_iter().flatten() {
                    eprintln!(
                        "{}:{}:{}: {}: {}",
                        file.display(),
                        e["line"],
                        e["column"],
                        e["field"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or("?")
                    );
                }
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
        }
        ConfigCommand::Apply { file, socket } => {
            match control::request(&socket, &Request::ConfigApply { text: read(&file)? }) {
                Ok(r) => {
                    let changes: Vec<String> =
                        serde_json::from_value(r["changes"].clone()).unwrap_or_default();
                    println!("applied: {} changes", changes.len());
                    for change in changes {
                        println!("  {change}");
                    }
                }
                Err(control::ControlError::Refused(message)) => {
                    eprintln!("not applied, the running config stays:\n{message}");
                    return Ok(ExitCode::from(EXIT_BAD_CONFIG));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn overrides(command: OverridesCommand) -> anyhow::Result<()> {
    match command {
        OverridesCommand::List { json, socket } => {
            let r = control::request(&socket, &Request::OverridesList)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let o: Overrides = serde_json::from_value(r)?;
            if o.is_empty() {
                println!("no API changes: the config file rules");
            }
            for (group, targets) in &o.targets {
                for (address, change) in targets {
                    match change {
                        TargetOverride::Registered { weight } => {
                            println!("{group:<16} {address:<28} registered, weight {weight}")
                        }
                        TargetOverride::Deregistered => {
                            println!("{group:<16} {address:<28} deregistered")
                        }
                    }
                }
            }
            for (group, check) in &o.health_checks {
                println!("{group:<16} health check: {}", describe_check(Some(check)));
            }
        }
        OverridesCommand::Clear { group, socket } => {
            let r = control::request(&socket, &Request::OverridesClear { group })?;
            let changes: Vec<String> =
                serde_json::from_value(r["changes"].clone()).unwrap_or_default();
            println!(
                "cleared; back to the config file: {} changes",
                changes.len()
            );
            for change in changes {
                println!("  {change}");
            }
        }
    }
    Ok(())
}

/// The TCP API's bearer token: `LB_AGENT_API_TOKEN`, else the token file; never the command
/// line (where `ps` shows it).
fn api_token(file: Option<&Path>) -> anyhow::Result<String> {
    let token = match (std::env::var("LB_AGENT_API_TOKEN"), file) {
        (Ok(token), _) => token,
        (Err(_), Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the API token file {}", file.display()))?,
        (Err(_), None) => anyhow::bail!(
            "agent.api_listen needs a token: set agent.api_token_file or LB_AGENT_API_TOKEN"
        ),
    };
    let token = token.trim().to_owned();
    anyhow::ensure!(
        token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
        "the API token must be at least 16 printable characters, without spaces"
    );
    Ok(token)
}

/// Asks the running agent to detach and stop; with none running, removes its pins.
fn detach(socket: &Path, pin_dir: &Path) -> anyhow::Result<()> {
    match control::request(socket, &Request::Detach) {
        Ok(_) => {
            println!("detached");
            Ok(())
        }
        Err(control::ControlError::Connect { .. }) if pin_dir.exists() => {
            let pins = PinDir::open(pin_dir)?;
            pins.remove_all()?;
            println!(
                "no agent running: removed the data plane pinned in {}",
                pin_dir.display()
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
