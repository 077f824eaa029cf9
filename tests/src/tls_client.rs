//! A blocking TCP and TLS client that lives in the lab's client namespace, for what curl cannot do:
//! keep one connection open across a reload and send on it again, see the certificate a
//! connection got, or speak raw bytes over TLS (a `tls` listener).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use xtask::lab::{Lab, netns};

/// A TCP connection from the lab's client to `addr`, reads and writes timing out after 10 s.
pub fn connect_from_client(lab: &Lab, addr: SocketAddr) -> TcpStream {
    // The socket belongs to the namespace it is made in, whichever thread uses it later.
    let tcp = netns::run_inside(&lab.client().ns, || {
        Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(10))?)
    })
    .unwrap_or_else(|e| panic!("connect to {addr}: {e:#}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    tcp
}

/// A TLS connection from the lab's client (also `Read` and `Write`, for a websocket).
pub struct TlsClient {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects from the client namespace to `addr`, sends `sni`, verifies the server against
    /// the CA at `ca` (for `sni`) and completes the handshake; offers ALPN `http/1.1` if
    /// `http`. Every read and write times out after 10 s.
    pub fn connect(lab: &Lab, addr: SocketAddr, sni: &str, ca: &Path, http: bool) -> Self {
        let tcp = connect_from_client(lab, addr);
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
            roots.add(cert.expect("CA PEM")).expect("add the CA");
        }
        let mut config =
            ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        if http {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let name = ServerName::try_from(sni.to_owned()).expect("a DNS name");
        let conn = ClientConnection::new(Arc::new(config), name).expect("TLS client");
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {sni}: {e}"));
        }
        Self {
            stream: BufReader::new(stream),
        }
    }

    /// The leaf certificate the server presented (DER).
    pub fn server_certificate(&self) -> Vec<u8> {
        self.stream
            .get_ref()
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.to_vec())
            .expect("the server presented a certificate")
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).expect("TLS write");
        stream.flush().expect("TLS flush");
    }

    /// Reads one line (without its `\n`).
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("TLS read");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    /// Sends `GET PATH HTTP/1.1` for `host` on this connection (kept alive) and reads the
    /// response; its status and body (`Content-Length` or chunked).
    pub fn get(&mut self, host: &str, path: &str) -> (u16, String) {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        let status_line = self.read_line();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in `{status_line}`"));
        let (mut length, mut chunked) = (None, false);
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "content-length" {
                    length = value.parse::<usize>().ok();
                } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let size_line = self.read_line();
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .unwrap_or_else(|_| panic!("bad chunk size `{size_line}`"));
                if size == 0 {
                    // Trailers, if any, end with a blank line.
                    while !self.read_line().is_empty() {}
                    break;
                }
                let mut chunk = vec![0; size];
                self.stream.read_exact(&mut chunk).expect("read a chunk");
                body.extend(chunk);
                self.read_line();
            }
        } else {
            let mut rest = vec![0; length.unwrap_or(0)];
            self.stream.read_exact(&mut rest).expect("read the body");
            body = rest;
        }
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl std::io::Read for TlsClient {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl std::io::Write for TlsClient {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.get_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.get_mut().flush()
    }
}
