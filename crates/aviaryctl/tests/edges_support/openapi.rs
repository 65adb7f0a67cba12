//! A validator for Kubernetes CRD (OpenAPI v3 structural) schemas, for the subset Istio's
//! CRDs use: `type`, `properties`, `required`, `enum`, `items`, `additionalProperties`,
//! `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string`, `nullable`,
//! `oneOf`/`anyOf`, `pattern`, `format: int32/int64`, and the length, range, item and
//! property-count bounds. CEL rules (`x-kubernetes-validations`) are not evaluated.
//!
//! Unlike the API server, which silently prunes unknown fields, this reports them: a field
//! the server would drop is a bug in whatever rendered the manifest.

use serde_json::Value;

/// A CRD's schema for one served version.
pub struct CrdSchema {
    pub group: String,
    pub kind: String,
    pub version: String,
    pub schema: Value,
}

impl CrdSchema {
    /// Reads the `openAPIV3Schema` of `version` from a CRD YAML document.
    pub fn from_crd_yaml(text: &str, version: &str) -> Result<CrdSchema, String> {
        let crd: Value = serde_yaml::from_str(text).map_err(|e| format!("CRD YAML: {e}"))?;
        let spec = &crd["spec"];
        let schema = spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == version)
            .map(|v| v["schema"]["openAPIV3Schema"].clone())
            .filter(|s| s.is_object())
            .ok_or_else(|| format!("no version {version} with an openAPIV3Schema"))?;
        Ok(CrdSchema {
            group: spec["group"].as_str().unwrap_or_default().to_string(),
            kind: spec["names"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            version: version.to_string(),
            schema,
        })
    }

