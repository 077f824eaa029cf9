//! The guard over in-memory byte streams: verdicts per head, however the bytes are split.

use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::stream::RequestStream;
use super::{Framing, FramingGuard, FramingVerdicts};

const MAX_HEAD: usize = 8 * 1024;

const CL_AND_TE: &str = "content-length and transfer-encoding";
const UNPARSABLE: &str = "unparsable request";
const NOT_SEEN: &str = "request not seen by the framing guard";

/// The first `count` verdicts after the stream reads `reads` one after another.
fn verdicts_after(reads: &[&[u8]], count: usize) -> Vec<Framing> {
    let verdicts = Arc::new(FramingVerdicts::new());
    let mut stream = RequestStream::new(MAX_HEAD, Arc::clone(&verdicts));
    for read in reads {
        stream.scan(read);
    }
    (0..count).map(|_| verdicts.next()).collect()
}

/// The first `count` verdicts of `bytes` read whole.
fn verdicts_of(bytes: &[u8], count: usize) -> Vec<Framing> {
    verdicts_after(&[bytes], count)
}

fn ambiguous(reason: &'static str) -> Framing {
    Framing::Ambiguous(reason)
}

#[test]
fn content_length_with_transfer_encoding_is_ambiguous_in_either_order() {
    let cl_first = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let te_first = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    assert_eq!(verdicts_of(cl_first, 1), [ambiguous(CL_AND_TE)]);
    assert_eq!(verdicts_of(te_first, 1), [ambiguous(CL_AND_TE)]);
}

#[test]
fn duplicate_identical_content_length_is_ambiguous() {
    let head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc";
    assert_eq!(
        verdicts_of(head, 1),
        [ambiguous("duplicate content-length")]
    );
}

#[test]
fn duplicate_different_content_length_is_ambiguous() {
    let head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    assert_eq!(
        verdicts_of(head, 1),
        [ambiguous("conflicting content-length")]
    );
}

#[test]
fn content_length_that_is_not_a_plain_number_is_ambiguous() {
    for value in ["+5", "-1", "5, 5", "0x5", "", "5 5", "99999999999999999999"] {
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
        assert_eq!(
            verdicts_of(head.as_bytes(), 1),
            [ambiguous("invalid content-length")],
            "{value:?}"
        );
    }
}

#[test]
fn transfer_encoding_that_does_not_end_in_one_chunked_is_ambiguous() {
    let cases = [
        (
            "Transfer-Encoding: gzip\r\n",
            "transfer-encoding not chunked",
        ),
        (
            "Transfer-Encoding: chunked, gzip\r\n",
            "transfer-encoding not chunked",
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
            "transfer-encoding not chunked",
        ),
        (
            "Transfer-Encoding: chunked,\r\n",
            "transfer-encoding not chunked",
        ),
        (
            "Transfer-Encoding: xchunked\r\n",
            "transfer-encoding not chunked",
        ),
        (
            "Transfer-Encoding: chunked, chunked\r\n",
            "chunked more than once",
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "chunked more than once",
        ),
    ];
    for (headers, reason) in cases {
        let head = format!("POST / HTTP/1.1\r\n{headers}\r\n0\r\n\r\n");
        assert_eq!(
            verdicts_of(head.as_bytes(), 1),
            [ambiguous(reason)],
            "{headers:?}"
        );
    }
}

#[test]
fn transfer_encoding_in_http10_is_ambiguous() {
    let head = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(
        verdicts_of(head, 1),
        [ambiguous("transfer-encoding in http/1.0")]
    );
}

#[test]
fn framing_header_with_underscores_is_ambiguous() {
    for name in ["Transfer_Encoding", "content_length", "Content_Length"] {
        let head = format!("POST / HTTP/1.1\r\n{name}: 5\r\n\r\n");
        assert_eq!(
            verdicts_of(head.as_bytes(), 1),
            [ambiguous("look-alike framing header")],
            "{name}"
        );
    }
}

#[test]
fn obs_fold_is_unparsable() {
    let head = b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n";
    assert_eq!(verdicts_of(head, 1), [ambiguous(UNPARSABLE)]);
}

#[test]
fn gzip_then_chunked_is_ok() {
    let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(verdicts_of(head, 1), [Framing::Ok]);
}

