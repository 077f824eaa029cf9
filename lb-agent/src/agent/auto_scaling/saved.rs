//! What the groups keep across agent restarts, in a JSON file beside the config
//! (`NAME.scaling.json`): each group's sizes as set at run time, its instances (the provider's
//! record, the phase, protection) and its activity history. A restarted agent adopts the
//! instances from their records instead of launching new ones.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::scaling::{
    activity::{Activity, ActivityLog, ActivityStatus},
    group::{Group, Instance, Phase},
    provider::InstanceRecord,
    refresh::{DEFAULT_MAX_HEALTHY_PERCENTAGE, Refresh, RefreshStatus},
    termination::LaunchSource,
};

/// Every group's kept state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default)]
    pub groups: BTreeMap<String, SavedGroup>,
}

/// One group's kept state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedGroup {
    /// The sizes in force (`set-desired` and policies change them).
    pub min_size: u32,
    pub desired_capacity: u32,
    pub max_size: u32,
    /// The sizes the config file wrote when these were kept: a file that writes others since
    /// wins over the kept ones (the file's update is the newer request).
    pub config_sizes: (u32, Option<u32>, u32),
    pub instances: Vec<SavedInstance>,
    pub next_activity_id: u64,
    #[serde(default)]
    pub activities: Vec<SavedActivity>,
    /// Processes suspended (EC2's names).
    #[serde(default)]
    pub suspended: Vec<String>,
    /// The instance refresh in progress, if one is.
    #[serde(default)]
    pub refresh: Option<SavedRefresh>,
}

/// One instance of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedInstance {
    pub record: InstanceRecord,
    /// `pending`, `in_service`, `draining` or `stopping`.
    pub phase: String,
    pub protected_from_scale_in: bool,
    /// Launched from a launch configuration (the record's template is then its name).
    #[serde(default)]
    pub from_launch_configuration: bool,
}

/// An instance refresh in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRefresh {
    pub id: u64,
    pub min_healthy_percentage: u32,
    /// 100 in files written before refreshes had a maximum.
    #[serde(default = "terminate_first")]
    pub max_healthy_percentage: u32,
    pub instance_warmup_seconds: u64,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub to_replace: u32,
    pub replaced: u32,
    pub batch: Vec<String>,
}

impl SavedRefresh {
    /// What a restart keeps of `refresh` (only one in progress is kept).
    pub fn of(refresh: &Refresh) -> Option<Self> {
        refresh.is_in_progress().then(|| Self {
            id: refresh.id,
            min_healthy_percentage: refresh.min_healthy_percentage,
            max_healthy_percentage: refresh.max_healthy_percentage,
            instance_warmup_seconds: refresh.instance_warmup.as_secs(),
            started_at: refresh.started_at.as_secs(),
            to_replace: refresh.to_replace,
            replaced: refresh.replaced,
            batch: refresh.batch.clone(),
        })
    }

    /// The refresh, in progress again.
    pub fn refresh(&self) -> Refresh {
        Refresh {
            id: self.id,
            status: RefreshStatus::InProgress,
            min_healthy_percentage: self.min_healthy_percentage,
            max_healthy_percentage: self.max_healthy_percentage,
            instance_warmup: Duration::from_secs(self.instance_warmup_seconds),
            started_at: Duration::from_secs(self.started_at),
            ended_at: None,
            to_replace: self.to_replace,
            replaced: self.replaced,
            batch: self.batch.clone(),
        }
    }
}

/// A refresh's maximum healthy percentage before it could be set: terminate, then launch.
fn terminate_first() -> u32 {
    DEFAULT_MAX_HEALTHY_PERCENTAGE
}

