//! HTTP pieces shared by the metrics sources and the webhooks.

use std::io::Read;
use std::time::Duration;

/// An agent whose connect and whole-request timeouts are both `timeout`.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout(timeout)
        .build()
}

/// A transport error without its URL (the error already names the endpoint), e.g.
/// `Connection Failed: Connect error: Connection refused (os error 111)`.
pub(crate) fn transport_message(t: &ureq::Transport) -> String {
    let full = t.to_string();
    match t.url() {
        Some(u) => full.replacen(&format!("{u}: "), "", 1),
        None => full,
    }
}

/// Reads a response body as text, at most `limit` bytes of it.
pub(crate) fn body_text(resp: ureq::Response, limit: u64) -> std::io::Result<String> {
    let mut body = String::new();
    resp.into_reader().take(limit).read_to_string(&mut body)?;
    Ok(body)
}

/// Percent-encodes a query parameter value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A base URL without trailing slashes.
pub(crate) fn trim_base(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}
