//! Which instances a scale-in terminates: the group's termination policies applied in order,
//! each narrowing the candidates, instances protected from scale-in never chosen.
//!
//! AWS: User Guide "Controlling which Auto Scaling instances terminate during scale in":
//! - The policies (`Default`, `OldestInstance`, `NewestInstance`, `OldestLaunchTemplate`,
//!   `OldestLaunchConfiguration`, `ClosestToNextInstanceHour`, `AllocationStrategy`), applied
//!   in the order listed ("If you choose multiple policies, list them in the order in which
//!   they should apply"); a group without any uses `Default`.
//! - `Default`: first the Availability Zone with the most instances, then the allocation
//!   strategy, then the oldest launch template or configuration (instances from a launch
//!   configuration before those from a launch template), then the closest to the next billing
//!   hour, then at random. On one machine there is one "Availability Zone", no Spot/On-Demand
//!   allocation strategy and no billing hour, so only the launch template step narrows;
//!   `ClosestToNextInstanceHour` and `AllocationStrategy` are refused by name rather than
//!   silently meaning nothing.
//! - `OldestLaunchTemplate`: instances of a launch template other than the group's current
//!   one first, then those of the oldest version of the current one.
//! - Section "Instance scale-in protection": protected instances are never chosen; "If all
//!   instances in an Auto Scaling group are protected from termination during scale in, and a
//!   scale-in event occurs, its desired capacity is decremented" but nothing is terminated.
//!
//! Where AWS picks at random among the instances left, we pick the lowest instance id: ids are
//! random, so this is as fair as a random pick, and a test (or a user) can predict it.

use std::time::Duration;

/// A termination policy, by AWS's name: the config's (it parses and refuses the names).
pub use crate::config::{TerminationError, TerminationPolicy};

/// What an instance was launched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchSource {
    /// A launch template's version.
    LaunchTemplate { name: String, version: u32 },
    /// A launch configuration (unversioned).
    LaunchConfiguration { name: String },
}

/// What the group launches from now: the template (its versions are compared) or the
/// launch configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurrentLaunch {
    /// The group uses this launch template.
    LaunchTemplate { name: String },
    /// The group uses this launch configuration.
    LaunchConfiguration { name: String },
}

/// An instance that could be terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its id.
    pub instance_id: String,
    /// When it was launched (the same epoch as every `now`).
    pub launched_at: Duration,
    /// What it was launched from.
    pub launched_from: LaunchSource,
    /// Protected from scale-in: never chosen.
    pub protected_from_scale_in: bool,
}

/// The outcome of a scale-in: the new desired capacity and the instances to terminate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleInPlan {
    /// The desired capacity after the scale-in (lowered even if nothing can be terminated).
    pub desired: u32,
    /// The instances chosen, in the order chosen; fewer than asked when the rest are
    /// protected.
    pub terminate: Vec<String>,
}

/// Plans a scale-in to `desired`: as many instances as the group has above it are chosen by
/// `policies` (none: `Default`) among the unprotected `instances`. `instances` are those that
/// count toward the group's capacity (Pending and InService ones, not those already
/// terminating).
pub fn plan_scale_in(
    desired: u32,
    instances: &[Candidate],
    policies: &[TerminationPolicy],
    current: &CurrentLaunch,
) -> ScaleInPlan {
    let count = instances.len().saturating_sub(desired as usize);
    ScaleInPlan {
        desired,
        terminate: choose(count, instances, policies, current),
    }
}

/// Chooses up to `count` unprotected instances to terminate, one at a time: the policies in
/// order narrow the candidates, the lowest id of those left is taken, and the next choice is
/// made among the rest.
pub fn choose(
    count: usize,
    instances: &[Candidate],
    policies: &[TerminationPolicy],
    current: &CurrentLaunch,
) -> Vec<String> {
    let policies = if policies.is_empty() {
        &[TerminationPolicy::Default][..]
    } else {
        policies
    };
    let mut left: Vec<&Candidate> = instances
        .iter()
        .filter(|i| !i.protected_from_scale_in)
        .collect();
    let mut chosen = Vec::new();
    while chosen.len() < count && !left.is_empty() {
        let mut candidates = left.clone();
        for policy in policies {
            if candidates.len() == 1 {
                break;
            }
            candidates = narrow(*policy, candidates, current);
        }
        let Some(pick) = candidates
            .iter()
            .min_by(|a, b| a.instance_id.cmp(&b.instance_id))
            .map(|c| c.instance_id.clone())
        else {
            break;
        };
        left.retain(|c| c.instance_id != pick);
        chosen.push(pick);
    }
    chosen
}

