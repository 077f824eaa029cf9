//! The route table: every endpoint's method and path, written once. `Request::to_http` and
//! `Endpoint::from_http` both go through it, so client and server cannot disagree; the served
//! `openapi.json` documents the same list (a test holds them together).

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::{ApiError, Request};
use crate::config::{HealthCheck, Rule};

/// What an endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Status,
    Listeners,
    RulesList,
    RulesAdd,
    RulesRemove,
    RulesSetPriority,
    Groups,
    HealthCheckSet,
    TargetsList,
    TargetsAdd,
    TargetsWeight,
    TargetsRemove,
    Stats,
    Flows,
    OverridesList,
    OverridesClear,
    ConfigGet,
    ConfigValidate,
    ConfigApply,
    Reload,
    Detach,
    AsgList,
    AsgDescribe,
    AsgActivities,
    AsgSetDesired,
    AsgTerminateInstance,
    AsgSetProtection,
    AsgStartRefresh,
    AsgCancelRefresh,
    AsgSuspend,
    AsgResume,
    AsgCompleteLifecycleAction,
    AsgRecordHeartbeat,
    LaunchTemplatesList,
    LaunchTemplatesDescribe,
    /// Prometheus text, not a JSON answer.
    Metrics,
    /// This API's OpenAPI document.
    OpenApi,
}

/// One endpoint: method, path (`{name}` is a path parameter), and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub kind: Kind,
}

const fn route(method: &'static str, path: &'static str, kind: Kind) -> Route {
    Route { method, path, kind }
}

/// Every endpoint.
pub const ROUTES: &[Route] = &[
    route("GET", "/v1/status", Kind::Status),
    route("GET", "/v1/listeners", Kind::Listeners),
    route("GET", "/v1/listeners/{listener}/rules", Kind::RulesList),
    route("POST", "/v1/listeners/{listener}/rules", Kind::RulesAdd),
    route(
        "DELETE",
        "/v1/listeners/{listener}/rules/{priority}",
        Kind::RulesRemove,
    ),
    route(
        "PUT",
        "/v1/listeners/{listener}/rules/{priority}/priority",
        Kind::RulesSetPriority,
    ),
    route("GET", "/v1/target-groups", Kind::Groups),
    route(
        "PUT",
        "/v1/target-groups/{group}/health-check",
        Kind::HealthCheckSet,
    ),
    route("GET", "/v1/targets", Kind::TargetsList),
    route(
        "POST",
        "/v1/target-groups/{group}/targets",
        Kind::TargetsAdd,
    ),
    route(
        "PATCH",
        "/v1/target-groups/{group}/targets/{target}",
        Kind::TargetsWeight,
    ),
    route(
        "DELETE",
        "/v1/target-groups/{group}/targets/{target}",
        Kind::TargetsRemove,
    ),
    route("GET", "/v1/stats", Kind::Stats),
    route("GET", "/v1/flows", Kind::Flows),
    route("GET", "/v1/overrides", Kind::OverridesList),
    route("DELETE", "/v1/overrides", Kind::OverridesClear),
    route("GET", "/v1/config", Kind::ConfigGet),
    route("POST", "/v1/config/validate", Kind::ConfigValidate),
    route("PUT", "/v1/config", Kind::ConfigApply),
    route("POST", "/v1/reload", Kind::Reload),
    route("POST", "/v1/detach", Kind::Detach),
    route("GET", "/v1/auto-scaling-groups", Kind::AsgList),
    route("GET", "/v1/auto-scaling-groups/{group}", Kind::AsgDescribe),
    route(
        "GET",
        "/v1/auto-scaling-groups/{group}/activities",
        Kind::AsgActivities,
    ),
    route(
        "PUT",
        "/v1/auto-scaling-groups/{group}/desired-capacity",
        Kind::AsgSetDesired,
    ),
    route(
        "PUT",
        "/v1/auto-scaling-groups/{group}/instance-protection",
        Kind::AsgSetProtection,
    ),
    route(
        "POST",
        "/v1/instances/{instance}/terminate",
        Kind::AsgTerminateInstance,
    ),
    route(
        "POST",
        "/v1/auto-scaling-groups/{group}/instance-refresh",
        Kind::AsgStartRefresh,
    ),
    route(
        "DELETE",
        "/v1/auto-scaling-groups/{group}/instance-refresh",
        Kind::AsgCancelRefresh,
    ),
    route(
        "POST",
        "/v1/auto-scaling-groups/{group}/suspended-processes",
        Kind::AsgSuspend,
    ),
    route(
        "DELETE",
        "/v1/auto-scaling-groups/{group}/suspended-processes",
        Kind::AsgResume,
    ),
    route(
        "POST",
        "/v1/auto-scaling-groups/{group}/lifecycle-hooks/{hook}/complete",
        Kind::AsgCompleteLifecycleAction,
    ),
    route(
        "POST",
        "/v1/auto-scaling-groups/{group}/lifecycle-hooks/{hook}/heartbeat",
        Kind::AsgRecordHeartbeat,
    ),
    route("GET", "/v1/launch-templates", Kind::LaunchTemplatesList),
    route(
        "GET",
        "/v1/launch-templates/{name}",
        Kind::LaunchTemplatesDescribe,
    ),
    route("GET", "/metrics", Kind::Metrics),
    route("GET", "/openapi.json", Kind::OpenApi),
];

