//! The proxies `bench l7` compares, configured alike: the same VIP and ports (80 plain, 443
//! TLS with ALPN h2 and http/1.1), the same certificate, the same two rules (a host rule and
//! a path rule, both to group `api`) before the default (group `web`), the same two targets
//! in both groups, round robin, keep-alive to clients and targets, 2 worker threads or
//! processes. The benchmark's requests (`/`, host = the VIP) go through both rules to the
//! default, so every proxy evaluates both on every request. Nothing logs requests.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use xtask::lab::{Lab, VIP4};

/// The targets' port (their nginx).
pub const TARGET_PORT: u16 = 8080;
/// The host the host rule matches.
const RULE_HOST: &str = "api.example.com";
/// The path prefix the path rule matches.
const RULE_PATH_PREFIX: &str = "/static/";
/// How long a proxy has to start listening or to stop.
const START_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One of the proxies under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// `lb-agent run`.
    Ours,
    Haproxy,
    Nginx,
}

impl Proxy {
    /// In the order each round runs them.
    pub const ALL: [Proxy; 3] = [Proxy::Ours, Proxy::Haproxy, Proxy::Nginx];

    pub fn name(self) -> &'static str {
        match self {
            Proxy::Ours => "ours",
            Proxy::Haproxy => "haproxy",
            Proxy::Nginx => "nginx",
        }
    }
}

/// Where the shared certificate is (self-signed, ECDSA P-256, for the VIP).
#[derive(Debug, Clone)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate then key, in one file (HAProxy's `crt`).
    pub bundle: PathBuf,
}

/// A self-signed ECDSA P-256 certificate for the VIP in `dir`, made with openssl. ECDSA keeps
/// the server's signature cheap, so the handshake rate says more about the proxy than about
/// RSA; every proxy serves the same one.
pub fn make_certificate(dir: &Path) -> anyhow::Result<Certificate> {
    let cert = dir.join("bench-cert.pem");
    let key = dir.join("bench-key.pem");
    let bundle = dir.join("bench-bundle.pem");
    let san = format!("subjectAltName=DNS:bench.lb.test,IP:{VIP4}");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=bench.lb.test",
            "-addext",
        ])
        .arg(&san)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl req")?;
    anyhow::ensure!(status.success(), "openssl req failed ({status})");
    let pem = std::fs::read_to_string(&cert)? + &std::fs::read_to_string(&key)?;
    std::fs::write(&bundle, pem)?;
    Ok(Certificate { cert, key, bundle })
}

/// The target nginx of one backend: one process (`master_process off`), `return 200 "ok\n"`
/// on `TARGET_PORT`, keep-alive with no request limit (nginx closes a connection after 1000
/// requests by default, which would make proxies reconnect to targets mid-run).
pub fn target_nginx_config(dir: &Path, name: &str) -> String {
    let dir = dir.display();
    format!(
        "master_process off;\n\
         daemon off;\n\
         pid {dir}/{name}.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 keepalive_requests 1000000;\n\
         \x20 keepalive_timeout 300s;\n\
         {temp}\
         \x20 server {{\n\
         \x20   listen {TARGET_PORT};\n\
         \x20   location = {ADDED_HEADERS_PATH} {{ return 200 \"$http_x_forwarded_for|$http_x_forwarded_proto|$http_x_forwarded_port|$http_x_amzn_trace_id\\n\"; }}\n\
         \x20   location / {{ return 200 \"ok\\n\"; }}\n\
         \x20 }}\n\
         }}\n",
        temp = nginx_temp_paths(&format!("{dir}/{name}-tmp")),
    )
}

/// The targets' path that answers with the headers a proxy added to the request: its
/// `X-Forwarded-For`, `-Proto`, `-Port` and `X-Amzn-Trace-Id`, `|`-separated.
pub const ADDED_HEADERS_PATH: &str = "/added-headers";

