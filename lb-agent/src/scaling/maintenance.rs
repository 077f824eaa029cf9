//! How a group replaces instances: the instance maintenance policy (EC2 Auto Scaling's
//! `InstanceMaintenancePolicy`) for health check and maximum lifetime replacements, and the
//! back-off between failed launches.
//!
//! AWS's rules ("Instance maintenance policies", EC2 Auto Scaling user guide; the API's
//! `InstanceMaintenancePolicy`): `min_healthy_percentage` (0-100) is the share of the desired
//! capacity kept in service while instances are replaced, `max_healthy_percentage` (100-200)
//! the share that may be in service or pending; both are given together and at most 100
//! apart. 100/110 is "launch before terminating" (an unhealthy instance stays until its
//! replacement is in service), 90/100 "terminate and launch" a tenth at a time. Without a
//! policy (AWS's default) each failing instance is terminated and replaced at once.
//!
//! Shares of the desired capacity are rounded up, so that a small group still has room for
//! one replacement above it ("launch before terminating" on a group of 2 at 110 % launches a
//! third instance); when the bounds leave no room for any step, one instance is replaced at a
//! time, terminated first (AWS's "at least one" rule of instance refresh).
//!
//! Failed launches back off (ours: AWS retries failed launches and suspends a group that
//! launched nothing for a day; a local image that crashes at once would otherwise be
//! relaunched every second): a launch that fails, or an instance gone within `EARLY_EXIT` of
//! its launch, is a failed launch; the first is retried at once (an instance killed young is
//! not a crash loop), each further one in a row doubles the wait before the next launch,
//! from 10 s up to 5 min; an instance launched since the last failure that runs past
//! `EARLY_EXIT` ends it.

use std::time::Duration;

/// The first wait after a failed launch.
pub const FIRST_LAUNCH_BACKOFF: Duration = Duration::from_secs(10);
/// The longest wait between failed launches.
pub const MAX_LAUNCH_BACKOFF: Duration = Duration::from_secs(300);
/// An instance whose process is gone this soon after its launch failed to start (it may
/// have been seen running, even gone into service, for a moment).
pub const EARLY_EXIT: Duration = Duration::from_secs(5);

/// An instance maintenance policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceMaintenancePolicy {
    min_healthy_percentage: u32,
    max_healthy_percentage: u32,
}

/// Why a policy is refused (EC2's validation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaintenanceError {
    #[error("min_healthy_percentage {0} is not within 0..=100")]
    Min(u32),
    #[error("max_healthy_percentage {0} is not within 100..=200")]
    Max(u32),
    #[error(
        "max_healthy_percentage {max} is more than 100 above min_healthy_percentage {min} \
         (EC2 allows a range of at most 100)"
    )]
    Range { min: u32, max: u32 },
    #[error(
        "min_healthy_percentage and max_healthy_percentage are both 100: no instance could \
         ever be replaced (write 100 and 110 to launch before terminating)"
    )]
    NoRoom,
}

impl InstanceMaintenancePolicy {
    pub fn new(
        min_healthy_percentage: u32,
        max_healthy_percentage: u32,
    ) -> Result<Self, MaintenanceError> {
        let (min, max) = (min_healthy_percentage, max_healthy_percentage);
        check_percentages(min, max)?;
        if min == 100 && max == 100 {
            return Err(MaintenanceError::NoRoom);
        }
        Ok(Self {
            min_healthy_percentage: min,
            max_healthy_percentage: max,
        })
    }

    /// A refresh's own percentages (checked by the refresh): 100 and 100 replace one
    /// instance at a time, terminated first (AWS's rule for a refresh at 100 %).
    pub fn for_refresh(min_healthy_percentage: u32, max_healthy_percentage: u32) -> Self {
        Self {
            min_healthy_percentage: min_healthy_percentage.min(100),
            max_healthy_percentage: max_healthy_percentage.clamp(100, 200),
        }
    }

    pub fn min_healthy_percentage(self) -> u32 {
        self.min_healthy_percentage
    }

    pub fn max_healthy_percentage(self) -> u32 {
        self.max_healthy_percentage
    }

    /// Instances kept in service while replacing, of `desired` (rounded up).
    pub fn min_in_service(self, desired: u32) -> u32 {
        share(desired, self.min_healthy_percentage)
    }

    /// Instances in service or pending at most while replacing, of `desired` (rounded up).
    pub fn max_in_service_or_pending(self, desired: u32) -> u32 {
        share(desired, self.max_healthy_percentage)
    }
}

/// EC2's bounds of a minimum and a maximum healthy percentage (a policy's, a refresh's):
/// 0-100, 100-200, at most 100 apart.
pub fn check_percentages(min: u32, max: u32) -> Result<(), MaintenanceError> {
    if min > 100 {
        return Err(MaintenanceError::Min(min));
    }
    if !(100..=200).contains(&max) {
        return Err(MaintenanceError::Max(max));
    }
    if max - min > 100 {
        return Err(MaintenanceError::Range { min, max });
    }
    Ok(())
}

/// `percent` of `of`, rounded up.
pub fn share(of: u32, percent: u32) -> u32 {
    let v = (u64::from(of) * u64::from(percent)).div_ceil(100);
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The wait after `failures` failed launches in a row (none after none or one).
pub fn launch_backoff(failures: u32) -> Duration {
    if failures < 2 {
        return Duration::ZERO;
    }
    let doublings = (failures - 2).min(16);
    FIRST_LAUNCH_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_LAUNCH_BACKOFF)
}

