use std::{net::IpAddr, time::Duration};

use super::*;
use crate::scaling::{lifecycle::LifecycleTransition, refresh::RefreshStatus};

const T0: Duration = Duration::from_secs(1_764_583_200); // 2025-12-01T10:00:00Z

fn settings() -> GroupSettings {
    GroupSettings {
        name: "web-asg".into(),
        health_check_type: HealthCheckType::Elb,
        health_check_grace_period: Duration::from_secs(300),
        deregistration_delay: Duration::from_secs(30),
        termination_policies: vec![TerminationPolicy::OldestInstance],
        new_instances_protected_from_scale_in: false,
        max_instance_lifetime: None,
        maintenance_policy: None,
        current_launch: CurrentLaunch::LaunchTemplate { name: "web".into() },
        lifecycle_hooks: Vec::new(),
    }
}

fn group(min: u32, desired: u32, max: u32) -> Group {
    Group::new(
        settings(),
        GroupCapacity::new(min, desired, max).expect("bounds"),
    )
}

fn address(n: u8) -> IpAddr {
    IpAddr::from([198, 18, 8, n])
}

fn from_v1() -> LaunchSource {
    LaunchSource::LaunchTemplate {
        name: "web".into(),
        version: 1,
    }
}

fn at(seconds: u64) -> Duration {
    T0 + Duration::from_secs(seconds)
}

/// What the provider would say at `seconds`: these instances run.
fn seen(seconds: u64, running: &[&str]) -> Observation {
    Observation {
        taken_at: at(seconds),
        running: running.iter().map(|s| (*s).to_owned()).collect(),
        ..Observation::default()
    }
}

/// A group brought to `ids.len()` instances in service, launched 1 s apart from T0.
fn in_service(ids: &[&str]) -> Group {
    let n = u32::try_from(ids.len()).unwrap();
    let mut g = group(0, n, 10);
    assert_eq!(g.step(at(0), &seen(0, &[])), [Action::Launch { count: n }]);
    for (k, id) in ids.iter().enumerate() {
        let k = u64::try_from(k).unwrap();
        g.launched(id, address(u8::try_from(k).unwrap() + 2), from_v1(), at(k));
    }
    let actions = g.step(at(20), &seen(20, ids));
    let registered: Vec<Action> = ids
        .iter()
        .map(|id| Action::Register {
            instance: (*id).to_owned(),
        })
        .collect();
    assert_eq!(actions, registered);
    g
}

fn phase(g: &Group, id: &str) -> Option<Phase> {
    g.instances().iter().find(|i| i.id == id).map(|i| i.phase)
}

#[test]
fn a_group_launches_up_to_its_desired_capacity_and_registers_what_runs() {
    let mut g = group(1, 2, 4);
    assert_eq!(g.step(at(0), &seen(0, &[])), [Action::Launch { count: 2 }]);
    // Launches under way count: no second request.
    assert_eq!(g.step(at(1), &seen(1, &[])), []);
    g.launched("i-a", address(2), from_v1(), at(2));
    // Seen before it started: not judged.
    assert_eq!(g.step(at(2), &seen(1, &[])), []);
    // i-b starts after the provider was asked at 3 s: pending, not judged either.
    g.launched("i-b", address(3), from_v1(), at(4));
    assert_eq!(
        g.step(at(4), &seen(3, &["i-a"])),
        [Action::Register {
            instance: "i-a".into()
        }]
    );
    assert_eq!(phase(&g, "i-b"), Some(Phase::Pending));
    assert_eq!(g.current_capacity(), 2);
    let launches: Vec<(ActivityStatus, &str)> = g
        .activities()
        .newest_first()
        .map(|a| (a.status, a.description.as_str()))
        .collect();
    assert_eq!(
        launches,
        [
            (ActivityStatus::InProgress, "Launching a new instance: i-b"),
            (ActivityStatus::Successful, "Launching a new instance: i-a"),
        ]
    );
}

#[test]
fn a_dead_instance_drains_stops_and_is_replaced_in_the_same_step() {
    let mut g = in_service(&["i-a", "i-b"]);
    let actions = g.step(at(40), &seen(40, &["i-b"]));
    assert_eq!(
        actions,
        [
            Action::Deregister {
                instance: "i-a".into()
            },
            Action::Launch { count: 1 }
        ]
    );
    let cause = &g.activities().newest_first().next().unwrap().cause;
    assert!(cause.contains("EC2 health check"), "{cause}");
    // Nothing flows to a dead instance: it stops at the next step.
    let mut drained = seen(41, &["i-b"]);
    drained.drained.insert("i-a".into());
    assert_eq!(
        g.step(at(41), &drained),
        [Action::Stop {
            instance: "i-a".into()
        }]
    );
    g.stopped("i-a", at(42));
    assert_eq!(phase(&g, "i-a"), None);
}

