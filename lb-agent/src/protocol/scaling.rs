//! What the auto scaling groups show and take through the API: the groups with their
//! instances (EC2 Auto Scaling's `describe-auto-scaling-groups`), their activity history
//! (`describe-scaling-activities`), and the answers to `set-desired`, `terminate-instance` and
//! `set-protection`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An auto scaling group as `asg list` and `asg describe` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsgView {
    pub name: String,
    pub min_size: u32,
    pub desired_capacity: u32,
    pub max_size: u32,
    /// `NAME` with its version as the group names it (`$Default`, `$Latest`, a number).
    pub launch_template: Option<String>,
    pub launch_configuration: Option<String>,
    /// `local` or `exec`.
    pub provider: String,
    pub target_groups: Vec<String>,
    /// `EC2` or `ELB`.
    pub health_check_type: String,
    pub health_check_grace_period_seconds: u64,
    pub default_cooldown_seconds: u64,
    pub termination_policies: Vec<String>,
    pub new_instances_protected_from_scale_in: bool,
    pub suspended_processes: Vec<String>,
    /// How failing instances are replaced (none: each terminated and replaced at once).
    pub instance_maintenance_policy: Option<MaintenancePolicyView>,
    /// After failed launches, when the next may start (RFC 3339).
    pub launches_wait_until: Option<String>,
    pub instances: Vec<AsgInstanceView>,
    /// Its alarms, named ones and those of its target tracking policies.
    pub alarms: Vec<AlarmView>,
    /// Its latest instance refresh.
    pub instance_refresh: Option<RefreshView>,
    /// Removed from the config: its instances are terminating, then it goes.
    pub deleting: bool,
}

/// A group's instance maintenance policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenancePolicyView {
    pub min_healthy_percentage: u32,
    pub max_healthy_percentage: u32,
}

/// An instance refresh (`describe-instance-refreshes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshView {
    pub group: String,
    pub instance_refresh_id: u64,
    /// `InProgress`, `Successful` or `Cancelled`.
    pub status: String,
    pub percentage_complete: u32,
    pub instances_to_update: u32,
    pub min_healthy_percentage: u32,
    pub max_healthy_percentage: u32,
    pub instance_warmup_seconds: u64,
    /// RFC 3339.
    pub start_time: String,
    pub end_time: Option<String>,
}

/// A group's suspended processes after `suspend` or `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessesSet {
    pub group: String,
    pub suspended_processes: Vec<String>,
}

/// A lifecycle action completed, or its heartbeat recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleActionView {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    /// `CONTINUE` or `ABANDON` (a completion).
    pub result: Option<String>,
    /// When the wait now times out (a heartbeat), RFC 3339.
    pub timeout_at: Option<String>,
}

/// One alarm of a group (CloudWatch's `describe-alarms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmView {
    pub name: String,
    /// The metric it watches (the config's name).
    pub metric: String,
    /// `OK`, `ALARM` or `INSUFFICIENT_DATA`.
    pub state: String,
    /// Why, in CloudWatch's words.
    pub reason: String,
    /// The newest datapoint.
    pub last_value: Option<f64>,
    pub threshold: f64,
}

/// One instance of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsgInstanceView {
    pub instance_id: String,
    pub address: IpAddr,
    /// `Pending`, `InService`, `Terminating`, `Terminating:Proceed` (EC2's lifecycle states).
    pub lifecycle_state: String,
    /// `Healthy` or `Unhealthy`, as EC2 Auto Scaling judges it.
    pub health_status: String,
    pub launch_template: Option<String>,
    /// The template version it was launched from.
    pub launch_template_version: Option<u32>,
    pub launch_configuration: Option<String>,
    pub protected_from_scale_in: bool,
    /// RFC 3339.
    pub launched_at: String,
    /// Percent of its instance type's CPU, at the last look.
    pub cpu_utilization: Option<f64>,
    /// Its main process, where the provider knows it.
    pub pid: Option<u32>,
}

/// One scaling activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityView {
    pub activity_id: u64,
    pub group: String,
    pub description: String,
    pub cause: String,
    /// EC2's `StatusCode`: `InProgress`, `Successful`, `Failed`, `Cancelled`, ...
    pub status: String,
    pub status_message: Option<String>,
    /// RFC 3339.
    pub start_time: String,
    pub end_time: Option<String>,
    pub progress: u8,
}

/// `set-desired` done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredCapacitySet {
    pub group: String,
    pub previous_desired_capacity: u32,
    pub desired_capacity: u32,
}

/// `terminate-instance` started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceTerminating {
    pub group: String,
    pub instance_id: String,
    /// Whether the desired capacity dropped by one (else a replacement is launched).
    pub decremented: bool,
    pub desired_capacity: u32,
}

/// `set-protection` done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectionSet {
    pub group: String,
    pub instances: Vec<String>,
    pub protected_from_scale_in: bool,
}
