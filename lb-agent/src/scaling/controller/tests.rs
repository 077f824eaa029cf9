//! The controller driven by a fake clock: an engine loop that samples every 10 seconds and
//! asks for decisions, as the agent's engine does, over groups read from TOML.

use std::{collections::BTreeSet, time::Duration};

use jiff::Timestamp;

use super::*;
use crate::config::{Config, ScalingMetric};

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
name = "web-asg"
launch_template = { name = "t" }
subnet = "198.18.8.0/24"
min_size = 1
desired_capacity = 2
max_size = 6
"#;

/// A target tracking policy keeping CPU at 50%.
const CPU50: &str = r#"
[[auto_scaling_group.policy]]
name = "cpu50"
type = "target_tracking"
metric = "cpu_utilization"
target = 50.0
"#;

/// 2027-01-15T08:00:00Z: a whole minute, so periods start on ticks.
const T0: Duration = Duration::from_secs(1_800_000_000);
const TICK: Duration = Duration::from_secs(10);
const MINUTE: Duration = Duration::from_secs(60);

fn group(extra: &str) -> config::AutoScalingGroup {
    let config =
        Config::parse(&format!("{BASE}{extra}"), "t.toml").unwrap_or_else(|e| panic!("{e}"));
    config.auto_scaling_groups[0].clone()
}

fn controller(extra: &str) -> Controller {
    Controller::new(&group(extra)).unwrap_or_else(|e| panic!("{e}"))
}

/// A group of `desired` instances in service since long before `T0` (warmed up).
fn state(desired: u32) -> GroupState {
    GroupState {
        capacity: GroupCapacity::new(1, desired, 6).unwrap(),
        instances: vec![
            InstancePhase::InService {
                since: Duration::ZERO
            };
            desired as usize
        ],
        scaling_activity_in_progress: false,
        last_scaling_activity_end: None,
        suspended: BTreeSet::new(),
    }
}

fn cpu(instance: &str, since: Duration, percent: f64) -> InstanceSample {
    InstanceSample {
        instance: instance.to_owned(),
        in_service_since: Some(since),
        cpu_utilization: Some(percent),
        requests: 0,
        new_flows: 0,
        bytes: 0,
        active_flows: 0,
    }
}

/// `count` warmed-up instances all at `percent` CPU.
fn all_at(count: u32, percent: f64) -> Vec<InstanceSample> {
    (0..count)
        .map(|i| cpu(&format!("i-{i}"), Duration::ZERO, percent))
        .collect()
}

/// Ticks from `from` (inclusive) to `until` (exclusive), recording `samples` and deciding on
/// `group` at each; the decisions with their time since `T0`. The group is not changed: a
/// test that wants the engine's side applies decisions itself.
fn run(
    c: &mut Controller,
    group: &GroupState,
    from: Duration,
    until: Duration,
    samples: &[InstanceSample],
) -> Vec<(Duration, Decision)> {
    let mut decisions = Vec::new();
    let mut now = T0 + from;
    // Bounded: at most a day of ticks.
    for _ in 0..8_640 {
        if now >= T0 + until {
            break;
        }
        c.record(now, samples);
        decisions.extend(c.decide(now, group).into_iter().map(|d| (now - T0, d)));
        now += TICK;
    }
    decisions
}

fn sentence(decision: &Decision) -> String {
    decision.change.to_string()
}

fn alarm<'a>(views: &'a [AlarmView], name: &str) -> &'a AlarmView {
    views
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no alarm {name} in {views:#?}"))
}

#[test]
fn target_tracking_scales_out_after_three_high_datapoints() {
    let mut c = controller(CPU50);
    let group = state(2);
    let samples = all_at(2, 80.0);
    // Three periods end at T0 + 3 min; nothing before.
    let decisions = run(&mut c, &group, Duration::ZERO, 3 * MINUTE + TICK, &samples);
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    let (at, decision) = &decisions[0];
    assert_eq!(*at, 3 * MINUTE);
    // ceil(2 * 80 / 50) = ceil(3.2) = 4.
    assert_eq!(decision.capacity, GroupCapacity::new(1, 4, 6).unwrap());
    assert_eq!(
        sentence(decision),
        "a monitor alarm TargetTracking-web-asg-AlarmHigh-cpu50 in state ALARM triggered \
         policy cpu50 changing the desired capacity from 2 to 4"
    );
    let views = c.alarms();
    let high = alarm(&views, "TargetTracking-web-asg-AlarmHigh-cpu50");
    assert_eq!(high.state, AlarmState::Alarm);
    assert_eq!(high.last_value, Some(80.0));
    assert_eq!(high.threshold, 50.0);
    let low = alarm(&views, "TargetTracking-web-asg-AlarmLow-cpu50");
    assert_eq!(low.threshold, 45.0);
}

