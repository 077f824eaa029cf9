//! The proxy's counters: per listener, rule and target, read by `GET /metrics` beside the data
//! plane's (`crate::metrics`), with the same `lb_` names and conventions.
//!
//! The request path only touches atomics (relaxed: each counter stands alone, and a scrape
//! that sees one a request later than another is still a true picture). The counters every
//! request writes have a copy per worker (`PerWorker`), summed when read: two workers writing
//! one counter would pass its cache line back and forth on every request. The registry of series
//! is behind a mutex taken only to create a series or to render: the serving core looks up
//! the `Arc`s of a listener's rules and a group's targets when it builds the plan for a
//! snapshot, not per request. A series lives until [`ProxyMetrics::retain`] forgets it.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder, NoLabelSet, prometheus_text},
    metrics::{MetricType, counter::ConstCounter},
    registry::{Registry, Unit},
};

use super::{
    access_log::{AccessLog, DropCounter},
    send_batch,
};
use crate::metrics::{MetricsError, counter, gauge};

/// Upper bounds of the target response time histogram's buckets, in nanoseconds (0.001 s to
/// 10 s; `+Inf` follows). Kept in integers so that the request path compares integers.
const BUCKET_BOUNDS_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Copies of a per-request counter: workers beyond this share them (worker `i` uses copy
/// `i % SHARDS`); still correct, just contended again.
const SHARDS: usize = 4;

/// A value with a copy per worker, each on its own cache lines.
#[derive(Debug, Default)]
pub(super) struct PerWorker<T>([Padded<T>; SHARDS]);

/// Aligned to 128 bytes: a cache line, and the pair the adjacent-line prefetcher fetches.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> PerWorker<T> {
    /// The calling worker's copy.
    fn local(&self) -> &T {
        &self.0[super::workers::current() % SHARDS].0
    }

    fn all(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|p| &p.0)
    }
}

impl PerWorker<AtomicU64> {
    /// At zero; for a `static`.
    pub(super) const fn new() -> Self {
        Self([const { Padded(AtomicU64::new(0)) }; SHARDS])
    }

    pub(super) fn add(&self, n: u64) {
        self.local().fetch_add(n, Relaxed);
    }

    pub(super) fn sum(&self) -> u64 {
        self.all().map(|c| c.load(Relaxed)).sum()
    }
}

impl PerWorker<ByClass> {
    fn count(&self, status: u16) {
        self.local().count(status);
    }

    /// Responses per class over every worker.
    fn sum(&self) -> [u64; 5] {
        let mut total = [0; 5];
        for copy in self.all() {
            for (t, n) in total.iter_mut().zip(&copy.0) {
                *t += n.load(Relaxed);
            }
        }
        total
    }
}

impl PerWorker<Histogram> {
    fn observe(&self, d: Duration) {
        self.local().observe(d);
    }

    /// `(upper bound in seconds, observations in the bucket)`, `+Inf` last; and the count,
    /// over every worker.
    fn buckets(&self) -> ([(f64, u64); BUCKET_BOUNDS_NANOS.len() + 1], u64) {
        let (mut total, mut count) = Histogram::default().buckets();
        for copy in self.all() {
            let (buckets, n) = copy.buckets();
            for (t, b) in total.iter_mut().zip(buckets) {
                t.1 += b.1;
            }
            count += n;
        }
        (total, count)
    }

    fn sum_seconds(&self) -> f64 {
        self.all().map(Histogram::sum_seconds).sum()
    }
}

/// Label values of the status classes, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `rule` label of a listener's default action.
const DEFAULT_RULE: &str = "default";

/// All the proxy's series. Shared (`Arc`) by the serving core and the agent's `/metrics`.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    series: Mutex<Series>,
}

/// A rule's series: its listener and priority (none: the default action).
type RuleKey = (String, Option<u32>);

/// A target's series: its group and address.
type TargetKey = (String, SocketAddr);

