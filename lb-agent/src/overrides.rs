//! Changes made through the control API on top of the config file, kept in a state file
//! beside it, so that they survive reloads and restarts (HAProxy loses servers added at
//! runtime on reload; this agent does not).
//!
//! An override names a target of a group (registered with a weight, or deregistered) or a
//! group's health check. The config the agent runs is the file's with every override
//! applied: at start-up, on reload, and after each API change. `lb-agent status` shows them;
//! `lb-agent overrides clear` drops them, and the file rules again.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::config::{Config, HealthCheck, Target};

/// What the API did to one target of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum TargetOverride {
    /// Registered (or re-weighted) with this weight.
    Registered { weight: u32 },
    /// Deregistered.
    Deregistered,
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
        self.targets.values().map(BTreeMap::len).sum::<usize>() + self.health_checks.len()
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

    /// Forgets the overrides of one group, or all.
    pub fn clear(&mut self, group: Option<&str>) {
        match group {
            None => *self = Self::default(),
            Some(g) => {
                self.targets.remove(g);
                self.health_checks.remove(g);
            }
        }
    }

    /// The config `file` with every override applied; overrides of groups the file no longer
    /// has are skipped (and named in the second value).
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