/// Checks that `proxy` adds what every proxy of the bench must add to a request (the same
/// work for all): asks the targets' `ADDED_HEADERS_PATH` through it, over plain HTTP and TLS.
pub fn check_added_headers(lab: &Lab, proxy: Proxy) -> anyhow::Result<()> {
    for (scheme, port) in [("http", "80"), ("https", "443")] {
        let url = format!("{scheme}://{VIP4}{ADDED_HEADERS_PATH}");
        let answer = lab
            .run(lab.client(), &["curl", "-sk", "--max-time", "5", &url])
            .with_context(|| format!("asking {url} through {}", proxy.name()))?;
        let fields: Vec<&str> = answer.trim().split('|').collect();
        let client = lab.client().v4.to_string();
        let added = fields.len() == 4
            && fields[..3] == [client.as_str(), scheme, port]
            && fields[3].starts_with("Root=1-");
        if !added {
            bail!(
                "{} does not add the bench's request headers over {scheme}                  (X-Forwarded-For|-Proto|-Port|X-Amzn-Trace-Id): `{}`",
                proxy.name(),
                answer.trim()
            );
        }
    }
    Ok(())
}

/// nginx's temporary directories, all in `dir` (its built-in ones are outside the lab).
fn nginx_temp_paths(dir: &str) -> String {
    [
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
    ]
    .iter()
    .map(|directive| format!("  {directive} {dir};\n"))
    .collect()
}

/// HAProxy: `nbthread 2`, mode http, keep-alive both sides (the default `http-reuse safe`),
/// TLS 1.2 and 1.3 with ALPN h2 and http/1.1. It adds to each request what ours does:
/// `X-Forwarded-For`, `-Proto` and `-Port`, and a request id in `X-Amzn-Trace-Id`.
pub fn haproxy_config(targets: &[Ipv4Addr], cert: &Certificate) -> String {
    let servers: String = targets
        .iter()
        .enumerate()
        .map(|(i, t)| format!("    server t{} {t}:{TARGET_PORT}\n", i + 1))
        .collect();
    format!(
        "global\n\
         \x20   nbthread 2\n\
         \x20   maxconn 4000\n\
         \x20   ssl-default-bind-options ssl-min-ver TLSv1.2\n\
         defaults\n\
         \x20   mode http\n\
         \x20   option http-keep-alive\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 60s\n\
         \x20   timeout server 60s\n\
         \x20   timeout http-request 10s\n\
         \x20   timeout http-keep-alive 60s\n\
         frontend bench\n\
         \x20   bind {VIP4}:80\n\
         \x20   bind {VIP4}:443 ssl crt {bundle} alpn h2,http/1.1\n\
         \x20   option forwardfor\n\
         \x20   http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}\n\
         \x20   http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}\n\
         \x20   http-request set-header X-Forwarded-Port %[dst_port]\n\
         \x20   unique-id-format Root=1-%[date,hex]-%[rand,hex]%[rand,hex]%[rand,hex]\n\
         \x20   unique-id-header X-Amzn-Trace-Id\n\
         \x20   use_backend api if {{ hdr(host) -i {RULE_HOST} }}\n\
         \x20   use_backend api if {{ path_beg {RULE_PATH_PREFIX} }}\n\
         \x20   default_backend web\n\
         backend web\n\
         \x20   balance roundrobin\n\
         {servers}\
         backend api\n\
         \x20   balance roundrobin\n\
         {servers}",
        bundle = cert.bundle.display(),
    )
}