/// The candidates `policy` prefers to terminate (never empty when `candidates` is not).
fn narrow<'a>(
    policy: TerminationPolicy,
    candidates: Vec<&'a Candidate>,
    current: &CurrentLaunch,
) -> Vec<&'a Candidate> {
    match policy {
        TerminationPolicy::OldestInstance => keep_extreme(candidates, |c| c.launched_at, false),
        TerminationPolicy::NewestInstance => keep_extreme(candidates, |c| c.launched_at, true),
        TerminationPolicy::OldestLaunchTemplate => oldest_launch_template(candidates, current),
        TerminationPolicy::OldestLaunchConfiguration => {
            oldest_launch_configuration(candidates, current)
        }
        TerminationPolicy::Default => match current {
            // AWS: instances from a launch configuration go before those from a template.
            CurrentLaunch::LaunchTemplate { .. } => {
                let from_configuration = keep_if_any(candidates, |c| {
                    matches!(c.launched_from, LaunchSource::LaunchConfiguration { .. })
                });
                oldest_launch_template(from_configuration, current)
            }
            CurrentLaunch::LaunchConfiguration { .. } => {
                oldest_launch_configuration(candidates, current)
            }
        },
    }
}

/// Instances not of the group's current launch template first; then, all of it, those of
/// its oldest version.
fn oldest_launch_template<'a>(
    candidates: Vec<&'a Candidate>,
    current: &CurrentLaunch,
) -> Vec<&'a Candidate> {
    let current_name = match current {
        CurrentLaunch::LaunchTemplate { name } => Some(name.as_str()),
        CurrentLaunch::LaunchConfiguration { .. } => None,
    };
    let version_of_current = |c: &Candidate| match &c.launched_from {
        LaunchSource::LaunchTemplate { name, version } if Some(name.as_str()) == current_name => {
            Some(*version)
        }
        _ => None,
    };
    let not_current = keep_if_any(candidates, |c| version_of_current(c).is_none());
    if not_current.iter().any(|c| version_of_current(c).is_none()) {
        return not_current;
    }
    keep_extreme(not_current, |c| version_of_current(c).unwrap_or(0), false)
}

/// Instances not of the group's current launch configuration first.
fn oldest_launch_configuration<'a>(
    candidates: Vec<&'a Candidate>,
    current: &CurrentLaunch,
) -> Vec<&'a Candidate> {
    keep_if_any(candidates, |c| match (&c.launched_from, current) {
        (
            LaunchSource::LaunchConfiguration { name },
            CurrentLaunch::LaunchConfiguration { name: current },
        ) => name != current,
        _ => false,
    })
}

/// The candidates matching `prefer`, or all of them when none does.
fn keep_if_any(
    candidates: Vec<&Candidate>,
    prefer: impl Fn(&Candidate) -> bool,
) -> Vec<&Candidate> {
    if candidates.iter().any(|c| prefer(c)) {
        candidates.into_iter().filter(|c| prefer(c)).collect()
    } else {
        candidates
    }
}