/// What replacing marked instances may do now, in a group of `desired` instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacementRoom {
    /// The capacity launches may fill to (the desired capacity plus replacements launched
    /// before their instances are terminated).
    pub fill_to: u32,
    /// Marked instances that may be terminated now.
    pub terminations: u32,
}

/// The capacity launches may fill to while `marked` instances wait for replacement: the
/// desired capacity, plus replacements launched ahead up to the policy's maximum.
pub fn fill_to(policy: Option<InstanceMaintenancePolicy>, desired: u32, marked: u32) -> u32 {
    match policy {
        Some(policy) => desired
            .saturating_add(marked)
            .min(policy.max_in_service_or_pending(desired).max(desired)),
        None => desired,
    }
}

/// The room for replacing `marked` instances (in service, counted in `in_service`) when
/// `counted` instances are in service, pending or launching; `settled` says nothing is
/// pending or launching. Without a policy every marked instance goes at once.
pub fn replacement_room(
    policy: Option<InstanceMaintenancePolicy>,
    desired: u32,
    marked: u32,
    in_service: u32,
    counted: u32,
    settled: bool,
) -> ReplacementRoom {
    let fill_to = fill_to(policy, desired, marked);
    let Some(policy) = policy else {
        return ReplacementRoom {
            fill_to,
            terminations: marked,
        };
    };
    let mut terminations = in_service
        .saturating_sub(policy.min_in_service(desired))
        .min(marked);
    // No room either way (nothing can launch, nothing may go): one at a time.
    if terminations == 0 && marked > 0 && settled && counted >= fill_to {
        terminations = 1;
    }
    ReplacementRoom {
        fill_to,
        terminations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32) -> Option<InstanceMaintenancePolicy> {
        Some(InstanceMaintenancePolicy::new(min, max).unwrap())
    }

    #[test]
    fn ec2s_bounds_are_enforced() {
        assert_eq!(
            InstanceMaintenancePolicy::new(101, 150),
            Err(MaintenanceError::Min(101))
        );
        assert_eq!(
            InstanceMaintenancePolicy::new(90, 99),
            Err(MaintenanceError::Max(99))
        );
        assert_eq!(
            InstanceMaintenancePolicy::new(90, 201),
            Err(MaintenanceError::Max(201))
        );
        assert_eq!(
            InstanceMaintenancePolicy::new(50, 160),
            Err(MaintenanceError::Range { min: 50, max: 160 })
        );
        assert_eq!(
            InstanceMaintenancePolicy::new(100, 100),
            Err(MaintenanceError::NoRoom)
        );
        assert!(InstanceMaintenancePolicy::new(0, 100).is_ok());
        assert!(InstanceMaintenancePolicy::new(100, 200).is_ok());
    }

    #[test]
    fn without_a_policy_every_failing_instance_is_terminated_and_replaced_at_once() {
        let room = replacement_room(None, 4, 3, 4, 4, true);
        assert_eq!(
            room,
            ReplacementRoom {
                fill_to: 4,
                terminations: 3
            }
        );
    }

    #[test]
    fn launch_before_terminating_keeps_the_unhealthy_instance_until_its_replacement_serves() {
        // 100/110 on 2: room for a third instance (2.2 rounded up).
        let p = policy(100, 110);
        let start = replacement_room(p, 2, 1, 2, 2, true);
        assert_eq!(
            start,
            ReplacementRoom {
                fill_to: 3,
                terminations: 0
            }
        );
        // The replacement is pending: still nothing terminated.
        assert_eq!(replacement_room(p, 2, 1, 2, 3, false).terminations, 0);
        // In service: 3 in service, 2 must stay; the unhealthy one goes.
        assert_eq!(replacement_room(p, 2, 1, 3, 3, true).terminations, 1);
    }

    #[test]
    fn terminate_and_launch_replaces_a_tenth_at_a_time() {
        // 90/100 on 10 with 3 failing: 9 must stay in service, nothing above 10.
        let p = policy(90, 100);
        assert_eq!(
            replacement_room(p, 10, 3, 10, 10, true),
            ReplacementRoom {
                fill_to: 10,
                terminations: 1
            }
        );
        // One terminated, its replacement pending: 9 in service, no further termination.
        assert_eq!(replacement_room(p, 10, 2, 9, 10, false).terminations, 0);
    }

    #[test]
    fn bounds_with_no_room_replace_one_at_a_time_once_settled() {
        // 90/100 on 2: 2 must stay (1.8 rounded up) and nothing may be added.
        let p = policy(90, 100);
        assert_eq!(replacement_room(p, 2, 2, 2, 2, true).terminations, 1);
        // Not while a replacement is still on its way.
        assert_eq!(replacement_room(p, 2, 1, 1, 2, false).terminations, 0);
    }

    #[test]
    fn a_wide_range_replaces_several_at_once() {
        // 50/150 on 4, all failing: 2 launched ahead, 2 terminated at once.
        let p = policy(50, 150);
        assert_eq!(
            replacement_room(p, 4, 4, 4, 4, true),
            ReplacementRoom {
                fill_to: 6,
                terminations: 2
            }
        );
    }

    #[test]
    fn failed_launches_back_off_from_the_second_doubling_to_five_minutes() {
        let waits: Vec<u64> = (0..9).map(|n| launch_backoff(n).as_secs()).collect();
        assert_eq!(waits, [0, 0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(launch_backoff(u32::MAX), MAX_LAUNCH_BACKOFF);
    }
}
