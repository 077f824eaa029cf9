//! A metric alarm that behaves like a CloudWatch metric alarm: datapoints for one metric go in,
//! each period's statistic is compared with a threshold, and the alarm is `OK`, `ALARM` or
//! `INSUFFICIENT_DATA` with a reason worded as CloudWatch words it.
//!
//! Rules followed, from the Amazon CloudWatch User Guide, "Using Amazon CloudWatch alarms"
//! ("Evaluating an alarm", "Configuring how CloudWatch alarms treat missing data", "How alarm
//! state is evaluated when data is missing") and the `PutMetricAlarm` API reference (limits).
//! Time is passed in by the caller; nothing here reads a clock.

use std::{collections::BTreeMap, fmt, time::Duration};

use jiff::Timestamp;

#[cfg(test)]
mod tests;

/// How a period's datapoints become one value, how its value is compared with the threshold,
/// and what a period without datapoints counts as: the config's (CloudWatch's names).
pub use crate::config::{ComparisonOperator, Statistic, TreatMissingData};

impl ComparisonOperator {
    /// Whether `value` breaches `threshold`.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::GreaterThanOrEqualToThreshold => value >= threshold,
            Self::GreaterThanThreshold => value > threshold,
            Self::LessThanThreshold => value < threshold,
            Self::LessThanOrEqualToThreshold => value <= threshold,
        }
    }

    /// The words CloudWatch puts in a state reason ("were greater than or equal to the
    /// threshold").
    fn phrase(self) -> &'static str {
        match self {
            Self::GreaterThanOrEqualToThreshold => "greater than or equal to",
            Self::GreaterThanThreshold => "greater than",
            Self::LessThanThreshold => "less than",
            Self::LessThanOrEqualToThreshold => "less than or equal to",
        }
    }
}

/// The three states of a CloudWatch alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmState {
    /// The metric is within the threshold.
    Ok,
    /// The metric is outside the threshold.
    Alarm,
    /// The alarm has just started or has too little data to decide.
    InsufficientData,
}

impl fmt::Display for AlarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "OK",
            Self::Alarm => "ALARM",
            Self::InsufficientData => "INSUFFICIENT_DATA",
        })
    }
}

/// What an alarm watches and when it fires: CloudWatch's `PutMetricAlarm` fields for a
/// static-threshold alarm on one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmSpec {
    /// The length of each period: 10, 20 or 30 s, or a multiple of 60 s.
    pub period: Duration,
    /// How each period's datapoints become its value.
    pub statistic: Statistic,
    /// N: how many of the most recent periods are evaluated.
    pub evaluation_periods: u32,
    /// M: how many of those N must breach for `ALARM` (CloudWatch's default is N).
    pub datapoints_to_alarm: u32,
    /// How a period's value is compared with the threshold.
    pub comparison_operator: ComparisonOperator,
    /// The value compared with.
    pub threshold: f64,
    /// What a period without datapoints counts as.
    pub treat_missing_data: TreatMissingData,
}

/// A rule of `PutMetricAlarm` that an [`AlarmSpec`] breaks (a configuration error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlarmSpecError {
    /// The period is not one CloudWatch accepts.
    #[error("period {0:?} is not 10, 20 or 30 seconds or a multiple of 60 seconds")]
    Period(Duration),
    /// N is zero.
    #[error("evaluation_periods must be at least 1")]
    NoEvaluationPeriods,
    /// M is zero or more than N.
    #[error(
        "datapoints_to_alarm {datapoints_to_alarm} must be from 1 to evaluation_periods ({evaluation_periods})"
    )]
    DatapointsToAlarm {
        /// The M given.
        datapoints_to_alarm: u32,
        /// The N given.
        evaluation_periods: u32,
    },
    /// period × N is longer than CloudWatch allows.
    #[error(
        "period x evaluation_periods is {total_seconds} s; at most {limit_seconds} s is allowed (one day for periods under an hour, seven days otherwise)"
    )]
    EvaluationTooLong {
        /// period × N in seconds.
        total_seconds: u64,
        /// The limit for this period.
        limit_seconds: u64,
    },
    /// The threshold is NaN or infinite.
    #[error("threshold must be a finite number")]
    Threshold,
}

