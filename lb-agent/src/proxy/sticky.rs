//! Cookie stickiness: the key that makes target tokens, the cookies' names, reading them from a
//! request, writing them into a response, and taking them out before a request goes to a target.
//!
//! A cookie names its target by a token, an HMAC of the group and the target's address under a
//! secret key: opaque (the address cannot be read from it nor a valid token forged for another
//! address without the key), stable across agent restarts (the key lives in a file) and across
//! nodes that share that file. The proxy matches a token against the tokens of the group's
//! targets in service (`balance::GroupTargets::by_token`); a token it does not know means the
//! target is gone, and the request is balanced as if it had no cookie.
//!
//! Names follow AWS's (AWSALB, AWSALBAPP, AWSALBTG, each with a `CORS` twin on https):
//! `LBSTICKY-<group>`, `LBAPP-<group>`, `LBGROUP-<listener>`, and for the twins
//! `LBSTICKYCORS-<group>`, `LBAPPCORS-<group>`, `LBGROUPCORS-<listener>`. Group and listener names are config names (A-Z, a-z, 0-9, `_`, `-`), valid in a
//! cookie name.

use std::{
    fs::{self, OpenOptions},
    io::{ErrorKind, Write},
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hyper::{
    HeaderMap,
    header::{COOKIE, HeaderValue, SET_COOKIE},
};
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};

/// Key length: that of an HMAC-SHA256 block's worth of entropy, what ring recommends.
pub const KEY_BYTES: usize = 32;

/// Token length in base64url characters: 128 bits of the HMAC.
pub const TOKEN_CHARS: usize = 22;

/// Why the stickiness key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StickyError {
    /// The key file exists but cannot be read (node: permissions, I/O).
    #[error("cannot read the stickiness key {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file could not be written (node: directory missing or read-only).
    #[error("cannot create the stickiness key {}: {source}", path.display())]
    Create {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file holds the wrong number of bytes (node: not a key this agent wrote; remove
    /// it to get a new one, which moves every sticky client once).
    #[error(
        "the stickiness key {} holds {len} bytes, not {KEY_BYTES}: remove it to make a new one",
        path.display()
    )]
    WrongSize {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The system's random generator failed (node).
    #[error("the system random generator failed")]
    Random,
}

/// The secret that makes target tokens.
pub struct StickyKey {
    key: hmac::Key,
}

impl std::fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        f.write_str("StickyKey(..)")
    }
}

/// What an HMAC input says it is, so a target token can never equal a group token.
const TARGET_CONTEXT: &[u8] = b"lb sticky target\0";
const GROUP_CONTEXT: &[u8] = b"lb sticky group\0";

impl StickyKey {
    /// From the secret's bytes.
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// A new random key (tests; and `load_or_create` when there is no file yet).
    pub fn random() -> Result<Self, StickyError> {
        Ok(Self::from_bytes(&random_bytes()?))
    }

    /// The key in `path`; when there is no file, a new random key written there (mode 0600).
    /// Creation is atomic: written beside, then linked in place only if still absent, so two
    /// agents starting at once, or a crash half-way, never leave a short key; the loser of a
    /// race reads the winner's.
    pub fn load_or_create(path: &Path) -> Result<Self, StickyError> {
        match read_key(path) {
            Err(StickyError::Read { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            found => return found,
        }
        let bytes = random_bytes()?;
        let create = |source| StickyError::Create {
            path: path.to_owned(),
            source,
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".tmp-{}", std::process::id()));
        let temporary = PathBuf::from(temporary);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::hard_link(&temporary, path)
        })();
        // Whatever happened, the temporary name goes: the key is at `path` or nowhere.
        let _ = fs::remove_file(&temporary);
        match written {
            Ok(()) => Ok(Self::from_bytes(&bytes)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => read_key(path),
            Err(e) => Err(create(e)),
        }
    }

    /// The token that names `target` of `group` in a cookie: 22 base64url characters.
    pub fn token(&self, group: &str, target: SocketAddr) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(TARGET_CONTEXT);
        update_name(&mut context, group);
        match target {
            SocketAddr::V4(v4) => {
                context.update(&[4]);
                context.update(&v4.ip().octets());
            }
            SocketAddr::V6(v6) => {
                context.update(&[6]);
                context.update(&v6.ip().octets());
            }
        }
        context.update(&target.port().to_be_bytes());
        truncated(&context.sign())
    }

    /// The token that names `group` as the choice of a weighted forward (rule `rule`, or the
    /// default action when `None`) of `listener`, for group-level stickiness.
    pub fn group_token(&self, listener: &str, rule: Option<u32>, group: &str) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(GROUP_CONTEXT);
        update_name(&mut context, listener);
        match rule {
            Some(priority) => {
                context.update(&[1]);
                context.update(&priority.to_be_bytes());
            }
            None => context.update(&[0]),
        }
        update_name(&mut context, group);
        truncated(&context.sign())
    }
}

