//! The HTTP/2 side of a check, for groups whose targets speak HTTP/2 or gRPC: one request on
//! the probe's own connection (h2c with prior knowledge over TCP, h2 over TLS), as the proxy
//! speaks to those targets. gRPC checks follow AWS ALB's: a `POST` with `content-type:
//! application/grpc`, HTTP status 200 required, and the `grpc-status` code (a trailer, or a
//! header in a trailers-only answer) is what the matcher judges.

use http_body_util::{BodyExt as _, Full};
use hyper::{
    HeaderMap, Method, Request, Response, Uri,
    body::{Bytes, Incoming},
    client::conn::http2,
    header,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Failure;

const USER_AGENT: &str = "lb-agent-health-check";

/// An empty gRPC message: uncompressed (flag 0), length 0. Empty is a valid encoding of any
/// protobuf request, so the target's answer depends only on the method it names.
const EMPTY_GRPC_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];

/// The URI an HTTP/2 request carries (`:scheme`, `:authority`, `:path`); an error saying why
/// `host` or `path` make none.
pub(super) fn uri(scheme: &str, host: &str, path: &str) -> Result<Uri, String> {
    format!("{scheme}://{host}{path}")
        .parse()
        .map_err(|e| format!("host `{host}` and path `{path}` make no request URI: {e}"))
}

/// Sends `method` `uri` over HTTP/2 on `stream` and returns the response's status.
pub(super) async fn status<S>(stream: S, method: &str, uri: Uri) -> Result<u16, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "*/*")
        .body(Full::new(Bytes::new()))
        .map_err(|e| Failure::BadResponse(format!("building the request: {e}")))?;
    let (response, _connection) = send(stream, request).await?;
    Ok(response.status().as_u16())
}

/// Sends a gRPC call of `uri` on `stream` and returns its `grpc-status` code. An HTTP status
/// other than 200 fails as a response-code mismatch (no gRPC server answered).
pub(super) async fn grpc_status<S>(stream: S, uri: Uri) -> Result<u16, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(Bytes::from_static(EMPTY_GRPC_MESSAGE)))
        .map_err(|e| Failure::BadResponse(format!("building the request: {e}")))?;
    let (response, _connection) = send(stream, request).await?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(Failure::ResponseCodeMismatch(status));
    }
    if let Some(code) = grpc_code(response.headers())? {
        return Ok(code);
    }
    // The data is read and dropped as it comes: only the trailers matter, and the check's
    // timeout bounds how long a target may stream.
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Failure::BadResponse(format!("reading the response: {e}")))?;
        if let Ok(trailers) = frame.into_trailers()
            && let Some(code) = grpc_code(&trailers)?
        {
            return Ok(code);
        }
    }
    Err(Failure::BadResponse(
        "no grpc-status in the response's headers or trailers".into(),
    ))
}

/// The `grpc-status` in `headers`, if there is one.
fn grpc_code(headers: &HeaderMap) -> Result<Option<u16>, Failure> {
    let Some(value) = headers.get("grpc-status") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .map(Some)
        .ok_or_else(|| {
            let shown = String::from_utf8_lossy(value.as_bytes());
            Failure::BadResponse(format!("grpc-status {shown:?} is no code"))
        })
}

/// Ends a connection's task when the check is done with it or abandoned (timed out): a probe
/// owns its connection, one per check.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens HTTP/2 on `stream`, sends `request` and returns the response head with the task that
/// drives the connection (which ends when it is dropped).
async fn send<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, ConnectionTask), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| Failure::BadResponse(format!("HTTP/2 handshake: {e}")))?;
    let task = ConnectionTask(tokio::spawn(async move {
        // Its errors reach the request below, which reports them.
        let _ = connection.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::BadResponse(format!("HTTP/2 request: {e}")))?;
    Ok((response, task))
}

#[cfg(test)]
mod tests;