/// period × N may reach seven days only for periods of at least an hour, one day otherwise
/// (`PutMetricAlarm`, `Period`).
const HOUR: u64 = 3_600;
const ONE_DAY: u64 = 86_400;
const SEVEN_DAYS: u64 = 604_800;

/// How many periods beyond N the evaluation range holds. CloudWatch says only that it reads
/// "a higher number of data points than specified by Evaluation Periods"; its worked tables
/// read 5 for N = 3, so two more.
const EXTRA_RANGE_PERIODS: u32 = 2;

impl AlarmSpec {
    /// Every rule this spec breaks, in field order (empty when it is valid), so a config
    /// check can report them all at once.
    pub fn errors(&self) -> Vec<AlarmSpecError> {
        let mut errors = Vec::new();
        let secs = self.period.as_secs();
        let whole = self.period.subsec_nanos() == 0;
        if !whole || !(matches!(secs, 10 | 20 | 30) || (secs > 0 && secs.is_multiple_of(60))) {
            errors.push(AlarmSpecError::Period(self.period));
        }
        if self.evaluation_periods == 0 {
            errors.push(AlarmSpecError::NoEvaluationPeriods);
        }
        if self.datapoints_to_alarm == 0 || self.datapoints_to_alarm > self.evaluation_periods {
            errors.push(AlarmSpecError::DatapointsToAlarm {
                datapoints_to_alarm: self.datapoints_to_alarm,
                evaluation_periods: self.evaluation_periods,
            });
        }
        let total_seconds = secs.saturating_mul(u64::from(self.evaluation_periods));
        let limit_seconds = if secs < HOUR { ONE_DAY } else { SEVEN_DAYS };
        if total_seconds > limit_seconds {
            errors.push(AlarmSpecError::EvaluationTooLong {
                total_seconds,
                limit_seconds,
            });
        }
        if !self.threshold.is_finite() {
            errors.push(AlarmSpecError::Threshold);
        }
        errors
    }
}

/// Why a datapoint was not kept (the metric's source sent something unusable or stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatapointError {
    /// The value is NaN or infinite.
    #[error("datapoint value is not a finite number")]
    NotFinite,
    /// The timestamp falls before the evaluation range of the newest datapoint seen.
    #[error("datapoint at {0} is older than the alarm's evaluation range")]
    TooOld(Timestamp),
}

/// The samples of one period, reduced to what every statistic needs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PeriodSamples {
    count: u64,
    sum: f64,
    minimum: f64,
    maximum: f64,
}

impl PeriodSamples {
    fn value(&self, statistic: Statistic) -> f64 {
        match statistic {
            // count >= 1: a period exists only once a sample went in.
            Statistic::Average => self.sum / self.count as f64,
            Statistic::Sum => self.sum,
            Statistic::Minimum => self.minimum,
            Statistic::Maximum => self.maximum,
            Statistic::SampleCount => self.count as f64,
        }
    }
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The state after this evaluation.
    pub state: AlarmState,
    /// Whether it differs from the state before.
    pub changed: bool,
    /// CloudWatch's `StateReason` for the current state.
    pub reason: String,
}

/// One metric alarm with the datapoints its next evaluation needs, and its current state.
#[derive(Debug, Clone)]
pub struct MetricAlarm {
    spec: AlarmSpec,
    /// Period index (start / period, from the Unix epoch, as CloudWatch aligns periods to the
    /// clock) -> that period's samples; at most the evaluation range plus the period in
    /// progress.
    periods: BTreeMap<i64, PeriodSamples>,
    state: AlarmState,
    reason: String,
}

/// How one evaluated datapoint counts.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Evaluated {
    /// The period's start and value; `None` for a missing datapoint filled in.
    real: Option<(i64, f64)>,
    breaching: bool,
}

