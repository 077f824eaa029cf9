//! The L7 lab: `l7-target` servers on the backends, certificates from a lab CA, the agent on
//! a config of the test's, and curl in the client namespace.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_agent::health::TargetState;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use serde::Deserialize;
use xtask::{agent::LabAgent, lab::Lab};

use crate::lab_traffic::{lab_up, start_agent, wait_for_state, write_config};

/// The names the lab's certificates are issued for (`Pki::issue`).
pub const DEFAULT_NAME: &str = "default.example.test";
pub const A_NAME: &str = "a.example.test";
pub const B_NAME: &str = "b.example.test";
/// The name the https targets' certificate is issued for (bridging verifies it).
pub const TARGET_NAME: &str = "target.example.test";

/// A lab CA and the certificates it issued, as PEM files in the lab's directory.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    /// A new CA, written to `DIR/ca.pem`.
    pub fn new(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = distinguished_name("lab CA", "ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        Self {
            dir: dir.to_owned(),
            ca,
            ca_key,
        }
    }

    /// The CA's certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a leaf for `dns_name` (its CN and only SAN; `edition` goes in the OU, so that a
    /// reissue is told apart) to `DIR/STEM.pem` and `DIR/STEM.key`, each written whole then
    /// renamed (a reload never reads half a file); the two paths.
    pub fn issue(&self, dns_name: &str, stem: &str, edition: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec![dns_name.to_owned()]).expect("leaf params");
        params.distinguished_name = distinguished_name(dns_name, edition);
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("leaf certificate");
        let (cert_path, key_path) = self.paths(stem);
        for (path, text) in [(&key_path, key.serialize_pem()), (&cert_path, cert.pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write a certificate file");
            std::fs::rename(&tmp, path).expect("rename a certificate file");
        }
        (cert_path, key_path)
    }

    /// The files `issue(.., stem, ..)` writes: certificate, key.
    pub fn paths(&self, stem: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        )
    }
}

fn distinguished_name(common_name: &str, unit: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationalUnitName, unit);
    dn
}

/// What an `l7-target` instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// HTTP/1.1 and h2c.
    Http,
    /// HTTP/1.1 and h2 over TLS, with a certificate for `TARGET_NAME`.
    Https,
    /// `--raw`: a greeting, then an echo.
    Raw,
}

/// One `l7-target` of the lab: on backend `backend` (0: b1), port `port`.
#[derive(Debug, Clone, Copy)]
pub struct TargetSpec {
    pub backend: usize,
    pub port: u16,
    pub kind: TargetKind,
}

/// A running L7 lab. Fields drop in order: the agent and the lab's processes go with `lab`.
pub struct L7Lab {
    pub agent: LabAgent,
    pub pki: Pki,
    /// The pids of the targets, in the order of their specs.
    pub targets: Vec<u32>,
    pub lab: Lab,
}

impl L7Lab {
    /// A lab of `backends` backends running `targets` (the `l7-target` binary at `binary`,
    /// which cargo builds for the tests: `env!("CARGO_BIN_EXE_l7-target")`), certificates
    /// for `DEFAULT_NAME`, `A_NAME` and `B_NAME` (stems `default`, `a`, `b`, edition `v1`) and
    /// `TARGET_NAME` (stem `target`), and the agent on `config(&pki)`; returns once every
    /// target of `groups` (group name, `ADDRESS:PORT`) is healthy.
    pub fn up(
        tag: &str,
        backends: usize,
        binary: &str,
        targets: &[TargetSpec],
        config: impl FnOnce(&Pki) -> String,
        groups: &[(&str, &str)],
    ) -> Self {
        let lab = lab_up(tag, backends);
        let pki = Pki::new(lab.log_dir());
        for (name, stem) in [(DEFAULT_NAME, "default"), (A_NAME, "a"), (B_NAME, "b")] {
            pki.issue(name, stem, "v1");
        }
        pki.issue(TARGET_NAME, "target", "v1");
        let pids = targets
            .iter()
            .map(|t| start_target(&lab, &pki, binary, t))
            .collect();
        for t in targets {
            lab.wait_tcp_listening(&lab.backends()[t.backend], t.port, Duration::from_secs(10))
                .expect("l7-target listens");
        }
        write_config(&lab, &config(&pki));
        let agent = start_agent(&lab);
        for (group, address) in groups {
            wait_for_state(
                &agent,
                group,
                address,
                TargetState::Healthy,
                Duration::from_secs(30),
            );
        }
        Self {
            agent,
            pki,
            targets: pids,
            lab,
        }
    }