#[test]
fn elb_health_counts_only_after_the_grace_period() {
    let mut g = in_service(&["i-a"]);
    let mut unhealthy = seen(100, &["i-a"]);
    unhealthy.unhealthy_in_target_groups.insert("i-a".into());
    assert_eq!(
        g.step(at(100), &unhealthy),
        [],
        "within the 300 s grace period"
    );
    unhealthy.taken_at = at(301);
    let actions = g.step(at(301), &unhealthy);
    assert_eq!(
        actions,
        [
            Action::Deregister {
                instance: "i-a".into()
            },
            Action::Launch { count: 1 }
        ]
    );
    let cause = &g.activities().newest_first().next().unwrap().cause;
    assert!(
        cause.ends_with("an ELB system health check failure."),
        "{cause}"
    );
}

#[test]
fn scale_in_drains_the_chosen_instance_until_its_flows_end_or_the_delay_passes() {
    let mut g = in_service(&["i-a", "i-b", "i-c"]);
    g.set_capacity(GroupCapacity::new(0, 1, 10).unwrap());
    let all = ["i-a", "i-b", "i-c"];
    // OldestInstance: i-a then i-b (launched at T0 and T0 + 1 s).
    assert_eq!(
        g.step(at(50), &seen(50, &all)),
        [
            Action::Deregister {
                instance: "i-a".into()
            },
            Action::Deregister {
                instance: "i-b".into()
            }
        ]
    );
    assert_eq!(g.current_capacity(), 1);
    // i-a's flows end at 60 s; i-b still has some until the 30 s delay passes.
    let mut later = seen(60, &all);
    later.drained.insert("i-a".into());
    assert_eq!(
        g.step(at(60), &later),
        [Action::Stop {
            instance: "i-a".into()
        }]
    );
    assert_eq!(phase(&g, "i-b"), Some(Phase::Draining { since: at(50) }));
    assert_eq!(g.step(at(79), &seen(79, &all)), []);
    assert_eq!(
        g.step(at(80), &seen(80, &all)),
        [Action::Stop {
            instance: "i-b".into()
        }]
    );
    let cause = &g.activities().newest_first().next().unwrap().cause;
    assert!(
        // Both leave in one scale-in: each says the batch's from and to, as EC2 does.
        cause.contains("shrinking the capacity from 3 to 1")
            && cause.contains("instance i-b was selected for termination"),
        "{cause}"
    );
}

#[test]
fn protected_instances_are_never_chosen_for_scale_in() {
    let mut g = in_service(&["i-a", "i-b"]);
    for i in &mut g.instances {
        i.protected_from_scale_in = true;
    }
    g.set_capacity(GroupCapacity::new(0, 1, 10).unwrap());
    assert_eq!(g.step(at(50), &seen(50, &["i-a", "i-b"])), []);
    assert_eq!(g.current_capacity(), 2);
}

#[test]
fn an_instance_past_its_maximum_lifetime_is_replaced() {
    let mut g = in_service(&["i-a"]);
    g.settings.max_instance_lifetime = Some(Duration::from_secs(86_400));
    assert_eq!(g.step(at(86_399), &seen(86_399, &["i-a"])), []);
    assert_eq!(
        g.step(at(86_400), &seen(86_400, &["i-a"])),
        [
            Action::Deregister {
                instance: "i-a".into()
            },
            Action::Launch { count: 1 }
        ]
    );
    let cause = &g.activities().newest_first().next().unwrap().cause;
    assert!(cause.contains("maximum instance lifetime"), "{cause}");
}