fn random_bytes() -> Result<[u8; KEY_BYTES], StickyError> {
    let mut bytes = [0; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StickyError::Random)?;
    Ok(bytes)
}

fn read_key(path: &Path) -> Result<StickyKey, StickyError> {
    let bytes = fs::read(path).map_err(|source| StickyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let key: &[u8; KEY_BYTES] =
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| StickyError::WrongSize {
                path: path.to_owned(),
                len: bytes.len() as u64,
            })?;
    Ok(StickyKey::from_bytes(key))
}

/// A name, length first, so ("ab", "c") and ("a", "bc") sign differently.
fn update_name(context: &mut hmac::Context, name: &str) {
    let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
    context.update(&len.to_be_bytes());
    context.update(name.as_bytes());
}

/// The first 128 bits of a tag in base64url without padding.
fn truncated(tag: &hmac::Tag) -> String {
    let mut token = base64url(tag.as_ref());
    token.truncate(TOKEN_CHARS);
    token
}

/// RFC 4648 §5 base64url, no padding (cookie-value safe: no `=`, `+` or `/`).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        // A chunk of k bytes carries 8k bits: k + 1 characters.
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
    }
    out
}

/// The load-balancer cookie of `group` (`lb_cookie` stickiness): names the target.
pub fn lb_cookie_name(group: &str) -> String {
    format!("LBSTICKY-{group}")
}

/// The companion cookie of `group`'s application cookie (`app_cookie` stickiness): names the
/// target that set the application cookie.
pub fn app_cookie_companion_name(group: &str) -> String {
    format!("LBAPP-{group}")
}

/// The cookie of `listener`'s weighted forwards with group-level stickiness: names the group.
pub fn group_cookie_name(listener: &str) -> String {
    format!("LBGROUP-{listener}")
}

/// The `SameSite=None` twin of one of the names above, set beside it on https so that
/// cross-site requests (CORS) stick too: `LBSTICKY-web` gives `LBSTICKYCORS-web`. A prefix, not
/// a suffix, so no group name can make one cookie's twin another's name.
pub fn cors_cookie_name(name: &str) -> String {
    match name.split_once('-') {
        Some((kind, rest)) => format!("{kind}CORS-{rest}"),
        None => format!("{name}CORS"),
    }
}

/// One stickiness cookie's name and its CORS twin's, made once per plan so the request path
/// neither formats names nor allocates to find them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    name: Box<str>,
    cors: Box<str>,
}

impl StickyCookie {
    /// The cookie called `name` (one of `lb_cookie_name`, `app_cookie_companion_name`,
    /// `group_cookie_name`) and its twin.
    pub fn new(name: String) -> Self {
        Self {
            cors: cors_cookie_name(&name).into(),
            name: name.into(),
        }
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its CORS twin's name.
    pub fn cors_name(&self) -> &str {
        &self.cors
    }

    /// Both names, for `strip_lb_cookies`.
    pub fn names(&self) -> [&str; 2] {
        [&self.name, &self.cors]
    }

    /// The cookie's value in a request, else its twin's (a cross-site request may carry only
    /// the `SameSite=None` twin).
    pub fn find<'a>(&self, request: &'a HeaderMap) -> Option<&'a str> {
        find_cookie(request, &self.name).or_else(|| find_cookie(request, &self.cors))
    }

    /// Adds `Set-Cookie` for `value` to a response: the cookie, and on https (`secure`) its
    /// twin too.
    pub fn set(&self, response: &mut HeaderMap, value: &str, duration: Duration, secure: bool) {
        let now = SystemTime::now();
        response.append(
            SET_COOKIE,
            set_cookie_at(&self.name, value, duration, secure, now),
        );
        if secure {
            response.append(
                SET_COOKIE,
                cookie_value(&self.cors, value, duration, CORS_ATTRIBUTES, now),
            );
        }
    }
}

