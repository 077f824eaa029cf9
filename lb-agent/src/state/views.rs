//! What the state shows: views of groups, targets, listeners, counters and flows, read from
//! the state and the data plane's counters (`MapReader`), never from a writer's lock.

use std::{collections::BTreeMap, net::SocketAddr, time::Instant};

use lb_common::{Flow, FlowKey, PROTO_TCP, ReverseFlow, conntrack};

use super::{Result, State, WEIGHT_SCALE, encode::ip_of};
use crate::{
    config::{HealthCheck, duration_text},
    dataplane::MapReader,
    health::TargetState,
    protocol::{FlowView, GroupView, ListenerView, StatsView, TargetView},
};

/// A connection-table entry and whether its flow is live.
pub(super) type JudgedFlow = (FlowKey, Flow, bool);

impl State {
    /// Each group's targets that take new connections and requests now: those in its active
    /// table (in service, or all eligible ones while it fails open), with their weights
    /// (slow start's ramp included, at least 1). The L7 proxy balances over these.
    pub fn serving_targets(&self) -> BTreeMap<String, Vec<(SocketAddr, u32)>> {
        self.groups
            .iter()
            .map(|(name, g)| {
                let serving = g
                    .targets
                    .iter()
                    .filter_map(|t| {
                        let scaled = g.published_weight(t.backend_id);
                        (scaled > 0).then(|| (t.address, scaled.div_ceil(WEIGHT_SCALE).max(1)))
                    })
                    .collect();
                (name.clone(), serving)
            })
            .collect()
    }

    /// Each group's registered targets (draining ones too) and the state `targets list`
    /// shows for them, without the data plane's counters: what the auto scaling groups look
    /// at for their instances' health and draining.
    pub fn target_states(&self) -> BTreeMap<String, BTreeMap<SocketAddr, TargetState>> {
        self.groups
            .iter()
            .map(|(name, g)| {
                let states = g
                    .targets
                    .iter()
                    .map(|t| (t.address, g.shown_state(t).0))
                    .collect();
                (name.clone(), states)
            })
            .collect()
    }

    /// Every target group's settings and how many of its targets serve.
    pub fn groups(&self) -> Vec<GroupView> {
        self.groups
            .iter()
            .map(|(name, g)| GroupView {
                name: name.clone(),
                protocol: g.protocol.as_str().to_owned(),
                protocol_version: g.protocol_version.as_str().to_owned(),
                port: g.port,
                in_use: g.family.is_some(),
                // The check as it runs (a disabled one as configured).
                health_check: g
                    .health_check
                    .clone()
                    .map(|hc| hc.for_version(g.protocol_version))
                    .or_else(|| HealthCheck::default_for(g.protocol, g.protocol_version)),
                checked: g.check.is_some(),
                deregistration_delay: duration_text(g.deregistration_delay),
                slow_start: duration_text(g.slow_start),
                terminate_on_unhealthy: g.terminate_on_unhealthy,
                fail_open: g.fail_open,
                failing_open: g.failing_open,
                targets: g.targets.len(),
                in_service: g
                    .targets
                    .iter()
                    .filter(|t| g.published_weight(t.backend_id) > 0)
                    .count(),
                unhealthy: g
                    .targets
                    .iter()
                    .filter(|t| g.shown_state(t).0 == TargetState::Unhealthy)
                    .count(),
                table_version: g.table_version,
            })
            .collect()
    }

    /// Targets of one group, or of all.
    pub fn targets(
        &self,
        dp: &(impl MapReader + ?Sized),
        group: Option<&str>,
    ) -> Result<Vec<TargetView>> {
        self.targets_with(dp, group, &self.judged_flows(dp)?)
    }

