//! One health check of one target: a TCP connect, or an HTTP(S) request whose status must
//! match the group's matcher. The request speaks the group's HTTP version: HTTP/1.1 here, HTTP/2
//! and gRPC in `h2`. A check never takes longer than its timeout and never panics; whatever
//! goes wrong becomes a `Failure` with AWS's reason code.

mod h2;

use std::{
    fmt,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::config::{HealthCheck, HealthMethod, HealthProtocol, ProtocolVersion};

/// The most of a response read to find its status line.
const MAX_STATUS_BYTES: usize = 8 * 1024;

/// Status codes that count as healthy: a union of ranges, as `200-299,301` (HTTP statuses) or
/// `0,12` (`grpc-status` codes, in gRPC groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher(Vec<(u16, u16)>);

impl Matcher {
    /// Parses `"200"`, `"200-299"`, `"200,301"` (HTTP codes 100..=599).
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_codes(text, 100..=599)
    }

    /// Parses `"12"`, `"0-99"`, `"0,12"` (gRPC codes 0..=99, AWS's range).
    pub fn parse_grpc(text: &str) -> Result<Self, String> {
        Self::parse_codes(text, 0..=99)
    }

    fn parse_codes(text: &str, codes: std::ops::RangeInclusive<u16>) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                (Ok(a), Ok(b)) if codes.contains(&a) && codes.contains(&b) && a <= b => {
                    ranges.push((a, b))
                }
                _ => return Err(format!("`{text}` is no status matcher")),
            }
        }
        Ok(Self(ranges))
    }

    /// Whether `status` is one of the matched codes.
    pub fn matches(&self, status: u16) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&status))
    }
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// The target refused the connection (nothing listens on the port).
    Refused,
    /// Any other connect error.
    ConnectFailed(String),
    /// The HTTP status did not match (or, in a gRPC check, was not 200).
    ResponseCodeMismatch(u16),
    /// The `grpc-status` code of a gRPC check did not match.
    GrpcCodeMismatch(u16),
    /// The answer was no HTTP response, or the connection closed early.
    BadResponse(String),
    /// The TLS handshake failed.
    Tls(String),
}

impl Failure {
    /// AWS's reason code for a target that fails this way.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "Target.Timeout",
            Self::ResponseCodeMismatch(_) | Self::GrpcCodeMismatch(_) => {
                "Target.ResponseCodeMismatch"
            }
            _ => super::reason::FAILED_HEALTH_CHECKS,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => write!(f, "request timed out"),
            Self::Refused => write!(f, "connection refused"),
            Self::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            Self::ResponseCodeMismatch(code) => {
                write!(f, "health checks failed with these codes: [{code}]")
            }
            Self::GrpcCodeMismatch(code) => {
                write!(f, "health checks failed with these gRPC codes: [{code}]")
            }
            Self::BadResponse(e) => write!(f, "bad response: {e}"),
            Self::Tls(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

/// The outcome of one check, and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub outcome: Result<(), Failure>,
    pub latency: Duration,
}

/// What a check sends and expects: built once per group from its `HealthCheck`.
pub struct Probe {
    port: Option<u16>,
    timeout: Duration,
    http: Option<HttpCheck>,
}

struct HttpCheck {
    method: HealthMethod,
    path: String,
    host: Option<String>,
    /// HTTP statuses; `grpc-status` codes for `Grpc`.
    matcher: Matcher,
    /// What the request speaks: the group's version.
    version: ProtocolVersion,
    /// Present for `https`.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Probe");
        d.field("port", &self.port).field("timeout", &self.timeout);
        if let Some(h) = &self.http {
            d.field("method", &h.method.as_str())
                .field("path", &h.path)
                .field("host", &h.host)
                .field("matcher", &h.matcher)
                .field("version", &h.version.as_str())
                .field("tls", &h.tls.is_some());
        }
        d.finish()
    }
}

impl Probe {
    /// The probe a check describes on a group whose targets speak `version` (the check as it
    /// runs there: `HealthCheck::for_version`); an error for a matcher that does not parse, or
    /// a path or host that make no HTTP/2 request.
    pub fn new(check: &HealthCheck, version: ProtocolVersion) -> Result<Self, String> {
        let http = match check.protocol {
            HealthProtocol::Tcp => None,
            HealthProtocol::Http | HealthProtocol::Https => {
                let matcher = match version {
                    ProtocolVersion::Grpc => Matcher::parse_grpc(&check.matcher)?,
                    ProtocolVersion::Http1 | ProtocolVersion::Http2 => {
                        Matcher::parse(&check.matcher)?
                    }
                };
                if version != ProtocolVersion::Http1 {
                    // Refused here, with the config, rather than at every check.
                    let host = check.host.as_deref().unwrap_or("127.0.0.1:1");
                    h2::uri("http", host, &check.path)?;
                }
                Some(HttpCheck {
                    method: check.method,
                    path: check.path.clone(),
                    host: check.host.clone(),
                    matcher,
                    version,
                    tls: (check.protocol == HealthProtocol::Https).then(|| tls_connector(version)),
                })
            }
        };
        Ok(Self {
            port: check.port,
            timeout: check.timeout,
            http,
        })
    }