#[test]
fn a_failed_launch_is_an_activity_retried_at_once_and_then_after_a_back_off() {
    let mut g = group(1, 1, 2);
    assert_eq!(g.step(at(0), &seen(0, &[])), [Action::Launch { count: 1 }]);
    g.launch_failed(None, "no address left in 198.18.8.0/30", at(1));
    let failed = g.activities().newest_first().next().unwrap();
    assert_eq!(failed.status, ActivityStatus::Failed);
    assert_eq!(
        failed.status_message.as_deref(),
        Some("no address left in 198.18.8.0/30 (tried again at once)")
    );
    assert_eq!(g.step(at(2), &seen(2, &[])), [Action::Launch { count: 1 }]);
    // A second failure in a row waits 10 s, a third 20 s.
    g.launch_failed(None, "again", at(3));
    let failed = g.activities().newest_first().next().unwrap();
    assert_eq!(
        failed.status_message.as_deref(),
        Some("again (the next launch in 10 s)")
    );
    assert_eq!(g.step(at(4), &seen(4, &[])), [], "backing off");
    assert_eq!(g.launches_wait_until(), Some(at(13)));
    assert_eq!(
        g.step(at(13), &seen(13, &[])),
        [Action::Launch { count: 1 }]
    );
    g.launch_failed(None, "and again", at(14));
    assert_eq!(g.step(at(33), &seen(33, &[])), []);
    assert_eq!(
        g.step(at(34), &seen(34, &[])),
        [Action::Launch { count: 1 }]
    );
}

#[test]
fn instances_that_exit_right_after_their_launch_back_off_and_one_that_lasts_ends_it() {
    let mut g = group(1, 1, 2);
    assert_eq!(g.step(at(0), &seen(0, &[])), [Action::Launch { count: 1 }]);
    g.launched("i-a", address(2), from_v1(), at(0));
    // Seen running for a moment (into service), then gone 3 s after its launch: replaced
    // at once the first time.
    assert_eq!(
        g.step(at(1), &seen(1, &["i-a"])),
        [Action::Register {
            instance: "i-a".into()
        }]
    );
    assert_eq!(
        g.step(at(3), &seen(3, &[])),
        [
            Action::Deregister {
                instance: "i-a".into()
            },
            Action::Launch { count: 1 }
        ]
    );
    g.launched("i-b", address(3), from_v1(), at(3));
    // Never seen running, gone: the second failure in a row waits 10 s.
    assert_eq!(
        g.step(at(4), &seen(4, &[])),
        [Action::Stop {
            instance: "i-b".into()
        }]
    );
    g.stopped("i-b", at(4));
    assert_eq!(g.launches_wait_until(), Some(at(14)));
    assert_eq!(g.step(at(5), &seen(5, &[])), []);
    assert_eq!(
        g.step(at(14), &seen(14, &[])),
        [Action::Launch { count: 1 }]
    );
    g.launched("i-c", address(4), from_v1(), at(14));
    assert_eq!(
        g.step(at(15), &seen(15, &["i-c"])),
        [Action::Register {
            instance: "i-c".into()
        }]
    );
    assert_eq!(g.launches_wait_until(), Some(at(14)), "not yet past 5 s");
    // Running 5 s after its launch: started; the back-off ends.
    assert_eq!(g.step(at(19), &seen(19, &["i-c"])), []);
    assert_eq!(g.launches_wait_until(), None);
    // Killed later: replaced in the same step, no back-off.
    let actions = g.step(at(30), &seen(30, &[]));
    assert_eq!(
        actions,
        [
            Action::Deregister {
                instance: "i-c".into()
            },
            Action::Launch { count: 1 }
        ]
    );
}

/// `in_service` with an instance maintenance policy.
fn with_policy(ids: &[&str], min: u32, max: u32) -> Group {
    let mut g = in_service(ids);
    g.settings.maintenance_policy =
        Some(crate::scaling::maintenance::InstanceMaintenancePolicy::new(min, max).unwrap());
    g
}

/// The provider and the target groups at `seconds`: `running` run, `unhealthy` fail their
/// target groups' checks, `not_ready` are not yet found healthy.
fn seen_health(
    seconds: u64,
    running: &[&str],
    unhealthy: &[&str],
    not_ready: &[&str],
) -> Observation {
    let mut o = seen(seconds, running);
    o.unhealthy_in_target_groups = unhealthy.iter().map(|s| (*s).to_owned()).collect();
    o.not_ready = unhealthy
        .iter()
        .chain(not_ready)
        .map(|s| (*s).to_owned())
        .collect();
    o
}

