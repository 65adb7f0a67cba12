//! Conditions: a source (header, cookie, query parameter or path) and a matcher. Segment rules,
//! the scope (`match`) and shadow selection are lists of them.

use crate::config::compile::checks::{check_header_name, PSEUDO_HEADERS};
use crate::config::error::ConfigError;
use crate::config::schema::ConditionConfig;
use crate::matcher::{HostPort, Matcher, Source};

#[derive(Debug, Clone)]
pub struct Condition {
    pub source: Source,
    pub matcher: Matcher,
}

pub fn conditions(list: &[ConditionConfig], field: &str) -> Result<Vec<Condition>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(c, cond)| condition(cond, &format!("{field}[{c}]")))
        .collect()
}

fn condition(c: &ConditionConfig, field: &str) -> Result<Condition, ConfigError> {
    let source = match (&c.header, &c.cookie, &c.query, &c.path_prefix) {
        (Some(h), None, None, None) => {
            if !PSEUDO_HEADERS.contains(&h.as_str()) {
                check_header_name(format!("{field}.header"), h)?;
            }
            Source::Header(h.clone())
        }
        (None, Some(k), None, None) if !k.is_empty() => Source::Cookie(k.clone()),
        (None, None, Some(q), None) if !q.is_empty() => Source::Query(q.clone()),
        (None, None, None, Some(p)) => return path_prefix(c, p, field),
        _ => {
            return Err(ConfigError::new(
                field,
                "give exactly one of `header`, `cookie`, `query` or `pathPrefix`",
            ))
        }
    };
    let matcher =
        match (&c.exact, &c.prefix, c.present, &c.one_of) {
            (Some(v), None, None, None) => Matcher::Exact(v.clone()),
            (None, Some(v), None, None) => Matcher::Prefix(v.clone()),
            (None, None, Some(p), None) => Matcher::Present(p),
            (None, None, None, Some(list)) if !list.is_empty() => Matcher::OneOf(list.clone()),
            _ => return Err(ConfigError::new(
                field,
                "give exactly one of `exact`, `prefix`, `present` or `oneOf` (a non-empty list)",
            )),
        };
    if source == Source::Header(":authority".into()) {
        return Ok(Condition {
            source,
            matcher: authority(matcher, field)?,
        });
    }
    Ok(Condition { source, matcher })
}

/// `:authority` values compared as HTTP does: host case-insensitive, default port implied.
fn authority(m: Matcher, field: &str) -> Result<Matcher, ConfigError> {
    let (values, at) = match m {
        Matcher::Exact(v) => (vec![v], "exact"),
        Matcher::OneOf(list) => (list, "oneOf"),
        Matcher::Prefix(p) => return Ok(Matcher::AuthorityPrefix(p.to_ascii_lowercase())),
        other => return Ok(other),
    };
    let mut hosts = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let Some(h) = HostPort::parse(v) else {
            let at = if at == "exact" {
                format!("{field}.exact")
            } else {
                format!("{field}.oneOf[{i}]")
            };
            return Err(ConfigError::new(
                at,
                format!("`{v}` is not a host or host:port, e.g. \"recsys\" or \"recsys:8080\""),
            ));
        };
        hosts.push(h);
    }
    Ok(Matcher::Authority(hosts))
}

fn path_prefix(c: &ConditionConfig, p: &str, field: &str) -> Result<Condition, ConfigError> {
    if !p.starts_with('/') {
        return Err(ConfigError::new(
            format!("{field}.pathPrefix"),
            "must start with `/`",
        ));
    }
    if c.exact.is_some() || c.prefix.is_some() || c.present.is_some() || c.one_of.is_some() {
        return Err(ConfigError::new(
            field,
            "`pathPrefix` is a whole condition; drop `exact`, `prefix`, `present` and `oneOf`",
        ));
    }
    Ok(Condition {
        source: Source::Path,
        matcher: Matcher::Prefix(p.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(c: ConditionConfig) -> Option<String> {
        conditions(&[c], "m").err().map(|e| e.field)
    }

    #[test]
    fn errors_name_the_condition() {
        let header = |h: &str| ConditionConfig {
            header: Some(h.into()),
            exact: Some("x".into()),
            ..ConditionConfig::default()
        };
        assert_eq!(field(header("x-a")), None);
        assert_eq!(field(header(":authority")), None);
        assert_eq!(field(header("X-A")), Some("m[0].header".into()));
        let none = ConditionConfig {
            header: Some("x-a".into()),
            ..ConditionConfig::default()
        };
        assert_eq!(field(none), Some("m[0]".into()));
        let path = |p: &str, exact: Option<&str>| ConditionConfig {
            path_prefix: Some(p.into()),
            exact: exact.map(Into::into),
            ..ConditionConfig::default()
        };
        assert_eq!(field(path("v2", None)), Some("m[0].pathPrefix".into()));
        assert_eq!(field(path("/v2", Some("x"))), Some("m[0]".into()));
        let ok = conditions(&[path("/v2", None)], "m").ok();
        assert!(ok.is_some_and(|c| c[0].source == Source::Path));
        let host = |one_of: &[&str]| ConditionConfig {
            header: Some(":authority".into()),
            one_of: Some(one_of.iter().map(|h| h.to_string()).collect()),
            ..ConditionConfig::default()
        };
        assert_eq!(field(host(&["a", "b:x"])), Some("m[0].oneOf[1]".into()));
        let compiled = conditions(&[host(&["RecSys:8080"])], "m").ok();
        let want = HostPort {
            host: "recsys".into(),
            port: Some(8080),
        };
        assert!(compiled.is_some_and(
            |c| matches!(&c[0].matcher, Matcher::Authority(h) if h[..] == [want.clone()])
        ));
    }
}
