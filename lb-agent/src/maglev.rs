//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4), with weights.
//!
//! Each target walks its own permutation of the table's slots, taking the first free one on
//! each of its turns, until the table is full. A target's permutation depends only on its key,
//! so every node that builds a table from the same targets builds the same table, and removing
//! one target moves little more than that target's own slots.
//!
//! Weights: in every round each target earns credit equal to its weight and takes one turn per
//! `max_weight` of credit, so slots are shared in proportion to weight; with equal weights this
//! is the paper's algorithm exactly.

/// One target as Maglev sees it.
#[derive(Debug, Clone, Copy)]
pub struct MaglevTarget<'a> {
    /// A stable identity: the same bytes on every node (e.g. `"198.18.0.21:8080"`).
    pub key: &'a [u8],
    /// Share of the table relative to the others; 0 gets no slot.
    pub weight: u32,
}

/// A built lookup table: each slot holds an index into the targets it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevTable {
    slots: Vec<u32>,
}

/// Why a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The size must be prime for every skip to visit every slot.
    #[error("Maglev table size {0} is not prime")]
    NotPrime(u32),
    /// Every target needs room for at least one slot.
    #[error("Maglev table size {size} is too small for {targets} targets")]
    TooSmall { size: u32, targets: usize },
    /// Nothing to put in the table.
    #[error("no target has a weight above 0")]
    NoTargets,
}

