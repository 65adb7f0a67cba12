//! Pulls prediction fields out of JSON response bodies by JSON pointer.

use aviary_contract::metrics::{ScoreSkipped, Uncompared};
use serde_json::Value;

/// Why a body could not yield the fields asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    NonJson,
    FieldMissing,
    BodyTooLarge,
}

impl Unusable {
    /// The `reason` a primary's score is counted as skipped.
    pub fn skipped(self) -> ScoreSkipped {
        match self {
            Unusable::NonJson => ScoreSkipped::NonJson,
            Unusable::FieldMissing => ScoreSkipped::FieldMissing,
            Unusable::BodyTooLarge => ScoreSkipped::BodyTooLarge,
        }
    }

    /// The `reason` a mirrored request is counted as uncompared.
    pub fn uncompared(self) -> Uncompared {
        match self {
            Unusable::NonJson => Uncompared::NonJson,
            Unusable::FieldMissing => Uncompared::FieldMissing,
            Unusable::BodyTooLarge => Uncompared::BodyTooLarge,
        }
    }
}

/// What was read from one body: the label and/or score, when their pointers were configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fields {
    pub label: Option<String>,
    pub score: Option<f64>,
}

/// Reads the configured pointers from `body`. A configured pointer that is absent, or a score
/// that is not a number, is `FieldMissing`; a label may be a string, number or boolean.
pub fn fields(
    body: &[u8],
    label_pointer: Option<&str>,
    score_pointer: Option<&str>,
) -> Result<Fields, Unusable> {
    from_value(&parse(body)?, label_pointer, score_pointer)
}

pub fn parse(body: &[u8]) -> Result<Value, Unusable> {
    serde_json::from_slice(body).map_err(|_| Unusable::NonJson)
}

pub fn from_value(
    v: &Value,
    label_pointer: Option<&str>,
    score_pointer: Option<&str>,
) -> Result<Fields, Unusable> {
    let mut out = Fields::default();
    if let Some(p) = label_pointer {
        out.label = Some(match v.pointer(p) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => i.to_string(),
                (None, Some(f)) => aviary_contract::units::fmt_decimal(f),
                _ => return Err(Unusable::FieldMissing),
            },
            Some(Value::Bool(b)) => b.to_string(),
            _ => return Err(Unusable::FieldMissing),
        });
    }
    if let Some(p) = score_pointer {
        out.score = Some(
            v.pointer(p)
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite())
                .ok_or(Unusable::FieldMissing)?,
        );
    }
    Ok(out)
}

/// Index of the bin a score falls in: the first bound it does not exceed, else the +Inf bin.
pub fn bin_index(bounds: &[f64], score: f64) -> usize {
    bounds.partition_point(|b| *b < score)
}

/// A body accumulated from streamed chunks, up to a limit.
#[derive(Debug, Default)]
pub struct BodyBuffer {
    pub data: Vec<u8>,
    pub overflowed: bool,
}

impl BodyBuffer {
    /// Appends a chunk; past `limit` the buffer is dropped and marked overflowed.
    pub fn push(&mut self, chunk: &[u8], limit: usize) {
        if self.overflowed {
            return;
        }
        if self.data.len() + chunk.len() > limit {
            self.overflowed = true;
            self.data = Vec::new();
        } else {
            self.data.extend_from_slice(chunk);
        }
    }

    /// The parsed body, if it fit in the buffer's limit and is JSON.
    pub fn parse(&self) -> Result<Value, Unusable> {
        if self.overflowed {
            return Err(Unusable::BodyTooLarge);
        }
        parse(&self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction() {
        let body = br#"{"prediction":{"label":"cat","score":0.83,"class":3}}"#;
        let f = fields(body, Some("/prediction/label"), Some("/prediction/score"));
        assert_eq!(
            f,
            Ok(Fields {
                label: Some("cat".into()),
                score: Some(0.83)
            })
        );
        assert_eq!(
            fields(body, Some("/prediction/class"), None).map(|f| f.label),
            Ok(Some("3".into()))
        );
        assert_eq!(
            fields(body, Some("/nope"), None),
            Err(Unusable::FieldMissing)
        );
        assert_eq!(
            fields(body, None, Some("/prediction/label")),
            Err(Unusable::FieldMissing)
        );
        assert_eq!(fields(b"<html>", None, None), Err(Unusable::NonJson));
    }

    #[test]
    fn bins() {
        let b = [0.1, 0.5, 1.0];
        assert_eq!(bin_index(&b, 0.0), 0);
        assert_eq!(bin_index(&b, 0.1), 0);
        assert_eq!(bin_index(&b, 0.11), 1);
        assert_eq!(bin_index(&b, 1.0), 2);
        assert_eq!(bin_index(&b, 7.0), 3);
    }

    #[test]
    fn buffer_limit() {
        let mut b = BodyBuffer::default();
        b.push(b"{\"a\":", 8);
        b.push(b"1}", 8);
        assert_eq!(b.data, b"{\"a\":1}");
        b.push(b"xx", 8);
        assert!(b.overflowed);
        assert!(b.data.is_empty());
        assert_eq!(b.parse(), Err(Unusable::BodyTooLarge));
    }
}