/// nginx: `worker_processes 2`, upstreams with `keepalive 64` over HTTP/1.1, the host rule as a
/// `server_name`, the path rule as a `location`, TLS 1.2 and 1.3 with h2; the same request
/// headers added as by HAProxy and ours.
pub fn nginx_config(dir: &Path, targets: &[Ipv4Addr], cert: &Certificate) -> String {
    let servers: String = targets
        .iter()
        .map(|t| format!("    server {t}:{TARGET_PORT};\n"))
        .collect();
    let tls = format!(
        "    ssl_certificate {};\n\
         \x20   ssl_certificate_key {};\n\
         \x20   ssl_protocols TLSv1.2 TLSv1.3;\n\
         \x20   proxy_http_version 1.1;\n\
         \x20   proxy_set_header Connection \"\";\n\
         \x20   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20   proxy_set_header X-Forwarded-Proto $scheme;\n\
         \x20   proxy_set_header X-Forwarded-Port $server_port;\n\
         \x20   proxy_set_header X-Amzn-Trace-Id Root=1-$request_id;\n",
        cert.cert.display(),
        cert.key.display(),
    );
    let listen = format!("    listen {VIP4}:80;\n    listen {VIP4}:443 ssl http2;\n");
    let d = dir.display();
    format!(
        "worker_processes 2;\n\
         daemon off;\n\
         pid {d}/nginx-peer.pid;\n\
         error_log stderr warn;\n\
         worker_rlimit_nofile 16384;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 keepalive_requests 1000000;\n\
         \x20 keepalive_timeout 60s;\n\
         {temp}\
         \x20 upstream web {{\n{servers}    keepalive 64;\n  }}\n\
         \x20 upstream api {{\n{servers}    keepalive 64;\n  }}\n\
         \x20 server {{\n{listen}    server_name {RULE_HOST};\n{tls}    location / {{ proxy_pass http://api; }}\n  }}\n\
         \x20 server {{\n{listen_default}    server_name _;\n{tls}    location {RULE_PATH_PREFIX} {{ proxy_pass http://api; }}\n    location / {{ proxy_pass http://web; }}\n  }}\n\
         }}\n",
        temp = nginx_temp_paths(&format!("{d}/nginx-peer-tmp")),
        listen_default = listen.replace(";\n", " default_server;\n"),
    )
}