/// What an HTTP request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Agent(Request),
    Metrics,
    OpenApi,
}

/// An HTTP request as the client sends it: method, path with query, and body.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: &'static str,
    pub path_and_query: String,
    pub body: Vec<u8>,
}

/// The body of `targets add`.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct NewTarget {
    address: IpAddr,
    port: Option<u16>,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

/// The body of `targets weight`.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct TargetChange {
    weight: u32,
}

/// The body of `asg set-desired`.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct NewDesiredCapacity {
    desired_capacity: u32,
    #[serde(default)]
    honor_cooldown: bool,
}

/// The body of `asg terminate-instance`.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Termination {
    #[serde(default)]
    decrement: bool,
}

/// The body of `asg start-refresh`.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct RefreshPreferences {
    min_healthy_percentage: Option<u32>,
    #[serde(default)]
    max_healthy_percentage: Option<u32>,
    instance_warmup_seconds: Option<u64>,
}

/// The body of `asg suspend` and `asg resume`.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Processes {
    #[serde(default)]
    processes: Vec<String>,
}

/// The body of `asg complete-lifecycle-action` (and, without a result, `record-heartbeat`).
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct LifecycleActionBody {
    instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<String>,
}

/// The body of `asg set-protection`.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Protection {
    instances: Vec<String>,
    protected: bool,
}

/// The body of `rules set-priority`.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct NewPriority {
    priority: u32,
}

impl Request {
    /// What the request is.
    pub fn kind(&self) -> Kind {
        match self {
            Self::TargetsAdd { .. } => Kind::TargetsAdd,
            Self::TargetsRemove { .. } => Kind::TargetsRemove,
            Self::TargetsWeight { .. } => Kind::TargetsWeight,
            Self::TargetsList { .. } => Kind::TargetsList,
            Self::Groups => Kind::Groups,
            Self::HealthCheckSet { .. } => Kind::HealthCheckSet,
            Self::Stats => Kind::Stats,
            Self::Flows { .. } => Kind::Flows,
            Self::Reload => Kind::Reload,
            Self::Status => Kind::Status,
            Self::OverridesList => Kind::OverridesList,
            Self::OverridesClear { .. } => Kind::OverridesClear,
            Self::Listeners => Kind::Listeners,
            Self::RulesList { .. } => Kind::RulesList,
            Self::RulesAdd { .. } => Kind::RulesAdd,
            Self::RulesRemove { .. } => Kind::RulesRemove,
            Self::RulesSetPriority { .. } => Kind::RulesSetPriority,
            Self::ConfigGet => Kind::ConfigGet,
            Self::ConfigValidate { .. } => Kind::ConfigValidate,
            Self::ConfigApply { .. } => Kind::ConfigApply,
            Self::Detach => Kind::Detach,
            Self::AsgList => Kind::AsgList,
            Self::AsgDescribe { .. } => Kind::AsgDescribe,
            Self::AsgActivities { .. } => Kind::AsgActivities,
            Self::AsgSetDesired { .. } => Kind::AsgSetDesired,
            Self::AsgTerminateInstance { .. } => Kind::AsgTerminateInstance,
            Self::AsgSetProtection { .. } => Kind::AsgSetProtection,
            Self::AsgStartRefresh { .. } => Kind::AsgStartRefresh,
            Self::AsgCancelRefresh { .. } => Kind::AsgCancelRefresh,
            Self::AsgSuspend { .. } => Kind::AsgSuspend,
            Self::AsgResume { .. } => Kind::AsgResume,
            Self::AsgCompleteLifecycleAction { .. } => Kind::AsgCompleteLifecycleAction,
            Self::AsgRecordHeartbeat { .. } => Kind::AsgRecordHeartbeat,
            Self::LaunchTemplatesList => Kind::LaunchTemplatesList,
            Self::LaunchTemplatesDescribe { .. } => Kind::LaunchTemplatesDescribe,
        }
    }

