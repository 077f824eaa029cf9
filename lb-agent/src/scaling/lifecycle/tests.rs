//! Lifecycle hooks' state machine, timeouts and verbs, with a clock the tests move by hand.

use std::time::Duration;

use super::*;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn hook(
    name: &str,
    transition: LifecycleTransition,
    timeout: u64,
    default_result: LifecycleActionResult,
) -> LifecycleHook {
    LifecycleHook::new(name, transition, Some(secs(timeout)), Some(default_result)).unwrap()
}

use LifecycleActionResult::{Abandon, Continue};
use LifecycleTransition::{Launching, Terminating};

#[test]
fn hooks_take_aws_defaults_and_refuse_timeouts_out_of_range() {
    let h = LifecycleHook::new("h", Launching, None, None).unwrap();
    assert_eq!(h.heartbeat_timeout(), secs(3600));
    assert_eq!(h.default_result(), Abandon);
    // 100 x 3600 s is more than 48 h: 48 h.
    assert_eq!(h.global_timeout(), secs(48 * 3600));
    // 100 x 60 s is less: 6000 s.
    assert_eq!(
        hook("h", Launching, 60, Continue).global_timeout(),
        secs(6000)
    );
    assert!(matches!(
        LifecycleHook::new("h", Launching, Some(secs(29)), None),
        Err(LifecycleError::HeartbeatTimeoutOutOfRange { .. })
    ));
    assert!(LifecycleHook::new("h", Launching, Some(secs(7201)), None).is_err());
    assert!(LifecycleHook::new("h", Launching, Some(secs(30)), None).is_ok());
    assert!(LifecycleHook::new("h", Launching, Some(secs(7200)), None).is_ok());
}

#[test]
fn states_and_results_read_as_aws_writes_them() {
    assert_eq!(LifecycleState::PendingWait.to_string(), "Pending:Wait");
    assert_eq!(
        LifecycleState::TerminatingProceed.to_string(),
        "Terminating:Proceed"
    );
    assert_eq!(Launching.to_string(), "autoscaling:EC2_INSTANCE_LAUNCHING");
    assert_eq!("CONTINUE".parse(), Ok(Continue));
    assert_eq!("ABANDON".parse(), Ok(Abandon));
    assert!("continue".parse::<LifecycleActionResult>().is_err());
}

#[test]
fn without_hooks_an_instance_goes_straight_through() {
    let (mut i, event) = InstanceLifecycle::launch("i-1", &[], secs(0));
    assert_eq!(event, Some(LifecycleEvent::LaunchProceeds));
    assert_eq!(i.state(), LifecycleState::PendingProceed);
    i.mark_in_service().unwrap();
    assert_eq!(i.state(), LifecycleState::InService);
    assert_eq!(
        i.begin_termination(&[], secs(5)).unwrap(),
        Some(LifecycleEvent::TerminationProceeds)
    );
    i.mark_terminated().unwrap();
    assert_eq!(i.state(), LifecycleState::Terminated);
}

#[test]
fn launch_hook_complete_with_continue_puts_the_instance_in_service() {
    let hooks = [hook("setup", Launching, 300, Abandon)];
    let (mut i, event) = InstanceLifecycle::launch("i-1", &hooks, secs(0));
    assert_eq!(event, None);
    assert_eq!(i.state(), LifecycleState::PendingWait);
    assert_eq!(
        i.complete("setup", Continue).unwrap(),
        Some(LifecycleEvent::LaunchProceeds)
    );
    assert_eq!(i.state(), LifecycleState::PendingProceed);
    i.mark_in_service().unwrap();
}

