//! Following a client's HTTP/1.1 byte stream request by request: each head is judged, each
//! body skipped by its framing, so the next head is found where hyper will find it.
//!
//! Bytes are looked at once, as they are read, and never copied except a head that arrives
//! split across reads (bounded by the head limit). Bodies are skipped by counting.

use std::ops::Range;
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

/// What the guard hands hyper of the bytes just scanned, in this order: `released`, then
/// `bytes[pass]`, then a `\n` if `marker`. In the common case that is every byte, in place.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Handing {
    /// A head held back from earlier reads, now judged good.
    pub(super) released: Option<Vec<u8>>,
    /// The bytes of this read to hand on.
    pub(super) pass: Range<usize>,
    /// An empty line standing in for a head held back or refused. hyper skips empty lines
    /// before a head (`consume_leading_lines`, and httparse itself); while one waits in its
    /// buffer, hyper does not read to check for the end of input in the middle of a request
    /// (`mid_message_detect_eof`), which would drop the answer of a request still in flight.
    pub(super) marker: bool,
}

impl Handing {
    /// Every byte of a read of `len` bytes, in place.
    fn all(len: usize) -> Self {
        Self {
            released: None,
            pass: 0..len,
            marker: false,
        }
    }

    /// Whether this is every byte of a read of `len` bytes, in place.
    pub(super) fn is_all(&self, len: usize) -> bool {
        self.released.is_none() && self.pass == (0..len) && !self.marker
    }
}

/// One connection's request stream, recording a verdict per head into the shared verdicts.
///
/// Until a head asks for an upgrade, the stream withholds: a head reaches hyper only once it
/// is judged good, and a refused head and everything after it never do (the guard answers it
/// itself). After an upgrade head, the bytes may be a tunnel's, which the guard cannot tell
/// from a next request until the target has answered; from there every byte passes and the
/// service refuses by the verdicts, as hyper hands it each request.
#[derive(Debug)]
pub(super) struct RequestStream {
    state: State,
    /// A head's bytes when it arrives split across reads; empty otherwise (heads that arrive
    /// whole are judged in place).
    head: Vec<u8>,
    max_head_bytes: usize,
    /// Nothing seen yet but (perhaps) the h2 preface: only the connection's first bytes can be.
    at_start: bool,
    /// Heads are withheld until judged (no upgrade head seen yet).
    withholding: bool,
    /// A marker stands in for the head held in `head`.
    marked: bool,
    /// The refusal the guard answers itself (a head refused while withholding).
    answered: Option<Ambiguity>,
    verdicts: Arc<FramingVerdicts>,
}

/// What reading (part of) a head came to.
enum HeadRead {
    /// The head is complete and judged good; this many bytes of the read were its. `released`:
    /// the whole head, when it was held back from earlier reads.
    Accepted {
        consumed: usize,
        released: Option<Vec<u8>>,
    },
    /// The head is refused.
    Refused,
    /// The head goes on past this read; its bytes so far are in `RequestStream::head`.
    Held,
}

impl RequestStream {
    /// A new connection's stream; heads longer than `max_head_bytes` are refused.
    pub(super) fn new(max_head_bytes: usize, verdicts: Arc<FramingVerdicts>) -> Self {
        Self {
            state: State::BeforeHead { after_cr: false },
            head: Vec::new(),
            max_head_bytes,
            at_start: true,
            withholding: true,
            marked: false,
            answered: None,
            verdicts,
        }
    }

    /// Whether bytes still need looking at (false once stopped: the fast path of every read).
    pub(super) fn following(&self) -> bool {
        self.state != State::Stopped
    }

    /// The refused head the guard answers itself, once it has stopped at one.
    pub(super) fn answered(&self) -> Option<Ambiguity> {
        self.answered
    }

    /// A head is awaited past the request-header timeout (the watchdog said so): refused and
    /// answered with 408, if the guard still withholds and no refusal came first.
    pub(super) fn time_out(&mut self) {
        let awaiting = matches!(self.state, State::BeforeHead { .. } | State::Head);
        if awaiting && self.withholding && self.answered.is_none() {
            self.refuse_head(Ambiguity::HeadTimeout);
        }
    }

    /// Bytes held for a split head (its allocation, which the head limit bounds).
    #[cfg(test)]
    pub(super) fn held_head_bytes(&self) -> usize {
        self.head.capacity()
    }