    /// Checks `target` (its traffic address; the check's own port, if set, replaces the
    /// port). Takes at most the timeout.
    pub async fn check(&self, target: SocketAddr) -> ProbeResult {
        let address = SocketAddr::new(target.ip(), self.port.unwrap_or(target.port()));
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.run(address)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Timeout),
        };
        ProbeResult {
            outcome,
            latency: started.elapsed(),
        }
    }

    async fn run(&self, address: SocketAddr) -> Result<(), Failure> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => Failure::Refused,
                _ => Failure::ConnectFailed(e.to_string()),
            })?;
        let Some(http) = &self.http else {
            return Ok(());
        };
        let _ = stream.set_nodelay(true);
        let host = http.host.clone().unwrap_or_else(|| address.to_string());
        match &http.tls {
            None => http.exchange(stream, "http", &host).await,
            Some(connector) => {
                let name = server_name(http.host.as_deref(), address);
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| Failure::Tls(e.to_string()))?;
                http.exchange(tls, "https", &host).await
            }
        }
    }
}

impl HttpCheck {
    /// Sends the request in the group's version and judges the answer.
    async fn exchange<S>(&self, stream: S, scheme: &str, host: &str) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let uri = || h2::uri(scheme, host, &self.path).map_err(Failure::BadResponse);
        match self.version {
            ProtocolVersion::Http1 => self.judge_status(self.exchange_http1(stream, host).await?),
            ProtocolVersion::Http2 => {
                self.judge_status(h2::status(stream, self.method.as_str(), uri()?).await?)
            }
            ProtocolVersion::Grpc => {
                let code = h2::grpc_status(stream, uri()?).await?;
                match self.matcher.matches(code) {
                    true => Ok(()),
                    false => Err(Failure::GrpcCodeMismatch(code)),
                }
            }
        }
    }

    fn judge_status(&self, status: u16) -> Result<(), Failure> {
        match self.matcher.matches(status) {
            true => Ok(()),
            false => Err(Failure::ResponseCodeMismatch(status)),
        }
    }

    /// Sends the request over HTTP/1.1 and returns the response's status code.
    async fn exchange_http1<S>(&self, mut stream: S, host: &str) -> Result<u16, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let request = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-agent-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.method.as_str(),
            self.path,
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| Failure::BadResponse(format!("sending the request: {e}")))?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                return parse_status_line(&buf[..end]);
            }
            if buf.len() >= MAX_STATUS_BYTES {
                return Err(Failure::BadResponse("no status line in 8 KiB".into()));
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| Failure::BadResponse(format!("reading the response: {e}")))?;
            if n == 0 {
                // A status line without its newline still counts.
                return match buf.is_empty() {
                    true => Err(Failure::BadResponse(
                        "connection closed without a response".into(),
                    )),
                    false => parse_status_line(&buf),
                };
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `HTTP/1.x NNN reason` → NNN.
fn parse_status_line(line: &[u8]) -> Result<u16, Failure> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    let mut words = line.split_ascii_whitespace();
    let version = words.next().unwrap_or("");
    let code = words.next().and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(code) if version.starts_with("HTTP/") && (100..=599).contains(&code) => Ok(code),
        _ => {
            let shown: String = line.chars().take(64).collect();
            Err(Failure::BadResponse(format!(
                "not an HTTP status line: {shown:?}"
            )))
        }
    }
}

/// SNI: the configured host when it is a DNS name, else the target's address.
fn server_name(host: Option<&str>, address: SocketAddr) -> rustls::pki_types::ServerName<'static> {
    host.map(|h| {
        // Strip a `:port`, but not from a bare IPv6 address.
        match h.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
            _ => h,
        }
    })
    .and_then(|h| rustls::pki_types::ServerName::try_from(h.to_string()).ok())
    .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(address.ip().into()))
}

