//! The alarm against the CloudWatch User Guide's rules and worked tables.

use std::time::Duration;

use jiff::Timestamp;

use super::*;

/// 2026-12-01 10:00:00 UTC plus `minutes` and `seconds`.
fn at(minutes: i64, seconds: i64) -> Timestamp {
    let base: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
    Timestamp::from_second(base.as_second() + minutes * 60 + seconds).unwrap()
}

fn spec(n: u32, m: u32, treat: TreatMissingData) -> AlarmSpec {
    AlarmSpec {
        period: Duration::from_secs(60),
        statistic: Statistic::Average,
        evaluation_periods: n,
        datapoints_to_alarm: m,
        comparison_operator: ComparisonOperator::GreaterThanOrEqualToThreshold,
        threshold: 50.0,
        treat_missing_data: treat,
    }
}

#[test]
fn three_of_three_alarm_goes_alarm_on_the_third_breaching_datapoint_then_back_to_ok() {
    let mut alarm = MetricAlarm::new(spec(3, 3, TreatMissingData::Missing)).unwrap();
    let mut states = Vec::new();
    for (minute, value) in [(5, 72.0), (6, 75.0), (7, 80.0), (8, 10.0)] {
        alarm.record(at(minute, 10), value).unwrap();
        states.push(alarm.evaluate(at(minute + 1, 0)));
    }
    let seen: Vec<(AlarmState, bool)> = states.iter().map(|e| (e.state, e.changed)).collect();
    assert_eq!(
        seen,
        [
            (AlarmState::InsufficientData, false),
            (AlarmState::InsufficientData, false),
            (AlarmState::Alarm, true),
            (AlarmState::Ok, true),
        ]
    );
    assert_eq!(
        states[2].reason,
        "Threshold Crossed: 3 out of the last 3 datapoints [80.0 (01/12/26 10:07:00), \
         75.0 (01/12/26 10:06:00), 72.0 (01/12/26 10:05:00)] were greater than or equal to \
         the threshold (50.0) (minimum 3 datapoints for INSUFFICIENT_DATA -> ALARM transition)."
    );
    assert_eq!(
        states[3].reason,
        "Threshold Crossed: 1 out of the last 3 datapoints [10.0 (01/12/26 10:08:00)] was not \
         greater than or equal to the threshold (50.0) (minimum 1 datapoint for ALARM -> OK \
         transition)."
    );
    // Evaluating again in the same state changes nothing.
    let again = alarm.evaluate(at(9, 30));
    assert_eq!((again.state, again.changed), (AlarmState::Ok, false));
    assert_eq!(again.reason, states[3].reason);
}

#[test]
fn a_running_period_is_not_evaluated_before_it_ends() {
    let mut alarm = MetricAlarm::new(spec(1, 1, TreatMissingData::Missing)).unwrap();
    alarm.record(at(5, 0), 90.0).unwrap();
    assert_eq!(
        alarm.evaluate(at(5, 59)).state,
        AlarmState::InsufficientData
    );
    assert_eq!(alarm.evaluate(at(6, 0)).state, AlarmState::Alarm);
}

#[test]
fn two_of_three_alarm_goes_alarm_with_a_gap_between_breaching_datapoints() {
    let mut alarm = MetricAlarm::new(spec(3, 2, TreatMissingData::Missing)).unwrap();
    // 0 X - X: three real datapoints in the range, the newest three decide.
    alarm.record(at(4, 0), 10.0).unwrap();
    alarm.record(at(5, 0), 60.0).unwrap();
    assert_eq!(alarm.evaluate(at(6, 0)).state, AlarmState::Ok);
    alarm.record(at(7, 0), 70.0).unwrap();
    let evaluation = alarm.evaluate(at(8, 0));
    assert_eq!(
        (evaluation.state, evaluation.changed),
        (AlarmState::Alarm, true)
    );
    assert_eq!(
        evaluation.reason,
        "Threshold Crossed: 2 out of the last 3 datapoints [70.0 (01/12/26 10:07:00), \
         60.0 (01/12/26 10:05:00)] were greater than or equal to the threshold (50.0) \
         (minimum 2 datapoints for OK -> ALARM transition)."
    );
}

