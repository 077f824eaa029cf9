//! The policies' rules, each against AWS's documented example or wording where there is one.

use std::time::Duration;

use super::*;
use crate::scaling::capacity::{AdjustmentType, Cause, Cooldown, DEFAULT_COOLDOWN};

fn view(min: u32, desired: u32, max: u32) -> GroupView {
    GroupView {
        capacity: GroupCapacity::new(min, desired, max).unwrap(),
        warmed_up: desired,
        warming_up: 0,
        terminating: 0,
    }
}

fn to(vote: &Vote) -> Option<u32> {
    vote.change().map(|c| c.to)
}

fn step(lower: Option<f64>, upper: Option<f64>, adjustment: i32) -> StepAdjustment {
    StepAdjustment {
        lower,
        upper,
        adjustment,
    }
}

/// The user guide's example ("Step adjustments for step scaling"): threshold 50%, percent
/// steps; out: [0,10) 0, [10,20) +10%, [20,inf) +30%; in: (-10,0] 0, (-20,-10] -10%,
/// (-inf,-20] -30%.
fn aws_example_policies() -> (StepScalingPolicy, StepScalingPolicy) {
    let out = StepScalingPolicy::new(
        "scale-out",
        AdjustmentType::PercentChangeInCapacity,
        vec![
            step(Some(0.0), Some(10.0), 0),
            step(Some(10.0), Some(20.0), 10),
            step(Some(20.0), None, 30),
        ],
        None,
    )
    .unwrap();
    let scale_in = StepScalingPolicy::new(
        "scale-in",
        AdjustmentType::PercentChangeInCapacity,
        vec![
            step(Some(-10.0), Some(0.0), 0),
            step(Some(-20.0), Some(-10.0), -10),
            step(None, Some(-20.0), -30),
        ],
        None,
    )
    .unwrap();
    (out, scale_in)
}

#[test]
fn aws_worked_step_scaling_example() {
    let (out, scale_in) = aws_example_policies();
    let mut group = view(1, 10, 20);

    // Between 40 and 60 nothing changes.
    assert_eq!(
        out.on_alarm("high", 50.0, 55.0, &group),
        Vote::Hold(Hold::NoChange)
    );
    assert_eq!(
        scale_in.on_alarm("low", 50.0, 45.0, &group),
        Vote::Hold(Hold::NoChange)
    );

    // At 60: +10% of 10 = 1, desired 11.
    let vote = out.on_alarm("high", 50.0, 60.0, &group);
    assert!(matches!(vote, Vote::ScaleOut(_)));
    assert_eq!(to(&vote), Some(11));
    // The new instance warmed up: current capacity 11. At 70: +30% of 11 = 3.3 -> 3, 14.
    group = view(1, 11, 20);
    assert_eq!(to(&out.on_alarm("high", 50.0, 70.0, &group)), Some(14));

    // At 40: -10% of 14 = 1.4 -> 1, 13.
    group = view(1, 14, 20);
    let vote = scale_in.on_alarm("low", 50.0, 40.0, &group);
    assert!(matches!(vote, Vote::ScaleIn(_)));
    assert_eq!(to(&vote), Some(13));
    // The instance is gone: current 13. At 30: -30% of 13 = 3.9 -> 3, 10.
    group = view(1, 13, 20);
    assert_eq!(to(&scale_in.on_alarm("low", 50.0, 30.0, &group)), Some(10));
}

#[test]
fn step_scale_out_does_not_count_instances_warming_up() {
    // The user guide's "Instance warm-up" example: at 60 desired went to 11; the new instance
    // still warms up (current capacity 10).
    let (out, _) = aws_example_policies();
    let group = GroupView {
        capacity: GroupCapacity::new(1, 11, 20).unwrap(),
        warmed_up: 10,
        warming_up: 1,
        terminating: 0,
    };
    // At 62: 10% of 10 = 1 -> 11, already desired: no further change.
    assert_eq!(
        out.on_alarm("high", 50.0, 62.0, &group),
        Vote::Hold(Hold::NoChange)
    );
    // At 70: 30% of 10 = 3 -> 13, so only 2 more.
    assert_eq!(to(&out.on_alarm("high", 50.0, 70.0, &group)), Some(13));
}

