//! STUB (replaced by the obs branch).
use std::{net::SocketAddr, sync::Arc, time::Duration};
#[derive(Default)]
pub struct ProxyMetrics;
pub struct ListenerMetrics;
pub struct RuleMetrics;
pub struct TargetMetrics;
pub struct ConnectionGuard;
impl ProxyMetrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self)
    }
    pub fn listener(&self, _l: &str) -> Arc<ListenerMetrics> {
        Arc::new(ListenerMetrics)
    }
    pub fn rule(&self, _l: &str, _r: Option<u32>) -> Arc<RuleMetrics> {
        Arc::new(RuleMetrics)
    }
    pub fn target(&self, _g: &str, _t: SocketAddr) -> Arc<TargetMetrics> {
        Arc::new(TargetMetrics)
    }
}
impl ListenerMetrics {
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        ConnectionGuard
    }
    pub fn connection_refused(&self) {}
    pub fn tls_handshake(&self, _ok: bool) {}
    pub fn response(&self, _s: u16) {}
    pub fn h2_reset_flood(&self) {}
    pub fn framing_rejected(&self) {}
}
impl RuleMetrics {
    pub fn response(&self, _s: u16) {}
}
impl TargetMetrics {
    pub fn response(&self, _s: u16, _t: Duration) {}
    pub fn connect_error(&self) {}
    pub fn timeout(&self) {}
}
