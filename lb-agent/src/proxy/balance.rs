//! STUB (replaced by the sticky branch).
use crate::config::Algorithm;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
};
pub struct TargetLoad {
    outstanding: AtomicU32,
}
impl TargetLoad {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            outstanding: AtomicU32::new(0),
        })
    }
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }
    pub fn start(self: &Arc<Self>) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(self.clone())
    }
}
pub struct Outstanding(Arc<TargetLoad>);
impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}
pub struct ServingTarget {
    pub address: SocketAddr,
    pub weight: u32,
    pub load: Arc<TargetLoad>,
    pub token: Arc<str>,
}
pub struct GroupTargets {
    targets: Vec<ServingTarget>,
    cursor: AtomicUsize,
}
impl GroupTargets {
    pub fn new(_a: Algorithm, targets: Vec<ServingTarget>) -> Self {
        Self {
            targets,
            cursor: AtomicUsize::new(0),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
    pub fn targets(&self) -> &[ServingTarget] {
        &self.targets
    }
    pub fn pick(&self) -> Option<&ServingTarget> {
        if self.targets.is_empty() {
            return None;
        }
        Some(&self.targets[self.cursor.fetch_add(1, Ordering::Relaxed) % self.targets.len()])
    }
    pub fn by_token(&self, token: &str) -> Option<&ServingTarget> {
        self.targets.iter().find(|t| &*t.token == token)
    }
}
pub struct LoadRegistry {
    loads: std::collections::HashMap<(String, SocketAddr), Arc<TargetLoad>>,
}
pub struct LoadBuild<'a> {
    registry: &'a mut LoadRegistry,
    used: std::collections::HashMap<(String, SocketAddr), Arc<TargetLoad>>,
}
impl LoadRegistry {
    pub fn new() -> Self {
        Self {
            loads: Default::default(),
        }
    }
    pub fn build(&mut self) -> LoadBuild<'_> {
        LoadBuild {
            registry: self,
            used: Default::default(),
        }
    }
}
impl LoadBuild<'_> {
    pub fn load(&mut self, group: &str, address: SocketAddr) -> Arc<TargetLoad> {
        let key = (group.to_owned(), address);
        let l = self
            .registry
            .loads
            .get(&key)
            .cloned()
            .unwrap_or_else(TargetLoad::new);
        self.used.insert(key, l.clone());
        l
    }
}
impl Drop for LoadBuild<'_> {
    fn drop(&mut self) {
        self.registry.loads = std::mem::take(&mut self.used);
    }
}
