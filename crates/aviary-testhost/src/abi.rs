//! Proxy-wasm ABI 0.2.1 constants and the serialized header-map format.

use std::fmt;

/// `proxy_status_t`: the status every host function returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Status {
    /// `OK`
    Ok = 0,
    /// `NOT_FOUND`
    NotFound = 1,
    /// `BAD_ARGUMENT`
    BadArgument = 2,
    /// `SERIALIZATION_FAILURE`
    SerializationFailure = 3,
    /// `PARSE_FAILURE`
    ParseFailure = 4,
    /// `INVALID_MEMORY_ACCESS`
    InvalidMemoryAccess = 6,
    /// `EMPTY`
    Empty = 7,
    /// `CAS_MISMATCH`
    CasMismatch = 8,
    /// `INTERNAL_FAILURE`
    InternalFailure = 10,
    /// Envoy's `BrokenConnection`, reported by `proxy_get_status` after a failed call.
    BrokenConnection = 11,
    /// `UNIMPLEMENTED`
    Unimplemented = 12,
}

impl Status {
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

/// `proxy_log_level_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// `TRACE` (0)
    Trace = 0,
    /// `DEBUG` (1)
    Debug = 1,
    /// `INFO` (2)
    Info = 2,
    /// `WARN` (3)
    Warn = 3,
    /// `ERROR` (4)
    Error = 4,
    /// `CRITICAL` (5); the Rust SDK's panic hook logs at this level.
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Critical => "critical",
        };
        f.write_str(name)
    }
}

/// `proxy_action_t`: what a stream callback asks the host to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `CONTINUE` (0)
    Continue,
    /// `PAUSE` (1)
    Pause,
}

impl Action {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        match raw {
            0 => Some(Self::Continue),
            1 => Some(Self::Pause),
            _ => None,
        }
    }
}

/// `proxy_buffer_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferType {
    /// `HTTP_REQUEST_BODY` (0)
    HttpRequestBody,
    /// `HTTP_RESPONSE_BODY` (1)
    HttpResponseBody,
    /// `DOWNSTREAM_DATA` (2)
    DownstreamData,
    /// `UPSTREAM_DATA` (3)
    UpstreamData,
    /// `HTTP_CALL_RESPONSE_BODY` (4)
    HttpCallResponseBody,
    /// `GRPC_CALL_MESSAGE` (5)
    GrpcCallMessage,
    /// `VM_CONFIGURATION` (6)
    VmConfiguration,
    /// `PLUGIN_CONFIGURATION` (7)
    PluginConfiguration,
    /// `FOREIGN_FUNCTION_ARGUMENTS` (8)
    ForeignFunctionArguments,
}

impl BufferType {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::HttpCallResponseBody,
            5 => Self::GrpcCallMessage,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::ForeignFunctionArguments,
            _ => return None,
        })
    }
}

/// `proxy_map_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    /// `HTTP_REQUEST_HEADERS` (0)
    HttpRequestHeaders,
    /// `HTTP_REQUEST_TRAILERS` (1)
    HttpRequestTrailers,
    /// `HTTP_RESPONSE_HEADERS` (2)
    HttpResponseHeaders,
    /// `HTTP_RESPONSE_TRAILERS` (3)
    HttpResponseTrailers,
    /// `GRPC_CALL_INITIAL_METADATA` (4)
    GrpcCallInitialMetadata,
    /// `GRPC_CALL_TRAILING_METADATA` (5)
    GrpcCallTrailingMetadata,
    /// `HTTP_CALL_RESPONSE_HEADERS` (6)
    HttpCallResponseHeaders,
    /// `HTTP_CALL_RESPONSE_TRAILERS` (7)
    HttpCallResponseTrailers,
}

impl MapType {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => Self::HttpRequestHeaders,
            1 => Self::HttpRequestTrailers,
            2 => Self::HttpResponseHeaders,
            3 => Self::HttpResponseTrailers,
            4 => Self::GrpcCallInitialMetadata,
            5 => Self::GrpcCallTrailingMetadata,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// `proxy_stream_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// `HTTP_REQUEST` (0)
    HttpRequest,
    /// `HTTP_RESPONSE` (1)
    HttpResponse,
    /// `DOWNSTREAM` (2)
    Downstream,
    /// `UPSTREAM` (3)
    Upstream,
}

impl StreamType {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => Self::HttpRequest,
            1 => Self::HttpResponse,
            2 => Self::Downstream,
            3 => Self::Upstream,
            _ => return None,
        })
    }
}

/// `proxy_metric_type_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// `COUNTER` (0): only ever goes up.
    Counter,
    /// `GAUGE` (1): set or moved up and down.
    Gauge,
    /// `HISTOGRAM` (2): every recorded value is kept.
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// WASI preview1 errno values the host returns.
pub(crate) mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOSYS: i32 = 52;
    pub const NOTSUP: i32 = 58;
}

/// A header/trailer map as the ABI carries it: ordered pairs of raw bytes.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Serializes pairs as the ABI expects: a u32 count, then a (key length,
/// value length) u32 pair per entry, then each key and value followed by NUL.
pub(crate) fn serialize_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses the serialized pairs format. Like Envoy, an empty or truncated
/// buffer is an empty map rather than an error, but data that claims more
/// bytes than it has is rejected so guest bugs are visible.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Pairs> {
    if bytes.len() < 4 {
        return Some(Vec::new());
    }
    let count = u32::from_le_bytes(bytes[0..4].try_into().ok()?) as usize;
    let mut lens = Vec::with_capacity(count.min(1024));
    let mut p = 4usize;
    for _ in 0..count {
        let k = u32::from_le_bytes(bytes.get(p..p + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(p + 4..p + 8)?.try_into().ok()?) as usize;
        lens.push((k, v));
        p += 8;
    }
    let mut pairs = Vec::with_capacity(lens.len());
    for (k, v) in lens {
        let key = bytes.get(p..p + k)?.to_vec();
        p += k + 1;
        let value = bytes.get(p..p + v)?.to_vec();
        p += v + 1;
        pairs.push((key, value));
    }
    if p > bytes.len() {
        return None;
    }
    Some(pairs)
}

/// Converts test-supplied string pairs into the internal byte form.
pub(crate) fn pairs_from_strs(pairs: &[(&str, &str)]) -> Pairs {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Converts internal byte pairs into strings for inspection (lossy on bad UTF-8).
pub(crate) fn pairs_to_strings(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_matches_spec_example() {
        let pairs = pairs_from_strs(&[("a", "1"), ("b", "22")]);
        let bytes = serialize_pairs(&pairs);
        assert_eq!(
            bytes,
            [
                2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'1', 0, b'b',
                0, b'2', b'2', 0
            ]
        );
        assert_eq!(deserialize_pairs(&bytes), Some(pairs));
    }

    #[test]
    fn empty_and_truncated_maps() {
        assert_eq!(deserialize_pairs(&[]), Some(vec![]));
        assert_eq!(deserialize_pairs(&[0]), Some(vec![]));
        assert_eq!(deserialize_pairs(&[0, 0, 0, 0]), Some(vec![]));
        assert_eq!(deserialize_pairs(&[1, 0, 0, 0, 5, 0, 0, 0]), None);
    }
}
