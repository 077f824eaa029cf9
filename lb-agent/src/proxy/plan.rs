//! The proxy's plan: everything a request needs, immutable once built, swapped whole when
//! the agent's state changes (one `ArcSwap` load per request, never a lock): each L7
//! listener's compiled rules and TLS config, each group's client and the targets in service.
//!
//! Built by one task from the writer's snapshots. Rules and TLS configs are rebuilt only when
//! the config in force changes (a reload or an API change); a health-check result only
//! changes which targets serve, and a group's client (its connection pool) is kept as long
//! as its settings are.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use rustls::ServerConfig;

use super::{
    balance::{GroupTargets, LoadRegistry, ServingTarget},
    metrics::{ListenerMetrics, ProxyMetrics, RuleMetrics, TargetMetrics},
    rules::RuleTable,
    sticky::{self, StickyCookie, StickyKey},
    target_client::TargetClient,
    tls,
};
use crate::config::{
    Config, GroupProtocol, Listener, ListenerL7, ListenerProtocol, Stickiness, TargetGroup,
};

/// What the proxy serves now.
#[derive(Default)]
pub struct Plan {
    pub listeners: HashMap<String, Arc<ListenerPlan>>,
    pub groups: HashMap<String, Arc<GroupPlan>>,
}

/// One L7 listener.
pub struct ListenerPlan {
    pub name: Arc<str>,
    pub protocol: ListenerProtocol,
    pub address: SocketAddr,
    pub settings: ListenerL7,
    /// `settings.request_id_header`, parsed once.
    pub request_id_header: hyper::header::HeaderName,
    /// http and https listeners.
    pub rules: Option<RuleTable>,
    /// https and tls listeners.
    pub tls: Option<Arc<ServerConfig>>,
    /// tls listeners: the tcp group the bytes go to.
    pub tcp_group: Option<String>,
    pub metrics: Arc<ListenerMetrics>,
    /// By rule priority; `None`: the default action.
    pub rule_metrics: HashMap<Option<u32>, Arc<RuleMetrics>>,
}

impl ListenerPlan {
    /// The counters of `rule`.
    pub fn rule_metrics(&self, rule: Option<u32>) -> Option<&Arc<RuleMetrics>> {
        self.rule_metrics.get(&rule)
    }
}

/// One target group as the proxy uses it.
pub struct GroupPlan {
    pub name: Arc<str>,
    pub client: Arc<TargetClient>,
    pub targets: GroupTargets,
    /// lb_cookie or app_cookie stickiness.
    pub sticky: Option<GroupSticky>,
    pub response_timeout: Duration,
    /// Per target address.
    pub target_metrics: HashMap<SocketAddr, Arc<TargetMetrics>>,
}

/// A group's cookie stickiness, ready for the request path.
pub struct GroupSticky {
    /// The load balancer's cookie (`LBSTICKY-<group>`, or the companion `LBAPP-<group>`).
    pub cookie: StickyCookie,
    pub duration: Duration,
    /// app_cookie: the application's cookie, whose setting makes the companion be set.
    pub app_cookie: Option<String>,
}

impl GroupSticky {
    fn of(group: &TargetGroup) -> Option<Self> {
        match &group.stickiness {
            Some(Stickiness::LbCookie { duration }) => Some(Self {
                cookie: StickyCookie::new(sticky::lb_cookie_name(&group.name)),
                duration: *duration,
                app_cookie: None,
            }),
            Some(Stickiness::AppCookie {
                cookie_name,
                duration,
            }) => Some(Self {
                cookie: StickyCookie::new(sticky::app_cookie_companion_name(&group.name)),
                duration: *duration,
                app_cookie: Some(cookie_name.clone()),
            }),
            _ => None,
        }
    }
}

/// Builds plans, keeping what survives a rebuild: the config they were built from, the
/// listeners' compiled parts, the groups' clients and targets' loads.
pub struct PlanBuilder {
    config: Option<Arc<Config>>,
    listeners: HashMap<String, Arc<ListenerPlan>>,
    clients: HashMap<String, Arc<TargetClient>>,
    loads: LoadRegistry,
    sticky: Arc<StickyKey>,
    metrics: Arc<ProxyMetrics>,
    /// Proxy workers: each has its own pool of connections to each group's targets.
    workers: usize,
}

impl PlanBuilder {
    pub fn new(sticky: Arc<StickyKey>, metrics: Arc<ProxyMetrics>, workers: usize) -> Self {
        Self {
            workers,
            config: None,
            listeners: HashMap::new(),
            clients: HashMap::new(),
            loads: LoadRegistry::new(),
            sticky,
            metrics,
        }
    }

