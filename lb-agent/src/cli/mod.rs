//! The CLI: arguments (`args`), the commands that talk to a running agent (`commands`;
//! listeners and rules in `rules`), how answers are printed (`print`), and the daemon's
//! start-up (`run`).

pub mod args;
pub mod commands;
pub mod print;
pub mod rules;
pub mod run;

use std::{path::Path, process::ExitCode};

use lb_agent::config::{Config, duration_text};

/// Exit status for a bad config file (EX_DATAERR-like, as sysexits' EX_USAGE family).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// `lb-agent check`: validates a file without touching anything.
pub fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) if lb_agent::proxy::check(&cfg).is_err() => {
            let problems = lb_agent::proxy::check(&cfg).err().unwrap_or_default();
            for line in problems.lines() {
                eprintln!("{}: {line}", path.display());
            }
            ExitCode::from(EXIT_BAD_CONFIG)
        }
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

/// Seconds as a duration, like `1h2m`.
pub fn duration(seconds: u64) -> String {
    duration_text(std::time::Duration::from_secs(seconds))
}
