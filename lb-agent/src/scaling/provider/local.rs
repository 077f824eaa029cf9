//! The `local` provider: each instance is a process tree on this machine, in a network
//! namespace of its own (`lbi-<id>`) reached from the load balancer's namespace over a veth
//! pair, in cgroups of its own carrying its type's CPU and memory limits, behind its security
//! group's inbound rules.
//!
//! What the machine needs: root (namespaces, cgroups, firewall); `ip` (iproute2); `nft`
//! (nftables), or `iptables-restore`/`ip6tables-restore` where nft is missing; `/bin/sh`;
//! the `cpu` and `memory` controllers, each on a cgroup v1 hierarchy or on cgroup v2, and
//! CPU accounting (`cpuacct` on v1; built into v2). Hybrid machines (cpu and memory on v1,
//! a v2 mount with few controllers) work: each controller is taken from where it is mounted.
//! On v2 the instances' parent cgroup must be able to enable `cpu` and `memory` for its
//! children: its parent delegates them and it holds no process itself, so with systemd run
//! the agent with `Delegate=yes` and give `cgroup_parent` a sibling of the agent's leaf.
//! Instances are placed under the agent's own cgroup by default (`<agent's>/lb-instances`).
//!
//! Per instance, `<state_dir>/<id>/` holds `record.json` (what a restarted agent adopts),
//! `user-data` (the script), `user-data.log` (its output, like EC2's
//! `cloud-init-output.log`) and `console.log` (the command's output, like EC2's console
//! output).
//!
//! Traffic the data plane redirects with XDP into an instance's veth needs an XDP program on
//! the instance's end (the veth quirk, DESIGN.md): the agent attaches one from a `LinkHook`,
//! which runs on every new veth before the instance starts.
//!
//! An instance outlives the agent: its first process is in a session of its own and is
//! reparented to init when the agent exits. Its record names it by pid and start time, so a
//! new agent adopting it never mistakes a later process reusing the pid for it. Under systemd,
//! the unit needs `KillMode=process` (or `cgroup_parent` outside the unit): its default
//! stops every process of the unit's cgroup, instances included.

mod cgroup;
mod netns;
mod process;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Child,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use cgroup::{CgroupDir, Layout, Version};
pub use netns::{Firewall, lb_interface_name, namespace_name};
use serde::{Deserialize, Serialize};

use super::{
    InstanceRecord, InstanceSpec, InstanceStatus, Provider, ProviderDetail, ProviderError,
    check_spec, command::CommandError, instance_environment, unix_now,
};

/// How long a killed instance's processes may take to go away before terminate gives up.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often terminate looks whether the processes are gone.
const POLL: Duration = Duration::from_millis(20);

/// Why the local provider failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Reading or writing the cgroup file system failed, or a controller is missing.
    #[error("cgroups: {0}")]
    Cgroup(String),
    /// A command (`ip`, `nft`, `iptables-restore`) failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A command could not run or did not finish.
    #[error(transparent)]
    Run(#[from] CommandError),
    /// Starting or signalling the instance's process failed.
    #[error("instance process: {0}")]
    Process(String),
    /// Neither nft nor iptables is installed: inbound rules cannot be enforced.
    #[error(
        "neither `nft` nor `iptables-restore` is installed: the instances' inbound rules \
         cannot be enforced (install nftables)"
    )]
    NoFirewall,
    /// The state directory could not be read or written.
    #[error("state directory: {0}")]
    StateDir(String),
    /// The link hook refused the instance's veth.
    #[error("instance {instance}: the link hook failed: {message}")]
    LinkHook {
        /// The instance.
        instance: String,
        /// The hook's message.
        message: String,
    },
    /// The processes survived SIGKILL.
    #[error("instance {instance}: processes {pids:?} survived SIGKILL for {KILL_WAIT:?}")]
    Unkillable {
        /// The instance.
        instance: String,
        /// Its processes still there.
        pids: Vec<i32>,
    },
}

/// How the local provider is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalConfig {
    /// Where each instance's directory (record, user data, logs) is made.
    pub state_dir: PathBuf,
    /// The load balancer's network namespace, where the veths' LB ends go; the agent's own
    /// when `None`.
    pub lb_namespace: Option<String>,
    /// The instances' parent cgroup, relative to each hierarchy's root; `lb-instances` in the
    /// agent's own cgroup when `None`.
    pub cgroup_parent: Option<PathBuf>,
}

