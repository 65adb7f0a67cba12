//! The semantic checks of a rollout spec: every problem at once, each with its field path.

use std::collections::BTreeSet;

use aviary_contract::units::percent_to_bps;

use super::{DriftMetric, HeaderValue, RolloutSpec, API_VERSION, KIND};
use crate::error::SpecError;

impl RolloutSpec {
    /// Every semantic problem, each with its field path. Empty means valid.
    pub fn validate(&self) -> Vec<SpecError> {
        let mut errs = Vec::new();
        let mut err = |path: &str, msg: String| errs.push(SpecError::new(path, msg));
        if self.api_version != API_VERSION {
            err(
                "apiVersion",
                format!("must be `{API_VERSION}`, found `{}`", self.api_version),
            );
        }
        if self.kind != KIND {
            err("kind", format!("must be `{KIND}`, found `{}`", self.kind));
        }
        if !valid_name(&self.metadata.name) {
            err(
                "metadata.name",
                "must be 1-63 characters of letters, digits, `-`, `_` or `.`".into(),
            );
        }
        let s = &self.spec;
        if let Some(svc) = &s.service {
            if *svc != s.config.plugin_config.service {
                err(
                    "spec.service",
                    format!(
                        "`{svc}` differs from pluginConfig.service `{}`; the plugin labels its metrics with the latter",
                        s.config.plugin_config.service
                    ),
                );
            }
        }
        self.validate_config(&mut err);
        if s.baseline == s.canary {
            err("spec.canary", "must differ from spec.baseline".into());
        }
        self.validate_metrics(&mut err);
        self.validate_analysis(&mut err);
        self.validate_webhooks(&mut err);
        errs
    }

    fn validate_config(&self, err: &mut impl FnMut(&str, String)) {
        let s = &self.spec;
        let c = &s.config;
        if c.ecds_file.is_none() && c.istio_wasm_plugin.is_none() && c.json_file.is_none() {
            err(
                "spec.config",
                "name at least one sink: `ecdsFile`, `istioWasmPlugin` or `jsonFile`".into(),
            );
        }
        if c.ecds_file.is_some() && c.wasm_file.is_none() {
            err(
                "spec.config.wasmFile",
                "required with `ecdsFile`: the path of aviary.wasm the ECDS config loads".into(),
            );
        }
        if c.filter_name.is_empty() {
            err("spec.config.filterName", "must not be empty".into());
        }
        if let Some(i) = &c.istio_wasm_plugin {
            if i.path.is_empty() {
                err(
                    "spec.config.istioWasmPlugin.path",
                    "must not be empty".into(),
                );
            }
            if !valid_name(&i.name) {
                err(
                    "spec.config.istioWasmPlugin.name",
                    "must be a Kubernetes resource name".into(),
                );
            }
            if !valid_name(&i.namespace) {
                err(
                    "spec.config.istioWasmPlugin.namespace",
                    "must be a Kubernetes namespace name".into(),
                );
            }
            if i.image.is_empty() {
                err(
                    "spec.config.istioWasmPlugin.image",
                    "give the plugin's image, e.g. oci://registry/aviary:1.0".into(),
                );
            }
        }
        let pc = &c.plugin_config;
        let at = "spec.config.pluginConfig";
        if let Err(e) = pc.compile(0) {
            let e = SpecError::plugin(at, e);
            err(&e.path, e.message);
        }
        if pc.kill_switch.is_some() {
            err(
                &format!("{at}.killSwitch"),
                "must be unset at the start of a rollout; the driver sets it on rollback".into(),
            );
        }
        let names: Vec<&str> = pc.versions.iter().map(|v| v.name.as_str()).collect();
        for (field, name) in [("baseline", &s.baseline), ("canary", &s.canary)] {
            if !names.contains(&name.as_str()) {
                err(
                    &format!("spec.{field}"),
                    format!(
                        "`{name}` is not a version in pluginConfig.versions ({})",
                        names.join(", ")
                    ),
                );
            }
        }
        if names.first().is_some_and(|f| *f != s.baseline) && names.contains(&s.baseline.as_str()) {
            err(
                "spec.baseline",
                format!(
                    "the baseline must be the first version in pluginConfig.versions (found `{}` first)",
                    names[0]
                ),
            );
        }
        // An empty list is reported by the schedule checks; here the list only held 100%.
        let listed = s
            .analysis
            .step_weights
            .as_ref()
            .is_none_or(|w| !w.is_empty());
        if self.schedule_bps().is_empty() && self.pool_bps() > 0 && listed {
            err(
                "spec.analysis.stepWeights",
                "the schedule has no step below 100%; list at least one weight to bake".into(),
            );
        }
        if s.analysis.shadow.is_some() {
            let has_target = pc
                .shadow
                .as_ref()
                .is_some_and(|x| x.targets.iter().any(|t| t.version == s.canary));
            if !has_target {
                err(
                    "spec.analysis.shadow",
                    format!(
                        "the shadow phase needs pluginConfig.shadow.targets to include version `{}` (with compare set)",
                        s.canary
                    ),
                );
            } else if pc.shadow.as_ref().is_some_and(|x| x.compare.is_none()) {
                err(
                    &format!("{at}.shadow.compare"),
                    "the shadow phase judges agreement; set compare.labelPointer or scorePointer"
                        .into(),
                );
            }
        }
        if s.analysis.gates.drift.is_some() && pc.scores.is_none() {
            err(
                "spec.analysis.gates.drift",
                "needs pluginConfig.scores so the plugin exports score histograms".into(),
            );
        }
    }