#[derive(Debug, Default)]
struct Series {
    listeners: BTreeMap<String, Arc<ListenerMetrics>>,
    rules: BTreeMap<RuleKey, Arc<RuleMetrics>>,
    targets: BTreeMap<TargetKey, Arc<TargetMetrics>>,
    access_log: AccessLogDrops,
}

/// The access log's dropped records, over every log the agent opened (a reload may replace it).
#[derive(Debug, Default, Clone)]
struct AccessLogDrops {
    /// Drops of the logs replaced before the current one.
    earlier: u64,
    current: Option<DropCounter>,
}

impl AccessLogDrops {
    fn total(&self) -> u64 {
        self.earlier + self.current.as_ref().map_or(0, DropCounter::get)
    }
}

impl ProxyMetrics {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        // The maps stay consistent whatever a panicking holder did: each change is one insert.
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A listener's counters, created at zero the first time.
    pub fn listener(&self, listener: &str) -> Arc<ListenerMetrics> {
        let mut series = self.series();
        if let Some(found) = series.listeners.get(listener) {
            return found.clone();
        }
        let created = Arc::<ListenerMetrics>::default();
        series
            .listeners
            .insert(listener.to_owned(), created.clone());
        created
    }

    /// A rule's counters (`rule`: its priority; none: the listener's default action).
    pub fn rule(&self, listener: &str, rule: Option<u32>) -> Arc<RuleMetrics> {
        let mut series = self.series();
        series
            .rules
            .entry((listener.to_owned(), rule))
            .or_default()
            .clone()
    }

    /// A target's counters as a member of `group` (a target in two groups has two series).
    pub fn target(&self, group: &str, target: SocketAddr) -> Arc<TargetMetrics> {
        let mut series = self.series();
        series
            .targets
            .entry((group.to_owned(), target))
            .or_default()
            .clone()
    }

    /// Requests sent to `target` as a member of `group` so far (0 for a target never sent
    /// one); read without making a series. The auto scaling groups' requests-per-target
    /// metric.
    pub fn target_requests(&self, group: &str, target: SocketAddr) -> u64 {
        self.series()
            .targets
            .get(&(group.to_owned(), target))
            .map_or(0, |m| m.requests.sum())
    }

    /// After a reload: forgets the series of the listeners, rules and group targets not given
    /// (draining targets should be given while they drain), but keeps a listener's series
    /// while connections to it are open. `Arc`s handed out stay valid; they are just no longer
    /// shown, and a series created again starts from zero (a counter reset to Prometheus).
    pub fn retain(
        &self,
        listeners: &[&str],
        rules: &[(&str, Option<u32>)],
        targets: &[(&str, SocketAddr)],
    ) {
        let mut series = self.series();
        series
            .listeners
            .retain(|name, m| listeners.contains(&name.as_str()) || m.active() > 0);
        series
            .rules
            .retain(|(listener, rule), _| rules.contains(&(listener.as_str(), *rule)));
        series
            .targets
            .retain(|(group, target), _| targets.contains(&(group.as_str(), *target)));
    }

    /// Counts the drops of `log` (the access log in force; none: no log) from now on, after
    /// those of the logs before it.
    pub fn watch_access_log(&self, log: Option<&AccessLog>) {
        let mut series = self.series();
        let drops = &mut series.access_log;
        drops.earlier = drops.total();
        drops.current = log.map(AccessLog::drop_counter);
    }

    /// Appends the proxy's families to `out` in the Prometheus text format 0.0.4, the format
    /// of `crate::metrics::render`; every family is described even when it has no series yet.
    pub fn render(&self, out: &mut String) -> Result<(), MetricsError> {
        self.render_with(out, send_batch::totals())
    }

    /// `render`, with `sends` as the workers' batched sends.
    fn render_with(&self, out: &mut String, sends: send_batch::Totals) -> Result<(), MetricsError> {
        let scrape = {
            let series = self.series();
            Scrape {
                listeners: series
                    .listeners
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                rules: series
                    .rules
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                targets: series
                    .targets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                access_log: series.access_log.clone(),
                sends,
            }
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(scrape));
        prometheus_text::encode(out, &registry)?;
        Ok(())
    }
}

