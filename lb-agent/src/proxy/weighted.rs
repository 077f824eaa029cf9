//! Choosing among a forward action's target groups by weight (canary splits like 90/10).
//!
//! The choice is a pure function of the weights and one uniform random `u32` the caller draws,
//! so tests replay it exactly and the request path holds no generator state here. The draw is
//! scaled onto the total weight by multiply-and-shift rather than `%`: every group gets its
//! share to within 2^-32, with no modulo bias toward the first groups.

use crate::config::{Forward, WeightedGroup};

/// A forward action's groups with their weights, ready to choose from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedGroups {
    /// Group names in config order.
    names: Box<[String]>,
    /// `ends[i]`: the sum of the weights of groups `0..=i`; group `i` owns `[ends[i-1], ends[i])`.
    ends: Box<[u64]>,
    /// Group-level stickiness: a client stays with the group chosen for it this long.
    stickiness: Option<std::time::Duration>,
}

impl WeightedGroups {
    /// All requests to one group.
    pub fn single(name: &str) -> Self {
        Self::new([(name, 1)])
    }

    /// From `(name, weight)` pairs in order.
    pub fn new<'a>(groups: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut names = Vec::new();
        let mut ends = Vec::new();
        let mut total = 0u64;
        for (name, weight) in groups {
            total += u64::from(weight);
            names.push(name.to_owned());
            ends.push(total);
        }
        Self {
            names: names.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
            stickiness: None,
        }
    }

    /// The same groups, a client kept on the one chosen for it for `duration`.
    pub fn with_stickiness(mut self, duration: Option<std::time::Duration>) -> Self {
        self.stickiness = duration;
        self
    }

    /// How long a client stays with the group chosen for it; none: each request chooses.
    pub fn stickiness(&self) -> Option<std::time::Duration> {
        self.stickiness
    }

    /// How many groups.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The group names in config order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// From the config's `forward`.
    pub fn from_forward(forward: &Forward) -> Self {
        match forward {
            Forward::Group(name) => Self::single(name),
            Forward::Weighted(list) => Self::new(list.iter().map(
                |WeightedGroup {
                     target_group,
                     weight,
                 }| (target_group.as_str(), *weight),
            )),
        }
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// `(name, weight)` in config order.
    pub fn groups(&self) -> impl Iterator<Item = (&str, u32)> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.names
            .iter()
            .zip(self.ends.iter().zip(starts))
            .map(|(n, (end, start))| {
                // A difference of two running sums of u32 weights: fits back in u32.
                (n.as_str(), u32::try_from(end - start).unwrap_or(u32::MAX))
            })
    }

    /// The index of the group `draw` (uniform over all of `u32`) lands in; `None` when every
    /// weight is 0 (nothing to forward to: the caller answers as for no target in service).
    /// A group of weight 0 is never chosen.
    pub fn choose_index(&self, draw: u32) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // In [0, total): draw / 2^32 of the way along the weights.
        let point = (u64::from(draw) * total) >> 32;
        // The first group whose range ends past the point; a weight-0 group ends where the
        // one before it does, so it is never the first.
        Some(self.ends.partition_point(|&end| end <= point))
    }

    /// The name of the group `draw` lands in (see `choose_index`).
    pub fn choose(&self, draw: u32) -> Option<&str> {
        self.choose_index(draw).map(|i| self.names[i].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::WeightedGroups;
    use crate::config::{Forward, WeightedGroup};

    /// splitmix64: a fixed, seeded stream of uniform draws for the statistical tests.
    fn draws(seed: u64, count: usize) -> impl Iterator<Item = u32> {
        let mut state = seed;
        (0..count).map(move |_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 32) as u32
        })
    }

    fn counts(groups: &WeightedGroups, draws: impl Iterator<Item = u32>) -> Vec<u64> {
        let mut counts = vec![0u64; groups.groups().count()];
        for d in draws {
            counts[groups.choose_index(d).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn ninety_ten_split_stays_within_bounds_over_many_draws() {
        let groups = WeightedGroups::new([("stable", 90), ("canary", 10)]);
        let n = 100_000;
        let c = counts(&groups, draws(0x5eed, n));
        // Binomial sd at p = 0.1 and n = 1e5 is ~95; 1000 is over ten of them.
        assert!(
            (9_000..=11_000).contains(&c[1]),
            "canary got {} of {n}: {c:?}",
            c[1]
        );
        assert_eq!(c[0] + c[1], n as u64);
    }

    #[test]
    fn evenly_spaced_draws_split_exactly_by_weight() {
        let groups = WeightedGroups::new([("a", 3), ("b", 1), ("c", 6)]);
        // 1000 evenly spaced draws (step rounded up, so draw i sits at or just past i/1000 of
        // the way): each group gets exactly its share.
        let step = (1u64 << 32).div_ceil(1000);
        let c = counts(&groups, (0..1000u64).map(|i| (i * step) as u32));
        assert_eq!(c, vec![300, 100, 600]);
    }

    #[test]
    fn weight_zero_is_never_chosen() {
        let rows: &[(&str, &[(&str, u32)])] = &[
            ("zero first", &[("z", 0), ("a", 1)]),
            ("zero middle", &[("a", 1), ("z", 0), ("b", 1)]),
            ("zero last", &[("a", 5), ("z", 0)]),
            ("several zeros", &[("z", 0), ("z", 0), ("a", 999), ("z", 0)]),
        ];
        for (name, weights) in rows {
            let groups = WeightedGroups::new(weights.iter().copied());
            let edges = [0, 1, u32::MAX / 2, u32::MAX - 1, u32::MAX];
            for d in draws(7, 20_000).chain(edges) {
                assert_ne!(groups.choose(d), Some("z"), "{name}: draw {d}");
            }
        }
    }

    #[test]
    fn all_weights_zero_or_no_groups_choose_nothing() {
        assert_eq!(
            WeightedGroups::new([("a", 0), ("b", 0)]).choose(12345),
            None
        );
        assert_eq!(WeightedGroups::new([]).choose(0), None);
    }

    #[test]
    fn extreme_draws_land_in_the_first_and_last_groups() {
        let groups = WeightedGroups::new([("a", 1), ("b", 998), ("c", 1)]);
        assert_eq!(groups.choose(0), Some("a"));
        assert_eq!(groups.choose(u32::MAX), Some("c"));
    }

    #[test]
    fn forward_to_one_group_always_chooses_it() {
        let groups = WeightedGroups::from_forward(&Forward::Group("web".into()));
        assert!(draws(1, 1000).all(|d| groups.choose(d) == Some("web")));
    }

    #[test]
    fn weighted_forward_keeps_names_and_weights_in_order() {
        let forward = Forward::Weighted(vec![
            WeightedGroup {
                target_group: "blue".into(),
                weight: 90,
            },
            WeightedGroup {
                target_group: "green".into(),
                weight: 0,
            },
            WeightedGroup {
                target_group: "canary".into(),
                weight: 10,
            },
        ]);
        let groups = WeightedGroups::from_forward(&forward);
        assert_eq!(
            groups.groups().collect::<Vec<_>>(),
            vec![("blue", 90), ("green", 0), ("canary", 10)]
        );
        assert_eq!(groups.total(), 100);
    }
}
