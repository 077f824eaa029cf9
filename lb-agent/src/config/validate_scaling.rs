//! The checks of instance types, launch templates and configurations, and auto scaling groups:
//! names and references, EC2 Auto Scaling's ranges and rules (min <= desired <= max, step
//! bounds, alarm periods, lifecycle timeouts), and fields that mean nothing on one machine.

use std::{collections::HashSet, time::Duration};

use super::{
    AdjustmentType, AutoScalingGroup, Cidr, Config, InstanceDefinition, PolicyKind, ProviderKind,
    Step, TemplateVersion,
    auto_scaling_group::{self, GROUP_FIELDS},
    launch_template::{self, DEFINITION_FIELDS},
    validate::{Problems, check_duration, check_name},
};

/// Most instances one group may have.
pub const MAX_GROUP_SIZE: u32 = 1000;

impl Config {
    pub(super) fn validate_scaling(&self, p: &mut Problems) {
        for (name, t) in &self.instance_types {
            let at = format!("instance_types.{name}");
            check_name(p, at.clone(), name);
            if !(t.cpu > 0.0 && t.cpu <= 1024.0) {
                p.add(
                    format!("{at}.cpu"),
                    format!(
                        "{} is no CPU share: cores, above 0 (0.5: half a core)",
                        t.cpu
                    ),
                );
            }
            // Below this a cgroup's process cannot even start.
            if t.memory < 4 << 20 {
                p.add(
                    format!("{at}.memory"),
                    format!("{} bytes is too little: at least 4MiB", t.memory),
                );
            }
        }
        let mut templates = HashSet::new();
        for (i, t) in self.launch_templates.iter().enumerate() {
            let at = format!("launch_template[{i}]");
            check_name(p, format!("{at}.name"), &t.name);
            if !templates.insert(t.name.as_str()) {
                p.add(
                    format!("{at}.name"),
                    format!("launch template `{}` is defined twice", t.name),
                );
            }
            if t.versions.is_empty() {
                p.add(
                    format!("{at}.version"),
                    "a launch template has at least one `[[launch_template.version]]`",
                );
            }
            if let Some(d) = t.default_version
                && t.version(d).is_none()
            {
                p.add(
                    format!("{at}.default_version"),
                    format!(
                        "version {d} does not exist: the template has versions 1..={}",
                        t.versions.len()
                    ),
                );
            }
            for (j, v) in t.versions.iter().enumerate() {
                self.check_definition(p, &format!("{at}.version[{j}]"), v);
            }
        }
        let mut configurations = HashSet::new();
        for (i, c) in self.launch_configurations.iter().enumerate() {
            let at = format!("launch_configuration[{i}]");
            check_name(p, format!("{at}.name"), &c.name);
            if !configurations.insert(c.name.as_str()) {
                p.add(
                    format!("{at}.name"),
                    format!("launch configuration `{}` is defined twice", c.name),
                );
            }
            self.check_definition(p, &at, &c.definition);
        }
        let mut groups = HashSet::new();
        for (i, g) in self.auto_scaling_groups.iter().enumerate() {
            let at = format!("auto_scaling_group[{i}]");
            check_name(p, format!("{at}.name"), &g.name);
            if !groups.insert(g.name.as_str()) {
                p.add(
                    format!("{at}.name"),
                    format!("auto scaling group `{}` is defined twice", g.name),
                );
            }
            self.check_group(p, &at, g);
        }
    }

