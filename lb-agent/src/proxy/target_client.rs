//! The client a group's requests go to targets with: pooled keep-alive connections (HTTP/1.1)
//! or multiplexed ones (HTTP/2, gRPC), plain (`http` groups: TLS offload) or TLS again
//! (`https` groups: bridging), the targets' certificates verified against the group's CA
//! file or, without one, not verified (as AWS ALB does).

use std::{path::Path, sync::Arc, time::Duration};

use hyper::{body::Bytes, http::uri::Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

use super::tls_policy::SecurityPolicy;
use crate::config::{GroupL7, GroupProtocol, ProtocolVersion, TargetGroup};

/// The body type every request and response of the proxy carries.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;
/// Errors of bodies, whatever their source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long connecting to a target may take before the request fails with 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections to targets are closed after this long (below the 60 s keep-alive
/// timeouts common targets use, so the proxy closes first and never reuses a dying one).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per target.
const POOL_MAX_IDLE_PER_TARGET: usize = 512;

/// A group's client and what it was built from (rebuilt only when that changes).
pub struct TargetClient {
    /// One per proxy worker (`workers`): each worker's requests use its own pool.
    clients: Box<[Client<HttpsConnector<HttpConnector>, ProxyBody>]>,
    /// `http` or `https`: the scheme of the URIs requests are sent to.
    pub scheme: Scheme,
    built_from: (GroupProtocol, GroupL7),
}

impl TargetClient {
    /// The client for `group` with its L7 `settings` (`TargetGroup::l7`), with a pool per
    /// worker.
    pub fn new(group: &TargetGroup, settings: GroupL7, workers: usize) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        let tls = client_tls(&settings)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match &settings.tls_server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| format!("tls_server_name `{name}`: {e}"))?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        // hyper-rustls sets ALPN itself from the versions enabled.
        let connector = match settings.protocol_version {
            ProtocolVersion::Http1 => builder.enable_http1().wrap_connector(http),
            ProtocolVersion::Http2 | ProtocolVersion::Grpc => {
                builder.enable_http2().wrap_connector(http)
            }
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_TARGET)
            .http2_only(settings.protocol_version != ProtocolVersion::Http1);
        Ok(Self {
            clients: (0..workers.max(1))
                .map(|_| client.build(connector.clone()))
                .collect(),
            scheme: if group.protocol == GroupProtocol::Https {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            built_from: (group.protocol, settings),
        })
    }

    /// Whether this client serves a group of `protocol` with these `settings`.
    pub fn fits(&self, protocol: GroupProtocol, settings: &GroupL7) -> bool {
        self.built_from.0 == protocol && &self.built_from.1 == settings
    }

    /// The HTTP version it speaks to targets.
    pub fn version(&self) -> ProtocolVersion {
        self.built_from.1.protocol_version
    }

    /// The calling worker's pooled client.
    pub fn client(&self) -> &Client<HttpsConnector<HttpConnector>, ProxyBody> {
        &self.clients[super::workers::current() % self.clients.len()]
    }
}

/// The TLS config towards a group's targets: verification by CA file or none (ALPN is the
/// connector's, by protocol version).
fn client_tls(settings: &GroupL7) -> Result<ClientConfig, String> {
    let provider = Arc::new(SecurityPolicy::default_policy().crypto_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match &settings.ca_file {
        Some(ca) => builder
            .with_root_certificates(root_store(ca)?)
            .with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// The CA certificates of a PEM file.
pub fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM CERTIFICATE block", path.display()));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(store)
}

/// Accepts any certificate a target shows: bridging without a CA file encrypts but does not
/// authenticate (AWS ALB's behaviour towards targets); signatures are still checked, so the
/// handshake is a real one.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
