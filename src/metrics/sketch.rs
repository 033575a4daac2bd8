//! Bounded-memory summaries of which keys are throttled: a space-saving
//! heavy-hitters sketch and a HyperLogLog distinct counter. Both take key
//! fingerprints, which are already uniformly random, so no further hashing is needed.

use std::collections::HashMap;

use crate::limiter::Fingerprint;

/// Space-saving (Metwally et al.): at most `capacity` counters. A key seen more
/// than total/capacity times is always kept, and each count is over by at most
/// the count of the counter it replaced.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    counts: HashMap<Fingerprint, u64>,
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), counts: HashMap::with_capacity(capacity.max(1)) }
    }

    pub fn add(&mut self, key: Fingerprint) {
        self.add_count(key, 1);
    }

    fn add_count(&mut self, key: Fingerprint, count: u64) {
        if let Some(c) = self.counts.get_mut(&key) {
            *c += count;
        } else if self.counts.len() < self.capacity {
            self.counts.insert(key, count);
        } else if let Some((&smallest, &min)) = self.counts.iter().min_by_key(|(_, c)| **c) {
            // The newcomer inherits the smallest count: it may have been that key all along.
            self.counts.remove(&smallest);
            self.counts.insert(key, min + count);
        }
    }

    /// Adds another sketch's counts (for reporting over two intervals).
    pub fn merged(&self, other: &SpaceSaving) -> SpaceSaving {
        let mut merged = self.clone();
        for (&key, &count) in &other.counts {
            merged.add_count(key, count);
        }
        merged
    }

    /// The `k` largest counts, largest first; ties broken by fingerprint so the order is stable.
    pub fn top(&self, k: usize) -> Vec<(Fingerprint, u64)> {
        let mut all: Vec<_> = self.counts.iter().map(|(&key, &count)| (key, count)).collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_bytes().cmp(b.0.as_bytes())));
        all.truncate(k);
        all
    }
}

/// HyperLogLog with 2^12 registers: 4 KiB, about 1.6 % standard error.
#[derive(Debug, Clone)]
pub struct HyperLogLog {
    registers: Box<[u8; REGISTERS]>,
}

const INDEX_BITS: u32 = 12;
const REGISTERS: usize = 1 << INDEX_BITS;

impl Default for HyperLogLog {
    fn default() -> Self {
        Self { registers: Box::new([0; REGISTERS]) }
    }
}

impl HyperLogLog {
    pub fn add(&mut self, key: &Fingerprint) {
        let bytes = key.as_bytes();
        let index = usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) & (REGISTERS - 1);
        let mut rest = [0u8; 8];
        rest.copy_from_slice(&bytes[2..10]);
        let rank = (u64::from_le_bytes(rest).leading_zeros() + 1) as u8;
        self.registers[index] = self.registers[index].max(rank);
    }

    pub fn merged(&self, other: &HyperLogLog) -> HyperLogLog {
        let mut merged = self.clone();
        for (mine, theirs) in merged.registers.iter_mut().zip(other.registers.iter()) {
            *mine = (*mine).max(*theirs);
        }
        merged
    }

    pub fn estimate(&self) -> f64 {
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self.registers.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|&&r| r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            // Linear counting is more accurate while many registers are empty.
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Fingerprinter;

    fn keys(n: usize) -> Vec<Fingerprint> {
        let fingerprinter = Fingerprinter::new(b"sketch-test");
        (0..n).map(|i| fingerprinter.fingerprint(&format!("key-{i}"))).collect()
    }

    #[test]
    fn space_saving_keeps_the_heavy_hitters_in_bounded_memory() {
        let keys = keys(10_000);
        let mut sketch = SpaceSaving::new(80);
        for (i, key) in keys.iter().enumerate() {
            for _ in 0..(if i < 3 { 500 - i } else { 1 }) {
                sketch.add(*key);
            }
        }
        assert!(sketch.counts.len() <= 80);
        let top: Vec<_> = sketch.top(3).into_iter().map(|(key, _)| key).collect();
        assert_eq!(top, keys[..3].to_vec());
        let doubled = sketch.merged(&sketch);
        assert_eq!(doubled.top(1)[0].1, 2 * sketch.top(1)[0].1);
    }

    #[test]
    fn hyperloglog_counts_distinct_keys_within_a_few_percent() {
        for n in [0usize, 10, 1_000, 10_000, 100_000] {
            let mut hll = HyperLogLog::default();
            for key in keys(n) {
                hll.add(&key);
                hll.add(&key);
            }
            let estimate = hll.estimate();
            let error = (estimate - n as f64).abs() / (n.max(1) as f64);
            assert!(error < 0.05, "{n} keys estimated as {estimate}");
        }
    }
}