    fn check_definition(&self, p: &mut Problems, at: &str, d: &InstanceDefinition) {
        if d.command.first().is_none_or(String::is_empty) {
            p.add(
                format!("{at}.command"),
                "an instance runs a command: write e.g. command = [\"python3\", \"-m\", \"http.server\", \"8080\"]",
            );
        }
        if let Some(t) = &d.instance_type
            && !self.instance_types.contains_key(t)
        {
            let known: Vec<&str> = self.instance_types.keys().map(String::as_str).collect();
            p.add(
                format!("{at}.instance_type"),
                format!(
                    "no instance type `{t}` in [instance_types] (defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        for (k, port) in d.ports.iter().enumerate() {
            if *port == 0 {
                p.add(
                    format!("{at}.ports[{k}]"),
                    "port 0 is not a port: 1..=65535",
                );
            }
        }
        for (k, rule) in d.inbound_rules.iter().flatten().enumerate() {
            if rule.ports.is_empty() || rule.ports.contains(&0) {
                p.add(
                    format!("{at}.inbound_rules[{k}].ports"),
                    "an inbound rule allows one or more ports of 1..=65535",
                );
            }
        }
        for name in d.environment.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                p.add(
                    format!("{at}.environment"),
                    format!("`{name}` is no environment variable name"),
                );
            }
        }
        check_duration(
            p,
            format!("{at}.stop_timeout"),
            d.stop_timeout,
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        for field in d.other.keys() {
            let message = match launch_template::refused_field(field) {
                Some(why) => format!("`{field}` is EC2's, not ours: {why}"),
                None => format!(
                    "unknown field `{field}`, expected one of {}",
                    DEFINITION_FIELDS.join(", ")
                ),
            };
            p.add(format!("{at}.{field}"), message);
        }
    }

    /// The definitions a group may launch (each version its reference can resolve to: the
    /// default and the latest may change, so a reference by name checks both).
    fn definitions_of(&self, g: &AutoScalingGroup) -> Vec<&InstanceDefinition> {
        if let Some(r) = &g.launch_template {
            let Some(t) = self.launch_templates.iter().find(|t| t.name == r.name) else {
                return Vec::new();
            };
            return match r.version {
                TemplateVersion::Number(n) => t.version(n).into_iter().collect(),
                TemplateVersion::Default | TemplateVersion::Latest => {
                    [t.default_version(), t.latest_version()]
                        .into_iter()
                        .filter_map(|n| t.version(n))
                        .collect()
                }
            };
        }
        g.launch_configuration
            .as_ref()
            .and_then(|name| self.launch_configurations.iter().find(|c| &c.name == name))
            .map(|c| &c.definition)
            .into_iter()
            .collect()
    }

    fn check_group(&self, p: &mut Problems, at: &str, g: &AutoScalingGroup) {
        match (&g.launch_template, &g.launch_configuration) {
            (Some(_), Some(_)) | (None, None) => p.add(
                at.to_owned(),
                "a group launches from a `launch_template` or a `launch_configuration`: one of the two",
            ),
            (Some(r), None) => match self.launch_templates.iter().find(|t| t.name == r.name) {
                None => p.add(
                    format!("{at}.launch_template.name"),
                    format!("no launch template `{}`", r.name),
                ),
                Some(t) => {
                    if let TemplateVersion::Number(n) = r.version
                        && t.version(n).is_none()
                    {
                        p.add(
                            format!("{at}.launch_template.version"),
                            format!(
                                "launch template `{}` has no version {n} (it has 1..={})",
                                t.name,
                                t.versions.len()
                            ),
                        );
                    }
                }
            },
            (None, Some(name)) => {
                if !self.launch_configurations.iter().any(|c| &c.name == name) {
                    p.add(
                        format!("{at}.launch_configuration"),
                        format!("no launch configuration `{name}`"),
                    );
                }
            }
        }
        match (g.provider, &g.exec_hook) {
            (ProviderKind::Exec, None) => p.add(
                format!("{at}.exec_hook"),
                "the exec provider runs a program of yours: write exec_hook = \"/path/to/hook\"",
            ),
            (ProviderKind::Local, Some(_)) => p.add(
                format!("{at}.exec_hook"),
                "only the exec provider runs a hook: write provider = \"exec\", or remove it",
            ),
            _ => {}
        }
        let desired = g.desired();
        if g.min_size > g.max_size || desired < g.min_size || desired > g.max_size {
            // EC2's own words for it.
            p.add(
                format!("{at}.desired_capacity"),
                format!(
                    "Desired capacity:{desired} must be between the specified min size:{} and max size:{}",
                    g.min_size, g.max_size
                ),
            );
        }
        if g.max_size > MAX_GROUP_SIZE {
            p.add(
                format!("{at}.max_size"),
                format!("{} is more than {MAX_GROUP_SIZE} instances", g.max_size),
            );
        }
        let definitions = self.definitions_of(g);
        if g.provider == ProviderKind::Local {
            let subnets: Vec<Option<Cidr>> = match g.subnet {
                Some(s) => vec![Some(s)],
                None => definitions.iter().map(|d| d.subnet).collect(),
            };
            if subnets.iter().any(Option::is_none) {
                p.add(
                    format!("{at}.subnet"),
                    "local instances need addresses: write subnet = \"198.18.8.0/24\" (or a `subnet` in the launch template)",
                );
            }
            for subnet in subnets.into_iter().flatten() {
                // Network and broadcast addresses, and the load balancer's end of each link.
                let usable = subnet.size().saturating_sub(3);
                if usable < u128::from(g.max_size) {
                    p.add(
                        format!("{at}.subnet"),
                        format!(
                            "{subnet} has {usable} addresses for instances, fewer than max_size {}",
                            g.max_size
                        ),
                    );
                }
            }
        }
        for (k, name) in g.target_groups.iter().enumerate() {
            if !self.target_groups.iter().any(|t| &t.name == name) {
                p.add(
                    format!("{at}.target_groups[{k}]"),
                    format!("no target group `{name}`"),
                );
            }
        }
        if !g.target_groups.is_empty() && definitions.iter().any(|d| d.ports.is_empty()) {
            p.add(
                format!("{at}.target_groups"),
                "instances registered in target groups serve a port: write `ports` in the launch template",
            );
        }
        for (field, d, max) in [
            (
                "health_check_grace_period",
                g.health_check_grace_period,
                86_400,
            ),
            ("default_cooldown", g.default_cooldown, 86_400),
        ] {
            check_duration(
                p,
                format!("{at}.{field}"),
                d,
                Duration::ZERO,
                Duration::from_secs(max),
            );
        }
        if let Some(warmup) = g.default_instance_warmup {
            check_duration(
                p,
                format!("{at}.default_instance_warmup"),
                warmup,
                Duration::ZERO,
                Duration::from_secs(3600),
            );
        }
        if let Some(lifetime) = g.max_instance_lifetime {
            // EC2's bounds: a day to a year.
            check_duration(
                p,
                format!("{at}.max_instance_lifetime"),
                lifetime,
                Duration::from_secs(86_400),
                Duration::from_secs(31_536_000),
            );
        }
        if g.termination_policies.is_empty() {
            p.add(
                format!("{at}.termination_policies"),
                "at least one termination policy (EC2's default: [\"Default\"])",
            );
        }
        check_unique(p, at, "policy", g.policies.iter().map(|x| x.name.as_str()));
        check_unique(p, at, "alarm", g.alarms.iter().map(|x| x.name.as_str()));
        check_unique(
            p,
            at,
            "lifecycle_hook",
            g.lifecycle_hooks.iter().map(|x| x.name.as_str()),
        );
        check_unique(
            p,
            at,
            "scheduled_action",
            g.scheduled_actions.iter().map(|x| x.name.as_str()),
        );
        for (k, policy) in g.policies.iter().enumerate() {
            check_policy(p, &format!("{at}.policy[{k}]"), &policy.kind, g);
        }
        // Alarms' limits and scheduled actions' times are `scaling::problems`'s: they are
        // checked by the types that evaluate them.
        for (k, hook) in g.lifecycle_hooks.iter().enumerate() {
            let at = format!("{at}.lifecycle_hook[{k}]");
            check_duration(
                p,
                format!("{at}.heartbeat_timeout"),
                hook.heartbeat_timeout,
                Duration::from_secs(30),
                Duration::from_secs(7200),
            );
            if let Some(command) = &hook.command
                && command.first().is_none_or(String::is_empty)
            {
                p.add(format!("{at}.command"), "a command to run, or no `command`");
            }
        }
        for field in g.other.keys() {
            let message = match auto_scaling_group::refused_field(field) {
                Some(why) => format!("`{field}` is EC2's, not ours: {why}"),
                None => format!(
                    "unknown field `{field}`, expected one of {}",
                    GROUP_FIELDS.join(", ")
                ),
            };
            p.add(format!("{at}.{field}"), message);
        }
    }
}

fn check_unique<'a>(p: &mut Problems, at: &str, what: &str, names: impl Iterator<Item = &'a str>) {
    let mut seen = HashSet::new();
    for (k, name) in names.enumerate() {
        check_name(p, format!("{at}.{what}[{k}].name"), name);
        if !seen.insert(name) {
            p.add(
                format!("{at}.{what}[{k}].name"),
                format!(
                    "{} `{name}` is defined twice in the group",
                    what.replace('_', " ")
                ),
            );
        }
    }
}

