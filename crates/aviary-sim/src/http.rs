//! A minimal HTTP/1.1 implementation over `std::net`, shared by the model server, the load
//! generator and the Envoy admin client.
//!
//! It supports exactly what those need: keep-alive, `Content-Length` and chunked bodies,
//! `Connection: close`, and read timeouts that can be polled (so servers notice a stop request
//! while a keep-alive connection is idle). It sets `TCP_NODELAY` everywhere because loopback
//! benchmarks otherwise pick up 40 ms delayed-ACK stalls.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Header list preserving order and duplicates; names compare case-insensitively.
pub type Headers = Vec<(String, String)>;

/// Case-insensitive lookup of the first header with this name.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether a read error is a socket read timeout.
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Decides, on each read timeout, whether to keep waiting. Receives whether any byte of the
/// current message has arrived yet.
pub(crate) type IdlePolicy<'a> = &'a dyn Fn(bool) -> bool;

/// Parsed start line and headers of a message.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub start: String,
    pub headers: Headers,
}

/// Returns the buffered bytes, waiting through read timeouts while `idle` allows.
fn fill<'r, R: Read>(
    r: &'r mut BufReader<R>,
    started: bool,
    idle: IdlePolicy<'_>,
) -> io::Result<&'r [u8]> {
    loop {
        match r.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => {
                if !idle(started) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    // Borrow again outside the loop: returning the first borrow from inside it does not pass
    // the borrow checker.
    r.fill_buf()
}

/// Reads one line terminated by `\n`, without the terminator (and a trailing `\r`).
fn read_line<R: Read>(
    r: &mut BufReader<R>,
    started: &mut bool,
    budget: &mut usize,
    idle: IdlePolicy<'_>,
) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = fill(r, *started, idle)?;
        if buf.is_empty() {
            if line.is_empty() && !*started {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-message",
            ));
        }
        *started = true;
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if take > *budget {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message head too large",
            ));
        }
        *budget -= take;
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            // HTTP allows bytes 0x80-0xFF in header values (obs-text); keep them readable.
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// Reads a start line and headers. `Ok(None)` means the peer closed cleanly between messages.
pub(crate) fn read_head<R: Read>(
    r: &mut BufReader<R>,
    idle: IdlePolicy<'_>,
) -> io::Result<Option<Head>> {
    let mut started = false;
    let mut budget = MAX_HEAD_BYTES;
    let start = loop {
        match read_line(r, &mut started, &mut budget, idle)? {
            None => return Ok(None),
            // RFC 9112 asks servers to ignore empty lines before a request line.
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, &mut started, &mut budget, idle)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in headers")
        })?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed header line"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Some(Head { start, headers }))
}

fn read_exact_idle<R: Read>(
    r: &mut BufReader<R>,
    mut n: usize,
    out: &mut Vec<u8>,
    idle: IdlePolicy<'_>,
) -> io::Result<()> {
    while n > 0 {
        let buf = fill(r, true, idle)?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-body",
            ));
        }
        let take = buf.len().min(n);
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        n -= take;
    }
    Ok(())
}

/// How the length of a message body is determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

pub(crate) fn body_kind(headers: &[(String, String)], is_response: bool) -> io::Result<BodyKind> {
    if let Some(te) = header(headers, "transfer-encoding") {
        if te
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        {
            return Ok(BodyKind::Chunked);
        }
    }
    if let Some(cl) = header(headers, "content-length") {
        let n: usize = cl
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        if n > MAX_BODY_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        return Ok(BodyKind::Length(n));
    }
    Ok(if is_response {
        BodyKind::UntilClose
    } else {
        BodyKind::None
    })
}

