//! Field checks shared by the section compilers.

use crate::config::error::ConfigError;
use crate::units::BUCKETS;

const MAX_NAME_LEN: usize = 63;

/// Pseudo-headers a condition may read besides regular headers.
pub const PSEUDO_HEADERS: [&str; 4] = [":authority", ":method", ":path", ":scheme"];

/// A service or version name: it becomes a metric label and a stat name segment.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        })
}

pub fn valid_header_value(s: &str) -> bool {
    s.len() <= 8192 && s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

pub fn check_header_name(field: String, name: &str) -> Result<(), ConfigError> {
    if valid_header_name(name) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("`{name}` is not a valid header name; use lowercase letters, digits and `-`"),
        ))
    }
}

pub fn check_json_pointer(field: String, p: &str) -> Result<(), ConfigError> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "`{p}` is not a JSON pointer; it must start with `/`, e.g. `/prediction/score`"
            ),
        ))
    }
}

pub fn check_share(field: String, share: u32) -> Result<u32, ConfigError> {
    if share <= BUCKETS {
        Ok(share)
    } else {
        Err(ConfigError::new(
            field,
            format!("{share} is out of range; a share is in basis points, 0 to 10000"),
        ))
    }
}

/// Histogram or bin bounds: 1 to 64, finite and strictly increasing.
pub fn check_bounds(field: &str, bounds: &[f64], example: &str) -> Result<(), ConfigError> {
    if bounds.is_empty() || bounds.len() > 64 {
        return Err(ConfigError::new(
            field,
            format!("list 1 to 64 upper bounds, e.g. {example}"),
        ));
    }
    if let Some(i) = bounds.iter().position(|b| !b.is_finite()) {
        return Err(ConfigError::new(
            format!("{field}[{i}]"),
            "bounds must be finite; the +Inf bin is implied",
        ));
    }
    for (i, w) in bounds.windows(2).enumerate() {
        if w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less) {
            return Err(ConfigError::new(
                format!("{field}[{}]", i + 1),
                "bounds must be strictly increasing",
            ));
        }
    }
    Ok(())
}

/// The body limit of `shadow` and `compare`.
pub fn check_body_limit(field: &str, bytes: u32) -> Result<(), ConfigError> {
    if bytes > 16 * 1024 * 1024 {
        return Err(ConfigError::new(field, "must be at most 16 MiB"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_headers() {
        assert!(valid_name("canary_v2-1"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(!valid_name("v.2"));
        assert!(check_header_name("h".into(), "x-user-id").is_ok());
        let e = check_header_name("h".into(), "X-User").err();
        assert_eq!(e.map(|e| e.field), Some("h".into()));
        assert!(valid_header_value("a b\t~"));
        assert!(!valid_header_value("a\nb"));
    }

    #[test]
    fn bounds_name_the_offending_index() {
        let at = |b: &[f64]| check_bounds("b", b, "").err().map(|e| e.field);
        assert_eq!(at(&[]), Some("b".into()));
        assert_eq!(at(&[1.0, f64::NAN]), Some("b[1]".into()));
        assert_eq!(at(&[1.0, 2.0, 2.0]), Some("b[2]".into()));
        assert_eq!(at(&[1.0, 2.0]), None);
        assert_eq!(
            check_share("s".into(), 10_001).err().map(|e| e.field),
            Some("s".into())
        );
        assert!(check_json_pointer("p".into(), "a/b").is_err());
        assert!(check_json_pointer("p".into(), "").is_ok());
    }
}