    /// The HTTP request that asks for this, through the route table.
    pub fn to_http(&self) -> Result<HttpRequest, serde_json::Error> {
        let route = route_of(self.kind());
        let mut params: Vec<(&str, String)> = Vec::new();
        let mut query: Vec<(&str, String)> = Vec::new();
        let mut body = Vec::new();
        match self {
            Self::TargetsAdd {
                group,
                address,
                port,
                weight,
            } => {
                params.push(("group", group.clone()));
                body = serde_json::to_vec(&NewTarget {
                    address: *address,
                    port: *port,
                    weight: *weight,
                })?;
            }
            Self::TargetsRemove {
                group,
                address,
                port,
            } => {
                params.push(("group", group.clone()));
                params.push(("target", target_text(*address, *port)));
            }
            Self::TargetsWeight {
                group,
                address,
                port,
                weight,
            } => {
                params.push(("group", group.clone()));
                params.push(("target", target_text(*address, *port)));
                body = serde_json::to_vec(&TargetChange { weight: *weight })?;
            }
            Self::TargetsList { group } => {
                query.extend(group.iter().map(|g| ("group", g.clone())));
            }
            Self::OverridesClear { group, listener } => {
                query.extend(group.iter().map(|g| ("group", g.clone())));
                query.extend(listener.iter().map(|l| ("listener", l.clone())));
            }
            Self::RulesList { listener } => params.push(("listener", listener.clone())),
            Self::RulesAdd { listener, rule } => {
                params.push(("listener", listener.clone()));
                body = serde_json::to_vec(rule)?;
            }
            Self::RulesRemove { listener, priority } => {
                params.push(("listener", listener.clone()));
                params.push(("priority", priority.to_string()));
            }
            Self::RulesSetPriority {
                listener,
                priority,
                new_priority,
            } => {
                params.push(("listener", listener.clone()));
                params.push(("priority", priority.to_string()));
                body = serde_json::to_vec(&NewPriority {
                    priority: *new_priority,
                })?;
            }
            Self::HealthCheckSet {
                group,
                health_check,
            } => {
                params.push(("group", group.clone()));
                body = serde_json::to_vec(health_check)?;
            }
            Self::LaunchTemplatesDescribe { name } => params.push(("name", name.clone())),
            Self::Flows { limit } => query.extend(limit.iter().map(|l| ("limit", l.to_string()))),
            Self::ConfigValidate { text } | Self::ConfigApply { text } => {
                body = text.clone().into_bytes();
            }
            Self::AsgDescribe { group } | Self::AsgActivities { group } => {
                params.push(("group", group.clone()));
            }
            Self::AsgSetDesired {
                group,
                desired_capacity,
                honor_cooldown,
            } => {
                params.push(("group", group.clone()));
                body = serde_json::to_vec(&NewDesiredCapacity {
                    desired_capacity: *desired_capacity,
                    honor_cooldown: *honor_cooldown,
                })?;
            }
            Self::AsgTerminateInstance {
                instance,
                decrement,
            } => {
                params.push(("instance", instance.clone()));
                body = serde_json::to_vec(&Termination {
                    decrement: *decrement,
                })?;
            }
            Self::AsgSetProtection {
                group,
                instances,
                protected,
            } => {
                params.push(("group", group.clone()));
                body = serde_json::to_vec(&Protection {
                    instances: instances.clone(),
                    protected: *protected,
                })?;
            }
            Self::AsgStartRefresh {
                group,
                min_healthy_percentage,
                max_healthy_percentage,
                instance_warmup_seconds,
            } => {
                params.push(("group", group.clone()));
                body = serde_json::to_vec(&RefreshPreferences {
                    min_healthy_percentage: *min_healthy_percentage,
                    max_healthy_percentage: *max_healthy_percentage,
                    instance_warmup_seconds: *instance_warmup_seconds,
                })?;
            }
            Self::AsgCancelRefresh { group } => params.push(("group", group.clone())),
            Self::AsgCompleteLifecycleAction {
                group,
                hook,
                instance,
                result,
            } => {
                params.push(("group", group.clone()));
                params.push(("hook", hook.clone()));
                body = serde_json::to_vec(&LifecycleActionBody {
                    instance: instance.clone(),
                    result: Some(result.clone()),
                })?;
            }
            Self::AsgRecordHeartbeat {
                group,
                hook,
                instance,
            } => {
                params.push(("group", group.clone()));
                params.push(("hook", hook.clone()));
                body = serde_json::to_vec(&LifecycleActionBody {
                    instance: instance.clone(),
                    result: None,
                })?;
            }
            Self::AsgSuspend { group, processes } | Self::AsgResume { group, processes } => {
                params.push(("group", group.clone()));
                body = serde_json::to_vec(&Processes {
                    processes: processes.clone(),
                })?;
            }
            Self::AsgList
            | Self::Groups
            | Self::Stats
            | Self::Reload
            | Self::Status
            | Self::OverridesList
            | Self::Listeners
            | Self::ConfigGet
            | Self::Detach
            | Self::LaunchTemplatesList => {}
        }
        let mut path_and_query = fill(route.path, &params);
        for (i, (key, value)) in query.iter().enumerate() {
            path_and_query.push(if i == 0 { '?' } else { '&' });
            path_and_query.push_str(&format!("{key}={}", percent_encode(value)));
        }
        Ok(HttpRequest {
            method: route.method,
            path_and_query,
            body,
        })
    }
}

