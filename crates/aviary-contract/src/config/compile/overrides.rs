//! The override header: trusted sources may force a version.

use crate::cidr::Cidr;
use crate::config::compile::checks::check_header_name;
use crate::config::error::ConfigError;
use crate::config::schema::PluginConfig;

#[derive(Debug, Clone)]
pub struct CompiledOverride {
    pub header: String,
    pub trusted: Vec<Cidr>,
}

pub fn override_(cfg: &PluginConfig) -> Result<Option<CompiledOverride>, ConfigError> {
    let Some(o) = &cfg.override_ else {
        return Ok(None);
    };
    check_header_name("override.header".into(), &o.header)?;
    if o.header == cfg.routing_header {
        return Err(ConfigError::new(
            "override.header",
            "must differ from routingHeader, which clients may never set",
        ));
    }
    if o.trusted_cidrs.is_empty() {
        return Err(ConfigError::new(
            "override.trustedCidrs",
            "list the source ranges allowed to force a version, e.g. [\"10.0.0.0/8\"]",
        ));
    }
    let trusted = o
        .trusted_cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Cidr::parse(c).ok_or_else(|| {
                ConfigError::new(
                    format!("override.trustedCidrs[{i}]"),
                    format!("`{c}` is not a CIDR such as 10.0.0.0/8 or ::1/128"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(CompiledOverride {
        header: o.header.clone(),
        trusted,
    }))
}
