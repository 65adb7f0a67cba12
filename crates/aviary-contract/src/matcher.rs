//! The matchers of segment rules: where a condition reads its value and how it compares.

/// Where a condition reads its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header(String),
    Cookie(String),
    Query(String),
    Path,
}

#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    Present(bool),
    OneOf(Vec<String>),
    /// `:authority` as HTTP compares it (RFC 9110 §4.2.3, §4.2.4): the host ASCII
    /// case-insensitively, and a missing port is the scheme's default (80, or 443 for https).
    Authority(Vec<HostPort>),
    /// A prefix of `:authority`, ASCII case-insensitive (lowercase here).
    AuthorityPrefix(String),
}

impl Matcher {
    /// Whether `value` matches; an `:authority` matcher takes the scheme to be http.
    pub fn matches(&self, value: Option<&str>) -> bool {
        self.matches_in(value, None)
    }

    /// Whether `value` matches a request whose `:scheme` is `scheme`.
    pub fn matches_in(&self, value: Option<&str>, scheme: Option<&str>) -> bool {
        match (self, value) {
            (Matcher::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Matcher::Exact(e), Some(v)) => v == e,
            (Matcher::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (Matcher::OneOf(list), Some(v)) => list.iter().any(|e| e == v),
            (Matcher::Authority(list), Some(v)) => {
                let Some((host, port)) = split_authority(v) else {
                    return false;
                };
                let default = default_port(scheme);
                let port = port.unwrap_or(default);
                list.iter().any(|hp| {
                    hp.host.eq_ignore_ascii_case(host) && hp.port.unwrap_or(default) == port
                })
            }
            (Matcher::AuthorityPrefix(p), Some(v)) => v
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
        }
    }

    /// Whether this matcher compares `:authority` and so needs the request's scheme.
    pub fn needs_scheme(&self) -> bool {
        matches!(self, Matcher::Authority(_))
    }
}

/// A configured `:authority`: the host in lowercase, and the port if one was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: Option<u16>,
}

impl HostPort {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`; `None` when the port is not a number.
    pub fn parse(s: &str) -> Option<HostPort> {
        let (host, port) = split_authority(s)?;
        Some(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Host and port of an authority; an empty port (`host:`) is no port. `None` when the port is
/// not a number. An IPv6 host keeps its brackets.
fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    let b = a.as_bytes();
    // The port's colon is the last one, after the `]` of an IPv6 host if there is one.
    let colon = b
        .iter()
        .rposition(|c| *c == b':')
        .filter(|i| !b.starts_with(b"[") || b[..*i].ends_with(b"]"));
    let Some(i) = colon else {
        return Some((a, None));
    };
    let (host, port) = (&a[..i], &a[i + 1..]);
    if port.is_empty() {
        return Some((host, None));
    }
    let port = crate::units::decimal(port).and_then(|p| u16::try_from(p).ok())?;
    Some((host, Some(port)))
}

fn default_port(scheme: Option<&str>) -> u16 {
    match scheme {
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        _ => 80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers() {
        let r = Matcher::OneOf(vec!["eu-west-1".into(), "eu-north-1".into()]);
        assert!(r.matches(Some("eu-west-1")));
        assert!(!r.matches(Some("eu-west-10")));
        assert!(!r.matches(None));
        assert!(Matcher::Present(false).matches(None));
        assert!(!Matcher::Present(true).matches(None));
        assert!(Matcher::Prefix("/v2".into()).matches(Some("/v2/x")));
    }

    #[test]
    fn authorities_compare_as_http_defines() {
        let hosts = |list: &[&str]| {
            Matcher::Authority(list.iter().filter_map(|h| HostPort::parse(h)).collect())
        };
        let scope = hosts(&["recsys", "Recsys:8080"]);
        for host in ["recsys", "RECSYS", "Recsys:8080", "recsys:80", "recsys:"] {
            assert!(scope.matches(Some(host)), "{host}");
        }
        for host in [
            "recsys:81",
            "recsys:443",
            "recsys.default",
            "recsys:x",
            "other",
        ] {
            assert!(!scope.matches(Some(host)), "{host}");
        }
        assert!(scope.matches_in(Some("recsys:443"), Some("https")));
        assert!(!scope.matches_in(Some("recsys:80"), Some("https")));
        let explicit = hosts(&["recsys:80", "secure:443"]);
        assert!(explicit.matches_in(Some("RECSYS"), Some("http")));
        assert!(!explicit.matches_in(Some("recsys"), Some("https")));
        assert!(explicit.matches_in(Some("secure"), Some("HTTPS")));
        assert!(!explicit.matches_in(Some("secure"), None));
        let v6 = hosts(&["[fd00::1]", "[::1]:8080"]);
        assert!(v6.matches(Some("[FD00::1]:80")) && v6.matches(Some("[::1]:8080")));
        assert!(!v6.matches(Some("[::1]")));
        assert_eq!(HostPort::parse("a:99999"), None);
        let prefix = Matcher::AuthorityPrefix("recsys.".into());
        assert!(prefix.matches(Some("RecSys.default.svc")) && !prefix.matches(Some("recsys")));
    }
}
