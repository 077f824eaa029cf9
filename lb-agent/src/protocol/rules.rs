//! A listener's rules as the API shows them, and the answers to rule changes. Rules are shown
//! in the config file's own vocabulary (a `[[listener.rule]]` as JSON: `priority`,
//! `conditions`, `action`), so a rule that `rules list --json` prints can be posted back as it
//! is.

use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::{
    config::{Action, Conditions, Config, Listener, Rule},
    overrides::{Overrides, RuleOverride},
};

/// Where a rule in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    /// The config file.
    File,
    /// The API (kept in the state file, on top of the file).
    Api,
}

/// One rule as `rules list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    pub priority: u32,
    pub conditions: Conditions,
    pub action: Action,
    pub source: RuleSource,
}

/// A listener's rules, lowest priority (tried first) first, and what takes the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulesView {
    pub listener: String,
    pub protocol: String,
    pub rules: Vec<RuleView>,
    pub default_action: Action,
}

impl RulesView {
    /// `listener`'s rules in `config` (the config in force); those `overrides` set are marked
    /// as the API's. 404 if there is no such listener.
    pub fn of(config: &Config, overrides: &Overrides, listener: &str) -> Result<Self, ApiError> {
        let l = find_listener(config, listener)?;
        let set_by_api = |priority: u32| {
            overrides
                .rules
                .get(listener)
                .and_then(|rules| rules.get(&priority))
                .is_some_and(|o| matches!(o, RuleOverride::Set { .. }))
        };
        let mut rules: Vec<RuleView> = l
            .rules
            .iter()
            .map(|r| RuleView {
                priority: r.priority,
                conditions: r.conditions.clone(),
                action: r.action.clone(),
                source: if set_by_api(r.priority) {
                    RuleSource::Api
                } else {
                    RuleSource::File
                },
            })
            .collect();
        rules.sort_by_key(|r| r.priority);
        Ok(Self {
            listener: l.name.clone(),
            protocol: l.protocol.as_str().to_owned(),
            rules,
            default_action: l.default_action.clone(),
        })
    }
}

/// The listener named `name` in `config`; 404 naming the ones there are if none.
pub fn find_listener<'c>(config: &'c Config, name: &str) -> Result<&'c Listener, ApiError> {
    config
        .listeners
        .iter()
        .find(|l| l.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
            ApiError::new(
                404,
                format!(
                    "no listener named `{name}` (listeners: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
}

/// A rule added (`rules add`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleAdded {
    pub listener: String,
    pub rule: Rule,
}

/// A rule removed (`rules remove`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleRemoved {
    pub listener: String,
    /// The rule that was removed.
    pub rule: Rule,
}

/// A rule moved to another priority (`rules set-priority`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleMoved {
    pub listener: String,
    pub priority: u32,
    pub previous_priority: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[target_group]]
name = "web"
protocol = "http"
targets = [{ address = "198.18.0.21", port = 8080 }]

[[listener]]
name = "site"
address = "198.18.1.100"
port = 80
protocol = "http"
default_action = { fixed_response = { status_code = 404 } }
[[listener.rule]]
priority = 20
conditions = { host = ["b.example.com"] }
action = { forward = "web" }
[[listener.rule]]
priority = 10
conditions = { path = ["/a/*"], http_header = { "x-debug" = ["1"] } }
action = { forward = [{ target_group = "web", weight = 3 }] }
"#;

    #[test]
    fn rules_are_listed_by_priority_in_the_files_vocabulary() {
        let config = Config::parse(CONFIG, "t.toml").unwrap();
        let view = RulesView::of(&config, &Overrides::default(), "site").unwrap();
        let priorities: Vec<u32> = view.rules.iter().map(|r| r.priority).collect();
        assert_eq!(priorities, [10, 20]);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json["rules"][0],
            serde_json::json!({
                "priority": 10,
                "conditions": { "path": ["/a/*"], "http_header": { "x-debug": ["1"] } },
                "action": { "forward": [{ "target_group": "web", "weight": 3 }] },
                "source": "file",
            })
        );
        assert_eq!(
            json["rules"][1]["action"],
            serde_json::json!({ "forward": "web" })
        );
        assert_eq!(
            json["default_action"],
            serde_json::json!({ "fixed_response": { "status_code": 404 } })
        );
    }

    #[test]
    fn a_listed_rule_reads_back_as_the_same_rule() {
        let config = Config::parse(CONFIG, "t.toml").unwrap();
        for rule in &config.listeners[0].rules {
            let text = serde_json::to_string(rule).unwrap();
            let back: Rule = serde_json::from_str(&text).unwrap();
            assert_eq!(&back, rule, "{text}");
        }
    }

    #[test]
    fn an_unknown_listener_is_404_naming_the_known_ones() {
        let config = Config::parse(CONFIG, "t.toml").unwrap();
        let e = RulesView::of(&config, &Overrides::default(), "nope").unwrap_err();
        assert_eq!(e.status, 404);
        assert!(e.message.contains("listeners: site"), "{}", e.message);
    }
}
