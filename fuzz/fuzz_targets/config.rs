//! The plugin config reader and compiler, fed raw bytes as Envoy hands them to `on_configure`.
//! It must never panic: any input is either a compiled config or a `ConfigError`. Beyond that,
//! a config that was read must read back from its own `to_json` (which the driver writes) and
//! compile the same way.
#![no_main]

use aviary_contract::config::{parse_and_compile, PluginConfig};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Equal JSON, except that floats may differ in their last bits: serde_json's default float
/// parser (without its `float_roundtrip` feature) is not correctly rounded for long mantissas
/// or large exponents, so `3.33333333e143` read, written and read again can move by an ulp.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let compiled = parse_and_compile(data);
    let Ok(cfg) = PluginConfig::from_json(data) else {
        assert!(compiled.is_err(), "compiled a config the reader rejects");
        return;
    };
    // The error text is what the plugin logs; building it must not panic either.
    if let Err(e) = &compiled {
        let _ = e.to_string();
    }
    let written = cfg.to_json();
    let reread = match PluginConfig::from_json(written.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("to_json wrote a config the reader rejects: {e}\n{written}"),
    };
    let json = |c: &PluginConfig| serde_json::to_value(c).unwrap_or_default();
    assert!(
        same(&json(&reread), &json(&cfg)),
        "to_json/from_json round trip changed the config:\n{written}\n{}",
        reread.to_json()
    );
    assert_eq!(
        parse_and_compile(written.as_bytes()).is_ok(),
        compiled.is_ok(),
        "a re-serialised config compiles differently: {written}"
    );
});