#[test]
fn launch_before_terminating_keeps_an_unhealthy_instance_until_its_replacement_is_healthy() {
    // 100/110 on 2 (AWS's "launch before terminating"): a third instance first.
    let mut g = with_policy(&["i-a", "i-b"], 100, 110);
    let actions = g.step(at(400), &seen_health(400, &["i-a", "i-b"], &["i-a"], &[]));
    assert_eq!(actions, [Action::Launch { count: 1 }]);
    assert_eq!(phase(&g, "i-a"), Some(Phase::InService));
    g.launched("i-c", address(9), from_v1(), at(401));
    let running = ["i-a", "i-b", "i-c"];
    assert_eq!(
        g.step(at(402), &seen_health(402, &running, &["i-a"], &["i-c"])),
        [Action::Register {
            instance: "i-c".into()
        }]
    );
    // Registered, checks not yet passed: i-a stays.
    assert_eq!(
        g.step(at(403), &seen_health(403, &running, &["i-a"], &["i-c"])),
        []
    );
    // Healthy: i-a drains, and nothing more is launched.
    assert_eq!(
        g.step(at(404), &seen_health(404, &running, &["i-a"], &[])),
        [Action::Deregister {
            instance: "i-a".into()
        }]
    );
    let cause = &g.activities().newest_first().next().unwrap().cause;
    assert!(
        cause.ends_with("an ELB system health check failure."),
        "{cause}"
    );
    assert_eq!(g.step(at(405), &seen_health(405, &running, &[], &[])), []);
    assert_eq!(g.current_capacity(), 2);
}