/// A TLS client that does not verify the target's certificate (as ELB's checks: targets
/// commonly serve self-signed certificates) but does check handshake signatures. HTTP/2 and
/// gRPC checks offer ALPN `h2`, as the proxy does to those groups.
fn tls_connector(version: ProtocolVersion) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    if version != ProtocolVersion::Http1 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A TLS acceptor with a fresh self-signed certificate for `localhost`, offering `alpn`.
    pub(super) fn self_signed_acceptor(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(server))
    }

    fn check(protocol: HealthProtocol, matcher: &str) -> HealthCheck {
        HealthCheck {
            protocol,
            matcher: matcher.into(),
            timeout: Duration::from_millis(500),
            interval: Duration::from_secs(1),
            ..HealthCheck::default()
        }
    }

    /// A loopback server that answers each connection with `response` and returns what it
    /// was sent (first request only).
    async fn http_server(response: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (addr, task)
    }

    #[test]
    fn matcher_accepts_lists_and_ranges() {
        let m = Matcher::parse("200-299,301").unwrap();
        assert!(m.matches(200) && m.matches(250) && m.matches(299) && m.matches(301));
        assert!(!m.matches(300) && !m.matches(500) && !m.matches(199));
        for bad in ["", "2xx", "99", "600", "300-200", "200,,301"] {
            assert!(Matcher::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500"), Ok(500));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc").is_err());
    }

    #[tokio::test]
    async fn tcp_check_passes_on_a_listener_and_fails_refused_without_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = Probe::new(&check(HealthProtocol::Tcp, "200"), ProtocolVersion::Http1).unwrap();
        let r = probe.check(addr).await;
        assert_eq!(r.outcome, Ok(()));
        drop(listener);
        let r = probe.check(addr).await;
        assert_eq!(r.outcome, Err(Failure::Refused));
        assert_eq!(Failure::Refused.reason(), "Target.FailedHealthChecks");
    }

    #[tokio::test]
    async fn http_check_sends_method_path_and_host_and_matches_the_status() {
        let (addr, request) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let mut hc = check(HealthProtocol::Http, "200-299");
        hc.path = "/health?deep=1".into();
        hc.method = HealthMethod::Head;
        hc.host = Some("app.example".into());
        let r = Probe::new(&hc, ProtocolVersion::Http1)
            .unwrap()
            .check(addr)
            .await;
        assert_eq!(r.outcome, Ok(()));
        let request = request.await.unwrap();
        assert!(
            request.starts_with("HEAD /health?deep=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nHost: app.example\r\n"), "{request}");
    }

    #[tokio::test]
    async fn http_check_fails_on_a_status_outside_the_matcher() {
        let (addr, _) = http_server("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        let r = Probe::new(&check(HealthProtocol::Http, "200"), ProtocolVersion::Http1)
            .unwrap()
            .check(addr)
            .await;
        assert_eq!(r.outcome, Err(Failure::ResponseCodeMismatch(500)));
        assert_eq!(
            Failure::ResponseCodeMismatch(500).reason(),
            "Target.ResponseCodeMismatch"
        );
    }

    #[tokio::test]
    async fn http_check_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe =
            Probe::new(&check(HealthProtocol::Http, "200"), ProtocolVersion::Http1).unwrap();
        let r = probe.check(addr).await;
        assert_eq!(r.outcome, Err(Failure::Timeout));
        assert!(r.latency >= Duration::from_millis(500) && r.latency < Duration::from_secs(2));
        drop(listener);
    }

    #[tokio::test]
    async fn http_check_rejects_a_non_http_answer() {
        let (addr, _) = http_server("SSH-2.0-OpenSSH_9.2\r\n").await;
        let r = Probe::new(&check(HealthProtocol::Http, "200"), ProtocolVersion::Http1)
            .unwrap()
            .check(addr)
            .await;
        assert!(matches!(r.outcome, Err(Failure::BadResponse(_))), "{r:?}");
    }

    #[tokio::test]
    async fn https_check_accepts_a_self_signed_target() {
        let acceptor = self_signed_acceptor(&[]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(s).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = tls.read(&mut buf).await.unwrap();
            tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            let _ = tls.shutdown().await;
        });
        let mut hc = check(HealthProtocol::Https, "200-299");
        hc.host = Some("localhost".into());
        let r = Probe::new(&hc, ProtocolVersion::Http1)
            .unwrap()
            .check(addr)
            .await;
        assert_eq!(r.outcome, Ok(()), "{r:?}");
    }

    #[tokio::test]
    async fn the_check_port_replaces_the_traffic_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut hc = check(HealthProtocol::Tcp, "200");
        hc.port = Some(port);
        let traffic: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let r = Probe::new(&hc, ProtocolVersion::Http1)
            .unwrap()
            .check(traffic)
            .await;
        assert_eq!(r.outcome, Ok(()));
    }
}
