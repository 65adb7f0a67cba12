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
}

impl Matcher {
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Matcher::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Matcher::Exact(e), Some(v)) => v == e,
            (Matcher::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (Matcher::OneOf(list), Some(v)) => list.iter().any(|e| e == v),
        }
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
}