#[test]
fn step_scale_in_counts_terminating_instances_and_waits_for_warmup() {
    let (_, scale_in) = aws_example_policies();
    // Desired already lowered from 14 to 13, one instance still terminating: a second alarm in
    // the same step removes nothing more.
    let group = GroupView {
        capacity: GroupCapacity::new(1, 13, 20).unwrap(),
        warmed_up: 13,
        warming_up: 0,
        terminating: 1,
    };
    assert_eq!(
        scale_in.on_alarm("low", 50.0, 40.0, &group),
        Vote::Hold(Hold::NoChange)
    );
    // An instance warming up blocks the scale-in.
    let group = GroupView {
        capacity: GroupCapacity::new(1, 14, 20).unwrap(),
        warmed_up: 13,
        warming_up: 1,
        terminating: 0,
    };
    assert_eq!(
        scale_in.on_alarm("low", 50.0, 40.0, &group),
        Vote::Hold(Hold::WarmingUp { instances: 1 })
    );
}

#[test]
fn step_bounds_are_inclusive_on_the_side_away_from_the_threshold() {
    let (out, scale_in) = aws_example_policies();
    // Above: lower inclusive, upper exclusive (70 is the +30% step, not +10%).
    assert_eq!(out.step_for(10.0).unwrap().adjustment, 10);
    assert_eq!(out.step_for(20.0).unwrap().adjustment, 30);
    assert_eq!(out.step_for(0.0).unwrap().adjustment, 0);
    // Below: lower exclusive, upper inclusive (30 is the -30% step, 40 the -10% one).
    assert_eq!(scale_in.step_for(-10.0).unwrap().adjustment, -10);
    assert_eq!(scale_in.step_for(-20.0).unwrap().adjustment, -30);
    // At the threshold the scale-in policy's step reaching down to it covers it.
    assert_eq!(scale_in.step_for(0.0).unwrap().adjustment, 0);
    // A breach no step covers says so.
    assert!(out.step_for(-5.0).is_none());
    assert!(matches!(
        out.on_alarm("high", 50.0, 45.0, &view(1, 10, 20)),
        Vote::Hold(Hold::NoStepFound { .. })
    ));
}

#[test]
fn step_bounds_breaking_aws_rules_are_refused() {
    let make = |steps| {
        StepScalingPolicy::new("p", AdjustmentType::ChangeInCapacity, steps, None).unwrap_err()
    };
    assert!(matches!(make(vec![]), PolicyError::NoSteps { .. }));
    assert!(matches!(
        make(vec![step(None, None, 1)]),
        PolicyError::BothBoundsNull { step: 0, .. }
    ));
    assert!(matches!(
        make(vec![
            step(Some(10.0), Some(10.0), 1),
            step(Some(20.0), None, 1)
        ]),
        PolicyError::EmptyStep { .. }
    ));
    assert!(matches!(
        make(vec![
            step(Some(0.0), Some(10.0), 1),
            step(Some(20.0), None, 2)
        ]),
        PolicyError::Gap {
            from: 10.0,
            to: 20.0,
            ..
        }
    ));
    assert!(matches!(
        make(vec![
            step(Some(0.0), Some(15.0), 1),
            step(Some(10.0), None, 2)
        ]),
        PolicyError::Overlap { .. }
    ));
    assert!(matches!(
        make(vec![step(None, Some(-10.0), -1), step(None, Some(0.0), -2)]),
        PolicyError::SeveralNullLowerBounds { .. }
    ));
    assert!(matches!(
        make(vec![step(Some(0.0), None, 1), step(Some(10.0), None, 2)]),
        PolicyError::SeveralNullUpperBounds { .. }
    ));
    // A positive upper bound needs a step open upward; a negative lower bound one open
    // downward.
    assert!(matches!(
        make(vec![step(Some(0.0), Some(10.0), 1)]),
        PolicyError::MissingNullUpperBound { step: 0, .. }
    ));
    assert!(matches!(
        make(vec![step(Some(-10.0), Some(0.0), -1)]),
        PolicyError::MissingNullLowerBound { step: 0, .. }
    ));
    // A step open upward covers any step above its lower bound.
    assert!(matches!(
        make(vec![
            step(Some(0.0), None, 1),
            step(Some(10.0), Some(20.0), 2)
        ]),
        PolicyError::Overlap { .. }
    ));
    assert!(matches!(
        make(vec![step(Some(f64::NAN), None, 1)]),
        PolicyError::BoundNotFinite { .. }
    ));
    // Steps given in any order are accepted when together they are contiguous.
    let policy = StepScalingPolicy::new(
        "p",
        AdjustmentType::ChangeInCapacity,
        vec![
            step(Some(20.0), None, 3),
            step(Some(0.0), Some(10.0), 1),
            step(Some(10.0), Some(20.0), 2),
        ],
        None,
    )
    .unwrap();
    assert_eq!(policy.steps()[0].adjustment, 1);
}