/// One activity of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedActivity {
    pub id: u64,
    pub description: String,
    pub cause: String,
    pub status: String,
    pub status_message: Option<String>,
    /// Seconds since the Unix epoch.
    pub start: i64,
    pub end: Option<i64>,
    pub progress: u8,
}

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error(
        "auto scaling state file {path}: {message}; fix or remove it (its groups' instances are then not adopted)"
    )]
    Read { path: PathBuf, message: String },
    #[error("writing the auto scaling state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Saved {
    /// `NAME.scaling.json` beside `NAME.toml`.
    pub fn path_beside(config: &Path) -> PathBuf {
        let stem = config
            .file_stem()
            .map_or_else(|| "lb-agent".into(), |s| s.to_string_lossy().into_owned());
        config.with_file_name(format!("{stem}.scaling.json"))
    }

    pub fn load(path: &Path) -> Result<Self, SavedError> {
        crate::json_file::load(path).map_err(|message| SavedError::Read {
            path: path.to_owned(),
            message,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), SavedError> {
        crate::json_file::save(self, path).map_err(|source| SavedError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

impl SavedInstance {
    /// The instance as its group takes it back.
    pub fn instance(&self) -> Instance {
        let record = &self.record;
        let launched_from = if self.from_launch_configuration {
            LaunchSource::LaunchConfiguration {
                name: record.template.clone(),
            }
        } else {
            LaunchSource::LaunchTemplate {
                name: record.template.clone(),
                version: record.template_version,
            }
        };
        let phase = match self.phase.as_str() {
            "in_service" => Phase::InService,
            // The drain restarts its clock: the agent cannot tell how long it was away.
            "draining" => Phase::Draining {
                since: Duration::from_secs(super::unix_now()),
            },
            "stopping" => Phase::Stopping,
            _ => Phase::Pending,
        };
        Instance::adopted(
            record.instance_id.clone(),
            record.address,
            launched_from,
            Duration::from_secs(record.launched_at),
            phase,
            self.protected_from_scale_in,
        )
    }
}

/// The words a phase is kept as.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        // A wait on lifecycle hooks starts again after a restart.
        Phase::Pending | Phase::PendingWait => "pending",
        Phase::InService => "in_service",
        Phase::Draining { .. } | Phase::TerminatingWait => "draining",
        Phase::Stopping => "stopping",
    }
}

/// `group`'s history as kept.
pub fn activities(group: &Group) -> Vec<SavedActivity> {
    let mut kept: Vec<SavedActivity> = group
        .activities()
        .newest_first()
        .map(|a| SavedActivity {
            id: a.id,
            description: a.description.clone(),
            cause: a.cause.clone(),
            status: a.status.as_str().to_owned(),
            status_message: a.status_message.clone(),
            start: a.start.as_second(),
            end: a.end.map(Timestamp::as_second),
            progress: a.progress,
        })
        .collect();
    kept.reverse();
    kept
}

/// A history as kept, back as the group's log. An activity left in progress by the agent
/// that stopped is kept as it was (the group moves it on if it can).
pub fn activity_log(group: &str, kept: &[SavedActivity], next_id: u64) -> ActivityLog {
    let activities = kept.iter().map(|a| Activity {
        id: a.id,
        group: group.to_owned(),
        description: a.description.clone(),
        cause: a.cause.clone(),
        status: ActivityStatus::from_name(&a.status).unwrap_or(ActivityStatus::InProgress),
        status_message: a.status_message.clone(),
        start: Timestamp::from_second(a.start).unwrap_or(Timestamp::UNIX_EPOCH),
        end: a.end.and_then(|s| Timestamp::from_second(s).ok()),
        progress: a.progress,
    });
    ActivityLog::restored(activities, next_id)
}

impl super::Engine {
    /// Keeps what a restart needs, when it changed.
    pub(super) fn save(&mut self) {
        let Some(path) = self.options.saved.clone() else {
            return;
        };
        let mut kept = Saved::default();
        for (name, running) in &self.groups {
            let capacity = running.group.capacity();
            let config = &running.config;
            kept.groups.insert(
                name.clone(),
                SavedGroup {
                    min_size: capacity.min(),
                    desired_capacity: capacity.desired(),
                    max_size: capacity.max(),
                    config_sizes: (config.min_size, config.desired_capacity, config.max_size),
                    instances: running
                        .group
                        .instances()
                        .iter()
                        .filter_map(|i| {
                            let record = running.records.get(&i.id)?;
                            Some(SavedInstance {
                                record: record.clone(),
                                phase: phase_name(i.phase).to_owned(),
                                protected_from_scale_in: i.protected_from_scale_in,
                                from_launch_configuration: matches!(
                                    i.launched_from,
                                    LaunchSource::LaunchConfiguration { .. }
                                ),
                            })
                        })
                        .collect(),
                    next_activity_id: running.group.activities().next_id(),
                    activities: activities(&running.group),
                    suspended: super::views::process_names(running.group.suspended()),
                    refresh: running.group.refresh().and_then(SavedRefresh::of),
                },
            );
        }
        if self.last_saved.as_ref() == Some(&kept) {
            return;
        }
        match kept.save(&path) {
            Ok(()) => self.last_saved = Some(kept),
            Err(e) => {
                tracing::error!(error = %e, "keeping the auto scaling groups' state failed (a restart may not adopt new instances)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_in_progress_is_kept_and_resumes_and_an_ended_one_is_not_kept() {
        let mut refresh = Refresh::new(
            3,
            (50, 120),
            Duration::from_secs(30),
            4,
            Duration::from_secs(1000),
        )
        .unwrap();
        refresh.replaced = 2;
        refresh.batch = vec!["i-0123456789abcdef0".into()];
        let kept = SavedRefresh::of(&refresh).expect("in progress: kept");
        let text = serde_json::to_string(&kept).unwrap();
        let back: SavedRefresh = serde_json::from_str(&text).unwrap();
        assert_eq!(back.refresh(), refresh);
        refresh.status = RefreshStatus::Cancelled;
        assert_eq!(SavedRefresh::of(&refresh), None);
    }

    #[test]
    fn a_file_without_the_newer_fields_still_reads() {
        let text = r#"{"groups": {"web-asg": {"min_size": 1, "desired_capacity": 2,
            "max_size": 3, "config_sizes": [1, null, 3], "instances": [],
            "next_activity_id": 4}}}"#;
        let saved: Saved = serde_json::from_str(text).unwrap();
        let group = &saved.groups["web-asg"];
        assert!(group.suspended.is_empty() && group.refresh.is_none());
    }
}