    /// The plan for `config` with `serving` (each group's targets in service, with weights).
    /// A listener whose TLS set-up fails now (a certificate file gone since the config was
    /// checked) keeps its previous plan, and the failure is logged.
    pub fn build(
        &mut self,
        config: &Arc<Config>,
        serving: &BTreeMap<String, Vec<(SocketAddr, u32)>>,
    ) -> Plan {
        let changed = !self
            .config
            .as_ref()
            .is_some_and(|old| Arc::ptr_eq(old, config));
        if changed {
            let mut listeners = HashMap::new();
            for l in config.listeners.iter().filter(|l| l.is_l7()) {
                match self.listener_plan(l) {
                    Ok(plan) => {
                        listeners.insert(l.name.clone(), Arc::new(plan));
                    }
                    Err(e) => {
                        tracing::error!(listener = l.name, error = %e, "the listener's new settings cannot be served; it keeps its previous ones");
                        if let Some(old) = self.listeners.get(&l.name) {
                            listeners.insert(l.name.clone(), old.clone());
                        }
                    }
                }
            }
            self.listeners = listeners;
            self.config = Some(config.clone());
        }
        let mut loads = self.loads.build();
        let mut groups = HashMap::new();
        let mut clients = HashMap::new();
        for g in config
            .target_groups
            .iter()
            .filter(|g| proxied_group(config, g))
        {
            let settings = g.l7();
            let client = match self.clients.get(&g.name) {
                Some(client) if client.fits(g.protocol, &settings) => client.clone(),
                _ => match TargetClient::new(g, settings.clone(), self.workers) {
                    Ok(client) => Arc::new(client),
                    Err(e) => {
                        tracing::error!(group = g.name, error = %e, "cannot build the group's client: its requests get 503");
                        continue;
                    }
                },
            };
            clients.insert(g.name.clone(), client.clone());
            let addresses = serving.get(&g.name).map(Vec::as_slice).unwrap_or_default();
            let targets = addresses
                .iter()
                .filter_map(|&(address, weight)| {
                    // A socket address always is an authority.
                    let authority = address.to_string().parse().ok()?;
                    Some((address, weight, authority))
                })
                .map(|(address, weight, authority)| ServingTarget {
                    authority,
                    address,
                    weight,
                    load: loads.load(&g.name, address),
                    token: self.sticky.token(&g.name, address).into(),
                })
                .collect();
            let target_metrics = addresses
                .iter()
                .map(|&(address, _)| (address, self.metrics.target(&g.name, address)))
                .collect();
            groups.insert(
                g.name.clone(),
                Arc::new(GroupPlan {
                    name: g.name.as_str().into(),
                    client,
                    targets: GroupTargets::new(settings.algorithm, targets),
                    sticky: GroupSticky::of(g),
                    response_timeout: settings.response_timeout,
                    target_metrics,
                }),
            );
        }
        drop(loads);
        self.clients = clients;
        Plan {
            listeners: self.listeners.clone(),
            groups,
        }
    }

    fn listener_plan(&self, l: &Listener) -> Result<ListenerPlan, String> {
        let settings = l.l7();
        let rules = match l.protocol {
            ListenerProtocol::Http | ListenerProtocol::Https => {
                Some(RuleTable::compile(l).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let tls = match l.protocol {
            ListenerProtocol::Https | ListenerProtocol::Tls => {
                Some(tls::listener_server_config(l).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let tcp_group = (l.protocol == ListenerProtocol::Tls)
            .then(|| l.forward_group().map(str::to_owned))
            .flatten();
        let mut rule_metrics: HashMap<Option<u32>, Arc<RuleMetrics>> = l
            .rules
            .iter()
            .map(|r| {
                (
                    Some(r.priority),
                    self.metrics.rule(&l.name, Some(r.priority)),
                )
            })
            .collect();
        rule_metrics.insert(None, self.metrics.rule(&l.name, None));
        let request_id_header =
            hyper::header::HeaderName::from_bytes(settings.request_id_header.as_bytes())
                .map_err(|e| format!("request_id_header: {e}"))?;
        Ok(ListenerPlan {
            request_id_header,
            name: l.name.as_str().into(),
            protocol: l.protocol,
            address: SocketAddr::new(l.address, l.port),
            settings,
            rules,
            tls,
            tcp_group,
            metrics: self.metrics.listener(&l.name),
            rule_metrics,
        })
    }
}

/// Whether the proxy sends traffic to `group`: an http/https group, or a tcp group a `tls`
/// listener forwards to.
fn proxied_group(config: &Config, group: &TargetGroup) -> bool {
    match group.protocol {
        GroupProtocol::Http | GroupProtocol::Https => true,
        GroupProtocol::Tcp => config.listeners.iter().any(|l| {
            l.protocol == ListenerProtocol::Tls && l.forward_group() == Some(group.name.as_str())
        }),
        _ => false,
    }
}