/// Whether `n` is prime (trial division; sizes are at most a few million).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// 64-bit FNV-1a with a seed, then MurmurHash3's finaliser: fixed and documented, so tables
/// are identical across nodes and releases (std's hashers promise neither).
fn key_hash(key: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

const OFFSET_SEED: u64 = 0x6c62_272e_07bb_0142;
const SKIP_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

const EMPTY: u32 = u32::MAX;

impl MaglevTable {
    /// Builds a table of `size` slots (prime) for `targets`.
    pub fn build(targets: &[MaglevTarget<'_>], size: u32) -> Result<MaglevTable, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        let live: Vec<usize> = (0..targets.len())
            .filter(|&i| targets[i].weight > 0)
            .collect();
        if live.is_empty() {
            return Err(MaglevError::NoTargets);
        }
        if live.len() >= size as usize {
            return Err(MaglevError::TooSmall {
                size,
                targets: live.len(),
            });
        }
        let m = u64::from(size);
        let max_weight = live
            .iter()
            .map(|&i| u64::from(targets[i].weight))
            .max()
            .unwrap_or(1);
        // Per live target: current position in its permutation, its skip, its credit.
        let mut position: Vec<u32> = Vec::with_capacity(live.len());
        let mut skip: Vec<u32> = Vec::with_capacity(live.len());
        for &i in &live {
            position.push((key_hash(targets[i].key, OFFSET_SEED) % m) as u32);
            skip.push((key_hash(targets[i].key, SKIP_SEED) % (m - 1) + 1) as u32);
        }
        let mut credit = vec![0u64; live.len()];
        let mut slots = vec![EMPTY; size as usize];
        let mut filled = 0u32;
        'fill: loop {
            for (n, &i) in live.iter().enumerate() {
                credit[n] += u64::from(targets[i].weight);
                if credit[n] < max_weight {
                    continue;
                }
                credit[n] -= max_weight;
                // Walk this target's permutation to its next free slot. Terminates: the
                // table is not full and a prime size makes every permutation visit every slot.
                loop {
                    let c = position[n];
                    // (c + skip) mod size without forming c + skip, which overflows u32 for
                    // sizes above 2^31; no division, so the loop stays cheap.
                    let back = size - skip[n];
                    position[n] = if c >= back { c - back } else { c + skip[n] };
                    let slot = &mut slots[c as usize];
                    if *slot == EMPTY {
                        *slot = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'fill;
                }
            }
        }
        Ok(MaglevTable { slots })
    }

    /// Slot → index into the targets the table was built from.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The target index a flow hash maps to.
    pub fn lookup(&self, hash: u32) -> u32 {
        self.slots[(hash % self.size()) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 65537;

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("198.18.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn targets<'a>(keys: &'a [String], weight: impl Fn(usize) -> u32) -> Vec<MaglevTarget<'a>> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| MaglevTarget {
                key: k.as_bytes(),
                weight: weight(i),
            })
            .collect()
    }

    fn counts(table: &MaglevTable, n: usize) -> Vec<u32> {
        let mut c = vec![0u32; n];
        for &s in table.slots() {
            c[s as usize] += 1;
        }
        c
    }

    #[test]
    fn equal_targets_get_equal_shares_within_one_percent() {
        let keys = keys(100);
        let table = MaglevTable::build(&targets(&keys, |_| 1), M).expect("build");
        let share = f64::from(M) / 100.0;
        for (i, c) in counts(&table, 100).iter().enumerate() {
            assert!(
                (f64::from(*c) - share).abs() <= share * 0.01,
                "target {i}: {c} slots, share {share}"
            );
        }
    }

    /// Slots whose target (by key) differs after removing target `victim` of `n`.
    fn moved_after_removal(n: usize, victim: usize) -> usize {
        let keys = keys(n);
        let before = MaglevTable::build(&targets(&keys, |_| 1), M).expect("build");
        let rest: Vec<String> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, k)| k.clone())
            .collect();
        let after = MaglevTable::build(&targets(&rest, |_| 1), M).expect("build");
        before
            .slots()
            .iter()
            .zip(after.slots())
            .filter(|(b, a)| keys[**b as usize] != rest[**a as usize])
            .count()
    }

    #[test]
    fn removing_one_of_n_moves_at_most_its_share_plus_one_percent() {
        for (n, victim) in [(10, 3), (100, 42), (3, 0)] {
            let moved = moved_after_removal(n, victim);
            let bound = f64::from(M) / n as f64 + f64::from(M) * 0.01;
            assert!(
                moved as f64 <= bound,
                "n={n}: {moved} slots moved, bound {bound:.0}"
            );
            assert!(
                moved as f64 >= f64::from(M) / n as f64 * 0.99,
                "n={n}: the victim's own slots must move"
            );
        }
    }

    #[test]
    fn weights_one_to_two_split_one_to_two() {
        let two = keys(2);
        let table = MaglevTable::build(&targets(&two, |i| (i + 1) as u32), M).expect("build");
        let c = counts(&table, 2);
        let heavy = f64::from(c[1]) / f64::from(M);
        assert!(
            (heavy - 2.0 / 3.0).abs() <= 0.02,
            "weight 2 share {heavy:.4} ({c:?})"
        );

        let ten = keys(10);
        let table = MaglevTable::build(&targets(&ten, |i| if i % 2 == 0 { 1 } else { 2 }), M)
            .expect("build");
        let c = counts(&table, 10);
        let heavy: u32 = c.iter().skip(1).step_by(2).sum();
        let share = f64::from(heavy) / f64::from(M);
        assert!(
            (share - 2.0 / 3.0).abs() <= 0.02,
            "weight-2 group share {share:.4} ({c:?})"
        );
    }

    #[test]
    fn zero_weight_targets_get_no_slot() {
        let keys = keys(3);
        let table = MaglevTable::build(&targets(&keys, |i| u32::from(i != 1)), 251).expect("build");
        assert_eq!(counts(&table, 3)[1], 0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let keys = keys(3);
        let t = targets(&keys, |_| 1);
        assert_eq!(
            MaglevTable::build(&t, 65536),
            Err(MaglevError::NotPrime(65536))
        );
        assert_eq!(
            MaglevTable::build(&t, 3),
            Err(MaglevError::TooSmall {
                size: 3,
                targets: 3
            })
        );
        assert_eq!(
            MaglevTable::build(&targets(&keys, |_| 0), 251),
            Err(MaglevError::NoTargets)
        );
        assert_eq!(MaglevTable::build(&[], 251), Err(MaglevError::NoTargets));
    }

    #[test]
    fn the_same_targets_always_build_the_same_table() {
        let keys = keys(7);
        let a = MaglevTable::build(&targets(&keys, |_| 1), 251).expect("build");
        let b = MaglevTable::build(&targets(&keys, |_| 1), 251).expect("build");
        assert_eq!(a, b);
        assert_eq!(a.lookup(252), a.slots()[1]);
    }

    #[test]
    fn primes() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537) && is_prime(1_000_003) && !is_prime(65535));
    }
}