/// A listener's counters.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    connections: AtomicU64,
    active: AtomicU64,
    refused: AtomicU64,
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
    responses: PerWorker<ByClass>,
    reset_floods: AtomicU64,
    bad_requests: AtomicU64,
    header_timeouts: AtomicU64,
}

impl ListenerMetrics {
    /// A client connection was accepted: counted, and active until the guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        ConnectionGuard {
            listener: self.clone(),
        }
    }

    /// A connection was closed at once: the listener held `max_connections`.
    pub fn connection_refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    /// A TLS handshake with a client ended.
    pub fn tls_handshake(&self, ok: bool) {
        let counter = if ok {
            &self.handshakes_ok
        } else {
            &self.handshakes_failed
        };
        counter.fetch_add(1, Relaxed);
    }

    /// A response went to a client (from a target or from the load balancer itself).
    pub fn response(&self, status: u16) {
        self.responses.count(status);
    }

    /// An HTTP/2 connection was closed for resetting too many streams.
    pub fn h2_reset_flood(&self) {
        self.reset_floods.fetch_add(1, Relaxed);
    }

    /// A request was refused (400) before reaching a target: ambiguous framing or a
    /// malformed head.
    pub fn framing_rejected(&self) {
        self.bad_requests.fetch_add(1, Relaxed);
    }

    /// A connection was answered 408 and closed: a request head did not arrive within the
    /// listener's request-header timeout.
    pub fn header_timeout(&self) {
        self.header_timeouts.fetch_add(1, Relaxed);
    }

    /// Connections open now.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }
}

/// Holds one of a listener's active connections; dropping it (when the connection ends, however
/// it ends) takes it off the gauge.
#[derive(Debug)]
pub struct ConnectionGuard {
    listener: Arc<ListenerMetrics>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.listener.active.fetch_sub(1, Relaxed);
    }
}

/// A rule's counters (or a default action's).
#[derive(Debug, Default)]
pub struct RuleMetrics {
    requests: PerWorker<AtomicU64>,
    responses: PerWorker<ByClass>,
}

impl RuleMetrics {
    /// A request this rule routed was answered with `status`.
    pub fn response(&self, status: u16) {
        self.requests.add(1);
        self.responses.count(status);
    }
}

/// A target's counters within one group.
#[derive(Debug, Default)]
pub struct TargetMetrics {
    requests: PerWorker<AtomicU64>,
    responses: PerWorker<ByClass>,
    response_time: PerWorker<Histogram>,
    connect_errors: AtomicU64,
    timeouts: AtomicU64,
}

impl TargetMetrics {
    /// The target answered a request with `status`, its response head `target_time` after the
    /// request was sent.
    pub fn response(&self, status: u16, target_time: Duration) {
        self.requests.add(1);
        self.responses.count(status);
        self.response_time.observe(target_time);
    }

    /// A connection to the target failed (refused, reset, TLS): the request was not sent.
    pub fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Relaxed);
    }

    /// A request was sent but the target did not answer within the group's
    /// `response_timeout`; it counts as a request.
    pub fn timeout(&self) {
        self.requests.add(1);
        self.timeouts.fetch_add(1, Relaxed);
    }
}

/// Responses by status class; statuses outside 100..=599 count in none.
#[derive(Debug, Default)]
struct ByClass([AtomicU64; 5]);

impl ByClass {
    fn count(&self, status: u16) {
        let class = (status / 100).checked_sub(1).map(usize::from);
        if let Some(counter) = class.and_then(|i| self.0.get(i)) {
            counter.fetch_add(1, Relaxed);
        }
    }
}