#[test]
fn step_with_min_adjustment_magnitude_adds_at_least_that_many() {
    let policy = StepScalingPolicy::new(
        "p",
        AdjustmentType::PercentChangeInCapacity,
        vec![step(Some(0.0), None, 25)],
        Some(2),
    )
    .unwrap();
    // AWS's example: 25% of 4 is 1, the minimum magnitude makes it 2.
    assert_eq!(
        to(&policy.on_alarm("high", 50.0, 60.0, &view(1, 4, 10))),
        Some(6)
    );
}

#[test]
fn simple_scaling_makes_no_second_change_before_the_cooldown_ends() {
    let policy =
        SimpleScalingPolicy::new("add-one", AdjustmentType::ChangeInCapacity, 1, None, None)
            .unwrap();
    let t0 = Duration::from_secs(1_000);
    let vote = policy.on_alarm("cpu-high", &view(1, 2, 6), false, &Cooldown::none(), t0);
    let change = vote.change().unwrap();
    assert_eq!(
        change.to_string(),
        "a monitor alarm cpu-high in state ALARM triggered policy add-one changing the desired \
         capacity from 2 to 3"
    );
    // While the activity runs, the alarm is not answered.
    let group = view(1, 3, 6);
    assert_eq!(
        policy.on_alarm("cpu-high", &group, true, &Cooldown::none(), t0),
        Vote::Hold(Hold::ActivityInProgress)
    );
    // The instance is InService at t0 + 40 s: the group's default cooldown (300 s) starts.
    let in_service = t0 + Duration::from_secs(40);
    let cooldown = Cooldown::started(in_service, policy.cooldown(DEFAULT_COOLDOWN));
    let just_before = in_service + Duration::from_secs(299);
    assert_eq!(
        policy.on_alarm("cpu-high", &group, false, &cooldown, just_before),
        Vote::Hold(Hold::Cooldown {
            remaining: Duration::from_secs(1)
        })
    );
    let after = in_service + DEFAULT_COOLDOWN;
    assert_eq!(
        to(&policy.on_alarm("cpu-high", &group, false, &cooldown, after)),
        Some(4)
    );
}

#[test]
fn simple_scaling_policy_cooldown_overrides_the_group_default() {
    let policy = SimpleScalingPolicy::new(
        "p",
        AdjustmentType::ChangeInCapacity,
        -1,
        None,
        Some(Duration::from_secs(60)),
    )
    .unwrap();
    assert_eq!(policy.cooldown(DEFAULT_COOLDOWN), Duration::from_secs(60));
    let cooldown = Cooldown::started(Duration::ZERO, policy.cooldown(DEFAULT_COOLDOWN));
    let vote = policy.on_alarm(
        "low",
        &view(1, 3, 6),
        false,
        &cooldown,
        Duration::from_secs(60),
    );
    assert!(matches!(vote, Vote::ScaleIn(_)));
    // At the minimum: nothing to change.
    let vote = policy.on_alarm(
        "low",
        &view(1, 1, 6),
        false,
        &cooldown,
        Duration::from_secs(60),
    );
    assert_eq!(vote, Vote::Hold(Hold::NoChange));
}

fn cpu50() -> TargetTrackingPolicy {
    TargetTrackingPolicy::new("web", "cpu50", 50.0).unwrap()
}

#[test]
fn target_tracking_scales_out_in_proportion_to_the_metric() {
    let policy = cpu50();
    // 2 instances at 80% for 3 datapoints: ceil(2 * 80 / 50) = ceil(3.2) = 4.
    let vote = policy.evaluate(&[75.0, 90.0, 80.0], &view(1, 2, 10));
    assert!(matches!(vote, Vote::ScaleOut(_)));
    assert_eq!(
        vote.change().unwrap().to_string(),
        "a monitor alarm TargetTracking-web-AlarmHigh-cpu50 in state ALARM triggered policy \
         cpu50 changing the desired capacity from 2 to 4"
    );
    // Exactly proportional: 10 at 55% -> 11; 3 at 77.7% of a 33.3% target -> 7, not the 8
    // that float error (7.000000000000001) would round up to.
    assert_eq!(to(&policy.evaluate(&[55.0; 3], &view(1, 10, 20))), Some(11));
    let odd = TargetTrackingPolicy::new("web", "odd", 33.3).unwrap();
    assert_eq!(to(&odd.evaluate(&[77.7; 3], &view(1, 3, 20))), Some(7));
    // Clamped at the maximum.
    assert_eq!(to(&policy.evaluate(&[100.0; 3], &view(1, 4, 6))), Some(6));
    // Fewer than 3 datapoints above the target: the alarm is not in ALARM yet.
    assert_eq!(
        policy.evaluate(&[40.0, 80.0, 80.0], &view(1, 2, 10)),
        Vote::Hold(Hold::Evaluating)
    );
    assert_eq!(
        policy.evaluate(&[], &view(1, 2, 10)),
        Vote::Hold(Hold::InsufficientData)
    );
}

