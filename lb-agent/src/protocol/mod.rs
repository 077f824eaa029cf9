//! The control protocol, pure (no I/O): every request the agent takes, one typed answer per
//! request, and the route table (`routes`) that both the server (`api`) and the CLI's client
//! (`client`) use to turn a request into HTTP and back. Answer bodies are JSON; an error is
//! `{"error": "..."}` with the HTTP status that says how the request failed.

pub mod launch_templates;
pub mod routes;
pub mod rules;
pub mod scaling;
pub mod views;

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    config::{HealthCheck, Rule},
    overrides::Overrides,
};
pub use launch_templates::{LaunchTemplateSummary, LaunchTemplateView};
pub use routes::{HttpRequest, ROUTES, Route, parse_target};
pub use rules::{RuleAdded, RuleMoved, RuleRemoved, RuleSource, RuleView, RulesView};
pub use views::{
    CountersView, FlowView, GroupView, InterfaceView, ListenerSettings, ListenerView, StatsView,
    StatusView, TargetView,
};

/// Flows a `flows` request without a limit answers: a table of a million entries would be
/// hundreds of megabytes of JSON.
pub const DEFAULT_FLOWS_LIMIT: usize = 1000;

/// A request to the running agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Register a target in a group; `port` defaults to the group's.
    TargetsAdd {
        group: String,
        address: IpAddr,
        port: Option<u16>,
        weight: u32,
    },
    /// Deregister a target from a group.
    TargetsRemove {
        group: String,
        address: IpAddr,
        port: Option<u16>,
    },
    /// Change a registered target's weight.
    TargetsWeight {
        group: String,
        address: IpAddr,
        port: Option<u16>,
        weight: u32,
    },
    /// List targets, of one group or all.
    TargetsList { group: Option<String> },
    /// Every target group's settings, health check included.
    Groups,
    /// Replace a group's health check (fields and defaults as in the config file).
    HealthCheckSet {
        group: String,
        health_check: HealthCheck,
    },
    /// Counters of listeners, targets and data-plane verdicts.
    Stats,
    /// The connection table: its first `limit` entries; [`DEFAULT_FLOWS_LIMIT`] when absent,
    /// all of them when 0.
    Flows { limit: Option<usize> },
    /// Read the config file again and apply what changed.
    Reload,
    /// What runs, where, and whether it is healthy.
    Status,
    /// The API's changes on top of the config file.
    OverridesList,
    /// Drop the API's changes (of one group, of one listener's rules, or all) and go back to
    /// the file.
    OverridesClear {
        group: Option<String>,
        listener: Option<String>,
    },
    /// The listeners (every kind) with their settings and counters.
    Listeners,
    /// A listener's rules in priority order, and its default action.
    RulesList { listener: String },
    /// Add a rule to an http or https listener, at a priority it does not use yet (boxed: a
    /// rule is ten times the size of any other request).
    RulesAdd { listener: String, rule: Box<Rule> },
    /// Remove a listener's rule.
    RulesRemove { listener: String, priority: u32 },
    /// Move a listener's rule to a priority it does not use yet.
    RulesSetPriority {
        listener: String,
        priority: u32,
        new_priority: u32,
    },
    /// The config file's text, its path, and where the API's changes are kept.
    ConfigGet,
    /// Check a config text without applying it: every error, with line and field.
    ConfigValidate { text: String },
    /// Replace the config file with `text` and apply it; nothing changes if it is invalid
    /// or cannot be applied.
    ConfigApply { text: String },
    /// Detach the XDP program and stop the agent.
    Detach,
    /// Every auto scaling group with its instances.
    AsgList,
    /// One auto scaling group with its instances.
    AsgDescribe { group: String },
    /// A group's scaling activities, newest first.
    AsgActivities { group: String },
    /// Set a group's desired capacity (`set-desired-capacity`); with `honor_cooldown`,
    /// refused while the group's cooldown runs.
    AsgSetDesired {
        group: String,
        desired_capacity: u32,
        honor_cooldown: bool,
    },
    /// Terminate an instance of a group (`terminate-instance-in-auto-scaling-group`):
    /// replaced, unless `decrement` lowers the desired capacity instead.
    AsgTerminateInstance { instance: String, decrement: bool },
    /// Protect instances of a group from scale-in, or not (`set-instance-protection`).
    AsgSetProtection {
        group: String,
        instances: Vec<String>,
        protected: bool,
    },
    /// Start an instance refresh of a group (`start-instance-refresh`).
    AsgStartRefresh {
        group: String,
        min_healthy_percentage: Option<u32>,
        /// The share that may be in service or pending (100-200; above 100 a batch's
        /// replacements are launched before it goes).
        max_healthy_percentage: Option<u32>,
        instance_warmup_seconds: Option<u64>,
    },
    /// Cancel a group's instance refresh in progress.
    AsgCancelRefresh { group: String },
    /// Suspend processes of a group (all when none named: `suspend-processes`).
    AsgSuspend {
        group: String,
        processes: Vec<String>,
    },
    /// Resume processes of a group (all when none named).
    AsgResume {
        group: String,
        processes: Vec<String>,
    },
    /// End an instance's wait on a lifecycle hook (`complete-lifecycle-action`).
    AsgCompleteLifecycleAction {
        group: String,
        hook: String,
        instance: String,
        /// `CONTINUE` or `ABANDON`.
        result: String,
    },
    /// Restart the timeout of an instance's wait on a lifecycle hook
    /// (`record-lifecycle-action-heartbeat`).
    AsgRecordHeartbeat {
        group: String,
        hook: String,
        instance: String,
    },
    /// Every launch template (default and latest version) and launch configuration.
    LaunchTemplatesList,
    /// One launch template's versions (or a launch configuration's definition).
    LaunchTemplatesDescribe { name: String },
}

