//! Running one command to completion under a timeout, with bytes on its stdin: the `ip`, `nft`
//! and `iptables` calls of the local provider and the exec provider's hook all go through it.

use std::{
    io::{Read as _, Write as _},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// What a finished command left.
#[derive(Debug, Clone)]
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Why a command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be started (not installed, not executable).
    #[error("starting `{command}`: {source}")]
    Start {
        /// The command line.
        command: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// It ran past its timeout and was killed.
    #[error("`{command}` did not finish within {timeout:?} (killed)")]
    TimedOut {
        /// The command line.
        command: String,
        /// The time it had.
        timeout: Duration,
    },
    /// Waiting for it failed.
    #[error("waiting for `{command}`: {source}")]
    Wait {
        /// The command line.
        command: String,
        /// The system's error.
        source: std::io::Error,
    },
}

/// `cmd` as one line, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with `input` on its stdin, killed after `timeout`; whatever its exit status.
pub fn run(mut cmd: Command, input: &[u8], timeout: Duration) -> Result<Output, CommandError> {
    let line = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Start {
            command: line.clone(),
            source,
        })?;
    // Write and read on threads of their own: a child that fills one pipe while we block on
    // another would never finish.
    let (tx, rx) = mpsc::channel();
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        std::thread::spawn(move || {
            // A child that exits without reading its input is its own business.
            let _ = stdin.write_all(&input);
        });
    }
    let pipes: [Option<Box<dyn std::io::Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for (index, pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            let _ = tx.send((index, text));
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(CommandError::Wait {
                    command: line,
                    source,
                });
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CommandError::TimedOut {
                command: line,
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A background grandchild may hold the pipes open: wait for them a second at most.
    let mut output = [Vec::new(), Vec::new()];
    let pipes_deadline = Instant::now() + Duration::from_secs(1);
    for _ in 0..2 {
        match rx.recv_timeout(pipes_deadline.saturating_duration_since(Instant::now())) {
            Ok((index, text)) => output[index] = text,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = output.map(|o| String::from_utf8_lossy(&o).into_owned());
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reaches_the_command_and_its_output_comes_back() {
        let out = run(Command::new("cat"), b"hello", Duration::from_secs(5)).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_and_reported() {
        let mut cmd = Command::new("sleep");
        cmd.arg("10");
        let started = Instant::now();
        let err = run(cmd, b"", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_program_is_a_start_error() {
        let err = run(
            Command::new("/nonexistent/lb-no-such-program"),
            b"",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, CommandError::Start { .. }), "{err}");
    }
}
