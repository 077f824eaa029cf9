//! `[[auto_scaling_group]]`: when and where instances run. Sizes (min, desired, max), what to
//! launch (a launch template version or a launch configuration), the target groups the
//! instances register in, health checks and replacement, termination policies, and the
//! group's scaling policies, alarms, lifecycle hooks and scheduled actions, with EC2 Auto
//! Scaling's names and defaults.

use std::{collections::BTreeMap, fmt, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;

use super::{cidr::Cidr, duration};

/// EC2 Auto Scaling's default cooldown.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);

/// An auto scaling group.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AutoScalingGroup {
    pub name: String,
    /// `{ name = "web", version = "$Default" }` (or `"$Latest"`, or a number as a string).
    pub launch_template: Option<TemplateRef>,
    /// A launch configuration's name, instead of a launch template.
    pub launch_configuration: Option<String>,
    /// Where instances run: `local` (default: this machine) or `exec` (a hook of yours).
    #[serde(default)]
    pub provider: ProviderKind,
    /// The `exec` provider's program (see the README for its JSON protocol).
    pub exec_hook: Option<PathBuf>,
    /// Where instance addresses come from (else the template's `subnet`).
    pub subnet: Option<Cidr>,
    pub min_size: u32,
    pub max_size: u32,
    /// Default: `min_size` (as EC2).
    pub desired_capacity: Option<u32>,
    /// Target groups (by name) every instance in service is registered in.
    #[serde(default)]
    pub target_groups: Vec<String>,
    /// `EC2` (default: the instance runs) or `ELB` (also its target groups' health checks).
    #[serde(default)]
    pub health_check_type: HealthCheckType,
    /// How long a new instance's failed health checks are ignored (default 300 s, the EC2
    /// console's default).
    #[serde(
        default = "default_grace_period",
        deserialize_with = "duration::deserialize"
    )]
    pub health_check_grace_period: Duration,
    /// Between a simple scaling policy's changes (default 300 s).
    #[serde(
        default = "default_cooldown",
        deserialize_with = "duration::deserialize"
    )]
    pub default_cooldown: Duration,
    /// How long a new instance takes before its metrics count (none: each policy's own, or
    /// EC2's rules).
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub default_instance_warmup: Option<Duration>,
    /// Applied in order until one instance remains (default `["Default"]`).
    #[serde(default = "default_termination_policies")]
    pub termination_policies: Vec<TerminationPolicy>,
    /// New instances start protected from scale-in.
    #[serde(default)]
    pub new_instances_protected_from_scale_in: bool,
    /// Instances older than this are replaced (none: never; else 1 day to 365 days, as EC2).
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub max_instance_lifetime: Option<Duration>,
    /// How instances failing health checks or outliving their lifetime are replaced
    /// (none: terminated and replaced at once, as EC2's default).
    pub instance_maintenance_policy: Option<MaintenancePolicy>,
    /// Processes suspended from the start (`suspend`/`resume` change them at run time).
    #[serde(default)]
    pub suspended_processes: Vec<ScalingProcess>,
    #[serde(rename = "policy", default)]
    pub policies: Vec<ScalingPolicy>,
    #[serde(rename = "alarm", default)]
    pub alarms: Vec<Alarm>,
    #[serde(rename = "lifecycle_hook", default)]
    pub lifecycle_hooks: Vec<LifecycleHook>,
    #[serde(rename = "scheduled_action", default)]
    pub scheduled_actions: Vec<ScheduledAction>,
    /// Fields serde does not know: EC2's are refused by name (`refused_field`), others as
    /// unknown.
    #[serde(flatten)]
    pub other: BTreeMap<String, toml::Value>,
}

impl AutoScalingGroup {
    /// The desired capacity the file asks for.
    pub fn desired(&self) -> u32 {
        self.desired_capacity.unwrap_or(self.min_size)
    }
}

/// The fields a group takes, for the message about one it does not.
pub const GROUP_FIELDS: &[&str] = &[
    "name",
    "launch_template",
    "launch_configuration",
    "provider",
    "exec_hook",
    "subnet",
    "min_size",
    "max_size",
    "desired_capacity",
    "target_groups",
    "health_check_type",
    "health_check_grace_period",
    "default_cooldown",
    "default_instance_warmup",
    "termination_policies",
    "new_instances_protected_from_scale_in",
    "max_instance_lifetime",
    "instance_maintenance_policy",
    "suspended_processes",
    "policy",
    "alarm",
    "lifecycle_hook",
    "scheduled_action",
];

