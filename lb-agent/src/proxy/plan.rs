//! The proxy's plan: everything a request needs, immutable once built, swapped whole when
//! the agent's state changes (one `ArcSwap` load per request, never a lock): each L7
//! listener's compiled rules and TLS config, each group's client and the targets in service.
//!
//! Built by one task from the writer's snapshots. A listener's rules and TLS config are
//! rebuilt only when its definition or its certificate and key files' contents change (a reload or an
//! API change touching it): a change elsewhere (targets, another listener) leaves its TLS
//! session cache and compiled rules in place. A health-check result only changes which
//! targets serve, and a group's client (its connection pool) is kept as long as its
//! settings are.

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

/// A map the request path reads, keyed by what the configuration names (listeners, groups,
/// rules, target addresses): hashed with foldhash, several times cheaper than the standard
/// SipHash. Its keys are not chosen by clients, so SipHash's defence against chosen
/// collisions buys nothing here.
pub type ConfigMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the proxy serves now.
#[derive(Default)]
pub struct Plan {
    pub listeners: ConfigMap<String, Arc<ListenerPlan>>,
    pub groups: ConfigMap<String, Arc<GroupPlan>>,
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
    pub rule_metrics: ConfigMap<Option<u32>, Arc<RuleMetrics>>,
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
    pub target_metrics: ConfigMap<SocketAddr, Arc<TargetMetrics>>,
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
    listeners: ConfigMap<String, Arc<ListenerPlan>>,
    /// What each listener's plan was built from.
    built_from: HashMap<String, ListenerSource>,
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
            listeners: ConfigMap::default(),
            built_from: HashMap::new(),
            clients: HashMap::new(),
            loads: LoadRegistry::new(),
            sticky,
            metrics,
        }
    }

    /// The requests in progress per (group, target).
    pub fn in_flight(&self) -> Arc<super::balance::InFlight> {
        self.loads.in_flight()
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
            let mut listeners = ConfigMap::default();
            let mut built_from = HashMap::new();
            for l in config.listeners.iter().filter(|l| l.is_l7()) {
                let source = ListenerSource::of(l);
                if let Some(old) = self.listeners.get(&l.name)
                    && self.built_from.get(&l.name) == Some(&source)
                {
                    listeners.insert(l.name.clone(), old.clone());
                    built_from.insert(l.name.clone(), source);
                    continue;
                }
                match self.listener_plan(l) {
                    Ok(plan) => {
                        listeners.insert(l.name.clone(), Arc::new(plan));
                        built_from.insert(l.name.clone(), source);
                    }
                    Err(e) => {
                        tracing::error!(listener = l.name, error = %e, "the listener's new settings cannot be served; it keeps its previous ones");
                        if let Some(old) = self.listeners.get(&l.name) {
                            listeners.insert(l.name.clone(), old.clone());
                            if let Some(source) = self.built_from.get(&l.name) {
                                built_from.insert(l.name.clone(), source.clone());
                            }
                        }
                    }
                }
            }
            self.listeners = listeners;
            self.built_from = built_from;
            self.config = Some(config.clone());
        }
        let mut loads = self.loads.build();
        let mut groups = ConfigMap::default();
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
        let mut rule_metrics: ConfigMap<Option<u32>, Arc<RuleMetrics>> = l
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

/// What a listener's plan is built from: its definition and the contents of the files its
/// certificates are read from (a digest: the key's bytes are not kept twice).
#[derive(Clone, PartialEq)]
struct ListenerSource {
    listener: Listener,
    /// SHA-256 of each certificate and key file; `None`: unreadable.
    files: Vec<Option<[u8; 32]>>,
}

impl ListenerSource {
    fn of(listener: &Listener) -> Self {
        let digest = |path: &std::path::Path| {
            let bytes = std::fs::read(path).ok()?;
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            digest.as_ref().try_into().ok()
        };
        Self {
            listener: listener.clone(),
            files: listener
                .certificates
                .iter()
                .flat_map(|c| [digest(&c.cert), digest(&c.key)])
                .collect(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with an https listener on `cert`/`key` and a group of `targets` (ports of
    /// 198.18.0.21).
    fn config(dir: &std::path::Path, targets: &[u16]) -> Arc<Config> {
        let targets: Vec<String> = targets
            .iter()
            .map(|port| format!("{{ address = \"198.18.0.21\", port = {port} }}"))
            .collect();
        let text = format!(
            "[agent]\ninterface = \"eth0\"\n\n\
             [[target_group]]\nname = \"web\"\nprotocol = \"http\"\nport = 80\ntargets = [{}]\n\n\
             [[listener]]\nname = \"web-tls\"\naddress = \"198.18.1.100\"\nport = 443\n\
             protocol = \"https\"\ndefault_action = {{ forward = \"web\" }}\n\
             certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            targets.join(", "),
            dir.join("a.crt").display(),
            dir.join("a.key").display(),
        );
        Arc::new(Config::parse(&text, "test.toml").expect("a valid config"))
    }

    fn write_certificate(dir: &std::path::Path) {
        let issued = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        std::fs::write(dir.join("a.crt"), issued.cert.pem()).unwrap();
        std::fs::write(dir.join("a.key"), issued.key_pair.serialize_pem()).unwrap();
    }

    #[test]
    fn a_listener_is_rebuilt_only_when_its_definition_or_certificate_files_change() {
        let dir = std::env::temp_dir().join(format!("lb-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_certificate(&dir);
        let mut builder = PlanBuilder::new(
            Arc::new(StickyKey::from_bytes(&[7; sticky::KEY_BYTES])),
            Arc::new(ProxyMetrics::default()),
            1,
        );
        let serving = BTreeMap::new();
        let first = builder.build(&config(&dir, &[80]), &serving);
        let listener = |plan: &Plan| plan.listeners["web-tls"].clone();

        // Another config (a target added), the same listener and files: the same plan.
        let second = builder.build(&config(&dir, &[80, 81]), &serving);
        assert!(Arc::ptr_eq(&listener(&first), &listener(&second)));

        // The certificate replaced: rebuilt (its new TLS config serves new connections).
        write_certificate(&dir);
        let third = builder.build(&config(&dir, &[80, 81]), &serving);
        assert!(!Arc::ptr_eq(&listener(&second), &listener(&third)));

        // The listener's own settings changed: rebuilt.
        let changed = {
            let mut c = (*config(&dir, &[80, 81])).clone();
            c.listeners[0].idle_timeout = Some(Duration::from_secs(30));
            Arc::new(c)
        };
        let fourth = builder.build(&changed, &serving);
        assert!(!Arc::ptr_eq(&listener(&third), &listener(&fourth)));
        assert_eq!(
            listener(&fourth).settings.idle_timeout,
            Duration::from_secs(30)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
