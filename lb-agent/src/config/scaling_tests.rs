//! Instance types, launch templates and configurations, auto scaling groups: EC2's defaults,
//! and each rule of their validation.

use std::time::Duration;

use super::{
    AdjustmentType, Config, HealthCheckType, LifecycleActionResult, LifecycleTransition,
    PolicyKind, ProviderKind, ScalingMetric, Statistic, TemplateVersion, TerminationPolicy,
    TreatMissingData,
    fixture::{ConfigFile, errors, fields},
};

/// The fixture's good file (a `web` target group) with `scaling` after it.
fn with(scaling: &str) -> String {
    format!("{}\n{scaling}", ConfigFile::good().text())
}

const GOOD: &str = r#"
[instance_types]
small = { cpu = 0.5, memory = "256MiB" }

[[launch_template]]
name = "web"
[[launch_template.version]]
command = ["python3", "-m", "http.server", "8080"]
instance_type = "small"
ports = [8080]
[[launch_template.version]]
command = ["python3", "-m", "http.server", "8080"]
user_data = "echo booting $INSTANCE_ID"
instance_type = "small"
ports = [8080]
environment = { MODE = "v2" }
inbound_rules = [{ ports = [8080], sources = ["198.18.0.0/15"] }]
stop_timeout = "5s"

[[launch_configuration]]
name = "legacy"
command = ["sleep", "1000"]

[[auto_scaling_group]]
name = "web-asg"
launch_template = { name = "web" }
subnet = "198.18.8.0/24"
min_size = 1
max_size = 6
target_groups = ["web"]
[[auto_scaling_group.policy]]
name = "cpu50"
type = "target_tracking"
metric = "cpu_utilization"
target = 50.0
[[auto_scaling_group.policy]]
name = "steps"
type = "step"
alarm = "busy"
adjustment_type = "PercentChangeInCapacity"
min_adjustment_magnitude = 2
steps = [{ lower = 0, upper = 10, adjustment = 0 }, { lower = 10, upper = 20, adjustment = 10 }, { lower = 20, adjustment = 30 }]
[[auto_scaling_group.alarm]]
name = "busy"
metric = "requests_per_target"
evaluation_periods = 3
comparison = "GreaterThanOrEqualToThreshold"
threshold = 100.0
[[auto_scaling_group.lifecycle_hook]]
name = "warm"
transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
[[auto_scaling_group.scheduled_action]]
name = "mornings"
recurrence = "0 8 * * MON-FRI"
time_zone = "Europe/Paris"
desired_capacity = 3

[[auto_scaling_group]]
name = "batch"
launch_configuration = "legacy"
provider = "exec"
exec_hook = "/usr/local/bin/hook"
min_size = 0
max_size = 2
desired_capacity = 1
launch_template_version_is_not_a_field = 1
"#;

