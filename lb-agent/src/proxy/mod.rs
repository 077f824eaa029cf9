//! The L7 proxy (HTTP, HTTPS and TLS listeners): the agent serves these itself, on the
//! traffic the XDP program passes up for their VIPs and ports.
//!
//! `Proxy` is fed the config in force and each group's targets in service after every change
//! (from the writer's snapshots); it builds a `plan` (immutable: compiled rules, TLS configs,
//! groups' clients and targets), swaps it in atomically, and starts or stops the listeners'
//! servers (`server`). A request (`forward`) reads the plan once, without a lock.
//!
//! The pure parts, each unit-tested without sockets: `pattern` (ALB wildcards), `rules` (a
//! listener's rules compiled into a table that routes a request to an action), `redirect`
//! (redirect actions into `Location` values), `weighted` (choosing among weighted target
//! groups), `balance` (a target within a group), `sticky` (stickiness cookies), `tls`
//! (certificates from PEM files, the SNI resolver, server configs), `tls_policy` (named
//! security policies), `answer` (the proxy's own responses), `check` (a config's L7 checks).
//! The rest: `target_client` (pooled connections to targets), `tls_forward` (tls listeners'
//! bytes to a tcp group), `access_log`, `metrics`.

pub mod access_log;
pub mod answer;
pub mod balance;
pub mod body;
pub mod check;
pub mod forward;
pub mod framing;
pub mod metrics;
pub mod pattern;
pub mod plan;
pub mod redirect;
pub mod rules;
pub mod send_batch;
pub mod server;
pub mod sticky;
pub mod target_client;
pub mod tls;
pub mod tls_forward;
pub mod tls_policy;
pub mod vip;
pub mod weighted;
pub mod workers;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

pub use check::{check, problems};
use plan::{Plan, PlanBuilder};

use crate::config::{AccessLogConfig, Config, ListenerProtocol};
use access_log::AccessLog;
use metrics::ProxyMetrics;
use sticky::StickyKey;

/// What every connection and request of the proxy reads.
pub struct Shared {
    pub plan: ArcSwap<Plan>,
    pub access_log: ArcSwapOption<AccessLog>,
    /// Signs stickiness cookies.
    pub sticky: Arc<StickyKey>,
    /// The connections each worker serves: a new one goes to the least loaded.
    pub workers: Arc<workers::Spread>,
}

/// A running listener server.
struct Running {
    address: SocketAddr,
    protocol: ListenerProtocol,
    stop: watch::Sender<bool>,
}

/// The proxy: its plan, its listeners' servers, its access log.
pub struct Proxy {
    shared: Arc<Shared>,
    builder: PlanBuilder,
    servers: HashMap<String, Running>,
    access_log_config: Option<AccessLogConfig>,
    metrics: Arc<ProxyMetrics>,
    workers: workers::Workers,
    /// The config the last update served (its VIPs' routes and counters follow it).
    config: Option<Arc<Config>>,
}

impl Proxy {
    /// A proxy serving nothing yet, on `workers` threads. `sticky` signs the stickiness
    /// cookies.
    pub fn new(
        sticky: Arc<StickyKey>,
        metrics: Arc<ProxyMetrics>,
        workers: usize,
    ) -> std::io::Result<Self> {
        let workers = workers::Workers::start(workers)?;
        Ok(Self {
            shared: Arc::new(Shared {
                plan: ArcSwap::from_pointee(Plan::default()),
                access_log: ArcSwapOption::empty(),
                sticky: sticky.clone(),
                workers: workers.spread(),
            }),
            builder: PlanBuilder::new(sticky, metrics.clone(), workers.len()),
            servers: HashMap::new(),
            access_log_config: None,
            metrics,
            workers,
            config: None,
        })
    }

    /// The requests in progress on each (group, target), targets no longer served included:
    /// what an instance must finish before it stops.
    pub fn in_flight(&self) -> Arc<balance::InFlight> {
        self.builder.in_flight()
    }

