//! The client a group's requests go to targets with: pooled keep-alive connections (HTTP/1.1)
//! or one multiplexed connection per target (HTTP/2, gRPC), plain (`http` groups: TLS
//! offload) or TLS again (`https` groups: bridging), the targets' certificates verified
//! against the group's CA file or, without one, not verified (as AWS ALB does).
//!
//! Each proxy worker has its own connections (`workers`): a request goes out on a connection
//! of the worker that serves it. An HTTP/1.1 request without a body goes through the proxy's
//! own exchange (`lean_h1`); one with a body, or an upgrade, through hyper's client. Either
//! way the connection goes back to its worker's idle list when the response's body has ended
//! (hyper's: once hyper is ready for the next request on it, at once nearly always, with no
//! task per request waiting for it); one whose body was dropped unread is closed. A request
//! that finds its pooled connection closed by the target before anything was written is sent
//! again on another.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::future::Either;
use http_body_util::BodyExt as _;
use hyper::{
    Method, Request, Response,
    body::{Body, Bytes, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
    http::uri::Scheme,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

mod lean_h1;

use super::{plan::ConfigMap, send_batch::BatchedTcp, tls_policy::SecurityPolicy};
use crate::config::{GroupL7, GroupProtocol, ProtocolVersion, TargetGroup};

/// The body type every request and response of the proxy carries.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;
/// Errors of bodies, whatever their source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long connecting to a target (TCP, then TLS) may take before the request fails with 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections to targets are not reused after this long (below the 60 s
/// keep-alive timeouts common targets use, so the proxy never sends on one the target is
/// closing), and are closed when their target's list is next used.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per target and worker.
const POOL_MAX_IDLE_PER_TARGET: usize = 512;
/// Sends of a request on pooled connections the target had closed before it is sent on a
/// new one.
const STALE_RETRIES: usize = 3;

/// A group's client and what it was built from (rebuilt only when that changes).
pub struct TargetClient {
    /// One per proxy worker (`workers`): each worker's requests use its own connections.
    pools: Box<[Arc<Mutex<Pool>>]>,
    /// TLS towards the targets (`https` groups), with the name to ask for.
    tls: Option<(tokio_rustls::TlsConnector, Option<ServerName<'static>>)>,
    /// `http` or `https`: the scheme of the URIs HTTP/2 requests carry.
    pub scheme: Scheme,
    built_from: (GroupProtocol, GroupL7),
}

/// One worker's connections to one group's targets.
#[derive(Default)]
struct Pool {
    /// HTTP/1.1 through hyper (requests with a body, upgrades): idle connections per target.
    idle: ConfigMap<SocketAddr, IdleList<http1::SendRequest<ProxyBody>>>,
    /// HTTP/2: the connection per target every request is a stream of.
    shared: ConfigMap<SocketAddr, http2::SendRequest<ProxyBody>>,
    /// HTTP/1.1 of the lean exchange (requests without a body): idle connections per target.
    lean: ConfigMap<SocketAddr, IdleList<lean_h1::LeanConn>>,
}

/// Idle connections to one target, the most recently used last.
struct IdleList<C>(VecDeque<(C, Instant)>);

impl<C> Default for IdleList<C> {
    fn default() -> Self {
        Self(VecDeque::new())
    }
}

impl<C> IdleList<C> {
    /// The most recently used connection that is `usable`; the unusable ones met on the way
    /// are dropped (closed).
    fn take(&mut self, usable: impl Fn(&C) -> bool) -> Option<C> {
        while let Some((conn, since)) = self.0.pop_back() {
            if since.elapsed() >= POOL_IDLE_TIMEOUT {
                // The newest is too old: so are the rest.
                self.0.clear();
                return None;
            }
            if usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Puts back a connection ready for the next request (closing the expired ones).
    fn put(&mut self, conn: C) {
        while self
            .0
            .front()
            .is_some_and(|(_, since)| since.elapsed() >= POOL_IDLE_TIMEOUT)
        {
            self.0.pop_front();
        }
        if self.0.len() < POOL_MAX_IDLE_PER_TARGET {
            self.0.push_back((conn, Instant::now()));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Pool {
    /// An idle HTTP/1.1 connection to `target` ready for a request, if there is one.
    fn checkout(&mut self, target: SocketAddr) -> Option<http1::SendRequest<ProxyBody>> {
        self.idle
            .get_mut(&target)?
            .take(http1::SendRequest::is_ready)
    }

    /// Puts back a connection ready for the next request.
    fn put(&mut self, target: SocketAddr, sender: http1::SendRequest<ProxyBody>) {
        self.idle.entry(target).or_default().put(sender);
    }

    /// An idle connection of the lean exchange to `target`, still open, if there is one.
    fn checkout_lean(&mut self, target: SocketAddr) -> Option<lean_h1::LeanConn> {
        self.lean
            .get_mut(&target)?
            .take(lean_h1::LeanConn::idle_and_open)
    }

    /// Puts back a lean connection whose response has ended.
    fn put_lean(&mut self, target: SocketAddr, conn: lean_h1::LeanConn) {
        self.lean.entry(target).or_default().put(conn);
    }
}

impl TargetClient {
    /// The client for `group` with its L7 `settings` (`TargetGroup::l7`), with a pool per
    /// worker.
    pub fn new(group: &TargetGroup, settings: GroupL7, workers: usize) -> Result<Self, String> {
        let tls = match group.protocol {
            GroupProtocol::Https => {
                let name = match &settings.tls_server_name {
                    Some(name) => Some(
                        ServerName::try_from(name.clone())
                            .map_err(|e| format!("tls_server_name `{name}`: {e}"))?,
                    ),
                    None => None,
                };
                let config = client_tls(&settings)?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
            _ => None,
        };
        Ok(Self {
            pools: (0..workers.max(1)).map(|_| Arc::default()).collect(),
            tls,
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

    /// Sends `request` to `target` on a connection of the calling worker's pool (a new one
    /// when none is idle), and gives the response. An HTTP/1.1 request's URI is sent as it is
    /// (origin-form); an HTTP/2 one needs scheme and authority.
    ///
    /// Not an `async fn`: its future would hold the request and every path's future whole.
    /// A lean request is encoded here, and its future holds only the encoded head; hyper's
    /// paths (large futures) are boxed.
    pub fn send(
        &self,
        target: SocketAddr,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, BoxError>> + Send + '_ {
        let pool = &self.pools[super::workers::current() % self.pools.len()];
        let version = self.version();
        if version == ProtocolVersion::Http1 && lean_h1::suits(&request) {
            let head = lean_h1::encode_head(&request);
            let method = request.method().clone();
            return Either::Left(self.send_lean(pool, target, head, method));
        }
        let other: Pin<Box<dyn Future<Output = _> + Send + '_>> = match version {
            ProtocolVersion::Http1 => Box::pin(self.send_http1(pool, target, request)),
            ProtocolVersion::Http2 | ProtocolVersion::Grpc => {
                Box::pin(self.send_http2(pool, target, request))
            }
        };
        Either::Right(other)
    }

    /// A request the lean exchange does not serve (a body, an upgrade), over hyper.
    async fn send_http1(
        &self,
        pool: &Arc<Mutex<Pool>>,
        target: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        for _ in 0..STALE_RETRIES {
            let Some(mut sender) = lock(pool).checkout(target) else {
                break;
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(pooled_response(response, sender, pool, target)),
                Err(mut e) => match e.take_message() {
                    // Closed by the target before the request went: another connection.
                    Some(unsent) => request = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = self.connect_http1(target).await?;
        let response = sender.send_request(request).await?;
        Ok(pooled_response(response, sender, pool, target))
    }

    /// A request without a body, the lean way (`lean_h1`). A pooled connection the target
    /// closed under the request (nothing came back) is given up for another, if the method is
    /// idempotent (RFC 9110 §9.2.2: sending it again is safe).
    async fn send_lean(
        &self,
        pool: &Arc<Mutex<Pool>>,
        target: SocketAddr,
        head: Vec<u8>,
        method: Method,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let idempotent = method.is_idempotent();
        for _ in 0..STALE_RETRIES {
            let Some(conn) = lock(pool).checkout_lean(target) else {
                break;
            };
            match lean_h1::exchange(conn, &head, &method, pool, target).await {
                Ok(response) => return Ok(response),
                Err(e) if e.before_response && idempotent => {}
                Err(e) => return Err(e.error),
            }
        }
        let conn = lean_h1::LeanConn::new(self.connect_boxed(target).await?);
        lean_h1::exchange(conn, &head, &method, pool, target)
            .await
            .map_err(|e| e.error)
    }

    async fn send_http2(
        &self,
        pool: &Arc<Mutex<Pool>>,
        target: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let open = lock(pool)
            .shared
            .get(&target)
            .filter(|sender| !sender.is_closed())
            .cloned();
        if let Some(mut sender) = open {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response.map(box_incoming)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = self.connect_http2(target).await?;
        lock(pool).shared.insert(target, sender.clone());
        let response = sender.send_request(request).await?;
        Ok(response.map(box_incoming))
    }

    async fn connect_http1(
        &self,
        target: SocketAddr,
    ) -> Result<http1::SendRequest<ProxyBody>, BoxError> {
        let io = self.connect(target).await?;
        let (sender, connection) = http1::Builder::new()
            // Head and small body in one buffer, one `write` (not a `writev`).
            .writev(false)
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "connection to a target ended");
            }
        });
        Ok(sender)
    }

    async fn connect_http2(
        &self,
        target: SocketAddr,
    ) -> Result<http2::SendRequest<ProxyBody>, BoxError> {
        let io = self.connect(target).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection to a target ended");
            }
        });
        Ok(sender)
    }

    /// `connect`'s future, boxed: it is large and rarely needed, and inline it would be moved
    /// with every request's. (Boxed here, not at the call: a temporary of an `.await`
    /// expression stays in the caller's future.)
    fn connect_boxed(&self, target: SocketAddr) -> Connecting<'_> {
        Box::pin(self.connect(target))
    }

    /// A connection to `target`: TCP, then TLS for an `https` group.
    async fn connect(&self, target: SocketAddr) -> Result<Box<dyn TargetIo>, BoxError> {
        let tcp = BatchedTcp::new(connect_tcp(target).await?);
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(connect_tls(tls, target, tcp).await?),
        })
    }
}

/// A connection to a target being made.
type Connecting<'a> =
    Pin<Box<dyn Future<Output = Result<Box<dyn TargetIo>, BoxError>> + Send + 'a>>;

/// A connection to a target, plain or TLS.
trait TargetIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {
    /// Its TCP connection (readiness, for the pool).
    fn tcp(&self) -> &TcpStream;
}

impl TargetIo for BatchedTcp {
    fn tcp(&self) -> &TcpStream {
        BatchedTcp::tcp(self)
    }
}

impl TargetIo for tokio_rustls::client::TlsStream<BatchedTcp> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    // A panic while holding it leaves only connections behind: still usable.
    pool.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn connect_tcp(target: SocketAddr) -> Result<TcpStream, BoxError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| format!("connecting to {target} timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn connect_tls(
    (connector, name): &(tokio_rustls::TlsConnector, Option<ServerName<'static>>),
    target: SocketAddr,
    tcp: BatchedTcp,
) -> Result<tokio_rustls::client::TlsStream<BatchedTcp>, BoxError> {
    // Without a configured name, the target's address (no SNI is sent for it).
    let name = name
        .clone()
        .unwrap_or_else(|| ServerName::from(target.ip()));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| format!("TLS handshake with {target} timed out"))??;
    Ok(stream)
}

fn box_incoming(body: Incoming) -> ProxyBody {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// The response with a body that gives the connection back to `pool` when it ends (not a
/// switched protocol's: that connection is the tunnel's now).
fn pooled_response(
    response: Response<Incoming>,
    sender: http1::SendRequest<ProxyBody>,
    pool: &Arc<Mutex<Pool>>,
    target: SocketAddr,
) -> Response<ProxyBody> {
    if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
        return response.map(box_incoming);
    }
    let pool = pool.clone();
    response.map(|inner| {
        PooledBody {
            inner,
            release: Some((sender, pool, target)),
        }
        .boxed()
    })
}

/// A target's HTTP/1.1 response body holding its connection until it ends.
struct PooledBody {
    inner: Incoming,
    release: Option<(http1::SendRequest<ProxyBody>, Arc<Mutex<Pool>>, SocketAddr)>,
}

impl PooledBody {
    /// The body has ended: the connection can carry the next request.
    fn release(&mut self) {
        let Some((mut sender, pool, target)) = self.release.take() else {
            return;
        };
        if sender.is_ready() {
            lock(&pool).put(target, sender);
        } else if !sender.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // hyper has not yet seen the exchange end (or is still sending the request's
            // body): the connection is put back once it has.
            runtime.spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(POOL_IDLE_TIMEOUT, sender.ready()).await {
                    lock(&pool).put(target, sender);
                }
            });
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                self.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken response: its connection is not reused.
                self.release = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Dropped at its end (an empty body may never be polled): reusable. Dropped
        // unread: the rest of it is still on the connection, which hyper closes.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

/// The TLS config towards a group's targets: verification by CA file or none, ALPN by the
/// group's protocol version.
fn client_tls(settings: &GroupL7) -> Result<ClientConfig, String> {
    let provider = Arc::new(SecurityPolicy::default_policy().crypto_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match &settings.ca_file {
        Some(ca) => builder
            .with_root_certificates(root_store(ca)?)
            .with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = match settings.protocol_version {
        ProtocolVersion::Http1 => vec![b"http/1.1".to_vec()],
        ProtocolVersion::Http2 | ProtocolVersion::Grpc => vec![b"h2".to_vec()],
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
