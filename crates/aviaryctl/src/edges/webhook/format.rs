//! Chat formats of a webhook body: Slack, Microsoft Teams and Discord messages built from an
//! event payload, within each service's documented limits.

use serde_json::{json, Value};

use crate::core::spec::WebhookFormat;

/// Links a chat message points to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// The rollout report (a URL, or a path where it was written).
    pub report: Option<String>,
    /// A dashboard for the rollout.
    pub dashboard: Option<String>,
}

/// Discord: message `content` (characters).
pub const DISCORD_CONTENT_MAX: usize = 2000;
/// Discord: embed title.
pub const DISCORD_TITLE_MAX: usize = 256;
/// Discord: embed description.
pub const DISCORD_DESCRIPTION_MAX: usize = 4096;
/// Discord: fields in one embed.
pub const DISCORD_FIELDS_MAX: usize = 25;
/// Discord: field name.
pub const DISCORD_FIELD_NAME_MAX: usize = 256;
/// Discord: field value.
pub const DISCORD_FIELD_VALUE_MAX: usize = 1024;
/// Discord: all text of one embed together.
pub const DISCORD_EMBED_TOTAL_MAX: usize = 6000;
/// Slack: `header` block text.
pub const SLACK_HEADER_MAX: usize = 150;
/// Slack: `section` block text.
pub const SLACK_SECTION_MAX: usize = 3000;
/// Slack: one `fields` element of a section.
pub const SLACK_FIELD_MAX: usize = 2000;
/// Slack: top-level `text` fallback (the API truncates beyond 40,000; keep it short).
pub const SLACK_TEXT_MAX: usize = 3000;

/// At most `max` characters of `s`, cut on a character boundary, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The fields of an event a message shows.
struct Facts {
    event: String,
    rollout: String,
    service: String,
    stage: String,
    weight: String,
    reason: String,
    outcome: &'static str,
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn facts(payload: &Value) -> Facts {
    let event = text(payload, "event");
    let weight = match payload.get("canaryWeightBps").and_then(Value::as_u64) {
        Some(bps) => format!("{}%", bps as f64 / 100.0),
        None => text(payload, "canaryWeight"),
    };
    let outcome = match event.as_str() {
        "rollback" => "rolled back to the baseline",
        "promote" => "promoted: the canary takes all traffic",
        "alert" => "needs attention",
        "pause" => "paused",
        "resume" => "resumed",
        "start" => "started",
        "step" => "in progress",
        "confirm-promotion" | "confirm-traffic-increase" => "waiting for approval",
        _ => "in progress",
    };
    Facts {
        event,
        rollout: text(payload, "rollout"),
        service: text(payload, "service"),
        stage: text(payload, "stage"),
        weight,
        reason: text(payload, "reason"),
        outcome,
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn headline(f: &Facts) -> String {
    let icon = match f.event.as_str() {
        "rollback" => "⏪",
        "promote" => "✅",
        "alert" => "⚠️",
        _ => "🐦",
    };
    let service = if f.service.is_empty() {
        String::new()
    } else {
        format!(" ({})", f.service)
    };
    format!(
        "{icon} {}: {}{service}",
        or_dash(&f.event),
        or_dash(&f.rollout)
    )
}

fn link_lines(links: &Links) -> Vec<(&'static str, String)> {
    let mut out = vec![(
        "Report",
        links
            .report
            .clone()
            .unwrap_or_else(|| "aviaryctl report".to_string()),
    )];
    if let Some(d) = &links.dashboard {
        out.push(("Dashboard", d.clone()));
    }
    out
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The body for `format` (`None` for `json`, whose body is the payload itself).
pub fn render(format: WebhookFormat, payload: &Value, links: &Links) -> Option<Value> {
    let f = facts(payload);
    match format {
        WebhookFormat::Json => None,
        WebhookFormat::Slack => Some(slack(&f, links)),
        WebhookFormat::Teams => Some(teams(&f, links)),
        WebhookFormat::Discord => Some(discord(&f, links)),
    }
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn slack(f: &Facts, links: &Links) -> Value {
    let head = headline(f);
    let fallback = if f.reason.is_empty() {
        head.clone()
    } else {
        format!("{head}: {}", f.reason)
    };
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&head, SLACK_HEADER_MAX), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*{}* `{}` at {}", slack_escape(or_dash(&f.event)), slack_escape(or_dash(&f.rollout)), slack_escape(or_dash(&f.stage))), SLACK_SECTION_MAX)}}),
    ];
    if !f.reason.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&slack_escape(&f.reason), SLACK_SECTION_MAX)}}));
    }
    let field = |name: &str, value: &str| json!({"type": "mrkdwn", "text": truncate(&format!("*{name}*\n{}", slack_escape(or_dash(value))), SLACK_FIELD_MAX)});
    blocks.push(json!({"type": "section", "fields": [
        field("Stage", &f.stage),
        field("Canary weight", &f.weight),
        field("Outcome", f.outcome),
        field("Service", &f.service),
    ]}));
    let links = link_lines(links);
    if !links.is_empty() {
        let parts: Vec<String> = links
            .iter()
            .map(|(name, target)| {
                if is_url(target) {
                    format!("<{}|{name}>", slack_escape(target))
                } else {
                    format!("{name}: `{}`", slack_escape(target))
                }
            })
            .collect();
        blocks.push(json!({"type": "context", "elements": [
            {"type": "mrkdwn", "text": truncate(&parts.join(" · "), SLACK_SECTION_MAX)}
        ]}));
    }
    json!({"text": truncate(&slack_escape(&fallback), SLACK_TEXT_MAX), "blocks": blocks})
}

