//! STUB (replaced by the sticky branch).
use hyper::{HeaderMap, header::HeaderValue};
use std::{net::SocketAddr, time::Duration};
pub struct StickyKey;
impl StickyKey {
    pub fn random() -> Self {
        Self
    }
    pub fn load_or_create(_p: &std::path::Path) -> Result<Self, String> {
        Ok(Self)
    }
    pub fn token(&self, group: &str, target: SocketAddr) -> String {
        format!("{group}{target}").replace([':', '.', '[', ']'], "")
    }
    pub fn group_token(&self, listener: &str, rule: Option<u32>, group: &str) -> String {
        format!("{listener}{rule:?}{group}")
    }
}
pub fn lb_cookie_name(group: &str) -> String {
    format!("LBSTICKY-{group}")
}
pub fn app_cookie_companion_name(group: &str) -> String {
    format!("LBAPP-{group}")
}
pub fn group_cookie_name(listener: &str) -> String {
    format!("LBGROUP-{listener}")
}
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}
pub fn set_cookie(name: &str, value: &str, duration: Duration, secure: bool) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Max-Age={}; Path=/{}",
        duration.as_secs(),
        if secure { "; Secure" } else { "" }
    ))
    .unwrap_or(HeaderValue::from_static(""))
}
pub fn strip_lb_cookies(_h: &mut HeaderMap, _names: &[&str]) {}