/// The candidates with the smallest (or, `largest`, the largest) `key`.
fn keep_extreme<K: Ord + Copy>(
    candidates: Vec<&Candidate>,
    key: impl Fn(&Candidate) -> K,
    largest: bool,
) -> Vec<&Candidate> {
    let extreme = if largest {
        candidates.iter().map(|c| key(c)).max()
    } else {
        candidates.iter().map(|c| key(c)).min()
    };
    candidates
        .into_iter()
        .filter(|c| Some(key(c)) == extreme)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(version: u32) -> LaunchSource {
        LaunchSource::LaunchTemplate {
            name: "web".into(),
            version,
        }
    }

    fn instance(id: &str, launched_at: u64, launched_from: LaunchSource) -> Candidate {
        Candidate {
            instance_id: id.into(),
            launched_at: Duration::from_secs(launched_at),
            launched_from,
            protected_from_scale_in: false,
        }
    }

    fn web() -> CurrentLaunch {
        CurrentLaunch::LaunchTemplate { name: "web".into() }
    }

    /// Three instances: the oldest on version 2, a middle one on version 1, the newest on 2.
    fn group() -> Vec<Candidate> {
        vec![
            instance("i-c", 100, template(2)),
            instance("i-a", 200, template(1)),
            instance("i-b", 300, template(2)),
        ]
    }

    fn pick(policies: &[TerminationPolicy], instances: &[Candidate]) -> Vec<String> {
        choose(1, instances, policies, &web())
    }

    #[test]
    fn oldest_instance_terminates_the_first_launched() {
        assert_eq!(
            pick(&[TerminationPolicy::OldestInstance], &group()),
            ["i-c"]
        );
    }

    #[test]
    fn newest_instance_terminates_the_last_launched() {
        assert_eq!(
            pick(&[TerminationPolicy::NewestInstance], &group()),
            ["i-b"]
        );
    }

    #[test]
    fn oldest_launch_template_terminates_other_templates_then_the_oldest_version() {
        assert_eq!(
            pick(&[TerminationPolicy::OldestLaunchTemplate], &group()),
            ["i-a"]
        );
        // An instance of another template goes before any version of the current one.
        let mut instances = group();
        instances.push(instance(
            "i-z",
            400,
            LaunchSource::LaunchTemplate {
                name: "old-web".into(),
                version: 7,
            },
        ));
        assert_eq!(
            pick(&[TerminationPolicy::OldestLaunchTemplate], &instances),
            ["i-z"]
        );
    }

    #[test]
    fn default_terminates_launch_configuration_instances_first_then_oldest_template() {
        let mut instances = group();
        assert_eq!(pick(&[TerminationPolicy::Default], &instances), ["i-a"]);
        instances.push(instance(
            "i-y",
            500,
            LaunchSource::LaunchConfiguration {
                name: "legacy".into(),
            },
        ));
        assert_eq!(pick(&[TerminationPolicy::Default], &instances), ["i-y"]);
        // No policy given: Default.
        assert_eq!(pick(&[], &instances), ["i-y"]);
    }

    #[test]
    fn default_on_a_launch_configuration_group_terminates_other_configurations_first() {
        let lc = |name: &str| LaunchSource::LaunchConfiguration { name: name.into() };
        let instances = vec![
            instance("i-a", 100, lc("current")),
            instance("i-b", 200, lc("previous")),
        ];
        let current = CurrentLaunch::LaunchConfiguration {
            name: "current".into(),
        };
        assert_eq!(
            choose(1, &instances, &[TerminationPolicy::Default], &current),
            ["i-b"]
        );
        assert_eq!(
            choose(
                1,
                &instances,
                &[TerminationPolicy::OldestLaunchConfiguration],
                &current
            ),
            ["i-b"]
        );
    }

    #[test]
    fn policies_apply_in_order_each_narrowing_the_last() {
        use TerminationPolicy::{NewestInstance, OldestInstance, OldestLaunchTemplate};
        let instances = vec![
            instance("i-c", 100, template(2)),
            instance("i-b", 200, template(2)),
            instance("i-d", 300, template(3)),
        ];
        // The oldest version (2) keeps i-c and i-b; the second policy decides between them.
        assert_eq!(
            pick(&[OldestLaunchTemplate, NewestInstance], &instances),
            ["i-b"]
        );
        assert_eq!(
            pick(&[OldestLaunchTemplate, OldestInstance], &instances),
            ["i-c"]
        );
        // In the other order the newest instance is chosen before versions are looked at.
        assert_eq!(
            pick(&[NewestInstance, OldestLaunchTemplate], &instances),
            ["i-d"]
        );
    }

    #[test]
    fn a_tie_left_by_every_policy_goes_to_the_lowest_instance_id() {
        let instances = vec![
            instance("i-9", 100, template(1)),
            instance("i-2", 100, template(1)),
            instance("i-5", 100, template(1)),
        ];
        assert_eq!(
            pick(&[TerminationPolicy::OldestInstance], &instances),
            ["i-2"]
        );
    }

    #[test]
    fn several_are_chosen_one_after_the_other() {
        assert_eq!(
            choose(2, &group(), &[TerminationPolicy::OldestInstance], &web()),
            ["i-c", "i-a"]
        );
        assert_eq!(
            choose(9, &group(), &[TerminationPolicy::OldestInstance], &web()).len(),
            3
        );
    }

    #[test]
    fn protected_instances_are_never_chosen() {
        let mut instances = group();
        instances[0].protected_from_scale_in = true; // i-c, the oldest
        assert_eq!(
            pick(&[TerminationPolicy::OldestInstance], &instances),
            ["i-a"]
        );
    }

    #[test]
    fn all_protected_lowers_desired_and_terminates_nothing() {
        let mut instances = group();
        for i in &mut instances {
            i.protected_from_scale_in = true;
        }
        let plan = plan_scale_in(2, &instances, &[TerminationPolicy::Default], &web());
        assert_eq!(
            plan,
            ScaleInPlan {
                desired: 2,
                terminate: vec![]
            }
        );
        // Some protected: only the unprotected go, even if fewer than asked.
        instances[1].protected_from_scale_in = false; // i-a
        let plan = plan_scale_in(1, &instances, &[TerminationPolicy::OldestInstance], &web());
        assert_eq!(plan.desired, 1);
        assert_eq!(plan.terminate, ["i-a"]);
    }

    #[test]
    fn policy_names_are_aws_names_and_meaningless_ones_are_refused() {
        assert_eq!(
            "OldestLaunchTemplate".parse(),
            Ok(TerminationPolicy::OldestLaunchTemplate)
        );
        for policy in [
            TerminationPolicy::Default,
            TerminationPolicy::OldestInstance,
            TerminationPolicy::NewestInstance,
            TerminationPolicy::OldestLaunchTemplate,
            TerminationPolicy::OldestLaunchConfiguration,
        ] {
            assert_eq!(policy.to_string().parse(), Ok(policy));
        }
        assert!(matches!(
            "ClosestToNextInstanceHour".parse::<TerminationPolicy>(),
            Err(TerminationError::Unsupported { .. })
        ));
        assert!(matches!(
            "AllocationStrategy".parse::<TerminationPolicy>(),
            Err(TerminationError::Unsupported { .. })
        ));
        assert!(matches!(
            "oldestinstance".parse::<TerminationPolicy>(),
            Err(TerminationError::Unknown { .. })
        ));
    }
}