    /// Follows the stream over the next bytes read from the client, and says which of them
    /// hyper may have.
    pub(super) fn scan(&mut self, bytes: &[u8]) -> Handing {
        let mut handing = Handing::all(bytes.len());
        // Where the head being read began in `bytes` (`None`: in an earlier read).
        let mut head_start = None;
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            at += match self.state {
                State::Stopped => break,
                State::BeforeHead { after_cr } => {
                    let skipped = self.skip_empty_lines(rest, after_cr);
                    head_start = Some(at + skipped);
                    if self.state == State::Stopped {
                        // Garbage where a head starts: refused like a bad head.
                        self.withhold_from(&mut handing, head_start);
                        break;
                    }
                    skipped
                }
                State::Head => match self.read_head(rest) {
                    HeadRead::Accepted { consumed, released } => {
                        if released.is_some() {
                            // Held heads begin a read: nothing of this one was handed on.
                            handing.released = released;
                            handing.pass = at + consumed..bytes.len();
                        }
                        head_start = None;
                        consumed
                    }
                    HeadRead::Refused => {
                        self.withhold_from(&mut handing, head_start);
                        break;
                    }
                    HeadRead::Held => {
                        if self.withholding {
                            self.hold_from(&mut handing, head_start);
                        }
                        break;
                    }
                },
                State::Length(remaining) => {
                    let skipped = skip(remaining, rest);
                    self.state = match remaining - skipped as u64 {
                        0 => State::BeforeHead { after_cr: false },
                        left => State::Length(left),
                    };
                    skipped
                }
                State::Chunked(chunk) => self.read_chunked(chunk, rest),
            };
        }
        handing
    }

    /// A refused head (or garbage) began at `head_start`: hyper has nothing from there.
    fn withhold_from(&mut self, handing: &mut Handing, head_start: Option<usize>) {
        if self.answered.is_none() {
            // Not withholding: the bytes pass and the service refuses by the verdict.
            return;
        }
        match head_start {
            // A head that began in this read was never marked.
            Some(start) => {
                handing.pass.end = start;
                handing.marker = true;
            }
            // The head was held from an earlier read, its marker handed on then.
            None => handing.pass = 0..0,
        }
    }

    /// A head goes on past this read: hyper gets it once it is judged.
    fn hold_from(&mut self, handing: &mut Handing, head_start: Option<usize>) {
        match head_start {
            Some(start) => handing.pass.end = start,
            None => handing.pass = 0..0,
        }
        // No marker while the held bytes may still be the h2 preface: hyper-util's version
        // sniffing must see the preface itself.
        let maybe_h2 = self.at_start && H2_PREFACE_HEAD.starts_with(&self.head);
        if !self.marked && !maybe_h2 {
            handing.marker = true;
            self.marked = true;
        }
    }

    /// Empty lines before a request line are allowed (httparse skips them, as RFC 9112 asks);
    /// a CR must be followed by LF. Returns how many bytes were skipped: up to a head's first
    /// byte, or the byte that is no head's.
    fn skip_empty_lines(&mut self, bytes: &[u8], mut after_cr: bool) -> usize {
        for (at, &byte) in bytes.iter().enumerate() {
            match (after_cr, byte) {
                (true, b'\n') => after_cr = false,
                (true, _) => {
                    self.refuse_head(Ambiguity::Unparsable);
                    return at;
                }
                (false, b'\r') => after_cr = true,
                (false, b'\n') => {}
                // A method starts with a token character. Refusing anything else at once
                // (httparse would, once the head ended) spares buffering a tunnel's first
                // bytes (a websocket frame, a TLS record) in search of an empty line.
                (false, byte) if !is_token(byte) => {
                    self.refuse_head(Ambiguity::Unparsable);
                    return at;
                }
                (false, _) => {
                    self.state = State::Head;
                    self.verdicts.head_begun();
                    return at;
                }
            }
            self.at_start = false;
        }
        self.state = State::BeforeHead { after_cr };
        bytes.len()
    }

    /// Gathers a head up to its empty line, then judges it.
    fn read_head(&mut self, bytes: &[u8]) -> HeadRead {
        if self.head.is_empty() {
            // The common case: the whole head in this read, judged where it lies.
            if let Some(end) = head_end(bytes, 0) {
                return match self.finish_head(&bytes[..end]) {
                    true => HeadRead::Accepted {
                        consumed: end,
                        released: None,
                    },
                    false => HeadRead::Refused,
                };
            }
            if bytes.len() > self.max_head_bytes {
                self.refuse_head(Ambiguity::HeadTooLarge);
                return HeadRead::Refused;
            }
            self.head.extend_from_slice(bytes);
            return HeadRead::Held;
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
                let mut head = std::mem::take(&mut self.head);
                // Held while withholding: hyper has none of it yet.
                let withheld = self.withholding;
                self.marked = false;
                head.truncate(end);
                // The end lies in this read's bytes: an end within the earlier ones would have
                // been found by the earlier search.
                let Some(consumed) = end.checked_sub(before) else {
                    self.refuse_head(Ambiguity::Unparsable);
                    return HeadRead::Refused;
                };
                if !self.finish_head(&head) {
                    return HeadRead::Refused;
                }
                HeadRead::Accepted {
                    consumed,
                    released: withheld.then_some(head),
                }
            }
            None if self.head.len() > self.max_head_bytes => {
                self.refuse_head(Ambiguity::HeadTooLarge);
                HeadRead::Refused
            }
            None => HeadRead::Held,
        }
    }

    /// Records the verdict of a complete head and moves to its body; false if it is refused.
    fn finish_head(&mut self, head: &[u8]) -> bool {
        let at_start = std::mem::replace(&mut self.at_start, false);
        if at_start && head == H2_PREFACE_HEAD {
            // HTTP/2 has no such framing to confuse; hyper's h2 server takes the connection.
            self.state = State::Stopped;
            self.head = Vec::new();
            self.verdicts.not_http1();
            return true;
        }
        if head.len() > self.max_head_bytes {
            self.refuse_head(Ambiguity::HeadTooLarge);
            return false;
        }
        match head::judge(head) {
            Ok(accepted) => {
                self.verdicts.record_ok();
                // After an Upgrade or CONNECT head the stream stays followed: if the target
                // refuses the upgrade, hyper reads the next request from here and it needs its
                // verdict; if a tunnel opens, hyper reads no more heads, and the guard loses
                // track at the tunnel's first byte (a websocket frame or a TLS record is no
                // request line) at no cost to anyone. Nothing is withheld from there on: the
                // tunnel's bytes must pass.
                self.withholding &= !accepted.upgrade;
                self.state = match accepted.framing {
                    BodyFraming::Empty => State::BeforeHead { after_cr: false },
                    BodyFraming::Length(length) => State::Length(length),
                    BodyFraming::Chunked => State::Chunked(Chunk::Start),
                };
                true
            }
            Err(ambiguity) => {
                self.refuse_head(ambiguity);
                false
            }
        }
    }

    /// Follows a chunked body, byte by byte in its size lines and in jumps over its data.
    fn read_chunked(&mut self, mut chunk: Chunk, bytes: &[u8]) -> usize {
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
                        Some(found) if bytes[at + found] == b'\n' => return self.lose_track(bytes),
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
                    None => return self.lose_track(bytes),
                },
                Chunk::Size(size) => match byte {
                    b'\t' | b' ' => Chunk::SizeBlank(size),
                    b';' => Chunk::Extension(size),
                    b'\r' => Chunk::SizeLf(size),
                    _ => match hex_digit(byte)
                        .and_then(|digit| size.checked_mul(16)?.checked_add(u64::from(digit)))
                    {
                        Some(size) => Chunk::Size(size),
                        None => return self.lose_track(bytes),
                    },
                },
                Chunk::SizeBlank(size) => match byte {
                    b'\t' | b' ' => Chunk::SizeBlank(size),
                    b';' => Chunk::Extension(size),
                    b'\r' => Chunk::SizeLf(size),
                    _ => return self.lose_track(bytes),
                },
                Chunk::SizeLf(size) => match byte {
                    b'\n' if size == 0 => Chunk::EndCr,
                    b'\n' => Chunk::Data(size),
                    _ => return self.lose_track(bytes),
                },
                Chunk::DataCr => match byte {
                    b'\r' => Chunk::DataLf,
                    _ => return self.lose_track(bytes),
                },
                Chunk::DataLf => match byte {
                    b'\n' => Chunk::Start,
                    _ => return self.lose_track(bytes),
                },
                Chunk::EndCr => match byte {
                    b'\r' => Chunk::EndLf,
                    _ => Chunk::Trailer,
                },
                Chunk::TrailerLf => match byte {
                    b'\n' => Chunk::EndCr,
                    _ => return self.lose_track(bytes),
                },
                Chunk::EndLf => match byte {
                    b'\n' => {
                        self.state = State::BeforeHead { after_cr: false };
                        return at + 1;
                    }
                    _ => return self.lose_track(bytes),
                },
            };
            at += 1;
        }
        self.state = State::Chunked(chunk);
        bytes.len()
    }

    /// The guard no longer knows where heads start inside a body: whatever hyper reads next
    /// is refused. The body's bytes still pass (hyper fails the body itself).
    fn lose_track(&mut self, bytes: &[u8]) -> usize {
        self.stop(Ambiguity::Unparsable);
        bytes.len()
    }

    /// A head (or what stands where one must) is refused: while withholding, the guard
    /// answers it itself.
    fn refuse_head(&mut self, ambiguity: Ambiguity) {
        if self.withholding {
            self.answered = Some(ambiguity);
        }
        self.stop(ambiguity);
    }

    /// Records the verdict that ends the connection and stops following.
    fn stop(&mut self, ambiguity: Ambiguity) {
        self.state = State::Stopped;
        self.head = Vec::new();
        if self.answered.is_some() {
            self.verdicts.refuse_withheld(ambiguity);
        } else {
            self.verdicts.refuse(ambiguity);
        }
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
