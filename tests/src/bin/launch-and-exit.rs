//! `launch-and-exit`: stands in for an agent that launches one `local` instance and then goes
//! away, so a test can check that the instance outlives it and a new provider adopts it.
//! Prints the instance's record as JSON.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use lb_agent::scaling::provider::{
    Provider as _,
    local::{LocalConfig, LocalProvider},
};
use tests::scaling;

/// Launches one local instance serving TCP `port`, then exits.
#[derive(Debug, Parser)]
struct Args {
    /// The load balancer's network namespace.
    #[arg(long)]
    lb_namespace: String,
    /// The provider's state directory.
    #[arg(long)]
    state_dir: PathBuf,
    /// The instance id.
    #[arg(long)]
    id: String,
    /// The instance's address.
    #[arg(long)]
    address: IpAddr,
    /// The subnet's router.
    #[arg(long)]
    gateway: IpAddr,
    /// The port it serves (allowed from everywhere).
    #[arg(long)]
    port: u16,
    /// The command.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let any = if args.address.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    let spec = scaling::spec(
        &args.id,
        1,
        args.command,
        (args.address, args.gateway),
        args.port,
        &[any],
    );
    let launched = LocalProvider::new(LocalConfig {
        state_dir: args.state_dir,
        lb_namespace: Some(args.lb_namespace),
        cgroup_parent: None,
    })
    .map_err(Into::into)
    .and_then(|provider| provider.launch(&spec));
    match launched {
        Ok(record) => {
            println!("{}", serde_json::to_string(&record).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("launch-and-exit: {e}");
            ExitCode::FAILURE
        }
    }
}
