//! Real handshakes over an in-memory pipe against certificates a test CA issued into a temp dir.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rustls::{
    ClientConfig, ServerConfig, SupportedProtocolVersion,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::io::DuplexStream;

use super::*;

/// A directory of its own under the system temp dir, removed on drop (even when a test fails).
struct TestDir(PathBuf);

impl TestDir {
    fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-proxy-tls-{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate the test CA issued: its subject's common name, its files and its DER.
struct Issued {
    subject: String,
    files: Certificate,
    der: CertificateDer<'static>,
}

/// A test CA, issuing leaf certificates into its temp dir.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    dir: TestDir,
}

impl Pki {
    fn new(test: &str) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lb test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Self {
            ca,
            ca_key,
            dir: TestDir::new(test),
        }
    }

    /// A leaf for `names` with common name `subject`, written as `subject.crt` / `subject.key`.
    fn issue(&self, subject: &str, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, subject);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Issued {
            subject: subject.to_owned(),
            files: Certificate {
                cert: self.dir.write(&format!("{subject}.crt"), &cert.pem()),
                key: self
                    .dir
                    .write(&format!("{subject}.key"), &key.serialize_pem()),
            },
            der: cert.der().clone(),
        }
    }

    /// A client trusting this CA, limited to `versions`, offering `alpn`.
    fn client(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&str],
    ) -> ClientConfig {
        self.client_with(rustls::crypto::ring::default_provider(), versions, alpn)
    }

    /// As `client`, with the suites and groups of `provider`.
    fn client_with(
        &self,
        provider: rustls::crypto::CryptoProvider,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&str],
    ) -> ClientConfig {
        let provider = Arc::new(provider);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TestCaVerifier(verifier)))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }
}

/// Checks the chain up to the test CA and the handshake signatures, but not the name: the
/// default certificate for an unknown name is what the tests look for.
#[derive(Debug)]
struct TestCaVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for TestCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

type ServerStream = tokio_rustls::server::TlsStream<DuplexStream>;
type ClientStream = tokio_rustls::client::TlsStream<DuplexStream>;

/// Both ends of a handshake over an in-memory pipe; `sni` None sends no SNI.
async fn connect(
    server: Arc<ServerConfig>,
    mut client: ClientConfig,
    sni: Option<&str>,
) -> Result<(ServerStream, ClientStream), String> {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    client.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_owned()).unwrap();
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(server_io);
    let connect = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, client_io);
    let both = async { tokio::join!(accept, connect) };
    match tokio::time::timeout(Duration::from_secs(10), both).await {
        Ok((Ok(server), Ok(client))) => Ok((server, client)),
        Ok((server, client)) => Err(format!(
            "server: {:?}; client: {:?}",
            server.err(),
            client.err()
        )),
        Err(_) => Err("handshake timed out".to_owned()),
    }
}

/// The subject (of `issued`) of the certificate the server presented.
fn served_subject(issued: &[&Issued], client: &ClientStream) -> String {
    let leaf = &client.get_ref().1.peer_certificates().unwrap()[0];
    issued
        .iter()
        .find(|i| &i.der == leaf)
        .map(|i| i.subject.clone())
        .unwrap_or_else(|| "(a certificate the test did not issue)".to_owned())
}

