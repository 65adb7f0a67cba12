//! Request attributes as routing conditions and sticky keys read them: `:path`, query
//! parameters and cookies, from fuzzer-chosen header names and values. Input: the first line is
//! the name looked up; every further line is a header `name: value` (split at the first `": "`,
//! so `:path: /a?b=c` works; a line without it is a name with an empty value).
#![no_main]

use aviary::request::RequestView;
use aviary_contract::matcher::{HostPort, Matcher, Source};
use libfuzzer_sys::fuzz_target;

/// Whether `part` is a slice of `whole` (not just equal to part of it).
fn within(part: &str, whole: &str) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let name = lines.next().unwrap_or_default();
    let headers: Vec<(&str, &str)> = lines
        .map(|l| l.split_once(": ").unwrap_or((l, "")))
        .collect();
    let view = RequestView::from_pairs(&headers);
    let hs = view.headers();
    let raw_path = view.header(":path");

    if let Some(p) = view.path() {
        let whole = raw_path.expect("a path without a :path header");
        assert!(within(p, whole) && whole.starts_with(p) && !p.contains('?'));
    } else {
        assert!(raw_path.is_none());
    }

    if let Some(v) = view.query(name) {
        let whole = raw_path.expect("a query parameter without a :path header");
        let q = &whole[whole.find('?').expect("a query parameter without '?'") + 1..];
        // A parameter without `=` (`?flag`) has the empty value, which may live anywhere.
        assert!(
            v.is_empty() || within(v, q),
            "{v:?} not in the query of {whole:?}"
        );
        assert!(!v.contains('&') && !v.contains('#'));
        assert!(!name.contains('&') && !name.contains('#'));
    }

    if let Some(v) = view.cookie(name) {
        let in_cookie_header = hs
            .iter()
            .any(|(k, h)| k.eq_ignore_ascii_case("cookie") && within(v, h));
        assert!(
            in_cookie_header,
            "cookie {name:?}={v:?} not from a cookie header"
        );
        assert!(!v.contains(';') && !v.starts_with('"') && !v.ends_with('"'));
        assert!(!name.contains(';') && !name.contains('='));
    }

    if let Some(v) = view.header(name) {
        assert!(hs
            .iter()
            .any(|(k, h)| k.eq_ignore_ascii_case(name) && within(v, h)));
    }

    // The condition sources read the same attributes.
    assert_eq!(view.get(&Source::Path), view.path());
    assert_eq!(view.get(&Source::Header(name.into())), view.header(name));
    assert_eq!(view.get(&Source::Cookie(name.into())), view.cookie(name));
    assert_eq!(view.get(&Source::Query(name.into())), view.query(name));

    // `:authority` as HTTP compares it: a configured host matches itself, and a request's
    // authority matches the same whatever the ASCII case of its host.
    if let Some(hp) = HostPort::parse(name) {
        let m = Matcher::Authority(vec![hp]);
        assert!(m.matches_in(Some(name), Some("http")), "{name:?} does not match itself");
        let scheme = view.header(":scheme");
        if let Some(a) = view.header(":authority") {
            let hit = m.matches_in(Some(a), scheme);
            assert_eq!(hit, m.matches_in(Some(&a.to_ascii_uppercase()), scheme), "{a:?}");
            assert_eq!(hit, m.matches_in(Some(&a.to_ascii_lowercase()), scheme), "{a:?}");
        }
    }
});