    /// Serves `config` with `serving` (each group's targets in service): a new plan, the
    /// access log reopened if its settings changed, listeners started and stopped. Must run
    /// inside the tokio runtime.
    pub fn update(
        &mut self,
        config: &Arc<Config>,
        serving: &BTreeMap<String, Vec<(SocketAddr, u32)>>,
    ) {
        let changed = !self
            .config
            .as_ref()
            .is_some_and(|old| Arc::ptr_eq(old, config));
        if changed {
            // Before the listeners bind, so a new VIP answers as soon as its server does.
            match vip::sync_for(config) {
                Ok(changes) if !changes.is_empty() => {
                    tracing::info!(?changes, "local routes of the L7 VIPs updated")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot route the L7 VIPs to this node: their listeners get no traffic")
                }
            }
        }
        let plan = self.builder.build(config, serving);
        if changed {
            self.forget_removed_series(config, &plan);
        }
        self.shared.plan.store(Arc::new(plan));
        self.config = Some(config.clone());
        if config.agent.access_log != self.access_log_config {
            match &config.agent.access_log {
                None => self.shared.access_log.store(None),
                Some(settings) => match AccessLog::open(settings) {
                    Ok(log) => {
                        self.metrics.watch_access_log(Some(&log));
                        self.shared.access_log.store(Some(Arc::new(log)));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot open the access log; requests are not logged")
                    }
                },
            }
            self.access_log_config = config.agent.access_log.clone();
        }
        self.sync_servers(config);
    }

    /// Drops the counters of listeners, rules and targets the config no longer has.
    fn forget_removed_series(&self, config: &Config, plan: &Plan) {
        let listeners: Vec<&str> = plan.listeners.keys().map(String::as_str).collect();
        let rules: Vec<(&str, Option<u32>)> = plan
            .listeners
            .iter()
            .flat_map(|(name, l)| l.rule_metrics.keys().map(move |r| (name.as_str(), *r)))
            .collect();
        // Every registered target, in service or not (an unhealthy one keeps its history).
        let targets: Vec<(&str, SocketAddr)> = config
            .target_groups
            .iter()
            .flat_map(|g| {
                g.targets.iter().filter_map(move |t| {
                    t.port_in(g)
                        .map(|port| (g.name.as_str(), SocketAddr::new(t.address, port)))
                })
            })
            .collect();
        self.metrics.retain(&listeners, &rules, &targets);
    }

    /// Starts a server for each L7 listener without one, restarts those whose address or
    /// protocol changed, stops those gone.
    fn sync_servers(&mut self, config: &Config) {
        let wanted: HashMap<&str, (SocketAddr, ListenerProtocol)> = config
            .listeners
            .iter()
            .filter(|l| l.is_l7())
            .map(|l| {
                (
                    l.name.as_str(),
                    (SocketAddr::new(l.address, l.port), l.protocol),
                )
            })
            .collect();
        self.servers.retain(|name, running| {
            let keep = wanted.get(name.as_str()) == Some(&(running.address, running.protocol));
            if !keep {
                let _ = running.stop.send(true);
                tracing::info!(listener = name, address = %running.address, "listener stopped");
            }
            keep
        });
        for (name, (address, protocol)) in wanted {
            if self.servers.contains_key(name) {
                continue;
            }
            // A socket per worker, all bound before any serves: a failure leaves none.
            let sockets: Result<Vec<_>, _> = (0..self.workers.len())
                .map(|_| vip::bind_listener(address))
                .collect();
            let mut sockets = match sockets {
                Ok(sockets) => sockets,
                Err(e) => {
                    tracing::error!(listener = name, %address, error = %e, "cannot listen: the listener does not serve");
                    continue;
                }
            };
            let (stop, stopped) = watch::channel(false);
            let active = Arc::new(std::sync::atomic::AtomicU32::new(0));
            self.workers.spawn_on_each(|_| {
                let socket = sockets.pop();
                let (name, shared, stopped, active) = (
                    name.to_owned(),
                    self.shared.clone(),
                    stopped.clone(),
                    active.clone(),
                );
                async move {
                    let listener = socket.map(tokio::net::TcpListener::from_std);
                    match listener {
                        Some(Ok(listener)) => {
                            server::accept_loop(listener, name, shared, active, stopped).await
                        }
                        Some(Err(e)) => {
                            tracing::error!(listener = name, error = %e, "cannot listen on a worker")
                        }
                        None => {}
                    }
                }
            });
            tracing::info!(listener = name, %address, protocol = protocol.as_str(), "listener serving");
            self.servers.insert(
                name.to_owned(),
                Running {
                    address,
                    protocol,
                    stop,
                },
            );
        }
    }

    /// Stops every listener (open connections are asked to finish).
    pub fn shutdown(&mut self) {
        for (_, running) in self.servers.drain() {
            let _ = running.stop.send(true);
        }
    }
}