/// The local provider's part of an instance record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalDetail {
    /// The instance's first process (after the user data, its command).
    pub pid: u32,
    /// That process's start time (`/proc/PID/stat` field 22): guards against pid reuse.
    pub start_time: u64,
    /// Its network namespace.
    pub namespace: String,
    /// The load balancer's namespace (`None`: the agent's).
    pub lb_namespace: Option<String>,
    /// The LB end of its veth.
    pub lb_interface: String,
    /// Its cgroup directories.
    pub cgroups: Vec<CgroupDir>,
    /// Its type's CPU, in cores: the 100% of its utilisation.
    pub cpu: f64,
    /// Its directory (record, user data, logs).
    pub directory: PathBuf,
}

/// One instance the provider looks after.
#[derive(Debug)]
struct Tracked {
    record: InstanceRecord,
    detail: LocalDetail,
    /// The process when this provider started it (to reap it); `None` when adopted.
    child: Option<Child>,
    /// The previous CPU sample: when, and the cgroup's usage then (ns).
    last_sample: Option<(Instant, u64)>,
}

/// An instance's veth, as the link hook sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLink<'a> {
    /// The instance.
    pub instance_id: &'a str,
    /// The instance's namespace.
    pub namespace: &'a str,
    /// The instance's end, in its namespace (`eth0`).
    pub interface: &'a str,
    /// The load balancer's namespace (`None`: the agent's).
    pub lb_namespace: Option<&'a str>,
    /// The load balancer's end.
    pub lb_interface: &'a str,
}

/// What the agent does to each instance's veth once it is up, before the instance starts:
/// the data plane attaches its pass program to the instance's end, because frames XDP
/// redirects into a veth are dropped unless the peer runs an XDP program (DESIGN.md, "The
/// lab"). An error fails the launch.
#[derive(Clone)]
pub struct LinkHook(pub Arc<LinkHookFn>);

/// The link hook's function: `Err` carries the message the launch fails with.
pub type LinkHookFn = dyn Fn(&InstanceLink<'_>) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for LinkHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkHook(..)")
    }
}

/// Runs instances on this machine.
#[derive(Debug)]
pub struct LocalProvider {
    config: LocalConfig,
    layout: Layout,
    firewall: Firewall,
    link_hook: Option<LinkHook>,
    instances: Mutex<BTreeMap<String, Tracked>>,
    /// Ids being launched (not yet in `instances`).
    launching: Mutex<BTreeSet<String>>,
}

impl LocalProvider {
    /// A provider for `config`, after finding the cgroup controllers and the firewall.
    pub fn new(config: LocalConfig) -> Result<LocalProvider, LocalError> {
        fs::create_dir_all(&config.state_dir).map_err(|e| {
            LocalError::StateDir(format!("creating {}: {e}", config.state_dir.display()))
        })?;
        Ok(LocalProvider {
            layout: Layout::detect()?,
            firewall: Firewall::detect()?,
            config,
            link_hook: None,
            instances: Mutex::new(BTreeMap::new()),
            launching: Mutex::new(BTreeSet::new()),
        })
    }

    /// The same provider, calling `hook` on every new instance's veth.
    pub fn with_link_hook(self, hook: LinkHook) -> LocalProvider {
        LocalProvider {
            link_hook: Some(hook),
            ..self
        }
    }

