//! The running agent as its API and its health checks see it: writes go to the one `writer`
//! (in order, on a channel), reads are answered from the last published snapshot and the data
//! plane's counters, without waiting for the writer. `monitor` runs the health checks.

pub mod auto_scaling;
pub mod instance_links;
pub mod monitor;
pub mod reply_watch;
pub mod sweeper;
pub mod writer;

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    config::Config,
    dataplane::MapReader,
    protocol::{
        Answer, ApiError, ConfigFile, ConfigProblem, InterfaceView, ListenerSettings, Request,
        RulesView, StatusView, Validation, launch_templates,
    },
    proxy::metrics::ProxyMetrics,
};
use reply_watch::{ReplyWatch, Sample};
pub use writer::{Change, ConfigSource, Node, Snapshot, Writer};

/// What does not change while the agent runs.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub started: SystemTime,
    pub pin_dir: Option<String>,
    pub adopted: bool,
    pub interfaces: Vec<InterfaceView>,
}

/// A handle on the running agent: cheap to clone, one per API connection or check task.
#[derive(Clone)]
pub struct Handle {
    changes: mpsc::UnboundedSender<Change>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    reader: Arc<dyn MapReader + Send + Sync>,
    info: Arc<AgentInfo>,
    /// Recent verdict counters, for the symptom of unanswered forwarding.
    replies: Arc<ReplyWatch>,
    /// The L7 proxy's counters, shown after the data plane's in `/metrics`.
    proxy_metrics: Option<Arc<ProxyMetrics>>,
    /// The auto scaling groups, once they run.
    scaling: Arc<std::sync::OnceLock<auto_scaling::ScalingHandle>>,
}

impl Handle {
    pub fn new(
        changes: mpsc::UnboundedSender<Change>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        reader: Arc<dyn MapReader + Send + Sync>,
        info: AgentInfo,
    ) -> Self {
        Self {
            changes,
            snapshots,
            reader,
            info: Arc::new(info),
            replies: Arc::new(ReplyWatch::default()),
            proxy_metrics: None,
            scaling: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// `/metrics` shows the proxy's counters too.
    #[must_use]
    pub fn with_proxy_metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.proxy_metrics = Some(metrics);
        self
    }

    /// Samples the verdict counters for `status`'s warnings, if a sample is due (at most one
    /// a second: a read of one small per-CPU array). Called from the monitor's tick.
    pub fn watch_replies(&self) {
        sample_replies(self.reader.as_ref(), &self.replies);
    }

    /// The state as of the last change.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Hands a change to the writer (fire and forget); false if the writer is gone.
    pub fn send(&self, change: Change) -> bool {
        self.changes.send(change).is_ok()
    }

    /// Hands the `asg` requests to the auto scaling groups (once; every clone sees them).
    pub fn serve_scaling(&self, scaling: auto_scaling::ScalingHandle) {
        let _ = self.scaling.set(scaling);
    }

    /// Answers a request: a write through the writer, a read from the snapshot, an `asg`
    /// request by the auto scaling groups.
    pub async fn call(&self, request: Request, if_match: Option<u64>) -> Result<Answer, ApiError> {
        if request.is_scaling() {
            return match self.scaling.get() {
                Some(scaling) => scaling.call(request).await,
                None => Err(ApiError::new(
                    503,
                    "the auto scaling groups are not running in this agent",
                )),
            };
        }
        if request.writes() {
            let (reply, answer) = oneshot::channel();
            let sent = self.send(Change::Request {
                request,
                if_match,
                reply,
            });
            if !sent {
                return Err(ApiError::new(503, "the agent is stopping"));
            }
            return answer
                .await
                .unwrap_or_else(|_| Err(ApiError::new(503, "the agent is stopping")));
        }
        let (snapshot, reader, info) = (self.snapshot(), self.reader.clone(), self.info.clone());
        let replies = self.replies.clone();
        // Map reads are system calls (a connection-table walk may take tens of ms).
        tokio::task::spawn_blocking(move || {
            read(&snapshot, reader.as_ref(), &info, &replies, request)
        })
        .await
        .unwrap_or_else(|e| Err(ApiError::new(500, format!("internal error: {e}"))))
    }

    /// The Prometheus text of the current state and counters.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let (snapshot, reader, info) = (self.snapshot(), self.reader.clone(), self.info.clone());
        let proxy = self.proxy_metrics.clone();
        let scaling = self.scaling.get().map(auto_scaling::ScalingHandle::views);
        tokio::task::spawn_blocking(move || {
            let stats = snapshot.state.stats(reader.as_ref()).map_err(internal)?;
            let groups = snapshot.state.groups();
            let mut text = crate::metrics::render(&crate::metrics::MetricsInput {
                stats: &stats,
                groups: &groups,
                started: info.started,
                config_version: snapshot.version,
            })
            .map_err(internal)?;
            if let Some(proxy) = proxy {
                append_proxy_metrics(&mut text, &proxy).map_err(internal)?;
            }
            if let Some(views) = scaling {
                append_before_eof(&mut text, |t| auto_scaling::metrics::render(views, t))
                    .map_err(internal)?;
            }
            Ok(text)
        })
        .await
        .unwrap_or_else(|e| Err(ApiError::new(500, format!("internal error: {e}"))))
    }

