//! Changes made through the control API on top of the config file, kept in a state file
//! beside it, so that they survive reloads and restarts (HAProxy loses servers added at
//! runtime on reload; this agent does not).
//!
//! An override names a target of a group (registered with a weight, or deregistered), a
//! group's health check, or a rule of a listener by its priority (set to a rule, or the file's
//! removed). The config the agent runs is the file's with every override applied: at
//! start-up, on reload, and after each API change. `lb-agent status` shows them;
//! `lb-agent overrides clear` drops them, and the file rules again.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::config::{Config, HealthCheck, Rule, Target};

/// What the API did to one target of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum TargetOverride {
    /// Registered (or re-weighted) with this weight.
    Registered { weight: u32 },
    /// Deregistered.
    Deregistered,
}

/// What the API did to the rule at one priority of a listener. Keyed by priority, so that the
/// changes of one listener touch different rules and apply in any order alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum RuleOverride {
    /// This rule at this priority, in place of the file's rule there if it has one.
    Set { rule: Box<Rule> },
    /// The file's rule at this priority removed.
    Removed,
}

/// Every override, as the state file holds them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Per group, per target.
    #[serde(default)]
    pub targets: BTreeMap<String, BTreeMap<SocketAddr, TargetOverride>>,
    /// Per group: the health check set through the API.
    #[serde(default)]
    pub health_checks: BTreeMap<String, HealthCheck>,
    /// Per listener, per priority.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, BTreeMap<u32, RuleOverride>>,
}

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum OverridesError {
    #[error(
        "state file {path}: {message}; fix it or remove it (the API's changes in it are then lost)"
    )]
    Read { path: PathBuf, message: String },
    #[error("writing the state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Overrides {
    /// The state file beside `config`: `NAME.state.json` for `NAME.toml`.
    pub fn path_beside(config: &Path) -> PathBuf {
        let stem = config
            .file_stem()
            .map_or_else(|| "lb-agent".into(), |s| s.to_string_lossy().into_owned());
        config.with_file_name(format!("{stem}.state.json"))
    }

    /// Reads the state file; none there: no overrides.
    pub fn load(path: &Path) -> Result<Self, OverridesError> {
        crate::json_file::load(path).map_err(|message| OverridesError::Read {
            path: path.to_owned(),
            message,
        })
    }

    /// Writes the state file whole (a new file renamed over the old: never half written).
    pub fn save(&self, path: &Path) -> Result<(), OverridesError> {
        crate::json_file::save(self, path).map_err(|source| OverridesError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// How many overrides there are.
    pub fn len(&self) -> usize {
        self.targets.values().map(BTreeMap::len).sum::<usize>()
            + self.health_checks.len()
            + self.rules.values().map(BTreeMap::len).sum::<usize>()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a target change.
    pub fn set_target(&mut self, group: &str, address: SocketAddr, change: TargetOverride) {
        self.targets
            .entry(group.to_owned())
            .or_default()
            .insert(address, change);
    }

    /// Records a health-check change.
    pub fn set_health_check(&mut self, group: &str, check: HealthCheck) {
        self.health_checks.insert(group.to_owned(), check);
    }

    /// Makes the rule at `priority` of `listener` be `rule` (none: no rule there), relative to
    /// the `file`: what the file has already needs no override, and none is kept for it.
    pub fn set_rule(&mut self, file: &Config, listener: &str, priority: u32, rule: Option<Rule>) {
        let in_file = file
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .and_then(|l| l.rules.iter().find(|r| r.priority == priority));
        let rules = self.rules.entry(listener.to_owned()).or_default();
        match (rule, in_file) {
            (Some(rule), Some(same)) if rule == *same => {
                rules.remove(&priority);
            }
            (Some(rule), _) => {
                rules.insert(
                    priority,
                    RuleOverride::Set {
                        rule: Box::new(rule),
                    },
                );
            }
            (None, Some(_)) => {
                rules.insert(priority, RuleOverride::Removed);
            }
            (None, None) => {
                rules.remove(&priority);
            }
        }
        if rules.is_empty() {
            self.rules.remove(listener);
        }
    }

    /// Forgets the overrides of one group and of one listener's rules; of everything when
    /// neither is named.
    pub fn clear(&mut self, group: Option<&str>, listener: Option<&str>) {
        if group.is_none() && listener.is_none() {
            *self = Self::default();
        }
        if let Some(g) = group {
            self.targets.remove(g);
            self.health_checks.remove(g);
        }
        if let Some(l) = listener {
            self.rules.remove(l);
        }
    }

    /// The config `file` with every override applied; overrides of groups or listeners the
    /// file no longer has are skipped (and named in the second value). A rule set at a
    /// priority takes the place of the file's rule there, or comes after the file's rules
    /// (in priority order: the maps are ordered, so the result never depends on the order the
    /// changes were made in).
    pub fn apply_to(&self, file: &Config) -> (Config, Vec<String>) {
        let mut config = file.clone();
        let mut skipped = Vec::new();
        for (group_name, targets) in &self.targets {
            let Some(group) = config
                .target_groups
                .iter_mut()
                .find(|g| &g.name == group_name)
            else {
                skipped.push(format!("targets of group {group_name} (not in the file)"));
                continue;
            };
            for (&address, change) in targets {
                let port_of = |t: &Target| t.port.or(group.port);
                let at = group
                    .targets
                    .iter()
                    .position(|t| t.address == address.ip() && port_of(t) == Some(address.port()));
                match (change, at) {
                    (TargetOverride::Deregistered, Some(i)) => {
                        group.targets.remove(i);
                    }
                    (TargetOverride::Deregistered, None) => {}
                    (&TargetOverride::Registered { weight }, Some(i)) => {
                        group.targets[i].weight = weight;
                    }
                    (&TargetOverride::Registered { weight }, None) => {
                        group.targets.push(Target {
                            address: address.ip(),
                            port: Some(address.port()),
                            weight,
                        });
                    }
                }
            }
        }
        for (group_name, check) in &self.health_checks {
            match config
                .target_groups
                .iter_mut()
                .find(|g| &g.name == group_name)
            {
                Some(group) => group.health_check = Some(check.clone()),
                None => skipped.push(format!(
                    "health check of group {group_name} (not in the file)"
                )),
            }
        }
        for (listener_name, rules) in &self.rules {
            let Some(listener) = config
                .listeners
                .iter_mut()
                .find(|l| &l.name == listener_name)
            else {
                skipped.push(format!(
                    "rules of listener {listener_name} (not in the file)"
                ));
                continue;
            };
            for (&priority, change) in rules {
                let at = listener.rules.iter().position(|r| r.priority == priority);
                match (change, at) {
                    (RuleOverride::Removed, Some(i)) => {
                        listener.rules.remove(i);
                    }
                    (RuleOverride::Removed, None) => {}
                    (RuleOverride::Set { rule }, at) => {
                        // The key rules: a hand-edited state file cannot put a rule at
                        // another priority than the one it replaces.
                        let rule = Rule {
                            priority,
                            ..(**rule).clone()
                        };
                        match at {
                            Some(i) => listener.rules[i] = rule,
                            None => listener.rules.push(rule),
                        }
                    }
                }
            }
        }
        (config, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::ConfigFile;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn overrides_add_reweight_and_remove_targets_of_the_file() {
        // Group `web` (port 8080): b1, and b2 at weight 2.
        let file = Config::parse(&ConfigFile::good().text(), "test.toml").unwrap();
        let mut o = Overrides::default();
        o.set_target(
            "web",
            addr("198.18.0.23:8080"),
            TargetOverride::Registered { weight: 3 },
        );
        o.set_target(
            "web",
            addr("198.18.0.22:8080"),
            TargetOverride::Registered { weight: 5 },
        );
        o.set_target(
            "web",
            addr("198.18.0.21:8080"),
            TargetOverride::Deregistered,
        );
        o.set_target(
            "gone",
            addr("198.18.0.21:8080"),
            TargetOverride::Deregistered,
        );
        let (config, skipped) = o.apply_to(&file);
        let targets: Vec<(String, Option<u16>, u32)> = config.target_groups[0]
            .targets
            .iter()
            .map(|t| (t.address.to_string(), t.port, t.weight))
            .collect();
        assert_eq!(
            targets,
            [
                ("198.18.0.22".to_owned(), None, 5),
                ("198.18.0.23".to_owned(), Some(8080), 3)
            ]
        );
        assert_eq!(skipped, ["targets of group gone (not in the file)"]);
        assert!(config.problems().is_empty());
        assert_eq!(o.len(), 4);
    }

    /// An http listener `site` with rules at 10 (host) and 20 (path), groups `web` and `api`.
    const RULES: &str = r#"
[[target_group]]
name = "web"
protocol = "http"
port = 8080
targets = [{ address = "198.18.0.21" }]

[[target_group]]
name = "api"
protocol = "http"
port = 8080
targets = [{ address = "198.18.0.22" }]

[[listener]]
name = "site"
address = "198.18.1.100"
port = 80
protocol = "http"
default_action = { forward = "web" }
[[listener.rule]]
priority = 10
conditions = { host = ["api.example.com"] }
action = { forward = "api" }
[[listener.rule]]
priority = 20
conditions = { path = ["/old/*"] }
action = { redirect = { path = "/new/#{path}", status_code = 301 } }
"#;

    fn rule(priority: u32, path: &str) -> Rule {
        serde_json::from_value(serde_json::json!({
            "priority": priority,
            "conditions": { "path": [path] },
            "action": { "forward": "api" },
        }))
        .unwrap()
    }

    /// The listener's rules as (priority, first path or host).
    fn rules_of(config: &Config, listener: &str) -> Vec<(u32, String)> {
        let l = config
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .unwrap();
        l.rules
            .iter()
            .map(|r| {
                let c = &r.conditions;
                (
                    r.priority,
                    c.path.first().or(c.host.first()).unwrap().clone(),
                )
            })
            .collect()
    }

    #[test]
    fn rule_overrides_add_replace_and_remove_rules_of_the_file() {
        let file = Config::parse(RULES, "test.toml").unwrap();
        let mut o = Overrides::default();
        o.set_rule(&file, "site", 5, Some(rule(5, "/five/*")));
        o.set_rule(&file, "site", 20, Some(rule(20, "/twenty/*")));
        o.set_rule(&file, "site", 10, None);
        let (config, skipped) = o.apply_to(&file);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(
            rules_of(&config, "site"),
            [(20, "/twenty/*".to_owned()), (5, "/five/*".to_owned())]
        );
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        assert_eq!(o.len(), 3);
        assert_eq!(o.rules["site"][&10], RuleOverride::Removed);
    }

    #[test]
    fn rule_overrides_apply_alike_whatever_order_they_were_made_in() {
        let file = Config::parse(RULES, "test.toml").unwrap();
        let changes = [
            (30, Some(rule(30, "/a/*"))),
            (10, None),
            (7, Some(rule(7, "/b/*"))),
            (20, Some(rule(20, "/c/*"))),
        ];
        let mut forward = Overrides::default();
        for (priority, r) in changes.iter().cloned() {
            forward.set_rule(&file, "site", priority, r);
        }
        let mut backward = Overrides::default();
        for (priority, r) in changes.iter().rev().cloned() {
            backward.set_rule(&file, "site", priority, r);
        }
        let (a, _) = forward.apply_to(&file);
        let (b, _) = backward.apply_to(&file);
        assert_eq!(rules_of(&a, "site"), rules_of(&b, "site"));
        // The file's 20 replaced in place, then the new ones by priority.
        assert_eq!(
            rules_of(&a, "site"),
            [
                (20, "/c/*".to_owned()),
                (7, "/b/*".to_owned()),
                (30, "/a/*".to_owned())
            ]
        );
    }

    #[test]
    fn a_rule_put_back_as_the_file_has_it_leaves_no_override() {
        let file = Config::parse(RULES, "test.toml").unwrap();
        let original = file.listeners[0].rules[0].clone();
        let mut o = Overrides::default();
        // Moved from 10 to 11, then back.
        o.set_rule(&file, "site", 10, None);
        o.set_rule(
            &file,
            "site",
            11,
            Some(Rule {
                priority: 11,
                ..original.clone()
            }),
        );
        assert_eq!(o.len(), 2);
        o.set_rule(&file, "site", 11, None);
        o.set_rule(&file, "site", 10, Some(original));
        assert!(o.is_empty(), "{o:?}");
    }

    #[test]
    fn rules_of_a_listener_the_file_no_longer_has_are_skipped_and_cleared_by_listener() {
        let file = Config::parse(RULES, "test.toml").unwrap();
        let mut o = Overrides::default();
        o.set_rule(&file, "gone", 5, Some(rule(5, "/x/*")));
        o.set_rule(&file, "site", 5, Some(rule(5, "/y/*")));
        o.set_target(
            "web",
            addr("198.18.0.23:8080"),
            TargetOverride::Registered { weight: 1 },
        );
        let (config, skipped) = o.apply_to(&file);
        assert_eq!(skipped, ["rules of listener gone (not in the file)"]);
        assert_eq!(rules_of(&config, "site").len(), 3);
        o.clear(None, Some("site"));
        assert!(!o.rules.contains_key("site"));
        assert!(o.rules.contains_key("gone") && o.targets.contains_key("web"));
        o.clear(None, None);
        assert!(o.is_empty());
    }

    #[test]
    fn a_state_file_with_rules_round_trips() {
        let file = Config::parse(RULES, "test.toml").unwrap();
        let mut o = Overrides::default();
        o.set_rule(&file, "site", 5, Some(rule(5, "/y/*")));
        o.set_rule(&file, "site", 20, None);
        let text = serde_json::to_string(&o).unwrap();
        assert!(text.contains(r#""change":"removed""#), "{text}");
        let back: Overrides = serde_json::from_str(&text).unwrap();
        assert_eq!(back, o);
        // A state file of an agent without rules still reads.
        let old: Overrides = serde_json::from_str(r#"{"targets": {}}"#).unwrap();
        assert!(old.is_empty());
    }

    #[test]
    fn the_state_file_round_trips_and_a_missing_one_is_empty() {
        let dir = std::env::temp_dir().join(format!("lb-overrides-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = Overrides::path_beside(&dir.join("lb.toml"));
        assert_eq!(path, dir.join("lb.state.json"));
        assert!(Overrides::load(&path).unwrap().is_empty());
        let mut o = Overrides::default();
        o.set_target(
            "web",
            addr("[fd00:198:18::21]:8080"),
            TargetOverride::Registered { weight: 1 },
        );
        o.set_health_check("web", HealthCheck::default());
        o.save(&path).unwrap();
        assert_eq!(Overrides::load(&path).unwrap(), o);
        std::fs::write(&path, "{ not json").unwrap();
        let err = Overrides::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("lb.state.json") && err.contains("remove it"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
