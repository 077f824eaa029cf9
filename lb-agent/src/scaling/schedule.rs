//! Scheduled actions, as EC2 Auto Scaling has them: at a time, or on a recurrence in a time
//! zone between optional start and end times, set any of a group's minimum, maximum and
//! desired capacity.
//!
//! Rules followed, from the Amazon EC2 Auto Scaling User Guide ("Scheduled scaling for Amazon
//! EC2 Auto Scaling", "Create a scheduled action") and the API reference
//! (`PutScheduledUpdateGroupAction`): a recurrence is 5-field Unix cron (see [`cron`]); its
//! time zone is an IANA name, UTC by default ("Etc/UTC"); "If you specify Recurrence and
//! StartTime, Amazon EC2 Auto Scaling performs the action at this time, and then performs the
//! action based on the specified recurrence"; the end time ends the recurrence ("the action
//! stops repeating after this time"); a one-off action is a start time without a recurrence;
//! "The desired capacity must be equal to or greater than the minimum group size, and equal
//! to or less than the maximum group size". Time is passed in; nothing here reads a clock.
//! Zones come from jiff's bundled IANA database, so they resolve without /usr/share/zoneinfo.

pub mod cron;

#[cfg(test)]
mod tests;

use jiff::{Timestamp, tz::TimeZone};

pub use cron::{CronError, CronExpression, CronField, FieldProblem};

/// The time zone of a recurrence without one: AWS's default, `Etc/UTC`.
pub const DEFAULT_TIME_ZONE: &str = "Etc/UTC";

/// When a scheduled action runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduledTime {
    /// Once, at this instant (AWS: a start time and no recurrence).
    Once {
        /// When it runs.
        at: Timestamp,
    },
    /// On a cron recurrence.
    Recurring(Recurrence),
}

/// A recurring schedule: a cron expression read in a time zone, bounded by optional start and
/// end times.
#[derive(Debug, Clone, PartialEq)]
pub struct Recurrence {
    /// When it recurs.
    pub expression: CronExpression,
    /// The zone its local times are read in.
    pub time_zone: TimeZone,
    /// If set, the action also runs at this instant, and the recurrence starts from it.
    pub start_time: Option<Timestamp>,
    /// If set, no firing after this instant (one exactly at it still runs).
    pub end_time: Option<Timestamp>,
}

impl Recurrence {
    /// A recurrence from its text and an IANA zone name (`None`: [`DEFAULT_TIME_ZONE`]).
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let expression = expression.parse()?;
        let name = time_zone.unwrap_or(DEFAULT_TIME_ZONE);
        let time_zone = TimeZone::get(name).map_err(|_| ScheduleError::UnknownTimeZone {
            name: name.to_owned(),
        })?;
        Ok(Self {
            expression,
            time_zone,
            start_time: None,
            end_time: None,
        })
    }
}

/// A named action that sets any of a group's sizes when its time comes.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledAction {
    /// The action's name, unique in its group.
    pub name: String,
    /// When it runs.
    pub time: ScheduledTime,
    /// The group's new minimum size, if it changes.
    pub min_size: Option<u32>,
    /// The group's new maximum size, if it changes.
    pub max_size: Option<u32>,
    /// The group's new desired capacity, if it changes.
    pub desired_capacity: Option<u32>,
}

/// Why a scheduled action is refused (a configuration error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// The recurrence does not parse.
    #[error("recurrence: {0}")]
    Cron(#[from] CronError),
    /// The zone is not in the IANA database.
    #[error(
        "time zone {name:?} is not an IANA time zone name (e.g. \"Etc/UTC\", \"Europe/Paris\")"
    )]
    UnknownTimeZone {
        /// The name given.
        name: String,
    },
    /// None of min, max and desired is set: the action would change nothing.
    #[error("a scheduled action sets at least one of min_size, max_size, desired_capacity")]
    NothingToSet,
    /// The minimum is above the maximum.
    #[error("min_size {min} is above max_size {max}")]
    MinAboveMax {
        /// The minimum given.
        min: u32,
        /// The maximum given.
        max: u32,
    },
    /// The desired capacity is outside the sizes the same action sets.
    #[error("desired_capacity {desired} is outside min_size..max_size of the action")]
    DesiredOutsideSizes {
        /// The desired capacity given.
        desired: u32,
    },
    /// The end time is not after the start time.
    #[error("end_time {end} is not after start_time {start}")]
    EndNotAfterStart {
        /// The start time given.
        start: Timestamp,
        /// The end time given.
        end: Timestamp,
    },
}

impl ScheduledAction {
    /// Every rule the action breaks (empty when valid), so a config check reports all at
    /// once. Whether the group's own sizes allow it is the group's check.
    pub fn errors(&self) -> Vec<ScheduleError> {
        let mut errors = Vec::new();
        if self.min_size.is_none() && self.max_size.is_none() && self.desired_capacity.is_none() {
            errors.push(ScheduleError::NothingToSet);
        }
        if let (Some(min), Some(max)) = (self.min_size, self.max_size)
            && min > max
        {
            errors.push(ScheduleError::MinAboveMax { min, max });
        }
        if let Some(desired) = self.desired_capacity
            && (self.min_size.is_some_and(|min| desired < min)
                || self.max_size.is_some_and(|max| desired > max))
        {
            errors.push(ScheduleError::DesiredOutsideSizes { desired });
        }
        if let ScheduledTime::Recurring(Recurrence {
            start_time: Some(start),
            end_time: Some(end),
            ..
        }) = self.time
            && end <= start
        {
            errors.push(ScheduleError::EndNotAfterStart { start, end });
        }
        errors
    }

    /// The action's next run strictly after `after`, or `None` when it will not run again
    /// (a one-off that has passed, a recurrence past its end).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.time {
            ScheduledTime::Once { at } => (*at > after).then_some(*at),
            ScheduledTime::Recurring(recurrence) => {
                // The start time is itself a run, then the recurrence goes on from it.
                if let Some(start) = recurrence.start_time
                    && start > after
                {
                    return Some(start);
                }
                let next = recurrence
                    .expression
                    .next_after(after, &recurrence.time_zone)?;
                match recurrence.end_time {
                    Some(end) if next > end => None,
                    _ => Some(next),
                }
            }
        }
    }
}
