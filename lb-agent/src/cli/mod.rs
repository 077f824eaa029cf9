//! The CLI: arguments (`args`), the commands that talk to a running agent (`commands`;
//! listeners and rules in `rules`; launch templates, with their printing, in
//! `launch_templates`), how answers are printed (`print`), and the daemon's start-up (`run`).

pub mod args;
pub mod commands;
pub mod launch_templates;
pub mod print;
pub mod rules;
pub mod run;
pub mod scaling;

use std::{path::Path, process::ExitCode};

use lb_agent::config::{Config, duration_text};

/// Exit status for a bad config file (EX_DATAERR-like, as sysexits' EX_USAGE family).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Reads a config file and checks it whole: the file's own checks, then the proxy's (rules
/// compiled, certificate files loaded, policies known); on failure, prints every problem and
/// gives the exit status.
pub fn load_checked(path: &Path) -> Result<Config, ExitCode> {
    let cfg = Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })?;
    if let Err(problems) = lb_agent::proxy::check(&cfg) {
        for line in problems.lines() {
            eprintln!("{}: {line}", path.display());
        }
        return Err(ExitCode::from(EXIT_BAD_CONFIG));
    }
    Ok(cfg)
}

/// `lb-agent check`: validates a file without touching anything.
pub fn check(path: &Path) -> ExitCode {
    match load_checked(path) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} listeners, {} target groups)",
                path.display(),
                cfg.listeners.len(),
                cfg.target_groups.len()
            );
            ExitCode::SUCCESS
        }
        Err(status) => status,
    }
}

/// Seconds as a duration, like `1h2m`.
pub fn duration(seconds: u64) -> String {
    duration_text(std::time::Duration::from_secs(seconds))
}
