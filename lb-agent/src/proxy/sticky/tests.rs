use std::{
    collections::HashSet,
    os::unix::fs::PermissionsExt,
    sync::atomic::{AtomicUsize, Ordering},
};

use hyper::header::SET_COOKIE;

use super::*;

/// A directory of its own under the system temp dir, removed on drop (even when a test fails).
struct TestDir(PathBuf);

impl TestDir {
    fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-proxy-sticky-{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn target(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([198, 18, 2, last], port))
}

fn cookies(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append(COOKIE, HeaderValue::from_str(v).unwrap());
    }
    headers
}

fn cookie_headers(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn key_file_is_created_with_mode_0600_and_reloaded_the_same() {
    let dir = TestDir::new("create");
    let path = dir.0.join("state.json.cookie-key");
    let first = StickyKey::load_or_create(&path).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), KEY_BYTES as u64);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing left beside it.
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);

    // A restart reads the same key: the same tokens.
    let again = StickyKey::load_or_create(&path).unwrap();
    let t = target(2, 8080);
    assert_eq!(first.token("web", t), again.token("web", t));
    // Another node with a copy of the file makes the same tokens too.
    let copy = dir.0.join("copy");
    fs::copy(&path, &copy).unwrap();
    assert_eq!(
        StickyKey::load_or_create(&copy).unwrap().token("web", t),
        first.token("web", t)
    );
}

#[test]
fn key_file_of_the_wrong_size_is_an_error_and_left_alone() {
    let dir = TestDir::new("size");
    let path = dir.0.join("key");
    fs::write(&path, [7u8; 31]).unwrap();
    let e = StickyKey::load_or_create(&path).unwrap_err();
    assert!(matches!(e, StickyError::WrongSize { len: 31, .. }), "{e:?}");
    assert!(e.to_string().contains("31 bytes"), "{e}");
    assert_eq!(fs::read(&path).unwrap(), [7u8; 31]);
}

#[test]
fn key_file_in_a_missing_directory_is_a_create_error() {
    let dir = TestDir::new("missing");
    let e = StickyKey::load_or_create(&dir.0.join("no/such/key")).unwrap_err();
    assert!(matches!(e, StickyError::Create { .. }), "{e:?}");
}

#[test]
fn token_is_22_url_safe_characters_that_do_not_show_the_address() {
    let key = StickyKey::random().unwrap();
    let t = target(2, 8080);
    let token = key.token("web", t);
    assert_eq!(token.len(), TOKEN_CHARS);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{token}"
    );
    // Neither the address in text nor its bytes merely encoded.
    assert!(
        !token.contains("198.18.2.2") && !token.contains("8080"),
        "{token}"
    );
    assert!(!token.contains(&base64url(&[198, 18, 2, 2])), "{token}");
    assert!(
        !token.contains(&base64url(&8080u16.to_be_bytes())),
        "{token}"
    );
}

#[test]
fn tokens_differ_by_target_group_and_key() {
    let key = StickyKey::from_bytes(&[1; KEY_BYTES]);
    let mut seen = HashSet::new();
    for group in ["web", "api", "we", "bweb"] {
        for last in 2..10 {
            for port in [80, 8080] {
                assert!(seen.insert(key.token(group, target(last, port))));
            }
        }
        let v6 = SocketAddr::from(([0xfd00, 0x198, 0x18, 0, 0, 0, 0, 2], 80));
        assert!(seen.insert(key.token(group, v6)));
    }
    let other = StickyKey::from_bytes(&[2; KEY_BYTES]);
    assert!(!seen.contains(&other.token("web", target(2, 80))));
    // Group tokens live apart from target tokens.
    assert!(seen.insert(key.group_token("web", Some(10), "api")));
    assert!(seen.insert(key.group_token("web", None, "api")));
    assert!(seen.insert(key.group_token("web", Some(10), "canary")));
    assert!(seen.insert(key.group_token("web2", Some(10), "api")));
}

#[test]
fn token_is_pinned_for_a_fixed_key() {
    // Pins the HMAC input layout: changing it would move every sticky client on upgrade.
    let key = StickyKey::from_bytes(&[0x42; KEY_BYTES]);
    let token = key.token("web", target(2, 8080));
    assert_eq!(token, key.token("web", target(2, 8080)));
    assert_eq!(token, PINNED_TOKEN, "the token layout changed");
}

// Computed independently: Python hmac.new(b"\x42" * 32, b"lb sticky target\0" + len + b"web" +
// b"\x04" + ip + port, sha256), urlsafe_b64encode, first 22 characters.
const PINNED_TOKEN: &str = "6WZWGQqzg39n5t-5zfWZJT";

#[test]
fn base64url_matches_rfc_4648_vectors_without_padding() {
    let rows = [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ];
    for (input, want) in rows {
        assert_eq!(base64url(input.as_bytes()), want, "{input:?}");
    }
    // The two characters that differ from standard base64.
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}

#[test]
fn cookie_names_follow_the_aws_pattern() {
    assert_eq!(lb_cookie_name("web"), "LBSTICKY-web");
    assert_eq!(app_cookie_companion_name("web"), "LBAPP-web");
    assert_eq!(group_cookie_name("front"), "LBGROUP-front");
    assert_eq!(cors_cookie_name("LBSTICKY-web"), "LBSTICKYCORS-web");
    assert_eq!(cors_cookie_name("LBGROUP-a-b"), "LBGROUPCORS-a-b");
    // A group named like another's twin cannot collide with it.
    assert_ne!(
        cors_cookie_name(&lb_cookie_name("web")),
        lb_cookie_name("web-CORS")
    );
}

