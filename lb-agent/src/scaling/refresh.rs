//! Instance refresh (EC2 Auto Scaling's `StartInstanceRefresh`): the instances launched
//! before the refresh are replaced in batches by instances of the group's launch template
//! as it resolves now (a new version), keeping at least `min_healthy_percentage` of the
//! desired capacity in service, and waiting `instance_warmup` after each batch's
//! replacements go into service before the next batch. A refresh can be cancelled: the
//! batch under way finishes, no other starts.
//!
//! AWS's rules ("Instance refresh", EC2 Auto Scaling user guide): MinHealthyPercentage
//! defaults to 90; the batch is the capacity above that minimum, at least one instance ("a
//! setting of 100 percent ... replaces one instance at a time"); with the default maximum
//! healthy percentage (100) an instance is terminated before its replacement is launched;
//! above it, replacements are launched first (`MaxHealthyPercentage`, 100-200, at most 100
//! above the minimum).
//! Pure: the group decides with it.

use std::time::Duration;

use super::maintenance::{MaintenanceError, check_percentages, share};

/// AWS's default minimum healthy percentage.
pub const DEFAULT_MIN_HEALTHY_PERCENTAGE: u32 = 90;
/// AWS's default maximum healthy percentage: terminate, then launch.
pub const DEFAULT_MAX_HEALTHY_PERCENTAGE: u32 = 100;

/// A refresh's state, as `describe-instance-refreshes` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshStatus {
    InProgress,
    Successful,
    Cancelled,
}

impl RefreshStatus {
    /// EC2's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "InProgress",
            Self::Successful => "Successful",
            Self::Cancelled => "Cancelled",
        }
    }
}

/// One instance refresh of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Refresh {
    /// Unique per group (a counter).
    pub id: u64,
    pub status: RefreshStatus,
    pub min_healthy_percentage: u32,
    /// In service or pending at most (100-200); above 100 a batch's replacements are
    /// launched before it goes.
    pub max_healthy_percentage: u32,
    pub instance_warmup: Duration,
    pub started_at: Duration,
    pub ended_at: Option<Duration>,
    /// Instances to replace when it started.
    pub to_replace: u32,
    /// Instances taken out of service so far.
    pub replaced: u32,
    /// The batch under way: instances taken out and not yet gone.
    pub batch: Vec<String>,
}

/// Why a refresh cannot start or be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// EC2's `InstanceRefreshInProgress`.
    #[error("an instance refresh is already in progress for group {group}")]
    InProgress { group: String },
    /// EC2's `ActiveInstanceRefreshNotFound`.
    #[error("no instance refresh is in progress for group {group}")]
    NoneInProgress { group: String },
    /// Percentages out of EC2's bounds.
    #[error(transparent)]
    Percentages(#[from] MaintenanceError),
}

impl Refresh {
    /// A refresh started at `now` replacing `to_replace` instances.
    pub fn new(
        id: u64,
        (min_healthy_percentage, max_healthy_percentage): (u32, u32),
        instance_warmup: Duration,
        to_replace: u32,
        now: Duration,
    ) -> Result<Self, RefreshError> {
        check_percentages(min_healthy_percentage, max_healthy_percentage)?;
        Ok(Self {
            id,
            status: if to_replace == 0 {
                RefreshStatus::Successful
            } else {
                RefreshStatus::InProgress
            },
            min_healthy_percentage,
            max_healthy_percentage,
            instance_warmup,
            started_at: now,
            ended_at: (to_replace == 0).then_some(now),
            to_replace,
            replaced: 0,
            batch: Vec::new(),
        })
    }

    /// How many instances a batch takes out of `desired`: those above the minimum healthy
    /// share (rounded up), at least one.
    pub fn batch_size(&self, desired: u32) -> u32 {
        desired
            .saturating_sub(share(desired, self.min_healthy_percentage))
            .max(1)
    }

    /// Done so far, in percent (EC2's `PercentageComplete`).
    pub fn percentage_complete(&self) -> u32 {
        if self.to_replace == 0 {
            return 100;
        }
        let done = self
            .replaced
            .saturating_sub(u32::try_from(self.batch.len()).unwrap_or(0));
        done * 100 / self.to_replace
    }

    pub fn is_in_progress(&self) -> bool {
        self.status == RefreshStatus::InProgress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresh(min_healthy: u32) -> Refresh {
        Refresh::new(
            1,
            (min_healthy, 100),
            Duration::from_secs(30),
            4,
            Duration::ZERO,
        )
        .unwrap()
    }

    #[test]
    fn a_batch_is_the_capacity_above_the_minimum_healthy_share_and_at_least_one() {
        // AWS's default, 90%: of 10, 9 stay healthy, 1 at a time; of 2, 2 stay, still 1.
        assert_eq!(refresh(90).batch_size(10), 1);
        assert_eq!(refresh(90).batch_size(2), 1);
        // 50% of 4: 2 at a time; of 5: ceil(2.5) = 3 stay, 2 go.
        assert_eq!(refresh(50).batch_size(4), 2);
        assert_eq!(refresh(50).batch_size(5), 2);
        // 100%: one at a time (AWS's rule); 0%: all at once.
        assert_eq!(refresh(100).batch_size(4), 1);
        assert_eq!(refresh(0).batch_size(4), 4);
    }

    #[test]
    fn percentages_above_100_are_refused_and_nothing_to_replace_is_done_at_once() {
        assert_eq!(
            Refresh::new(1, (101, 150), Duration::ZERO, 1, Duration::ZERO),
            Err(MaintenanceError::Min(101).into())
        );
        assert_eq!(
            Refresh::new(1, (90, 99), Duration::ZERO, 1, Duration::ZERO),
            Err(MaintenanceError::Max(99).into())
        );
        assert_eq!(
            Refresh::new(1, (50, 160), Duration::ZERO, 1, Duration::ZERO),
            Err(MaintenanceError::Range { min: 50, max: 160 }.into())
        );
        // 100 and 100: one at a time, terminated first (AWS's rule).
        assert!(Refresh::new(1, (100, 100), Duration::ZERO, 1, Duration::ZERO).is_ok());
        let empty = Refresh::new(1, (90, 100), Duration::ZERO, 0, Duration::ZERO).unwrap();
        assert_eq!(empty.status, RefreshStatus::Successful);
        assert_eq!(empty.percentage_complete(), 100);
    }
}