#[test]
fn terminate_and_launch_replaces_unhealthy_instances_a_tenth_at_a_time() {
    // 90/100 on 10 with 3 failing: one at a time, each after the last replacement serves.
    let ids: Vec<String> = (0..10).map(|k| format!("i-{k}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut g = with_policy(&refs, 90, 100);
    let failing = ["i-0", "i-1", "i-2"];
    let actions = g.step(at(400), &seen_health(400, &refs, &failing, &[]));
    assert_eq!(
        actions,
        [
            Action::Deregister {
                instance: "i-0".into()
            },
            Action::Launch { count: 1 }
        ]
    );
    // The replacement is on its way: the others wait.
    g.launched("i-n1", address(40), from_v1(), at(401));
    let mut running: Vec<&str> = refs.clone();
    running.push("i-n1");
    assert_eq!(
        g.step(at(402), &seen_health(402, &running, &failing, &["i-n1"])),
        [Action::Register {
            instance: "i-n1".into()
        }]
    );
    assert_eq!(
        g.step(at(403), &seen_health(403, &running, &failing, &["i-n1"])),
        []
    );
    // It serves: the next one goes.
    let actions = g.step(at(404), &seen_health(404, &running, &failing, &[]));
    assert_eq!(
        actions,
        [
            Action::Deregister {
                instance: "i-1".into()
            },
            Action::Launch { count: 1 }
        ]
    );
}

#[test]
fn without_a_policy_every_unhealthy_instance_is_replaced_at_once() {
    let mut g = in_service(&["i-a", "i-b", "i-c"]);
    let actions = g.step(
        at(400),
        &seen_health(400, &["i-a", "i-b", "i-c"], &["i-a", "i-b"], &[]),
    );
    assert_eq!(
        actions,
        [
            Action::Deregister {
                instance: "i-a".into()
            },
            Action::Deregister {
                instance: "i-b".into()
            },
            Action::Launch { count: 2 }
        ]
    );
}

#[test]
fn a_dead_instance_is_replaced_at_once_whatever_the_policy() {
    let mut g = with_policy(&["i-a", "i-b"], 100, 110);
    let actions = g.step(at(400), &seen_health(400, &["i-b"], &[], &[]));
    assert_eq!(
        actions,
        [
            Action::Deregister {
                instance: "i-a".into()
            },
            Action::Launch { count: 1 }
        ]
    );
}

#[test]
fn a_refresh_with_a_maximum_above_100_percent_launches_ahead() {
    // 100 % and 150 % on 2: each batch's replacement is launched before it goes.
    let mut g = in_service(&["i-a", "i-b"]);
    g.start_refresh((100, 150), Duration::ZERO, at(100))
        .unwrap();
    // One batch of one (100 %): launched ahead.
    assert_eq!(
        g.step(at(100), &seen_health(100, &["i-a", "i-b"], &[], &[])),
        [Action::Launch { count: 1 }]
    );
    assert_eq!(phase(&g, "i-a"), Some(Phase::InService));
    g.launched("i-c", address(9), from_v2(), at(101));
    let running = ["i-a", "i-b", "i-c"];
    assert_eq!(
        g.step(at(102), &seen_health(102, &running, &[], &["i-c"])),
        [Action::Register {
            instance: "i-c".into()
        }]
    );
    assert_eq!(
        g.step(at(103), &seen_health(103, &running, &[], &[])),
        [Action::Deregister {
            instance: "i-a".into()
        }]
    );
}

#[test]
fn terminating_an_instance_replaces_it_unless_decremented_and_never_below_min() {
    let mut g = in_service(&["i-a", "i-b"]);
    g.set_capacity(GroupCapacity::new(1, 2, 4).unwrap());
    // Without decrement: it drains, and the next step launches its replacement.
    let actions = g.terminate_instance("i-a", false, at(30)).unwrap();
    assert_eq!(
        actions,
        [Action::Deregister {
            instance: "i-a".into()
        }]
    );
    assert_eq!(g.capacity().desired(), 2);
    assert_eq!(
        g.step(at(31), &seen(31, &["i-a", "i-b"])),
        [Action::Launch { count: 1 }]
    );
    // Terminating it again is refused: it is already on its way.
    assert_eq!(
        g.terminate_instance("i-a", false, at(32)),
        Err(GroupError::Terminating {
            instance: "i-a".into()
        })
    );
    // With decrement: desired drops to 1 (the minimum)...
    g.launched("i-c", address(9), from_v1(), at(33));
    g.step(at(34), &seen(34, &["i-a", "i-b", "i-c"]));
    g.terminate_instance("i-b", true, at(35)).unwrap();
    assert_eq!(g.capacity().desired(), 1);
    // ...and no further: EC2 refuses to go below the minimum size.
    let refused = g.terminate_instance("i-c", true, at(36)).unwrap_err();
    assert_eq!(
        refused,
        GroupError::BelowMin {
            instance: "i-c".into(),
            min: 1
        }
    );
    assert!(refused.to_string().contains("min size"), "{refused}");
    assert!(matches!(
        g.terminate_instance("i-zzz", false, at(36)),
        Err(GroupError::NoInstance { .. })
    ));
}

#[test]
fn launches_asked_for_together_each_say_the_whole_change_as_ec2_does() {
    let mut g = group(0, 2, 4);
    assert_eq!(g.step(at(0), &seen(0, &[])), [Action::Launch { count: 2 }]);
    g.launched("i-a", address(2), from_v1(), at(1));
    g.launched("i-b", address(3), from_v1(), at(1));
    for a in g.activities().newest_first() {
        assert!(
            a.cause.ends_with("increasing the capacity from 0 to 2."),
            "{}",
            a.cause
        );
    }
}

#[test]
fn a_launch_caused_by_a_capacity_change_says_so_first_as_ec2_does() {
    let mut g = in_service(&["i-a"]);
    let change = CapacityChange {
        from: 1,
        to: 2,
        cause: Cause::UserRequest,
    };
    let capacity = g.capacity().apply(&change);
    g.change_capacity(capacity, &change, at(50));
    assert_eq!(
        g.step(at(50), &seen(50, &["i-a"])),
        [Action::Launch { count: 1 }]
    );
    g.launched("i-b", address(9), from_v1(), at(51));
    let cause = &g.activities().newest_first().next().unwrap().cause;
    assert!(
        cause.starts_with("At 2025-12-01T10:00:50Z a user request explicitly set group desired capacity changing the desired capacity from 1 to 2.  At 2025-12-01T10:00:51Z an instance was started in response to a difference between desired and actual capacity, increasing the capacity from 1 to 2."),
        "{cause}"
    );
    // Once the group is at its capacity, later launches (a replacement) stand alone.
    g.step(at(60), &seen(60, &["i-a", "i-b"]));
    g.step(at(70), &seen(70, &["i-b"]));
    g.launched("i-c", address(10), from_v1(), at(71));
    let cause = &g.activities().newest_first().next().unwrap().cause;
    assert!(
        cause.starts_with("At 2025-12-01T10:01:11Z an instance was started"),
        "{cause}"
    );
}

#[test]
fn protection_is_set_on_named_instances_only_and_unknown_ones_are_refused_whole() {
    let mut g = in_service(&["i-a", "i-b"]);
    assert!(
        g.set_protection(&["i-a".into(), "i-nope".into()], true)
            .is_err()
    );
    assert!(
        g.instances().iter().all(|i| !i.protected_from_scale_in),
        "nothing half-applied"
    );
    g.set_protection(&["i-a".into()], true).unwrap();
    let protected: Vec<&str> = g
        .instances()
        .iter()
        .filter(|i| i.protected_from_scale_in)
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(protected, ["i-a"]);
}

fn from_v2() -> LaunchSource {
    LaunchSource::LaunchTemplate {
        name: "web".into(),
        version: 2,
    }
}

#[test]
fn an_instance_refresh_replaces_one_at_a_time_after_warmup_and_then_succeeds() {
    let mut g = in_service(&["i-a", "i-b"]);
    let started = g
        .start_refresh((90, 100), Duration::from_secs(10), at(100))
        .unwrap()
        .clone();
    assert_eq!(started.to_replace, 2);
    assert!(
        g.start_refresh((90, 100), Duration::ZERO, at(100)).is_err(),
        "one at a time"
    );
    // 90% of 2 keeps 2 healthy: one at a time, the oldest first; its replacement launches.
    let actions = g.step(at(101), &seen(101, &["i-a", "i-b"]));
    assert_eq!(
        actions,
        [
            Action::Deregister {
                instance: "i-a".into()
            },
            Action::Launch { count: 1 }
        ]
    );
    g.launched("i-c", address(9), from_v2(), at(102));
    // i-a drained and stops; i-c goes into service.
    let mut drained = seen(103, &["i-a", "i-b", "i-c"]);
    drained.drained.insert("i-a".into());
    let actions = g.step(at(103), &drained);
    assert!(
        actions.contains(&Action::Stop {
            instance: "i-a".into()
        }),
        "{actions:?}"
    );
    assert!(
        actions.contains(&Action::Register {
            instance: "i-c".into()
        }),
        "{actions:?}"
    );
    g.stopped("i-a", at(104));
    // Not before i-c has warmed up (10 s from 103).
    assert_eq!(g.step(at(110), &seen(110, &["i-b", "i-c"])), []);
    assert_eq!(g.refresh().unwrap().percentage_complete(), 50);
    assert_eq!(
        g.step(at(113), &seen(113, &["i-b", "i-c"])),
        [
            Action::Deregister {
                instance: "i-b".into()
            },
            Action::Launch { count: 1 }
        ]
    );
    g.launched("i-d", address(10), from_v2(), at(114));
    let mut drained = seen(115, &["i-b", "i-c", "i-d"]);
    drained.drained.insert("i-b".into());
    g.step(at(115), &drained);
    g.stopped("i-b", at(116));
    g.step(at(130), &seen(130, &["i-c", "i-d"]));
    let done = g.refresh().unwrap();
    assert_eq!(done.status, RefreshStatus::Successful);
    assert_eq!(done.percentage_complete(), 100);
    // The terminations say why.
    assert!(
        g.activities()
            .newest_first()
            .any(|a| a.description.ends_with("i-b") && a.cause.contains("instance refresh")),
    );
}

#[test]
fn a_cancelled_refresh_starts_no_further_batch() {
    let mut g = in_service(&["i-a", "i-b"]);
    g.start_refresh((90, 100), Duration::ZERO, at(100)).unwrap();
    g.step(at(101), &seen(101, &["i-a", "i-b"]));
    g.cancel_refresh(at(102)).unwrap();
    assert!(
        g.cancel_refresh(at(102)).is_err(),
        "nothing in progress any more"
    );
    g.launched("i-c", address(9), from_v2(), at(103));
    let mut drained = seen(104, &["i-a", "i-b", "i-c"]);
    drained.drained.insert("i-a".into());
    g.step(at(104), &drained);
    g.stopped("i-a", at(105));
    // i-b stays: the refresh was cancelled.
    assert_eq!(g.step(at(200), &seen(200, &["i-b", "i-c"])), []);
    assert_eq!(g.refresh().unwrap().status, RefreshStatus::Cancelled);
}

#[test]
fn suspended_processes_stop_their_part_of_the_group() {
    let mut g = in_service(&["i-a", "i-b"]);
    // Launch suspended: a dead instance is taken out, but nothing replaces it.
    g.set_suspended(&[ScalingProcess::Launch], true);
    let actions = g.step(at(40), &seen(40, &["i-b"]));
    assert_eq!(
        actions,
        [Action::Deregister {
            instance: "i-a".into()
        }]
    );
    // Resumed: the replacement launches.
    g.set_suspended(&[ScalingProcess::Launch], false);
    assert_eq!(
        g.step(at(41), &seen(41, &["i-b"])),
        [Action::Launch { count: 1 }]
    );
    // HealthCheck suspended: a dead instance stays.
    let mut g = in_service(&["i-a", "i-b"]);
    g.set_suspended(&[ScalingProcess::HealthCheck], true);
    assert_eq!(g.step(at(40), &seen(40, &["i-b"])), []);
    // Terminate suspended: a lower desired capacity terminates nothing.
    let mut g = in_service(&["i-a", "i-b"]);
    g.set_suspended(&[ScalingProcess::Terminate], true);
    g.set_capacity(GroupCapacity::new(0, 1, 4).unwrap());
    assert_eq!(g.step(at(40), &seen(40, &["i-a", "i-b"])), []);
}

fn with_hooks(hooks: Vec<crate::scaling::lifecycle::LifecycleHook>) -> Group {
    let mut s = settings();
    s.lifecycle_hooks = hooks;
    Group::new(s, GroupCapacity::new(0, 1, 4).unwrap())
}

fn hook(
    name: &str,
    transition: LifecycleTransition,
    result: crate::scaling::lifecycle::LifecycleActionResult,
) -> crate::scaling::lifecycle::LifecycleHook {
    crate::scaling::lifecycle::LifecycleHook::new(
        name,
        transition,
        Some(Duration::from_secs(60)),
        Some(result),
    )
    .unwrap()
}

#[test]
fn a_launch_hook_holds_the_instance_in_pending_wait_until_completed() {
    use crate::scaling::lifecycle::LifecycleActionResult::{Abandon, Continue};
    let mut g = with_hooks(vec![hook("warm", LifecycleTransition::Launching, Abandon)]);
    g.step(at(0), &seen(0, &[]));
    g.launched("i-a", address(2), from_v1(), at(1));
    assert_eq!(
        g.step(at(2), &seen(2, &["i-a"])),
        [Action::HookWaiting {
            instance: "i-a".into(),
            transition: LifecycleTransition::Launching
        }]
    );
    assert_eq!(g.instances()[0].lifecycle_state(), "Pending:Wait");
    // Counted toward the capacity while it waits: no second launch.
    assert_eq!(g.step(at(3), &seen(3, &["i-a"])), []);
    let actions = g
        .complete_lifecycle_action("i-a", "warm", Continue, at(4))
        .unwrap();
    assert_eq!(
        actions,
        [Action::Register {
            instance: "i-a".into()
        }]
    );
    assert_eq!(phase(&g, "i-a"), Some(Phase::InService));
    // Not waiting any more: AWS's "No active Lifecycle Action found".
    let refused = g
        .complete_lifecycle_action("i-a", "warm", Continue, at(5))
        .unwrap_err();
    assert!(
        refused.to_string().contains("No active Lifecycle Action"),
        "{refused}"
    );
}

#[test]
fn a_launch_hook_that_times_out_with_abandon_terminates_and_replaces_the_instance() {
    use crate::scaling::lifecycle::LifecycleActionResult::Abandon;
    let mut g = with_hooks(vec![hook("warm", LifecycleTransition::Launching, Abandon)]);
    g.step(at(0), &seen(0, &[]));
    g.launched("i-a", address(2), from_v1(), at(1));
    g.step(at(2), &seen(2, &["i-a"]));
    // A heartbeat at 30 s moves the deadline to 90 s.
    assert_eq!(g.record_heartbeat("i-a", "warm", at(30)).unwrap(), at(90));
    assert_eq!(g.step(at(89), &seen(89, &["i-a"])), []);
    // Timed out: ABANDON, the default result. Never registered: it stops at once, and a
    // replacement launches.
    let actions = g.step(at(90), &seen(90, &["i-a"]));
    assert_eq!(
        actions,
        [
            Action::Stop {
                instance: "i-a".into()
            },
            Action::Launch { count: 1 }
        ]
    );
    let cause = &g.activities().newest_first().next().unwrap().cause;
    assert!(
        cause.contains("lifecycle action that ended with ABANDON"),
        "{cause}"
    );
}

#[test]
fn a_terminate_hook_waits_after_the_drain_and_continue_stops_the_instance() {
    use crate::scaling::lifecycle::LifecycleActionResult::Continue;
    let mut s = settings();
    s.lifecycle_hooks = vec![hook("backup", LifecycleTransition::Terminating, Continue)];
    let mut g = in_service(&["i-a", "i-b"]);
    g.set_settings(s);
    g.set_capacity(GroupCapacity::new(0, 1, 4).unwrap());
    let out = g.step(at(30), &seen(30, &["i-a", "i-b"]));
    assert_eq!(
        out,
        [Action::Deregister {
            instance: "i-a".into()
        }]
    );
    let mut drained = seen(31, &["i-a", "i-b"]);
    drained.drained.insert("i-a".into());
    assert_eq!(
        g.step(at(31), &drained),
        [Action::HookWaiting {
            instance: "i-a".into(),
            transition: LifecycleTransition::Terminating
        }]
    );
    assert_eq!(phase(&g, "i-a"), Some(Phase::TerminatingWait));
    assert_eq!(
        g.complete_lifecycle_action("i-a", "backup", Continue, at(40))
            .unwrap(),
        [Action::Stop {
            instance: "i-a".into()
        }]
    );
}

#[test]
fn a_refresh_resumed_after_a_restart_goes_on_with_its_batch() {
    // The agent stopped with i-a marked in the batch under way: the marks are not kept,
    // the batch is.
    let mut g = in_service(&["i-a", "i-b"]);
    let mut refresh = Refresh::new(1, (90, 100), Duration::ZERO, 2, at(100)).unwrap();
    refresh.replaced = 1;
    refresh.batch = vec!["i-a".into()];
    g.resume_refresh(refresh);
    assert_eq!(
        g.step(at(101), &seen(101, &["i-a", "i-b"])),
        [
            Action::Deregister {
                instance: "i-a".into()
            },
            Action::Launch { count: 1 }
        ]
    );
}

#[test]
fn a_launch_is_an_activity_from_when_it_begins_and_a_failed_one_ends_it() {
    let mut g = group(1, 2, 2);
    assert_eq!(g.step(at(0), &seen(0, &[])), [Action::Launch { count: 2 }]);
    g.launch_begun("i-a", at(0));
    g.launch_begun("i-b", at(0));
    // While the provider works, the launches are in progress.
    let open: Vec<&str> = g
        .activities()
        .newest_first()
        .filter(|a| a.status == ActivityStatus::InProgress)
        .map(|a| a.description.as_str())
        .collect();
    assert_eq!(
        open,
        [
            "Launching a new instance: i-b",
            "Launching a new instance: i-a"
        ]
    );
    g.launched("i-a", address(2), from_v1(), at(40));
    g.launch_failed(Some("i-b"), "the hook said no", at(41));
    let all: Vec<&crate::scaling::activity::Activity> = g.activities().newest_first().collect();
    assert_eq!(all.len(), 2, "{all:#?}");
    let (b, a) = (all[0], all[1]);
    assert_eq!(a.start, time(at(0)), "from when the launch began");
    assert_eq!(
        a.status,
        ActivityStatus::InProgress,
        "until it is in service"
    );
    assert_eq!(b.description, "Launching a new instance: i-b");
    assert_eq!(b.status, ActivityStatus::Failed);
    assert_eq!(
        b.status_message.as_deref(),
        Some("the hook said no (tried again at once)")
    );
}

#[test]
fn a_restart_carries_on_the_activities_of_adopted_instances_and_cancels_the_rest() {
    // Before the restart: i-a launched (pending), i-b's and i-c's launches never returned.
    let mut before = group(1, 2, 2);
    before.step(at(0), &seen(0, &[]));
    for id in ["i-a", "i-b", "i-c"] {
        before.launch_begun(id, at(0));
    }
    let log = before.activities().clone();
    let mut g = group(1, 1, 2).with_activities(log);
    g.adopt(Instance::adopted(
        "i-a".into(),
        address(2),
        from_v1(),
        at(1),
        Phase::Pending,
        false,
    ));
    g.end_orphaned_activities(at(50));
    let status = |g: &Group, id: &str| {
        g.activities()
            .newest_first()
            .find(|a| a.description == format!("Launching a new instance: {id}"))
            .map(|a| (a.status, a.status_message.clone()))
            .unwrap()
    };
    assert_eq!(status(&g, "i-a"), (ActivityStatus::InProgress, None));
    assert_eq!(
        status(&g, "i-c"),
        (
            ActivityStatus::Cancelled,
            Some("the agent restarted before it ended".into())
        )
    );
    // The adopted instance's launch ends when it goes into service.
    assert_eq!(
        g.step(at(51), &seen(51, &["i-a"])),
        [Action::Register {
            instance: "i-a".into()
        }]
    );
    assert_eq!(status(&g, "i-a").0, ActivityStatus::Successful);
}