/// Two good requests, one with a Content-Length body holding what looks like an ambiguous head,
/// one chunked with an extension and trailers, then a CL+TE one, then a good one.
const PIPELINE: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 66\r\n\r\n\
GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=value\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n\
POST /c HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\n\r\n";

#[test]
fn pipelined_requests_get_their_own_verdicts_and_bodies_are_not_heads() {
    assert_eq!(
        verdicts_of(PIPELINE, 3),
        [Framing::Ok, Framing::Ok, ambiguous(CL_AND_TE)]
    );
}

#[test]
fn verdicts_do_not_depend_on_where_reads_split_the_stream() {
    let whole = verdicts_of(PIPELINE, 4);
    for split in 0..=PIPELINE.len() {
        let (first, second) = PIPELINE.split_at(split);
        assert_eq!(
            verdicts_after(&[first, second], 4),
            whole,
            "split at {split}"
        );
    }
    let bytes: Vec<&[u8]> = PIPELINE.chunks(1).collect();
    assert_eq!(verdicts_after(&bytes, 4), whole, "one byte per read");
}

#[test]
fn good_requests_split_anywhere_stay_ok() {
    let good = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\nContent-Length: 2\n\nhiPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
    for split in 0..=good.len() {
        let (first, second) = good.split_at(split);
        assert_eq!(
            verdicts_after(&[first, second], 4),
            [Framing::Ok, Framing::Ok, Framing::Ok, ambiguous(NOT_SEEN)],
            "split at {split}"
        );
    }
}

#[test]
fn empty_lines_between_requests_are_skipped() {
    let stream = b"GET / HTTP/1.1\r\n\r\n\r\n\n\r\nGET / HTTP/1.1\r\n\r\n";
    assert_eq!(verdicts_of(stream, 2), [Framing::Ok, Framing::Ok]);
    let bare_cr = b"GET / HTTP/1.1\r\n\r\n\rGET / HTTP/1.1\r\n\r\n";
    assert_eq!(
        verdicts_of(bare_cr, 2),
        [Framing::Ok, ambiguous(UNPARSABLE)]
    );
}

#[test]
fn bad_chunk_size_makes_the_next_request_unparsable() {
    for body in [
        "zz\r\n",
        "5\r\nhello\r\n-1\r\n",
        "5\nhello",
        "5\r\nhelloXY",
        "1;a\nb",
    ] {
        let stream = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"
        );
        assert_eq!(
            verdicts_of(stream.as_bytes(), 2),
            [Framing::Ok, ambiguous(UNPARSABLE)],
            "{body:?}"
        );
    }
    let overflow = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n";
    assert_eq!(
        verdicts_of(overflow, 2),
        [Framing::Ok, ambiguous(UNPARSABLE)]
    );
}

#[test]
fn garbage_where_a_head_starts_is_unparsable() {
    assert_eq!(
        verdicts_of(b"\x16\x03\x01\x02\x00\x01\r\n\r\n", 1),
        [ambiguous(UNPARSABLE)]
    );
}

#[test]
fn many_headers_are_parsed_beyond_the_stack_slots() {
    let mut head = String::from("GET / HTTP/1.1\r\n");
    for n in 0..200 {
        head.push_str(&format!("X-{n}: v\r\n"));
    }
    head.push_str("Content-Length: 1\r\n\r\nxGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n");
    assert_eq!(
        verdicts_of(head.as_bytes(), 2),
        [Framing::Ok, ambiguous("duplicate content-length")]
    );
}

#[test]
fn tunnel_bytes_after_an_upgrade_do_not_change_its_verdict() {
    let upgrade =
        b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    let verdicts = Arc::new(FramingVerdicts::new());
    let mut stream = RequestStream::new(MAX_HEAD, Arc::clone(&verdicts));
    stream.scan(upgrade);
    stream.scan(frame);
    assert_eq!(verdicts.next(), Framing::Ok);
    // The frame is no request line: the guard stops looking at the tunnel's bytes.
    assert!(!stream.following());

    let connect = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01\x00\xa5\x01";
    assert_eq!(verdicts_of(connect, 1), [Framing::Ok]);
}

#[test]
fn a_request_after_a_refused_upgrade_is_still_judged() {
    let stream = b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(verdicts_of(stream, 2), [Framing::Ok, ambiguous(CL_AND_TE)]);
}