#[test]
fn two_high_datapoints_do_not_scale_out() {
    let mut c = controller(CPU50);
    let group = state(2);
    let high = run(&mut c, &group, Duration::ZERO, 2 * MINUTE, &all_at(2, 80.0));
    // A low period breaks the run of high ones: three more are needed.
    let low = run(&mut c, &group, 2 * MINUTE, 3 * MINUTE, &all_at(2, 30.0));
    let again = run(
        &mut c,
        &group,
        3 * MINUTE,
        5 * MINUTE + TICK,
        &all_at(2, 80.0),
    );
    assert!(
        high.is_empty() && low.is_empty() && again.is_empty(),
        "{again:#?}"
    );
    let later = run(
        &mut c,
        &group,
        5 * MINUTE + TICK,
        6 * MINUTE + TICK,
        &all_at(2, 80.0),
    );
    assert_eq!(later.len(), 1, "{later:#?}");
    assert_eq!(later[0].0, 6 * MINUTE);
}

#[test]
fn target_tracking_scales_in_after_fifteen_low_datapoints() {
    let mut c = controller(CPU50);
    let group = state(4);
    let decisions = run(
        &mut c,
        &group,
        Duration::ZERO,
        15 * MINUTE + TICK,
        &all_at(4, 20.0),
    );
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    let (at, decision) = &decisions[0];
    assert_eq!(*at, 15 * MINUTE);
    // ceil(4 * 20 / 50) = ceil(1.6) = 2.
    assert_eq!(decision.capacity.desired(), 2);
    assert_eq!(
        sentence(decision),
        "a monitor alarm TargetTracking-web-asg-AlarmLow-cpu50 in state ALARM triggered \
         policy cpu50 changing the desired capacity from 4 to 2"
    );
}

#[test]
fn no_scale_in_within_ten_percent_of_the_target() {
    let mut c = controller(CPU50);
    let group = state(4);
    // 46% is below the target but above 45%, its 90%: held for half an hour.
    let decisions = run(
        &mut c,
        &group,
        Duration::ZERO,
        30 * MINUTE,
        &all_at(4, 46.0),
    );
    assert!(decisions.is_empty(), "{decisions:#?}");
    // 30% is below it: the fifteenth low period scales in, to ceil(4 * 30 / 50) = 3.
    let mut c = controller(CPU50);
    let decisions = run(
        &mut c,
        &group,
        Duration::ZERO,
        15 * MINUTE + TICK,
        &all_at(4, 30.0),
    );
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0].0, 15 * MINUTE);
    assert_eq!(decisions[0].1.capacity.desired(), 3);
}

#[test]
fn no_scale_in_while_an_instance_warms_up_and_its_metric_is_left_out() {
    // The policy's warmup: 1 hour.
    let mut c = controller(&format!("{CPU50}estimated_instance_warmup = \"1h\"\n"));
    let mut group = state(3);
    group.instances[2] = InstancePhase::InService { since: T0 };
    let mut samples = all_at(2, 20.0);
    // The warming instance is busy; counted, the average would be 46.7, within the margin.
    samples.push(cpu("i-new", T0, 100.0));
    let decisions = run(&mut c, &group, Duration::ZERO, 30 * MINUTE, &samples);
    assert!(decisions.is_empty(), "{decisions:#?}");
    let views = c.alarms();
    let low = alarm(&views, "TargetTracking-web-asg-AlarmLow-cpu50");
    // Only the two warmed-up instances' 20% count.
    assert_eq!(low.last_value, Some(20.0));
    assert_eq!(low.state, AlarmState::Alarm);

    // Once its hour has passed it counts, and nothing blocks the scale-in.
    group.instances[2] = InstancePhase::InService {
        since: Duration::ZERO,
    };
    let samples = all_at(3, 20.0);
    let decisions = run(&mut c, &group, 30 * MINUTE, 30 * MINUTE + TICK, &samples);
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    // ceil(3 * 20 / 50) = 2.
    assert_eq!(decisions[0].1.capacity.desired(), 2);
}