/// A histogram of durations: a counter per bucket (not cumulative: one increment per
/// observation) and the sum in nanoseconds.
#[derive(Debug, Default)]
struct Histogram {
    /// `buckets[i]`: observations in `(bound[i-1], bound[i]]`; the last: above every bound.
    buckets: [AtomicU64; BUCKET_BOUNDS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Bounds are inclusive (`le`).
        let bucket = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        if let Some(counter) = self.buckets.get(bucket) {
            counter.fetch_add(1, Relaxed);
        }
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// `(upper bound in seconds, observations in the bucket)`, `+Inf` last; and the count.
    fn buckets(&self) -> ([(f64, u64); BUCKET_BOUNDS_NANOS.len() + 1], u64) {
        let mut out = [(f64::INFINITY, 0); BUCKET_BOUNDS_NANOS.len() + 1];
        let mut count = 0;
        for (i, (slot, counter)) in out.iter_mut().zip(&self.buckets).enumerate() {
            let n = counter.load(Relaxed);
            count += n;
            // Exact for these bounds: nanos / 1e9 rounds to the nearest f64, the literal's.
            let bound = BUCKET_BOUNDS_NANOS
                .get(i)
                .map_or(f64::INFINITY, |&nanos| nanos as f64 / 1e9);
            *slot = (bound, n);
        }
        (out, count)
    }

    fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Relaxed) as f64 / 1e9
    }
}

/// The series as a scrape found them (the `Arc`s; values are read while encoding).
#[derive(Debug)]
struct Scrape {
    listeners: Vec<(String, Arc<ListenerMetrics>)>,
    rules: Vec<(RuleKey, Arc<RuleMetrics>)>,
    targets: Vec<(TargetKey, Arc<TargetMetrics>)>,
    access_log: AccessLogDrops,
    sends: send_batch::Totals,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_listeners(&mut encoder)?;
        self.encode_rules(&mut encoder)?;
        self.encode_targets(&mut encoder)?;
        self.encode_sends(&mut encoder)?;
        ConstCounter::new(self.access_log.total()).encode(encoder.encode_descriptor(
            "lb_access_log_dropped",
            "Access log records dropped because the writer fell behind the requests.",
            None,
            MetricType::Counter,
        )?)
    }
}