fn check_policy(p: &mut Problems, at: &str, kind: &PolicyKind, g: &AutoScalingGroup) {
    match kind {
        PolicyKind::TargetTracking {
            metric,
            target,
            period,
            ..
        } => {
            // AWS's metric periods for target tracking: 10, 20, 30 s (high resolution) or
            // a multiple of 60 s.
            if let Some(period) = period {
                let s = period.as_secs();
                if period.subsec_nanos() != 0
                    || !(matches!(s, 10 | 20 | 30) || (s > 0 && s % 60 == 0 && s <= 86_400))
                {
                    p.add(
                        format!("{at}.period"),
                        format!(
                            "{}: a target tracking period is 10s, 20s, 30s or a multiple of 60s",
                            crate::config::duration_text(*period)
                        ),
                    );
                }
            }
            let cpu = *metric == super::ScalingMetric::CpuUtilization;
            let positive = target.is_finite() && *target > 0.0;
            if !positive || (cpu && *target > 100.0) {
                p.add(
                    format!("{at}.target"),
                    format!(
                        "{target} is no target: above 0{}",
                        if cpu { ", at most 100 (percent)" } else { "" }
                    ),
                );
            }
        }
        PolicyKind::Step {
            alarm,
            adjustment_type,
            steps,
            min_adjustment_magnitude,
            ..
        } => {
            check_alarm_driven(p, at, g, alarm, *adjustment_type, *min_adjustment_magnitude);
            check_steps(p, at, steps, *adjustment_type);
        }
        PolicyKind::Simple {
            alarm,
            adjustment_type,
            adjustment,
            min_adjustment_magnitude,
            ..
        } => {
            check_alarm_driven(p, at, g, alarm, *adjustment_type, *min_adjustment_magnitude);
            if *adjustment_type == AdjustmentType::ExactCapacity && *adjustment < 0 {
                p.add(format!("{at}.adjustment"), "an exact capacity is 0 or more");
            }
        }
    }
}

