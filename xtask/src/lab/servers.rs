//! The servers every lab backend runs, and the knob tests turn on them: a greet-and-echo
//! server (`echo_server.py`), a health endpoint (`health_server.py`) and `iperf3 -s`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use super::{Host, Lab};

/// The greet-and-echo server, dual-stack: on TCP `ECHO_PORT` a greeting with the backend's
/// name (`b1\n`), then an echo of everything received until EOF, a thread per connection; on
/// UDP `UDP_ECHO_PORT`, a reply of the name followed by the datagram.
const ECHO_SERVER: &str = include_str!("echo_server.py");

/// The HTTP server on `HEALTH_PORT`, dual-stack. Each request reads the mode file: missing or
/// `200`: 200 OK; a code: that status; `hang`: no answer for 60 s; `alternate`: 200 and 503
/// by turns.
const HEALTH_SERVER: &str = include_str!("health_server.py");

/// The TCP port of the backends' greet-and-echo server.
pub const ECHO_PORT: u16 = 8080;
/// The UDP port of the backends' greet-and-echo responder.
pub const UDP_ECHO_PORT: u16 = 7;
/// The ports the backends' `iperf3 -s` instances listen on (one test at a time each).
pub const IPERF_PORTS: [u16; 2] = [5201, 5202];
/// The HTTP port of the backends' health endpoint (any path; answer set by `set_health`).
pub const HEALTH_PORT: u16 = 8081;

/// What `set_health` makes a backend's health endpoint answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthMode {
    /// Every request gets this status (200: healthy).
    Status(u16),
    /// Requests are accepted and never answered.
    Hang,
    /// 200 and 503 by turns: a flapping target.
    Alternate,
}

/// The system's python3 when there is one: a pyenv shim on PATH costs a shell and pyenv's
/// start-up per process.
pub fn python3() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The pids of the servers `start_backend_servers` started, per backend (in lab order).
#[derive(Debug, Clone)]
pub struct BackendServers {
    /// The greet-and-echo server (TCP `ECHO_PORT`, UDP `UDP_ECHO_PORT`).
    pub echo: Vec<u32>,
}

/// Starts on every backend the greet-and-echo server (TCP `ECHO_PORT`, UDP `UDP_ECHO_PORT`,
/// IPv4 and IPv6), the health endpoint (`HEALTH_PORT`, answering 200) and `iperf3 -s` on
/// each of `IPERF_PORTS`, and waits (at most 10 s each) until they listen.
pub fn start_backend_servers(lab: &Lab) -> anyhow::Result<BackendServers> {
    let mut echo = Vec::new();
    for b in lab.backends() {
        echo.push(lab.spawn(b, &[python3(), "-c", ECHO_SERVER, &b.role])?);
        let mode_file = health_mode_file(lab, b);
        let mode_file = mode_file.to_str().context("lab directory is not UTF-8")?;
        lab.spawn(b, &[python3(), "-c", HEALTH_SERVER, &b.role, mode_file])?;
        for port in IPERF_PORTS {
            lab.spawn(b, &["iperf3", "-s", "-p", &port.to_string()])?;
        }
    }
    let timeout = Duration::from_secs(10);
    for b in lab.backends() {
        lab.wait_tcp_listening(b, ECHO_PORT, timeout)?;
        lab.wait_udp_bound(b, UDP_ECHO_PORT, timeout)?;
        lab.wait_tcp_listening(b, HEALTH_PORT, timeout)?;
        for port in IPERF_PORTS {
            lab.wait_tcp_listening(b, port, timeout)?;
        }
    }
    Ok(BackendServers { echo })
}

/// Starts `backend`'s greet-and-echo server (again, after a `lab.stop` of it) and waits (at
/// most 10 s) until it listens; its pid.
pub fn start_echo_server(lab: &Lab, backend: &Host) -> anyhow::Result<u32> {
    let pid = lab.spawn(backend, &[python3(), "-c", ECHO_SERVER, &backend.role])?;
    lab.wait_tcp_listening(backend, ECHO_PORT, Duration::from_secs(10))?;
    Ok(pid)
}

/// Sets what `backend`'s health endpoint answers from its next request on.
pub fn set_health(lab: &Lab, backend: &Host, mode: HealthMode) -> anyhow::Result<()> {
    let text = match mode {
        HealthMode::Status(code) => code.to_string(),
        HealthMode::Hang => "hang".into(),
        HealthMode::Alternate => "alternate".into(),
    };
    let path = health_mode_file(lab, backend);
    // Written whole, then renamed: a request never reads half a mode.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

fn health_mode_file(lab: &Lab, backend: &Host) -> PathBuf {
    lab.log_dir().join(format!("health-{}", backend.role))
}
