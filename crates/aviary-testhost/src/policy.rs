//! The strictness policy: host calls that fail a test unless the test allowed
//! or expected them.

use std::fmt;

/// A kind of host call that is a test failure unless allowed or expected.
///
/// Each occurrence is described by a *detail* string that
/// [`Host::allow_matching`](crate::Host::allow_matching) and
/// [`Host::expect_matching`](crate::Host::expect_matching) match by substring:
///
/// | category | detail |
/// | --- | --- |
/// | `LocalResponse` | `"<status> <details> <body>"`, e.g. `"403 denied nope"` |
/// | `HttpCall` | `"<upstream> <:method> <:path>"`, e.g. `"ml-shadow POST /predict"` |
/// | `UnknownProperty` | the path with segments joined by `.`, e.g. `"source.address"` |
/// | `ErrorLog` | the message (error/critical `proxy_log`, or text written to stderr) |
/// | `StreamReset` | `"http_request"`, `"http_response"`, `"downstream"` or `"upstream"` |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// `proxy_send_local_response`.
    LocalResponse,
    /// `proxy_http_call`, whether or not the host accepts it.
    HttpCall,
    /// `proxy_get_property` for a path the test did not set.
    UnknownProperty,
    /// A log line at error or critical level, including anything written to stderr.
    ErrorLog,
    /// `proxy_close_stream`.
    StreamReset,
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::LocalResponse => "local response (proxy_send_local_response)",
            Self::HttpCall => "http call (proxy_http_call)",
            Self::UnknownProperty => "unknown property read (proxy_get_property)",
            Self::ErrorLog => "error-level log",
            Self::StreamReset => "stream reset (proxy_close_stream)",
        };
        f.write_str(name)
    }
}

#[derive(Debug)]
struct Allowance {
    category: Category,
    needle: Option<String>,
    /// `None` allows any number; `Some(n)` is an expectation of exactly `n`.
    exactly: Option<usize>,
    used: usize,
}

impl Allowance {
    fn describe(&self) -> String {
        let what = match &self.needle {
            Some(n) => format!("{} matching {n:?}", self.category),
            None => self.category.to_string(),
        };
        match self.exactly {
            Some(n) => format!("expected {n} × {what}"),
            None => format!("allowed {what}"),
        }
    }
}

/// Records allowances and the unexpected calls that matched none of them.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    allowances: Vec<Allowance>,
    violations: Vec<String>,
    reported: usize,
}

impl Policy {
    pub(crate) fn allow(
        &mut self,
        category: Category,
        needle: Option<&str>,
        exactly: Option<usize>,
    ) {
        self.allowances.push(Allowance {
            category,
            needle: needle.map(str::to_owned),
            exactly,
            used: 0,
        });
    }

    /// Admits one occurrence, or records it as a violation. Expectations with
    /// room left are used before open-ended allowances so counts stay exact.
    pub(crate) fn admit(&mut self, category: Category, detail: &str) -> bool {
        let matches = |a: &Allowance| {
            a.category == category && a.needle.as_deref().is_none_or(|n| detail.contains(n))
        };
        let slot = self
            .allowances
            .iter()
            .position(|a| matches(a) && a.exactly.is_some_and(|n| a.used < n))
            .or_else(|| {
                self.allowances
                    .iter()
                    .position(|a| matches(a) && a.exactly.is_none())
            });
        match slot {
            Some(i) => {
                self.allowances[i].used += 1;
                true
            }
            None => {
                let over = self
                    .allowances
                    .iter()
                    .find(|a| matches(a))
                    .map(|a| format!(" (beyond {})", a.describe()))
                    .unwrap_or_default();
                self.violations
                    .push(format!("unexpected {category}: {detail}{over}"));
                false
            }
        }
    }

    /// Records a problem that no allowance can excuse.
    pub(crate) fn violation(&mut self, text: String) {
        self.violations.push(text);
    }

    /// Violations recorded since the last call, marking them reported.
    pub(crate) fn take_new(&mut self) -> Vec<String> {
        let new = self.violations[self.reported..].to_vec();
        self.reported = self.violations.len();
        new
    }

    pub(crate) fn all_violations(&self) -> &[String] {
        &self.violations
    }

    /// Expectations whose count was not met.
    pub(crate) fn unmet(&self) -> Vec<String> {
        self.allowances
            .iter()
            .filter_map(|a| match a.exactly {
                Some(n) if a.used != n => Some(format!("{}, but saw {}", a.describe(), a.used)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_count_exactly_and_allowances_are_open() {
        let mut p = Policy::default();
        p.allow(Category::ErrorLog, Some("bad"), Some(1));
        assert!(p.admit(Category::ErrorLog, "bad config"));
        assert!(!p.admit(Category::ErrorLog, "bad again"));
        assert!(!p.admit(Category::LocalResponse, "403"));
        assert_eq!(p.take_new().len(), 2);
        assert!(p.take_new().is_empty());
        assert!(p.unmet().is_empty());

        p.allow(Category::HttpCall, None, None);
        p.allow(Category::HttpCall, Some("shadow"), Some(2));
        assert!(p.admit(Category::HttpCall, "shadow GET /"));
        assert!(p.admit(Category::HttpCall, "primary GET /"));
        assert_eq!(p.unmet().len(), 1);
        assert!(p.admit(Category::HttpCall, "shadow GET /"));
        assert!(p.admit(Category::HttpCall, "shadow GET /"));
        assert!(p.unmet().is_empty());
    }
}