/// Why an EC2 Auto Scaling group field is refused here, and what to write instead.
pub fn refused_field(field: &str) -> Option<&'static str> {
    Some(match field {
        "availability_zones" | "vpc_zone_identifier" => {
            "one machine is one zone: write `subnet` (a network like \"198.18.8.0/24\")"
        }
        "target_group_arns" => "write `target_groups`: the target groups' names",
        "load_balancer_names" => "classic load balancers do not exist here: write `target_groups`",
        "mixed_instances_policy" => "one launch template (or configuration) per group here",
        "capacity_rebalance" => "there are no spot instances to rebalance",
        "placement_group" => "everything runs on this machine: there is no placement",
        "service_linked_role_arn" => "there are no IAM roles here",
        "warm_pool" => "warm pools are not supported",
        "desired_capacity_type" => "capacity is counted in instances",
        "context" | "traffic_sources" | "tags" => "not meaningful on one machine",
        _ => return None,
    })
}

/// `instance_maintenance_policy = { min_healthy_percentage = 100, max_healthy_percentage =
/// 110 }`: the share of the desired capacity kept in service (0-100) and the share that may
/// be in service or pending (100-200) while instances are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenancePolicy {
    pub min_healthy_percentage: u32,
    pub max_healthy_percentage: u32,
}

/// Which launch template version a group launches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    pub name: String,
    /// `$Default` (default), `$Latest`, or a version number (as a string or a number).
    #[serde(default)]
    pub version: TemplateVersion,
}

/// A launch template version as a group names it: resolved at each launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateVersion {
    #[default]
    Default,
    Latest,
    Number(u32),
}

impl<'de> Deserialize<'de> for TemplateVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u32),
            Text(String),
        }
        let shape = "`$Default`, `$Latest` or a version number";
        match Written::deserialize(d)? {
            Written::Number(0) => Err(serde::de::Error::custom(format!(
                "versions count from 1: write {shape}"
            ))),
            Written::Number(n) => Ok(Self::Number(n)),
            Written::Text(t) => match t.as_str() {
                "$Default" => Ok(Self::Default),
                "$Latest" => Ok(Self::Latest),
                other => match other.parse::<u32>() {
                    Ok(n) if n > 0 => Ok(Self::Number(n)),
                    _ => Err(serde::de::Error::custom(format!(
                        "`{other}` is no version: write {shape}"
                    ))),
                },
            },
        }
    }
}

/// Where a group's instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// This machine: a network namespace, a cgroup and a process tree per instance.
    #[default]
    Local,
    /// A program of the user's, spoken to in JSON (launch, terminate, describe).
    Exec,
}

/// What decides that an instance is unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum HealthCheckType {
    /// The instance's process runs.
    #[default]
    #[serde(rename = "EC2")]
    Ec2,
    /// Also: no target group it is registered in reports it unhealthy.
    #[serde(rename = "ELB")]
    Elb,
}

/// Errors in a group's termination policies (the configuration's side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TerminationError {
    /// A policy AWS has that means nothing on one machine.
    #[error("termination policy {name} is not supported here: {why}")]
    Unsupported { name: String, why: &'static str },
    /// A name that is not one of AWS's termination policies.
    #[error(
        "unknown termination policy {name:?}; accepted: Default, OldestInstance, \
         NewestInstance, OldestLaunchTemplate, OldestLaunchConfiguration"
    )]
    Unknown { name: String },
}

/// A termination policy, by AWS's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationPolicy {
    /// AWS's default order (here: launch configuration first, then the oldest launch
    /// template).
    Default,
    /// The instance launched first.
    OldestInstance,
    /// The instance launched last.
    NewestInstance,
    /// Instances of a non-current launch template, then of the oldest version of the current.
    OldestLaunchTemplate,
    /// Instances of a launch configuration other than the group's current one.
    OldestLaunchConfiguration,
}

impl fmt::Display for TerminationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Default => "Default",
            Self::OldestInstance => "OldestInstance",
            Self::NewestInstance => "NewestInstance",
            Self::OldestLaunchTemplate => "OldestLaunchTemplate",
            Self::OldestLaunchConfiguration => "OldestLaunchConfiguration",
        })
    }
}

impl FromStr for TerminationPolicy {
    type Err = TerminationError;