#[test]
fn launch_hook_timeout_with_abandon_terminates_the_instance() {
    let hooks = [hook("setup", Launching, 300, Abandon)];
    let (mut i, _) = InstanceLifecycle::launch("i-1", &hooks, secs(1000));
    assert_eq!(i.next_deadline(), Some(secs(1300)));
    // Not yet at 1299 s.
    assert_eq!(i.expire(secs(1299)), None);
    assert_eq!(i.state(), LifecycleState::PendingWait);
    // At the timeout the default result, ABANDON, terminates the instance.
    assert_eq!(
        i.expire(secs(1300)),
        Some(LifecycleEvent::LaunchAbandoned {
            hook: "setup".into()
        })
    );
    assert_eq!(i.state(), LifecycleState::Terminating);
    assert!(i.mark_in_service().is_err());
    // It then goes through termination like any other.
    assert_eq!(
        i.begin_termination(&hooks, secs(1300)).unwrap(),
        Some(LifecycleEvent::TerminationProceeds)
    );
}

#[test]
fn launch_hook_timeout_with_continue_puts_the_instance_in_service() {
    let hooks = [hook("setup", Launching, 300, Continue)];
    let (mut i, _) = InstanceLifecycle::launch("i-1", &hooks, secs(0));
    assert_eq!(i.expire(secs(300)), Some(LifecycleEvent::LaunchProceeds));
    assert_eq!(i.state(), LifecycleState::PendingProceed);
}

#[test]
fn heartbeat_restarts_the_timeout() {
    let hooks = [hook("setup", Launching, 3600, Abandon)];
    let (mut i, _) = InstanceLifecycle::launch("i-1", &hooks, secs(0));
    // AWS's example: a one hour timeout, a heartbeat after 30 minutes: 90 minutes in all.
    assert_eq!(i.record_heartbeat("setup", secs(1800)).unwrap(), secs(5400));
    assert_eq!(i.expire(secs(3600)), None);
    assert_eq!(i.expire(secs(5399)), None);
    assert!(matches!(
        i.expire(secs(5400)),
        Some(LifecycleEvent::LaunchAbandoned { .. })
    ));
}

#[test]
fn heartbeats_never_extend_past_the_global_timeout() {
    // Timeout 60 s: global 6000 s.
    let hooks = [hook("setup", Launching, 60, Continue)];
    let (mut i, _) = InstanceLifecycle::launch("i-1", &hooks, secs(0));
    assert_eq!(i.record_heartbeat("setup", secs(5950)).unwrap(), secs(6000));
    assert_eq!(i.expire(secs(5999)), None);
    assert_eq!(i.expire(secs(6000)), Some(LifecycleEvent::LaunchProceeds));
}

#[test]
fn an_instance_waits_for_every_launch_hook_and_any_abandon_ends_it() {
    let hooks = [
        hook("a", Launching, 300, Abandon),
        hook("b", Launching, 600, Abandon),
        hook("gone", Terminating, 300, Continue),
    ];
    let (mut i, _) = InstanceLifecycle::launch("i-1", &hooks, secs(0));
    // Only the launch hooks are waited on.
    assert_eq!(i.waits().len(), 2);
    assert_eq!(i.complete("a", Continue).unwrap(), None);
    assert_eq!(i.state(), LifecycleState::PendingWait);
    assert_eq!(
        i.complete("b", Continue).unwrap(),
        Some(LifecycleEvent::LaunchProceeds)
    );

    let (mut i, _) = InstanceLifecycle::launch("i-2", &hooks, secs(0));
    assert_eq!(
        i.complete("b", Abandon).unwrap(),
        Some(LifecycleEvent::LaunchAbandoned { hook: "b".into() })
    );
    // The other hook's action is cancelled with it.
    assert!(matches!(
        i.complete("a", Continue),
        Err(LifecycleError::NoActiveLifecycleAction { .. })
    ));
}