impl Endpoint {
    /// What `method path?query` with `body` asks for: 404 for an unknown path, 405 for a
    /// known path with another method, 400 for malformed parameters or bodies.
    pub fn from_http(
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Self, ApiError> {
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_decode(s).ok_or_else(|| ApiError::bad(format!("bad escape in `{path}`")))
            })
            .collect::<Result<_, _>>()?;
        let mut path_known = false;
        let found = ROUTES.iter().find_map(|route| {
            let params = match_pattern(route.path, &segments)?;
            path_known = true;
            (route.method == method).then_some((route.kind, params))
        });
        let Some((kind, params)) = found else {
            return Err(if path_known {
                ApiError::new(405, format!("{method} is not allowed on {path}"))
            } else {
                ApiError::new(404, format!("no endpoint {path}"))
            });
        };
        let param = |name: &str| -> String {
            params
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let target = || parse_target(&param("target")).map_err(ApiError::bad);
        let priority = || {
            let text = param("priority");
            text.parse::<u32>()
                .map_err(|_| ApiError::bad(format!("priority `{text}` is not a number")))
        };
        let request = match kind {
            Kind::Metrics => return Ok(Self::Metrics),
            Kind::OpenApi => return Ok(Self::OpenApi),
            Kind::Status => Request::Status,
            Kind::Listeners => Request::Listeners,
            Kind::RulesList => Request::RulesList {
                listener: param("listener"),
            },
            Kind::RulesAdd => Request::RulesAdd {
                listener: param("listener"),
                rule: Box::new(json::<Rule>(body)?),
            },
            Kind::RulesRemove => Request::RulesRemove {
                listener: param("listener"),
                priority: priority()?,
            },
            Kind::RulesSetPriority => Request::RulesSetPriority {
                listener: param("listener"),
                priority: priority()?,
                new_priority: json::<NewPriority>(body)?.priority,
            },
            Kind::Groups => Request::Groups,
            Kind::HealthCheckSet => Request::HealthCheckSet {
                group: param("group"),
                health_check: json::<HealthCheck>(body)?,
            },
            Kind::TargetsList => Request::TargetsList {
                group: query_value(query, "group")?,
            },
            Kind::TargetsAdd => {
                let t: NewTarget = json(body)?;
                Request::TargetsAdd {
                    group: param("group"),
                    address: t.address,
                    port: t.port,
                    weight: t.weight,
                }
            }
            Kind::TargetsWeight => {
                let (address, port) = target()?;
                Request::TargetsWeight {
                    group: param("group"),
                    address,
                    port,
                    weight: json::<TargetChange>(body)?.weight,
                }
            }
            Kind::TargetsRemove => {
                let (address, port) = target()?;
                Request::TargetsRemove {
                    group: param("group"),
                    address,
                    port,
                }
            }
            Kind::Stats => Request::Stats,
            Kind::Flows => Request::Flows {
                limit: query_value(query, "limit")?
                    .map(|l| {
                        l.parse::<usize>()
                            .map_err(|_| ApiError::bad(format!("limit `{l}` is not a number")))
                    })
                    .transpose()?,
            },
            Kind::OverridesList => Request::OverridesList,
            Kind::OverridesClear => Request::OverridesClear {
                group: query_value(query, "group")?,
                listener: query_value(query, "listener")?,
            },
            Kind::ConfigGet => Request::ConfigGet,
            Kind::ConfigValidate => Request::ConfigValidate { text: text(body)? },
            Kind::ConfigApply => Request::ConfigApply { text: text(body)? },
            Kind::Reload => Request::Reload,
            Kind::Detach => Request::Detach,
            Kind::AsgList => Request::AsgList,
            Kind::AsgDescribe => Request::AsgDescribe {
                group: param("group"),
            },
            Kind::AsgActivities => Request::AsgActivities {
                group: param("group"),
            },
            Kind::AsgSetDesired => {
                let b: NewDesiredCapacity = json(body)?;
                Request::AsgSetDesired {
                    group: param("group"),
                    desired_capacity: b.desired_capacity,
                    honor_cooldown: b.honor_cooldown,
                }
            }
            Kind::AsgTerminateInstance => Request::AsgTerminateInstance {
                instance: param("instance"),
                decrement: if body.is_empty() {
                    false
                } else {
                    json::<Termination>(body)?.decrement
                },
            },
            Kind::AsgStartRefresh => {
                let b: RefreshPreferences = if body.is_empty() {
                    RefreshPreferences {
                        min_healthy_percentage: None,
                        max_healthy_percentage: None,
                        instance_warmup_seconds: None,
                    }
                } else {
                    json(body)?
                };
                Request::AsgStartRefresh {
                    group: param("group"),
                    min_healthy_percentage: b.min_healthy_percentage,
                    max_healthy_percentage: b.max_healthy_percentage,
                    instance_warmup_seconds: b.instance_warmup_seconds,
                }
            }
            Kind::AsgCompleteLifecycleAction => {
                let b: LifecycleActionBody = json(body)?;
                Request::AsgCompleteLifecycleAction {
                    group: param("group"),
                    hook: param("hook"),
                    instance: b.instance,
                    result: b.result.ok_or_else(|| {
                        ApiError::bad("a `result` is needed: CONTINUE or ABANDON")
                    })?,
                }
            }
            Kind::AsgRecordHeartbeat => {
                let b: LifecycleActionBody = json(body)?;
                if b.result.is_some() {
                    return Err(ApiError::bad("a heartbeat takes no `result`"));
                }
                Request::AsgRecordHeartbeat {
                    group: param("group"),
                    hook: param("hook"),
                    instance: b.instance,
                }
            }
            Kind::AsgCancelRefresh => Request::AsgCancelRefresh {
                group: param("group"),
            },
            Kind::AsgSuspend | Kind::AsgResume => {
                let processes = if body.is_empty() {
                    Vec::new()
                } else {
                    json::<Processes>(body)?.processes
                };
                let group = param("group");
                if kind == Kind::AsgSuspend {
                    Request::AsgSuspend { group, processes }
                } else {
                    Request::AsgResume { group, processes }
                }
            }
            Kind::AsgSetProtection => {
                let b: Protection = json(body)?;
                Request::AsgSetProtection {
                    group: param("group"),
                    instances: b.instances,
                    protected: b.protected,
                }
            }
            Kind::LaunchTemplatesList => Request::LaunchTemplatesList,
            Kind::LaunchTemplatesDescribe => Request::LaunchTemplatesDescribe {
                name: param("name"),
            },
        };
        Ok(Self::Agent(request))
    }
}