    /// As `targets`, counting active flows in `flows` (the connection table, read once).
    fn targets_with(
        &self,
        dp: &(impl MapReader + ?Sized),
        group: Option<&str>,
        flows: &[JudgedFlow],
    ) -> Result<Vec<TargetView>> {
        if let Some(name) = group {
            self.group(name)?;
        }
        let mut active = std::collections::HashMap::<u32, u64>::new();
        for (_, flow, live) in flows {
            if !live {
                continue;
            }
            *active.entry(flow.backend_id).or_insert(0) += 1;
        }
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            if group.is_some_and(|want| want != name) {
                continue;
            }
            let total: u64 = g
                .published
                .iter()
                .flatten()
                .map(|&(_, w)| u64::from(w))
                .sum();
            for t in &g.targets {
                let (state, reason) = g.shown_state(t);
                let scaled = g.published_weight(t.backend_id);
                let description = match state {
                    TargetState::Draining => t.draining_until.map(|until| {
                        format!(
                            "draining: leaves in {:.1}s",
                            until
                                .saturating_duration_since(Instant::now())
                                .as_secs_f64()
                        )
                    }),
                    TargetState::Unused => {
                        Some("no listener forwards to this target group".to_owned())
                    }
                    TargetState::Unavailable => {
                        Some("health checks are disabled for this target group".to_owned())
                    }
                    _ if g.failing_open && total > 0 => {
                        Some("no target in service: failing open to all".to_owned())
                    }
                    _ => t.health.description.clone(),
                };
                out.push(TargetView {
                    group: name.clone(),
                    address: t.address,
                    weight: t.weight,
                    effective_weight: f64::from(scaled) / f64::from(WEIGHT_SCALE),
                    state,
                    reason: reason.map(str::to_owned),
                    description,
                    in_service: scaled > 0,
                    last_check_ms: t.health.last_latency.map(|l| l.as_secs_f64() * 1000.0),
                    checks: t.health.checks,
                    active_flows: active.get(&t.backend_id).copied().unwrap_or(0),
                    counters: dp.backend_counters(t.backend_id)?.into(),
                });
            }
        }
        Ok(out)
    }

    /// Counters of every listener and target, and the data plane's verdicts.
    pub fn stats(&self, dp: &(impl MapReader + ?Sized)) -> Result<StatsView> {
        let flows = self.judged_flows(dp)?;
        let mut per_listener = std::collections::HashMap::<u32, u64>::new();
        let mut active_flows = 0;
        for (_, flow, live) in &flows {
            if *live {
                *per_listener.entry(flow.listener_id).or_insert(0) += 1;
                active_flows += 1;
            }
        }
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                Ok(ListenerView {
                    name: l.name.clone(),
                    address: l.address,
                    protocol: l.protocol.as_str().to_owned(),
                    target_group: l.group.clone().unwrap_or_default(),
                    active_flows: per_listener.get(&l.id).copied().unwrap_or(0),
                    counters: dp.listener_counters(l.id)?.into(),
                    // From the config, not the state: `agent::read` fills them in.
                    settings: Default::default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let verdicts = dp
            .verdicts()?
            .iter()
            .zip(lb_common::verdict::NAMES)
            .map(|(count, name)| (name.to_owned(), *count))
            .collect();
        Ok(StatsView {
            listeners,
            targets: self.targets_with(dp, None, &flows)?,
            verdicts,
            flows: flows.len(),
            active_flows,
            flow_capacity: u64::from(dp.flow_capacity()),
            health_transitions: self.transitions.clone(),
        })
    }

    /// The connection table, of every listener.
    pub fn flows(&self, dp: &(impl MapReader + ?Sized)) -> Result<Vec<FlowView>> {
        let now = dp.clock_ns();
        let mut out = Vec::new();
        for (key, flow, live) in self.judged_flows(dp)? {
            let listener = self.listeners.iter().find(|l| l.id == flow.listener_id);
            let family = key.family;
            out.push(FlowView {
                protocol: if key.proto == PROTO_TCP { "tcp" } else { "udp" }.to_owned(),
                client: SocketAddr::new(ip_of(&key.src, family), u16::from_be(key.sport)),
                listener: SocketAddr::new(ip_of(&key.dst, family), u16::from_be(key.dport)),
                backend: SocketAddr::new(
                    ip_of(&flow.backend, family),
                    u16::from_be(flow.backend_port),
                ),
                snat: SocketAddr::new(ip_of(&flow.snat_addr, family), u16::from_be(flow.snat_port)),
                target_group: listener.and_then(|l| l.group.clone()),
                idle_seconds: now.saturating_sub(flow.last_seen) / 1_000_000_000,
                closing: flow.closing != 0,
                active: live,
            });
        }
        Ok(out)
    }

    /// Every connection-table entry, and whether it is a live flow by the data plane's own
    /// rule (`lb_common::conntrack::over`), which looks at both directions: a flow where only
    /// the target still sends (a UDP stream from the server) is live.
    pub(super) fn judged_flows(&self, dp: &(impl MapReader + ?Sized)) -> Result<Vec<JudgedFlow>> {
        let (now, flows) = flows_with_replies(dp)?;
        Ok(flows
            .into_iter()
            .map(|(key, flow, half)| {
                let over =
                    conntrack::over(&self.settings, key.proto, Some(&flow), half.as_ref(), now);
                (key, flow, !over)
            })
            .collect())
    }

    /// The backends with a flow still open, as draining sees it: live, and not closed by
    /// both sides. A flow both sides have closed carries nothing more; the closed timeout
    /// only keeps its entry for stray retransmissions (AWS ends a deregistration once a
    /// target has "no in-flight requests and no active connections").
    pub(super) fn backends_with_open_flows(
        &self,
        dp: &(impl MapReader + ?Sized),
    ) -> Result<std::collections::HashSet<u32>> {
        let (now, flows) = flows_with_replies(dp)?;
        Ok(flows
            .into_iter()
            .filter_map(|(key, flow, half)| {
                let over =
                    conntrack::over(&self.settings, key.proto, Some(&flow), half.as_ref(), now);
                let closed_both = flow.closing != 0 && half.is_some_and(|r| r.closing != 0);
                (!over && !closed_both).then_some(flow.backend_id)
            })
            .collect())
    }

    /// A group's id in the data plane (for tests).
    pub fn group_id(&self, name: &str) -> Option<u32> {
        self.groups.get(name).map(|g| g.id)
    }

    /// The backend id of a target's registration in a group (for tests).
    pub fn backend_id(&self, group: &str, address: SocketAddr) -> Option<u32> {
        self.groups
            .get(group)?
            .targets
            .iter()
            .find(|t| t.address == address)
            .map(|t| t.backend_id)
    }
}

/// A connection-table entry with its reply half, if it has one that belongs to it.
type FlowWithReply = (FlowKey, Flow, Option<ReverseFlow>);

/// The data plane's clock, and every connection-table entry with its reply half.
fn flows_with_replies(dp: &(impl MapReader + ?Sized)) -> Result<(u64, Vec<FlowWithReply>)> {
    let now = dp.clock_ns();
    let reverse: std::collections::HashMap<FlowKey, ReverseFlow> =
        dp.reverse_flows()?.into_iter().collect();
    let flows = dp
        .flows()?
        .into_iter()
        .map(|(key, flow)| {
            let half = reverse
                .get(&conntrack::reverse_key(&key, &flow))
                .filter(|r| conntrack::belongs(r, &key))
                .copied();
            (key, flow, half)
        })
        .collect();
    Ok((now, flows))
}