#[test]
fn h2_preface_stops_following_and_every_request_is_ok() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
    for split in 0..=preface.len() {
        let (first, second) = preface.split_at(split);
        let verdicts = Arc::new(FramingVerdicts::new());
        let mut stream = RequestStream::new(MAX_HEAD, Arc::clone(&verdicts));
        stream.scan(first);
        stream.scan(second);
        assert!(!stream.following(), "split at {split}");
        for _ in 0..5 {
            assert_eq!(verdicts.next(), Framing::Ok, "split at {split}");
        }
    }
}

#[test]
fn h2_preface_after_a_request_is_unparsable() {
    let stream = b"GET / HTTP/1.1\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_eq!(verdicts_of(stream, 2), [Framing::Ok, ambiguous(UNPARSABLE)]);
}

#[test]
fn head_longer_than_the_limit_is_refused_with_bounded_memory() {
    let verdicts = Arc::new(FramingVerdicts::new());
    let mut stream = RequestStream::new(MAX_HEAD, Arc::clone(&verdicts));
    stream.scan(b"GET / HTTP/1.1\r\nX-Long: ");
    let filler = [b'a'; 1000];
    for _ in 0..100 {
        stream.scan(&filler);
        assert!(stream.held_head_bytes() <= 2 * (MAX_HEAD + 1));
    }
    assert!(!stream.following());
    assert_eq!(verdicts.next(), ambiguous("request head too large"));

    let whole = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(
        verdicts_of(whole.as_bytes(), 1),
        [ambiguous("request head too large")]
    );
}

#[test]
fn head_of_exactly_the_limit_is_ok_however_split() {
    let prefix = "GET / HTTP/1.1\r\nX-Fill: ";
    let fill = MAX_HEAD - prefix.len() - "\r\n\r\n".len();
    let head = format!("{prefix}{}\r\n\r\n", "b".repeat(fill));
    assert_eq!(head.len(), MAX_HEAD);
    for split in [0, 1, 100, MAX_HEAD - 3, MAX_HEAD - 1, MAX_HEAD] {
        let (first, second) = head.as_bytes().split_at(split);
        assert_eq!(
            verdicts_after(&[first, second], 1),
            [Framing::Ok],
            "split at {split}"
        );
    }
    let over = format!("{prefix}{}\r\n\r\n", "b".repeat(fill + 1));
    let (first, second) = over.as_bytes().split_at(100);
    assert_eq!(
        verdicts_after(&[first, second], 1),
        [ambiguous("request head too large")]
    );
}

#[test]
fn a_verdict_asked_for_before_its_head_is_a_refusal() {
    assert_eq!(
        verdicts_of(b"GET / HTTP/1.1\r\nHost:", 1),
        [ambiguous(NOT_SEEN)]
    );
}

/// Everything `guard` hands on, read `size` bytes at a time.
async fn read_through(mut guard: FramingGuard<&[u8]>, size: usize) -> Vec<u8> {
    let mut read = Vec::new();
    let mut buf = vec![0u8; size];
    loop {
        let n = guard.read(&mut buf).await.expect("reading a slice");
        if n == 0 {
            return read;
        }
        read.extend_from_slice(&buf[..n]);
    }
}

/// Good requests only: the first three of `PIPELINE`.
fn good_part() -> &'static [u8] {
    &PIPELINE[..find(PIPELINE, b"POST /c")]
}

fn find(bytes: &[u8], what: &[u8]) -> usize {
    bytes
        .windows(what.len())
        .position(|window| window == what)
        .expect("the pattern is there")
}

#[tokio::test]
async fn good_heads_read_whole_pass_unchanged_in_place() {
    let guard = FramingGuard::new(good_part(), MAX_HEAD);
    assert_eq!(read_through(guard, 64 * 1024).await, good_part());
}

#[tokio::test]
async fn a_head_split_across_reads_reaches_hyper_whole_after_an_empty_line() {
    // With 7-byte reads every head is split: hyper gets an empty line while it is held, then
    // the whole head once judged; bodies pass as they come.
    let good = good_part();
    let b = find(good, b"POST /b");
    let mut expected = b"\n".to_vec();
    expected.extend_from_slice(&good[..b]);
    expected.push(b'\n');
    expected.extend_from_slice(&good[b..]);
    let guard = FramingGuard::new(good, MAX_HEAD);
    assert_eq!(read_through(guard, 7).await, expected);
}

