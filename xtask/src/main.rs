//! `cargo xtask`: set-up, the demo, the test runner, benchmarks and the lab.

mod bench;
mod bench_l7;
mod demo;
mod setup;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use xtask::lab::{Lab, LabSpec, kernel_object};

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks: setup, demo, test, bench, lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: Debian packages, nightly's rust-src, bpf-linker.
    Setup,
    /// Set up, build, and run L4 traffic through the load balancer in a namespace lab.
    Demo,
    /// Run every test: unit, BPF_PROG_TEST_RUN and lab integration tests.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        args: Vec<String>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Create or remove a namespace lab by hand.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// iperf3 through the VIP vs direct, and ns/packet of the XDP program vs XDP_TX.
    L4,
    /// The L7 proxy beside HAProxy and nginx: wrk, h2load and new TLS connections.
    L7,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build a lab and leave it running.
    Up {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value_t = 3)]
        backends: usize,
    },
    /// Remove a lab.
    Down {
        #[arg(long, default_value = "lab")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::setup(),
        Command::Demo => {
            setup::setup()?;
            demo::demo()
        }
        Command::Test { args } => {
            setup::setup()?;
            test(&args)
        }
        Command::Bench {
            which: BenchCommand::L4,
        } => {
            setup::setup()?;
            bench::l4()
        }
        Command::Bench {
            which: BenchCommand::L7,
        } => {
            setup::setup()?;
            bench_l7::l7()
        }
        Command::Lab {
            command: LabCommand::Up { name, backends },
        } => {
            let lab = Lab::up(LabSpec {
                name: name.clone(),
                backends,
                router: None,
            })?;
            println!(
                "lab `{name}` is up: namespaces {name}-cl, {name}-lb, {name}-b1..; remove it with `cargo xtask lab down --name {name}`"
            );
            lab.leak();
            Ok(())
        }
        Command::Lab {
            command: LabCommand::Down { name },
        } => Lab::down(&name),
    }
}

/// Runs a cargo command in the workspace, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    anyhow::ensure!(
        status.success(),
        "cargo {} failed ({status})",
        args.join(" ")
    );
    Ok(())
}

/// The workspace's root directory.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut total = TestCount::default();
    // Unit tests: pure logic, run in parallel.
    let mut unit = vec![
        "test",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--exclude",
        "tests",
        "--lib",
        "--bins",
        "--tests",
        "--",
    ];
    unit.extend(&extra);
    let unit_result = cargo_test(&unit, &[], &mut total);
    // The lab tests run the agent's binary, as an operator would, and their labs attach the
    // `pass` program of the object built with it: told where it is, they ask cargo nothing.
    let object = kernel_object::lb_ebpf_object()?;
    // Data-plane and lab tests share kernel state (interfaces, namespaces): one at a time.
    let mut integration = vec!["test", "-p", "tests", "--tests", "--", "--test-threads=1"];
    integration.extend(&extra);
    let integration_result = cargo_test(
        &integration,
        &[(kernel_object::OBJECT_ENV, object.as_os_str())],
        &mut total,
    );
    println!(
        "xtask test: {} passed, {} failed",
        total.passed, total.failed
    );
    unit_result.and(integration_result)
}

/// Tests counted over several `cargo test` runs.
#[derive(Default)]
struct TestCount {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test ...` with `envs` set, echoing its output and adding up its
/// `test result:` lines.
fn cargo_test(
    args: &[&str],
    envs: &[(&str, &std::ffi::OsStr)],
    total: &mut TestCount,
) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO"))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| {
                        n.trim()
                            .rsplit(' ')
                            .next()
                            .and_then(|n| n.parse::<u64>().ok())
                    })
                    .unwrap_or(0)
            };
            total.passed += count(" passed");
            total.failed += count(" failed");
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "cargo {} failed ({status})",
        args.join(" ")
    );
    Ok(())
}