const SIMPLE: &str = r#"
[[auto_scaling_group.alarm]]
name = "busy"
metric = "cpu_utilization"
evaluation_periods = 1
comparison = "GreaterThanThreshold"
threshold = 70.0
[[auto_scaling_group.policy]]
name = "add-one"
type = "simple"
alarm = "busy"
adjustment_type = "ChangeInCapacity"
adjustment = 1
"#;

/// Runs the simple policy's group at 90% CPU for 10 minutes as an engine would: each change is
/// applied and its activity ends 30 s later. The times of the changes, since `T0`.
fn simple_scaling_times(extra: &str) -> Vec<Duration> {
    let mut c = controller(extra);
    let mut group = state(2);
    let mut activity_ends: Option<Duration> = None;
    let mut times = Vec::new();
    let mut now = T0;
    while now < T0 + 10 * MINUTE {
        if activity_ends.is_some_and(|end| now >= end) {
            group.scaling_activity_in_progress = false;
            group.last_scaling_activity_end = activity_ends.take();
        }
        c.record(now, &all_at(2, 90.0));
        for decision in c.decide(now, &group) {
            times.push(now - T0);
            group.capacity = decision.capacity;
            group.scaling_activity_in_progress = true;
            activity_ends = Some(now + Duration::from_secs(30));
        }
        now += TICK;
    }
    times
}

#[test]
fn simple_policy_waits_for_the_default_cooldown() {
    // At 1 min the alarm fires; the activity ends at 1:30; the 300 s cooldown ends at 6:30;
    // the alarm invokes the policy once a period, so next at 7:00.
    assert_eq!(simple_scaling_times(SIMPLE), [MINUTE, 7 * MINUTE]);
}

#[test]
fn simple_policy_cooldown_overrides_the_default() {
    let extra = format!("{SIMPLE}cooldown = \"60s\"\n");
    // Ends 1:30, cooldown to 2:30, next period 3:00, then 5:00 and 7:00 (2 -> 3 -> 4 -> 5 ->
    // 6); at 9:00 the group is at its maximum, 6: no change.
    assert_eq!(
        simple_scaling_times(&extra),
        [MINUTE, 3 * MINUTE, 5 * MINUTE, 7 * MINUTE]
    );
}

#[test]
fn simple_policy_cause_names_its_alarm() {
    let mut c = controller(SIMPLE);
    let decisions = run(
        &mut c,
        &state(2),
        Duration::ZERO,
        MINUTE + TICK,
        &all_at(2, 90.0),
    );
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(
        sentence(&decisions[0].1),
        "a monitor alarm busy in state ALARM triggered policy add-one changing the desired \
         capacity from 2 to 3"
    );
}

const STEP: &str = r#"
[[auto_scaling_group.alarm]]
name = "hot"
metric = "cpu_utilization"
evaluation_periods = 2
comparison = "GreaterThanOrEqualToThreshold"
threshold = 60.0
[[auto_scaling_group.policy]]
name = "steps"
type = "step"
alarm = "hot"
adjustment_type = "ChangeInCapacity"
steps = [{ lower = 0.0, upper = 20.0, adjustment = 1 }, { lower = 20.0, adjustment = 3 }]
"#;

#[test]
fn step_scaling_takes_the_step_of_the_breach_and_not_again_while_instances_warm_up() {
    let mut c = controller(STEP);
    let mut group = state(2);
    // 85% is 25 above the threshold: the second step, +3.
    let decisions = run(
        &mut c,
        &group,
        Duration::ZERO,
        2 * MINUTE + TICK,
        &all_at(2, 85.0),
    );
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0].0, 2 * MINUTE);
    assert_eq!(decisions[0].1.capacity.desired(), 5);
    assert_eq!(
        sentence(&decisions[0].1),
        "a monitor alarm hot in state ALARM triggered policy steps changing the desired \
         capacity from 2 to 5"
    );
    // The three new instances warm up; the alarm keeps invoking the policy each minute, but
    // the same step over the 2 warmed-up instances asks for 5 again: no new change.
    group.capacity = decisions[0].1.capacity;
    group.instances.extend([InstancePhase::Pending; 3]);
    let again = run(
        &mut c,
        &group,
        2 * MINUTE + TICK,
        6 * MINUTE,
        &all_at(2, 85.0),
    );
    assert!(again.is_empty(), "{again:#?}");
}