impl Request {
    /// Whether it changes anything (so it goes to the writer, and may carry `If-Match`).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Self::TargetsAdd { .. }
                | Self::TargetsRemove { .. }
                | Self::TargetsWeight { .. }
                | Self::HealthCheckSet { .. }
                | Self::OverridesClear { .. }
                | Self::RulesAdd { .. }
                | Self::RulesRemove { .. }
                | Self::RulesSetPriority { .. }
                | Self::ConfigApply { .. }
                | Self::Reload
                | Self::Detach
        )
    }

    /// Whether the auto scaling groups answer it (not the writer, nor the snapshot).
    pub fn is_scaling(&self) -> bool {
        matches!(
            self,
            Self::AsgList
                | Self::AsgDescribe { .. }
                | Self::AsgActivities { .. }
                | Self::AsgSetDesired { .. }
                | Self::AsgTerminateInstance { .. }
                | Self::AsgSetProtection { .. }
                | Self::AsgStartRefresh { .. }
                | Self::AsgCancelRefresh { .. }
                | Self::AsgSuspend { .. }
                | Self::AsgResume { .. }
                | Self::AsgCompleteLifecycleAction { .. }
                | Self::AsgRecordHeartbeat { .. }
        )
    }
}

/// A target registered (`targets add`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRegistered {
    pub group: String,
    pub target: SocketAddr,
    pub weight: u32,
}

/// A target deregistered (`targets remove`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetDeregistered {
    pub group: String,
    pub target: SocketAddr,
    /// How long its established flows are kept (0: cut at once).
    pub draining_seconds: f64,
}

/// A target's weight changed (`targets weight`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightChanged {
    pub group: String,
    pub target: SocketAddr,
    pub weight: u32,
    pub previous_weight: u32,
}

/// A group's health check replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckSet {
    pub group: String,
    pub health_check: HealthCheck,
}

/// What a reload (or a config apply, or clearing overrides) changed, a line each.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Changes {
    pub changes: Vec<String>,
}

