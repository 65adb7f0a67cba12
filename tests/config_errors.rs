//! Bad configs are rejected with the field path and the fix (native; the testhost tests check
//! the same through the .wasm's on_configure).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aviary_contract::config::{parse_and_compile, PluginConfig};

fn err(json: &str) -> (String, String) {
    let e = parse_and_compile(json.as_bytes()).expect_err(json);
    (e.field, e.message)
}

const V: &str = r#"[{"name":"stable","weight":9000},{"name":"canary","weight":1000}]"#;

#[test]
fn errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            &format!(
                r#"{{"versions":{V},"shadow":{{"via":"envoy","share":100,"targets":[{{"version":"v2","cluster":"s"}}],"compare":{{"labelPointer":"/l"}}}}}}"#
            ),
            "shadow.compare",
            "needs the plugin to send the copies",
        ),
        (
            &format!(
                r#"{{"versions":{V},"shadow":{{"via":"envoy","share":100,"timeoutMs":50,"targets":[{{"version":"v2","cluster":"s"}}]}}}}"#
            ),
            "shadow.timeoutMs",
            "does not apply",
        ),
        (
            &format!(
                r#"{{"versions":{V},"shadow":{{"share":100,"targets":[{{"version":"v2","cluster":"s","mirrorHeader":"x-m"}}]}}}}"#
            ),
            "shadow.targets[0].mirrorHeader",
            "only applies",
        ),
        (
            &format!(
                r#"{{"versions":{V},"shadow":{{"via":"istio","share":100,"targets":[{{"version":"v2","cluster":"s"}}]}}}}"#
            ),
            "shadow.via",
            "unknown value",
        ),
        (
            &format!(r#"{{"versions":{V},"metrics":{{"latencyBucketsMs":[1,5,5]}}}}"#),
            "metrics.latencyBucketsMs[2]",
            "strictly increasing",
        ),
        (
            &format!(r#"{{"versions":{V},"metrics":{{"latencyBucketsMs":[0.0001,5]}}}}"#),
            "metrics.latencyBucketsMs[0]",
            "0.001",
        ),
        (
            &format!(r#"{{"versions":{V},"metrics":{{"latencyBucketsMs":[]}}}}"#),
            "metrics.latencyBucketsMs",
            "1 to 64",
        ),
        (
            &format!(r#"{{"versions":{V},"metrics":{{"flushIntervalMs":0}}}}"#),
            "metrics.flushIntervalMs",
            "out of range",
        ),
        (
            &format!(r#"{{"versions":{V},"metrics":{{"flushMs":10}}}}"#),
            "metrics.flushMs",
            "unknown field",
        ),
        ("{", "", "not valid JSON"),
        ("[]", "", "expected an object"),
        (r#"{}"#, "versions", "missing"),
        (
            &format!(r#"{{"versions":{V},"colour":1}}"#),
            "colour",
            "unknown field",
        ),
        (
            r#"{"versions":[{"name":"stable","weight":9000},{"name":"canary","weight":12000}]}"#,
            "versions[1].weight",
            "out of range",
        ),
        (
            r#"{"versions":[{"name":"stable","weight":9000},{"name":"canary","weight":"10"}]}"#,
            "versions[1].weight",
            "expected a whole number",
        ),
        (
            r#"{"versions":[{"name":"stable","weight":9000},{"name":"canary","weight":-5}]}"#,
            "versions[1].weight",
            "whole number",
        ),
        (
            r#"{"versions":[{"name":"stable","weight":9000},{"name":"canary","weight":999}]}"#,
            "versions",
            "add up to 9999",
        ),
        (
            r#"{"versions":[{"name":"stable","weight":10000}]}"#,
            "versions",
            "at least two",
        ),
        (
            r#"{"versions":[{"name":"stable","weight":5000},{"name":"stable","weight":5000}]}"#,
            "versions[1].name",
            "listed twice",
        ),
        (
            r#"{"versions":[{"name":"st.able","weight":5000},{"name":"b","weight":5000}]}"#,
            "versions[0].name",
            "not a valid version name",
        ),
        (
            r#"{"versions":[{"name":"a","weight":5000,"percent":50},{"name":"b","weight":5000}]}"#,
            "versions[0].weight",
            "not both",
        ),
        (
            r#"{"versions":[{"name":"a","percent":12.345},{"name":"b","percent":87.655}]}"#,
            "versions[0].percent",
            "two decimals",
        ),
        (
            r#"{"versions":[{"name":"a"},{"name":"b","weight":10000}]}"#,
            "versions[0].weight",
            "missing",
        ),
        (
            &format!(r#"{{"versions":{V},"killSwitch":"v9"}}"#),
            "killSwitch",
            "not a configured version",
        ),
        (
            &format!(
                r#"{{"versions":{V},"rules":[{{"name":"r","match":[{{"header":"x"}}],"version":"canary"}}]}}"#
            ),
            "rules[0].match[0]",
            "exactly one of `exact`",
        ),
        (
            &format!(
                r#"{{"versions":{V},"rules":[{{"name":"r","match":[{{"header":"x","exact":"1","prefix":"2"}}],"version":"canary"}}]}}"#
            ),
            "rules[0].match[0]",
            "exactly one",
        ),
        (
            &format!(
                r#"{{"versions":{V},"rules":[{{"name":"r","match":[],"version":"canary"}}]}}"#
            ),
            "rules[0].match",
            "at least one condition",
        ),
        (
            &format!(
                r#"{{"versions":{V},"rules":[{{"name":"r","match":[{{"header":"x","present":true}}],"version":"canary","share":10001}}]}}"#
            ),
            "rules[0].share",
            "out of range",
        ),
        (
            &format!(
                r#"{{"versions":{V},"rules":[{{"name":"r","match":[{{"header":"X-Up","exact":"1"}}],"version":"canary"}}]}}"#
            ),
            "rules[0].match[0].header",
            "not a valid header name",
        ),
        (
            &format!(r#"{{"versions":{V},"override":{{"header":"x-force","trustedCidrs":[]}}}}"#),
            "override.trustedCidrs",
            "list the source ranges",
        ),
        (
            &format!(
                r#"{{"versions":{V},"override":{{"header":"x-force","trustedCidrs":["10.0.0.0/40"]}}}}"#
            ),
            "override.trustedCidrs[0]",
            "not a CIDR",
        ),
        (
            &format!(
                r#"{{"versions":{V},"override":{{"header":"x-aviary-version","trustedCidrs":["10.0.0.0/8"]}}}}"#
            ),
            "override.header",
            "must differ",
        ),
        (
            &format!(r#"{{"versions":{V},"sticky":{{"keys":[]}}}}"#),
            "sticky.keys",
            "at least one",
        ),
        (
            &format!(r#"{{"versions":{V},"sticky":{{"keys":[{{"header":"a","cookie":"b"}}]}}}}"#),
            "sticky.keys[0]",
            "exactly one",
        ),
        (
            &format!(
                r#"{{"versions":{V},"shadow":{{"targets":[{{"version":"v3","cluster":"c"}}]}}}}"#
            ),
            "shadow.share",
            "missing",
        ),
        (
            &format!(r#"{{"versions":{V},"shadow":{{"targets":[],"share":1}}}}"#),
            "shadow.targets",
            "at least one",
        ),
        (
            &format!(
                r#"{{"versions":{V},"shadow":{{"targets":[{{"version":"v3","cluster":"c"}}],"share":1,"timeoutMs":0}}}}"#
            ),
            "shadow.timeoutMs",
            "1 to 60000",
        ),
        (
            &format!(
                r#"{{"versions":{V},"shadow":{{"targets":[{{"version":"v3","cluster":"c"}}],"share":1,"compare":{{"labelPointer":"prediction"}}}}}}"#
            ),
            "shadow.compare.labelPointer",
            "JSON pointer",
        ),
        (
            &format!(r#"{{"versions":{V},"scores":{{"pointer":"/s","bounds":[0.5,0.2]}}}}"#),
            "scores.bounds[1]",
            "strictly increasing",
        ),
        (
            &format!(r#"{{"versions":{V},"scores":{{"pointer":"/s","bounds":[0.5,"x"]}}}}"#),
            "scores.bounds[1]",
            "expected a number",
        ),
        (
            &format!(r#"{{"versions":{V},"routingHeader":""}}"#),
            "routingHeader",
            "not a valid header name",
        ),
    ];
    for (json, field, needle) in cases {
        let (f, m) = err(json);
        assert_eq!(&f, field, "{json}: {m}");
        assert!(m.contains(needle), "{json}: `{m}` lacks `{needle}`");
    }
}

#[test]
fn good_configs_round_trip_through_the_driver_type() {
    let json = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/envoy/aviary-ecds-config.yaml"
    ))
    .unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&json).unwrap();
    let raw = doc["resources"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap();
    let cfg = PluginConfig::from_json(raw.as_bytes()).unwrap();
    let again = PluginConfig::from_json(cfg.to_json().as_bytes()).unwrap();
    assert_eq!(cfg, again);
    let c = again.compile(1).unwrap();
    assert_eq!(c.versions.len(), 2);
    assert_eq!(c.layout, vec![(0, 9000), (9000, 10000)]);
    let pct = parse_and_compile(
        br#"{"versions":[{"name":"a","percent":87.5},{"name":"b","percent":12.5}]}"#,
    )
    .unwrap();
    assert_eq!(pct.versions[1].weight_bps, 1250);
}