    /// The state version (for `ETag`).
    pub fn version(&self) -> u64 {
        self.snapshots.borrow().version
    }
}

/// Records a sample of `reader`'s verdict counters in `replies` if one is due; a failed read
/// is skipped (the next tick tries again).
fn sample_replies(reader: &dyn MapReader, replies: &ReplyWatch) {
    let now = Instant::now();
    if !replies.due(now) {
        return;
    }
    match reader.verdicts() {
        Ok(verdicts) => replies.record(Sample::of(&verdicts, now)),
        Err(e) => tracing::debug!(error = %e, "reading the verdict counters failed"),
    }
}

/// Appends the proxy's families to the data plane's `text`, keeping an end marker (`# EOF`,
/// should the format ever be OpenMetrics) at the very end.
fn append_proxy_metrics(
    text: &mut String,
    proxy: &ProxyMetrics,
) -> Result<(), crate::metrics::MetricsError> {
    append_before_eof(text, |t| proxy.render(t))
}

/// Appends what `render` writes to `text`, before its end marker if it has one.
fn append_before_eof(
    text: &mut String,
    render: impl FnOnce(&mut String) -> Result<(), crate::metrics::MetricsError>,
) -> Result<(), crate::metrics::MetricsError> {
    const EOF: &str = "# EOF\n";
    let ended = text.ends_with(EOF);
    if ended {
        text.truncate(text.len() - EOF.len());
    }
    render(text)?;
    if ended {
        text.push_str(EOF);
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, e.to_string())
}

