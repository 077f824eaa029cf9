//! A websocket client for the lab tests: the HTTP/1.1 Upgrade handshake and text messages
//! echoed back, over any blocking stream (a plain socket, or `TlsClient`).

use std::io::{Read, Write};

use base64::Engine as _;

use crate::websocket::{self, opcode};

/// Upgrades `stream` with `GET /ws` for `host`, sends each of `messages` as a masked text
/// frame and reads one frame back for each; the texts that came back. Panics, saying what
/// went wrong, on a refused upgrade or a broken frame.
pub fn echo<S: Read + Write>(stream: &mut S, host: &str, messages: &[&str]) -> Vec<String> {
    let key = base64::engine::general_purpose::STANDARD.encode(*b"lab websocket 16");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .expect("send the upgrade");
    stream.flush().expect("flush");
    let head = read_head(stream);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "the upgrade was refused:\n{head}"
    );
    let accept = format!(
        "sec-websocket-accept: {}",
        websocket::accept_key(&key).to_ascii_lowercase()
    );
    assert!(
        head.to_ascii_lowercase().contains(&accept),
        "wrong or no Sec-WebSocket-Accept:\n{head}"
    );
    let mut buf = Vec::new();
    let mut echoed = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let mask = [0x5a, i as u8, 0xc3, 0x1e];
        stream
            .write_all(&websocket::encode(
                opcode::TEXT,
                message.as_bytes(),
                Some(mask),
            ))
            .expect("send a frame");
        stream.flush().expect("flush");
        let frame = read_frame(stream, &mut buf);
        assert_eq!(frame.opcode, opcode::TEXT, "{frame:?}");
        echoed.push(String::from_utf8_lossy(&frame.payload).into_owned());
    }
    let _ = stream.write_all(&websocket::encode(opcode::CLOSE, &[], Some([1, 2, 3, 4])));
    echoed
}

/// The response head, read a byte at a time: nothing of the frames after it is consumed.
fn read_head<S: Read>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "no end of the response head");
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the connection ended in the response head ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn read_frame<S: Read>(stream: &mut S, buf: &mut Vec<u8>) -> websocket::Frame {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((frame, used)) = websocket::decode(buf).expect("a valid frame") {
            buf.drain(..used);
            return frame;
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!("the connection closed before the echo"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading the echo: {e}"),
        }
    }
}
