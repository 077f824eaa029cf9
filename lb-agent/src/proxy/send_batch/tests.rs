//! Batched sends on a real worker, over loopback TCP.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    time::timeout,
};

use super::*;
use crate::proxy::workers::Workers;

/// Every wait in these tests ends within this.
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs `test` on a worker of its own and gives what it gives.
fn on_a_worker<T: Send + 'static>(test: impl Future<Output = T> + Send + 'static) -> T {
    let workers = Workers::start(1).expect("workers");
    let (sent, received) = mpsc::channel();
    let mut test = Some(test);
    workers.spawn_on_each(move |_| {
        let test = test.take();
        let sent = sent.clone();
        async move {
            if let Some(test) = test {
                let _ = sent.send(test.await);
            }
        }
    });
    received
        .recv_timeout(DEADLINE)
        .expect("the test ends in time")
}

/// A connected pair on loopback: the batched end, and its peer.
async fn pair() -> (BatchedTcp, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (connected, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    let (accepted, _) = accepted.expect("accept");
    (BatchedTcp::new(connected.expect("connect")), accepted)
}

#[test]
fn the_writes_of_one_turn_leave_in_one_call_and_each_arrives() {
    let totals_before = totals();
    let (batched, calls_and_sends, received) = on_a_worker(async {
        let mut pairs = Vec::new();
        for _ in 0..8 {
            pairs.push(pair().await);
        }
        let batched = pairs.iter().all(|(b, _)| b.outbox.is_some());
        let before = stats();
        // A batched write is taken at once: all eight are written within this turn.
        for (i, (conn, _)) in pairs.iter_mut().enumerate() {
            conn.write_all(format!("message {i}\n").as_bytes())
                .await
                .expect("write");
            conn.flush().await.expect("flush");
        }
        let mut received = Vec::new();
        for (_, peer) in &mut pairs {
            let mut line = vec![0u8; 10];
            timeout(DEADLINE, peer.read_exact(&mut line))
                .await
                .expect("in time")
                .expect("read");
            received.push(String::from_utf8_lossy(&line).into_owned());
        }
        let after = stats();
        (batched, (after.0 - before.0, after.1 - before.1), received)
    });
    assert!(batched, "connections made on a worker are batched");
    assert_eq!(calls_and_sends, (1, 8), "one call carried the eight sends");
    // Other tests add to the process's totals meanwhile, never take from them.
    let totals = totals();
    assert!(
        totals.calls > totals_before.calls && totals.sends >= totals_before.sends + 8,
        "/metrics counts them: {totals_before:?} then {totals:?}"
    );
    let expected: Vec<String> = (0..8).map(|i| format!("message {i}\n")).collect();
    assert_eq!(received, expected);
}

#[test]
fn what_a_full_socket_cannot_take_the_connection_sends_itself_without_holding_up_its_worker() {
    const SIZE: usize = 8 << 20;
    let short_before = totals().short;
    let (intact, ticks) = on_a_worker(async {
        let (mut conn, mut peer) = pair().await;
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        // In small writes, as a stream of small messages: they go through the outbox.
        let writer = tokio::spawn(async move {
            for chunk in data.chunks(1000) {
                conn.write_all(chunk).await?;
            }
            conn.shutdown().await
        });
        // The peer reads nothing for a while: the socket fills, and the worker keeps running
        // its other tasks (this one's ticks).
        let ticks = Arc::new(AtomicU32::new(0));
        let counted = ticks.clone();
        let ticker = tokio::spawn(async move {
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        let _ = ticker.await;
        let mut received = Vec::new();
        timeout(DEADLINE, peer.read_to_end(&mut received))
            .await
            .expect("in time")
            .expect("read");
        timeout(DEADLINE, writer)
            .await
            .expect("in time")
            .expect("writer")
            .expect("written");
        (received == expected, ticks.load(Ordering::Relaxed))
    });
    assert!(intact, "every byte arrives, in order");
    assert_eq!(
        ticks, 200,
        "the worker ran its other task while the socket was full"
    );
    assert!(
        totals().short > short_before,
        "/metrics counts the sends the full socket cut short"
    );
}

#[test]
fn bytes_written_just_before_the_connection_is_dropped_still_arrive() {
    let received = on_a_worker(async {
        let (mut conn, mut peer) = pair().await;
        conn.write_all(b"last words").await.expect("write");
        drop(conn);
        let mut received = Vec::new();
        timeout(DEADLINE, peer.read_to_end(&mut received))
            .await
            .expect("in time")
            .expect("read");
        received
    });
    assert_eq!(received, b"last words");
}

#[test]
fn writes_to_a_peer_that_reset_the_connection_fail() {
    let failed = on_a_worker(async {
        let (mut conn, peer) = pair().await;
        // Closed with unread bytes... none here: a zero linger makes the close a reset.
        let peer = peer.into_std().expect("std");
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(peer);
        for _ in 0..100 {
            if conn.write_all(b"anyone there?").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    });
    assert!(failed, "a write after the reset fails");
}

#[test]
fn a_message_that_meets_a_full_socket_leaves_when_there_is_room_though_only_a_read_waits() {
    let answer = on_a_worker(async {
        let (mut conn, mut peer) = pair().await;
        // The socket is filled past this side (nothing batched yet).
        let mut filled = 0usize;
        loop {
            match conn.tcp().try_write(&[7u8; 65536]) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        // The peer reads all after a while, and answers once the message is in.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut received = vec![0u8; filled + 7];
            peer.read_exact(&mut received).await?;
            let intact =
                received[..filled].iter().all(|&b| b == 7) && received.ends_with(b"the end");
            peer.write_all(if intact { b"ok" } else { b"no" }).await?;
            Ok::<_, io::Error>(peer)
        });
        // Taken at once, flushed at once (as far as the writer knows); then the writer only
        // reads, as a connection waiting for its next request does.
        conn.write_all(b"the end").await.expect("write");
        conn.flush().await.expect("flush");
        let mut answer = [0u8; 2];
        timeout(DEADLINE, conn.read_exact(&mut answer))
            .await
            .expect("the message left in time")
            .expect("read");
        let _peer = reader.await;
        answer
    });
    assert_eq!(&answer, b"ok");
}
