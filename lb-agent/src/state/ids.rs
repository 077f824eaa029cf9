//! The ids a state gives groups, listeners and targets in the data plane, kept in a file so
//! that an agent adopting pinned maps gives each the id its flows and counters carry: a purge
//! of one target then never cuts another's flows, and counters stay with their target.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Group, listener and backend ids by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ids {
    /// Target group name -> group id.
    #[serde(default)]
    pub groups: BTreeMap<String, u32>,
    /// Listener name -> listener id.
    #[serde(default)]
    pub listeners: BTreeMap<String, u32>,
    /// Target group name -> target -> backend id.
    #[serde(default)]
    pub backends: BTreeMap<String, BTreeMap<SocketAddr, u32>>,
}

/// Errors reading or writing the ids file.
#[derive(Debug, thiserror::Error)]
pub enum IdsError {
    /// The file exists but cannot be read as ids.
    #[error("ids file {path}: {message}; remove it if the data plane is not adopted")]
    Read { path: PathBuf, message: String },
    /// The file could not be written.
    #[error("writing the ids file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Ids {
    /// The ids file beside a state file: `NAME.ids.json` for `NAME.state.json`.
    pub fn path_beside(state_file: &Path) -> PathBuf {
        let name = state_file
            .file_name()
            .map_or_else(|| "lb-agent".into(), |n| n.to_string_lossy().into_owned());
        let stem = name.strip_suffix(".state.json").unwrap_or(&name);
        state_file.with_file_name(format!("{stem}.ids.json"))
    }

    /// Reads the ids file; none there: no ids.
    pub fn load(path: &Path) -> Result<Self, IdsError> {
        crate::json_file::load(path).map_err(|message| IdsError::Read {
            path: path.to_owned(),
            message,
        })
    }

    /// Writes the ids file whole (a new file renamed over the old).
    pub fn save(&self, path: &Path) -> Result<(), IdsError> {
        crate::json_file::save(self, path).map_err(|source| IdsError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Every backend id held.
    pub fn backend_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.backends.values().flat_map(|t| t.values().copied())
    }

    /// A group id for each of `config`'s groups, in order: the one held for its name where
    /// that is below `capacity` and not taken, else the smallest id nobody holds.
    pub fn group_ids_for(&self, config: &Config, capacity: u32) -> Vec<u32> {
        let wanted: Vec<Option<u32>> = config
            .target_groups
            .iter()
            .map(|g| {
                self.groups
                    .get(&g.name)
                    .copied()
                    .filter(|id| *id < capacity)
            })
            .collect();
        let mut assigned: Vec<u32> = Vec::new();
        let mut out: Vec<Option<u32>> = vec![None; wanted.len()];
        // Held ids first, then new groups in ids no one holds (a held id may still have
        // flows), then in any id left.
        for (i, id) in wanted.iter().enumerate() {
            if let Some(id) = id.filter(|id| !assigned.contains(id)) {
                out[i] = Some(id);
                assigned.push(id);
            }
        }
        let held: Vec<u32> = self.groups.values().copied().collect();
        for slot in out.iter_mut().filter(|slot| slot.is_none()) {
            let fresh = (0..capacity)
                .find(|id| !assigned.contains(id) && !held.contains(id))
                .or_else(|| (0..capacity).find(|id| !assigned.contains(id)))
                .unwrap_or(0);
            *slot = Some(fresh);
            assigned.push(fresh);
        }
        out.into_iter().map(|id| id.unwrap_or(0)).collect()
    }
}
