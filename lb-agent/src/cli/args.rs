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
    /// Show listeners of every kind: address, protocol, default action, rules, TLS.
    Listeners {
        #[command(subcommand)]
        command: ListenersCommand,
    },
    /// List, add, remove or re-prioritise the rules of an http or https listener (kept across
    /// reloads and restarts, like targets added through the API).
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Auto scaling groups: list, describe, set the desired capacity, terminate or protect
    /// instances, the activity history.
    Asg {
        #[command(subcommand)]
        command: super::scaling::AsgCommand,
    },
    /// The running config's launch templates (and launch configurations): list them, or
    /// describe every version of one, as EC2's describe-launch-template-versions does.
    LaunchTemplates {
        #[command(subcommand)]
        command: LaunchTemplatesCommand,
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
    /// Drop them (of one group, of one listener's rules, or all): the config file rules
    /// again, applied at once.
    Clear {
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        listener: Option<String>,
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

#[derive(Subcommand)]
pub enum ListenersCommand {
    /// Each listener: address, protocol, default action, rule count, certificates and TLS
    /// policy, flows and counters.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum LaunchTemplatesCommand {
    /// Each launch template: default and latest version, how many versions, the groups
    /// launching from it; then the launch configurations, marked as such.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Every version of a launch template (or a launch configuration's one definition): its
    /// command, directory, instance type and limits, ports, subnet, inbound rules, stop
    /// timeout, environment names and user data size; `$Default` and `$Latest` marked.
    Describe {
        /// The launch template's (or launch configuration's) name.
        name: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum RulesCommand {
    /// A listener's rules, lowest priority (tried first) first, then its default action.
    List {
        #[arg(long)]
        listener: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Add a rule at a priority the listener does not use yet. Conditions: values of one
    /// flag match if any matches, different flags must all match. Checked with the whole
    /// config (unknown group, priority, patterns) before anything changes.
    Add(Box<RuleArgs>),
    /// Remove the rule at a priority.
    Remove {
        #[arg(long)]
        listener: String,
        #[arg(long)]
        priority: u32,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Move the rule at `--priority` to `--to` (a priority the listener does not use yet).
    SetPriority {
        #[arg(long)]
        listener: String,
        #[arg(long)]
        priority: u32,
        #[arg(long)]
        to: u32,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

/// `rules add`'s options: a rule from flags, or whole as JSON (`--json`).
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("action")
    .args(["forward", "fixed_status", "redirect_protocol", "redirect_host", "redirect_port",
           "redirect_path", "redirect_query", "json"])
    .multiple(true)
    .required(true)))]
pub struct RuleArgs {
    #[arg(long)]
    pub listener: String,
    /// 1..=50000, unique in the listener; lower is tried first.
    #[arg(long, required_unless_present = "json")]
    pub priority: Option<u32>,
    /// Host header pattern (`*` and `?` wildcards).
    #[arg(long)]
    pub host: Vec<String>,
    /// Path pattern (`*` and `?` wildcards).
    #[arg(long)]
    pub path: Vec<String>,
    /// Request method, like GET.
    #[arg(long)]
    pub method: Vec<String>,
    /// Client address block, like 198.18.0.0/15.
    #[arg(long)]
    pub source_ip: Vec<String>,
    /// NAME=VALUE-PATTERN; repeat a name for several values.
    #[arg(long)]
    pub header: Vec<String>,
    /// KEY=VALUE-PATTERN (a key of `*`: any key).
    #[arg(long)]
    pub query: Vec<String>,
    /// GROUP, or GROUP:WEIGHT repeated for a weighted forward (canary).
    #[arg(long)]
    pub forward: Vec<String>,
    /// Redirect: http or https.
    #[arg(long)]
    pub redirect_protocol: Option<String>,
    /// Redirect: host (`#{host}` keeps the request's).
    #[arg(long)]
    pub redirect_host: Option<String>,
    #[arg(long)]
    pub redirect_port: Option<u16>,
    /// Redirect: path, starting with `/` (`#{path}` is the request's).
    #[arg(long)]
    pub redirect_path: Option<String>,
    /// Redirect: query without `?`.
    #[arg(long)]
    pub redirect_query: Option<String>,
    /// Redirect status: 301 (default), 302, 303, 307 or 308.
    #[arg(long)]
    pub redirect_status: Option<u16>,
    /// Fixed response: its status (200..=599).
    #[arg(long)]
    pub fixed_status: Option<u16>,
    #[arg(long, requires = "fixed_status")]
    pub fixed_body: Option<String>,
    #[arg(long, requires = "fixed_status")]
    pub fixed_content_type: Option<String>,
    /// The whole rule as JSON, as in the file and `rules list --json`:
    /// {"priority": 10, "conditions": {"path": ["/api/*"]}, "action": {"forward": "api"}}.
    #[arg(long, conflicts_with_all = ["priority", "host", "path", "method", "source_ip",
        "header", "query", "forward", "redirect_protocol", "redirect_host", "redirect_port",
        "redirect_path", "redirect_query", "redirect_status", "fixed_status"])]
    pub json: Option<String>,
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn launch_templates_list_and_describe_parse_with_json_and_a_socket() {
        let cli = Cli::try_parse_from(["lb-agent", "launch-templates", "list", "--json"])
            .expect("list parses");
        assert!(matches!(
            cli.command,
            Command::LaunchTemplates {
                command: LaunchTemplatesCommand::List { json: true, ref socket }
            } if socket.as_os_str() == DEFAULT_SOCKET
        ));
        let cli = Cli::try_parse_from([
            "lb-agent",
            "launch-templates",
            "describe",
            "web",
            "--socket",
            "/tmp/a.sock",
        ])
        .expect("describe parses");
        assert!(matches!(
            cli.command,
            Command::LaunchTemplates {
                command: LaunchTemplatesCommand::Describe { ref name, json: false, ref socket }
            } if name == "web" && socket.as_os_str() == "/tmp/a.sock"
        ));
        assert!(
            Cli::try_parse_from(["lb-agent", "launch-templates", "describe"]).is_err(),
            "describe needs a name"
        );
    }
}