/// Ours: an `http` listener on VIP:80 and an `https` listener on VIP:443, each with the same
/// two rules and default action, forwarding to `http` groups of the targets.
pub fn agent_config(targets: &[Ipv4Addr], cert: &Certificate) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ address = \"{t}\" }}"))
        .collect();
    let targets = targets.join(", ");
    let group = |name: &str| {
        format!(
            "[[target_group]]\n\
             name = \"{name}\"\n\
             protocol = \"http\"\n\
             port = {TARGET_PORT}\n\
             load_balancing_algorithm = \"round_robin\"\n\
             targets = [{targets}]\n\n"
        )
    };
    let rules = format!(
        "[[listener.rule]]\n\
         priority = 10\n\
         conditions = {{ host = [\"{RULE_HOST}\"] }}\n\
         action = {{ forward = \"api\" }}\n\n\
         [[listener.rule]]\n\
         priority = 20\n\
         conditions = {{ path = [\"{RULE_PATH_PREFIX}*\"] }}\n\
         action = {{ forward = \"api\" }}\n\n"
    );
    format!(
        "# Written by `cargo xtask bench l7`.\n\
         [agent]\n\
         interface = \"eth0\"\n\n\
         {web}{api}\
         [[listener]]\n\
         name = \"bench-http\"\n\
         address = \"{VIP4}\"\n\
         port = 80\n\
         protocol = \"http\"\n\
         default_action = {{ forward = \"web\" }}\n\n\
         {rules}\
         [[listener]]\n\
         name = \"bench-https\"\n\
         address = \"{VIP4}\"\n\
         port = 443\n\
         protocol = \"https\"\n\
         certificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n\
         default_action = {{ forward = \"web\" }}\n\n\
         {rules}",
        web = group("web"),
        api = group("api"),
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

/// A proxy running in the LB namespace.
pub enum Running {
    /// The agent, stopped with `lb-agent detach` (which also removes its XDP program, so the
    /// peers after it run without one). Started here rather than by `LabAgent::start`, whose
    /// failure would leave it running, holding the ports, with no pid to stop it by.
    Ours {
        pid: u32,
        binary: PathBuf,
        socket: PathBuf,
        pin_dir: PathBuf,
    },
    /// A peer's main process; the VIP is on the LB's `lo` while it runs.
    Peer { proxy: Proxy, pid: u32 },
}

/// The config files of every proxy, written once.
pub struct Configs {
    /// The agent's binary, or why there is none.
    pub agent_binary: Result<PathBuf, String>,
    pub agent: PathBuf,
    pub haproxy: PathBuf,
    pub nginx: PathBuf,
    /// nginx's prefix directory.
    pub dir: PathBuf,
}

/// Starts `proxy` in the LB namespace and waits (bounded) until it answers on 80 and 443.
pub fn start(lab: &Lab, proxy: Proxy, configs: &Configs) -> anyhow::Result<Running> {
    let running = match proxy {
        Proxy::Ours => {
            let binary = configs
                .agent_binary
                .as_ref()
                .map_err(|why| anyhow::anyhow!("{why}"))?;
            let socket = lab.log_dir().join("agent.sock");
            let pin_dir = lab.bpffs()?.join("lb-agent");
            let pid = lab.spawn(
                lab.lb(),
                &[
                    path_str(binary)?,
                    "--log-format",
                    "json",
                    "run",
                    "--config",
                    path_str(&configs.agent)?,
                    "--socket",
                    path_str(&socket)?,
                    "--pin-dir",
                    path_str(&pin_dir)?,
                    "--iface",
                    "eth0",
                ],
            )?;
            Running::Ours {
                pid,
                binary: binary.clone(),
                socket,
                pin_dir,
            }
        }
        Proxy::Haproxy | Proxy::Nginx => {
            // The agent puts the VIP where its proxy receives it; a peer needs it on a local
            // interface to accept connections to it.
            lab.run(
                lab.lb(),
                &["ip", "addr", "replace", &format!("{VIP4}/32"), "dev", "lo"],
            )?;
            // The same receive path as ours: with an XDP program attached, a veth receives
            // through NAPI and copies each frame into a page-pool page (a real NIC receives
            // into those pages anyway), which moves a proxy's rate by 5-10% here (either
            // way, from one day to the next: see the README). Ours has its own program
            // attached; a peer gets the lab's pass program.
            lab.attach_pass_program(&lab.lb().ns, "eth0")?;
            let args: Vec<&str> = match proxy {
                Proxy::Haproxy => vec!["haproxy", "-db", "-f", path_str(&configs.haproxy)?],
                _ => vec![
                    "nginx",
                    "-c",
                    path_str(&configs.nginx)?,
                    "-p",
                    path_str(&configs.dir)?,
                ],
            };
            Running::Peer {
                proxy,
                pid: lab.spawn(lab.lb(), &args)?,
            }
        }
    };
    if let Err(e) = wait_answering(lab) {
        let pid = match &running {
            Running::Ours { pid, .. } => *pid,
            Running::Peer { pid, .. } => *pid,
        };
        let log = lab.log(pid).unwrap_or_default();
        let _ = stop(lab, running);
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!(
            "{} does not serve: {e:#}\nthe end of its log:\n{}",
            proxy.name(),
            tail.join("\n")
        );
    }
    Ok(running)
}

/// Stops a proxy and waits (bounded) until it is gone and nothing listens on 80 or 443.
pub fn stop(lab: &Lab, running: Running) -> anyhow::Result<()> {
    match running {
        Running::Ours {
            pid,
            binary,
            socket,
            pin_dir,
        } => {
            // Detach answers, then the agent exits; if it does not, kill it and detach what
            // it left pinned.
            let detach = |args: &[&Path]| {
                lab.run_with_timeout(
                    lab.lb(),
                    &[path_str(&binary)?, "detach"]
                        .into_iter()
                        .chain(
                            args.iter()
                                .map(|p| path_str(p))
                                .collect::<Result<Vec<_>, _>>()?,
                        )
                        .collect::<Vec<_>>(),
                    START_STOP_TIMEOUT,
                )
            };
            if detach(&[Path::new("--socket"), &socket]).is_err()
                || lab.wait_ended(pid, START_STOP_TIMEOUT).is_err()
            {
                lab.stop(pid)?;
                detach(&[Path::new("--pin-dir"), &pin_dir]).context("lb-agent detach")?;
            }
        }
        Running::Peer { proxy, pid } => {
            if proxy == Proxy::Nginx {
                // SIGTERM: the master stops its workers (SIGKILL would orphan them, holding
                // the ports).
                // SAFETY: kill(2) has no memory effects; `pid` is our child.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                if lab.wait_ended(pid, START_STOP_TIMEOUT).is_err() {
                    lab.stop(pid)?;
                }
            } else {
                lab.stop(pid)?;
            }
            lab.run(
                lab.lb(),
                &["ip", "addr", "del", &format!("{VIP4}/32"), "dev", "lo"],
            )?;
            lab.detach_pass_program(&lab.lb().ns, "eth0")?;
        }
    }
    wait_ports_free(lab)
}

