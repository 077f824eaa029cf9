//! The flow hash that picks a Maglev slot for a new flow.
//!
//! The XDP program and the agent's tests call these same functions, so a test can predict
//! which backend a crafted packet will reach. MurmurHash3's 32-bit block mix and finaliser:
//! cheap in BPF (multiplies, rotates, xors; no tables, no loops over packet data).
//!
//! Both take a seed (`Settings::hash_seed`): without one, anyone could compute which target
//! and which SNAT port a 5-tuple gets, and aim a flood of flows at one target.

use crate::{Addr, FlowKey};

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Mixes the address's words as loaded natively: the hash is defined on little-endian hosts
/// (x86-64, arm64) and the bpfel target, the only ones we build for.
#[inline(always)]
fn mix_addr(mut h: u32, a: &Addr) -> u32 {
    let w = a.words();
    h = mix(h, w[0]);
    h = mix(h, w[1]);
    h = mix(h, w[2]);
    mix(h, w[3])
}

/// Hash of a client→VIP flow's 5-tuple (and family), under `seed`.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = mix_addr(seed, &key.src);
    h = mix_addr(h, &key.dst);
    h = mix(h, (u32::from(key.sport) << 16) | u32::from(key.dport));
    h = mix(h, u32::from(key.proto) | (u32::from(key.family) << 8));
    finish(h, 40)
}

/// Hash of a client address alone, under `seed`: stickiness `source_ip`.
#[inline(always)]
pub fn source_hash(addr: &Addr, family: u8, seed: u32) -> u32 {
    let h = mix_addr(seed, addr);
    finish(mix(h, u32::from(family)), 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, PROTO_TCP};

    const SEED: u32 = 0x9e37_79b9;

    fn v4(a: [u8; 4]) -> Addr {
        Addr::v4(a)
    }

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: v4([198, 18, 0, 10]),
            dst: v4([198, 18, 1, 100]),
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn flow_hash_depends_on_every_field_and_spreads_ports() {
        let base = flow_hash(&key(40000), SEED);
        assert_ne!(base, flow_hash(&key(40001), SEED));
        let mut other = key(40000);
        other.dport = 81u16.to_be();
        assert_ne!(base, flow_hash(&other, SEED));
        other = key(40000);
        other.proto = 17;
        assert_ne!(base, flow_hash(&other, SEED));
        // Consecutive source ports land evenly over 3 buckets.
        let mut buckets = [0u32; 3];
        for p in 0..3000u16 {
            buckets[(flow_hash(&key(30000 + p), SEED) % 3) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn source_hash_ignores_nothing_of_the_address() {
        assert_ne!(
            source_hash(&v4([198, 18, 0, 10]), FAMILY_V4, SEED),
            source_hash(&v4([198, 18, 0, 11]), FAMILY_V4, SEED)
        );
    }

    #[test]
    fn another_seed_sends_flows_elsewhere() {
        // Over 1000 flows, a different seed must move most of them to another of 3 buckets.
        let moved = (0..1000u16)
            .filter(|&p| flow_hash(&key(30000 + p), SEED) % 3 != flow_hash(&key(30000 + p), 7) % 3)
            .count();
        assert!((500..800).contains(&moved), "{moved} of 1000 moved");
        let a = v4([198, 18, 0, 10]);
        assert_ne!(
            source_hash(&a, FAMILY_V4, SEED),
            source_hash(&a, FAMILY_V4, SEED ^ 1)
        );
    }
}