pub(crate) fn read_body<R: Read>(
    r: &mut BufReader<R>,
    kind: BodyKind,
    idle: IdlePolicy<'_>,
) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    match kind {
        BodyKind::None => {}
        BodyKind::Length(n) => read_exact_idle(r, n, &mut body, idle)?,
        BodyKind::Chunked => {
            let mut budget = MAX_HEAD_BYTES;
            let mut started = true;
            loop {
                let line = read_line(r, &mut started, &mut budget, idle)?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk size")
                })?;
                let size_hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
                if size == 0 {
                    // Trailers end with an empty line.
                    while let Some(l) = read_line(r, &mut started, &mut budget, idle)? {
                        if l.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                if body.len() + size > MAX_BODY_BYTES {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
                }
                read_exact_idle(r, size, &mut body, idle)?;
                let crlf = read_line(r, &mut started, &mut budget, idle)?;
                if crlf.as_deref() != Some("") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "missing CRLF after chunk",
                    ));
                }
                budget = MAX_HEAD_BYTES;
            }
        }
        BodyKind::UntilClose => loop {
            let buf = fill(r, true, idle)?;
            if buf.is_empty() {
                break;
            }
            if body.len() + buf.len() > MAX_BODY_BYTES {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
            }
            let n = buf.len();
            body.extend_from_slice(buf);
            r.consume(n);
        },
    }
    Ok(body)
}

/// Whether the connection stays open after this message, per HTTP/1.x rules.
pub(crate) fn keep_alive(version: &str, headers: &[(String, String)]) -> bool {
    let conn = header(headers, "connection").unwrap_or("");
    let has = |token: &str| {
        conn.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if version.eq_ignore_ascii_case("HTTP/1.0") {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// A parsed `http://` URL restricted to loopback hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Resolved socket address (always a loopback address).
    pub addr: SocketAddr,
    /// Value for the `Host` header, as written in the URL.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `http://host:port/path` (the scheme is optional). Only loopback hosts are
    /// accepted, because these tools must never send load anywhere else.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => bail!("unsupported URL scheme {scheme:?} in {url:?}"),
            None => url,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("URL {url:?} has no host");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {authority:?}"))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| anyhow!("{authority:?} has no IPv4 address"))?;
        if !addr.ip().is_loopback() {
            bail!("refusing non-loopback address {addr} (from {url:?})");
        }
        Ok(Self {
            addr,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// Base URL (`http://authority`) without the path.
    pub fn base(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// An HTTP request to send with [`HttpConnection::send`].
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Extra headers. `Host` and `Content-Length` are added automatically unless present.
    pub headers: Headers,
    /// Body; a `Content-Length` header is sent when non-empty or when the method is not GET/HEAD.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A GET request for `path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: "GET".into(),
            path: path.into(),
            ..Self::default()
        }
    }

    /// A POST request for `path` with a body.
    pub fn post(path: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST".into(),
            path: path.into(),
            body: body.into(),
            ..Self::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Serialises the request with the given `Host` value.
    pub fn encode(&self, host: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        let method = if self.method.is_empty() {
            "GET"
        } else {
            &self.method
        };
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
        if header(&self.headers, "host").is_none() {
            out.extend_from_slice(format!("host: {host}\r\n").as_bytes());
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        let bodyless = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
        if header(&self.headers, "content-length").is_none()
            && header(&self.headers, "transfer-encoding").is_none()
            && (!self.body.is_empty() || !bodyless)
        {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A received HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers in received order.
    pub headers: Headers,
    /// Decoded body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response body is not the expected JSON (status {}): {}",
                self.status,
                truncate(&self.text(), 300)
            )
        })
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A client-side keep-alive HTTP/1.1 connection with `TCP_NODELAY` set.
#[derive(Debug)]
pub struct HttpConnection {
    reader: BufReader<TcpStream>,
    host: String,
    open: bool,
}

impl HttpConnection {
    /// Connects to `addr` within `timeout`; `timeout` also bounds each response read.
    pub fn connect(addr: SocketAddr, host: &str, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            reader: BufReader::with_capacity(16 * 1024, stream),
            host: host.to_string(),
            open: true,
        })
    }

    /// Whether the connection can carry another request (the server did not close it).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Sends a request and reads the complete response.
    pub fn send(&mut self, req: &HttpRequest) -> io::Result<HttpResponse> {
        let bytes = req.encode(&self.host);
        self.send_encoded(&bytes, req.method.eq_ignore_ascii_case("HEAD"))
    }

    /// Sends pre-encoded request bytes (see [`HttpRequest::encode`]) and reads the response.
    pub fn send_encoded(&mut self, bytes: &[u8], head_request: bool) -> io::Result<HttpResponse> {
        if !self.open {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection was closed by the server",
            ));
        }
        let result = self.exchange(bytes, head_request);
        if result.is_err() {
            self.open = false;
        }
        result
    }

    fn exchange(&mut self, bytes: &[u8], head_request: bool) -> io::Result<HttpResponse> {
        self.reader.get_mut().write_all(bytes)?;
        let never = |_: bool| false;
        loop {
            let head = read_head(&mut self.reader, &never)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "connection closed before a response",
                )
            })?;
            let mut parts = head.start.splitn(3, ' ');
            let version = parts.next().unwrap_or("").to_string();
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|_| version.starts_with("HTTP/1."))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad status line {:?}", head.start),
                    )
                })?;
            // Interim responses (100 Continue etc.) precede the real one.
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let kind = if head_request || status == 204 || status == 304 {
                BodyKind::None
            } else {
                body_kind(&head.headers, true)?
            };
            let body = read_body(&mut self.reader, kind, &never)?;
            if kind == BodyKind::UntilClose || !keep_alive(&version, &head.headers) {
                self.open = false;
            }
            return Ok(HttpResponse {
                status,
                headers: head.headers,
                body,
            });
        }
    }
}

