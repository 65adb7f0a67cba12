//! Trusted peers (`trustedCidrs`) and the override header: trusted peers may force a version.

use crate::cidr::Cidr;
use crate::config::compile::checks::check_header_name;
use crate::config::error::ConfigError;
use crate::config::schema::PluginConfig;

#[derive(Debug, Clone)]
pub struct CompiledOverride {
    pub header: String,
    pub trusted: Vec<Cidr>,
}

/// The top-level `trustedCidrs`.
pub fn trusted(cfg: &PluginConfig) -> Result<Vec<Cidr>, ConfigError> {
    cidrs(&cfg.trusted_cidrs, "trustedCidrs")
}

fn cidrs(list: &[String], field: &str) -> Result<Vec<Cidr>, ConfigError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let Some(cidr) = Cidr::parse(c) else {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                format!("`{c}` is not a CIDR such as 10.0.0.0/8 or ::1/128"),
            ));
        };
        out.push(cidr);
    }
    Ok(out)
}

/// The override; its trusted ranges are its own `trustedCidrs`, else the top-level ones.
pub fn override_(
    cfg: &PluginConfig,
    top: &[Cidr],
) -> Result<Option<CompiledOverride>, ConfigError> {
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
    let trusted = if o.trusted_cidrs.is_empty() {
        top.to_vec()
    } else {
        cidrs(&o.trusted_cidrs, "override.trustedCidrs")?
    };
    if trusted.is_empty() {
        return Err(ConfigError::new(
            "override.trustedCidrs",
            "list the source ranges allowed to force a version, e.g. [\"10.0.0.0/8\"], here or in the top-level `trustedCidrs`",
        ));
    }
    Ok(Some(CompiledOverride {
        header: o.header.clone(),
        trusted,
    }))
}