    /// AWS's names, exactly as AWS spells them.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "Default" => Ok(Self::Default),
            "OldestInstance" => Ok(Self::OldestInstance),
            "NewestInstance" => Ok(Self::NewestInstance),
            "OldestLaunchTemplate" => Ok(Self::OldestLaunchTemplate),
            "OldestLaunchConfiguration" => Ok(Self::OldestLaunchConfiguration),
            "ClosestToNextInstanceHour" => Err(TerminationError::Unsupported {
                name: name.to_owned(),
                why: "instances on one machine have no billing hour to be close to",
            }),
            "AllocationStrategy" => Err(TerminationError::Unsupported {
                name: name.to_owned(),
                why: "there are no Spot or On-Demand instance pools to align to",
            }),
            _ => Err(TerminationError::Unknown {
                name: name.to_owned(),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for TerminationPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The processes `suspend` and `resume` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum ScalingProcess {
    Launch,
    Terminate,
    HealthCheck,
    ReplaceUnhealthy,
    AlarmNotification,
    ScheduledActions,
    AddToLoadBalancer,
    InstanceRefresh,
    /// Accepted for scripts written for EC2; there is one zone, nothing to rebalance.
    #[serde(rename = "AZRebalance")]
    AzRebalance,
}

/// The metrics policies and alarms read, per instance in service and warmed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalingMetric {
    /// Average CPU of the group's instances, percent of their type's CPU (from cgroups).
    CpuUtilization,
    /// Established flows per target (XDP counters).
    ActiveFlowsPerTarget,
    /// New flows per target per second (XDP counters).
    NewFlowsPerTarget,
    /// Bytes per target per second, both ways (XDP counters).
    BytesPerTarget,
    /// Requests per target per second (the L7 proxy).
    RequestsPerTarget,
}

impl ScalingMetric {
    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CpuUtilization => "cpu_utilization",
            Self::ActiveFlowsPerTarget => "active_flows_per_target",
            Self::NewFlowsPerTarget => "new_flows_per_target",
            Self::BytesPerTarget => "bytes_per_target",
            Self::RequestsPerTarget => "requests_per_target",
        }
    }
}

/// `[[auto_scaling_group.policy]]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ScalingPolicy {
    pub name: String,
    #[serde(flatten)]
    pub kind: PolicyKind,
}

/// A policy's type and its own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyKind {
    /// Keeps a metric near `target`: out fast and in proportion, in slowly.
    TargetTracking {
        metric: ScalingMetric,
        target: f64,
        #[serde(default)]
        disable_scale_in: bool,
        #[serde(default, deserialize_with = "duration::deserialize_optional")]
        estimated_instance_warmup: Option<Duration>,
        /// The period of the metric's datapoints (default 60 s; 10, 20 or 30 s read it at
        /// high resolution, as AWS's target tracking on high-resolution metrics does).
        #[serde(default, deserialize_with = "duration::deserialize_optional")]
        period: Option<Duration>,
    },
    /// Adjusts by the step the alarm's breach falls in.
    Step {
        alarm: String,
        adjustment_type: AdjustmentType,
        steps: Vec<Step>,
        min_adjustment_magnitude: Option<u32>,
        #[serde(default, deserialize_with = "duration::deserialize_optional")]
        estimated_instance_warmup: Option<Duration>,
    },
    /// Adjusts once per alarm, then waits for the cooldown.
    Simple {
        alarm: String,
        adjustment_type: AdjustmentType,
        adjustment: i32,
        min_adjustment_magnitude: Option<u32>,
        #[serde(default, deserialize_with = "duration::deserialize_optional")]
        cooldown: Option<Duration>,
    },
}

/// How an adjustment changes the desired capacity (AWS's `AdjustmentType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AdjustmentType {
    /// Add the value to the current capacity (negative removes).
    ChangeInCapacity,
    /// Set the capacity to the value.
    ExactCapacity,
    /// Add this percentage of the current capacity, rounded the way AWS rounds.
    PercentChangeInCapacity,
}

impl fmt::Display for AdjustmentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ChangeInCapacity => "ChangeInCapacity",
            Self::ExactCapacity => "ExactCapacity",
            Self::PercentChangeInCapacity => "PercentChangeInCapacity",
        })
    }
}

/// A step of a step scaling policy: bounds relative to the alarm's threshold.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Inclusive lower bound of the breach (none: minus infinity).
    pub lower: Option<f64>,
    /// Exclusive upper bound of the breach (none: infinity).
    pub upper: Option<f64>,
    pub adjustment: i32,
}

/// `[[auto_scaling_group.alarm]]`: a metric alarm, as CloudWatch's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alarm {
    pub name: String,
    pub metric: ScalingMetric,
    #[serde(default)]
    pub statistic: Statistic,
    /// Length of a datapoint (default 60 s; at least 10 s, a multiple of 10 s).
    #[serde(default = "default_period", deserialize_with = "duration::deserialize")]
    pub period: Duration,
    pub evaluation_periods: u32,
    /// M of the N evaluation periods (default: all N).
    pub datapoints_to_alarm: Option<u32>,
    pub comparison: ComparisonOperator,
    pub threshold: f64,
    #[serde(default)]
    pub treat_missing_data: TreatMissingData,
}

