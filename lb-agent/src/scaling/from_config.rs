//! The config's auto scaling sections as this module's types, and what only they can check:
//! CloudWatch's alarm limits, cron expressions, time zones and times, EC2's bounds of an
//! instance maintenance policy. The config module checks
//! the rest (names, references, sizes); these checks join it wherever a config is checked whole
//! (start-up, reload, `config validate`), as the proxy's do.

use jiff::{Timestamp, civil::DateTime, tz::TimeZone};

use super::{
    alarm::AlarmSpec,
    maintenance::InstanceMaintenancePolicy,
    schedule::{DEFAULT_TIME_ZONE, Recurrence, ScheduledAction, ScheduledTime},
};
use crate::config::{self, Config};

/// Every problem of `config`'s alarms, scheduled actions and instance maintenance policies,
/// as (dotted field, message).
pub fn problems(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, group) in config.auto_scaling_groups.iter().enumerate() {
        if let Some(m) = group.instance_maintenance_policy
            && let Err(e) =
                InstanceMaintenancePolicy::new(m.min_healthy_percentage, m.max_healthy_percentage)
        {
            problems.push((
                format!("auto_scaling_group[{i}].instance_maintenance_policy"),
                e.to_string(),
            ));
        }
        for (k, alarm) in group.alarms.iter().enumerate() {
            let at = format!("auto_scaling_group[{i}].alarm[{k}]");
            for e in alarm_spec(alarm).errors() {
                problems.push((at.clone(), e.to_string()));
            }
        }
        for (k, action) in group.scheduled_actions.iter().enumerate() {
            let at = format!("auto_scaling_group[{i}].scheduled_action[{k}]");
            match scheduled_action(action) {
                Ok(action) => {
                    for e in action.errors() {
                        problems.push((at.clone(), e.to_string()));
                    }
                }
                Err((field, message)) => problems.push((format!("{at}.{field}"), message)),
            }
        }
    }
    problems
}

/// An alarm of the config as CloudWatch's alarm model takes it (M defaults to N, as
/// CloudWatch's `DatapointsToAlarm`).
pub fn alarm_spec(alarm: &config::Alarm) -> AlarmSpec {
    AlarmSpec {
        period: alarm.period,
        statistic: alarm.statistic,
        evaluation_periods: alarm.evaluation_periods,
        datapoints_to_alarm: alarm
            .datapoints_to_alarm
            .unwrap_or(alarm.evaluation_periods),
        comparison_operator: alarm.comparison,
        threshold: alarm.threshold,
        treat_missing_data: alarm.treat_missing_data,
    }
}

/// A scheduled action of the config, its times read; on a problem, the field (relative to the
/// action) and what is wrong.
pub fn scheduled_action(
    action: &config::ScheduledAction,
) -> Result<ScheduledAction, (&'static str, String)> {
    let zone_name = action.time_zone.as_deref().unwrap_or(DEFAULT_TIME_ZONE);
    let zone = TimeZone::get(zone_name).map_err(|_| {
        (
            "time_zone",
            format!(
                "`{zone_name}` is not an IANA time zone name (e.g. \"Etc/UTC\", \"Europe/Paris\")"
            ),
        )
    })?;
    let time = |field: &'static str, text: &Option<String>| {
        text.as_deref()
            .map(|t| read_time(t, &zone).map_err(|e| (field, e)))
            .transpose()
    };
    let start_time = time("start_time", &action.start_time)?;
    let end_time = time("end_time", &action.end_time)?;
    let time = match (&action.recurrence, start_time) {
        (Some(expression), _) => {
            let mut recurrence = Recurrence::parse(expression, action.time_zone.as_deref())
                .map_err(|e| ("recurrence", e.to_string()))?;
            recurrence.start_time = start_time;
            recurrence.end_time = end_time;
            ScheduledTime::Recurring(recurrence)
        }
        (None, Some(at)) => {
            if end_time.is_some() {
                return Err((
                    "end_time",
                    "a one-off action (no `recurrence`) has no end time".to_owned(),
                ));
            }
            ScheduledTime::Once { at }
        }
        (None, None) => {
            return Err((
                "start_time",
                "a scheduled action runs once at `start_time`, or on a `recurrence` (cron)"
                    .to_owned(),
            ));
        }
    };
    Ok(ScheduledAction {
        name: action.name.clone(),
        time,
        min_size: action.min_size,
        max_size: action.max_size,
        desired_capacity: action.desired_capacity,
    })
}

