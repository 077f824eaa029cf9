//! Following a client's HTTP/1.1 byte stream request by request: each head is judged, each
//! body skipped by its framing, so the next head is found where hyper will find it.
//!
//! Bytes are looked at once, as they are read, and never copied except a head that arrives
//! split across reads (bounded by the head limit). Bodies are skipped by counting.

use std::sync::Arc;

use super::head::{self, Ambiguity, BodyFraming};
use super::verdicts::FramingVerdicts;

/// What a plain-text HTTP/2 connection starts with, up to the first empty line (the rest,
/// `SM\r\n\r\n`, follows). hyper-util's auto server reads it as h2.
const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// Where in the stream the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests, skipping empty lines (`after_cr`: the last byte was the CR of one).
    BeforeHead { after_cr: bool },
    /// Inside a request head; its bytes so far are in `RequestStream::head`.
    Head,
    /// Inside a Content-Length body, with this many bytes to go.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Not following any more (not HTTP/1, or a verdict that ends the connection).
    Stopped,
}

/// Position in a chunked body: the states of hyper's chunked decoder (`proto/h1/decode.rs`),
/// minus its limits on extensions and trailers (hyper fails those bodies itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting the first hex digit of a chunk size.
    Start,
    /// In the hex digits of a chunk size.
    Size(u64),
    /// In blanks after the size.
    SizeBlank(u64),
    /// In a chunk extension (`;...`), up to the CR.
    Extension(u64),
    /// Expecting the LF that ends the size line.
    SizeLf(u64),
    /// In chunk data, with this many bytes to go.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// After the last chunk or a trailer line: a CR (end of body) or a trailer's first byte.
    EndCr,
    /// In a trailer line, up to its CR.
    Trailer,
    /// Expecting the LF that ends a trailer line.
    TrailerLf,
    /// Expecting the LF that ends the body.
    EndLf,
}

/// One connection's request stream, recording a verdict per head into the shared verdicts.
#[derive(Debug)]
pub(super) struct RequestStream {
    state: State,
    /// A head's bytes when it arrives split across reads; empty otherwise (heads that arrive
    /// whole are judged in place).
    head: Vec<u8>,
    max_head_bytes: usize,
    /// Nothing seen yet but (perhaps) the h2 preface: only the connection's first bytes can be.
    at_start: bool,
    verdicts: Arc<FramingVerdicts>,
}

impl RequestStream {
    /// A new connection's stream; heads longer than `max_head_bytes` are refused.
    pub(super) fn new(max_head_bytes: usize, verdicts: Arc<FramingVerdicts>) -> Self {
        Self {
            state: State::BeforeHead { after_cr: false },
            head: Vec::new(),
            max_head_bytes,
            at_start: true,
            verdicts,
        }
    }

    /// Whether bytes still need looking at (false once stopped: the fast path of every read).
    pub(super) fn following(&self) -> bool {
        self.state != State::Stopped
    }

    /// Bytes held for a split head (its allocation, which the head limit bounds).
    #[cfg(test)]
    pub(super) fn held_head_bytes(&self) -> usize {
        self.head.capacity()
    }