/// Answers a read request from `snapshot` and the data plane's counters.
fn read(
    snapshot: &Snapshot,
    reader: &dyn MapReader,
    info: &AgentInfo,
    replies: &ReplyWatch,
    request: Request,
) -> Result<Answer, ApiError> {
    let state = &snapshot.state;
    let not_found = |e: crate::state::StateError| match e {
        crate::state::StateError::NoGroup(_) => ApiError::new(404, e.to_string()),
        e => internal(e),
    };
    Ok(match request {
        Request::TargetsList { group } => {
            Answer::Targets(state.targets(reader, group.as_deref()).map_err(not_found)?)
        }
        Request::Groups => Answer::Groups(state.groups()),
        Request::Stats => {
            let mut stats = state.stats(reader).map_err(internal)?;
            ListenerSettings::fill(&mut stats.listeners, &snapshot.config);
            Answer::Stats(stats)
        }
        Request::Flows { limit } => {
            let mut flows = state.flows(reader).map_err(internal)?;
            flows.truncate(match limit {
                None => crate::protocol::DEFAULT_FLOWS_LIMIT,
                Some(0) => usize::MAX,
                Some(n) => n,
            });
            Answer::Flows(flows)
        }
        Request::Listeners => {
            let mut listeners = state.stats(reader).map_err(internal)?.listeners;
            ListenerSettings::fill(&mut listeners, &snapshot.config);
            Answer::Listeners(listeners)
        }
        Request::RulesList { listener } => Answer::Rules(RulesView::of(
            &snapshot.config,
            &snapshot.overrides,
            &listener,
        )?),
        Request::OverridesList => Answer::Overrides(snapshot.overrides.clone()),
        Request::LaunchTemplatesList => {
            Answer::LaunchTemplates(launch_templates::list(&snapshot.config))
        }
        Request::LaunchTemplatesDescribe { name } => {
            Answer::LaunchTemplate(launch_templates::describe(&snapshot.config, &name)?)
        }
        Request::Status => {
            let mut stats = state.stats(reader).map_err(internal)?;
            ListenerSettings::fill(&mut stats.listeners, &snapshot.config);
            sample_replies(reader, replies);
            Answer::Status(StatusView {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
                uptime_seconds: info.started.elapsed().unwrap_or_default().as_secs(),
                config: snapshot
                    .source
                    .as_ref()
                    .map(|s| s.path.display().to_string()),
                state_file: snapshot
                    .source
                    .as_ref()
                    .map(|s| s.state_file.display().to_string()),
                overrides: snapshot.overrides.len(),
                pin_dir: info.pin_dir.clone(),
                adopted: info.adopted,
                interfaces: info.interfaces.clone(),
                listeners: stats.listeners,
                groups: state.groups(),
                flows: stats.flows,
                active_flows: stats.active_flows,
                health_transitions: stats.health_transitions,
                warnings: replies.warnings(),
            })
        }
        Request::ConfigGet => {
            let source = snapshot
                .source
                .as_ref()
                .ok_or_else(|| ApiError::new(404, "this agent runs no config file"))?;
            let text = std::fs::read_to_string(&source.path).map_err(|e| {
                ApiError::new(500, format!("reading {}: {e}", source.path.display()))
            })?;
            Answer::ConfigFile(ConfigFile {
                path: source.path.display().to_string(),
                text,
                state_file: source.state_file.display().to_string(),
                overrides: snapshot.overrides.len(),
            })
        }
        Request::ConfigValidate { text } => {
            let name = snapshot
                .source
                .as_ref()
                .map_or_else(|| "config".to_owned(), |s| s.path.display().to_string());
            Answer::Validation(match Config::parse(&text, &name) {
                Ok(config) => {
                    // What only the proxy can check (rules, certificate files, policies),
                    // auto scaling's alarms and schedules, and what a reload could not
                    // change of the config in force (launch template versions).
                    let errors: Vec<ConfigProblem> = crate::proxy::problems(&config)
                        .into_iter()
                        .chain(crate::scaling::problems(&config))
                        .chain(snapshot.config.immutable_changes(&config))
                        .map(|(field, message)| ConfigProblem {
                            line: 0,
                            column: 0,
                            field,
                            message,
                        })
                        .collect();
                    Validation {
                        valid: errors.is_empty(),
                        errors,
                    }
                }
                Err(errors) => Validation {
                    valid: false,
                    errors: errors
                        .0
                        .iter()
                        .map(|e| ConfigProblem {
                            line: e.line,
                            column: e.column,
                            field: e.field.clone(),
                            message: e.message.clone(),
                        })
                        .collect(),
                },
            })
        }
        write => {
            return Err(ApiError::new(
                500,
                format!("internal error: {:?} is a change, not a read", write.kind()),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use lb_common::{Flow, FlowKey};

    use super::*;
    use crate::{
        config::fixture::ConfigFile,
        dataplane::memory::MemoryMaps,
        overrides::Overrides,
        state::{Ids, State},
    };

    /// A snapshot of the fixture's config (one listener), and maps holding `flows` flows.
    fn with_flows(flows: u16) -> (Snapshot, MemoryMaps) {
        let config = Config::parse(&ConfigFile::good().text(), "t.toml").expect("config");
        let mut maps = MemoryMaps::new(251, 8);
        let snat = config.agent.snat_addresses.clone();
        let state = State::apply(&config, &snat, &mut maps, &Ids::default(), Instant::now())
            .expect("state");
        maps.flows = (0..flows)
            .map(|port| {
                let key = FlowKey {
                    sport: port.to_be(),
                    ..FlowKey::default()
                };
                (key, Flow::default())
            })
            .collect();
        let snapshot = Snapshot {
            state,
            version: 1,
            overrides: Overrides::default(),
            source: None,
            config: std::sync::Arc::new(config),
        };
        (snapshot, maps)
    }

    fn flows(snapshot: &Snapshot, maps: &MemoryMaps, limit: Option<usize>) -> usize {
        let info = AgentInfo {
            started: SystemTime::now(),
            pin_dir: None,
            adopted: false,
            interfaces: Vec::new(),
        };
        match read(
            snapshot,
            maps,
            &info,
            &ReplyWatch::default(),
            Request::Flows { limit },
        ) {
            Ok(Answer::Flows(list)) => list.len(),
            other => panic!("{other:?}"),
        }
    }

    /// A handle on the fixture's state, answering from `maps`.
    fn handle(snapshot: Snapshot, maps: MemoryMaps) -> Handle {
        let (changes, _) = mpsc::unbounded_channel();
        let (_, snapshots) = watch::channel(Arc::new(snapshot));
        let info = AgentInfo {
            started: SystemTime::now(),
            pin_dir: None,
            adopted: false,
            interfaces: Vec::new(),
        };
        Handle::new(changes, snapshots, Arc::new(maps), info)
    }

    #[tokio::test]
    async fn metrics_show_the_proxy_series_when_the_proxy_metrics_are_attached() {
        let (snapshot, maps) = with_flows(0);
        let proxy = crate::proxy::metrics::ProxyMetrics::new();
        let web = proxy.listener("web");
        let _open = web.connection_opened();
        proxy.rule("web", Some(10)).response(200);
        let agent = handle(snapshot, maps).with_proxy_metrics(proxy.clone());
        let text = agent.metrics().await.expect("metrics");
        // The data plane's families first, then the proxy's, live.
        let l4 = text
            .find("# TYPE lb_listener_packets_total")
            .expect("L4 families");
        let l7 = text
            .find("# TYPE lb_http_connections_total")
            .expect("L7 families");
        assert!(l4 < l7, "{text}");
        for line in [
            r#"lb_http_active_connections{listener="web"} 1"#,
            r#"lb_http_requests_total{listener="web",rule="10"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        proxy.rule("web", Some(10)).response(200);
        let text = agent.metrics().await.expect("metrics");
        assert!(
            text.lines()
                .any(|l| l == r#"lb_http_requests_total{listener="web",rule="10"} 2"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn launch_templates_are_read_from_the_config_in_force() {
        let (snapshot, maps) = with_flows(0);
        let agent = handle(snapshot, maps);
        match agent.call(Request::LaunchTemplatesList, None).await {
            Ok(Answer::LaunchTemplates(list)) => assert!(list.is_empty(), "{list:?}"),
            other => panic!("{other:?}"),
        }
        let missing = Request::LaunchTemplatesDescribe { name: "web".into() };
        let e = agent.call(missing, None).await.expect_err("no template");
        assert_eq!(e.status, 404, "{}", e.message);
    }

    #[tokio::test]
    async fn metrics_without_a_proxy_show_no_proxy_series() {
        let (snapshot, maps) = with_flows(0);
        let text = handle(snapshot, maps).metrics().await.expect("metrics");
        assert!(text.contains("lb_listener_packets_total"), "{text}");
        assert!(!text.contains("lb_http_"), "{text}");
    }

    #[test]
    fn proxy_series_go_before_an_end_marker() {
        let proxy = crate::proxy::metrics::ProxyMetrics::new();
        proxy.listener("web").connection_refused();
        let mut text = "lb_agent_config_version 7\n# EOF\n".to_owned();
        append_proxy_metrics(&mut text, &proxy).expect("render");
        assert!(
            text.starts_with("lb_agent_config_version 7\n# HELP "),
            "{text}"
        );
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        let mut plain = "lb_agent_config_version 7\n".to_owned();
        append_proxy_metrics(&mut plain, &proxy).expect("render");
        assert!(!plain.contains("# EOF"), "{plain}");
    }

    #[test]
    fn flows_answer_a_thousand_unless_asked_for_more_or_all() {
        let (snapshot, maps) = with_flows(1500);
        assert_eq!(
            flows(&snapshot, &maps, None),
            crate::protocol::DEFAULT_FLOWS_LIMIT
        );
        assert_eq!(flows(&snapshot, &maps, Some(1200)), 1200);
        assert_eq!(flows(&snapshot, &maps, Some(0)), 1500);
        assert_eq!(flows(&snapshot, &maps, Some(5)), 5);
    }
}
