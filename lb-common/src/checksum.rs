//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! Words are read from the packet in native byte order and the checksum field is read the same
//! way; the one's-complement sum is byte-order independent (RFC 1071 §2B), so no swapping.

use crate::Addr;

/// The sum of the changes made to a packet's checksummed words.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub fn new() -> Self {
        Self(0)
    }

    /// One 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 = fold_once(self.0 + u32::from(!old) + u32::from(new));
    }

    /// An address changed; `len` is 4 (IPv4) or 16 (IPv6) bytes.
    #[inline(always)]
    pub fn addr(&mut self, old: &Addr, new: &Addr, len: usize) {
        let (old, new) = (old.halves(), new.halves());
        self.word(old[0], new[0]);
        self.word(old[1], new[1]);
        if len > 4 {
            let mut i = 2;
            while i < 8 {
                self.word(old[i], new[i]);
                i += 1;
            }
        }
    }

    /// The checksum field's new value, given its old value.
    #[inline(always)]
    pub fn apply(self, old_csum: u16) -> u16 {
        let sum = fold_once(fold_once(u32::from(!old_csum) + self.0));
        !(sum as u16)
    }

    /// As `apply`, for a UDP checksum: 0 stays 0 (IPv4 "no checksum"), and a computed 0 is
    /// sent as 0xffff (RFC 768).
    #[inline(always)]
    pub fn apply_udp(self, old_csum: u16) -> u16 {
        if old_csum == 0 {
            return 0;
        }
        match self.apply(old_csum) {
            0 => 0xffff,
            c => c,
        }
    }
}

#[inline(always)]
fn fold_once(x: u32) -> u32 {
    (x & 0xffff) + (x >> 16)
}

/// A full checksum over `data` (for tests and for the agent, never the data plane).
pub fn internet_checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = fold_once(sum + u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = fold_once(sum + (u32::from(*last) << 8));
    }
    !(fold_once(sum) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = internet_checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        let before = header([198, 18, 0, 10], [198, 18, 1, 100]);
        let after = header([198, 18, 0, 1], [198, 18, 0, 21]);
        let mut d = Delta::new();
        let v4 = |b: &[u8]| Addr::v4([b[0], b[1], b[2], b[3]]);
        d.addr(&v4(&before[12..16]), &v4(&after[12..16]), 4);
        d.addr(&v4(&before[16..20]), &v4(&after[16..20]), 4);
        let csum = d.apply(u16::from_ne_bytes([before[10], before[11]]));
        assert_eq!(csum.to_ne_bytes(), [after[10], after[11]]);
        assert_eq!(internet_checksum(&after, 0), 0);
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        let mut d = Delta::new();
        d.word(1, 2);
        assert_eq!(d.apply_udp(0), 0);
    }
}
