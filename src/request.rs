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

    #[test]
    fn cookies() {
        let v = view(&[
            ("cookie", "a=1;b=x=y"),
            ("Cookie", " session=abc ;  Theme=dark"),
        ]);
        assert_eq!(v.cookie("a"), Some("1"));
        assert_eq!(v.cookie("b"), Some("x=y"), "split at the first `=`");
        assert_eq!(
            v.cookie("session"),
            Some("abc"),
            "a second header, spaces trimmed"
        );
        assert_eq!(v.cookie("theme"), None, "names are case-sensitive");
        assert_eq!(v.cookie("Theme"), Some("dark"));
        assert_eq!(view(&[]).cookie("a"), None);
    }

    #[test]
    fn query_and_path() {
        let v = view(&[(":path", "/a/b?flag&x=1&x=2&e=#x=3")]);
        assert_eq!(v.path(), Some("/a/b"));
        assert_eq!(v.query("flag"), Some(""));
        assert_eq!(v.query("x"), Some("1"), "the first occurrence");
        assert_eq!(v.query("e"), Some(""));
        let plain = view(&[(":path", "/a")]);
        assert_eq!(plain.path(), Some("/a"));
        assert_eq!(plain.query("a"), None);
        assert_eq!(view(&[]).path(), None);
    }

    #[test]
    fn sources() {
        let v = view(&[(":path", "/v2/x?m=1"), ("cookie", "c=2"), ("x-h", "3")]);
        assert_eq!(v.get(&Source::Path), Some("/v2/x"));
        assert_eq!(v.get(&Source::Query("m".into())), Some("1"));
        assert_eq!(v.get(&Source::Cookie("c".into())), Some("2"));
        assert_eq!(v.get(&Source::Header("X-H".into())), Some("3"));
        assert_eq!(v.get(&Source::Header("x-none".into())), None);
    }
}
