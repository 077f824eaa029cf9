//! The config file: listeners, target groups and targets in TOML (see shared/DESIGN.md).
//!
//! Loading has two passes. Serde turns the text into the typed model (unknown fields and wrong
//! types fail there, with toml's own position). Then `validate` checks the model as a whole and
//! reports every problem at once; each error names the dotted path of the offending field, and
//! the path is looked up in a span-keeping parse of the same text to give its line and column.
//! Keeping spans out of the model means the rest of the agent sees plain types.
//!
//! One file per concept: the model (`agent`, `target_group`, `health_check`, `listener`),
//! `duration` (how the file writes durations), `validate` (the whole-config checks),
//! `snat_ports` (listeners against the full-NAT source ports, also on the node's own addresses)
//! and `location` (errors with file, line, column and field). Everything public is re-exported
//! here, so users name `config::X` whatever file `X` lives in.

mod agent;
mod auto_scaling_group;
mod cidr;
mod duration;
#[cfg(test)]
pub(crate) mod fixture;
mod health_check;
mod l7;
mod launch_template;
mod listener;
mod location;
#[cfg(test)]
mod scaling_tests;
mod snat_ports;
mod target_group;
#[cfg(test)]
mod tests;
mod validate;
mod validate_scaling;

use std::{net::IpAddr, ops::Range, path::Path};

use serde::Deserialize;

use self::location::{
    entry_of, key_span_of, line_column, related, remove_at, serde_problem, span_of,
};
pub use self::{
    agent::AgentConfig,
    auto_scaling_group::{
        AdjustmentType, Alarm, AutoScalingGroup, ComparisonOperator, DEFAULT_COOLDOWN,
        HealthCheckType, LifecycleActionResult, LifecycleHook, LifecycleTransition,
        MaintenancePolicy, PolicyKind, ProviderKind, ScalingMetric, ScalingPolicy, ScalingProcess,
        ScheduledAction, Statistic, Step, TemplateRef, TemplateVersion, TerminationError,
        TerminationPolicy, TreatMissingData,
    },
    cidr::Cidr,
    duration::{duration_text, parse_duration},
    health_check::{HealthCheck, HealthMethod, HealthProtocol},
    l7::{
        AccessLogConfig, AccessLogFormat, Algorithm, DEFAULT_SSL_POLICY, GroupL7, ListenerL7,
        ProtocolVersion,
    },
    launch_template::{
        InboundRule, InstanceDefinition, InstanceType, LaunchConfiguration, LaunchTemplate,
        parse_memory,
    },
    listener::{
        Action, Certificate, Conditions, FixedResponse, Forward, Listener, ListenerProtocol, Mode,
        Redirect, RedirectProtocol, Rule, WeightedGroup,
    },
    location::{ConfigError, ConfigErrors},
    target_group::{GroupProtocol, MAX_WEIGHT, Stickiness, Target, TargetGroup},
    validate::problem_text,
};

/// The whole config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[agent]`: settings of the node itself.
    #[serde(default)]
    pub agent: AgentConfig,
    /// `[[target_group]]`: named sets of targets.
    #[serde(default, rename = "target_group")]
    pub target_groups: Vec<TargetGroup>,
    /// `[[listener]]`: what the node accepts traffic on, and where it sends it.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    /// `[instance_types]`: named CPU and memory limits of instances.
    #[serde(default)]
    pub instance_types: std::collections::BTreeMap<String, InstanceType>,
    /// `[[launch_template]]`: what an instance is, versioned.
    #[serde(default, rename = "launch_template")]
    pub launch_templates: Vec<LaunchTemplate>,
    /// `[[launch_configuration]]`: what an instance is, the legacy way.
    #[serde(default, rename = "launch_configuration")]
    pub launch_configurations: Vec<LaunchConfiguration>,
    /// `[[auto_scaling_group]]`: when and where instances run, and how many.
    #[serde(default, rename = "auto_scaling_group")]
    pub auto_scaling_groups: Vec<AutoScalingGroup>,
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                field: "(file)".into(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let error_at = |span: Option<Range<usize>>, field: String, message: String| {
            let (line, column) = span.map_or((0, 0), |s| line_column(text, s.start));
            ConfigError {
                file: file.to_owned(),
                line,
                column,
                field,
                message,
            }
        };
        let doc = match toml_edit::ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                return Err(ConfigErrors(vec![error_at(
                    e.span(),
                    "(syntax)".into(),
                    e.message().trim().to_owned(),
                )]));
            }
        };
        // Every error at once: a key serde refuses (unknown, or of the wrong type) is
        // reported and taken out of a copy of the document, and the copy is read again. What
        // cannot be taken out (a missing field, an array element) ends the round.
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        let mut current = text.to_owned();
        let config = loop {
            let e = match toml::from_str::<Config>(&current) {
                Ok(config) => break Some(config),
                Err(e) => e,
            };
            let Ok(now) = toml_edit::ImDocument::parse(current.as_str()) else {
                break None;
            };
            let (field, message) = serde_problem(&now, &e);
            if removed.iter().any(|r| related(r, &field)) {
                // Only says again that a key taken out is needed where it was.
                break None;
            }
            let span = if message.starts_with("unknown field") {
                key_span_of(&doc, &field)
            } else {
                span_of(&doc, &field)
            }
            .or_else(|| e.span().filter(|_| removed.is_empty()));
            let missing = message.starts_with("missing field");
            errors.push(error_at(span, field.clone(), message));
            if missing || field.ends_with(']') || errors.len() >= 100 {
                break None;
            }
            let Ok(mut copy) = current.parse::<toml_edit::DocumentMut>() else {
                break None;
            };
            if !remove_at(&mut copy, &field) {
                break None;
            }
            removed.push(field);
            current = copy.to_string();
        };
        let Some(config) = config else {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(ConfigErrors(errors));
        };
        let problems = config.problems();
        if problems.is_empty() && errors.is_empty() {
            return Ok(config);
        }
        errors.extend(
            problems
                .into_iter()
                // An entry with a key taken out above may look wrong in other ways that
                // follow from it (a port of the wrong type looks missing): its own checks
                // wait until that key is fixed.
                .filter(|(field, _)| !removed.iter().any(|r| related(entry_of(r), field)))
                .map(|(field, message)| error_at(span_of(&doc, &field), field, message)),
        );
        // Stable: problems at one place keep the order validation found them in.
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }

    /// Every target's address, of every group (with repeats).
    pub fn target_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.target_groups
            .iter()
            .flat_map(|g| g.targets.iter().map(|t| t.address))
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&TargetGroup> {
        self.target_groups.iter().find(|g| g.name == name)
    }
}
