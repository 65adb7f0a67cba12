//! A request's attributes as conditions read them.

use aviary_contract::matcher::Source;

use crate::headers::HeaderBlock;

/// A read-only view of one request's attributes, fetched from the host once.
#[derive(Debug, Default, Clone)]
pub struct RequestView {
    headers: HeaderBlock,
}

impl RequestView {
    pub fn new(headers: HeaderBlock) -> Self {
        RequestView { headers }
    }

    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Self {
        RequestView::new(HeaderBlock::from_pairs(pairs))
    }

    pub fn headers(&self) -> &HeaderBlock {
        &self.headers
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    pub fn path(&self) -> Option<&str> {
        self.header(":path")
            .map(|p| p.split_once('?').map_or(p, |(path, _)| path))
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'))
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        let q = self.header(":path")?.split_once('?')?.1;
        let q = q.split_once('#').map_or(q, |(q, _)| q);
        q.split('&')
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    pub fn get(&self, source: &Source) -> Option<&str> {
        match source {
            Source::Header(h) => self.header(h),
            Source::Cookie(c) => self.cookie(c),
            Source::Query(q) => self.query(q),
            Source::Path => self.path(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(h: &[(&str, &str)]) -> RequestView {
        RequestView::from_pairs(h)
    }

    #[test]
    fn attributes() {
        let v = view(&[
            (":path", "/v1/predict?model=x&debug=1#frag"),
            ("cookie", "a=1; session=abc; b=\"q\""),
            ("X-Region", "eu"),
        ]);
        assert_eq!(v.path(), Some("/v1/predict"));
        assert_eq!(v.query("debug"), Some("1"));
        assert_eq!(v.query("model"), Some("x"));
        assert_eq!(v.query("none"), None);
        assert_eq!(v.cookie("session"), Some("abc"));
        assert_eq!(v.cookie("b"), Some("q"));
        assert_eq!(v.cookie("sess"), None);
        assert_eq!(v.header("x-region"), Some("eu"));
    }
}