/// What step and simple policies share: an alarm of the group, and a minimum magnitude only
/// for a percent adjustment.
fn check_alarm_driven(
    p: &mut Problems,
    at: &str,
    g: &AutoScalingGroup,
    alarm: &str,
    kind: AdjustmentType,
    magnitude: Option<u32>,
) {
    if !g.alarms.iter().any(|a| a.name == alarm) {
        p.add(
            format!("{at}.alarm"),
            format!("no alarm `{alarm}` in the group"),
        );
    }
    check_magnitude(p, at, kind, magnitude);
}

fn check_magnitude(p: &mut Problems, at: &str, kind: AdjustmentType, magnitude: Option<u32>) {
    if magnitude.is_some() && kind != AdjustmentType::PercentChangeInCapacity {
        p.add(
            format!("{at}.min_adjustment_magnitude"),
            "only a PercentChangeInCapacity adjustment takes a minimum magnitude (as EC2)",
        );
    }
}

/// EC2's rules for step adjustments: bounds relative to the threshold, lower < upper, no
/// overlap and no gap between steps, one step without a lower bound at most and one without
/// an upper bound at most; an exact capacity is 0 or more.
fn check_steps(p: &mut Problems, at: &str, steps: &[Step], kind: AdjustmentType) {
    let field = format!("{at}.steps");
    if steps.is_empty() {
        p.add(field, "a step policy has one or more steps");
        return;
    }
    for (k, step) in steps.iter().enumerate() {
        if let (Some(lower), Some(upper)) = (step.lower, step.upper)
            && lower >= upper
        {
            p.add(
                format!("{field}[{k}]"),
                format!("the lower bound {lower} is not below the upper bound {upper}"),
            );
        }
        if kind == AdjustmentType::ExactCapacity && step.adjustment < 0 {
            p.add(
                format!("{field}[{k}].adjustment"),
                "an exact capacity is 0 or more",
            );
        }
    }
    if steps.iter().filter(|s| s.lower.is_none()).count() > 1 {
        p.add(field.clone(), "only one step may have no lower bound");
    }
    if steps.iter().filter(|s| s.upper.is_none()).count() > 1 {
        p.add(field.clone(), "only one step may have no upper bound");
    }
    let mut sorted: Vec<&Step> = steps.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |s: &Step| s.lower.unwrap_or(f64::NEG_INFINITY);
        key(a).total_cmp(&key(b))
    });
    for pair in sorted.windows(2) {
        let upper = pair[0].upper.unwrap_or(f64::INFINITY);
        let lower = pair[1].lower.unwrap_or(f64::NEG_INFINITY);
        if upper > lower {
            p.add(
                field.clone(),
                format!("steps overlap: one ends at {upper}, the next starts at {lower}"),
            );
        } else if upper < lower {
            p.add(
                field.clone(),
                format!("steps leave a gap: one ends at {upper}, the next starts at {lower}"),
            );
        }
    }
}
