//! Small, dependency-free deterministic randomness.
//!
//! Everything the simulators draw is a pure function of a seed and a key, so runs are
//! reproducible across machines and two model servers with the same seed agree exactly.

pub use aviary_contract::hash::mix64;
use aviary_contract::hash::{fnv1a64, SplitMix64};

/// Stable 64-bit hash of bytes (FNV-1a followed by a SplitMix64 finaliser for avalanche).
///
/// Unlike `std::hash`, this never changes between Rust releases or processes.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    mix64(fnv1a64(bytes))
}

/// Hash of a seed, a domain tag and a key; different domains give independent streams.
pub fn keyed_hash(seed: u64, domain: &str, key: &[u8]) -> u64 {
    let mut h = mix64(seed ^ stable_hash(domain.as_bytes()));
    h ^= stable_hash(key);
    mix64(h)
}

/// Maps a hash to a uniform float in `[0, 1)` using its top 53 bits.
pub fn unit_f64(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A seeded SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct Rng {
    inner: SplitMix64,
}

impl Rng {
    /// Creates a generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: SplitMix64::new(seed),
        }
    }

    /// Next raw 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// Uniform float in `(0, 1)`, safe for `ln`.
    fn open_unit(&mut self) -> f64 {
        loop {
            let u = self.next_f64();
            if u > 0.0 {
                return u;
            }
        }
    }

    /// Standard normal variate (Box-Muller).
    pub fn standard_normal(&mut self) -> f64 {
        let u1 = self.open_unit();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential variate with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.open_unit().ln()
    }

    /// Gamma(shape, 1) variate (Marsaglia-Tsang; boosted for shape < 1).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.open_unit();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        // Acceptance is above 95% for every shape, so this terminates quickly; the bound only
        // guards against a pathological generator state.
        for _ in 0..1000 {
            let x = self.standard_normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.open_unit();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
        d
    }

    /// Beta(a, b) variate.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        if x + y == 0.0 {
            0.5
        } else {
            x / (x + y)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable() {
        assert_eq!(stable_hash(b"abc"), stable_hash(b"abc"));
        assert_ne!(stable_hash(b"abc"), stable_hash(b"abd"));
        assert_ne!(keyed_hash(1, "a", b"x"), keyed_hash(1, "b", b"x"));
        assert_ne!(keyed_hash(1, "a", b"x"), keyed_hash(2, "a", b"x"));
    }

    #[test]
    fn beta_mean_is_close() {
        let mut rng = Rng::new(7);
        let n = 20_000;
        let mean: f64 = (0..n).map(|_| rng.beta(8.0, 2.0)).sum::<f64>() / n as f64;
        assert!((mean - 0.8).abs() < 0.01, "mean {mean}");
        let mean: f64 = (0..n).map(|_| rng.beta(0.5, 0.5)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn exponential_and_normal_moments() {
        let mut rng = Rng::new(11);
        let n = 20_000;
        let mean: f64 = (0..n).map(|_| rng.exponential(5.0)).sum::<f64>() / n as f64;
        assert!((mean - 5.0).abs() < 0.2, "mean {mean}");
        let xs: Vec<f64> = (0..n).map(|_| rng.standard_normal()).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        assert!(
            m.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "m {m} var {var}"
        );
    }
}
