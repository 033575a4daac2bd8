//! Which key each benchmark request uses: uniform over K keys, Zipf over K keys,
//! or one hot key.

use rand::Rng;
use rand::distr::Distribution as _;
use rand::distr::weighted::WeightedIndex;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    Uniform,
    /// Key i (from 0) drawn with weight 1 / (i + 1)^exponent.
    Zipf(f64),
    /// Every request for one key.
    Hot,
}

/// Draws key indexes in `0..count`.
#[derive(Debug, Clone)]
pub enum KeyPicker {
    Uniform(usize),
    Zipf(WeightedIndex<f64>),
    Hot,
}

impl KeyPicker {
    /// `count` must be at least 1; Zipf's exponent must be finite and non-negative.
    pub fn new(distribution: KeyDistribution, count: usize) -> Result<Self, String> {
        let count = count.max(1);
        Ok(match distribution {
            KeyDistribution::Uniform => Self::Uniform(count),
            KeyDistribution::Hot => Self::Hot,
            KeyDistribution::Zipf(s) => {
                if !(s.is_finite() && s >= 0.0) {
                    return Err(format!("the Zipf exponent must be finite and at least 0, got {s}"));
                }
                // Key i (from 0) is drawn with weight 1 / (i + 1)^s.
                let weights = (1..=count).map(|rank| 1.0 / (rank as f64).powf(s));
                Self::Zipf(WeightedIndex::new(weights).map_err(|e| e.to_string())?)
            }
        })
    }

    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        match self {
            Self::Uniform(count) => rng.random_range(0..*count),
            Self::Zipf(index) => index.sample(rng),
            Self::Hot => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    #[test]
    fn distributions_draw_what_they_promise() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0usize; 10];
        let zipf = KeyPicker::new(KeyDistribution::Zipf(1.0), 10).unwrap();
        for _ in 0..100_000 {
            counts[zipf.pick(&mut rng)] += 1;
        }
        // Zipf(1): key 0 twice as often as key 1, ten times as often as key 9.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "{counts:?}");
        assert!(counts[0] > 8 * counts[9], "{counts:?}");
        let uniform = KeyPicker::new(KeyDistribution::Uniform, 10).unwrap();
        assert!((0..1000).all(|_| uniform.pick(&mut rng) < 10));
        assert_eq!(KeyPicker::new(KeyDistribution::Hot, 10).unwrap().pick(&mut rng), 0);
        assert!(KeyPicker::new(KeyDistribution::Zipf(f64::NAN), 10).is_err());
    }
}
