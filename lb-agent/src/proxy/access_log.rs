//! STUB (replaced by the obs branch).
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};
pub struct AccessRecord {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub listener: Arc<str>,
    pub rule: Option<u32>,
    pub target_group: Option<Arc<str>>,
    pub target: Option<SocketAddr>,
    pub method: Option<hyper::Method>,
    pub host: Option<String>,
    pub uri: Option<String>,
    pub version: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_duration: Duration,
    pub target_duration: Option<Duration>,
    pub response_duration: Duration,
    pub tls_version: Option<&'static str>,
    pub tls_cipher: Option<&'static str>,
    pub sni: Option<String>,
    pub request_id: Option<String>,
    pub user_agent: Option<String>,
    pub error: Option<&'static str>,
}
#[derive(Clone)]
pub struct AccessLog;
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct AccessLogError;
impl AccessLog {
    pub fn open(_c: &crate::config::AccessLogConfig) -> Result<Self, AccessLogError> {
        Ok(Self)
    }
    pub fn record(&self, _r: AccessRecord) {}
    pub fn dropped(&self) -> u64 {
        0
    }
}
