//! The alarms a controller feeds from its instances: the group's named alarms and the two a
//! target tracking policy gets, each aggregating the instances whose warmup has passed, and
//! what `asg describe` shows of them.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{ControllerError, InstanceReading};
use crate::config::{ScalingMetric, TreatMissingData};
use crate::scaling::{
    alarm::{AlarmSpec, AlarmState, ComparisonOperator, MetricAlarm, Statistic},
    policy::{
        TargetTrackingPolicy,
        target_tracking::{SCALE_IN_DATAPOINTS, SCALE_IN_THRESHOLD_RATIO, SCALE_OUT_DATAPOINTS},
    },
};

/// One alarm as `asg describe` and the Prometheus gauges show it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmView {
    /// The alarm's name (a target tracking policy's: AWS's `TargetTracking-...` pattern).
    pub name: String,
    /// The metric it watches.
    pub metric: ScalingMetric,
    /// OK, ALARM or INSUFFICIENT_DATA.
    pub state: AlarmState,
    /// Why, in CloudWatch's words.
    pub reason: String,
    /// The newest datapoint's value (the alarm's statistic over its period), if any.
    pub last_value: Option<f64>,
    /// The value the datapoints are compared with.
    pub threshold: f64,
}

/// An alarm fed from the group's instances.
#[derive(Debug, Clone)]
pub(super) struct WatchedAlarm {
    pub(super) name: String,
    metric: ScalingMetric,
    pub(super) alarm: MetricAlarm,
    /// Instances count toward its metric once warmed up for this long.
    warmup: Duration,
    /// The newest ended period its policies were invoked for.
    invoked_for: Option<i64>,
    pub(super) last_value: Option<f64>,
}

impl WatchedAlarm {
    pub(super) fn new(
        name: String,
        metric: ScalingMetric,
        spec: AlarmSpec,
        warmup: Duration,
    ) -> Result<Self, ControllerError> {
        let alarm = MetricAlarm::new(spec).map_err(|source| ControllerError::Alarm {
            alarm: name.clone(),
            source,
        })?;
        Ok(Self {
            name,
            metric,
            alarm,
            warmup,
            invoked_for: None,
            last_value: None,
        })
    }

    pub(super) fn record(&mut self, at: Timestamp, now: Duration, readings: &[InstanceReading]) {
        // A rate covers the interval ending at `at`: it belongs to the period that interval
        // ends in, so a sample at a period's first instant counts for the period before (the
        // period's requests are then exactly those of the intervals ending in it).
        let at = if is_rate(self.metric) {
            at.checked_sub(SignedDuration::from_nanos(1)).unwrap_or(at)
        } else {
            at
        };
        for reading in readings.iter().filter(|r| r.counts(self.warmup, now)) {
            if let Some(value) = reading.value(self.metric) {
                // Values are finite and `at` only moves forward, so nothing is refused; a
                // clock stepped back loses that sample only.
                let _ = self.alarm.record(at, value);
            }
        }
    }

    pub(super) fn evaluate(&mut self, at: Timestamp) {
        self.alarm.evaluate(at);
        self.last_value = self.alarm.datapoints(at).last().map(|&(_, value)| value);
    }

    /// Whether a period ended since the policies were last invoked (and marks it invoked):
    /// an alarm invokes its policies once per period.
    pub(super) fn take_new_period(&mut self, at: Timestamp) -> bool {
        let period = self.alarm.spec().period.as_secs().max(1) as i64;
        let ended = at.as_second().div_euclid(period) - 1;
        if self.invoked_for.is_some_and(|done| done >= ended) {
            return false;
        }
        self.invoked_for = Some(ended);
        true
    }

    pub(super) fn view(&self) -> AlarmView {
        AlarmView {
            name: self.name.clone(),
            metric: self.metric,
            state: self.alarm.state(),
            reason: self.alarm.reason().to_owned(),
            last_value: self.last_value,
            threshold: self.alarm.spec().threshold,
        }
    }
}

/// A target tracking policy with the two alarms AWS creates for it.
#[derive(Debug, Clone)]
pub(super) struct TrackedTarget {
    pub(super) policy: TargetTrackingPolicy,
    pub(super) warmup: Duration,
    pub(super) high: WatchedAlarm,
    /// None when scale-in is disabled (AWS then creates no low alarm).
    pub(super) low: Option<WatchedAlarm>,
}

impl TrackedTarget {
    pub(super) fn alarms_mut(&mut self) -> impl Iterator<Item = &mut WatchedAlarm> {
        std::iter::once(&mut self.high).chain(self.low.as_mut())
    }

    /// The metric's datapoints the policy decides on, oldest first: the newest run of
    /// consecutive periods with data, ending with the period that just ended. A period without
    /// data (no instance counted) breaks the run, so "3 datapoints out of 3" are three periods
    /// in a row.
    pub(super) fn datapoints(&self, at: Timestamp) -> Vec<f64> {
        let longest = self.low.as_ref().unwrap_or(&self.high);
        let period = longest.alarm.spec().period.as_secs().max(1) as i64;
        let points = longest.alarm.datapoints(at);
        let newest_ended = at.as_second().div_euclid(period) - 1;
        let Some((newest, _)) = points.last() else {
            return Vec::new();
        };
        if newest.as_second().div_euclid(period) != newest_ended {
            return Vec::new();
        }
        let mut start = points.len() - 1;
        while start > 0 && points[start].0.as_second() - points[start - 1].0.as_second() == period {
            start -= 1;
        }
        points[start..].iter().map(|&(_, value)| value).collect()
    }
}

/// A target tracking policy's two alarms, as AWS creates them: high, the metric above the
/// target for 3 periods of 3; low, below 90% of the target for 15 of 15 (none with scale-in
/// disabled). Both take the metric's average over the counted instances.
pub(super) fn tracked_target(
    policy: TargetTrackingPolicy,
    disable_scale_in: bool,
    metric: ScalingMetric,
    period: Duration,
    warmup: Duration,
) -> Result<TrackedTarget, ControllerError> {
    let spec = |datapoints: usize, comparison_operator, threshold| AlarmSpec {
        period,
        statistic: Statistic::Average,
        evaluation_periods: datapoints as u32,
        datapoints_to_alarm: datapoints as u32,
        comparison_operator,
        threshold,
        treat_missing_data: TreatMissingData::Missing,
    };
    let high = WatchedAlarm::new(
        policy.alarm_high(),
        metric,
        spec(
            SCALE_OUT_DATAPOINTS,
            ComparisonOperator::GreaterThanThreshold,
            policy.target(),
        ),
        warmup,
    )?;
    let low = if disable_scale_in {
        None
    } else {
        Some(WatchedAlarm::new(
            policy.alarm_low(),
            metric,
            spec(
                SCALE_IN_DATAPOINTS,
                ComparisonOperator::LessThanThreshold,
                policy.target() * SCALE_IN_THRESHOLD_RATIO,
            ),
            warmup,
        )?)
    };
    Ok(TrackedTarget {
        policy,
        warmup,
        high,
        low,
    })
}

/// Whether the metric is a rate over the interval since an instance's previous sample (else
/// a gauge read at the sample's time).
fn is_rate(metric: ScalingMetric) -> bool {
    match metric {
        ScalingMetric::CpuUtilization | ScalingMetric::ActiveFlowsPerTarget => false,
        ScalingMetric::NewFlowsPerTarget
        | ScalingMetric::BytesPerTarget
        | ScalingMetric::RequestsPerTarget => true,
    }
}
