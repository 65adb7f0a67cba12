//! Prediction field extraction by JSON pointer from response bodies, as the filter does it for
//! score histograms and shadow comparisons. Input: `label pointer\nscore pointer\nbody`; an empty
//! or non-UTF-8 pointer line means that pointer is not configured.
#![no_main]

use aviary::extract::{bin_index, fields, from_value, parse, BodyBuffer, Fields, Unusable};
use libfuzzer_sys::fuzz_target;

/// The README's score bounds.
const BOUNDS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

fn pointer(line: Option<&[u8]>) -> Option<&str> {
    line.filter(|l| !l.is_empty())
        .and_then(|l| std::str::from_utf8(l).ok())
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let label = pointer(parts.next());
    let score = pointer(parts.next());
    let body = parts.next().unwrap_or_default();

    let got = fields(body, label, score);
    // Same answer through the parsed value, as the filter reads a buffered body.
    let via_value = parse(body).and_then(|v| from_value(&v, label, score));
    assert_eq!(got, via_value);
    match &got {
        Ok(Fields { label: l, score: s }) => {
            assert_eq!(l.is_some(), label.is_some());
            assert_eq!(s.is_some(), score.is_some());
            if let Some(s) = *s {
                assert!(s.is_finite());
                let i = bin_index(&BOUNDS, s);
                assert!(i <= BOUNDS.len());
                assert!(i == BOUNDS.len() || s <= BOUNDS[i]);
                assert!(i == 0 || BOUNDS[i - 1] < s);
            }
        }
        Err(Unusable::BodyTooLarge) => panic!("fields() never sees a size limit"),
        Err(_) => {}
    }

    // The body streamed in chunks: with room for all of it, the same value as in one piece;
    // one byte short, too large.
    let chunk = 1 + body.first().map_or(0, |&b| b as usize % 17);
    let mut fits = BodyBuffer::default();
    let mut short = BodyBuffer::default();
    for c in body.chunks(chunk) {
        fits.push(c, body.len());
        short.push(c, body.len().saturating_sub(1));
    }
    assert!(!fits.overflowed);
    assert_eq!(fits.data, body);
    assert_eq!(fits.parse().ok(), parse(body).ok());
    if !body.is_empty() {
        assert!(short.overflowed && short.data.is_empty());
        assert_eq!(short.parse(), Err(Unusable::BodyTooLarge));
    }
});
