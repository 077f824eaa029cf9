//! What the engine measures on each instance, and the per-instance values of each
//! [`ScalingMetric`] the controller's alarms take as samples.
//!
//! Semantics of each metric (the value one instance contributes at one `record`):
//! - `cpu_utilization`: the instance's CPU use in percent of its type's CPU, as measured (a
//!   gauge, like EC2's `CPUUtilization`); an instance without a reading yet contributes nothing.
//! - `active_flows_per_target`: its established flows (a gauge).
//! - `new_flows_per_target`, `bytes_per_target`, `requests_per_target`: the growth of its
//!   cumulative counter since its previous sample divided by the seconds between the two: a
//!   per-second rate, as the config documents these metrics. An instance's first sample only
//!   sets its baseline. A counter lower than before has restarted (a replaced instance, a
//!   restarted proxy): it is read as counted from zero, Prometheus's rule for counter resets
//!   (`rate()`), so a reset never gives a negative rate. A rate covers the interval since the
//!   previous sample and counts in the period that interval ends in.
//!
//! An alarm takes each counted instance's value as one sample of its period, so the period's
//! `Average` is the metric per target: for requests, the sum of every instance's requests in
//! the period divided by the instances and by the period's seconds when the engine samples
//! evenly, which is ALB's `RequestCountPerTarget` (a per-period Sum over the targets) read
//! per second, so a target value does not depend on the period. `Maximum` is the busiest
//! instance's value, `Minimum` the idlest's, `SampleCount` the instance-samples taken.

use std::{collections::HashMap, time::Duration};

use crate::config::ScalingMetric;

/// One instance's reading, taken by the engine at the time given to `record`.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSample {
    /// The instance's id.
    pub instance: String,
    /// When it entered InService; `None` while it is not in service (pending, draining,
    /// terminating). Its values count once its warmup (see the controller) has passed.
    pub in_service_since: Option<Duration>,
    /// CPU utilisation in percent of its instance type's CPU (the cgroup's), if measured.
    pub cpu_utilization: Option<f64>,
    /// Requests the L7 proxy sent it, cumulative.
    pub requests: u64,
    /// Flows the XDP program sent it, cumulative.
    pub new_flows: u64,
    /// Bytes to and from it, both ways, cumulative.
    pub bytes: u64,
    /// Flows established to it now.
    pub active_flows: u64,
}

/// One instance's value of every metric at one `record`.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceReading {
    /// The instance's id.
    pub instance: String,
    /// As in its sample.
    pub in_service_since: Option<Duration>,
    /// CPU utilisation in percent.
    pub cpu_utilization: Option<f64>,
    /// Established flows.
    pub active_flows: f64,
    /// New flows per second since its previous sample (`None`: its first sample).
    pub new_flows_per_second: Option<f64>,
    /// Bytes per second since its previous sample.
    pub bytes_per_second: Option<f64>,
    /// Requests per second since its previous sample.
    pub requests_per_second: Option<f64>,
}

impl InstanceReading {
    /// Its value of `metric`, when it has one.
    pub fn value(&self, metric: ScalingMetric) -> Option<f64> {
        let value = match metric {
            ScalingMetric::CpuUtilization => self.cpu_utilization,
            ScalingMetric::ActiveFlowsPerTarget => Some(self.active_flows),
            ScalingMetric::NewFlowsPerTarget => self.new_flows_per_second,
            ScalingMetric::BytesPerTarget => self.bytes_per_second,
            ScalingMetric::RequestsPerTarget => self.requests_per_second,
        };
        value.filter(|v| v.is_finite())
    }

    /// Whether it counts toward a metric aggregated with `warmup`: in service, and the warmup
    /// since it entered service has passed (AWS: "how long after an instance reaches the
    /// InService state it waits before contributing usage data to the aggregated metrics").
    pub fn counts(&self, warmup: Duration, now: Duration) -> bool {
        self.in_service_since
            .is_some_and(|since| crate::scaling::policy::is_warmed_up(since, warmup, now))
    }
}

/// How much a cumulative counter grew from `previous` to `current`; a counter lower than
/// before restarted from zero, so all of `current` is growth (Prometheus's reading of a
/// counter reset), never a negative amount.
pub fn counter_increase(previous: u64, current: u64) -> u64 {
    current.checked_sub(previous).unwrap_or(current)
}

/// An instance's counters at its previous sample.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Baseline {
    at: Duration,
    requests: u64,
    new_flows: u64,
    bytes: u64,
}

/// Each instance's previous counters, to turn cumulative counters into rates.
#[derive(Debug, Clone, Default)]
pub struct CounterBaselines {
    previous: HashMap<String, Baseline>,
}

impl CounterBaselines {
    /// The readings of `samples` taken at `now`; the samples become the baselines of the next
    /// call, and instances not sampled any more are forgotten.
    pub fn read(&mut self, now: Duration, samples: &[InstanceSample]) -> Vec<InstanceReading> {
        let mut next = HashMap::with_capacity(samples.len());
        let readings = samples
            .iter()
            .map(|sample| {
                let before = self
                    .previous
                    .get(&sample.instance)
                    .filter(|b| now > b.at)
                    .copied();
                let rate = |previous: fn(&Baseline) -> u64, current: u64| {
                    before.map(|b| {
                        let seconds = (now - b.at).as_secs_f64();
                        counter_increase(previous(&b), current) as f64 / seconds
                    })
                };
                let reading = InstanceReading {
                    instance: sample.instance.clone(),
                    in_service_since: sample.in_service_since,
                    cpu_utilization: sample.cpu_utilization,
                    active_flows: sample.active_flows as f64,
                    new_flows_per_second: rate(|b| b.new_flows, sample.new_flows),
                    bytes_per_second: rate(|b| b.bytes, sample.bytes),
                    requests_per_second: rate(|b| b.requests, sample.requests),
                };
                // A sample at the same instant as the baseline (or earlier) keeps the baseline,
                // so a repeated record does not divide by zero.
                let baseline = match self.previous.get(&sample.instance) {
                    Some(b) if now <= b.at => *b,
                    _ => Baseline {
                        at: now,
                        requests: sample.requests,
                        new_flows: sample.new_flows,
                        bytes: sample.bytes,
                    },
                };
                next.insert(sample.instance.clone(), baseline);
                reading
            })
            .collect();
        self.previous = next;
        readings
    }
}
