//! The Prometheus text exposition format (version 0.0.4), as Envoy's `/stats/prometheus`
//! writes it.

use crate::error::{ParseError, SyntaxError};

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Optional timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text exposition format (version 0.0.4): `# HELP`/`# TYPE` and other
/// comments are skipped; label values may contain escaped `\\`, `\"` and `\n`; values may be
/// `NaN`, `+Inf`, `-Inf` or any float notation, and an integer timestamp may follow.
pub fn parse_prometheus_text(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|error| ParseError { line: i + 1, error })?;
        out.push(sample);
    }
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn skip_blanks(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

fn parse_sample(line: &str) -> Result<Sample, SyntaxError> {
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_end];
    if !name.starts_with(is_name_start) {
        return Err(SyntaxError::MetricName(truncate(line)));
    }
    let mut rest = skip_blanks(&line[name_end..]);
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value_text = fields
        .next()
        .ok_or_else(|| SyntaxError::NoValue(name.to_string()))?;
    let value =
        parse_value(value_text).ok_or_else(|| SyntaxError::Value(value_text.to_string()))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| SyntaxError::Timestamp(t.to_string()))?,
        ),
    };
    if let Some(extra) = fields.next() {
        return Err(SyntaxError::Trailing(extra.to_string()));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Parses `name="value",...}` and returns what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, SyntaxError> {
    loop {
        s = skip_blanks(s);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let end = s.find(|c: char| !is_name_char(c)).unwrap_or(s.len());
        let key = &s[..end];
        if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) || key.contains(':') {
            return Err(SyntaxError::LabelName(truncate(s)));
        }
        s = skip_blanks(&s[end..]);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| SyntaxError::Equals(key.to_string()))?;
        s = skip_blanks(s);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| SyntaxError::OpenQuote(key.to_string()))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(SyntaxError::Unterminated(key.to_string())),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => {
                        return Err(SyntaxError::Escape {
                            escape: c,
                            label: key.to_string(),
                        })
                    }
                    None => return Err(SyntaxError::Unterminated(key.to_string())),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(k, _)| k == key) {
            return Err(SyntaxError::DuplicateLabel(key.to_string()));
        }
        labels.push((key.to_string(), value));
        s = skip_blanks(&s[close + 1..]);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(SyntaxError::Separator(key.to_string()));
        }
    }
}

/// Parses a sample value as Go's `strconv.ParseFloat` would for the values exporters print.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => {
            let ok = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
            if ok {
                s.parse::<f64>().ok()
            } else {
                None
            }
        }
    }
}

/// The first 60 characters, for messages quoting a line or a body.
pub(super) fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}