fn route_of(kind: Kind) -> &'static Route {
    ROUTES.iter().find(|r| r.kind == kind).unwrap_or(&ROUTES[0])
}

/// The pattern's path parameters if `segments` match it.
fn match_pattern<'p>(pattern: &'p str, segments: &[String]) -> Option<Vec<(&'p str, String)>> {
    let parts: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, segment) in parts.iter().zip(segments) {
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) => params.push((name, segment.clone())),
            None if part == segment => {}
            None => return None,
        }
    }
    Some(params)
}

/// The pattern with its parameters filled in (escaped).
fn fill(pattern: &str, params: &[(&str, String)]) -> String {
    let mut out = pattern.to_owned();
    for (name, value) in params {
        out = out.replace(&format!("{{{name}}}"), &percent_encode(value));
    }
    out
}

/// `ADDR` or `ADDR:PORT` (`[V6]:PORT`).
fn target_text(address: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(p) => SocketAddr::new(address, p).to_string(),
        None => address.to_string(),
    }
}

/// Parses `ADDR`, `ADDR:PORT`, `[V6]:PORT`.
pub fn parse_target(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| format!("`{text}` is not ADDR, ADDR:PORT or [IPV6]:PORT"))
}

/// `%XX` decoding of a path segment or query value; none for a malformed escape.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Escapes what may not stand in a path segment or query value.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_value(query: Option<&str>, key: &str) -> Result<Option<String>, ApiError> {
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return percent_decode(v)
                .map(Some)
                .ok_or_else(|| ApiError::bad(format!("bad escape in `{pair}`")));
        }
    }
    Ok(None)
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("bad JSON body: {e}")))
}