#[tokio::test]
async fn nothing_from_a_refused_head_on_reaches_hyper() {
    for size in [7, 64 * 1024] {
        let guard = FramingGuard::new(PIPELINE, MAX_HEAD);
        let verdicts = guard.verdicts();
        let read = read_through(guard, size).await;
        let c = find(PIPELINE, b"POST /c");
        // The good requests (with their empty lines when split), then one empty line.
        let (marker, before) = read.split_last().expect("bytes were handed on");
        assert_eq!(*marker, b'\n', "{size}");
        assert!(before.ends_with(&PIPELINE[c - 20..c]), "{size}");
        assert!(
            read.len() <= c + 3,
            "{size}: {}",
            String::from_utf8_lossy(&read)
        );
        let got: Vec<Framing> = (0..3).map(|_| verdicts.next()).collect();
        assert_eq!(got, [Framing::Ok, Framing::Ok, ambiguous(CL_AND_TE)]);
        assert_eq!(verdicts.withheld_refusal(), Some(CL_AND_TE));
    }
}

#[tokio::test]
async fn after_an_upgrade_head_every_byte_passes_and_the_verdicts_refuse() {
    let stream = b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let guard = FramingGuard::new(&stream[..], MAX_HEAD);
    let verdicts = guard.verdicts();
    assert_eq!(read_through(guard, 64 * 1024).await, stream);
    assert_eq!(verdicts.withheld_refusal(), None);
    let got: Vec<Framing> = (0..2).map(|_| verdicts.next()).collect();
    assert_eq!(got, [Framing::Ok, ambiguous(CL_AND_TE)]);
}

#[tokio::test]
async fn a_split_h2_preface_reaches_hyper_unmarked() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
    let guard = FramingGuard::new(&preface[..], MAX_HEAD);
    assert_eq!(read_through(guard, 5).await, preface);
}

#[test]
fn an_idle_connection_holds_no_head_bytes_after_a_split_head() {
    let verdicts = Arc::new(FramingVerdicts::new());
    let mut stream = RequestStream::new(MAX_HEAD, Arc::clone(&verdicts));
    stream.scan(b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ");
    assert!(stream.held_head_bytes() > 0);
    stream.scan(b"padding\r\n\r\n");
    assert_eq!(stream.held_head_bytes(), 0);
    assert_eq!(verdicts.next(), Framing::Ok);
}

#[test]
fn the_awaited_head_is_timed_from_the_connections_start_then_from_each_heads_first_byte() {
    let verdicts = Arc::new(FramingVerdicts::new());
    let mut stream = RequestStream::new(MAX_HEAD, Arc::clone(&verdicts));
    // The first head is awaited from the start: a connection that sends nothing is timed.
    assert_eq!(verdicts.awaiting_head(), 1);
    stream.scan(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        verdicts.awaiting_head(),
        0,
        "between heads nothing is awaited"
    );
    stream.scan(b"\r\n");
    assert_eq!(verdicts.awaiting_head(), 0, "empty lines begin no head");
    stream.scan(b"GET /2 HTTP/1.1\r\nHo");
    assert_eq!(verdicts.awaiting_head(), 2);
    stream.scan(b"st: a\r\n");
    assert_eq!(verdicts.awaiting_head(), 2, "the same head, still awaited");
    // The watchdog's word: the late head is refused (the guard answers 408) and nothing more
    // is awaited.
    stream.time_out();
    assert_eq!(stream.answered(), Some(super::head::Ambiguity::HeadTimeout));
    assert_eq!(verdicts.awaiting_head(), 0);
    assert!(verdicts.ended_late());
    assert_eq!(
        verdicts.withheld_refusal(),
        Some("request head not received in time")
    );
}

#[test]
fn a_head_timeout_after_an_upgrade_head_refuses_nothing() {
    let verdicts = Arc::new(FramingVerdicts::new());
    let mut stream = RequestStream::new(MAX_HEAD, Arc::clone(&verdicts));
    stream
        .scan(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    // Past an upgrade head the bytes may be a tunnel's: the guard cannot answer there (the
    // watchdog's deadline cuts such a connection instead).
    stream.time_out();
    assert_eq!(stream.answered(), None);
    assert!(!verdicts.ended_late());
}