/// Sends one request on a fresh connection and returns the response. An empty `req.path` means
/// the URL's path; `timeout` bounds the connect and each read.
pub fn request(url: &str, req: HttpRequest, timeout: Duration) -> anyhow::Result<HttpResponse> {
    let url = Url::parse(url)?;
    let mut req = req;
    if req.path.is_empty() {
        req.path = url.path.clone();
    }
    let mut conn = HttpConnection::connect(url.addr, &url.authority, timeout)
        .with_context(|| format!("connecting to {}", url.addr))?;
    conn.send(&req)
        .with_context(|| format!("{} {}{}", req.method, url.base(), req.path))
}

/// Sends a GET to `url` on a fresh connection.
pub fn get(url: &str, timeout: Duration) -> anyhow::Result<HttpResponse> {
    request(url, HttpRequest::get(""), timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> BufReader<&[u8]> {
        BufReader::new(bytes)
    }

    #[test]
    fn parses_chunked_body_with_trailers() {
        let mut r = reader(b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\nT: v\r\n\r\nNEXT");
        let body = read_body(&mut r, BodyKind::Chunked, &|_| false).unwrap();
        assert_eq!(body, b"Wikipedia");
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");
    }

    #[test]
    fn parses_head_and_keep_alive() {
        let mut r = reader(b"\r\nGET /x HTTP/1.0\r\nConnection: Keep-Alive\r\nA:  b \r\n\r\n");
        let head = read_head(&mut r, &|_| false).unwrap().unwrap();
        assert_eq!(head.start, "GET /x HTTP/1.0");
        assert_eq!(header(&head.headers, "a"), Some("b"));
        assert!(keep_alive("HTTP/1.0", &head.headers));
        assert!(!keep_alive(
            "HTTP/1.1",
            &[("connection".into(), "close".into())]
        ));
        assert!(read_head(&mut reader(b""), &|_| false).unwrap().is_none());
        assert!(read_head(&mut reader(b"GET / HTTP/1.1\r\nA: b"), &|_| false).is_err());
    }

    #[test]
    fn url_parsing_is_loopback_only() {
        let u = Url::parse("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(u.addr.port(), 8080);
        assert_eq!(u.path, "/a?b=1");
        assert_eq!(Url::parse("localhost:9").unwrap().path, "/");
        assert!(Url::parse("http://10.0.0.1:80/").is_err());
        assert!(Url::parse("https://127.0.0.1/").is_err());
    }

    #[test]
    fn encodes_content_length() {
        let req = HttpRequest::post("/p", "abc").header("x-a", "1");
        let s = String::from_utf8(req.encode("h:1")).unwrap();
        assert!(s.starts_with(
            "POST /p HTTP/1.1\r\nhost: h:1\r\nx-a: 1\r\ncontent-length: 3\r\n\r\nabc"
        ));
        let s = String::from_utf8(HttpRequest::get("/").encode("h")).unwrap();
        assert!(!s.contains("content-length"));
    }
}