    /// Validates a whole manifest: `apiVersion`, `kind`, `metadata.name`, then the schema.
    /// Returns every problem as `path: message`.
    pub fn validate(&self, doc: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let api = format!("{}/{}", self.group, self.version);
        if doc["apiVersion"] != api.as_str() {
            errs.push(format!(
                "apiVersion: expected {api}, got {}",
                doc["apiVersion"]
            ));
        }
        if doc["kind"] != self.kind.as_str() {
            errs.push(format!("kind: expected {}, got {}", self.kind, doc["kind"]));
        }
        match doc["metadata"]["name"].as_str() {
            Some(n) if is_dns_subdomain(n) => {}
            other => errs.push(format!("metadata.name: not a DNS subdomain: {other:?}")),
        }
        if let Some(ns) = doc["metadata"].get("namespace") {
            if !ns.as_str().is_some_and(is_dns_label) {
                errs.push(format!("metadata.namespace: not a DNS label: {ns}"));
            }
        }
        // The root schema describes spec/status; apiVersion, kind and metadata are implicit.
        let mut body = doc.clone();
        if let Some(o) = body.as_object_mut() {
            for k in ["apiVersion", "kind", "metadata"] {
                o.remove(k);
            }
        }
        validate(&self.schema, &body, "", &mut errs);
        errs
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `v` passes a `oneOf`/`anyOf`/`not` branch. Branches of a structural schema only
/// validate values; they never prune fields, so unknown fields are not errors there.
fn value_valid(branch: &Value, v: &Value, path: &str) -> bool {
    let mut branch = branch.clone();
    if let Some(o) = branch.as_object_mut() {
        o.entry("x-kubernetes-preserve-unknown-fields")
            .or_insert(Value::Bool(true));
    }
    let mut sub = Vec::new();
    validate(&branch, v, path, &mut sub);
    sub.is_empty()
}

/// Validates `v` at `path` against `schema`, appending problems to `errs`.
pub fn validate(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if schema["nullable"] == true {
            return;
        }
        errs.push(format!("{at}: null is not allowed"));
        return;
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema[key].as_array() {
            let passing = alts.iter().filter(|alt| value_valid(alt, v, path)).count();
            let ok = if key == "oneOf" {
                passing == 1
            } else {
                passing >= 1
            };
            if !ok {
                errs.push(format!("{at}: matches {passing} of the {key} alternatives"));
            }
        }
    }
    if let Some(not) = schema.get("not") {
        if value_valid(not, v, path) {
            errs.push(format!("{at}: matches a schema it must not match"));
        }
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(v.is_string() || type_name(v) == "integer") {
            errs.push(format!(
                "{at}: expected an integer or a string, got {}",
                type_name(v)
            ));
        }
        return;
    }
    if let Some(t) = schema["type"].as_str() {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            errs.push(format!("{at}: expected {t}, got {actual}"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            errs.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(allowed.clone())
            ));
        }
    }
    match v {
        Value::String(s) => check_string(schema, s, at, errs),
        Value::Number(n) => check_number(schema, n, at, errs),
        Value::Array(items) => {
            let len = items.len() as u64;
            if schema["maxItems"].as_u64().is_some_and(|m| len > m) {
                errs.push(format!(
                    "{at}: {len} items, at most {} allowed",
                    schema["maxItems"]
                ));
            }
            if schema["minItems"].as_u64().is_some_and(|m| len < m) {
                errs.push(format!(
                    "{at}: {len} items, at least {} required",
                    schema["minItems"]
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item_schema, item, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(map) => {
            for req in schema["required"].as_array().into_iter().flatten() {
                if let Some(k) = req.as_str() {
                    if !map.contains_key(k) {
                        errs.push(format!("{}: required", join(path, k)));
                    }
                }
            }
            let n = map.len() as u64;
            if schema["maxProperties"].as_u64().is_some_and(|m| n > m) {
                errs.push(format!(
                    "{at}: {n} properties, at most {}",
                    schema["maxProperties"]
                ));
            }
            let props = schema["properties"].as_object();
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            for (k, child) in map {
                let child_path = join(path, k);
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    validate(p, child, &child_path, errs);
                } else if let Some(extra) = schema.get("additionalProperties") {
                    match extra {
                        Value::Bool(true) => {}
                        Value::Bool(false) => errs.push(format!("{child_path}: unknown field")),
                        s => validate(s, child, &child_path, errs),
                    }
                } else if !preserve {
                    errs.push(format!(
                        "{child_path}: unknown field (the API server would prune it)"
                    ));
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn check_string(schema: &Value, s: &str, at: &str, errs: &mut Vec<String>) {
    let len = s.chars().count() as u64;
    if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
        errs.push(format!("{at}: longer than {}", schema["maxLength"]));
    }
    if schema["minLength"].as_u64().is_some_and(|m| len < m) {
        errs.push(format!("{at}: shorter than {}", schema["minLength"]));
    }
    if let Some(p) = schema["pattern"].as_str() {
        match regex_lite::Regex::new(p) {
            Ok(re) if re.is_match(s) => {}
            Ok(_) => errs.push(format!("{at}: {s:?} does not match {p}")),
            Err(e) => errs.push(format!("{at}: schema pattern {p} does not compile: {e}")),
        }
    }
}

fn check_number(schema: &Value, n: &serde_json::Number, at: &str, errs: &mut Vec<String>) {
    let x = n.as_f64().unwrap_or(f64::NAN);
    if schema["maximum"].as_f64().is_some_and(|m| x > m) {
        errs.push(format!("{at}: {x} above the maximum {}", schema["maximum"]));
    }
    if schema["minimum"].as_f64().is_some_and(|m| x < m) {
        errs.push(format!("{at}: {x} below the minimum {}", schema["minimum"]));
    }
    let range = match schema["format"].as_str() {
        Some("int32") => Some((f64::from(i32::MIN), f64::from(i32::MAX))),
        Some("int64") => Some((i64::MIN as f64, i64::MAX as f64)),
        _ => None,
    };
    if let Some((lo, hi)) = range {
        if !(lo..=hi).contains(&x) {
            errs.push(format!("{at}: {x} out of {} range", schema["format"]));
        }
    }
}
