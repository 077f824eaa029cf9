//! `lb-agent`: runs the load balancer, and talks to a running one.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use cli::{
    args::{Cli, Command, LogFormat},
    commands,
    run::{RunOptions, run},
};
use lb_agent::overrides::Overrides;

/// mimalloc: the proxy allocates per request (headers, bodies' buffers), and glibc's malloc
/// cost it about 5% of its CPU time under load (`perf`, `bench l7`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Check { config } => return cli::check(&config),
        Command::Run {
            config,
            ifaces,
            socket,
            pin_dir,
            detach_on_exit,
            state_file,
        } => match cli::load_checked(&config) {
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
            )
            .map(|()| None),
            Err(status) => return status,
        },
        Command::Targets { command } => commands::targets(command).map(|()| None),
        Command::Groups { command } => commands::groups(command).map(|()| None),
        Command::Listeners { command } => cli::rules::listeners(command).map(|()| None),
        Command::Rules { command } => cli::rules::rules(command).map(|()| None),
        Command::Asg { command } => cli::scaling::asg(command).map(|()| None),
        Command::LaunchTemplates { command } => {
            cli::launch_templates::launch_templates(command).map(|()| None)
        }
        Command::Stats { json, socket } => commands::stats(&socket, json).map(|()| None),
        Command::Flows {
            json,
            limit,
            socket,
        } => commands::flows(&socket, json, limit).map(|()| None),
        Command::Status { json, socket } => commands::status(&socket, json).map(|()| None),
        Command::Overrides { command } => commands::overrides(command).map(|()| None),
        Command::Metrics { socket } => commands::metrics(&socket).map(|()| None),
        Command::Config { command } => commands::config(command).map(Some),
        Command::Reload { socket } => commands::reload(&socket).map(Some),
        Command::Detach { socket, pin_dir } => commands::detach(&socket, &pin_dir).map(|()| None),
    };
    // Commands that may refuse a config give their own exit status.
    match result {
        Ok(code) => code.unwrap_or(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