/// A label whose value is built for the sample.
type Label = (&'static str, String);

impl Scrape {
    fn encode_listeners(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let labels = |name: &String| [("listener", name.clone())];
        let mut f = encoder.encode_descriptor(
            "lb_http_connections",
            "Client connections an L7 listener accepted.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &self.listeners {
            counter(&mut f, &labels(name), m.connections.load(Relaxed))?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_http_active_connections",
            "Client connections to an L7 listener open now.",
            None,
            MetricType::Gauge,
        )?;
        for (name, m) in &self.listeners {
            gauge(&mut f, &labels(name), m.active())?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_http_connections_refused",
            "Client connections closed at once because the listener held max_connections.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &self.listeners {
            counter(&mut f, &labels(name), m.refused.load(Relaxed))?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_tls_handshakes",
            "TLS handshakes with clients, by result (ok, failed).",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &self.listeners {
            for (result, n) in [("ok", &m.handshakes_ok), ("failed", &m.handshakes_failed)] {
                let labels = [("listener", name.clone()), ("result", result.to_owned())];
                counter(&mut f, &labels, n.load(Relaxed))?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "lb_http_responses",
            "Responses an L7 listener sent to clients, by status class.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &self.listeners {
            by_class(&mut f, &labels(name), m.responses.sum())?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_http_bad_requests",
            "Requests answered 400 and closed before reaching a target: ambiguous framing or a malformed head.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &self.listeners {
            counter(&mut f, &labels(name), m.bad_requests.load(Relaxed))?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_http2_reset_floods",
            "HTTP/2 connections closed for resetting too many streams.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &self.listeners {
            counter(&mut f, &labels(name), m.reset_floods.load(Relaxed))?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_http_request_header_timeouts",
            "Connections answered 408 and closed: a request head did not arrive within request_header_timeout.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in &self.listeners {
            counter(&mut f, &labels(name), m.header_timeouts.load(Relaxed))?;
        }
        Ok(())
    }

    fn encode_rules(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let labels = |(listener, rule): &RuleKey| {
            [
                ("listener", listener.clone()),
                (
                    "rule",
                    rule.map_or_else(|| DEFAULT_RULE.to_owned(), |p| p.to_string()),
                ),
            ]
        };
        let mut f = encoder.encode_descriptor(
            "lb_http_requests",
            "Requests a listener's rule routed (rule=\"default\": the default action).",
            None,
            MetricType::Counter,
        )?;
        for (key, m) in &self.rules {
            counter(&mut f, &labels(key), m.requests.sum())?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_http_rule_responses",
            "Responses to the requests a rule routed, by status class.",
            None,
            MetricType::Counter,
        )?;
        for (key, m) in &self.rules {
            by_class(&mut f, &labels(key), m.responses.sum())?;
        }
        Ok(())
    }

    fn encode_targets(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let labels = |(group, target): &TargetKey| {
            [
                ("target_group", group.clone()),
                ("target", target.to_string()),
            ]
        };
        let mut f = encoder.encode_descriptor(
            "lb_http_target_requests",
            "Requests sent to a target: answered or timed out.",
            None,
            MetricType::Counter,
        )?;
        for (key, m) in &self.targets {
            counter(&mut f, &labels(key), m.requests.sum())?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_http_target_responses",
            "Responses a target sent, by status class.",
            None,
            MetricType::Counter,
        )?;
        for (key, m) in &self.targets {
            by_class(&mut f, &labels(key), m.responses.sum())?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_http_target_response",
            "Time from sending a request to a target to its response head.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (key, m) in &self.targets {
            let (buckets, count) = m.response_time.buckets();
            f.encode_family(&labels(key))?
                .encode_histogram::<NoLabelSet>(
                    m.response_time.sum_seconds(),
                    count,
                    &buckets,
                    None,
                )?;
        }
        let mut f = encoder.encode_descriptor(
            "lb_http_target_errors",
            "Requests a target did not answer, by kind: connect (the connection failed), timeout (no response head within response_timeout).",
            None,
            MetricType::Counter,
        )?;
        for (key, m) in &self.targets {
            for (kind, n) in [("connect", &m.connect_errors), ("timeout", &m.timeouts)] {
                let [group, target] = labels(key);
                let labels = [group, target, ("kind", kind.to_owned())];
                counter(&mut f, &labels, n.load(Relaxed))?;
            }
        }
        Ok(())
    }

    /// The workers' batched sends (`proxy::send_batch`), over every listener.
    fn encode_sends(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let send_batch::Totals {
            calls,
            sends,
            short,
        } = self.sends;
        for (name, help, n) in [
            (
                "lb_http_send_batches",
                "io_uring_enter calls in which a proxy worker sent what its connections wrote during one turn of its event loop.",
                calls,
            ),
            (
                "lb_http_batched_sends",
                "Sends those calls carried, one per connection with bytes to send; per call, the mean batch.",
                sends,
            ),
            (
                "lb_http_short_sends",
                "Batched sends the socket did not take whole; their connections sent the rest themselves when the socket had room.",
                short,
            ),
        ] {
            ConstCounter::new(n).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

/// One sample per status class, `labels` then `class`.
fn by_class<const N: usize>(
    family: &mut MetricEncoder,
    labels: &[Label; N],
    responses: [u64; 5],
) -> fmt::Result {
    for (class, n) in CLASSES.iter().zip(responses) {
        let labels: Vec<Label> = labels
            .iter()
            .cloned()
            .chain([("class", (*class).to_owned())])
            .collect();
        counter(family, &labels, n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `metrics` renders, with no batched sends (the workers' totals are the process's,
    /// which other tests add to).
    fn text(metrics: &ProxyMetrics) -> String {
        let mut out = String::new();
        metrics
            .render_with(&mut out, send_batch::Totals::default())
            .expect("render");
        out
    }

    /// The batched-send samples of no sends, which every rendering has.
    const NO_SENDS: [&str; 3] = [
        "lb_http_send_batches_total 0",
        "lb_http_batched_sends_total 0",
        "lb_http_short_sends_total 0",
    ];

    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn every_family_is_described_before_any_traffic() {
        let text = text(&ProxyMetrics::new());
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "lb_http_connections_total counter",
                "lb_http_active_connections gauge",
                "lb_http_connections_refused_total counter",
                "lb_tls_handshakes_total counter",
                "lb_http_responses_total counter",
                "lb_http_bad_requests_total counter",
                "lb_http2_reset_floods_total counter",
                "lb_http_request_header_timeouts_total counter",
                "lb_http_requests_total counter",
                "lb_http_rule_responses_total counter",
                "lb_http_target_requests_total counter",
                "lb_http_target_responses_total counter",
                "lb_http_target_response_seconds histogram",
                "lb_http_target_errors_total counter",
                "lb_http_send_batches_total counter",
                "lb_http_batched_sends_total counter",
                "lb_http_short_sends_total counter",
                "lb_access_log_dropped_total counter",
            ]
        );
        assert_eq!(text.matches("# HELP ").count(), types.len());
        let mut expected = NO_SENDS.to_vec();
        expected.push("lb_access_log_dropped_total 0");
        assert_eq!(samples(&text), expected, "{text}");
    }

    #[test]
    fn batched_sends_render_as_three_counters() {
        let mut out = String::new();
        let sends = send_batch::Totals {
            calls: 3,
            sends: 10,
            short: 1,
        };
        ProxyMetrics::new()
            .render_with(&mut out, sends)
            .expect("render");
        assert_eq!(
            samples(&out),
            [
                "lb_http_send_batches_total 3",
                "lb_http_batched_sends_total 10",
                "lb_http_short_sends_total 1",
                "lb_access_log_dropped_total 0",
            ],
            "{out}"
        );
    }

    #[test]
    fn listener_counters_render_as_exact_lines() {
        let metrics = ProxyMetrics::new();
        let web = metrics.listener("web");
        let _open = web.connection_opened();
        drop(web.connection_opened());
        web.connection_refused();
        web.tls_handshake(true);
        web.tls_handshake(true);
        web.tls_handshake(false);
        for status in [200, 204, 301, 404, 503, 503, 101, 0, 600] {
            web.response(status);
        }
        web.framing_rejected();
        web.h2_reset_flood();
        web.header_timeout();
        // The same series whoever asks.
        metrics.listener("web").connection_refused();
        let text = text(&metrics);
        let l = r#"listener="web""#;
        let expected = [
            format!("lb_http_connections_total{{{l}}} 2"),
            format!("lb_http_active_connections{{{l}}} 1"),
            format!("lb_http_connections_refused_total{{{l}}} 2"),
            format!(r#"lb_tls_handshakes_total{{{l},result="ok"}} 2"#),
            format!(r#"lb_tls_handshakes_total{{{l},result="failed"}} 1"#),
            format!(r#"lb_http_responses_total{{{l},class="1xx"}} 1"#),
            format!(r#"lb_http_responses_total{{{l},class="2xx"}} 2"#),
            format!(r#"lb_http_responses_total{{{l},class="3xx"}} 1"#),
            format!(r#"lb_http_responses_total{{{l},class="4xx"}} 1"#),
            format!(r#"lb_http_responses_total{{{l},class="5xx"}} 2"#),
            format!("lb_http_bad_requests_total{{{l}}} 1"),
            format!("lb_http2_reset_floods_total{{{l}}} 1"),
            format!("lb_http_request_header_timeouts_total{{{l}}} 1"),
        ]
        .into_iter()
        .chain(NO_SENDS.map(str::to_owned))
        .chain(["lb_access_log_dropped_total 0".to_owned()])
        .collect::<Vec<_>>();
        assert_eq!(samples(&text), expected, "{text}");
    }

    #[test]
    fn rule_counters_name_the_default_action() {
        let metrics = ProxyMetrics::new();
        metrics.rule("web", Some(10)).response(200);
        metrics.rule("web", Some(10)).response(502);
        metrics.rule("web", None).response(404);
        let text = text(&metrics);
        let samples = samples(&text);
        for line in [
            r#"lb_http_requests_total{listener="web",rule="default"} 1"#,
            r#"lb_http_requests_total{listener="web",rule="10"} 2"#,
            r#"lb_http_rule_responses_total{listener="web",rule="10",class="2xx"} 1"#,
            r#"lb_http_rule_responses_total{listener="web",rule="10",class="5xx"} 1"#,
            r#"lb_http_rule_responses_total{listener="web",rule="default",class="4xx"} 1"#,
            r#"lb_http_rule_responses_total{listener="web",rule="default",class="2xx"} 0"#,
        ] {
            assert!(samples.contains(&line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn counts_from_every_worker_add_up() {
        let metrics = ProxyMetrics::new();
        let target = metrics.target("api", addr("198.18.2.2:8080"));
        let rule = metrics.rule("web", Some(10));
        let listener = metrics.listener("web");
        let workers = super::super::workers::Workers::start(3).expect("workers");
        let (done, finished) = std::sync::mpsc::channel();
        workers.spawn_on_each(|index| {
            let (target, rule, listener, done) =
                (target.clone(), rule.clone(), listener.clone(), done.clone());
            async move {
                // Worker i answers 100 * (i + 1) requests.
                for _ in 0..100 * (index + 1) {
                    target.response(200, Duration::from_millis(3));
                    rule.response(200);
                    listener.response(200);
                }
                let _ = done.send(());
            }
        });
        for _ in 0..3 {
            finished
                .recv_timeout(Duration::from_secs(5))
                .expect("every worker counts");
        }
        let text = text(&metrics);
        let t = r#"target_group="api",target="198.18.2.2:8080""#;
        let samples = samples(&text);
        for line in [
            format!("lb_http_target_requests_total{{{t}}} 600"),
            format!(r#"lb_http_target_responses_total{{{t},class="2xx"}} 600"#),
            format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.005"}} 600"#),
            format!("lb_http_target_response_seconds_count{{{t}}} 600"),
            r#"lb_http_requests_total{listener="web",rule="10"} 600"#.to_owned(),
            r#"lb_http_responses_total{listener="web",class="2xx"} 600"#.to_owned(),
        ] {
            assert!(samples.contains(&line.as_str()), "{line}\n{text}");
        }
    }

    #[test]
    fn target_response_times_render_as_a_cumulative_histogram() {
        let metrics = ProxyMetrics::new();
        let target = metrics.target("api", addr("198.18.2.2:8080"));
        for millis in [1, 3, 3, 40, 2_000, 60_000] {
            target.response(200, Duration::from_millis(millis));
        }
        target.response(503, Duration::from_micros(500));
        target.connect_error();
        target.timeout();
        let text = text(&metrics);
        let t = r#"target_group="api",target="198.18.2.2:8080""#;
        let histogram: Vec<&str> = samples(&text)
            .into_iter()
            .filter(|l| l.starts_with("lb_http_target_response_seconds"))
            .collect();
        assert_eq!(
            histogram,
            [
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.001"}} 2"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.0025"}} 2"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.005"}} 4"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.01"}} 4"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.025"}} 4"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.05"}} 5"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.1"}} 5"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.25"}} 5"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="0.5"}} 5"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="1"}} 5"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="2.5"}} 6"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="5"}} 6"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="10"}} 6"#),
                format!(r#"lb_http_target_response_seconds_bucket{{{t},le="+Inf"}} 7"#),
                format!("lb_http_target_response_seconds_sum{{{t}}} 62.0475"),
                format!("lb_http_target_response_seconds_count{{{t}}} 7"),
            ],
            "{text}"
        );
        let samples = samples(&text);
        for line in [
            format!("lb_http_target_requests_total{{{t}}} 8"),
            format!(r#"lb_http_target_responses_total{{{t},class="2xx"}} 6"#),
            format!(r#"lb_http_target_responses_total{{{t},class="5xx"}} 1"#),
            format!(r#"lb_http_target_errors_total{{{t},kind="connect"}} 1"#),
            format!(r#"lb_http_target_errors_total{{{t},kind="timeout"}} 1"#),
        ] {
            assert!(samples.contains(&line.as_str()), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn the_active_gauge_falls_when_a_connection_guard_drops() {
        let metrics = ProxyMetrics::new();
        let web = metrics.listener("web");
        let first = web.connection_opened();
        let second = web.connection_opened();
        assert_eq!(web.active(), 2);
        drop(first);
        assert_eq!(web.active(), 1);
        // A guard may end on another thread than the one that opened it.
        std::thread::spawn(move || drop(second))
            .join()
            .expect("thread");
        assert_eq!(web.active(), 0);
        assert!(
            samples(&text(&metrics)).contains(&r#"lb_http_active_connections{listener="web"} 0"#)
        );
        assert!(
            samples(&text(&metrics)).contains(&r#"lb_http_connections_total{listener="web"} 2"#)
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = ProxyMetrics::new();
        metrics.listener("a\"b\\c\nd").connection_refused();
        metrics
            .target("g\"\n", addr("[fd00:198:18::2]:443"))
            .connect_error();
        let text = text(&metrics);
        let samples = samples(&text);
        assert!(
            samples.contains(&r#"lb_http_connections_refused_total{listener="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        assert!(
            samples.contains(
                &r#"lb_http_target_errors_total{target_group="g\"\n",target="[fd00:198:18::2]:443",kind="connect"} 1"#
            ),
            "{text}"
        );
        // Every sample stays on one line.
        assert!(samples.iter().all(|l| l.starts_with("lb_")), "{text}");
    }

    #[test]
    fn retain_forgets_removed_series_but_not_a_listener_with_open_connections() {
        let metrics = ProxyMetrics::new();
        let kept = addr("198.18.2.2:80");
        let gone = addr("198.18.2.3:80");
        metrics.listener("web").connection_refused();
        let _open = metrics.listener("draining").connection_opened();
        metrics.listener("old").connection_refused();
        metrics.rule("web", Some(10)).response(200);
        metrics.rule("web", Some(20)).response(200);
        metrics.target("g", kept).connect_error();
        metrics.target("g", gone).connect_error();
        metrics.retain(&["web"], &[("web", Some(10))], &[("g", kept)]);
        let text = text(&metrics);
        assert!(text.contains(r#"listener="web""#), "{text}");
        assert!(text.contains(r#"listener="draining""#), "{text}");
        assert!(!text.contains(r#"listener="old""#), "{text}");
        assert!(text.contains(r#"rule="10""#), "{text}");
        assert!(!text.contains(r#"rule="20""#), "{text}");
        assert!(text.contains("198.18.2.2:80"), "{text}");
        assert!(!text.contains("198.18.2.3:80"), "{text}");
        assert!(
            samples(&text).contains(&r#"lb_http_connections_refused_total{listener="web"} 1"#),
            "{text}"
        );
        // Forgotten, then created again: the series starts from zero.
        metrics.retain(&[], &[], &[]);
        assert_eq!(metrics.listener("web").refused.load(Relaxed), 0);
    }

    #[test]
    fn bucket_bounds_are_the_documented_seconds() {
        let (buckets, count) = Histogram::default().buckets();
        let bounds: Vec<f64> = buckets.iter().map(|(b, _)| *b).collect();
        assert_eq!(
            bounds,
            [
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
                10.0,
                f64::INFINITY
            ]
        );
        assert_eq!(count, 0);
    }
}