#[test]
fn step_scaling_takes_the_first_step_for_a_small_breach_and_nothing_without_one() {
    let mut c = controller(STEP);
    // 65% is 5 above the threshold, in the first step (+1): 2 -> 3.
    let decisions = run(
        &mut c,
        &state(2),
        Duration::ZERO,
        2 * MINUTE + TICK,
        &all_at(2, 65.0),
    );
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0].1.capacity.desired(), 3);
    // 55% does not breach: the alarm is OK, nothing happens.
    let mut c = controller(STEP);
    let decisions = run(
        &mut c,
        &state(2),
        Duration::ZERO,
        5 * MINUTE,
        &all_at(2, 55.0),
    );
    assert!(decisions.is_empty(), "{decisions:#?}");
    assert_eq!(c.alarms()[0].state, AlarmState::Ok);
}

const MORNINGS: &str = r#"
[[auto_scaling_group.scheduled_action]]
name = "mornings"
recurrence = "0 8 * * *"
time_zone = "Europe/Paris"
desired_capacity = 4
"#;

fn at(text: &str) -> Duration {
    let t: Timestamp = text.parse().unwrap();
    Duration::from_secs(t.as_second() as u64)
}

/// Decisions of `c` on a 2-instance group at each of `times`, with the times.
fn decide_at(c: &mut Controller, times: &[Duration]) -> Vec<(Duration, Decision)> {
    let group = state(2);
    times
        .iter()
        .flat_map(|&now| c.decide(now, &group).into_iter().map(move |d| (now, d)))
        .collect()
}

#[test]
fn scheduled_action_fires_once_at_its_time_in_its_time_zone() {
    let mut c = controller(MORNINGS);
    // 08:00 in Paris in December is 07:00 UTC. Ticks every 10 s from 06:58 to 08:02 UTC.
    let start = at("2026-12-01T06:58:00Z");
    let times: Vec<Duration> = (0..384).map(|i| start + TICK * i).collect();
    let decisions = decide_at(&mut c, &times);
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0].0, at("2026-12-01T07:00:00Z"));
    assert_eq!(
        decisions[0].1.capacity,
        GroupCapacity::new(1, 4, 6).unwrap()
    );
    assert_eq!(
        sentence(&decisions[0].1),
        "a scheduled action update of AutoScalingGroup constraints to min: 1, max: 6, \
         desired: 4 changing the desired capacity from 2 to 4"
    );
}

#[test]
fn scheduled_action_runs_when_the_engine_is_late_but_only_once() {
    let mut c = controller(MORNINGS);
    // The engine stalls from 06:59:50 to 07:00:40, then ticks again twice.
    let times = [
        at("2026-12-01T06:59:50Z"),
        at("2026-12-01T07:00:40Z"),
        at("2026-12-01T07:00:50Z"),
        at("2026-12-01T07:01:00Z"),
    ];
    let decisions = decide_at(&mut c, &times);
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0].0, at("2026-12-01T07:00:40Z"));
}

#[test]
fn scheduled_action_setting_only_the_minimum_raises_the_desired_capacity() {
    let mut c = controller(
        r#"
[[auto_scaling_group.scheduled_action]]
name = "floor"
start_time = "2026-12-01T12:00:00Z"
min_size = 3
"#,
    );
    let times = [at("2026-12-01T11:59:50Z"), at("2026-12-01T12:00:00Z")];
    let decisions = decide_at(&mut c, &times);
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(
        decisions[0].1.capacity,
        GroupCapacity::new(3, 3, 6).unwrap()
    );
    assert_eq!(
        sentence(&decisions[0].1),
        "a scheduled action update of AutoScalingGroup constraints to min: 3, max: 6, \
         desired: 3 changing the desired capacity from 2 to 3"
    );
}

#[test]
fn suspended_scheduled_actions_skip_what_falls_due_meanwhile() {
    let mut c = controller(MORNINGS);
    let mut group = state(2);
    group.suspended.insert(ScalingProcess::ScheduledActions);
    assert!(c.decide(at("2026-12-01T06:59:50Z"), &group).is_empty());
    assert!(c.decide(at("2026-12-01T07:00:00Z"), &group).is_empty());
    // Resumed after its time: it is not run late.
    group.suspended.clear();
    assert!(c.decide(at("2026-12-01T07:00:10Z"), &group).is_empty());
    // The next morning it runs.
    assert!(c.decide(at("2026-12-02T06:59:50Z"), &group).is_empty());
    assert_eq!(c.decide(at("2026-12-02T07:00:00Z"), &group).len(), 1);
}

