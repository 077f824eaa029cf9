//! An instance's cgroups: where the `cpu`, `memory` and CPU-accounting controllers are
//! mounted (cgroup v1, v2, or a hybrid of both), the directories made for one instance, its
//! limits, its CPU usage, its processes.
//!
//! Each controller is taken from the v1 hierarchy that has it, else from the v2 hierarchy.
//! On v1 the CPU limit is `cpu.cfs_quota_us`/`cpu.cfs_period_us`, memory
//! `memory.limit_in_bytes`, usage `cpuacct.usage` (ns); on v2 `cpu.max`, `memory.max`, and
//! `usage_usec` in `cpu.stat`. An instance gets one directory per hierarchy used, under the
//! agent's own cgroup (`<agent's>/lb-instances/<id>`) unless a parent is configured.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::LocalError;

/// The CFS period the CPU limit is expressed over: the kernel's default, 100 ms.
const CFS_PERIOD_US: u64 = 100_000;

/// A cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// cgroup v1: one hierarchy per controller (or group of controllers).
    V1,
    /// cgroup v2: the unified hierarchy.
    V2,
}

/// One mounted hierarchy the instances use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// v1 or v2.
    pub version: Version,
    /// Where it is mounted (`/sys/fs/cgroup/cpu`).
    pub mount: PathBuf,
    /// The agent's own cgroup in it, relative to the mount (`/` at the root).
    pub own: PathBuf,
    /// The controllers the instances take from it (`cpu`, `cpuacct`, `memory`).
    pub controllers: BTreeSet<String>,
}

/// Where each controller an instance needs lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The hierarchies used, each with the controllers taken from it.
    pub hierarchies: Vec<Hierarchy>,
}

/// The controllers an instance needs: limits (`cpu`, `memory`) and CPU usage (`cpuacct` on
/// v1; v2 accounts CPU in every cgroup).
const NEEDED: [&str; 3] = ["cpu", "memory", "cpuacct"];

impl Layout {
    /// Reads this process's mounts and cgroups.
    pub fn detect() -> Result<Layout, LocalError> {
        let read = |path: &str| {
            fs::read_to_string(path).map_err(|e| LocalError::Cgroup(format!("reading {path}: {e}")))
        };
        let own = read("/proc/self/cgroup")?;
        let mut mountinfo = read("/proc/self/mountinfo")?;
        if !hidden_hierarchies(&mountinfo, &own).is_empty() {
            mount_hidden(&mountinfo, &own)?;
            mountinfo = read("/proc/self/mountinfo")?;
        }
        let v2_controllers = v2_mount(&mountinfo)
            .map(|m| fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default())
            .unwrap_or_default();
        Layout::from_system(&mountinfo, &own, &v2_controllers)
    }

    /// The layout `mountinfo` (`/proc/self/mountinfo`), `own` (`/proc/self/cgroup`) and the
    /// v2 root's `cgroup.controllers` describe.
    pub fn from_system(
        mountinfo: &str,
        own: &str,
        v2_controllers: &str,
    ) -> Result<Layout, LocalError> {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        let v2_available: BTreeSet<&str> = v2_controllers.split_whitespace().collect();
        for controller in NEEDED {
            if let Some(mount) = v1_mount(mountinfo, controller) {
                if let Some(found) = hierarchies.iter_mut().find(|h| h.mount == mount) {
                    found.controllers.insert(controller.to_owned());
                    continue;
                }
                let own = own_path(own, |list| list.split(',').any(|c| c == controller))
                    .ok_or_else(|| {
                        LocalError::Cgroup(format!(
                            "/proc/self/cgroup names no cgroup for {controller}"
                        ))
                    })?;
                hierarchies.push(Hierarchy {
                    version: Version::V1,
                    mount,
                    own,
                    controllers: [controller.to_owned()].into(),
                });
                continue;
            }
            // cgroup v2 accounts CPU usage in every cgroup: `cpuacct` needs no controller.
            let on_v2 = controller == "cpuacct" || v2_available.contains(controller);
            match v2_mount(mountinfo) {
                Some(mount) if on_v2 => {
                    if let Some(found) = hierarchies.iter_mut().find(|h| h.mount == mount) {
                        found.controllers.insert(controller.to_owned());
                        continue;
                    }
                    let own = own_path(own, str::is_empty).ok_or_else(|| {
                        LocalError::Cgroup("/proc/self/cgroup has no cgroup v2 line".into())
                    })?;
                    hierarchies.push(Hierarchy {
                        version: Version::V2,
                        mount,
                        own,
                        controllers: [controller.to_owned()].into(),
                    });
                }
                _ => {
                    return Err(LocalError::Cgroup(format!(
                        "no cgroup hierarchy has the {controller} controller (mount it on v1 \
                         or enable it on v2)"
                    )));
                }
            }
        }
        Ok(Layout { hierarchies })
    }

