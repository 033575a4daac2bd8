//! Bounded-memory summaries of which keys are throttled: a space-saving
//! heavy-hitters sketch and a HyperLogLog distinct counter. Both take key
//! fingerprints, which are already uniformly random, so no further hashing is needed.

use std::collections::HashMap;

use crate::domain::Fingerprint;

/// Space-saving (Metwally et al.): at most `capacity` counters. A key seen more
/// than total/capacity times is always kept, and each count is over by at most
/// the count of the counter it replaced.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    counts: HashMap<Fingerprint, u64>,
    /// Keys that had the smallest count, `floor`, when the counters were last searched:
    /// the next to be replaced, each if still at `floor`. Counts only grow and a newcomer
    /// starts above `floor`, so while one is left no counter is smaller, and a search of
    /// all counters is needed only when they run out, not on every newcomer (a full sketch
    /// gets one per denial of an untracked key).
    smallest: Vec<Fingerprint>,
    floor: u64,
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { capacity, counts: HashMap::with_capacity(capacity), smallest: Vec::new(), floor: 0 }
    }

    pub fn add(&mut self, key: Fingerprint) {
        self.add_count(key, 1);
    }

    fn add_count(&mut self, key: Fingerprint, count: u64) {
        if let Some(c) = self.counts.get_mut(&key) {
            *c += count;
        } else if self.counts.len() < self.capacity {
            self.counts.insert(key, count);
        } else if let Some(min) = self.evict_smallest() {
            // The newcomer inherits the smallest count: it may have been that key all along.
            self.counts.insert(key, min + count);
        }
    }

    /// Removes a counter with the smallest count and returns that count.
    fn evict_smallest(&mut self) -> Option<u64> {
        loop {
            while let Some(candidate) = self.smallest.pop() {
                if self.counts.get(&candidate) == Some(&self.floor) {
                    self.counts.remove(&candidate);
                    return Some(self.floor);
                }
            }
            let floor = *self.counts.values().min()?;
            self.floor = floor;
            self.smallest.extend(self.counts.iter().filter(|(_, c)| **c == floor).map(|(key, _)| *key));
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
    use crate::domain::Fingerprinter;

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

    /// The guarantees of space-saving hold however the smallest counter is found: the
    /// counts add up to the stream, and every key seen more than total/capacity times is
    /// kept, counted at least as often as seen and at most total/capacity more.
    #[test]
    fn space_saving_keeps_its_bounds_over_a_skewed_stream() {
        let keys = keys(2_000);
        let capacity = 256;
        let mut sketch = SpaceSaving::new(capacity);
        let mut seen = HashMap::new();
        let mut state = 7u64;
        let total = 100_000;
        for _ in 0..total {
            // xorshift, squared: low indices (heavy keys) come far more often.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state % 10_000) as f64 / 10_000.0;
            let key = keys[(u * u * u * keys.len() as f64) as usize];
            sketch.add(key);
            *seen.entry(key).or_insert(0u64) += 1;
        }
        assert_eq!(sketch.counts.values().sum::<u64>(), total);
        assert!(sketch.counts.len() <= capacity);
        let bound = total / capacity as u64;
        let heavy: Vec<_> = seen.iter().filter(|(_, n)| **n > bound).collect();
        assert!(heavy.len() >= 5, "the stream has heavy keys: {}", heavy.len());
        for (key, &n) in heavy {
            let counted = sketch.counts.get(key).copied();
            assert!(counted.is_some_and(|c| c >= n && c - n <= bound), "{n} seen, {counted:?} counted");
        }
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
