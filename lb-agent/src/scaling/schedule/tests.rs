//! Cron parsing, next firings (in UTC and in named zones across DST changes), start and end
//! bounds, one-off actions and validation.

use jiff::{Timestamp, tz::TimeZone};

use super::*;

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// The first `count` firings of `expression` in `zone` after `from`, as UTC timestamps.
fn firings(expression: &str, zone: &str, from: &str, count: usize) -> Vec<String> {
    let cron: CronExpression = expression.parse().unwrap();
    let zone = TimeZone::get(zone).unwrap();
    let mut at = ts(from);
    let mut out = Vec::new();
    for _ in 0..count {
        let Some(next) = cron.next_after(at, &zone) else {
            break;
        };
        out.push(next.to_string());
        at = next;
    }
    out
}

#[test]
fn next_firings_follow_unix_cron_in_utc() {
    let from = "2026-12-01T10:07:00Z"; // a Tuesday
    let cases: [(&str, &str, &[&str]); 8] = [
        (
            "*/15 * * * *",
            from,
            &[
                "2026-12-01T10:15:00Z",
                "2026-12-01T10:30:00Z",
                "2026-12-01T10:45:00Z",
                "2026-12-01T11:00:00Z",
            ],
        ),
        // AWS's own example recurrence.
        (
            "30 0 1 1,6,12 *",
            from,
            &[
                "2027-01-01T00:30:00Z",
                "2027-06-01T00:30:00Z",
                "2027-12-01T00:30:00Z",
            ],
        ),
        (
            "0 20 * * 1-5",
            "2026-12-04T21:00:00Z",
            &["2026-12-07T20:00:00Z", "2026-12-08T20:00:00Z"],
        ),
        (
            "0 9 * * MON-fri",
            "2026-12-04T21:00:00Z",
            &["2026-12-07T09:00:00Z", "2026-12-08T09:00:00Z"],
        ),
        // Both day fields restricted: the 13th or any Friday.
        (
            "0 0 13 * 5",
            from,
            &[
                "2026-12-04T00:00:00Z",
                "2026-12-11T00:00:00Z",
                "2026-12-13T00:00:00Z",
                "2026-12-18T00:00:00Z",
            ],
        ),
        (
            "0 12 29 FEB *",
            "2026-03-01T00:00:00Z",
            &["2028-02-29T12:00:00Z"],
        ),
        // A value with a step runs to the field's end.
        (
            "5/20 8 * * *",
            from,
            &[
                "2026-12-02T08:05:00Z",
                "2026-12-02T08:25:00Z",
                "2026-12-02T08:45:00Z",
            ],
        ),
        // 7 is Sunday, like 0 and SUN.
        (
            "0 0 * * 7",
            from,
            &["2026-12-06T00:00:00Z", "2026-12-13T00:00:00Z"],
        ),
    ];
    for (expression, start, expected) in cases {
        assert_eq!(
            firings(expression, "Etc/UTC", start, expected.len()),
            expected,
            "{expression}"
        );
    }
    for sunday in ["0 0 * * 0", "0 0 * * SUN"] {
        assert_eq!(
            firings(sunday, "Etc/UTC", from, 2),
            firings("0 0 * * 7", "Etc/UTC", from, 2)
        );
    }
}

#[test]
fn local_times_are_read_in_the_named_zone() {
    // Paris is UTC+1 in December: 09:00 there is 08:00 UTC.
    assert_eq!(
        firings("0 9 * * MON-FRI", "Europe/Paris", "2026-12-04T12:00:00Z", 1),
        ["2026-12-07T08:00:00Z"]
    );
}