fn teams(f: &Facts, links: &Links) -> Value {
    let head = headline(f);
    let mut body = vec![
        json!({"type": "TextBlock", "text": head, "size": "Large", "weight": "Bolder", "wrap": true,
               "color": if f.event == "rollback" || f.event == "alert" { "Attention" } else { "Default" }}),
        json!({"type": "FactSet", "facts": [
            {"title": "Stage", "value": or_dash(&f.stage)},
            {"title": "Canary weight", "value": or_dash(&f.weight)},
            {"title": "Outcome", "value": f.outcome},
            {"title": "Service", "value": or_dash(&f.service)},
        ]}),
    ];
    if !f.reason.is_empty() {
        body.insert(
            1,
            json!({"type": "TextBlock", "text": truncate(&f.reason, 4000), "wrap": true}),
        );
    }
    let mut actions = Vec::new();
    for (name, target) in link_lines(links) {
        if is_url(&target) {
            actions.push(json!({"type": "Action.OpenUrl", "title": name, "url": target}));
        } else {
            body.push(json!({"type": "TextBlock", "text": format!("{name}: {target}"), "wrap": true, "isSubtle": true}));
        }
    }
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    });
    if !actions.is_empty() {
        card["actions"] = json!(actions);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

fn discord(f: &Facts, links: &Links) -> Value {
    let head = headline(f);
    let color = match f.event.as_str() {
        "rollback" => 0xE0_1E_5A,
        "alert" => 0xF2_A9_00,
        "promote" => 0x2E_B6_7D,
        _ => 0x34_98_DB,
    };
    let mut fields = vec![
        ("Stage", f.stage.clone()),
        ("Canary weight", f.weight.clone()),
        ("Outcome", f.outcome.to_string()),
        ("Service", f.service.clone()),
    ];
    for (name, target) in link_lines(links) {
        let value = if is_url(&target) {
            format!("[open]({target})")
        } else {
            target
        };
        fields.push((name, value));
    }
    let fields: Vec<Value> = fields
        .into_iter()
        .take(DISCORD_FIELDS_MAX)
        .map(|(name, value)| {
            json!({
                "name": truncate(name, DISCORD_FIELD_NAME_MAX),
                "value": truncate(or_dash(&value), DISCORD_FIELD_VALUE_MAX),
                "inline": true,
            })
        })
        .collect();
    let title = truncate(&head, DISCORD_TITLE_MAX);
    let used: usize = title.chars().count()
        + fields
            .iter()
            .map(|f| text(f, "name").chars().count() + text(f, "value").chars().count())
            .sum::<usize>();
    let room = DISCORD_EMBED_TOTAL_MAX.saturating_sub(used);
    let mut embed = json!({
        "title": title,
        "description": truncate(or_dash(&f.reason), DISCORD_DESCRIPTION_MAX.min(room)),
        "color": color,
        "fields": fields,
    });
    if let Some(url) = links.dashboard.as_ref().filter(|u| is_url(u)) {
        embed["url"] = json!(url);
    }
    json!({
        "content": truncate(&format!("{head} at {}", or_dash(&f.stage)), DISCORD_CONTENT_MAX),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    })
}