#[test]
fn suspended_alarm_notification_stops_alarm_driven_scaling() {
    let mut c = controller(&format!("{CPU50}{SIMPLE}"));
    let mut group = state(2);
    group.suspended.insert(ScalingProcess::AlarmNotification);
    let decisions = run(
        &mut c,
        &group,
        Duration::ZERO,
        10 * MINUTE,
        &all_at(2, 90.0),
    );
    assert!(decisions.is_empty(), "{decisions:#?}");
    // The alarms are still evaluated.
    let views = c.alarms();
    assert_eq!(alarm(&views, "busy").state, AlarmState::Alarm);
    assert_eq!(
        alarm(&views, "TargetTracking-web-asg-AlarmHigh-cpu50").state,
        AlarmState::Alarm
    );
    // Resumed: the next period's end scales out, the largest capacity winning: target tracking's
    // ceil(2 * 90 / 50) = 4 over the simple policy's 3.
    group.suspended.clear();
    let decisions = run(
        &mut c,
        &group,
        10 * MINUTE,
        10 * MINUTE + TICK,
        &all_at(2, 90.0),
    );
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0].0, 10 * MINUTE);
    assert_eq!(decisions[0].1.capacity.desired(), 4);
}

fn counters(instance: &str, requests: u64) -> InstanceSample {
    InstanceSample {
        instance: instance.to_owned(),
        in_service_since: Some(Duration::ZERO),
        cpu_utilization: None,
        requests,
        new_flows: requests / 10,
        bytes: requests * 1_000,
        active_flows: 3,
    }
}

#[test]
fn counter_increase_never_goes_negative() {
    assert_eq!(counter_increase(100, 160), 60);
    assert_eq!(counter_increase(100, 100), 0);
    // Restarted from zero and counted 30 since.
    assert_eq!(counter_increase(5_000, 30), 30);
}

#[test]
fn rates_per_target_come_from_cumulative_counters() {
    let mut baselines = CounterBaselines::default();
    let first = baselines.read(T0, &[counters("i-1", 1_000), counters("i-2", 5_000)]);
    // A first sample only sets the baseline.
    assert_eq!(first[0].requests_per_second, None);
    assert_eq!(
        first[0].value(ScalingMetric::ActiveFlowsPerTarget),
        Some(3.0)
    );
    let next = baselines.read(
        T0 + TICK,
        &[
            counters("i-1", 1_100),
            counters("i-2", 50),
            counters("i-3", 7),
        ],
    );
    // i-1: 100 requests in 10 s.
    assert_eq!(next[0].requests_per_second, Some(10.0));
    assert_eq!(next[0].new_flows_per_second, Some(1.0));
    assert_eq!(next[0].bytes_per_second, Some(10_000.0));
    // i-2 was replaced (same id, its counter restarted): 50 since the restart, not -4950.
    assert_eq!(next[1].requests_per_second, Some(5.0));
    // i-3 is new: no rate yet.
    assert_eq!(next[2].value(ScalingMetric::RequestsPerTarget), None);
}

#[test]
fn requests_per_target_is_the_period_average_per_instance_per_second() {
    let mut c = controller(
        r#"
[[auto_scaling_group.alarm]]
name = "requests"
metric = "requests_per_target"
evaluation_periods = 1
comparison = "GreaterThanThreshold"
threshold = 100.0
"#,
    );
    let group = state(2);
    // i-1 serves 100 requests per 10 s tick, i-2 200: over the minute, 600 + 1200 requests
    // over 2 instances and 60 s is 15 per target per second. At 30 s, i-2's counter restarts.
    let i2 = [1_000, 1_200, 1_400, 200, 400, 600, 800];
    let mut now = T0;
    for (tick, &i2) in (0u64..).zip(&i2) {
        c.record(now, &[counters("i-1", 100 * tick), counters("i-2", i2)]);
        c.decide(now, &group);
        now += TICK;
    }
    // The first minute's datapoint: the sample at T0 only set baselines; the six 10 s
    // intervals ending in (T0, T0 + 60 s] give rates of 10 and 20 per second (the restart
    // counted from zero: 200 in 10 s).
    let views = c.alarms();
    assert_eq!(views[0].last_value, Some(15.0), "{views:#?}");
    assert_eq!(views[0].state, AlarmState::Ok);
}