/// Evaluates `pattern` (oldest first, one character per period: `0` within the threshold,
/// `X` breaching, `-` missing) as the five periods before the evaluation, after the alarm
/// was put in `prior`.
fn state_after(pattern: &str, m: u32, treat: TreatMissingData, prior: AlarmState) -> AlarmState {
    let mut alarm = MetricAlarm::new(spec(3, m, treat)).unwrap();
    // Three datapoints long before the pattern put the alarm in `prior`.
    match prior {
        AlarmState::InsufficientData => {}
        AlarmState::Alarm | AlarmState::Ok => {
            let value = if prior == AlarmState::Alarm {
                99.0
            } else {
                1.0
            };
            for minute in 0..3 {
                alarm.record(at(minute, 0), value).unwrap();
            }
            assert_eq!(alarm.evaluate(at(3, 0)).state, prior);
        }
    }
    let marks: Vec<char> = pattern.chars().filter(|c| !c.is_whitespace()).collect();
    assert_eq!(marks.len(), 5, "{pattern}");
    for (i, mark) in marks.iter().enumerate() {
        let minute = 20 + i as i64;
        match mark {
            '0' => alarm.record(at(minute, 0), 1.0).unwrap(),
            'X' => alarm.record(at(minute, 0), 99.0).unwrap(),
            _ => {}
        }
    }
    alarm.evaluate(at(25, 0)).state
}