/// An instant written as RFC 3339 with an offset (`2026-12-01T08:00:00Z`), or as a local
/// date and time read in `zone` (`2026-12-01T08:00:00`), as EC2 takes a time with a time zone.
fn read_time(text: &str, zone: &TimeZone) -> Result<Timestamp, String> {
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(at);
    }
    let local: DateTime = text.parse().map_err(|_| {
        format!(
            "`{text}` is not a time: write \"2026-12-01T08:00:00Z\", or a local \
             \"2026-12-01T08:00:00\" read in the action's time_zone"
        )
    })?;
    // A local time a clock change skips or repeats: the `compatible` reading (RFC 5545's).
    local
        .to_zoned_datetime(zone.clone())
        .map(|z| z.timestamp())
        .map_err(|e| format!("`{text}` in {zone:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
[[target_group]]
name = "web"
protocol = "tcp"
port = 8080

[[launch_template]]
name = "t"
[[launch_template.version]]
command = ["sleep", "60"]
ports = [8080]

[[auto_scaling_group]]
name = "asg"
launch_template = { name = "t" }
subnet = "198.18.8.0/24"
min_size = 1
max_size = 4
"#;

    fn checked(extra: &str) -> Vec<(String, String)> {
        let config =
            Config::parse(&format!("{BASE}{extra}"), "t.toml").unwrap_or_else(|e| panic!("{e}"));
        problems(&config)
    }

    #[test]
    fn alarms_and_scheduled_actions_that_cloudwatch_and_ec2_take_pass() {
        let problems = checked(
            r#"
[[auto_scaling_group.alarm]]
name = "busy"
metric = "cpu_utilization"
period = "5m"
evaluation_periods = 3
datapoints_to_alarm = 2
comparison = "GreaterThanThreshold"
threshold = 70.0
[[auto_scaling_group.scheduled_action]]
name = "mornings"
recurrence = "0 8 * * MON-FRI"
time_zone = "Europe/Paris"
start_time = "2026-12-01T00:00:00"
end_time = "2027-06-01T00:00:00Z"
desired_capacity = 3
[[auto_scaling_group.scheduled_action]]
name = "once"
start_time = "2026-12-24T18:00:00+01:00"
max_size = 2
"#,
        );
        assert_eq!(problems, []);
    }

    #[test]
    fn an_instance_maintenance_policy_out_of_ec2s_bounds_is_refused() {
        let ok = "instance_maintenance_policy = { min_healthy_percentage = 100, max_healthy_percentage = 110 }\n";
        assert_eq!(checked(ok), []);
        for (policy, says) in [
            (
                "min_healthy_percentage = 50, max_healthy_percentage = 160",
                "at most 100",
            ),
            (
                "min_healthy_percentage = 90, max_healthy_percentage = 90",
                "100..=200",
            ),
            (
                "min_healthy_percentage = 100, max_healthy_percentage = 100",
                "no instance",
            ),
        ] {
            let problems = checked(&format!("instance_maintenance_policy = {{ {policy} }}\n"));
            assert_eq!(problems.len(), 1, "{policy}: {problems:?}");
            assert_eq!(
                problems[0].0,
                "auto_scaling_group[0].instance_maintenance_policy"
            );
            assert!(problems[0].1.contains(says), "{policy}: {}", problems[0].1);
        }
    }

    #[test]
    fn each_alarm_limit_cron_zone_and_time_problem_names_its_field() {
        let problems = checked(
            r#"
[[auto_scaling_group.alarm]]
name = "busy"
metric = "cpu_utilization"
period = "45s"
evaluation_periods = 2
datapoints_to_alarm = 3
comparison = "GreaterThanThreshold"
threshold = 70.0
[[auto_scaling_group.scheduled_action]]
name = "bad-cron"
recurrence = "0 25 * * *"
desired_capacity = 3
[[auto_scaling_group.scheduled_action]]
name = "bad-zone"
recurrence = "0 8 * * *"
time_zone = "Mars/Olympus"
desired_capacity = 3
[[auto_scaling_group.scheduled_action]]
name = "bad-time"
start_time = "tomorrow"
desired_capacity = 3
[[auto_scaling_group.scheduled_action]]
name = "nothing"
recurrence = "0 8 * * *"
[[auto_scaling_group.scheduled_action]]
name = "never"
desired_capacity = 1
"#,
        );
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "auto_scaling_group[0].alarm[0]",
                "auto_scaling_group[0].alarm[0]",
                "auto_scaling_group[0].scheduled_action[0].recurrence",
                "auto_scaling_group[0].scheduled_action[1].time_zone",
                "auto_scaling_group[0].scheduled_action[2].start_time",
                "auto_scaling_group[0].scheduled_action[3]",
                "auto_scaling_group[0].scheduled_action[4].start_time",
            ],
            "{problems:#?}"
        );
        assert!(problems[0].1.contains("45s"), "{}", problems[0].1);
        assert!(problems[2].1.contains("hour"), "{}", problems[2].1);
        assert!(
            problems[5].1.contains("at least one of"),
            "{}",
            problems[5].1
        );
    }

    #[test]
    fn a_local_time_is_read_in_the_actions_zone() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let at = read_time("2026-12-01T08:00:00", &paris).unwrap();
        assert_eq!(at, "2026-12-01T07:00:00Z".parse::<Timestamp>().unwrap());
        let exact = read_time("2026-12-01T08:00:00Z", &paris).unwrap();
        assert_eq!(exact, "2026-12-01T08:00:00Z".parse::<Timestamp>().unwrap());
    }
}