    /// The records left in the state directory by this or an earlier agent (instances not
    /// terminated), for `adopt`.
    pub fn saved_records(&self) -> Result<Vec<InstanceRecord>, LocalError> {
        let dir = &self.config.state_dir;
        let entries = fs::read_dir(dir)
            .map_err(|e| LocalError::StateDir(format!("reading {}: {e}", dir.display())))?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join("record.json");
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let record = serde_json::from_str(&text).map_err(|e| {
                LocalError::StateDir(format!("{} does not parse: {e}", path.display()))
            })?;
            records.push(record);
        }
        records.sort_by(|a: &InstanceRecord, b| a.instance_id.cmp(&b.instance_id));
        Ok(records)
    }

    /// The directory of instance `id`.
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tracked>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent:
        // every change to it is one insert or remove.
        self.instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Everything but the bookkeeping of a launch; on error, what was made is removed.
    fn start(&self, spec: &InstanceSpec) -> Result<(LocalDetail, Child), LocalError> {
        let id = &spec.instance_id;
        let directory = self.instance_dir(id);
        fs::create_dir_all(&directory)
            .map_err(|e| LocalError::StateDir(format!("creating {}: {e}", directory.display())))?;
        let namespace = namespace_name(id);
        let lb_interface = lb_interface_name(id);
        let cgroups = self
            .layout
            .instance_dirs(self.config.cgroup_parent.as_deref(), id);
        let detail = LocalDetail {
            pid: 0,
            start_time: 0,
            namespace,
            lb_namespace: self.config.lb_namespace.clone(),
            lb_interface,
            cgroups,
            cpu: spec.instance_type.cpu,
            directory,
        };
        match self.start_in(spec, &detail) {
            Ok((pid, start_time, child)) => Ok((
                LocalDetail {
                    pid,
                    start_time,
                    ..detail
                },
                child,
            )),
            Err(e) => {
                // Best effort: the launch's own error is the one to report.
                let _ = remove(&detail, id);
                Err(e)
            }
        }
    }

    fn start_in(
        &self,
        spec: &InstanceSpec,
        detail: &LocalDetail,
    ) -> Result<(u32, u64, Child), LocalError> {
        let network = network(detail);
        // A leftover of the same instance (a crash between launch and record) goes first.
        network.delete()?;
        network.create(spec.address, spec.gateway)?;
        network.apply_rules(self.firewall, &spec.inbound_rules)?;
        if let Some(hook) = &self.link_hook {
            let link = InstanceLink {
                instance_id: &spec.instance_id,
                namespace: &detail.namespace,
                interface: "eth0",
                lb_namespace: detail.lb_namespace.as_deref(),
                lb_interface: &detail.lb_interface,
            };
            (hook.0)(&link).map_err(|message| LocalError::LinkHook {
                instance: spec.instance_id.clone(),
                message,
            })?;
        }
        for dir in &detail.cgroups {
            dir.create(spec.instance_type.cpu, spec.instance_type.memory_bytes)?;
        }
        let user_data = match &spec.user_data {
            Some(script) => {
                let path = detail.directory.join("user-data");
                fs::write(&path, script).map_err(|e| {
                    LocalError::StateDir(format!("writing {}: {e}", path.display()))
                })?;
                Some(path)
            }
            None => None,
        };
        let environment = environment(spec);
        let working_directory = spec
            .image
            .working_directory
            .clone()
            .unwrap_or_else(|| detail.directory.clone());
        let procs: Vec<PathBuf> = detail.cgroups.iter().map(CgroupDir::procs_file).collect();
        let netns_path = Path::new("/run/netns").join(&detail.namespace);
        let mut child = process::start(&process::Start {
            netns: &netns_path,
            cgroup_procs: &procs,
            user_data: user_data.as_deref(),
            user_data_log: &detail.directory.join("user-data.log"),
            console_log: &detail.directory.join("console.log"),
            command: &spec.image.command,
            working_directory: &working_directory,
            environment: &environment,
        })?;
        let pid = child.id();
        // Read while the child cannot be reaped by anyone else: even if it exited already it
        // is a zombie with its stat until we wait for it.
        let Some(stat) = process::stat(pid) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LocalError::Process(format!(
                "/proc/{pid}/stat unreadable right after the start"
            )));
        };
        Ok((pid, stat.start_time, child))
    }

    /// A launch of an id reserved by `launch`.
    fn launch_reserved(&self, spec: &InstanceSpec) -> Result<InstanceRecord, ProviderError> {
        let (detail, child) = self.start(spec)?;
        let record = InstanceRecord {
            instance_id: spec.instance_id.clone(),
            group: spec.group.clone(),
            template: spec.template.clone(),
            template_version: spec.template_version,
            address: spec.address,
            launched_at: unix_now(),
            detail: ProviderDetail::Local(detail.clone()),
        };
        let path = detail.directory.join("record.json");
        // Written before the instance is tracked: a crash after this line leaves a record
        // a restarted agent adopts. An instance without a record would be lost to the next
        // agent: it is stopped.
        let written = serde_json::to_string_pretty(&record)
            .map_err(|e| format!("encoding the record: {e}"))
            .and_then(|text| {
                fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
            });
        if let Err(message) = written {
            let mut tracked = Tracked {
                record,
                detail,
                child: Some(child),
                last_sample: None,
            };
            let _ = self.stop(&mut tracked, Duration::ZERO);
            return Err(LocalError::StateDir(message).into());
        }
        self.lock().insert(
            spec.instance_id.clone(),
            Tracked {
                record: record.clone(),
                detail,
                child: Some(child),
                last_sample: None,
            },
        );
        Ok(record)
    }

    /// Signals, waits, kills and cleans up after one instance.
    fn stop(&self, tracked: &mut Tracked, stop_timeout: Duration) -> Result<(), LocalError> {
        let id = tracked.record.instance_id.clone();
        let detail = &tracked.detail;
        let pids = || live_pids(detail);
        for pid in pids() {
            process::signal(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + stop_timeout;
        while !pids().is_empty() && Instant::now() < deadline {
            reap(&mut tracked.child);
            std::thread::sleep(POLL);
        }
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            reap(&mut tracked.child);
            let left = pids();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(LocalError::Unkillable {
                    instance: id,
                    pids: left,
                });
            }
            for pid in left {
                process::signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(POLL);
        }
        if let Some(mut child) = tracked.child.take() {
            let _ = child.wait();
        }
        remove(detail, &id)
    }
}