#[test]
fn find_cookie_reads_exact_names_across_headers() {
    let h = cookies(&[
        "a=1; LBSTICKY-web=tok1;b=2",
        "LBSTICKY-web2=other",
        "c = 3 ",
    ]);
    assert_eq!(find_cookie(&h, "LBSTICKY-web"), Some("tok1"));
    assert_eq!(find_cookie(&h, "LBSTICKY-web2"), Some("other"));
    assert_eq!(find_cookie(&h, "b"), Some("2"));
    assert_eq!(find_cookie(&h, "c"), Some("3"));
    // Exact, case-sensitive name; no prefix or suffix matches.
    assert_eq!(find_cookie(&h, "LBSTICKY-we"), None);
    assert_eq!(find_cookie(&h, "lbsticky-web"), None);
    assert_eq!(find_cookie(&h, "web"), None);
    assert_eq!(find_cookie(&HeaderMap::new(), "a"), None);
    // HTTP/2 style: one cookie a header; the first of two wins.
    let h2 = cookies(&["x=1", "LBSTICKY-web=first", "LBSTICKY-web=second"]);
    assert_eq!(find_cookie(&h2, "LBSTICKY-web"), Some("first"));
    // Empty value, bare value, stray separators.
    let odd = cookies(&[";; bare ; e=; f=v=w"]);
    assert_eq!(find_cookie(&odd, "e"), Some(""));
    assert_eq!(find_cookie(&odd, "bare"), None);
    assert_eq!(find_cookie(&odd, "f"), Some("v=w"));
}

#[test]
fn sticky_cookie_finds_its_cors_twin_when_alone() {
    let c = StickyCookie::new(lb_cookie_name("web"));
    assert_eq!(c.names(), ["LBSTICKY-web", "LBSTICKYCORS-web"]);
    assert_eq!(c.find(&cookies(&["LBSTICKYCORS-web=t2"])), Some("t2"));
    assert_eq!(
        c.find(&cookies(&["LBSTICKYCORS-web=t2; LBSTICKY-web=t1"])),
        Some("t1")
    );
    assert_eq!(c.find(&cookies(&["other=1"])), None);
}

#[test]
fn imf_fixdate_formats_known_instants() {
    let rows = [
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
        (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (1_709_164_799, "Wed, 28 Feb 2024 23:59:59 GMT"),
        (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 GMT"),
        (1_709_251_200, "Fri, 01 Mar 2024 00:00:00 GMT"),
        (4_102_444_800, "Fri, 01 Jan 2100 00:00:00 GMT"),
        (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT"),
        (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 GMT"),
    ];
    for (seconds, want) in rows {
        assert_eq!(imf_fixdate(seconds), want, "{seconds}");
    }
}

#[test]
fn set_cookie_has_expiry_path_and_secure_on_https() {
    let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 3600);
    let plain = set_cookie_at("LBSTICKY-web", "tok", Duration::from_secs(3600), false, now);
    assert_eq!(
        plain,
        "LBSTICKY-web=tok; Expires=Sun, 06 Nov 1994 08:49:37 GMT; Max-Age=3600; Path=/"
    );
    let secure = set_cookie_at("LBSTICKY-web", "tok", Duration::from_secs(3600), true, now);
    assert_eq!(
        secure,
        "LBSTICKY-web=tok; Expires=Sun, 06 Nov 1994 08:49:37 GMT; Max-Age=3600; Path=/; Secure"
    );
    let cors = set_cors_cookie("LBSTICKY-web", "tok", Duration::from_secs(60));
    let cors = cors.to_str().unwrap();
    assert!(cors.starts_with("LBSTICKYCORS-web=tok; Expires="), "{cors}");
    assert!(
        cors.ends_with("; Max-Age=60; Path=/; SameSite=None; Secure"),
        "{cors}"
    );
}

#[test]
fn sticky_cookie_sets_the_twin_only_on_https() {
    let c = StickyCookie::new(app_cookie_companion_name("web"));
    let mut http = HeaderMap::new();
    c.set(&mut http, "tok", Duration::from_secs(10), false);
    let set: Vec<_> = http.get_all(SET_COOKIE).iter().collect();
    assert_eq!(set.len(), 1);
    assert!(set[0].to_str().unwrap().starts_with("LBAPP-web=tok; "));

    let mut https = HeaderMap::new();
    c.set(&mut https, "tok", Duration::from_secs(10), true);
    let set: Vec<&str> = https
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set.len(), 2);
    assert!(set[0].starts_with("LBAPP-web=tok; ") && set[0].ends_with("; Secure"));
    assert!(set[1].starts_with("LBAPPCORS-web=tok; ") && set[1].ends_with("SameSite=None; Secure"));
}

#[test]
fn strip_removes_only_our_cookies_and_keeps_the_rest_as_sent() {
    let names = ["LBSTICKY-web", "LBSTICKYCORS-web"];
    let mut h = cookies(&[
        "a=1; LBSTICKY-web=tok; b=2",
        "LBSTICKYCORS-web=tok",
        "bare; c=3",
        "LBSTICKY-web2=keep",
    ]);
    h.insert("x-other", HeaderValue::from_static("kept"));
    strip_lb_cookies(&mut h, &names);
    assert_eq!(
        cookie_headers(&h),
        ["a=1; b=2", "bare; c=3", "LBSTICKY-web2=keep"]
    );
    assert_eq!(h.get("x-other").unwrap(), "kept");

    // Only ours: no Cookie header left.
    let mut only = cookies(&["LBSTICKY-web=tok; LBSTICKYCORS-web=tok"]);
    strip_lb_cookies(&mut only, &names);
    assert!(only.get(COOKIE).is_none());

    // None of ours: untouched, spacing and all.
    let mut none = cookies(&["a=1;b=2", "c=3"]);
    strip_lb_cookies(&mut none, &names);
    assert_eq!(cookie_headers(&none), ["a=1;b=2", "c=3"]);
}