    /// The directories for instance `id`: under `parent` (relative to each mount) when
    /// given, else under `lb-instances` in the agent's own cgroup.
    pub fn instance_dirs(&self, parent: Option<&Path>, id: &str) -> Vec<CgroupDir> {
        self.hierarchies
            .iter()
            .map(|h| {
                let parent = match parent {
                    Some(p) => relative(p).to_path_buf(),
                    None => relative(&h.own).join("lb-instances"),
                };
                CgroupDir {
                    version: h.version,
                    path: h.mount.join(parent).join(id),
                    controllers: h.controllers.clone(),
                }
            })
            .collect()
    }
}

/// `p` without its leading `/`, to join under a mount.
fn relative(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

/// The mount point of the v1 hierarchy that has `controller`.
fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut after = after.split_whitespace();
        if after.next()? != "cgroup" {
            return None;
        }
        let options: Vec<String> = after.nth(1)?.split(',').map(str::to_owned).collect();
        if !options.iter().any(|o| o == controller) {
            return None;
        }
        Some(PathBuf::from(before.split_whitespace().nth(4)?))
    })
}

/// The mount point of the cgroup v2 hierarchy, if mounted.
fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(before.split_whitespace().nth(4).unwrap_or("")))
            .filter(|p| !p.as_os_str().is_empty())
    })
}

/// Where cgroup hierarchies are mounted on a usual system.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The v1 hierarchies the process is in (`/proc/self/cgroup`), with a controller instances
/// need, that are mounted nowhere in this mount namespace (their controller lists, as the
/// mount option they are mounted with). `ip netns exec` remounts `/sys` and so hides the
/// host's cgroup mounts from an agent run in a network namespace.
fn hidden_hierarchies(mountinfo: &str, own: &str) -> Vec<String> {
    own.lines()
        .filter_map(|line| line.split(':').nth(1))
        .filter(|list| {
            !list.is_empty()
                && !list.starts_with("name=")
                && list.split(',').any(|c| NEEDED.contains(&c))
                && list.split(',').all(|c| v1_mount(mountinfo, c).is_none())
        })
        .map(str::to_owned)
        .collect()
}

/// Mounts the hierarchies `hidden_hierarchies` finds under `/sys/fs/cgroup` (on a tmpfs of
/// its own when nothing is mounted there), as systemd mounts them; and the v2 hierarchy at
/// `/sys/fs/cgroup/unified` if it is hidden too. The same hierarchy mounted again is the same
/// hierarchy: limits set here are the host's.
fn mount_hidden(mountinfo: &str, own: &str) -> Result<(), LocalError> {
    let root = Path::new(CGROUP_ROOT);
    let mounted_at_root = mountinfo.lines().any(|line| {
        line.split_once(" - ")
            .and_then(|(before, _)| before.split_whitespace().nth(4))
            == Some(CGROUP_ROOT)
    });
    if !mounted_at_root {
        mount("tmpfs", root, "tmpfs", Some("mode=755"))?;
    }
    for list in hidden_hierarchies(mountinfo, own) {
        let at = root.join(&list);
        fs::create_dir_all(&at)
            .map_err(|e| LocalError::Cgroup(format!("making {}: {e}", at.display())))?;
        mount("cgroup", &at, "cgroup", Some(&list))?;
        tracing::info!(at = %at.display(), controllers = list, "mounted a cgroup hierarchy this mount namespace did not show (ip netns exec hides the host's)");
    }
    if v2_mount(mountinfo).is_none() && own.lines().any(|l| l.starts_with("0::")) {
        let at = root.join("unified");
        fs::create_dir_all(&at)
            .map_err(|e| LocalError::Cgroup(format!("making {}: {e}", at.display())))?;
        mount("cgroup2", &at, "cgroup2", None)?;
    }
    Ok(())
}