#[test]
fn target_tracking_scale_out_counts_only_warmed_up_instances() {
    let policy = cpu50();
    // Desired 4 after a scale-out, 2 warmed up and 2 warming: the metric over the 2 warmed up
    // is still 80% -> ceil(2 * 80 / 50) = 4: nothing more.
    let group = GroupView {
        capacity: GroupCapacity::new(1, 4, 10).unwrap(),
        warmed_up: 2,
        warming_up: 2,
        terminating: 0,
    };
    assert_eq!(
        policy.evaluate(&[80.0; 3], &group),
        Vote::Hold(Hold::NoChange)
    );
    // Load rose to 100%: 2 * 100 / 50 = 4 -> still 4; at 110%: 5.
    assert_eq!(to(&policy.evaluate(&[110.0; 3], &group)), Some(5));
}

#[test]
fn target_tracking_scales_in_slowly_and_only_below_the_margin() {
    let policy = cpu50();
    let group = view(1, 4, 10);
    // 46% is below the target but within 10% of it (threshold 45%): no scale-in ever.
    assert_eq!(
        policy.evaluate(&[46.0; 30], &group),
        Vote::Hold(Hold::WithinScaleInMargin)
    );
    // 20% for 14 datapoints: not yet (the scale-in alarm needs 15).
    assert_eq!(
        policy.evaluate(&[20.0; 14], &group),
        Vote::Hold(Hold::Evaluating)
    );
    // One datapoint back above the threshold in the last 15 resets it.
    let mut points = vec![20.0; 15];
    points[3] = 47.0;
    assert_eq!(
        policy.evaluate(&points, &group),
        Vote::Hold(Hold::Evaluating)
    );
    // 15 low datapoints: ceil(4 * 20 / 50) = ceil(1.6) = 2 (one fewer removed than 1.6 says).
    let vote = policy.evaluate(&[20.0; 15], &group);
    assert!(matches!(vote, Vote::ScaleIn(_)));
    assert_eq!(
        vote.change().unwrap().to_string(),
        "a monitor alarm TargetTracking-web-AlarmLow-cpu50 in state ALARM triggered policy \
         cpu50 changing the desired capacity from 4 to 2"
    );
    // Not below the minimum.
    assert_eq!(to(&policy.evaluate(&[1.0; 15], &view(3, 4, 10))), Some(3));
}

#[test]
fn target_tracking_does_not_scale_in_while_an_instance_warms_up() {
    let group = GroupView {
        capacity: GroupCapacity::new(1, 4, 10).unwrap(),
        warmed_up: 3,
        warming_up: 1,
        terminating: 0,
    };
    assert_eq!(
        cpu50().evaluate(&[10.0; 15], &group),
        Vote::Hold(Hold::WarmingUp { instances: 1 })
    );
}

#[test]
fn target_tracking_scale_in_counts_terminating_instances() {
    // Desired 2 already, 2 instances still terminating: at 20% over the 2 left,
    // ceil(4 * 20 / 50) = 2: nothing more removed.
    let group = GroupView {
        capacity: GroupCapacity::new(1, 2, 10).unwrap(),
        warmed_up: 2,
        warming_up: 0,
        terminating: 2,
    };
    assert_eq!(
        cpu50().evaluate(&[20.0; 15], &group),
        Vote::Hold(Hold::NoChange)
    );
}

#[test]
fn target_tracking_with_scale_in_disabled_only_scales_out() {
    let policy = cpu50().with_disable_scale_in(true);
    assert_eq!(
        policy.evaluate(&[5.0; 15], &view(1, 4, 10)),
        Vote::Hold(Hold::ScaleInDisabled)
    );
    assert!(matches!(
        policy.evaluate(&[90.0; 3], &view(1, 4, 10)),
        Vote::ScaleOut(_)
    ));
}

