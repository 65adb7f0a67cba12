//! Units shared by the filter and the driver.

use std::time::Duration;

/// Buckets of the sticky hash space; weights and shares are basis points of it.
pub const BUCKETS: u32 = 10_000;

/// The config-digest gauge keeps 48 bits, which a Prometheus float holds exactly.
pub const DIGEST48_MASK: u64 = (1 << 48) - 1;

/// A percentage with at most two decimals as basis points (12.5 → 1250); `None` if it is out
/// of 0–100 or finer than a basis point.
pub fn percent_to_bps(p: f64) -> Option<u32> {
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let bps = (p * 100.0).round();
    ((p * 100.0 - bps).abs() < 1e-6).then_some(bps as u32)
}

/// Basis points as a percentage (1250 → 12.5).
pub fn bps_to_percent(bps: u32) -> f64 {
    f64::from(bps) / 100.0
}

/// Whole microseconds of a duration, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A non-negative decimal integer of ASCII digits only (no sign, no spaces); `None` otherwise
/// or on overflow. Written out: core's generic integer parser costs the `.wasm` more.
pub fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Formats a number with up to six decimals and no trailing zeros (`0.25`, `3`, `-1.5`).
/// Written out because core's float formatting would add ~15 KB to the `.wasm`.
pub fn fmt_decimal(x: f64) -> String {
    let micros = (x.abs() * 1e6).round() as u64;
    let (int, frac) = (micros / 1_000_000, micros % 1_000_000);
    let sign = if x < 0.0 && micros > 0 { "-" } else { "" };
    if frac == 0 {
        return format!("{sign}{int}");
    }
    let digits = format!("{frac:06}");
    format!("{sign}{int}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(fmt_decimal(0.25), "0.25");
        assert_eq!(fmt_decimal(3.0), "3");
        assert_eq!(fmt_decimal(-1.5), "-1.5");
        assert_eq!(fmt_decimal(0.1), "0.1");
        assert_eq!(fmt_decimal(1e-7), "0");
        assert_eq!(fmt_decimal(12.000001), "12.000001");
    }

    #[test]
    fn decimals_are_read_strictly() {
        assert_eq!(decimal("8080"), Some(8080));
        assert_eq!(decimal("0"), Some(0));
        assert_eq!(decimal(&u64::MAX.to_string()), Some(u64::MAX));
        for bad in ["", "-1", "+1", " 1", "1a", "18446744073709551616"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn percents() {
        assert_eq!(percent_to_bps(12.5), Some(1250));
        assert_eq!(percent_to_bps(0.01), Some(1));
        assert_eq!(percent_to_bps(100.0), Some(10_000));
        assert_eq!(percent_to_bps(0.001), None);
        assert_eq!(percent_to_bps(-1.0), None);
        assert_eq!(percent_to_bps(f64::NAN), None);
        assert_eq!(bps_to_percent(1250), 12.5);
    }

    #[test]
    fn digest_mask_fits_a_float() {
        assert_eq!((DIGEST48_MASK as f64) as u64, DIGEST48_MASK);
    }
}