/// Waits until a request from the client to `http://VIP/` and one to `https://VIP/` each get
/// a 200, at most `START_STOP_TIMEOUT`: the client's view, however a proxy receives the VIP.
fn wait_answering(lab: &Lab) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + START_STOP_TIMEOUT;
    for url in [format!("http://{VIP4}/"), format!("https://{VIP4}/")] {
        loop {
            let status = lab.run(
                lab.client(),
                &[
                    "curl",
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                    &url,
                ],
            );
            match status {
                Ok(code) if code.trim() == "200" => break,
                other if std::time::Instant::now() >= deadline => {
                    let got = match other {
                        Ok(code) => format!("status {}", code.trim()),
                        Err(e) => format!("{e:#}"),
                    };
                    anyhow::bail!("{url} gave no 200 within {START_STOP_TIMEOUT:?}: {got}");
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    Ok(())
}

/// Waits until nothing listens on 80 or 443 in the LB namespace, at most
/// `START_STOP_TIMEOUT`.
fn wait_ports_free(lab: &Lab) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + START_STOP_TIMEOUT;
    loop {
        let listening = lab.run(
            lab.lb(),
            &["ss", "-Hltn", "( sport = :80 or sport = :443 )"],
        )?;
        if listening.trim().is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "ports 80/443 still listen in {} after {START_STOP_TIMEOUT:?}:\n{listening}",
            lab.lb().ns
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> Certificate {
        Certificate {
            cert: "/c.pem".into(),
            key: "/k.pem".into(),
            bundle: "/b.pem".into(),
        }
    }

    const TARGETS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 21), Ipv4Addr::new(198, 18, 0, 22)];

    #[test]
    fn every_proxy_gets_both_rules_both_targets_and_two_workers() {
        let configs = [
            haproxy_config(&TARGETS, &cert()),
            nginx_config(Path::new("/d"), &TARGETS, &cert()),
            agent_config(&TARGETS, &cert()),
        ];
        for config in &configs {
            assert!(config.contains(RULE_HOST), "{config}");
            assert!(config.contains(RULE_PATH_PREFIX), "{config}");
            assert!(config.contains("198.18.0.21") && config.contains("198.18.0.22"));
        }
        assert!(configs[0].contains("nbthread 2"));
        assert!(configs[1].contains("worker_processes 2;"));
        assert!(configs[1].contains("keepalive 64;"));
        assert!(configs[0].contains("alpn h2,http/1.1"));
        assert!(configs[1].contains("ssl http2"));
    }

    #[test]
    fn agent_config_has_http_and_https_listeners_with_the_rules_each() {
        let config = agent_config(&TARGETS, &cert());
        assert_eq!(config.matches("[[listener]]").count(), 2);
        assert_eq!(config.matches("[[listener.rule]]").count(), 4);
        assert!(config.contains("protocol = \"https\""));
        assert!(config.contains("cert = \"/c.pem\", key = \"/k.pem\""));
    }
}