#[test]
fn a_group_gets_ec2_auto_scalings_defaults() {
    let good = GOOD.replace("launch_template_version_is_not_a_field = 1\n", "");
    let c = Config::parse(&with(&good), "t.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.instance_types["small"].memory, 256 << 20);
    let t = &c.launch_templates[0];
    assert_eq!((t.default_version(), t.latest_version()), (1, 2));
    assert_eq!(t.version(1).unwrap().stop_timeout, Duration::from_secs(30));
    assert_eq!(t.version(2).unwrap().stop_timeout, Duration::from_secs(5));
    assert!(t.version(3).is_none() && t.version(0).is_none());
    let g = &c.auto_scaling_groups[0];
    assert_eq!(g.desired(), 1, "desired defaults to min_size");
    assert_eq!(
        g.launch_template.as_ref().unwrap().version,
        TemplateVersion::Default
    );
    assert_eq!(g.provider, ProviderKind::Local);
    assert_eq!(g.health_check_type, HealthCheckType::Ec2);
    assert_eq!(g.health_check_grace_period, Duration::from_secs(300));
    assert_eq!(g.default_cooldown, Duration::from_secs(300));
    assert_eq!(g.termination_policies, [TerminationPolicy::Default]);
    assert!(!g.new_instances_protected_from_scale_in);
    assert_eq!(
        g.instance_maintenance_policy, None,
        "EC2: no policy by default"
    );
    let PolicyKind::TargetTracking {
        metric,
        disable_scale_in,
        ..
    } = &g.policies[0].kind
    else {
        panic!("{:?}", g.policies[0]);
    };
    assert_eq!(
        (*metric, *disable_scale_in),
        (ScalingMetric::CpuUtilization, false)
    );
    let PolicyKind::Step {
        adjustment_type,
        steps,
        ..
    } = &g.policies[1].kind
    else {
        panic!("{:?}", g.policies[1]);
    };
    assert_eq!(*adjustment_type, AdjustmentType::PercentChangeInCapacity);
    assert_eq!(steps[2].upper, None);
    let alarm = &g.alarms[0];
    assert_eq!(alarm.period, Duration::from_secs(60));
    assert_eq!(alarm.statistic, Statistic::Average);
    assert_eq!(alarm.treat_missing_data, TreatMissingData::Missing);
    assert_eq!(alarm.datapoints_to_alarm, None);
    let hook = &g.lifecycle_hooks[0];
    assert_eq!(hook.transition, LifecycleTransition::Launching);
    assert_eq!(hook.heartbeat_timeout, Duration::from_secs(3600));
    assert_eq!(hook.default_result, LifecycleActionResult::Abandon);
    assert_eq!(c.auto_scaling_groups[1].provider, ProviderKind::Exec);
}

#[test]
fn template_versions_are_named_as_ec2_names_them() {
    for (written, want) in [
        (r#""$Latest""#, TemplateVersion::Latest),
        (r#""$Default""#, TemplateVersion::Default),
        (r#""2""#, TemplateVersion::Number(2)),
        ("2", TemplateVersion::Number(2)),
    ] {
        let good = GOOD
            .replace("launch_template_version_is_not_a_field = 1\n", "")
            .replace(
                r#"launch_template = { name = "web" }"#,
                &format!(r#"launch_template = {{ name = "web", version = {written} }}"#),
            );
        let c = Config::parse(&with(&good), "t.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.auto_scaling_groups[0]
                .launch_template
                .as_ref()
                .unwrap()
                .version,
            want
        );
    }
    let bad = GOOD.replace(
        r#"launch_template = { name = "web" }"#,
        r#"launch_template = { name = "web", version = "newest" }"#,
    );
    let e = errors(&with(&bad));
    assert!(e[0].message.contains("$Latest"), "{e:?}");
}

#[test]
fn every_scaling_problem_is_reported_at_once_with_its_line() {
    let bad = GOOD
        .replace("min_size = 1\nmax_size = 6", "min_size = 4\nmax_size = 3")
        .replace(
            "instance_type = \"small\"\nports = [8080]\n[[launch_template.version]]",
            "instance_type = \"large\"\nports = [8080]\nimage_id = \"ami-12345\"\n[[launch_template.version]]",
        )
        .replace(
            r#"{ lower = 10, upper = 20, adjustment = 10 }"#,
            r#"{ lower = 15, upper = 20, adjustment = 10 }"#,
        )
        .replace("exec_hook = \"/usr/local/bin/hook\"\n", "");
    let text = with(&bad);
    let e = errors(&text);
    let want = [
        "launch_template[0].version[0].instance_type",
        "launch_template[0].version[0].image_id",
        "auto_scaling_group[0].desired_capacity",
        "auto_scaling_group[0].policy[1].steps",
        "auto_scaling_group[1].exec_hook",
        "auto_scaling_group[1].launch_template_version_is_not_a_field",
    ];
    assert_eq!(fields(&e), want, "{e:#?}");
    let message = |field: &str| {
        e.iter()
            .find(|x| x.field == field)
            .map(|x| x.message.as_str())
            .unwrap_or_default()
    };
    assert!(
        message("auto_scaling_group[0].desired_capacity")
            .contains("Desired capacity:4 must be between the specified min size:4 and max size:3")
    );
    assert!(message("launch_template[0].version[0].image_id").contains("`command`"));
    assert!(message("auto_scaling_group[0].policy[1].steps").contains("gap"));
    assert!(
        message("auto_scaling_group[1].launch_template_version_is_not_a_field")
            .contains("unknown field")
    );
    // The EC2 field is pointed at where it is written.
    let image = e.iter().find(|x| x.field.ends_with("image_id")).unwrap();
    assert_eq!(
        text.lines().nth(image.line - 1).map(str::trim),
        Some(r#"image_id = "ami-12345""#)
    );
}

#[test]
fn references_and_ec2s_bounds_are_checked() {
    let good = GOOD.replace("launch_template_version_is_not_a_field = 1\n", "");
    for (from, to, field, says) in [
        (
            r#"launch_template = { name = "web" }"#,
            r#"launch_template = { name = "api" }"#,
            "auto_scaling_group[0].launch_template.name",
            "no launch template `api`",
        ),
        (
            r#"launch_template = { name = "web" }"#,
            r#"launch_template = { name = "web", version = 3 }"#,
            "auto_scaling_group[0].launch_template.version",
            "has no version 3",
        ),
        (
            r#"target_groups = ["web"]"#,
            r#"target_groups = ["nope"]"#,
            "auto_scaling_group[0].target_groups[0]",
            "no target group",
        ),
        (
            r#"subnet = "198.18.8.0/24""#,
            r#"subnet = "198.18.8.0/30""#,
            "auto_scaling_group[0].subnet",
            "fewer than max_size 6",
        ),
        (
            r#"subnet = "198.18.8.0/24""#,
            "subnet = \"198.18.8.0/24\"\nvpc_zone_identifier = \"subnet-1\"",
            "auto_scaling_group[0].vpc_zone_identifier",
            "write `subnet`",
        ),
        (
            "max_size = 6\n",
            "max_size = 6\ntermination_policies = [\"ClosestToNextInstanceHour\"]\n",
            "auto_scaling_group[0].termination_policies",
            "no billing hour",
        ),
        (
            "max_size = 6\n",
            "max_size = 6\nmax_instance_lifetime = \"1h\"\n",
            "auto_scaling_group[0].max_instance_lifetime",
            "out of range",
        ),
        (
            "alarm = \"busy\"",
            "alarm = \"idle\"",
            "auto_scaling_group[0].policy[1].alarm",
            "no alarm `idle`",
        ),
        (
            "metric = \"cpu_utilization\"\ntarget = 50.0",
            "metric = \"cpu_utilization\"\ntarget = 150.0",
            "auto_scaling_group[0].policy[0].target",
            "at most 100",
        ),
        (
            "transition = \"autoscaling:EC2_INSTANCE_LAUNCHING\"",
            "transition = \"autoscaling:EC2_INSTANCE_LAUNCHING\"\nheartbeat_timeout = \"10s\"",
            "auto_scaling_group[0].lifecycle_hook[0].heartbeat_timeout",
            "out of range",
        ),
        (
            "small = { cpu = 0.5, memory = \"256MiB\" }",
            "small = { cpu = 0.5, memory = \"1MiB\" }",
            "instance_types.small.memory",
            "at least 4MiB",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let e = errors(&with(&good.replacen(from, to, 1)));
        assert_eq!(fields(&e), [field], "{to}: {e:#?}");
        assert!(e[0].message.contains(says), "{to}: {}", e[0].message);
    }
}
