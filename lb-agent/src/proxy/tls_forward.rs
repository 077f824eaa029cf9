//! A `tls` listener's connection: TLS ends at the proxy and the decrypted bytes go to a
//! target of the listener's tcp group over plain TCP, both ways, until either side closes
//! (AWS NLB's TLS listener). One access-log line per connection.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{Shared, access_log::AccessRecord, forward::ConnInfo, plan::ListenerPlan};

/// How long connecting to a target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwards the decrypted `client` stream to a target.
pub async fn forward<IO>(
    mut client: IO,
    conn: ConnInfo,
    listener: Arc<ListenerPlan>,
    shared: Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let time = SystemTime::now();
    let started = Instant::now();
    let plan = shared.plan.load_full();
    let group = listener
        .tcp_group
        .as_ref()
        .and_then(|name| plan.groups.get(name))
        .cloned();
    let target = group.as_ref().and_then(|g| g.targets.pick());
    let mut error = None;
    let mut bytes = (0, 0);
    let mut connected_after = None;
    match target {
        None => error = Some("no_target_in_service"),
        Some(target) => {
            let _outstanding = target.load.start();
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.address)).await {
                Ok(Ok(mut upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    connected_after = Some(started.elapsed());
                    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        Ok(moved) => bytes = moved,
                        Err(e) => {
                            tracing::debug!(target = %target.address, error = %e, "tls listener connection ended with an error")
                        }
                    }
                }
                Ok(Err(_)) => error = Some("target_failed"),
                Err(_) => error = Some("target_timeout"),
            }
        }
    }
    let Some(log) = shared.access_log.load_full() else {
        return;
    };
    let tls = conn.tls.as_ref();
    log.record(AccessRecord {
        time,
        client: conn.client,
        listener: listener.name.clone(),
        rule: None,
        target_group: group.as_ref().map(|g| g.name.clone()),
        target: target.map(|t| t.address),
        method: None,
        host: None,
        uri: None,
        version: "TCP",
        status: 0,
        bytes_in: bytes.0,
        bytes_out: bytes.1,
        request_duration: connected_after.unwrap_or_default(),
        target_duration: None,
        response_duration: started.elapsed(),
        tls_version: tls.map(|t| t.version),
        tls_cipher: tls.map(|t| t.cipher),
        sni: tls.and_then(|t| t.sni.clone()),
        request_id: None,
        user_agent: None,
        error,
    });
}