#[test]
fn target_tracking_datapoint_counts_can_be_shortened() {
    let policy = cpu50().with_datapoints(1, 2);
    assert!(matches!(
        policy.evaluate(&[90.0], &view(1, 2, 10)),
        Vote::ScaleOut(_)
    ));
    assert!(matches!(
        policy.evaluate(&[20.0, 20.0], &view(1, 4, 10)),
        Vote::ScaleIn(_)
    ));
}

#[test]
fn target_tracking_refuses_a_target_that_is_not_positive() {
    assert!(TargetTrackingPolicy::new("g", "p", 0.0).is_err());
    assert!(TargetTrackingPolicy::new("g", "p", f64::NAN).is_err());
    assert!(TargetTrackingPolicy::new("g", "p", -5.0).is_err());
}

#[test]
fn group_metric_is_over_warmed_up_instances_in_service() {
    let m = |value, in_service, warmed_up| InstanceMetric {
        value,
        in_service,
        warmed_up,
    };
    assert_eq!(
        target_tracking::group_average(&[
            m(40.0, true, true),
            m(60.0, true, true),
            // Warming up: its start-up spike does not count.
            m(100.0, true, false),
            // Not in service.
            m(100.0, false, true),
        ]),
        Some(50.0)
    );
    assert_eq!(
        target_tracking::group_average(&[m(90.0, true, false)]),
        None
    );
}

fn change(from: u32, to: u32, policy: &str) -> CapacityChange {
    CapacityChange {
        from,
        to,
        cause: Cause::Alarm {
            alarm: format!("{policy}-alarm"),
            policy: policy.into(),
        },
    }
}

#[test]
fn several_policies_scale_out_if_any_wants_to_taking_the_largest() {
    let votes = [
        Vote::ScaleOut(change(4, 5, "cpu")),
        Vote::Hold(Hold::WithinScaleInMargin),
        Vote::ScaleOut(change(4, 7, "requests")),
        Vote::ScaleIn(change(4, 3, "flows")),
    ];
    let decided = combine(&votes).unwrap();
    assert_eq!(decided.to, 7);
    assert!(matches!(decided.cause, Cause::Alarm { ref policy, .. } if policy == "requests"));
}

#[test]
fn several_policies_scale_in_only_if_all_agree_taking_the_largest_result() {
    // AWS's example: one policy removes 3, another 25% of 8 = 2: 2 are removed (6 left).
    let votes = [
        Vote::ScaleIn(change(8, 5, "three")),
        Vote::ScaleIn(change(8, 6, "quarter")),
    ];
    assert_eq!(combine(&votes).unwrap().to, 6);
    // One policy within its margin keeps the capacity.
    let votes = [
        Vote::ScaleIn(change(8, 5, "three")),
        Vote::Hold(Hold::WithinScaleInMargin),
    ];
    assert_eq!(combine(&votes), None);
    // A policy with scale-in disabled does not take part in the scale-in decision.
    let votes = [
        Vote::ScaleIn(change(8, 5, "three")),
        Vote::Hold(Hold::ScaleInDisabled),
    ];
    assert_eq!(combine(&votes).unwrap().to, 5);
    // Only policies with scale-in disabled: no scale-in.
    assert_eq!(combine(&[Vote::Hold(Hold::ScaleInDisabled)]), None);
    assert_eq!(combine(&[]), None);
}

#[test]
fn several_target_tracking_policies_end_to_end() {
    let cpu = cpu50();
    let requests = TargetTrackingPolicy::new("web", "req1000", 1000.0).unwrap();
    let group = view(1, 4, 10);
    // CPU low, requests within their margin: no scale-in.
    let votes = [
        cpu.evaluate(&[10.0; 15], &group),
        requests.evaluate(&[950.0; 15], &group),
    ];
    assert_eq!(combine(&votes), None);
    // Requests high: scale out even though CPU wants to scale in.
    let votes = [
        cpu.evaluate(&[10.0; 15], &group),
        requests.evaluate(&[1500.0; 15], &group),
    ];
    assert_eq!(combine(&votes).unwrap().to, 6);
}

#[test]
fn instance_warmup_falls_back_as_aws_does() {
    let s = Duration::from_secs;
    assert_eq!(instance_warmup(Some(s(60)), Some(s(120)), s(300)), s(60));
    assert_eq!(instance_warmup(None, Some(s(120)), s(300)), s(120));
    assert_eq!(instance_warmup(None, None, s(300)), s(300));
    assert!(!is_warmed_up(s(100), s(60), s(159)));
    assert!(is_warmed_up(s(100), s(60), s(160)));
}