    fn validate_metrics(&self, err: &mut impl FnMut(&str, String)) {
        let m = &self.spec.metrics;
        // With both, Aviary's metrics come live from the admin endpoints and only the custom
        // KPI queries go to Prometheus, so fast-track checks never wait for a scrape.
        if m.envoy_admin.is_empty() && m.prometheus.is_none() {
            err(
                "spec.metrics",
                "give `envoyAdmin` (list of admin URLs) or `prometheus` (url)".into(),
            );
        }
        for (i, u) in m.envoy_admin.iter().enumerate() {
            if !is_http_url(u) {
                err(
                    &format!("spec.metrics.envoyAdmin[{i}]"),
                    format!("`{u}` is not an http(s) URL such as http://127.0.0.1:9901"),
                );
            }
        }
        if let Some(p) = &m.prometheus {
            if !is_http_url(&p.url) {
                err(
                    "spec.metrics.prometheus.url",
                    format!("`{}` is not an http(s) URL", p.url),
                );
            }
        }
        if m.timeout.ms() == 0 {
            err("spec.metrics.timeout", "must be positive".into());
        }
    }

    fn validate_analysis(&self, err: &mut impl FnMut(&str, String)) {
        let a = &self.spec.analysis;
        let at = |f: &str| format!("spec.analysis.{f}");
        if a.interval.ms() < 100 {
            err(&at("interval"), "must be at least 100ms".into());
        }
        if let Some(f) = a.fast_interval {
            if f.ms() < 100 {
                err(&at("fastInterval"), "must be at least 100ms".into());
            } else if f > a.interval {
                err(
                    &at("fastInterval"),
                    format!("must not exceed interval ({})", a.interval),
                );
            }
        }
        if a.threshold == 0 {
            err(&at("threshold"), "must be at least 1".into());
        }
        if a.max_hold < a.interval {
            err(
                &at("maxHold"),
                format!("must be at least one interval ({})", a.interval),
            );
        }
        if a.min_samples == 0 {
            err(
                &at("minSamples"),
                "must be at least 1; the driver never promotes without data".into(),
            );
        }
        if !(a.alpha > 0.0 && a.alpha < 0.5) {
            err(&at("alpha"), "must be between 0 and 0.5 (e.g. 0.01)".into());
        }
        match (&a.step_weights, a.step_weight, a.max_weight) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => err(
                &at("stepWeights"),
                "give either `stepWeights` or `stepWeight` (+ `maxWeight`), not both".into(),
            ),
            (Some(ws), None, None) => {
                if ws.is_empty() {
                    err(&at("stepWeights"), "list at least one weight".into());
                }
                let mut prev: Option<f64> = None;
                for (i, &w) in ws.iter().enumerate() {
                    let p = format!("spec.analysis.stepWeights[{i}]");
                    if percent_to_bps(w).is_none() || w <= 0.0 {
                        err(
                            &p,
                            format!(
                                "{w} is not a percentage in (0, 100] with at most two decimals"
                            ),
                        );
                    } else if prev.is_some_and(|p| w <= p) {
                        err(&p, "weights must increase".into());
                    }
                    prev = Some(w);
                }
            }
            (None, None, Some(_)) => {
                err(&at("maxWeight"), "only meaningful with `stepWeight`".into())
            }
            (None, Some(step), max) => {
                if percent_to_bps(step).is_none() || step <= 0.0 {
                    err(
                        &at("stepWeight"),
                        format!("{step} is not a percentage in (0, 100] with at most two decimals"),
                    );
                }
                if let Some(m) = max {
                    if percent_to_bps(m).is_none() || m <= 0.0 {
                        err(
                            &at("maxWeight"),
                            format!(
                                "{m} is not a percentage in (0, 100] with at most two decimals"
                            ),
                        );
                    } else if m < step {
                        err(&at("maxWeight"), "must be at least stepWeight".into());
                    }
                }
            }
            (None, None, None) => {}
        }
        if let Some(sh) = &a.shadow {
            if sh.duration.ms() == 0 {
                err(&at("shadow.duration"), "must be positive".into());
            }
            if sh.min_comparisons == 0 {
                err(&at("shadow.minComparisons"), "must be at least 1".into());
            }
            if !(sh.min_agreement > 0.0 && sh.min_agreement <= 1.0) {
                err(&at("shadow.minAgreement"), "must be in (0, 1]".into());
            }
        }
        self.validate_gates(err);
    }

    fn validate_gates(&self, err: &mut impl FnMut(&str, String)) {
        let g = &self.spec.analysis.gates;
        let at = |f: &str| format!("spec.analysis.gates.{f}");
        let alpha_ok = |a: Option<f64>| a.is_none_or(|a| a > 0.0 && a < 0.5);
        if let Some(e) = &g.error_rate {
            if e.max.is_none() && e.max_relative.is_none() {
                err(
                    &at("errorRate"),
                    "give `max` (absolute ceiling) and/or `maxRelative`; set `errorRate: null` to disable".into(),
                );
            }
            if let Some(m) = e.max {
                if !(m > 0.0 && m < 1.0) {
                    err(
                        &at("errorRate.max"),
                        "must be a rate in (0, 1), e.g. 0.01".into(),
                    );
                }
            }
            if let Some(r) = e.max_relative {
                if !(r.is_finite() && r >= 1.0) {
                    err(
                        &at("errorRate.maxRelative"),
                        "must be a ratio of at least 1 (canary rate / baseline rate), e.g. 2"
                            .into(),
                    );
                }
            }
            if !alpha_ok(e.alpha) {
                err(&at("errorRate.alpha"), "must be in (0, 0.5)".into());
            }
            if e.fast_track && self.spec.analysis.fast_interval.is_none() {
                err(
                    &at("errorRate.fastTrack"),
                    "needs spec.analysis.fastInterval (e.g. 1s), or set fastTrack: false".into(),
                );
            }
        }
        if let Some(l) = &g.latency {
            if l.percentiles().is_empty() {
                err(&at("latency"), "give at least one of p50, p95, p99".into());
            }
            for (label, _, p) in l.percentiles() {
                let base = format!("latency.{label}");
                if p.max_ms.is_none() && p.max_regression.is_none() {
                    err(&at(&base), "give `maxMs` and/or `maxRegression`".into());
                }
                if let Some(m) = p.max_ms {
                    if !(m.is_finite() && m > 0.0) {
                        err(&at(&format!("{base}.maxMs")), "must be positive".into());
                    }
                }
                if let Some(r) = p.max_regression {
                    if !(r.is_finite() && r >= 1.0) {
                        err(
                            &at(&format!("{base}.maxRegression")),
                            "must be a ratio of at least 1 (canary / baseline), e.g. 1.2".into(),
                        );
                    }
                }
            }
            if !alpha_ok(l.alpha) {
                err(&at("latency.alpha"), "must be in (0, 0.5)".into());
            }
        }
        if let Some(d) = &g.drift {
            let ok = match d.metric {
                DriftMetric::Psi => d.max.is_finite() && d.max > 0.0,
                DriftMetric::Js => d.max > 0.0 && d.max <= 1.0,
            };
            if !ok {
                err(
                    &at("drift.max"),
                    "must be positive (PSI, e.g. 0.2) or in (0, 1] (JS in bits, e.g. 0.1)".into(),
                );
            }
            if !alpha_ok(d.alpha) {
                err(&at("drift.alpha"), "must be in (0, 0.5)".into());
            }
        }
        if let Some(s) = &g.shadow_agreement {
            if !(s.min > 0.0 && s.min <= 1.0) {
                err(&at("shadowAgreement.min"), "must be in (0, 1]".into());
            }
            if self.spec.analysis.shadow.is_none() {
                err(
                    &at("shadowAgreement"),
                    "judged in the shadow phase; add spec.analysis.shadow".into(),
                );
            }
            if !alpha_ok(s.alpha) {
                err(&at("shadowAgreement.alpha"), "must be in (0, 0.5)".into());
            }
        }
        let mut seen = BTreeSet::new();
        for (i, c) in g.custom.iter().enumerate() {
            let p = |f: &str| format!("spec.analysis.gates.custom[{i}].{f}");
            if !valid_name(&c.name) {
                err(
                    &p("name"),
                    "must be 1-63 letters, digits, `-`, `_` or `.`".into(),
                );
            } else if !seen.insert(c.name.as_str()) {
                err(&p("name"), format!("`{}` is used twice", c.name));
            }
            if c.query.trim().is_empty() {
                err(&p("query"), "must be a PromQL expression".into());
            }
            if c.min.is_none() && c.max.is_none() {
                err(
                    &format!("spec.analysis.gates.custom[{i}]"),
                    "give `min` and/or `max`".into(),
                );
            }
            if let (Some(lo), Some(hi)) = (c.min, c.max) {
                if lo > hi {
                    err(&p("min"), "must not exceed max".into());
                }
            }
            if self.spec.metrics.prometheus.is_none() {
                err(
                    &p("query"),
                    "custom queries need spec.metrics.prometheus (Envoy admin cannot run PromQL)"
                        .into(),
                );
            }
        }
    }

    fn validate_webhooks(&self, err: &mut impl FnMut(&str, String)) {
        let mut seen = BTreeSet::new();
        for (i, w) in self.spec.webhooks.iter().enumerate() {
            let p = |f: &str| format!("spec.webhooks[{i}].{f}");
            if w.name.is_empty() {
                err(&p("name"), "must not be empty".into());
            } else if !seen.insert(w.name.as_str()) {
                err(&p("name"), format!("`{}` is used twice", w.name));
            }
            match &w.url_from {
                Some(_) if !w.url.is_empty() => err(
                    &p("urlFrom"),
                    "give either `url` or `urlFrom`, not both".into(),
                ),
                Some(r) if !r.is_valid() => err(
                    &p("urlFrom"),
                    "give exactly one of `env: NAME` or `file: PATH`".into(),
                ),
                Some(_) => {}
                None if !is_http_url(&w.url) => {
                    err(&p("url"), format!("`{}` is not an http(s) URL", w.url))
                }
                None => {}
            }
            for (name, value) in &w.headers {
                if let HeaderValue::From(r) = value {
                    if !r.is_valid() {
                        err(
                            &p(&format!("headers.{name}")),
                            "give exactly one of `env: NAME` or `file: PATH`".into(),
                        );
                    }
                }
            }
            if !w.format.is_json() && w.events.iter().any(|e| e.is_confirmation()) {
                err(
                    &p("format"),
                    format!(
                        "`{}` hooks post messages and cannot answer confirmation events",
                        w.format.as_str()
                    ),
                );
            }
            if w.events.is_empty() {
                err(&p("events"), "list at least one event".into());
            }
            if w.timeout.ms() == 0 {
                err(&p("timeout"), "must be positive".into());
            }
            if w.retries > 10 {
                err(&p("retries"), "at most 10".into());
            }
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_http_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
}