/// The processes of an instance that have not exited: its first process (when it is still
/// the one started) and everything in its cgroups.
fn live_pids(detail: &LocalDetail) -> Vec<i32> {
    let mut pids: Vec<i32> = detail.cgroups.iter().flat_map(CgroupDir::pids).collect();
    if process::is_running(detail.pid, detail.start_time) {
        pids.extend(i32::try_from(detail.pid).ok());
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&pid| {
        u32::try_from(pid)
            .ok()
            .and_then(process::stat)
            .is_some_and(|s| s.state != 'Z' && s.state != 'X')
    });
    pids
}

/// Collects the child's exit status if it has exited, so it does not stay a zombie.
fn reap(child: &mut Option<Child>) {
    if let Some(c) = child
        && let Ok(Some(_)) = c.try_wait()
    {
        *child = None;
    }
}

/// The instance's network, as its record names it.
fn network(detail: &LocalDetail) -> netns::Network<'_> {
    netns::Network {
        namespace: &detail.namespace,
        lb_namespace: detail.lb_namespace.as_deref(),
        lb_interface: &detail.lb_interface,
        timeout: Duration::from_secs(30),
    }
}

/// Removes the network, the cgroups and the record of an instance whose processes are gone;
/// its logs stay (like EC2's console output after termination).
fn remove(detail: &LocalDetail, id: &str) -> Result<(), LocalError> {
    network(detail).delete()?;
    for dir in &detail.cgroups {
        // A v1 cgroup may report busy for a moment after its last process is reaped.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match dir.remove() {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }
    let record = detail.directory.join("record.json");
    match fs::remove_file(&record) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LocalError::StateDir(format!(
            "removing {} of {id}: {e}",
            record.display()
        ))),
    }
}

/// The instance's environment: `PATH` and `HOME` from the agent (so the command is found as
/// the operator would find it), then `instance_environment`.
pub fn environment(spec: &InstanceSpec) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for name in ["PATH", "HOME"] {
        if let Ok(value) = std::env::var(name) {
            env.insert(name.to_owned(), value);
        }
    }
    env.entry("PATH".to_owned())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.extend(instance_environment(spec));
    env
}

/// CPU used between two samples, in percent of `cpu` cores.
pub fn utilization(used_ns: u64, elapsed: Duration, cpu: f64) -> Option<f64> {
    let wall = elapsed.as_nanos() as f64;
    (wall > 0.0 && cpu > 0.0).then(|| used_ns as f64 / wall / cpu * 100.0)
}

