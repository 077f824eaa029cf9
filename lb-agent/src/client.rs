//! The CLI's side of the control protocol: sends a `Request` to a running agent over HTTP on
//! its control socket (hyper's client on a unix stream) and reads back the typed `Answer`.

use std::{path::PathBuf, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::protocol::{Answer, ApiError, Request};

/// How long one exchange may take (a reload of a large config included).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens on the socket.
    #[error("cannot reach the agent at {path} (is `lb-agent run` running? see --socket)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke, or the exchange took too long.
    #[error("talking to the agent: {0}")]
    Io(String),
    /// The answer was not what the protocol says.
    #[error("the agent's answer is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The agent refused the request (nothing changed) or failed it.
    #[error("{0}")]
    Refused(ApiError),
}

/// A client of one agent's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// Sends `request` and waits for its answer.
    pub fn call(&self, request: &Request) -> Result<Answer, ClientError> {
        let http = request.to_http()?;
        let body = self.exchange(http.method, &http.path_and_query, http.body)?;
        Ok(Answer::decode(request, &body)?)
    }

    /// `GET path` (e.g. `/metrics`); the body as text.
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let body = self.exchange("GET", path, Vec::new())?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// One HTTP/1.1 exchange: the body of a 2xx answer, else the agent's error.
    fn exchange(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Io(e.to_string()))?;
        runtime.block_on(async {
            tokio::time::timeout(TIMEOUT, self.exchange_async(method, path, body))
                .await
                .map_err(|_| ClientError::Io(format!("no answer within {TIMEOUT:?}")))?
        })
    }

    async fn exchange_async(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let io_error = |e: hyper::Error| ClientError::Io(e.to_string());
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(io_error)?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "lb-agent")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(io_error)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io_error)?
            .to_bytes()
            .to_vec();
        driver.abort();
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(ClientError::Refused(ApiError::from_answer(status, &body)))
        }
    }
}