#[test]
fn terminate_abandon_skips_the_other_hooks_and_continue_waits_for_them() {
    let hooks = [
        hook("logs", Terminating, 300, Continue),
        hook("drain", Terminating, 900, Continue),
    ];
    let mut i = InstanceLifecycle::in_service("i-1");
    assert_eq!(i.begin_termination(&hooks, secs(0)).unwrap(), None);
    assert_eq!(i.state(), LifecycleState::TerminatingWait);
    // CONTINUE on one: the other still runs.
    assert_eq!(i.complete("logs", Continue).unwrap(), None);
    assert_eq!(i.state(), LifecycleState::TerminatingWait);
    assert_eq!(i.next_deadline(), Some(secs(900)));
    assert_eq!(
        i.expire(secs(900)),
        Some(LifecycleEvent::TerminationProceeds)
    );
    assert_eq!(i.state(), LifecycleState::TerminatingProceed);

    let mut i = InstanceLifecycle::in_service("i-2");
    i.begin_termination(&hooks, secs(0)).unwrap();
    // ABANDON on one: terminated at once, the other hook is not waited for.
    assert_eq!(
        i.complete("logs", Abandon).unwrap(),
        Some(LifecycleEvent::TerminationProceeds)
    );
    assert_eq!(i.next_deadline(), None);
}

#[test]
fn verbs_on_an_instance_not_waiting_are_refused() {
    let hooks = [hook("setup", Launching, 300, Abandon)];
    let mut i = InstanceLifecycle::in_service("i-1");
    let err = i.complete("setup", Continue).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("No active Lifecycle Action found with instance ID i-1"),
        "{err}"
    );
    assert!(i.record_heartbeat("setup", secs(1)).is_err());
    // Completing twice: the second finds nothing active.
    let (mut i, _) = InstanceLifecycle::launch("i-2", &hooks, secs(0));
    i.complete("setup", Continue).unwrap();
    assert!(i.complete("setup", Continue).is_err());
    // Terminating twice is refused.
    let mut i = InstanceLifecycle::in_service("i-3");
    i.begin_termination(&[], secs(0)).unwrap();
    assert!(matches!(
        i.begin_termination(&[], secs(0)),
        Err(LifecycleError::WrongState { .. })
    ));
}

#[test]
fn group_verbs_name_unknown_instances_and_hooks() {
    let mut group = GroupLifecycle::new(vec![
        hook("setup", Launching, 300, Abandon),
        hook("drain", Terminating, 300, Continue),
    ])
    .unwrap();
    assert_eq!(group.launch("i-1", secs(0)), None);
    assert_eq!(
        group.complete("i-9", "setup", Continue),
        Err(LifecycleError::UnknownInstance {
            instance: "i-9".into()
        })
    );
    assert_eq!(
        group.record_heartbeat("i-1", "nope", secs(1)),
        Err(LifecycleError::UnknownHook {
            hook: "nope".into()
        })
    );
    // A hook of the group the instance is not waiting on (wrong transition).
    assert!(matches!(
        group.complete("i-1", "drain", Continue),
        Err(LifecycleError::NoActiveLifecycleAction { .. })
    ));
    assert_eq!(
        group.record_heartbeat("i-1", "setup", secs(100)),
        Ok(secs(400))
    );
    assert_eq!(group.next_deadline(), Some(secs(400)));
    assert_eq!(
        group.expire(secs(400)),
        vec![(
            "i-1".to_owned(),
            LifecycleEvent::LaunchAbandoned {
                hook: "setup".into()
            }
        )]
    );
    // Terminated instances leave the group.
    assert_eq!(group.begin_termination("i-1", secs(400)), Ok(None));
    assert_eq!(
        group.complete("i-1", "drain", Continue),
        Ok(Some(LifecycleEvent::TerminationProceeds))
    );
    group.mark_terminated("i-1").unwrap();
    assert!(group.instance("i-1").is_none());
}

#[test]
fn a_hook_name_used_twice_is_refused() {
    assert_eq!(
        GroupLifecycle::new(vec![
            hook("h", Launching, 300, Abandon),
            hook("h", Terminating, 300, Abandon),
        ]),
        Err(LifecycleError::DuplicateHook { hook: "h".into() })
    );
}