/// The config file the agent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub path: String,
    pub text: String,
    /// Where the API's changes are kept.
    pub state_file: String,
    /// How many API changes are kept on top of the file.
    pub overrides: usize,
}

/// One error of a config text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigProblem {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// Whether a config text is valid, and every error if not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub valid: bool,
    pub errors: Vec<ConfigProblem>,
}

/// The program detached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detached {
    pub detached: bool,
}

/// The agent's answer to a request: one variant per request (see `Answer::decode`).
#[derive(Debug, Clone)]
pub enum Answer {
    TargetRegistered(TargetRegistered),
    TargetDeregistered(TargetDeregistered),
    WeightChanged(WeightChanged),
    Targets(Vec<TargetView>),
    Groups(Vec<GroupView>),
    HealthCheckSet(HealthCheckSet),
    Stats(StatsView),
    Flows(Vec<FlowView>),
    Changes(Changes),
    Status(StatusView),
    Overrides(Overrides),
    Listeners(Vec<ListenerView>),
    Rules(RulesView),
    RuleAdded(RuleAdded),
    RuleRemoved(RuleRemoved),
    RuleMoved(RuleMoved),
    ConfigFile(ConfigFile),
    Validation(Validation),
    Detached(Detached),
    AutoScalingGroups(Vec<scaling::AsgView>),
    AutoScalingGroup(Box<scaling::AsgView>),
    Activities(Vec<scaling::ActivityView>),
    DesiredCapacitySet(scaling::DesiredCapacitySet),
    InstanceTerminating(scaling::InstanceTerminating),
    ProtectionSet(scaling::ProtectionSet),
    InstanceRefresh(scaling::RefreshView),
    ProcessesSet(scaling::ProcessesSet),
    LifecycleAction(scaling::LifecycleActionView),
    LaunchTemplates(Vec<LaunchTemplateSummary>),
    LaunchTemplate(LaunchTemplateView),
}

