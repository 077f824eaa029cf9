//! The data plane's objects pinned in a BPF filesystem, so that they outlive the agent.
//!
//! A pin directory holds `maps/NAME` for every map, `links/IFACE` for every XDP
//! attachment to a NIC, and `instances/LINK` for the attachments to the veths of `local`
//! instances (both ends; apart from the NICs', which a start-up with other NICs drops). While the pins exist the program stays attached and keeps forwarding with the
//! maps' last contents, whatever happens to the agent (even SIGKILL); a new agent on the same
//! directory adopts them. The agent that owns a directory holds an exclusive `flock` on it,
//! which the kernel drops when the process dies, so a second agent is refused while the first
//! lives and admitted once it is gone.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use lb_common::{
    Backend, Counters, Flow, FlowKey, GroupInfo, ListenerInfo, ListenerKey, ReverseFlow, Settings,
    VipKey, map_names,
};

/// `statfs` magic of a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where bpffs is mounted on a usual system.
pub const SYSTEM_BPFFS: &str = "/sys/fs/bpf";

/// The default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb-agent";

/// Errors around the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The directory is not on a BPF filesystem.
    #[error(
        "{0} is not on a BPF filesystem: mount one there (`mount -t bpf bpf DIR`) or choose a pin directory below {SYSTEM_BPFFS}"
    )]
    NotBpffs(PathBuf),
    /// Mounting bpffs failed.
    #[error("mounting a BPF filesystem on {SYSTEM_BPFFS}: {0}")]
    Mount(io::Error),
    /// Another agent holds the directory.
    #[error(
        "another lb-agent is running with the pin directory {0} (it holds its lock); stop it first, or give this one another --pin-dir and interface"
    )]
    Busy(PathBuf),
    /// A pinned map does not fit this agent's program.
    #[error(
        "the data plane pinned in {dir} does not fit this agent: map {map} has {detail}; run `lb-agent detach --pin-dir {dir}` first (this drops the connection table)",
        dir = dir.display()
    )]
    Incompatible {
        dir: PathBuf,
        map: &'static str,
        detail: String,
    },
    /// Another I/O error.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Every map the agent pins, with its key and value sizes.
pub const MAPS: [(&str, usize, usize); 13] = [
    (
        map_names::LISTENERS,
        size_of::<ListenerKey>(),
        size_of::<ListenerInfo>(),
    ),
    (map_names::PORTS, 4, 4),
    (map_names::VIPS, size_of::<VipKey>(), 4),
    (map_names::GROUPS, 4, size_of::<GroupInfo>()),
    (map_names::MAGLEV, 4, 4),
    (map_names::BACKENDS, 4, size_of::<Backend>()),
    (
        map_names::CONNTRACK,
        size_of::<FlowKey>(),
        size_of::<Flow>(),
    ),
    (
        map_names::SNAT,
        size_of::<FlowKey>(),
        size_of::<ReverseFlow>(),
    ),
    (map_names::SETTINGS, 4, size_of::<Settings>()),
    (map_names::LISTENER_STATS, 4, size_of::<Counters>()),
    (map_names::BACKEND_STATS, 4, size_of::<Counters>()),
    (map_names::VERDICTS, 4, 8),
    // A devmap's value is the ifindex, or a struct bpf_devmap_val: not checked.
    (map_names::TX_PORTS, 4, 0),
];

/// A pin directory this agent owns (it holds the lock until dropped).
#[derive(Debug)]
pub struct PinDir {
    dir: PathBuf,
    _lock: File,
}

impl PinDir {
    /// Makes `dir` (on bpffs, mounting `/sys/fs/bpf` if the directory is below it and nothing
    /// is mounted there: `ip netns exec` hides the host's) and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, PinError> {
        if dir.starts_with(SYSTEM_BPFFS) && !is_bpffs(Path::new(SYSTEM_BPFFS)) {
            mount_bpffs(Path::new(SYSTEM_BPFFS))?;
        }
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        if !is_bpffs(dir) {
            return Err(PinError::NotBpffs(dir.to_owned()));
        }
        for sub in ["maps", "links", "instances"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io_at(&path))?;
        }
        let lock = File::open(dir).map_err(io_at(dir))?;
        // SAFETY: a valid descriptor; flock only reads its arguments.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                PinError::Busy(dir.to_owned())
            } else {
                io_at(dir)(e)
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    /// Where the attachment to `iface` is pinned.
    pub fn link(&self, iface: &str) -> PathBuf {
        self.dir.join("links").join(iface)
    }

    /// Where the attachment to an instance's veth end called `name` is pinned.
    pub fn instance_link(&self, name: &str) -> PathBuf {
        self.dir.join("instances").join(name)
    }

    /// Whether a data plane is pinned here already (its connection table exists).
    pub fn holds_data_plane(&self) -> bool {
        self.map(map_names::CONNTRACK).exists()
    }

    /// Checks that the pinned maps have the layouts and sizes this agent's program expects;
    /// `maglev_entries`: the Maglev map's size for the configured table size and groups;
    /// `flow_capacity`: the connection table's.
    pub fn check_compatible(
        &self,
        maglev_entries: u32,
        flow_capacity: u32,
    ) -> Result<(), PinError> {
        for (name, key, value) in MAPS {
            let path = self.map(name);
            if !path.exists() {
                continue;
            }
            let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| PinError::Io {
                path: path.clone(),
                source: io::Error::other(e.to_string()),
            })?;
            let incompatible = |detail: String| PinError::Incompatible {
                dir: self.dir.clone(),
                map: name,
                detail,
            };
            if info.key_size() as usize != key
                || (value != 0 && info.value_size() as usize != value)
            {
                return Err(incompatible(format!(
                    "{}-byte keys and {}-byte values, this agent's program uses {key} and {value}",
                    info.key_size(),
                    info.value_size()
                )));
            }
            let want = match name {
                map_names::MAGLEV => Some(maglev_entries),
                map_names::CONNTRACK | map_names::SNAT => Some(flow_capacity),
                _ => None,
            };
            if let Some(want) = want
                && info.max_entries() != want
            {
                return Err(incompatible(format!(
                    "{} entries, the config asks for {want} (maglev_table_size, connection_table_size or the number of target groups changed)",
                    info.max_entries()
                )));
            }
        }
        Ok(())
    }

    /// Removes every pin: the program leaves the interfaces once the agent's own handles
    /// close, and the maps (connection table included) are freed.
    pub fn remove_all(&self) -> Result<(), PinError> {
        remove_pins(&self.dir)
    }
}

/// Removes the pins below `dir` and the directory itself.
pub fn remove_pins(dir: &Path) -> Result<(), PinError> {
    for sub in ["links", "instances", "maps"] {
        let path = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            std::fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
        }
        std::fs::remove_dir(&path).map_err(io_at(&path))?;
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(dir)(e)),
        _ => Ok(()),
    }
}

/// Whether `path` (or the nearest ancestor that exists) is on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let mut at = Some(path);
    while let Some(p) = at {
        if p.exists() {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
            let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
                return false;
            }
            #[allow(clippy::unnecessary_cast)]
            return fs.f_type as i64 == BPF_FS_MAGIC;
        }
        at = p.parent();
    }
    false
}

fn mount_bpffs(at: &Path) -> Result<(), PinError> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|e| PinError::Mount(io::Error::other(e)))?;
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount(io::Error::last_os_error()));
    }
    tracing::info!(at = %at.display(), "mounted a BPF filesystem");
    Ok(())
}
