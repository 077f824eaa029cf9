//! Judging one complete request head: how it frames its body, or why a proxy must not trust
//! that framing.
//!
//! The body framing of an accepted head is the one hyper's HTTP/1 server applies
//! (`proto/h1/role.rs`, `Server::parse`), because the guard must find the next head exactly
//! where hyper will. The refusals are a superset of hyper's: everything hyper answers 400 to,
//! plus the heads hyper accepts after quietly dropping what made them ambiguous.

use std::mem::MaybeUninit;

/// Header slots parsed on the stack; a head with more is parsed again with a heap array sized
/// from its length (rare: hyper's own default limit is 100 headers).
const STACK_HEADERS: usize = 64;

/// hyper's largest body length (`DecodedLength::MAX_LEN`); a larger Content-Length is refused.
const MAX_BODY_LENGTH: u64 = u64::MAX - 2;

/// How an accepted request head frames the body that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    /// No body: the next request head follows.
    Empty,
    /// Exactly this many bytes (more than zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the guard needs of an accepted head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AcceptedHead {
    /// How its body is framed.
    pub(super) framing: BodyFraming,
    /// Whether hyper may turn the connection into a tunnel after it (an HTTP/1.1 `Upgrade`
    /// header, or CONNECT), as hyper's `wants_upgrade` says.
    pub(super) upgrade: bool,
}

/// Why a request's framing is refused. Stored as its `u8` in the verdicts shared with the
/// service, so the discriminants are explicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Ambiguity {
    /// Both Content-Length and Transfer-Encoding (a classic request-smuggling vector).
    ContentLengthAndTransferEncoding = 0,
    /// Several Content-Length headers, all equal.
    DuplicateContentLength = 1,
    /// Several Content-Length headers with different values.
    ConflictingContentLength = 2,
    /// A Content-Length that is not a plain decimal number in range.
    InvalidContentLength = 3,
    /// A Transfer-Encoding whose final coding is not `chunked`: the body has no end.
    TransferEncodingNotChunked = 4,
    /// `chunked` named more than once in Transfer-Encoding.
    ChunkedTwice = 5,
    /// Transfer-Encoding in an HTTP/1.0 request, which has no such thing.
    TransferEncodingInHttp10 = 6,
    /// A header named like Content-Length or Transfer-Encoding with `_` for `-`, which some
    /// servers behind a proxy read as the real one.
    LookalikeFramingHeader = 7,
    /// A request head longer than the limit.
    HeadTooLarge = 8,
    /// Bytes that are not a request head where one must start, or a body that breaks its own
    /// framing: the guard lost track of the stream.
    Unparsable = 9,
    /// The service asked for a verdict the guard has not seen a head for (a wiring mistake;
    /// refused rather than guessed).
    NotSeen = 10,
    /// A request head not received within the listener's request-header timeout (a slow
    /// sender, or a connection that sent nothing).
    HeadTimeout = 11,
}

impl Ambiguity {
    /// Every variant, indexed by its discriminant.
    const ALL: [Ambiguity; 12] = [
        Ambiguity::ContentLengthAndTransferEncoding,
        Ambiguity::DuplicateContentLength,
        Ambiguity::ConflictingContentLength,
        Ambiguity::InvalidContentLength,
        Ambiguity::TransferEncodingNotChunked,
        Ambiguity::ChunkedTwice,
        Ambiguity::TransferEncodingInHttp10,
        Ambiguity::LookalikeFramingHeader,
        Ambiguity::HeadTooLarge,
        Ambiguity::Unparsable,
        Ambiguity::NotSeen,
        Ambiguity::HeadTimeout,
    ];

    /// The variant stored as `code`, if any.
    pub(super) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// What a log line or a 400 body says.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Ambiguity::ContentLengthAndTransferEncoding => "content-length and transfer-encoding",
            Ambiguity::DuplicateContentLength => "duplicate content-length",
            Ambiguity::ConflictingContentLength => "conflicting content-length",
            Ambiguity::InvalidContentLength => "invalid content-length",
            Ambiguity::TransferEncodingNotChunked => "transfer-encoding not chunked",
            Ambiguity::ChunkedTwice => "chunked more than once",
            Ambiguity::TransferEncodingInHttp10 => "transfer-encoding in http/1.0",
            Ambiguity::LookalikeFramingHeader => "look-alike framing header",
            Ambiguity::HeadTooLarge => "request head too large",
            Ambiguity::Unparsable => "unparsable request",
            Ambiguity::NotSeen => "request not seen by the framing guard",
            Ambiguity::HeadTimeout => "request head not received in time",
        }
    }
}

/// The framing of `head`, a complete request head (request line to the empty line included,
/// leading empty lines already skipped), or why it is refused.
pub(super) fn judge(head: &[u8]) -> Result<AcceptedHead, Ambiguity> {
    let mut slots = [const { MaybeUninit::uninit() }; STACK_HEADERS];
    match parse_and_judge(head, &mut slots) {
        Parsed::TooManyHeaders => {
            // Every header line takes at least three bytes (`a:` and a newline).
            let mut slots = vec![MaybeUninit::uninit(); head.len() / 3 + 1];
            match parse_and_judge(head, &mut slots) {
                Parsed::Judged(judged) => judged,
                Parsed::TooManyHeaders => Err(Ambiguity::Unparsable),
            }
        }
        Parsed::Judged(judged) => judged,
    }
}