/// The value of the first cookie called exactly `name`, over every `Cookie` header (HTTP/2
/// sends one per cookie); `None` when absent, or when its value is not UTF-8.
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| cookie_pairs(value.as_bytes()))
        .find(|(n, _)| *n == name.as_bytes())
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

/// The `name=value` pairs of one `Cookie` header value, `;`-separated, spaces around each pair
/// trimmed (RFC 6265 §5.4 sends `; `; some clients send `;`). A piece without `=` is skipped.
fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    cookie_pieces(header).filter_map(|piece| {
        let equals = piece.iter().position(|&b| b == b'=')?;
        Some((
            piece[..equals].trim_ascii_end(),
            piece[equals + 1..].trim_ascii_start(),
        ))
    })
}

/// A `Set-Cookie` value that keeps `name=value` for `duration`:
/// `NAME=VALUE; Expires=<IMF-fixdate>; Max-Age=N; Path=/`, plus `; Secure` on https.
/// Both expiry forms: Max-Age wins where understood, Expires serves the old clients.
pub fn set_cookie(name: &str, value: &str, duration: Duration, secure: bool) -> HeaderValue {
    set_cookie_at(name, value, duration, secure, SystemTime::now())
}

/// The `SameSite=None; Secure` twin of `set_cookie` for https, under `cors_cookie_name(name)`.
pub fn set_cors_cookie(name: &str, value: &str, duration: Duration) -> HeaderValue {
    cookie_value(
        &cors_cookie_name(name),
        value,
        duration,
        CORS_ATTRIBUTES,
        SystemTime::now(),
    )
}

/// Browsers send a `SameSite=None` cookie cross-site only when it is also `Secure`.
const CORS_ATTRIBUTES: &str = "; SameSite=None; Secure";

fn set_cookie_at(
    name: &str,
    value: &str,
    duration: Duration,
    secure: bool,
    now: SystemTime,
) -> HeaderValue {
    cookie_value(
        name,
        value,
        duration,
        if secure { "; Secure" } else { "" },
        now,
    )
}

fn cookie_value(
    name: &str,
    value: &str,
    duration: Duration,
    attributes: &str,
    now: SystemTime,
) -> HeaderValue {
    let expires = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(duration);
    let text = format!(
        "{name}={value}; Expires={}; Max-Age={}; Path=/{attributes}",
        imf_fixdate(expires.as_secs()),
        duration.as_secs(),
    );
    // Names are config names and values our tokens, all visible ASCII; anything else would be
    // a bug upstream, and an empty value (no cookie) beats a panic on the request path.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Seconds since 1970 as an IMF-fixdate (RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
fn imf_fixdate(seconds: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        // 1970-01-01 was a Thursday.
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
    )
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01: Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year of the 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Takes the cookies called `names` out of the request's `Cookie` headers before it goes to a
/// target, dropping a header left empty; every other cookie is kept as sent. We remove them
/// (AWS forwards its cookies): they mean nothing to the application, and a target should not
/// learn the load balancer's tokens. A request without any of them is left untouched and costs
/// no allocation.
pub fn strip_lb_cookies(headers: &mut HeaderMap, names: &[&str]) {
    let ours = |piece: &[u8]| {
        let name = match piece.iter().position(|&b| b == b'=') {
            Some(equals) => piece[..equals].trim_ascii_end(),
            // A bare value is a cookie without a name: never ours.
            None => return false,
        };
        names.iter().any(|n| n.as_bytes() == name)
    };
    let has_ours = |value: &HeaderValue| cookie_pieces(value.as_bytes()).any(ours);
    if !headers.get_all(COOKIE).iter().any(has_ours) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| {
            if !has_ours(value) {
                return Some(value.clone());
            }
            let mut rebuilt = Vec::with_capacity(value.len());
            for piece in cookie_pieces(value.as_bytes()).filter(|p| !ours(p)) {
                if !rebuilt.is_empty() {
                    rebuilt.extend_from_slice(b"; ");
                }
                rebuilt.extend_from_slice(piece);
            }
            // Pieces of a valid header value joined by "; ": valid again.
            (!rebuilt.is_empty())
                .then(|| HeaderValue::from_bytes(&rebuilt).ok())
                .flatten()
        })
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}

/// The non-empty `;`-separated pieces of one `Cookie` header value, trimmed.
fn cookie_pieces(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    header
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|piece| !piece.is_empty())
}

#[cfg(test)]
mod tests;