fn config_for(issued: &[&Issued], policy: &str, alpn: Alpn) -> Arc<ServerConfig> {
    let files: Vec<Certificate> = issued.iter().map(|i| i.files.clone()).collect();
    server_config(policy, &CertificateStore::load(&files).unwrap(), alpn).unwrap()
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A default for `default.test`, two exact names and a wildcard.
struct Sites {
    pki: Pki,
    default: Issued,
    www: Issued,
    api: Issued,
    wildcard: Issued,
}

impl Sites {
    fn new(test: &str) -> Self {
        let pki = Pki::new(test);
        Self {
            default: pki.issue("default", &["default.test"]),
            www: pki.issue("www", &["www.example.com"]),
            api: pki.issue("api", &["api.example.org"]),
            wildcard: pki.issue("wildcard", &["*.example.com"]),
            pki,
        }
    }

    fn all(&self) -> [&Issued; 4] {
        [&self.default, &self.www, &self.api, &self.wildcard]
    }

    fn server(&self) -> Arc<ServerConfig> {
        config_for(
            &self.all(),
            super::super::tls_policy::DEFAULT_POLICY,
            Alpn::default(),
        )
    }

    async fn subject_for(&self, sni: Option<&str>) -> String {
        let (_server, client) = connect(self.server(), self.pki.client(BOTH, &[]), sni)
            .await
            .unwrap();
        served_subject(&self.all(), &client)
    }
}

#[tokio::test]
async fn exact_sni_names_get_their_own_certificates() {
    let sites = Sites::new("exact");
    assert_eq!(sites.subject_for(Some("www.example.com")).await, "www");
    assert_eq!(sites.subject_for(Some("api.example.org")).await, "api");
    assert_eq!(sites.subject_for(Some("WWW.Example.COM")).await, "www");
}

#[tokio::test]
async fn wildcard_serves_exactly_one_label_below_it() {
    let sites = Sites::new("wildcard");
    assert_eq!(sites.subject_for(Some("a.example.com")).await, "wildcard");
    assert_eq!(sites.subject_for(Some("example.com")).await, "default");
    assert_eq!(sites.subject_for(Some("a.b.example.com")).await, "default");
}

#[tokio::test]
async fn exact_name_wins_over_a_wildcard_listed_before_it() {
    let pki = Pki::new("exact-first");
    let wildcard = pki.issue("wildcard", &["*.example.com"]);
    let www = pki.issue("www", &["www.example.com"]);
    let issued = [&wildcard, &www];
    let server = config_for(
        &issued,
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
        Alpn::default(),
    );
    let (_s, client) = connect(server, pki.client(BOTH, &[]), Some("www.example.com"))
        .await
        .unwrap();
    assert_eq!(served_subject(&issued, &client), "www");
}

#[tokio::test]
async fn unknown_name_gets_the_default_certificate() {
    let sites = Sites::new("unknown");
    assert_eq!(
        sites.subject_for(Some("nobody.example.net")).await,
        "default"
    );
}

#[tokio::test]
async fn no_sni_gets_the_default_certificate() {
    let sites = Sites::new("no-sni");
    assert_eq!(sites.subject_for(None).await, "default");
}

#[tokio::test]
async fn tls13_only_policy_refuses_a_tls12_client() {
    let pki = Pki::new("tls13-only");
    let site = pki.issue("site", &["site.test"]);
    let tls13_only = config_for(
        &[&site],
        "ELBSecurityPolicy-TLS13-1-3-2021-06",
        Alpn::default(),
    );
    let err = connect(tls13_only, pki.client(TLS12_ONLY, &[]), Some("site.test"))
        .await
        .unwrap_err();
    assert!(err.contains("PeerIncompatible"), "{err}");

    // The same client gets TLS 1.2 from the policy that allows it.
    let tls12_too = config_for(
        &[&site],
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
        Alpn::default(),
    );
    let (_s, client) = connect(tls12_too, pki.client(TLS12_ONLY, &[]), Some("site.test"))
        .await
        .unwrap();
    assert_eq!(
        client.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn tls12_suite_outside_the_policy_is_refused() {
    let pki = Pki::new("suite");
    let site = pki.issue("site", &["site.test"]);
    let server = config_for(
        &[&site],
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
        Alpn::default(),
    );
    // ring's ECDHE CHACHA20 suite for TLS 1.2 is not in AWS's list for this policy.
    let chacha_only = rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    };
    let client = pki.client_with(chacha_only, TLS12_ONLY, &[]);
    let err = connect(server, client, Some("site.test"))
        .await
        .unwrap_err();
    assert!(
        err.contains("NoCipherSuitesInCommon") || err.contains("HandshakeFailure"),
        "{err}"
    );
}

#[tokio::test]
async fn alpn_chooses_h2_when_the_client_offers_it() {
    let pki = Pki::new("alpn");
    let site = pki.issue("site", &["site.test"]);
    let server = config_for(
        &[&site],
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
        Alpn::H2AndHttp1,
    );
    let (_s, client) = connect(
        server.clone(),
        pki.client(BOTH, &["http/1.1", "h2"]),
        Some("site.test"),
    )
    .await
    .unwrap();
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let (_s, client) = connect(server, pki.client(BOTH, &["http/1.1"]), Some("site.test"))
        .await
        .unwrap();
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn http1_only_listener_never_chooses_h2() {
    let pki = Pki::new("alpn-http1");
    let site = pki.issue("site", &["site.test"]);
    let server = config_for(
        &[&site],
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
        Alpn::Http1Only,
    );
    let (_s, client) = connect(
        server,
        pki.client(BOTH, &["h2", "http/1.1"]),
        Some("site.test"),
    )
    .await
    .unwrap();
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn mismatched_key_and_certificate_are_refused_naming_both_files() {
    let pki = Pki::new("mismatch");
    let one = pki.issue("one", &["one.test"]);
    let two = pki.issue("two", &["two.test"]);
    let mixed = Certificate {
        cert: one.files.cert.clone(),
        key: two.files.key.clone(),
    };
    let err = CertificateStore::load(&[mixed]).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains("two.key") && shown.contains("one.crt"),
        "{shown}"
    );
    assert!(shown.contains("does not match"), "{shown}");
}

#[test]
fn swapped_files_are_refused_naming_the_file_and_what_is_missing() {
    let pki = Pki::new("swapped");
    let one = pki.issue("one", &["one.test"]);
    let key_as_cert = Certificate {
        cert: one.files.key.clone(),
        key: one.files.key.clone(),
    };
    let err = CertificateStore::load(&[key_as_cert]).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(
        err.to_string().contains("one.key: no PEM CERTIFICATE"),
        "{err}"
    );

    let cert_as_key = Certificate {
        cert: one.files.cert.clone(),
        key: one.files.cert.clone(),
    };
    let err = CertificateStore::load(&[cert_as_key]).unwrap_err();
    assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
    assert!(
        err.to_string().contains("one.crt: no PEM private key"),
        "{err}"
    );
}

#[test]
fn missing_file_and_empty_list_are_refused() {
    let pki = Pki::new("missing");
    let one = pki.issue("one", &["one.test"]);
    let missing = Certificate {
        cert: pki.dir.0.join("absent.crt"),
        key: one.files.key.clone(),
    };
    let err = CertificateStore::load(&[missing]).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.crt"), "{err}");
    assert!(matches!(
        CertificateStore::load(&[]),
        Err(TlsError::NoCertificates)
    ));
}

#[test]
fn unknown_policy_is_refused() {
    let pki = Pki::new("policy");
    let one = pki.issue("one", &["one.test"]);
    let store = CertificateStore::load(std::slice::from_ref(&one.files)).unwrap();
    let err = server_config("TLS-please", &store, Alpn::default()).unwrap_err();
    assert!(matches!(err, TlsError::Policy(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("ELBSecurityPolicy-TLS13-1-3-2021-06"),
        "{err}"
    );
}

#[test]
fn store_lists_each_certificates_san_names() {
    let sites = Sites::new("names");
    let files: Vec<Certificate> = sites.all().iter().map(|i| i.files.clone()).collect();
    let store = CertificateStore::load(&files).unwrap();
    let names: Vec<&str> = store
        .iter()
        .flat_map(|c| c.names.iter().map(String::as_str))
        .collect();
    assert_eq!(
        names,
        [
            "default.test",
            "www.example.com",
            "api.example.org",
            "*.example.com"
        ]
    );
    assert_eq!(
        store.default_certificate().cert_path,
        sites.default.files.cert
    );
}