/// `mount -t fstype source at -o options`.
fn mount(source: &str, at: &Path, fstype: &str, options: Option<&str>) -> Result<(), LocalError> {
    let c = |s: &str| {
        std::ffi::CString::new(s).map_err(|e| LocalError::Cgroup(format!("mounting {source}: {e}")))
    };
    let (source_c, fstype_c) = (c(source)?, c(fstype)?);
    let target = c(&at.to_string_lossy())?;
    let data = options.map(c).transpose()?;
    // SAFETY: NUL-terminated strings that outlive the call; data is a string or null.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target.as_ptr(),
            fstype_c.as_ptr(),
            0,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>()),
        )
    };
    if rc != 0 {
        return Err(LocalError::Cgroup(format!(
            "mounting {fstype} on {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// The path in `/proc/self/cgroup` of the line whose controller list `matches`.
fn own_path(own: &str, matches: impl Fn(&str) -> bool) -> Option<PathBuf> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let list = parts.next()?;
        let path = parts.next()?;
        matches(list).then(|| PathBuf::from(path))
    })
}

/// One of an instance's cgroup directories (kept in the instance's record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDir {
    /// Its version.
    pub version: Version,
    /// Its path.
    pub path: PathBuf,
    /// The controllers it is used for.
    pub controllers: BTreeSet<String>,
}

