//! A request's headers as one buffer, in the proxy-wasm map serialisation the host hands over:
//! names and values are borrowed from it, so reading the headers costs one allocation instead
//! of two `String`s per header, and a value that is not UTF-8 cannot abort the VM.

/// Header names and values, all valid UTF-8.
#[derive(Debug, Default, Clone)]
pub struct HeaderBlock {
    buf: Vec<u8>,
    /// (name start, name end, value start, value end) in `buf`.
    spans: Vec<(u32, u32, u32, u32)>,
}

impl HeaderBlock {
    /// Parses the proxy-wasm serialisation: a u32 count, then a (name length, value length)
    /// u32 pair per header, then each name and value followed by a NUL, all little-endian.
    /// A malformed buffer gives an empty block. Bytes of a name or value that is not UTF-8
    /// (HTTP allows obs-text in values) are replaced by `?`.
    pub fn parse(mut buf: Vec<u8>) -> HeaderBlock {
        let Some(spans) = spans(&buf) else {
            return HeaderBlock::default();
        };
        for &(a, b, c, d) in &spans {
            for (start, end) in [(a, b), (c, d)] {
                let s = &mut buf[start as usize..end as usize];
                if std::str::from_utf8(s).is_err() {
                    s.iter_mut()
                        .filter(|b| !b.is_ascii())
                        .for_each(|b| *b = b'?');
                }
            }
        }
        HeaderBlock { buf, spans }
    }

    /// The serialised form of `pairs` (for hosts other than proxy-wasm, and tests).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> HeaderBlock {
        let mut buf = Vec::new();
        buf.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
        for (k, v) in pairs {
            buf.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
            buf.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            for s in [k.as_ref(), v.as_ref()] {
                buf.extend_from_slice(s.as_bytes());
                buf.push(0);
            }
        }
        HeaderBlock::parse(buf)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.spans
            .iter()
            .map(|&(a, b, c, d)| (self.text(a, b), self.text(c, d)))
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Owned copies, for a request that is mirrored.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn text(&self, start: u32, end: u32) -> &str {
        std::str::from_utf8(&self.buf[start as usize..end as usize]).unwrap_or_default()
    }
}

fn spans(buf: &[u8]) -> Option<Vec<(u32, u32, u32, u32)>> {
    let word = |at: usize| -> Option<usize> {
        let b = buf.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if buf.is_empty() {
        return Some(Vec::new());
    }
    let n = word(0)?;
    let mut at = 4usize.checked_add(n.checked_mul(8)?)?;
    if at > buf.len() {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (kl, vl) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let k = at;
        let v = k.checked_add(kl)?.checked_add(1)?;
        at = v.checked_add(vl)?.checked_add(1)?;
        if at > buf.len() {
            return None;
        }
        let u = |x: usize| u32::try_from(x).ok();
        out.push((u(k)?, u(k + kl)?, u(v)?, u(v + vl)?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_looks_up_case_insensitively() {
        let h = HeaderBlock::from_pairs(&[(":path", "/p?q=1"), ("X-User-Id", "u1"), ("a", "")]);
        assert_eq!(h.len(), 3);
        assert_eq!(h.get("x-user-id"), Some("u1"));
        assert_eq!(h.get("a"), Some(""));
        assert_eq!(h.get("b"), None);
        assert_eq!(h.to_pairs()[0], (":path".to_string(), "/p?q=1".to_string()));
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut raw = HeaderBlock::from_pairs(&[("x-a", "caf\u{e9}"), ("x-b", "ok")]).buf;
        // "café" in Latin-1, as HTTP obs-text allows: not UTF-8.
        let at = raw.windows(2).position(|w| w == [0xc3, 0xa9]).unwrap_or(0);
        raw.splice(at..at + 2, [0xe9]);
        let len_at = 4;
        raw[len_at + 4] = 4;
        let h = HeaderBlock::parse(raw);
        assert_eq!(h.get("x-a"), Some("caf?"));
        assert_eq!(h.get("x-b"), Some("ok"));
        // Truncated or lying lengths give an empty block, not a panic.
        for cut in [1, 5, 11, 20] {
            let mut b = HeaderBlock::from_pairs(&[("k", "v")]).buf;
            b.truncate(b.len().saturating_sub(cut));
            let _ = HeaderBlock::parse(b);
        }
        assert!(HeaderBlock::parse(vec![0xff, 0xff, 0xff, 0xff, 1]).is_empty());
        assert!(HeaderBlock::parse(Vec::new()).is_empty());
    }
}