    /// Follows the stream over the next bytes read from the client.
    pub(super) fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Stopped => return,
                State::BeforeHead { after_cr } => self.skip_empty_lines(bytes, after_cr),
                State::Head => self.read_head(bytes),
                State::Length(remaining) => {
                    let skipped = skip(remaining, bytes);
                    self.state = match remaining - skipped as u64 {
                        0 => State::BeforeHead { after_cr: false },
                        left => State::Length(left),
                    };
                    &bytes[skipped..]
                }
                State::Chunked(chunk) => self.read_chunked(chunk, bytes),
            };
        }
    }

    /// Empty lines before a request line are allowed (httparse skips them, as RFC 9112 asks);
    /// a CR must be followed by LF.
    fn skip_empty_lines<'b>(&mut self, bytes: &'b [u8], mut after_cr: bool) -> &'b [u8] {
        for (at, &byte) in bytes.iter().enumerate() {
            match (after_cr, byte) {
                (true, b'\n') => after_cr = false,
                (true, _) => return self.lose_track(),
                (false, b'\r') => after_cr = true,
                (false, b'\n') => {}
                // A method starts with a token character. Refusing anything else at once
                // (httparse would, once the head ended) spares buffering a tunnel's first
                // bytes (a websocket frame, a TLS record) in search of an empty line.
                (false, byte) if !is_token(byte) => return self.lose_track(),
                (false, _) => {
                    self.state = State::Head;
                    return &bytes[at..];
                }
            }
            self.at_start = false;
        }
        self.state = State::BeforeHead { after_cr };
        &[]
    }

    /// Gathers a head up to its empty line, then judges it.
    fn read_head<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        if self.head.is_empty() {
            // The common case: the whole head in this read, judged where it lies.
            if let Some(end) = head_end(bytes, 0) {
                self.finish_head(&bytes[..end]);
                return &bytes[end..];
            }
            if bytes.len() > self.max_head_bytes {
                return self.stop(Ambiguity::HeadTooLarge);
            }
            self.head.extend_from_slice(bytes);
            return &[];
        }
        let before = self.head.len();
        // One byte past the limit is enough to know the head is too large.
        let room = (self.max_head_bytes + 1).saturating_sub(before);
        let taken = bytes.len().min(room);
        self.head.extend_from_slice(&bytes[..taken]);
        // The empty line may have begun in the bytes kept from earlier reads.
        match head_end(&self.head, before.saturating_sub(3)) {
            Some(end) => {
                // Taken, not cleared: an idle keep-alive connection holds no head-sized buffer.
                let head = std::mem::take(&mut self.head);
                self.finish_head(&head[..end]);
                // The end lies in this read's bytes: an end within the earlier ones would have
                // been found by the earlier search.
                match end.checked_sub(before) {
                    Some(consumed) => &bytes[consumed..],
                    None => self.lose_track(),
                }
            }
            None if self.head.len() > self.max_head_bytes => self.stop(Ambiguity::HeadTooLarge),
            None => &[],
        }
    }

    /// Records the verdict of a complete head and moves to its body.
    fn finish_head(&mut self, head: &[u8]) {
        let at_start = std::mem::replace(&mut self.at_start, false);
        if at_start && head == H2_PREFACE_HEAD {
            // HTTP/2 has no such framing to confuse; hyper's h2 server takes the connection.
            self.state = State::Stopped;
            self.head = Vec::new();
            self.verdicts.not_http1();
            return;
        }
        if head.len() > self.max_head_bytes {
            self.stop(Ambiguity::HeadTooLarge);
            return;
        }
        match head::judge(head) {
            Ok(framing) => {
                self.verdicts.record_ok();
                // After an Upgrade or CONNECT head the stream stays followed: if the target
                // refuses the upgrade, hyper reads the next request from here and it needs its
                // verdict; if a tunnel opens, hyper reads no more heads, and the guard loses
                // track at the tunnel's first byte (a websocket frame or a TLS record is no
                // request line) at no cost to anyone.
                self.state = match framing {
                    BodyFraming::Empty => State::BeforeHead { after_cr: false },
                    BodyFraming::Length(length) => State::Length(length),
                    BodyFraming::Chunked => State::Chunked(Chunk::Start),
                };
            }
            Err(ambiguity) => {
                self.stop(ambiguity);
            }
        }
    }

    /// Follows a chunked body, byte by byte in its size lines and in jumps over its data.
    fn read_chunked<'b>(&mut self, mut chunk: Chunk, bytes: &'b [u8]) -> &'b [u8] {
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            chunk = match chunk {
                Chunk::Data(remaining) => {
                    let skipped = skip(remaining, &bytes[at..]);
                    at += skipped;
                    chunk = match remaining - skipped as u64 {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    };
                    continue;
                }
                Chunk::Extension(size) => {
                    match memchr::memchr2(b'\r', b'\n', &bytes[at..]) {
                        None => at = bytes.len(),
                        // hyper refuses an LF inside an extension.
                        Some(found) if bytes[at + found] == b'\n' => return self.lose_track(),
                        Some(found) => {
                            at += found + 1;
                            chunk = Chunk::SizeLf(size);
                        }
                    }
                    continue;
                }
                Chunk::Trailer => {
                    match memchr::memchr(b'\r', &bytes[at..]) {
                        None => at = bytes.len(),
                        Some(found) => {
                            at += found + 1;
                            chunk = Chunk::TrailerLf;
                        }
                    }
                    continue;
                }
                Chunk::Start => match hex_digit(byte) {
                    Some(digit) => Chunk::Size(u64::from(digit)),
                    None => return self.lose_track(),
                },
                Chunk::Size(size) => match byte {
                    b'\t' | b' ' => Chunk::SizeBlank(size),
                    b';' => Chunk::Extension(size),
                    b'\r' => Chunk::SizeLf(size),
                    _ => match hex_digit(byte)
                        .and_then(|digit| size.checked_mul(16)?.checked_add(u64::from(digit)))
                    {
                        Some(size) => Chunk::Size(size),
                        None => return self.lose_track(),
                    },
                },
                Chunk::SizeBlank(size) => match byte {
                    b'\t' | b' ' => Chunk::SizeBlank(size),
                    b';' => Chunk::Extension(size),
                    b'\r' => Chunk::SizeLf(size),
                    _ => return self.lose_track(),
                },
                Chunk::SizeLf(size) => match byte {
                    b'\n' if size == 0 => Chunk::EndCr,
                    b'\n' => Chunk::Data(size),
                    _ => return self.lose_track(),
                },
                Chunk::DataCr => match byte {
                    b'\r' => Chunk::DataLf,
                    _ => return self.lose_track(),
                },
                Chunk::DataLf => match byte {
                    b'\n' => Chunk::Start,
                    _ => return self.lose_track(),
                },
                Chunk::EndCr => match byte {
                    b'\r' => Chunk::EndLf,
                    _ => Chunk::Trailer,
                },
                Chunk::TrailerLf => match byte {
                    b'\n' => Chunk::EndCr,
                    _ => return self.lose_track(),
                },
                Chunk::EndLf => match byte {
                    b'\n' => {
                        self.state = State::BeforeHead { after_cr: false };
                        return &bytes[at + 1..];
                    }
                    _ => return self.lose_track(),
                },
            };
            at += 1;
        }
        self.state = State::Chunked(chunk);
        &[]
    }

    /// The guard no longer knows where heads start: whatever hyper reads next is refused.
    fn lose_track<'b>(&mut self) -> &'b [u8] {
        self.stop(Ambiguity::Unparsable)
    }

    /// Records the verdict that ends the connection and stops following.
    fn stop<'b>(&mut self, ambiguity: Ambiguity) -> &'b [u8] {
        self.state = State::Stopped;
        self.head = Vec::new();
        self.verdicts.refuse(ambiguity);
        &[]
    }
}

/// How many of `bytes` belong to a body with `remaining` bytes to go (never more than
/// `remaining`, so subtracting it back as `u64` cannot underflow).
fn skip(remaining: u64, bytes: &[u8]) -> usize {
    bytes
        .len()
        .min(usize::try_from(remaining).unwrap_or(usize::MAX))
}

/// A token character (RFC 9110 `tchar`), what request methods are made of.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The value of a hex digit.
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The length of the head in `bytes` (through its empty line), searching for line ends from
/// `from`. The head's first byte is its request line's (empty lines before it were skipped), so
/// the first LF followed by an empty line (LF, or CR LF) ends it; httparse accepts both line
/// ends.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let start = from.min(bytes.len());
    for lf in memchr::memchr_iter(b'\n', &bytes[start..]).map(|at| start + at) {
        match bytes.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => {}
        }
    }
    None
}
