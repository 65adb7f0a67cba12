//! Each section's compile errors name the field and say how to fix it.

use crate::config::error::ConfigError;
use crate::config::schema::PluginConfig;

use super::Compiled;

const V: &str = r#""versions":[{"name":"stable","weight":9000},{"name":"canary","weight":1000}]"#;

fn compile(body: &str) -> Result<Compiled, ConfigError> {
    PluginConfig::from_json(format!("{{{V}{body}}}").as_bytes())?.compile(7)
}

/// Every case fails at `field` with a message containing `hint`.
fn rejects(cases: &[(&str, &str, &str)]) {
    for (body, field, hint) in cases {
        match compile(body) {
            Err(e) => {
                assert_eq!(e.field, *field, "{body}: {e}");
                assert!(e.message.contains(hint), "{body}: {e}");
            }
            Ok(_) => assert_eq!("accepted", *field, "{body}"),
        }
    }
}

#[test]
fn names() {
    rejects(&[
        (r#","service":"re cs""#, "service", "letters, digits"),
        (
            r#","routingHeader":"X-V""#,
            "routingHeader",
            "not a valid header",
        ),
        (
            r#","stampHeader":"a b""#,
            "stampHeader",
            "not a valid header",
        ),
    ]);
    assert!(compile(r#","stampHeader":"""#).is_ok_and(|c| c.stamp_header.is_none()));
}

#[test]
fn versions() {
    let two = |a: &str, b: &str| {
        PluginConfig::from_json(format!(r#"{{"versions":[{a},{b}]}}"#).as_bytes())
            .and_then(|c| c.compile(0))
            .err()
            .map(|e| e.field)
    };
    let ok = r#"{"name":"b","weight":5000}"#;
    assert_eq!(
        two(r#"{"name":"a","weight":5000,"routeValue":""}"#, ok),
        Some("versions[0].routeValue".into())
    );
    assert_eq!(
        two(
            r#"{"name":"a","weight":5000,"requestHeaders":{":path":"/"}}"#,
            ok
        ),
        Some("versions[0].requestHeaders.:path".into())
    );
    assert_eq!(
        two(
            r#"{"name":"a","weight":5000,"responseHeaders":{"x-a":"\n"}}"#,
            ok
        ),
        Some("versions[0].responseHeaders.x-a".into())
    );
    // Checks run in field order: a bad name is reported before a bad weight.
    assert_eq!(
        two(r#"{"name":"a.b","weight":20000}"#, ok),
        Some("versions[0].name".into())
    );
    assert_eq!(two(r#"{"name":"a","percent":50}"#, ok), None);
}

#[test]
fn layout_stacks_candidates_from_the_top() {
    let c = PluginConfig::from_json(
        br#"{"versions":[{"name":"a","weight":7000},{"name":"b","weight":2000},{"name":"c","weight":1000}]}"#,
    )
    .and_then(|c| c.compile(0));
    assert_eq!(
        c.map(|c| c.layout).ok(),
        Some(vec![(0, 7000), (8000, 10000), (7000, 8000)])
    );
}

#[test]
fn sticky_rules_override_kill_switch() {
    rejects(&[
        (
            r#","sticky":{"keys":[{"query":""}]}"#,
            "sticky.keys[0]",
            "exactly one",
        ),
        (
            r#","sticky":{"keys":[{"header":"X"}]}"#,
            "sticky.keys[0].header",
            "header name",
        ),
        (
            r#","rules":[{"name":"","match":[{"header":"x","present":true}],"version":"canary"}]"#,
            "rules[0].name",
            "give the rule a name",
        ),
        (
            r#","rules":[{"name":"r","match":[{"header":"x","present":true}],"version":"v3"}]"#,
            "rules[0].version",
            "use one of: stable, canary",
        ),
        (
            r#","override":{"header":"x force","trustedCidrs":["10.0.0.0/8"]}"#,
            "override.header",
            "header name",
        ),
        (
            r#","killSwitch":"v3""#,
            "killSwitch",
            "not a configured version",
        ),
    ]);
    let c = compile(
        r#","sticky":{"keys":[{"cookie":"s"}],"seed":3},"rules":[{"name":"r","match":[{"cookie":"c","exact":"1"}],"version":"canary","share":500}],"killSwitch":"stable""#,
    );
    assert!(c.is_ok_and(|c| c.needs_headers
        && c.kill_switch == Some(0)
        && c.rules[0].version == 1
        && c.rules[0].share_bps == 500
        && c.rules[0].seed != 3));
}

#[test]
fn trusted_peers() {
    let debug = r#""rules":[{"name":"debug","match":[{"header":"x-canary","exact":"always"}],"version":"canary","trustedOnly":true}]"#;
    rejects(&[
        (
            &format!(",{debug}"),
            "rules[0].trustedOnly",
            "top-level `trustedCidrs`",
        ),
        (
            &format!(r#",{debug},"override":{{"header":"x-f","trustedCidrs":["10.0.0.0/8"]}}"#),
            "rules[0].trustedOnly",
            "applies to the override only",
        ),
        (
            r#","override":{"header":"x-f"}"#,
            "override.trustedCidrs",
            "top-level `trustedCidrs`",
        ),
        (
            r#","trustedCidrs":["10.0.0.0/8","10.0.0.0/40"]"#,
            "trustedCidrs[1]",
            "not a CIDR",
        ),
    ]);
    let c = compile(&format!(
        r#","trustedCidrs":["10.0.0.0/8"],{debug},"override":{{"header":"x-f"}}"#
    ));
    assert!(c.is_ok_and(|c| c.rules[0].trusted_only
        && c.trusted.len() == 1
        && c.override_.is_some_and(|o| o.trusted == c.trusted)));
    let own = compile(
        r#","trustedCidrs":["10.0.0.0/8"],"override":{"header":"x-f","trustedCidrs":["::1/128","127.0.0.1"]}"#,
    );
    assert!(own.is_ok_and(|c| c.override_.is_some_and(|o| o.trusted.len() == 2)));
}

#[test]
fn reserved_headers_are_the_ones_only_the_plugin_sets() {
    let plain = compile("").map(|c| c.reserved_headers);
    assert_eq!(
        plain.ok(),
        Some(vec!["x-aviary-version".into(), "x-aviary-shadow".into()])
    );
    let mirrored = compile(
        r#","routingHeader":"x-v","shadow":{"via":"envoy","targets":[{"version":"A","cluster":"a"},{"version":"b","cluster":"b","mirrorHeader":"x-m"}],"share":1}"#,
    )
    .map(|c| c.reserved_headers);
    let want = ["x-v", "x-aviary-shadow", "x-aviary-mirror-a", "x-m"];
    assert_eq!(mirrored.ok(), Some(want.map(String::from).to_vec()));
    let in_scope = compile(
        r#","routingHeader":"x-v","shadow":{"via":"envoy","targets":[{"version":"A","cluster":"a"}],"share":1}"#,
    )
    .map(|c| c.reserved_in_scope);
    assert_eq!(
        in_scope.ok(),
        Some(vec!["x-aviary-shadow".to_string()]),
        "a routed request keeps the routing and mirror headers the filter itself sets"
    );
    let marked = compile(
        r#","shadow":{"targets":[{"version":"s","cluster":"c"}],"share":1,"markHeader":"x-aviary-version"}"#,
    )
    .map(|c| c.reserved_headers);
    let want = ["x-aviary-version"];
    assert_eq!(
        marked.ok(),
        Some(want.map(String::from).to_vec()),
        "the plugin sends its own copies: no mirror header"
    );
}

#[test]
fn shadow() {
    let t = r#""targets":[{"version":"s","cluster":"c"}]"#;
    rejects(&[
        (
            r#","shadow":{"targets":[],"share":1}"#,
            "shadow.targets",
            "at least one",
        ),
        (
            r#","shadow":{"targets":[{"version":"s","cluster":""}],"share":1}"#,
            "shadow.targets[0].cluster",
            "name the Envoy cluster",
        ),
        (
            &format!(r#","shadow":{{{t},"share":1,"maxInFlight":0}}"#),
            "shadow.maxInFlight",
            "1 to 100000",
        ),
        (
            &format!(r#","shadow":{{{t},"share":1,"maxBodyBytes":20000000}}"#),
            "shadow.maxBodyBytes",
            "16 MiB",
        ),
        (
            &format!(r#","shadow":{{{t},"share":1,"authoritySuffix":"\n"}}"#),
            "shadow.authoritySuffix",
            "printable",
        ),
        (
            &format!(r#","shadow":{{{t},"share":1,"compare":{{}}}}"#),
            "shadow.compare",
            "labelPointer",
        ),
        (
            &format!(r#","shadow":{{{t},"share":1,"compare":{{"scorePointer":"s"}}}}"#),
            "shadow.compare.scorePointer",
            "JSON pointer",
        ),
        (
            &format!(r#","shadow":{{{t},"share":10001}}"#),
            "shadow.share",
            "out of range",
        ),
        (
            &format!(r#","shadow":{{{t},"share":1,"rules":["nope"]}}"#),
            "shadow.rules[0]",
            "names no rule",
        ),
        (
            r#","shadow":{"via":"envoy","targets":[{"version":"s","cluster":"c","mirrorHeader":"X"}],"share":1}"#,
            "shadow.targets[0].mirrorHeader",
            "header name",
        ),
    ]);
    let c = compile(
        r#","shadow":{"via":"envoy","targets":[{"version":"S1","cluster":"c"}],"share":1}"#,
    );
    assert!(c.is_ok_and(|c| !c.needs_headers
        && c.shadow
            .is_some_and(|s| s.envoy_mirror_headers == Some(vec!["x-aviary-mirror-s1".into()]))));
}

#[test]
fn scores_metrics_scope() {
    rejects(&[
        (
            r#","scores":{"pointer":"p","bounds":[1]}"#,
            "scores.pointer",
            "JSON pointer",
        ),
        (
            r#","scores":{"pointer":"/p","bounds":[2,1]}"#,
            "scores.bounds[1]",
            "strictly increasing",
        ),
        (
            r#","metrics":{"latencyBucketsMs":[1,1.0001]}"#,
            "metrics.latencyBucketsMs[1]",
            "at least 0.001 ms",
        ),
        (
            r#","match":[{"pathPrefix":"x"}]"#,
            "match[0].pathPrefix",
            "start with `/`",
        ),
    ]);
    let c = compile(
        r#","match":[{"header":":authority","exact":"svc"}],"metrics":{"latencyBucketsMs":[0.5,2]}"#,
    );
    assert!(c.is_ok_and(|c| c.needs_headers
        && c.metrics.latency_bounds_us == [500, 2000]
        && c.metrics.latency_labels == ["0.5", "2"]
        && c.metrics.flush_interval_ms == 50
        && c.digest == 7));
    assert!(compile("").is_ok_and(|c| !c.needs_headers && c.metrics.latency_bounds_us.len() == 26));
}
