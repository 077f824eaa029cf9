//! Running one command to completion under a timeout, and reaping a child for sure: what the
//! lab's `ip` calls, `Lab::run` and its process list all rest on.

use std::{
    io::Read as _,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Runs `cmd` to completion, killed after `timeout`; its stdout, or an error naming the
/// command with its stderr.
pub fn run_command(mut cmd: Command, timeout: Duration) -> anyhow::Result<String> {
    let line = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    // Read both pipes while the child runs: one that fills a pipe would never exit.
    let (tx, rx) = mpsc::channel();
    for (stream, pipe) in [
        (
            0,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
        (
            1,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            let _ = tx.send((stream, text));
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            kill_and_reap(&mut child, Duration::from_secs(5))?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A background grandchild may hold the pipes open; do not wait for it past a second.
    let mut output = [Vec::new(), Vec::new()];
    let pipes_deadline = deadline.max(Instant::now()) + Duration::from_secs(1);
    for _ in 0..2 {
        match rx.recv_timeout(pipes_deadline.saturating_duration_since(Instant::now())) {
            Ok((stream, text)) => output[stream] = text,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = output.map(|o| String::from_utf8_lossy(&o).into_owned());
    match status {
        None => bail!(
            "`{line}` did not finish within {timeout:?} (killed); stderr: {}",
            stderr.trim()
        ),
        Some(status) if !status.success() => bail!(
            "`{line}` failed ({status}): {}",
            if stderr.trim().is_empty() {
                stdout.trim()
            } else {
                stderr.trim()
            }
        ),
        Some(_) => Ok(stdout),
    }
}

/// SIGKILL, then wait at most `timeout` for the child to be reaped.
pub fn kill_and_reap(child: &mut Child, timeout: Duration) -> anyhow::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    // Fails only when it has just exited, which the wait below sees.
    let _ = child.kill();
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            bail!("process {} did not die within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A command line for messages: quoted where needed, long arguments (inline scripts) cut.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            let arg = match arg.char_indices().nth(60) {
                Some((cut, _)) => format!("{}…", &arg[..cut]),
                None => arg.into_owned(),
            };
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", arg.replace('\'', r"'\''").replace('\n', "\\n"))
            } else {
                arg
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