#[test]
fn a_daily_time_skipped_by_spring_forward_fires_once_right_after_the_change() {
    // America/New_York, 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC). 02:30 does not
    // exist that day: it fires at 03:00 EDT, once.
    assert_eq!(
        firings("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
        [
            "2026-03-07T07:30:00Z", // 02:30 EST
            "2026-03-08T07:00:00Z", // 03:00 EDT, the first instant after the gap
            "2026-03-09T06:30:00Z", // 02:30 EDT
        ]
    );
}

#[test]
fn a_daily_time_across_fall_back_fires_once_each_day() {
    // 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00 UTC); 02:30 happens once, in EST.
    assert_eq!(
        firings("30 2 * * *", "America/New_York", "2026-10-31T00:00:00Z", 3),
        [
            "2026-10-31T06:30:00Z", // 02:30 EDT
            "2026-11-01T07:30:00Z", // 02:30 EST
            "2026-11-02T07:30:00Z",
        ]
    );
    // 01:30 happens twice that night: it fires the first time only.
    assert_eq!(
        firings("30 1 * * *", "America/New_York", "2026-10-31T00:00:00Z", 3),
        [
            "2026-10-31T05:30:00Z", // 01:30 EDT
            "2026-11-01T05:30:00Z", // 01:30 EDT; not again at 01:30 EST (06:30 UTC)
            "2026-11-02T06:30:00Z", // 01:30 EST
        ]
    );
}

#[test]
fn a_wildcard_hour_follows_the_clock_across_dst_changes() {
    // Spring forward: nothing at the skipped 02:00 and 02:30.
    assert_eq!(
        firings(
            "0,30 * * * *",
            "America/New_York",
            "2026-03-08T06:00:00Z",
            3
        ),
        [
            "2026-03-08T06:30:00Z", // 01:30 EST
            "2026-03-08T07:00:00Z", // 03:00 EDT
            "2026-03-08T07:30:00Z", // 03:30 EDT
        ]
    );
    // Fall back: the repeated hour runs twice.
    assert_eq!(
        firings(
            "0,30 * * * *",
            "America/New_York",
            "2026-11-01T04:45:00Z",
            5
        ),
        [
            "2026-11-01T05:00:00Z", // 01:00 EDT
            "2026-11-01T05:30:00Z", // 01:30 EDT
            "2026-11-01T06:00:00Z", // 01:00 EST
            "2026-11-01T06:30:00Z", // 01:30 EST
            "2026-11-01T07:00:00Z", // 02:00 EST
        ]
    );
}

#[test]
fn invalid_expressions_are_refused_naming_the_field() {
    use CronField::*;
    use FieldProblem::*;
    let field = |field, text: &str, problem| CronError::Field {
        field,
        text: text.to_owned(),
        problem,
    };
    let cases = [
        ("* * * *", CronError::FieldCount { found: 4 }),
        // EventBridge's 6-field form is not EC2 Auto Scaling's.
        ("0 0 ? * MON *", CronError::FieldCount { found: 6 }),
        ("0 0 ? * MON", field(DayOfMonth, "?", NotAValue("?".into()))),
        (
            "60 * * * *",
            field(
                Minute,
                "60",
                OutOfRange {
                    value: 60,
                    min: 0,
                    max: 59,
                },
            ),
        ),
        (
            "* 24 * * *",
            field(
                Hour,
                "24",
                OutOfRange {
                    value: 24,
                    min: 0,
                    max: 23,
                },
            ),
        ),
        (
            "* * 0 * *",
            field(
                DayOfMonth,
                "0",
                OutOfRange {
                    value: 0,
                    min: 1,
                    max: 31,
                },
            ),
        ),
        (
            "* * * 13 *",
            field(
                Month,
                "13",
                OutOfRange {
                    value: 13,
                    min: 1,
                    max: 12,
                },
            ),
        ),
        (
            "* * * * 8",
            field(
                DayOfWeek,
                "8",
                OutOfRange {
                    value: 8,
                    min: 0,
                    max: 7,
                },
            ),
        ),
        ("* * * FOO *", field(Month, "FOO", NotAValue("FOO".into()))),
        ("* * * MON *", field(Month, "MON", NotAValue("MON".into()))),
        ("*/0 * * * *", field(Minute, "*/0", Step("0".into()))),
        ("*/x * * * *", field(Minute, "*/x", Step("x".into()))),
        (
            "10-5 * * * *",
            field(Minute, "10-5", Reversed { start: 10, end: 5 }),
        ),
        ("1,,2 * * * *", field(Minute, "1,,2", Empty)),
        ("-1 * * * *", field(Minute, "-1", NotAValue("".into()))),
        (
            "0 0 30 2 *",
            CronError::NeverFires {
                days: "30".into(),
                months: "2".into(),
            },
        ),
    ];
    for (expression, expected) in cases {
        assert_eq!(
            expression.parse::<CronExpression>(),
            Err(expected),
            "{expression}"
        );
    }
    assert_eq!(
        "60 * * * *"
            .parse::<CronExpression>()
            .unwrap_err()
            .to_string(),
        "minute field \"60\": 60 is outside 0-59"
    );
}

#[test]
fn valid_expressions_parse() {
    for expression in [
        "* * * * *",
        "0 0 * * *",
        "30 0 1 1,6,12 *",
        "0 20 * * 1-5",
        "0-30/10 8-18/2 1-15 JAN-jun mon,WED,Fri",
        "  15   3  *  *  *  ",
        "0 0 31 1-12 *",
        "0 0 29 2 *",
    ] {
        assert!(expression.parse::<CronExpression>().is_ok(), "{expression}");
    }
}

fn recurring(expression: &str, zone: Option<&str>) -> Recurrence {
    Recurrence::parse(expression, zone).unwrap()
}

fn action(time: ScheduledTime) -> ScheduledAction {
    ScheduledAction {
        name: "business-hours".to_owned(),
        time,
        min_size: None,
        max_size: None,
        desired_capacity: Some(4),
    }
}

#[test]
fn a_recurrence_runs_at_its_start_time_then_on_schedule_until_its_end_time() {
    let action = action(ScheduledTime::Recurring(Recurrence {
        start_time: Some(ts("2026-12-01T10:20:00Z")),
        end_time: Some(ts("2026-12-01T12:00:00Z")),
        ..recurring("0 * * * *", None)
    }));
    let mut runs = Vec::new();
    let mut at = ts("2026-12-01T09:30:00Z");
    while let Some(next) = action.next_after(at) {
        runs.push(next.to_string());
        at = next;
        assert!(runs.len() < 10, "no end: {runs:?}");
    }
    assert_eq!(
        runs,
        [
            "2026-12-01T10:20:00Z",
            "2026-12-01T11:00:00Z",
            "2026-12-01T12:00:00Z"
        ]
    );
}

#[test]
fn a_recurrence_without_a_zone_is_in_utc() {
    let recurrence = recurring("0 9 * * *", None);
    assert_eq!(recurrence.time_zone.iana_name(), Some("Etc/UTC"));
    let action = action(ScheduledTime::Recurring(recurrence));
    assert_eq!(
        action.next_after(ts("2026-12-01T10:00:00Z")),
        Some(ts("2026-12-02T09:00:00Z"))
    );
}

#[test]
fn a_one_off_action_runs_once_at_its_time() {
    let action = action(ScheduledTime::Once {
        at: ts("2026-12-01T15:00:00Z"),
    });
    assert_eq!(
        action.next_after(ts("2026-12-01T14:00:00Z")),
        Some(ts("2026-12-01T15:00:00Z"))
    );
    assert_eq!(action.next_after(ts("2026-12-01T15:00:00Z")), None);
}

#[test]
fn unknown_time_zones_are_refused_and_named_ones_resolve() {
    assert_eq!(
        Recurrence::parse("0 9 * * *", Some("Mars/Olympus_Mons")).unwrap_err(),
        ScheduleError::UnknownTimeZone {
            name: "Mars/Olympus_Mons".into()
        }
    );
    for zone in [
        "Europe/Paris",
        "America/New_York",
        "Asia/Kolkata",
        "Etc/GMT+9",
    ] {
        assert!(Recurrence::parse("0 9 * * *", Some(zone)).is_ok(), "{zone}");
    }
    assert!(matches!(
        Recurrence::parse("0 9 * *", None),
        Err(ScheduleError::Cron(CronError::FieldCount { found: 4 }))
    ));
}

#[test]
fn action_validation_reports_every_broken_rule() {
    let valid = action(ScheduledTime::Once {
        at: ts("2026-12-01T15:00:00Z"),
    });
    assert_eq!(valid.errors(), []);
    let nothing = ScheduledAction {
        desired_capacity: None,
        ..valid.clone()
    };
    assert_eq!(nothing.errors(), [ScheduleError::NothingToSet]);
    let sizes = ScheduledAction {
        min_size: Some(5),
        max_size: Some(3),
        desired_capacity: Some(4),
        ..valid.clone()
    };
    assert_eq!(
        sizes.errors(),
        [
            ScheduleError::MinAboveMax { min: 5, max: 3 },
            ScheduleError::DesiredOutsideSizes { desired: 4 }
        ]
    );
    let backwards = ScheduledAction {
        time: ScheduledTime::Recurring(Recurrence {
            start_time: Some(ts("2026-12-02T00:00:00Z")),
            end_time: Some(ts("2026-12-01T00:00:00Z")),
            ..recurring("0 9 * * *", None)
        }),
        ..valid
    };
    assert_eq!(
        backwards.errors(),
        [ScheduleError::EndNotAfterStart {
            start: ts("2026-12-02T00:00:00Z"),
            end: ts("2026-12-01T00:00:00Z"),
        }]
    );
}
