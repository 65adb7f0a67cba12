//! The plugin config reader and compiler, fed raw bytes as Envoy hands them to `on_configure`.
//! It must never panic: any input is either a compiled config or a `ConfigError`.
#![no_main]

use aviary_contract::config::{parse_and_compile, PluginConfig};
use libfuzzer_sys::fuzz_target;

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
    // The driver writes configs with `to_json`; the plugin must read back exactly what was written,
    // and accept it whenever it accepted the original.
    let written = cfg.to_json();
    let reread = PluginConfig::from_json(written.as_bytes());
    assert_eq!(reread.as_ref().ok(), Some(&cfg), "to_json/from_json round trip: {written}");
    assert_eq!(
        parse_and_compile(written.as_bytes()).is_ok(),
        compiled.is_ok(),
        "a re-serialised config compiles differently: {written}"
    );
});