impl Answer {
    /// The answer's JSON body.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Self::TargetRegistered(a) => serde_json::to_vec(a),
            Self::TargetDeregistered(a) => serde_json::to_vec(a),
            Self::WeightChanged(a) => serde_json::to_vec(a),
            Self::Targets(a) => serde_json::to_vec(a),
            Self::Groups(a) => serde_json::to_vec(a),
            Self::HealthCheckSet(a) => serde_json::to_vec(a),
            Self::Stats(a) => serde_json::to_vec(a),
            Self::Flows(a) => serde_json::to_vec(a),
            Self::Changes(a) => serde_json::to_vec(a),
            Self::Status(a) => serde_json::to_vec(a),
            Self::Overrides(a) => serde_json::to_vec(a),
            Self::Listeners(a) => serde_json::to_vec(a),
            Self::Rules(a) => serde_json::to_vec(a),
            Self::RuleAdded(a) => serde_json::to_vec(a),
            Self::RuleRemoved(a) => serde_json::to_vec(a),
            Self::RuleMoved(a) => serde_json::to_vec(a),
            Self::ConfigFile(a) => serde_json::to_vec(a),
            Self::Validation(a) => serde_json::to_vec(a),
            Self::Detached(a) => serde_json::to_vec(a),
            Self::AutoScalingGroups(a) => serde_json::to_vec(a),
            Self::AutoScalingGroup(a) => serde_json::to_vec(a),
            Self::Activities(a) => serde_json::to_vec(a),
            Self::DesiredCapacitySet(a) => serde_json::to_vec(a),
            Self::InstanceTerminating(a) => serde_json::to_vec(a),
            Self::ProtectionSet(a) => serde_json::to_vec(a),
            Self::InstanceRefresh(a) => serde_json::to_vec(a),
            Self::ProcessesSet(a) => serde_json::to_vec(a),
            Self::LifecycleAction(a) => serde_json::to_vec(a),
            Self::LaunchTemplates(a) => serde_json::to_vec(a),
            Self::LaunchTemplate(a) => serde_json::to_vec(a),
        }
    }

    /// The answer to `request` from its JSON body.
    pub fn decode(request: &Request, body: &[u8]) -> Result<Self, serde_json::Error> {
        let json = body;
        Ok(match request {
            Request::TargetsAdd { .. } => Self::TargetRegistered(serde_json::from_slice(json)?),
            Request::TargetsRemove { .. } => {
                Self::TargetDeregistered(serde_json::from_slice(json)?)
            }
            Request::TargetsWeight { .. } => Self::WeightChanged(serde_json::from_slice(json)?),
            Request::TargetsList { .. } => Self::Targets(serde_json::from_slice(json)?),
            Request::Groups => Self::Groups(serde_json::from_slice(json)?),
            Request::HealthCheckSet { .. } => Self::HealthCheckSet(serde_json::from_slice(json)?),
            Request::Stats => Self::Stats(serde_json::from_slice(json)?),
            Request::Flows { .. } => Self::Flows(serde_json::from_slice(json)?),
            Request::Reload | Request::OverridesClear { .. } | Request::ConfigApply { .. } => {
                Self::Changes(serde_json::from_slice(json)?)
            }
            Request::Status => Self::Status(serde_json::from_slice(json)?),
            Request::OverridesList => Self::Overrides(serde_json::from_slice(json)?),
            Request::Listeners => Self::Listeners(serde_json::from_slice(json)?),
            Request::RulesList { .. } => Self::Rules(serde_json::from_slice(json)?),
            Request::RulesAdd { .. } => Self::RuleAdded(serde_json::from_slice(json)?),
            Request::RulesRemove { .. } => Self::RuleRemoved(serde_json::from_slice(json)?),
            Request::RulesSetPriority { .. } => Self::RuleMoved(serde_json::from_slice(json)?),
            Request::ConfigGet => Self::ConfigFile(serde_json::from_slice(json)?),
            Request::ConfigValidate { .. } => Self::Validation(serde_json::from_slice(json)?),
            Request::Detach => Self::Detached(serde_json::from_slice(json)?),
            Request::AsgList => Self::AutoScalingGroups(serde_json::from_slice(json)?),
            Request::AsgDescribe { .. } => {
                Self::AutoScalingGroup(Box::new(serde_json::from_slice(json)?))
            }
            Request::AsgActivities { .. } => Self::Activities(serde_json::from_slice(json)?),
            Request::AsgSetDesired { .. } => {
                Self::DesiredCapacitySet(serde_json::from_slice(json)?)
            }
            Request::AsgTerminateInstance { .. } => {
                Self::InstanceTerminating(serde_json::from_slice(json)?)
            }
            Request::AsgSetProtection { .. } => Self::ProtectionSet(serde_json::from_slice(json)?),
            Request::AsgStartRefresh { .. } | Request::AsgCancelRefresh { .. } => {
                Self::InstanceRefresh(serde_json::from_slice(json)?)
            }
            Request::AsgCompleteLifecycleAction { .. } | Request::AsgRecordHeartbeat { .. } => {
                Self::LifecycleAction(serde_json::from_slice(json)?)
            }
            Request::AsgSuspend { .. } | Request::AsgResume { .. } => {
                Self::ProcessesSet(serde_json::from_slice(json)?)
            }
            Request::LaunchTemplatesList => Self::LaunchTemplates(serde_json::from_slice(json)?),
            Request::LaunchTemplatesDescribe { .. } => {
                Self::LaunchTemplate(serde_json::from_slice(json)?)
            }
        })
    }
}

/// A refused or failed request: the HTTP status that says how, and why. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is malformed.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// The error's JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: self.message.clone(),
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// The error an answer with `status` and `body` carries.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        let message = serde_json::from_slice::<ErrorBody>(body).map_or_else(
            |_| format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
            |b| b.error,
        );
        Self { status, message }
    }
}

/// An error's JSON body.
#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}