/// How a period's datapoints become one value (CloudWatch's `Statistic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Statistic {
    /// The sum divided by the number of samples.
    #[default]
    Average,
    /// All samples added.
    Sum,
    /// The lowest sample.
    Minimum,
    /// The highest sample.
    Maximum,
    /// How many samples the period holds.
    SampleCount,
}

/// How the period's value is compared with the threshold (CloudWatch's `ComparisonOperator`);
/// a value for which the comparison holds is *breaching*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ComparisonOperator {
    /// `value >= threshold` breaches.
    GreaterThanOrEqualToThreshold,
    /// `value > threshold` breaches.
    GreaterThanThreshold,
    /// `value < threshold` breaches.
    LessThanThreshold,
    /// `value <= threshold` breaches.
    LessThanOrEqualToThreshold,
}

/// What a period without datapoints counts as (CloudWatch's `TreatMissingData`), used only
/// when the evaluation range holds fewer real datapoints than the evaluation periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TreatMissingData {
    /// `missing` (CloudWatch's default): not counted; when the real datapoints cannot decide,
    /// the alarm goes to `INSUFFICIENT_DATA`.
    #[default]
    Missing,
    /// `ignore`: not counted; when the real datapoints cannot decide, the state is kept.
    Ignore,
    /// `breaching`: a missing datapoint counts as breaching.
    Breaching,
    /// `notBreaching`: a missing datapoint counts as within the threshold.
    NotBreaching,
}

/// `[[auto_scaling_group.lifecycle_hook]]`: instances wait in a transition for a `complete`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleHook {
    pub name: String,
    pub transition: LifecycleTransition,
    /// How long an instance waits for `complete` or a heartbeat (default 3600 s; 30 s to 7200 s).
    #[serde(
        default = "default_heartbeat_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub heartbeat_timeout: Duration,
    /// The result when the timeout passes (default `ABANDON`, as EC2).
    #[serde(default)]
    pub default_result: LifecycleActionResult,
    /// A program run when an instance enters the wait, with the instance and hook in its
    /// environment (EC2 sends a notification instead).
    pub command: Option<Vec<String>>,
}

/// The transition a hook pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LifecycleTransition {
    /// `autoscaling:EC2_INSTANCE_LAUNCHING`.
    #[serde(rename = "autoscaling:EC2_INSTANCE_LAUNCHING", alias = "launching")]
    Launching,
    /// `autoscaling:EC2_INSTANCE_TERMINATING`.
    #[serde(rename = "autoscaling:EC2_INSTANCE_TERMINATING", alias = "terminating")]
    Terminating,
}

impl fmt::Display for LifecycleTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Launching => "autoscaling:EC2_INSTANCE_LAUNCHING",
            Self::Terminating => "autoscaling:EC2_INSTANCE_TERMINATING",
        })
    }
}

/// How a lifecycle action ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum LifecycleActionResult {
    /// The custom action succeeded: go on.
    #[serde(rename = "CONTINUE")]
    Continue,
    /// It failed: terminate a launching instance; stop the other hooks of a terminating one.
    #[default]
    #[serde(rename = "ABANDON")]
    Abandon,
}

impl fmt::Display for LifecycleActionResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Continue => "CONTINUE",
            Self::Abandon => "ABANDON",
        })
    }
}

/// `[[auto_scaling_group.scheduled_action]]`: sizes set at a time, or on a cron schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledAction {
    pub name: String,
    /// A 5-field cron expression (minute hour day-of-month month day-of-week); none: once, at
    /// `start_time`.
    pub recurrence: Option<String>,
    /// IANA time zone of `recurrence` and of times without an offset (default UTC).
    pub time_zone: Option<String>,
    /// RFC 3339 time: the one firing, or when the recurrence starts.
    pub start_time: Option<String>,
    /// RFC 3339 time after which the recurrence stops.
    pub end_time: Option<String>,
    pub min_size: Option<u32>,
    pub max_size: Option<u32>,
    pub desired_capacity: Option<u32>,
}

fn default_grace_period() -> Duration {
    Duration::from_secs(300)
}

fn default_cooldown() -> Duration {
    DEFAULT_COOLDOWN
}

fn default_termination_policies() -> Vec<TerminationPolicy> {
    vec![TerminationPolicy::Default]
}

fn default_period() -> Duration {
    Duration::from_secs(60)
}

fn default_heartbeat_timeout() -> Duration {
    Duration::from_secs(3600)
}