impl CgroupDir {
    /// Makes the directory and sets the limits its controllers carry: `cpu` cores, `memory`
    /// bytes. On v2, enables the controllers for the parent's children first.
    pub fn create(&self, cpu: f64, memory: u64) -> Result<(), LocalError> {
        let parent = self.path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(|e| io_error("creating", parent, e))?;
        if self.version == Version::V2 {
            let wanted: Vec<String> = ["cpu", "memory"]
                .iter()
                .filter(|c| self.controllers.contains(**c))
                .map(|c| format!("+{c}"))
                .collect();
            if !wanted.is_empty() {
                // Fails when the parent's own parent does not delegate them, or when the
                // parent holds processes (v2's "no internal processes" rule): say so.
                write(&parent.join("cgroup.subtree_control"), &wanted.join(" "))?;
            }
        }
        match fs::create_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error("creating", &self.path, e)),
        }
        let quota = cpu_quota_us(cpu);
        for controller in &self.controllers {
            match (controller.as_str(), self.version) {
                ("cpu", Version::V1) => {
                    write(
                        &self.path.join("cpu.cfs_period_us"),
                        &CFS_PERIOD_US.to_string(),
                    )?;
                    write(&self.path.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                ("cpu", Version::V2) => {
                    write(
                        &self.path.join("cpu.max"),
                        &format!("{quota} {CFS_PERIOD_US}"),
                    )?;
                }
                ("memory", Version::V1) => {
                    write(
                        &self.path.join("memory.limit_in_bytes"),
                        &memory.to_string(),
                    )?;
                }
                ("memory", Version::V2) => {
                    write(&self.path.join("memory.max"), &memory.to_string())?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// CPU time used by everything in it so far, in nanoseconds, if it accounts CPU.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        if !self.controllers.contains("cpuacct") {
            return None;
        }
        match self.version {
            Version::V1 => fs::read_to_string(self.path.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok(),
            Version::V2 => {
                let stat = fs::read_to_string(self.path.join("cpu.stat")).ok()?;
                usage_usec(&stat).map(|us| us.saturating_mul(1000))
            }
        }
    }

    /// The processes in it (none when it is gone).
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Its `cgroup.procs`, which a process joins by writing `0` to it.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Removes it (it must be empty); gone already is fine.
    pub fn remove(&self) -> Result<(), LocalError> {
        match fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing", &self.path, e)),
        }
    }
}

/// The CFS quota, in µs per `CFS_PERIOD_US`, for `cpu` cores; the kernel's minimum is 1 ms.
pub fn cpu_quota_us(cpu: f64) -> u64 {
    // `as` saturates: a huge `cpu` becomes u64::MAX, which the kernel refuses by name.
    ((cpu * CFS_PERIOD_US as f64).round() as u64).max(1000)
}

/// `usage_usec` from a v2 `cpu.stat`.
fn usage_usec(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

fn write(path: &Path, value: &str) -> Result<(), LocalError> {
    fs::write(path, value)
        .map_err(|e| LocalError::Cgroup(format!("writing {value:?} to {}: {e}", path.display())))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> LocalError {
    LocalError::Cgroup(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's: cpu, cpuacct and memory on v1, a v2 mount with almost nothing.
    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
31 25 0:27 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
32 25 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_OWN: &str = "\
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn hierarchies_hidden_by_a_remounted_sys_are_found_with_their_mount_options() {
        // `ip netns exec` remounted /sys: no cgroup mount is left.
        let bare = "22 1 0:5 / /sys rw,relatime - sysfs sysfs rw\n";
        let own = "5:cpu,cpuacct:/\n4:memory:/m\n3:pids:/\n1:name=systemd:/\n0::/\n";
        assert_eq!(hidden_hierarchies(bare, own), ["cpu,cpuacct", "memory"]);
        // Nothing hidden where they are mounted.
        assert!(hidden_hierarchies(HYBRID_MOUNTS, HYBRID_OWN).is_empty());
    }

    #[test]
    fn a_hybrid_machine_takes_every_controller_from_v1() {
        let layout = Layout::from_system(HYBRID_MOUNTS, HYBRID_OWN, "hugetlb").unwrap();
        let dirs = layout.instance_dirs(None, "i-1");
        let paths: Vec<_> = dirs.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/sys/fs/cgroup/cpu/lb-instances/i-1"),
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/lb-instances/i-1"),
                PathBuf::from("/sys/fs/cgroup/cpuacct/lb-instances/i-1"),
            ]
        );
        assert!(dirs.iter().all(|d| d.version == Version::V1));
    }

    #[test]
    fn cpu_and_cpuacct_mounted_together_share_one_directory() {
        let mounts = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let own = "3:memory:/a\n2:cpu,cpuacct:/b\n";
        let layout = Layout::from_system(mounts, own, "").unwrap();
        assert_eq!(layout.hierarchies.len(), 2);
        assert_eq!(layout.hierarchies[0].own, PathBuf::from("/b"));
        assert_eq!(
            layout.hierarchies[0].controllers,
            ["cpu".to_owned(), "cpuacct".to_owned()].into()
        );
    }

    #[test]
    fn a_pure_v2_machine_uses_the_unified_hierarchy_for_everything() {
        let mounts = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let layout =
            Layout::from_system(mounts, "0::/lb.slice/agent\n", "cpu io memory pids").unwrap();
        assert_eq!(layout.hierarchies.len(), 1);
        let dirs = layout.instance_dirs(Some(Path::new("/lb.slice/instances")), "i-2");
        assert_eq!(
            dirs[0].path,
            PathBuf::from("/sys/fs/cgroup/lb.slice/instances/i-2")
        );
        assert_eq!(dirs[0].version, Version::V2);
    }

    #[test]
    fn a_missing_memory_controller_is_an_error_naming_it() {
        let mounts = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let err = Layout::from_system(mounts, "0::/\n", "cpu").unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn half_a_core_is_half_the_period_and_tiny_shares_get_the_kernel_minimum() {
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.001), 1000);
    }

    /// A directory standing in for a cgroup file system (its files are what the kernel's
    /// would read and write), removed first.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-cgroup-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn on_v2_the_parent_delegates_cpu_and_memory_and_the_limits_go_in_cpu_max_and_memory_max() {
        let root = scratch("v2");
        let dir = CgroupDir {
            version: Version::V2,
            path: root.join("lb-instances/i-1"),
            controllers: ["cpu", "cpuacct", "memory"].map(String::from).into(),
        };
        dir.create(0.5, 256 << 20).unwrap();
        assert_eq!(
            read(&root.join("lb-instances/cgroup.subtree_control")),
            "+cpu +memory"
        );
        assert_eq!(read(&dir.path.join("cpu.max")), "50000 100000");
        assert_eq!(read(&dir.path.join("memory.max")), "268435456");
        assert!(!dir.path.join("cpu.cfs_quota_us").exists());
        // CPU time from cpu.stat (µs), in ns.
        fs::write(
            dir.path.join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\n",
        )
        .unwrap();
        assert_eq!(dir.cpu_usage_ns(), Some(2_500_000));
        fs::write(dir.path.join("cgroup.procs"), "41\n42\n").unwrap();
        assert_eq!(dir.pids(), [41, 42]);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn on_v1_the_limits_go_in_the_cfs_quota_and_limit_in_bytes() {
        let root = scratch("v1");
        let cpu = CgroupDir {
            version: Version::V1,
            path: root.join("cpu/lb-instances/i-1"),
            controllers: ["cpu", "cpuacct"].map(String::from).into(),
        };
        let memory = CgroupDir {
            version: Version::V1,
            path: root.join("memory/lb-instances/i-1"),
            controllers: ["memory".to_owned()].into(),
        };
        cpu.create(1.5, 256 << 20).unwrap();
        memory.create(1.5, 256 << 20).unwrap();
        assert_eq!(read(&cpu.path.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.path.join("cpu.cfs_quota_us")), "150000");
        assert_eq!(
            read(&memory.path.join("memory.limit_in_bytes")),
            "268435456"
        );
        assert!(
            !root
                .join("cpu/lb-instances/cgroup.subtree_control")
                .exists()
        );
        fs::write(cpu.path.join("cpuacct.usage"), "987654\n").unwrap();
        assert_eq!(cpu.cpu_usage_ns(), Some(987_654));
        assert_eq!(memory.cpu_usage_ns(), None, "memory accounts no CPU");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn v2_usage_is_read_from_cpu_stat() {
        let stat = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(usage_usec(stat), Some(1234));
    }
}