impl Provider for LocalProvider {
    fn launch(&self, spec: &InstanceSpec) -> Result<InstanceRecord, ProviderError> {
        check_spec(spec)?;
        let id = &spec.instance_id;
        {
            // Reserved under the instances' lock: two launches of one id cannot both pass
            // (the second would tear down the first's namespace as a leftover).
            let instances = self.lock();
            let mut launching = self
                .launching
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if instances.contains_key(id) || !launching.insert(id.clone()) {
                return Err(ProviderError::InvalidSpec {
                    instance: id.clone(),
                    reason: "an instance with this id runs or is being launched already".into(),
                });
            }
        }
        let launched = self.launch_reserved(spec);
        self.launching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        launched
    }

    fn terminate(&self, instance_id: &str, stop_timeout: Duration) -> Result<(), ProviderError> {
        // Out of the map while it stops (seconds): describe and other launches go on.
        let mut tracked = self
            .lock()
            .remove(instance_id)
            .ok_or_else(|| ProviderError::UnknownInstance(instance_id.to_owned()))?;
        match self.stop(&mut tracked, stop_timeout) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Still ours: a later terminate tries again.
                self.lock().insert(instance_id.to_owned(), tracked);
                Err(e.into())
            }
        }
    }

    fn describe(&self) -> Result<Vec<InstanceStatus>, ProviderError> {
        let mut instances = self.lock();
        let now = Instant::now();
        Ok(instances
            .values_mut()
            .map(|t| {
                reap(&mut t.child);
                let running = process::is_running(t.detail.pid, t.detail.start_time);
                let usage = t.detail.cgroups.iter().find_map(CgroupDir::cpu_usage_ns);
                let cpu_utilization = match (running, usage, t.last_sample) {
                    (true, Some(now_ns), Some((then, then_ns))) => utilization(
                        now_ns.saturating_sub(then_ns),
                        now.duration_since(then),
                        t.detail.cpu,
                    ),
                    _ => None,
                };
                t.last_sample = usage.map(|u| (now, u));
                InstanceStatus {
                    instance_id: t.record.instance_id.clone(),
                    running,
                    pid: running.then_some(t.detail.pid),
                    address: t.record.address,
                    cpu_utilization,
                }
            })
            .collect())
    }

    fn adopt(&self, records: &[InstanceRecord]) -> Result<Vec<InstanceStatus>, ProviderError> {
        let mut adopted = Vec::new();
        for record in records {
            let ProviderDetail::Local(detail) = &record.detail else {
                return Err(ProviderError::InvalidSpec {
                    instance: record.instance_id.clone(),
                    reason: "its record is not a local provider's".into(),
                });
            };
            adopted.push(record.instance_id.clone());
            self.lock()
                .entry(record.instance_id.clone())
                .or_insert_with(|| Tracked {
                    record: record.clone(),
                    detail: detail.clone(),
                    child: None,
                    last_sample: None,
                });
        }
        Ok(self
            .describe()?
            .into_iter()
            .filter(|s| adopted.contains(&s.instance_id))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        let mut spec = crate::scaling::provider::test_spec();
        spec.template_version = 3;
        spec.user_data = None;
        spec.environment = [
            ("INSTANCE_ID".to_owned(), "spoofed".to_owned()),
            ("COLOR".to_owned(), "blue".to_owned()),
        ]
        .into();
        spec.instance_type.memory_bytes = 256 << 20;
        spec.stop_timeout = Duration::from_secs(5);
        spec
    }

    #[test]
    fn the_instance_environment_names_it_and_cannot_be_overridden() {
        let env = environment(&spec());
        assert_eq!(env["INSTANCE_ID"], "i-0123456789abcdef0");
        assert_eq!(env["INSTANCE_ADDRESS"], "198.18.8.10");
        assert_eq!(env["GROUP"], "web-asg");
        assert_eq!(env["TEMPLATE_VERSION"], "3");
        assert_eq!(env["COLOR"], "blue");
        assert!(env.contains_key("PATH"));
    }

    #[test]
    fn utilization_is_relative_to_the_types_cpu() {
        // Half a core used for a second by a half-core type: 100%.
        let full = utilization(500_000_000, Duration::from_secs(1), 0.5).unwrap();
        assert!((full - 100.0).abs() < 1e-9, "{full}");
        let quarter = utilization(250_000_000, Duration::from_secs(2), 0.5).unwrap();
        assert!((quarter - 25.0).abs() < 1e-9, "{quarter}");
        assert_eq!(utilization(1, Duration::ZERO, 0.5), None);
    }
}
