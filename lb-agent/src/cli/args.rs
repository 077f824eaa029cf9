//! The command line: every command and option (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default control socket, as in the config's `agent.control_socket`.
pub const DEFAULT_SOCKET: &str = "/run/lb-agent.sock";

#[derive(Parser)]
#[command(name = "lb-agent", version, about = "XDP load balancer agent")]
pub struct Cli {
    /// Log lines for people (`human`, the default) or one JSON object per line (`json`), on
    /// stderr; RUST_LOG filters them (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// At most this many (the table can hold a million); 0: all of them.
        #[arg(long, default_value_t = lb_agent::protocol::DEFAULT_FLOWS_LIMIT)]
        limit: usize,
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
pub enum TargetsCommand {
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
pub enum ConfigCommand {
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
pub enum OverridesCommand {
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
pub enum GroupsCommand {
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
pub struct HealthCheckArgs {
    #[arg(long)]
    pub group: String,
    /// Start from the defaults (TCP, 30s, 10s, 5, 2) instead of the current check.
    #[arg(long)]
    pub reset: bool,
    /// Stop checking: every target is in service.
    #[arg(long, conflicts_with = "enable")]
    pub disable: bool,
    /// Check again after `--disable`.
    #[arg(long)]
    pub enable: bool,
    /// tcp, http or https.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Port to check (default: the traffic port).
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long)]
    pub path: Option<String>,
    /// GET or HEAD.
    #[arg(long)]
    pub method: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
    /// Status codes that pass, like 200-299,301.
    #[arg(long)]
    pub matcher: Option<String>,
    /// Like 10s.
    #[arg(long)]
    pub interval: Option<String>,
    /// Like 2s.
    #[arg(long)]
    pub timeout: Option<String>,
    #[arg(long)]
    pub healthy_threshold: Option<u32>,
    #[arg(long)]
    pub unhealthy_threshold: Option<u32>,
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}