    /// `curl -s -i --max-time 10 ARGS` in the client namespace; the answer, parsed.
    pub fn curl(&self, args: &[&str]) -> HttpAnswer {
        let out = self.curl_raw(&[&["-s", "-i"], args].concat());
        HttpAnswer::parse(&out)
    }

    /// `curl --max-time 10 ARGS` in the client namespace; its stdout and stderr together
    /// (`-v` writes the handshake to stderr). Panics if curl fails.
    pub fn curl_raw(&self, args: &[&str]) -> String {
        let out = self
            .lab
            .cmd(self.lab.client(), "curl")
            .args(["--max-time", "10"])
            .args(args)
            .output()
            .expect("run curl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "curl {args:?}: {}\n{text}",
            out.status
        );
        text
    }

    /// What `target`'s `l7-target` has logged (`REQ METHOD PATH` lines, `RAW`).
    pub fn target_log(&self, target: usize) -> String {
        self.lab.log(self.targets[target]).expect("target log")
    }
}

/// The name an `l7-target` started by `L7Lab::up` answers with: `b1-8001`.
pub fn target_name(backend: usize, port: u16) -> String {
    format!("b{}-{port}", backend + 1)
}

fn start_target(lab: &Lab, pki: &Pki, binary: &str, t: &TargetSpec) -> u32 {
    let host = &lab.backends()[t.backend];
    let name = target_name(t.backend, t.port);
    let listen = format!("{}:{}", host.v4, t.port);
    let (cert, key) = pki.paths("target");
    let (cert, key) = (path_str(&cert), path_str(&key));
    let mut args = vec![binary, "--name", &name, "--listen", &listen];
    match t.kind {
        TargetKind::Http => {}
        TargetKind::Https => args.extend(["--tls-cert", cert, "--tls-key", key]),
        TargetKind::Raw => args.push("--raw"),
    }
    lab.spawn(host, &args).expect("start l7-target")
}

/// A path as the `&str` a command line takes (lab paths are ASCII).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("lab paths are UTF-8")
}

/// An HTTP response as `curl -i` prints it (the last head, after any 1xx).
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    /// Names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// Parses `curl -i` output: status line, headers, a blank line, the body.
    pub fn parse(text: &str) -> Self {
        let mut rest = text;
        loop {
            let (head, body) = rest
                .split_once("\r\n\r\n")
                .unwrap_or_else(|| panic!("no response head in:\n{text}"));
            let mut lines = head.lines();
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status in `{status_line}`:\n{text}"));
            if (100..200).contains(&status) && body.starts_with("HTTP/") {
                rest = body;
                continue;
            }
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            return Self {
                status,
                headers,
                body: body.to_owned(),
            };
        }
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as the target's JSON (a 200 from an `l7-target`, else a panic showing it).
    pub fn seen(&self) -> Seen {
        assert_eq!(self.status, 200, "{self:?}");
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not a target's answer ({e}): {self:?}"))
    }
}

/// What an `l7-target` saw of a request (its JSON answer).
#[derive(Debug, Clone, Deserialize)]
pub struct Seen {
    pub target: String,
    pub method: String,
    pub path: String,
    pub query: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub version: String,
    pub tls: bool,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
}