/// One parse attempt with a given number of header slots.
enum Parsed {
    Judged(Result<AcceptedHead, Ambiguity>),
    TooManyHeaders,
}

fn parse_and_judge<'h>(head: &'h [u8], slots: &mut [MaybeUninit<httparse::Header<'h>>]) -> Parsed {
    let mut request = httparse::Request::new(&mut []);
    // The default parser configuration, as hyper's server uses: no obs-fold, no spaces before
    // a header's colon, single spaces in the request line.
    match request.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooManyHeaders,
        // Partial or shorter than the head the scanner found: the two disagree on where the
        // head ends, so neither position can be trusted.
        Ok(_) | Err(_) => return Parsed::Judged(Err(Ambiguity::Unparsable)),
    }
    let http10 = request.version == Some(0);
    let connect = request.method == Some("CONNECT");
    Parsed::Judged(
        framing_of(http10, request.headers).map(|(framing, upgrade_header)| {
            AcceptedHead {
                framing,
                // hyper honours Upgrade on HTTP/1.1 only.
                upgrade: connect || (upgrade_header && !http10),
            }
        }),
    )
}

/// The framing hyper applies to these headers, unless they are ambiguous, and whether they
/// hold an Upgrade header.
fn framing_of(
    http10: bool,
    headers: &[httparse::Header<'_>],
) -> Result<(BodyFraming, bool), Ambiguity> {
    let mut content_length: Option<u64> = None;
    let mut content_length_lines = 0u32;
    let mut conflicting = false;
    let mut transfer_encoding = false;
    let mut chunked_tokens = 0u32;
    // hyper frames by the last Transfer-Encoding line's last coding.
    let mut last_coding_chunked = false;
    let mut upgrade = false;

    for header in headers {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length_lines += 1;
            let length = decimal(header.value)
                .filter(|length| *length <= MAX_BODY_LENGTH)
                .ok_or(Ambiguity::InvalidContentLength)?;
            conflicting |= content_length.is_some_and(|seen| seen != length);
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            let (chunked, last_is_chunked) = codings(header.value);
            chunked_tokens += chunked;
            last_coding_chunked = last_is_chunked;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        } else if is_lookalike(name) {
            return Err(Ambiguity::LookalikeFramingHeader);
        }
    }

    if transfer_encoding {
        if content_length_lines > 0 {
            return Err(Ambiguity::ContentLengthAndTransferEncoding);
        }
        if http10 {
            return Err(Ambiguity::TransferEncodingInHttp10);
        }
        if !last_coding_chunked {
            return Err(Ambiguity::TransferEncodingNotChunked);
        }
        if chunked_tokens > 1 {
            return Err(Ambiguity::ChunkedTwice);
        }
        return Ok((BodyFraming::Chunked, upgrade));
    }
    if conflicting {
        return Err(Ambiguity::ConflictingContentLength);
    }
    if content_length_lines > 1 {
        return Err(Ambiguity::DuplicateContentLength);
    }
    let framing = match content_length {
        None | Some(0) => BodyFraming::Empty,
        Some(length) => BodyFraming::Length(length),
    };
    Ok((framing, upgrade))
}

/// A Content-Length value as hyper reads it: ASCII digits only (no sign, no list), no overflow.
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |sum, &byte| {
        if byte.is_ascii_digit() {
            sum.checked_mul(10)?.checked_add(u64::from(byte - b'0'))
        } else {
            None
        }
    })
}

/// In one Transfer-Encoding value: how many codings are `chunked`, and whether the last one is.
/// A value hyper cannot read as a string (bytes outside visible ASCII) counts as not chunked,
/// as in hyper.
fn codings(value: &[u8]) -> (u32, bool) {
    let visible = value
        .iter()
        .all(|&byte| byte == b'\t' || (b' '..0x7f).contains(&byte));
    if !visible {
        return (0, false);
    }
    let mut chunked = 0;
    let mut last_is_chunked = false;
    for coding in value.split(|&byte| byte == b',') {
        last_is_chunked = coding.trim_ascii().eq_ignore_ascii_case(b"chunked");
        chunked += u32::from(last_is_chunked);
    }
    (chunked, last_is_chunked)
}

/// `content_length` or `transfer_encoding` (any case, any mix of `_` and `-`) that is not the
/// real name: hyper ignores it, a target may not.
fn is_lookalike(name: &[u8]) -> bool {
    let same_but_underscores = |real: &[u8]| {
        name.len() == real.len()
            && name.contains(&b'_')
            && name.iter().zip(real).all(|(&byte, &want)| {
                byte.to_ascii_lowercase() == want || (byte == b'_' && want == b'-')
            })
    };
    same_but_underscores(b"content-length") || same_but_underscores(b"transfer-encoding")
}