impl MetricAlarm {
    /// A new alarm in `INSUFFICIENT_DATA`, as CloudWatch creates one; the first error of the
    /// spec when it is invalid.
    pub fn new(spec: AlarmSpec) -> Result<Self, AlarmSpecError> {
        if let Some(error) = spec.errors().into_iter().next() {
            return Err(error);
        }
        Ok(Self {
            spec,
            periods: BTreeMap::new(),
            state: AlarmState::InsufficientData,
            reason: "Unchecked: Initial alarm creation".to_owned(),
        })
    }

    /// The alarm's definition.
    pub fn spec(&self) -> &AlarmSpec {
        &self.spec
    }

    /// The current state.
    pub fn state(&self) -> AlarmState {
        self.state
    }

    /// The reason for the current state, in CloudWatch's words.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn period_seconds(&self) -> i64 {
        // Validated: 10 s to 7 days, so it fits.
        self.spec.period.as_secs() as i64
    }

    fn range_periods(&self) -> i64 {
        i64::from(self.spec.evaluation_periods + EXTRA_RANGE_PERIODS)
    }

    fn period_index(&self, at: Timestamp) -> i64 {
        at.as_second().div_euclid(self.period_seconds())
    }

    /// Adds one sample of the metric taken at `timestamp`.
    pub fn record(&mut self, timestamp: Timestamp, value: f64) -> Result<(), DatapointError> {
        if !value.is_finite() {
            return Err(DatapointError::NotFinite);
        }
        let index = self.period_index(timestamp);
        let newest = self.periods.keys().next_back().copied().unwrap_or(index);
        // Kept: the range before the newest period, and the newest (maybe still running).
        if index < newest - self.range_periods() {
            return Err(DatapointError::TooOld(timestamp));
        }
        self.periods
            .entry(index)
            .and_modify(|p| {
                p.count += 1;
                p.sum += value;
                p.minimum = p.minimum.min(value);
                p.maximum = p.maximum.max(value);
            })
            .or_insert(PeriodSamples {
                count: 1,
                sum: value,
                minimum: value,
                maximum: value,
            });
        let newest = newest.max(index);
        let oldest_kept = newest - self.range_periods();
        self.periods = self.periods.split_off(&oldest_kept);
        Ok(())
    }

    /// Evaluates the alarm over the periods that ended at or before `now`, moves it to the
    /// state CloudWatch would, and says whether the state changed.
    pub fn evaluate(&mut self, now: Timestamp) -> Evaluation {
        let n = self.spec.evaluation_periods as usize;
        let m = self.spec.datapoints_to_alarm as usize;
        // The newest period that has ended: the one before the period `now` falls in.
        let last = self.period_index(now) - 1;
        let first = last - self.range_periods() + 1;
        let op = self.spec.comparison_operator;
        let threshold = self.spec.threshold;
        // Real datapoints of the range, newest first.
        let real: Vec<Evaluated> = self
            .periods
            .range(first..=last)
            .rev()
            .map(|(&index, samples)| {
                let value = samples.value(self.spec.statistic);
                Evaluated {
                    real: Some((index, value)),
                    breaching: op.breaches(value, threshold),
                }
            })
            .collect();
        // The User Guide's three cases: with at least N real datapoints the newest N decide
        // and missing data does not matter; with fewer, every real one counts and missing
        // ones fill up to N, as few as possible, counted as `treat_missing_data` says.
        let missing = n.saturating_sub(real.len());
        let mut evaluated: Vec<Evaluated> = real.into_iter().take(n).collect();
        let decided = if missing == 0 {
            Some(self.decide(&evaluated, n, m))
        } else {
            match self.spec.treat_missing_data {
                TreatMissingData::Breaching | TreatMissingData::NotBreaching => {
                    let breaching = self.spec.treat_missing_data == TreatMissingData::Breaching;
                    evaluated.extend((0..missing).map(|_| Evaluated {
                        real: None,
                        breaching,
                    }));
                    Some(self.decide(&evaluated, n, m))
                }
                // `missing` and `ignore` count only real datapoints: M breaching ones still
                // alarm, and one within the threshold is OK (the guide's tables: "0 - - - -"
                // and "- - - - 0" are OK); breaching ones short of M, or none at all, cannot
                // decide: `INSUFFICIENT_DATA` for `missing`, the state kept for `ignore`
                // ("- - - - X"). One version of the guide adds a row "X - - - -" going to
                // ALARM under `missing` while "- - - - X" does not; no rule is given for it,
                // so both are treated alike here.
                TreatMissingData::Missing | TreatMissingData::Ignore => {
                    let breaching = evaluated.iter().filter(|e| e.breaching).count();
                    let within = evaluated.len() - breaching;
                    if breaching >= m || within >= 1 {
                        Some(self.decide(&evaluated, n, m))
                    } else if self.spec.treat_missing_data == TreatMissingData::Missing {
                        Some((
                            AlarmState::InsufficientData,
                            format!(
                                "Insufficient Data: {missing} datapoint{} {} unknown.",
                                plural(missing),
                                was_were(missing)
                            ),
                        ))
                    } else {
                        None
                    }
                }
            }
        };
        let before = self.state;
        // CloudWatch's `StateReason` is written at a transition and kept while the state is.
        if let Some((state, reason)) = decided
            && state != before
        {
            self.state = state;
            self.reason = reason;
        }
        // Periods before this range are never evaluated again.
        self.periods = self.periods.split_off(&first);
        Evaluation {
            state: self.state,
            changed: self.state != before,
            reason: self.reason.clone(),
        }
    }

    /// The values of the periods that ended before the period `now` falls in and are still
    /// held (at most the evaluation range), oldest first, each with its period's start: the
    /// "last value" a describe shows, and the metric a step scaling policy reads its breach
    /// from.
    pub fn datapoints(&self, now: Timestamp) -> Vec<(Timestamp, f64)> {
        let last = self.period_index(now) - 1;
        self.periods
            .range(..=last)
            .filter_map(|(&index, samples)| {
                let start = Timestamp::from_second(index.saturating_mul(self.period_seconds()));
                start.ok().map(|t| (t, samples.value(self.spec.statistic)))
            })
            .collect()
    }

    /// `ALARM` when at least M of the evaluated datapoints breach, `OK` otherwise, with
    /// CloudWatch's reason listing the datapoints that decided it, newest first.
    fn decide(&self, evaluated: &[Evaluated], n: usize, m: usize) -> (AlarmState, String) {
        let breaching = evaluated.iter().filter(|e| e.breaching).count();
        let alarm = breaching >= m;
        let (state, count, not, minimum) = if alarm {
            (AlarmState::Alarm, breaching, "", m)
        } else {
            // OK needs enough datapoints within the threshold that M breaching ones are out
            // of reach: N - M + 1.
            (
                AlarmState::Ok,
                evaluated.len() - breaching,
                "not ",
                n - m + 1,
            )
        };
        let listed: Vec<String> = evaluated
            .iter()
            .filter(|e| e.breaching == alarm)
            .filter_map(|e| e.real)
            .map(|(index, value)| self.datapoint_label(index, value))
            .collect();
        let from = self.state;
        let reason = format!(
            "Threshold Crossed: {count} out of the last {n} datapoints [{}] {} {not}{} the threshold ({:?}) (minimum {minimum} datapoint{} for {from} -> {state} transition).",
            listed.join(", "),
            was_were(count),
            self.spec.comparison_operator.phrase(),
            self.spec.threshold,
            plural(minimum),
        );
        (state, reason)
    }

    /// `72.0 (01/12/26 10:05:00)`: the value as CloudWatch prints a double, and the period's
    /// start in UTC as `dd/MM/yy HH:mm:ss`.
    fn datapoint_label(&self, index: i64, value: f64) -> String {
        let start = index.saturating_mul(self.period_seconds());
        let when = Timestamp::from_second(start)
            .map(|t| t.strftime("%d/%m/%y %H:%M:%S").to_string())
            .unwrap_or_else(|_| start.to_string());
        format!("{value:?} ({when})")
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn was_were(count: usize) -> &'static str {
    if count == 1 { "was" } else { "were" }
}