/// The User Guide's tables ("How alarm state is evaluated when data is missing"): for each
/// row, the state under missing, ignore, breaching and notBreaching; `None` is "Retain
/// current state".
#[test]
fn each_missing_data_treatment_matches_the_user_guide_tables() {
    use AlarmState::{Alarm, InsufficientData as Insufficient, Ok};
    let rows: [(&str, u32, [Option<AlarmState>; 4]); 10] = [
        // Datapoints to alarm 3 of 3.
        ("0 - X - X", 3, [Some(Ok), Some(Ok), Some(Ok), Some(Ok)]),
        ("0 - - - -", 3, [Some(Ok), Some(Ok), Some(Ok), Some(Ok)]),
        (
            "- - - - -",
            3,
            [Some(Insufficient), None, Some(Alarm), Some(Ok)],
        ),
        (
            "0 X X - X",
            3,
            [Some(Alarm), Some(Alarm), Some(Alarm), Some(Alarm)],
        ),
        (
            "- - - - X",
            3,
            [Some(Insufficient), None, Some(Alarm), Some(Ok)],
        ),
        // 2 of 3.
        (
            "0 - X - X",
            2,
            [Some(Alarm), Some(Alarm), Some(Alarm), Some(Alarm)],
        ),
        (
            "0 0 X 0 X",
            2,
            [Some(Alarm), Some(Alarm), Some(Alarm), Some(Alarm)],
        ),
        ("0 - X - -", 2, [Some(Ok), Some(Ok), Some(Alarm), Some(Ok)]),
        ("- - - - 0", 2, [Some(Ok), Some(Ok), Some(Alarm), Some(Ok)]),
        (
            "- - - - X",
            2,
            [Some(Insufficient), None, Some(Alarm), Some(Ok)],
        ),
    ];
    let treatments = [
        TreatMissingData::Missing,
        TreatMissingData::Ignore,
        TreatMissingData::Breaching,
        TreatMissingData::NotBreaching,
    ];
    let mut wrong = Vec::new();
    for (pattern, m, expected) in rows {
        for (treat, expected) in treatments.iter().zip(expected) {
            // "Retain current state" is checked from each state the alarm can be in.
            let priors = match expected {
                Some(_) => vec![AlarmState::Ok],
                None => vec![Ok, Alarm, Insufficient],
            };
            for prior in priors {
                let want = expected.unwrap_or(prior);
                let got = state_after(pattern, m, *treat, prior);
                if got != want {
                    wrong.push(format!(
                        "{pattern} ({m} of 3, {treat:?}, from {prior}): {got}, want {want}"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn insufficient_data_reason_counts_the_unknown_datapoints() {
    let mut alarm = MetricAlarm::new(spec(3, 3, TreatMissingData::Missing)).unwrap();
    alarm.record(at(0, 0), 1.0).unwrap();
    assert_eq!(alarm.evaluate(at(1, 0)).state, AlarmState::Ok);
    let evaluation = alarm.evaluate(at(10, 0));
    assert_eq!(
        (evaluation.state, evaluation.changed),
        (AlarmState::InsufficientData, true)
    );
    assert_eq!(
        evaluation.reason,
        "Insufficient Data: 3 datapoints were unknown."
    );
}

#[test]
fn a_new_alarm_is_insufficient_data_until_it_has_data() {
    let mut alarm = MetricAlarm::new(spec(3, 3, TreatMissingData::Missing)).unwrap();
    assert_eq!(alarm.state(), AlarmState::InsufficientData);
    assert_eq!(alarm.reason(), "Unchecked: Initial alarm creation");
    let evaluation = alarm.evaluate(at(30, 0));
    assert_eq!(
        (evaluation.state, evaluation.changed),
        (AlarmState::InsufficientData, false)
    );
}

#[test]
fn each_statistic_reduces_a_period_to_its_value() {
    let cases = [
        (Statistic::Average, "30.0"),
        (Statistic::Sum, "90.0"),
        (Statistic::Minimum, "10.0"),
        (Statistic::Maximum, "60.0"),
        (Statistic::SampleCount, "3.0"),
    ];
    for (statistic, value) in cases {
        let mut alarm = MetricAlarm::new(AlarmSpec {
            statistic,
            threshold: 0.0,
            ..spec(1, 1, TreatMissingData::Missing)
        })
        .unwrap();
        for (second, sample) in [(0, 10.0), (20, 20.0), (59, 60.0)] {
            alarm.record(at(5, second), sample).unwrap();
        }
        // A sample of the next period does not change this period's value.
        alarm.record(at(6, 0), 1000.0).unwrap();
        let reason = alarm.evaluate(at(6, 30)).reason;
        assert!(
            reason.contains(&format!("[{value} (01/12/26 10:05:00)]")),
            "{statistic:?}: {reason}"
        );
    }
}

#[test]
fn each_comparison_operator_breaches_on_its_side_of_the_threshold() {
    use ComparisonOperator::*;
    let cases = [
        (GreaterThanOrEqualToThreshold, [false, true, true]),
        (GreaterThanThreshold, [false, false, true]),
        (LessThanThreshold, [true, false, false]),
        (LessThanOrEqualToThreshold, [true, true, false]),
    ];
    for (op, expected) in cases {
        let got = [49.0, 50.0, 51.0].map(|v| op.breaches(v, 50.0));
        assert_eq!(got, expected, "{op:?}");
    }
}

#[test]
fn memory_holds_only_the_evaluation_range() {
    let mut alarm = MetricAlarm::new(spec(3, 3, TreatMissingData::Missing)).unwrap();
    for minute in 0..1_000 {
        alarm.record(at(minute, 0), 1.0).unwrap();
        if minute % 7 == 0 {
            alarm.evaluate(at(minute, 30));
        }
    }
    // The range (N + 2) and the period still running.
    assert!(alarm.periods.len() <= 6, "{}", alarm.periods.len());
    assert_eq!(
        alarm.record(at(900, 0), 1.0),
        Err(DatapointError::TooOld(at(900, 0)))
    );
    assert_eq!(
        alarm.record(at(999, 0), f64::NAN),
        Err(DatapointError::NotFinite)
    );
}

#[test]
fn spec_validation_follows_put_metric_alarm_limits() {
    let valid = spec(3, 2, TreatMissingData::Missing);
    for seconds in [10, 20, 30, 60, 120, 3_600] {
        let spec = AlarmSpec {
            period: Duration::from_secs(seconds),
            ..valid.clone()
        };
        assert_eq!(spec.errors(), [], "{seconds} s");
    }
    for seconds in [0, 5, 15, 40, 90] {
        let spec = AlarmSpec {
            period: Duration::from_secs(seconds),
            ..valid.clone()
        };
        assert_eq!(
            spec.errors(),
            [AlarmSpecError::Period(Duration::from_secs(seconds))]
        );
    }
    let half_second = AlarmSpec {
        period: Duration::from_millis(10_500),
        ..valid.clone()
    };
    assert_eq!(
        half_second.errors(),
        [AlarmSpecError::Period(Duration::from_millis(10_500))]
    );
    // One day for periods under an hour, seven days from an hour on.
    let day_of_minutes = AlarmSpec {
        evaluation_periods: 1_441,
        ..valid.clone()
    };
    assert_eq!(
        day_of_minutes.errors(),
        [AlarmSpecError::EvaluationTooLong {
            total_seconds: 86_460,
            limit_seconds: 86_400
        }]
    );
    let week_of_hours = AlarmSpec {
        period: Duration::from_secs(3_600),
        evaluation_periods: 168,
        ..valid.clone()
    };
    assert_eq!(week_of_hours.errors(), []);
    let all_wrong = AlarmSpec {
        period: Duration::from_secs(7),
        evaluation_periods: 2,
        datapoints_to_alarm: 3,
        threshold: f64::INFINITY,
        ..valid.clone()
    };
    assert_eq!(
        all_wrong.errors(),
        [
            AlarmSpecError::Period(Duration::from_secs(7)),
            AlarmSpecError::DatapointsToAlarm {
                datapoints_to_alarm: 3,
                evaluation_periods: 2
            },
            AlarmSpecError::Threshold,
        ]
    );
    assert_eq!(
        MetricAlarm::new(AlarmSpec {
            evaluation_periods: 0,
            datapoints_to_alarm: 0,
            ..valid
        })
        .unwrap_err(),
        AlarmSpecError::NoEvaluationPeriods
    );
}
