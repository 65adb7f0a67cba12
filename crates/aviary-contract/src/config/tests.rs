//! Reading, writing and compiling together.

use crate::config::{parse_and_compile, ConfigError, PluginConfig};

/// Found by fuzz/ (`config`): a `via: "envoy"` shadow was written with the plugin-only
/// fields at their defaults, which the reader rejects, so the driver could not write it.
#[test]
fn configs_read_back_as_written() -> Result<(), ConfigError> {
    for raw in [
        r#"{"versions":[{"name":"a","weight":10000},{"name":"b","weight":0}],
            "shadow":{"via":"envoy","targets":[{"version":"b","cluster":"b","mirrorHeader":"x-m"}],"share":10000}}"#,
        r#"{"versions":[{"name":"a","weight":10000},{"name":"b","weight":0}],
            "shadow":{"targets":[{"version":"b","cluster":"b"}],"share":500,"timeoutMs":1000,"maxInFlight":8,"markHeader":"x-s"}}"#,
    ] {
        let cfg = PluginConfig::from_json(raw.as_bytes())?;
        let written = cfg.to_json();
        assert_eq!(
            PluginConfig::from_json(written.as_bytes())?,
            cfg,
            "{written}"
        );
        parse_and_compile(written.as_bytes())?;
    }
    Ok(())
}