#[test]
fn a_policy_naming_an_unknown_alarm_is_refused() {
    let group = group(
        r#"
[[auto_scaling_group.alarm]]
name = "busy"
metric = "cpu_utilization"
evaluation_periods = 1
comparison = "GreaterThanThreshold"
threshold = 70.0
"#,
    );
    let mut group = group;
    group.policies.push(config::ScalingPolicy {
        name: "orphan".to_owned(),
        kind: PolicyKind::Simple {
            alarm: "nope".to_owned(),
            adjustment_type: config::AdjustmentType::ChangeInCapacity,
            adjustment: 1,
            min_adjustment_magnitude: None,
            cooldown: None,
        },
    });
    assert_eq!(
        Controller::new(&group).unwrap_err(),
        ControllerError::UnknownAlarm {
            policy: "orphan".to_owned(),
            alarm: "nope".to_owned()
        }
    );
}

#[test]
fn a_short_target_tracking_period_reacts_in_three_of_its_periods() {
    let group = group(CPU50);
    let mut c = Controller::with_target_tracking_period(&group, Duration::from_secs(10)).unwrap();
    let decisions = run(&mut c, &state(2), Duration::ZERO, MINUTE, &all_at(2, 80.0));
    assert_eq!(
        decisions.first().map(|d| d.0),
        Some(Duration::from_secs(30))
    );
    assert!(Controller::with_target_tracking_period(&group, Duration::from_secs(45)).is_err());
}

#[test]
fn a_scale_out_wins_over_a_simultaneous_scale_in() {
    let mut c = controller(&format!(
        r#"{SIMPLE}
[[auto_scaling_group.alarm]]
name = "quiet"
metric = "requests_per_target"
evaluation_periods = 1
comparison = "LessThanThreshold"
threshold = 1.0
[[auto_scaling_group.policy]]
name = "remove-one"
type = "simple"
alarm = "quiet"
adjustment_type = "ChangeInCapacity"
adjustment = -1
"#
    ));
    // Busy CPU and no requests: both alarms go to ALARM at the same minute; the largest
    // capacity, the scale-out's, wins.
    let decisions = run(
        &mut c,
        &state(2),
        Duration::ZERO,
        MINUTE + TICK,
        &all_at(2, 90.0),
    );
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0].1.capacity.desired(), 3);
    assert!(
        sentence(&decisions[0].1).contains("policy add-one"),
        "{decisions:#?}"
    );
}

#[test]
fn a_recurrence_runs_at_its_start_time_and_stops_after_its_end_time() {
    let mut c = controller(
        r#"
[[auto_scaling_group.scheduled_action]]
name = "hourly"
recurrence = "0 * * * *"
start_time = "2026-12-01T10:30:00Z"
end_time = "2026-12-01T12:00:00Z"
desired_capacity = 4
"#,
    );
    let start = at("2026-12-01T10:00:00Z");
    let times: Vec<Duration> = (0..=21).map(|i| start + 10 * MINUTE * i).collect();
    let fired: Vec<Duration> = decide_at(&mut c, &times)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    // The start time is a run; one exactly at the end time still runs; none after.
    assert_eq!(
        fired,
        [
            at("2026-12-01T10:30:00Z"),
            at("2026-12-01T11:00:00Z"),
            at("2026-12-01T12:00:00Z")
        ]
    );
}

#[test]
fn disabled_scale_in_has_no_low_alarm_and_never_scales_in() {
    let mut c = controller(&format!("{CPU50}disable_scale_in = true\n"));
    let names: Vec<String> = c.alarms().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["TargetTracking-web-asg-AlarmHigh-cpu50"]);
    let idle = run(
        &mut c,
        &state(4),
        Duration::ZERO,
        20 * MINUTE,
        &all_at(4, 10.0),
    );
    assert!(idle.is_empty(), "{idle:#?}");
    // It still scales out.
    let busy = run(
        &mut c,
        &state(4),
        20 * MINUTE,
        23 * MINUTE + TICK,
        &all_at(4, 90.0),
    );
    assert_eq!(busy.len(), 1, "{busy:#?}");
    assert_eq!(busy[0].1.capacity.desired(), 6);
}
