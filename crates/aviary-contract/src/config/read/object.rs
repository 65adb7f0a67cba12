//! Typed access to one JSON object of the config, each error naming the field's path.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::error::ConfigError;

pub type R<T> = Result<T, ConfigError>;

pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn obj<'a>(v: &'a Value, path: String, fields: &[&str]) -> R<Obj<'a>> {
    let Value::Object(map) = v else {
        return Err(ConfigError::new(
            path,
            format!("expected an object, found {}", type_name(v)),
        ));
    };
    if let Some(k) = map.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(ConfigError::new(
            join(&path, k),
            format!(
                "unknown field; the known fields here are: {}",
                fields.join(", ")
            ),
        ));
    }
    Ok(Obj { map, path })
}

impl<'a> Obj<'a> {
    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, want: &str, v: &Value) -> ConfigError {
        ConfigError::new(
            self.at(key),
            format!("expected {want}, found {}", type_name(v)),
        )
    }

    pub fn opt_str(&self, key: &str) -> R<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    pub fn str(&self, key: &str) -> R<String> {
        self.opt_str(key)?
            .ok_or_else(|| ConfigError::new(self.at(key), "missing; this field is required"))
    }

    pub fn opt_bool(&self, key: &str) -> R<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    pub fn opt_u32(&self, key: &str) -> R<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    ConfigError::new(self.at(key), format!("expected a whole number, found {n}"))
                }),
            Some(v) => Err(self.wrong(key, "a whole number", v)),
        }
    }

    pub fn opt_f64(&self, key: &str) -> R<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(v) => Err(self.wrong(key, "a number", v)),
        }
    }

    fn list(&self, key: &str) -> R<&'a [Value]> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(self.wrong(key, "a list", v)),
        }
    }

    pub fn each<T>(&self, key: &str, f: impl Fn(&Value, String) -> R<T>) -> R<Vec<T>> {
        self.list(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| f(v, format!("{}[{i}]", self.at(key))))
            .collect()
    }

    pub fn strings(&self, key: &str) -> R<Option<Vec<String>>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.each(key, |v, path| match v {
            Value::String(s) => Ok(s.clone()),
            v => Err(ConfigError::new(
                path,
                format!("expected a string, found {}", type_name(v)),
            )),
        })
        .map(Some)
    }

    pub fn str_map(&self, key: &str) -> R<BTreeMap<String, String>> {
        match self.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    v => Err(ConfigError::new(
                        format!("{}.{k}", self.at(key)),
                        format!("expected a string, found {}", type_name(v)),
                    )),
                })
                .collect(),
            Some(v) => Err(self.wrong(key, "an object of header names to values", v)),
        }
    }

    pub fn nested<T>(&self, key: &str, f: impl Fn(&Value, String) -> R<T>) -> R<Option<T>> {
        self.get(key).map(|v| f(v, self.at(key))).transpose()
    }
}

/// A list element that must be a number.
pub fn numbers(v: &Value, path: String) -> R<f64> {
    v.as_f64()
        .ok_or_else(|| ConfigError::new(path, format!("expected a number, found {}", type_name(v))))
}