fn text(body: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec()).map_err(|_| ApiError::bad("the body is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_request() -> Vec<Request> {
        let v6: IpAddr = "fd00:198:18::21".parse().unwrap();
        let v4: IpAddr = "198.18.0.21".parse().unwrap();
        vec![
            Request::Status,
            Request::Listeners,
            Request::Groups,
            Request::HealthCheckSet {
                group: "web".into(),
                health_check: HealthCheck::default(),
            },
            Request::TargetsList { group: None },
            Request::TargetsList {
                group: Some("web 2/x".into()),
            },
            Request::TargetsAdd {
                group: "web".into(),
                address: v6,
                port: Some(8080),
                weight: 3,
            },
            Request::TargetsWeight {
                group: "web".into(),
                address: v6,
                port: Some(8080),
                weight: 0,
            },
            Request::TargetsRemove {
                group: "web".into(),
                address: v4,
                port: None,
            },
            Request::Stats,
            Request::Flows { limit: None },
            Request::Flows { limit: Some(10) },
            Request::OverridesList,
            Request::OverridesClear {
                group: None,
                listener: None,
            },
            Request::OverridesClear {
                group: Some("web".into()),
                listener: Some("site".into()),
            },
            Request::RulesList {
                listener: "site".into(),
            },
            Request::RulesAdd {
                listener: "site".into(),
                rule: serde_json::from_str(
                    r#"{"priority": 10, "conditions": {"host": ["*.example.com"],
                        "query_string": {"v": "1"}}, "action": {"forward": [
                        {"target_group": "a", "weight": 90}, {"target_group": "b", "weight": 10}]}}"#,
                )
                .unwrap(),
            },
            Request::RulesRemove {
                listener: "site".into(),
                priority: 10,
            },
            Request::RulesSetPriority {
                listener: "site".into(),
                priority: 10,
                new_priority: 50_000,
            },
            Request::ConfigGet,
            Request::ConfigValidate {
                text: "[agent]\n".into(),
            },
            Request::ConfigApply {
                text: "[agent]\n".into(),
            },
            Request::Reload,
            Request::Detach,
            Request::AsgList,
            Request::AsgDescribe {
                group: "web asg".into(),
            },
            Request::AsgActivities {
                group: "web".into(),
            },
            Request::AsgSetDesired {
                group: "web".into(),
                desired_capacity: 3,
                honor_cooldown: true,
            },
            Request::AsgTerminateInstance {
                instance: "i-0123456789abcdef0".into(),
                decrement: true,
            },
            Request::AsgSetProtection {
                group: "web".into(),
                instances: vec!["i-0123456789abcdef0".into()],
                protected: false,
            },
            Request::AsgStartRefresh {
                group: "web".into(),
                min_healthy_percentage: Some(50),
                max_healthy_percentage: Some(150),
                instance_warmup_seconds: None,
            },
            Request::AsgCancelRefresh {
                group: "web".into(),
            },
            Request::AsgCompleteLifecycleAction {
                group: "web".into(),
                hook: "warm".into(),
                instance: "i-0123456789abcdef0".into(),
                result: "CONTINUE".into(),
            },
            Request::AsgRecordHeartbeat {
                group: "web".into(),
                hook: "warm".into(),
                instance: "i-0123456789abcdef0".into(),
            },
            Request::AsgSuspend {
                group: "web".into(),
                processes: vec!["Launch".into(), "AZRebalance".into()],
            },
            Request::AsgResume {
                group: "web".into(),
                processes: vec![],
            },
            Request::LaunchTemplatesList,
            Request::LaunchTemplatesDescribe {
                name: "web v2/x".into(),
            },
        ]
    }

    #[test]
    fn every_request_goes_to_http_and_back() {
        for request in every_request() {
            let http = request.to_http().unwrap();
            let (path, query) = match http.path_and_query.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (http.path_and_query.as_str(), None),
            };
            let back = Endpoint::from_http(http.method, path, query, &http.body);
            assert_eq!(
                back,
                Ok(Endpoint::Agent(request.clone())),
                "{} {}",
                http.method,
                http.path_and_query
            );
        }
    }

    #[test]
    fn every_route_is_reached_by_its_kind() {
        for route in ROUTES {
            assert_eq!(route_of(route.kind).path, route.path);
        }
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        let status = |m, p, b: &[u8]| Endpoint::from_http(m, p, None, b).unwrap_err().status;
        assert_eq!(status("GET", "/v2/nothing", b""), 404);
        assert_eq!(status("DELETE", "/v1/status", b""), 405);
        assert_eq!(
            status("DELETE", "/v1/target-groups/web/targets/nonsense", b""),
            400
        );
        assert_eq!(status("DELETE", "/v1/listeners/site/rules/ten", b""), 400);
        assert_eq!(status("PATCH", "/v1/listeners/site/rules", b""), 405);
        // Launch templates are read-only here: the config file changes them.
        assert_eq!(status("DELETE", "/v1/launch-templates/web", b""), 405);
        assert_eq!(status("POST", "/v1/launch-templates", b""), 405);
    }

    #[test]
    fn a_rule_with_a_misspelt_condition_is_refused_by_name() {
        let e = Endpoint::from_http(
            "POST",
            "/v1/listeners/site/rules",
            None,
            br#"{"priority": 1, "conditions": {"hots": ["a"]}, "action": {"forward": "web"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("hots"), "{}", e.message);
    }

    #[test]
    fn a_misspelt_body_field_is_refused_by_name() {
        let e = Endpoint::from_http(
            "POST",
            "/v1/target-groups/web/targets",
            None,
            b"{\"adress\": 1}",
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("adress"), "{}", e.message);
    }
}
