//! The proxy-wasm header map parser, fed the raw serialised map bytes a host hands over.
//! Checked against a plain reference reading of the same format: a u32 count, (name length,
//! value length) u32 pairs, then each name and value followed by one terminator byte, all
//! little-endian; anything that does not fit is an empty block, and bytes of a name or value
//! that is not UTF-8 have their non-ASCII bytes replaced by `?`.
#![no_main]

use aviary::headers::HeaderBlock;
use libfuzzer_sys::fuzz_target;

fn reference(buf: &[u8]) -> Vec<(String, String)> {
    fn word(buf: &[u8], at: usize) -> Option<usize> {
        let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    }
    fn text(b: &[u8]) -> String {
        match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => b
                .iter()
                .map(|&c| if c.is_ascii() { c as char } else { '?' })
                .collect(),
        }
    }
    let read = || -> Option<Vec<(String, String)>> {
        if buf.is_empty() {
            return Some(Vec::new());
        }
        let n = word(buf, 0)?;
        let mut at = n.checked_mul(8)?.checked_add(4)?;
        let mut out = Vec::new();
        for i in 0..n {
            let kl = word(buf, 4 + 8 * i)?;
            let vl = word(buf, 8 + 8 * i)?;
            let name = buf.get(at..at.checked_add(kl)?)?;
            at = at + kl + 1;
            let value = buf.get(at..at.checked_add(vl)?)?;
            at = at + vl + 1;
            if at > buf.len() {
                return None;
            }
            out.push((text(name), text(value)));
        }
        Some(out)
    };
    read().unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let h = HeaderBlock::parse(data.to_vec());
    let pairs = h.to_pairs();
    assert_eq!(pairs, reference(data));
    assert_eq!(h.len(), pairs.len());
    assert_eq!(h.is_empty(), pairs.is_empty());
    for (k, _) in &pairs {
        let first = pairs.iter().find(|(n, _)| n.eq_ignore_ascii_case(k));
        assert_eq!(h.get(k), first.map(|(_, v)| v.as_str()));
        assert_eq!(
            h.get(&k.to_ascii_uppercase()),
            first.map(|(_, v)| v.as_str())
        );
    }
    // What was read serialises and reads back to the same headers.
    assert_eq!(HeaderBlock::from_pairs(&pairs).to_pairs(), pairs);
});
