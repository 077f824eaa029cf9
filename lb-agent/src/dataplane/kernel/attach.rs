//! Attaching the program to NICs: native, else generic; pinned links that outlive the agent
//! and are taken over by the next one; the XDP state of a NIC. (The forwarding that
//! `bpf_fib_lookup` needs is `crate::forwarding`.)

use std::ffi::CString;

use aya::programs::{
    XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use lb_common::{
    program_names,
    xdp_attachment::{AttachMode, XdpAttachment},
};

use super::{Attachment, AttachmentLink, Dataplane, DataplaneError};
use crate::dataplane::Result;

impl Dataplane {
    /// Attaches the load balancer to `iface` (one more NIC: a two-arm node has the program on
    /// both): native mode, else generic with a warning. With a pin directory the attachment
    /// is pinned; one an earlier agent pinned is taken over without a gap (the kernel swaps
    /// the program on the existing link). Returns the mode and whether it was taken over.
    pub fn attach(&mut self, iface: &str) -> Result<(AttachMode, bool)> {
        let c_iface =
            CString::new(iface).map_err(|_| DataplaneError::NoInterface(iface.to_owned()))?;
        // SAFETY: a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
        if ifindex == 0 {
            return Err(DataplaneError::NoInterface(iface.to_owned()));
        }
        let link_pin = self.pins.as_ref().map(|p| p.link(iface));
        let taken_over = match &link_pin {
            Some(path) if path.exists() => self.take_over(iface, path)?,
            _ => None,
        };
        let (attachment, taken) = match taken_over {
            Some(attachment) => (attachment, true),
            None => {
                if link_pin.is_some()
                    && let Some(program) = attached_program(iface)
                {
                    return Err(DataplaneError::Occupied {
                        iface: iface.to_owned(),
                        program,
                    });
                }
                (self.attach_new(iface, ifindex, link_pin)?, false)
            }
        };
        let mode = attachment.mode;
        self.attachments.push(attachment);
        self.tx_ports()?
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::TxPort(e.to_string()))?;
        self.add_redirect_ports()?;
        Ok((mode, taken))
    }

    /// Puts the node's interfaces in the redirect map: any may be a next hop (two-arm set-ups),
    /// and the program redirects only through the map (DROP_REDIRECT otherwise). Loopback
    /// and VLAN devices stay out: XDP cannot transmit on a VLAN device (the frame would be
    /// dropped after we counted it forwarded), so a flow routed onto one is counted as the
    /// drop it is. One the kernel refuses is left out too.
    pub fn add_redirect_ports(&mut self) -> Result<()> {
        for (name, index) in interfaces() {
            if name != "lo"
                && !is_vlan_device(&name)
                && let Err(e) = self.tx_ports()?.insert(index, index, None, 0)
            {
                tracing::debug!(iface = name, error = %e, "not in the redirect map");
            }
        }
        Ok(())
    }

    /// Puts this agent's program on the link an earlier agent pinned at `path`, atomically.
    /// `None` when the pin is stale (its interface went away): it is removed.
    fn take_over(&mut self, iface: &str, path: &std::path::Path) -> Result<Option<Attachment>> {
        let link_error = |message: String| DataplaneError::Link {
            iface: iface.to_owned(),
            message,
        };
        let pinned =
            PinnedLink::from_pin(path).map_err(|e| link_error(format!("opening its pin: {e}")))?;
        let xdp = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| link_error(format!("the pin is no XDP link: {e}")))?;
        let program = self.program(program_names::LB)?;
        let id = match program.attach_to_link(xdp) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(iface, error = %e, pin = %path.display(), "a stale pinned attachment: removed");
                std::fs::remove_file(path).map_err(|e| link_error(format!("removing it: {e}")))?;
                return Ok(None);
            }
        };
        let link = program
            .take_link(id)
            .map_err(|e| link_error(e.to_string()))?;
        let fd = FdLink::try_from(link).map_err(|e| link_error(e.to_string()))?;
        let mode = match attached_mode(iface) {
            Some(AttachMode::Generic) => AttachMode::Generic,
            _ => AttachMode::Native,
        };
        Ok(Some(Attachment {
            iface: iface.to_owned(),
            mode,
            link: AttachmentLink::Pinned(fd, path.to_owned()),
        }))
    }

    /// Attaches afresh, pinned at `pin` if given.
    fn attach_new(
        &mut self,
        iface: &str,
        ifindex: u32,
        pin: Option<std::path::PathBuf>,
    ) -> Result<Attachment> {
        let program = self.program(program_names::LB)?;
        let (id, mode) = match program.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(link) => (link, AttachMode::Native),
            Err(native) => match program.attach_to_if_index(ifindex, XdpMode::Skb) {
                Ok(link) => {
                    tracing::warn!(
                        iface,
                        error = %native,
                        "native XDP unavailable; attached in generic mode, which is much slower"
                    );
                    (link, AttachMode::Generic)
                }
                Err(generic) => {
                    return Err(DataplaneError::Attach {
                        iface: iface.to_owned(),
                        native: Box::new(native),
                        generic: Box::new(generic),
                    });
                }
            },
        };
        let link = match pin {
            None => AttachmentLink::Owned(id),
            Some(path) => {
                let link_error = |message: String| DataplaneError::Link {
                    iface: iface.to_owned(),
                    message,
                };
                let link = program
                    .take_link(id)
                    .map_err(|e| link_error(e.to_string()))?;
                let fd = FdLink::try_from(link).map_err(|e| {
                    link_error(format!("the kernel attached no bpf_link (needs 5.9+): {e}"))
                })?;
                let pinned = fd
                    .pin(&path)
                    .map_err(|e| link_error(format!("pinning at {}: {e}", path.display())))?;
                AttachmentLink::Pinned(FdLink::from(pinned), path)
            }
        };
        Ok(Attachment {
            iface: iface.to_owned(),
            mode,
            link,
        })
    }

    /// Detaches the program from every NIC and every instance veth and removes every pin:
    /// nothing is left behind.
    pub(super) fn detach_all(&mut self) -> Result<()> {
        self.detach_instances()?;
        while let Some(attachment) = self.attachments.pop() {
            match attachment.link {
                AttachmentLink::Owned(id) => {
                    self.program(program_names::LB)?
                        .detach(id)
                        .map_err(|source| DataplaneError::Program {
                            name: program_names::LB,
                            source: Box::new(source),
                        })?
                }
                AttachmentLink::Pinned(fd, path) => {
                    // The kernel detaches once the pin and our descriptor are both gone.
                    if let Err(e) = std::fs::remove_file(&path)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        return Err(DataplaneError::Link {
                            iface: attachment.iface,
                            message: format!("removing {}: {e}", path.display()),
                        });
                    }
                    drop(fd);
                }
            }
        }
        if let Some(pins) = &self.pins {
            pins.remove_all()?;
        }
        Ok(())
    }

    /// Detaches from interfaces whose attachment an earlier agent pinned and that this one
    /// does not serve; returns their names.
    pub fn drop_other_links(&mut self, keep: &[String]) -> Result<Vec<String>> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let dir = pins.link("");
        let mut dropped = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                std::fs::remove_file(entry.path()).map_err(|e| DataplaneError::Link {
                    iface: name.clone(),
                    message: format!("removing {}: {e}", entry.path().display()),
                })?;
                dropped.push(name);
            }
        }
        Ok(dropped)
    }

    /// Where and how the program is attached.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.attachments.iter().map(|a| (a.iface.as_str(), a.mode))
    }
}

/// The XDP program attached to `iface`, described (`id 42, lb`), if any.
pub(super) fn attached_program(iface: &str) -> Option<String> {
    let attached = XdpAttachment::read(None, iface).ok()??;
    Some(format!(
        "id {}, {}",
        attached
            .prog_id
            .map_or_else(|| "null".to_owned(), |id| id.to_string()),
        attached.prog_name.as_deref().unwrap_or("unnamed")
    ))
}

/// How the program on `iface` is attached, if one is.
pub(super) fn attached_mode(iface: &str) -> Option<AttachMode> {
    Some(XdpAttachment::read(None, iface).ok()??.mode)
}

/// The interfaces of this network namespace: (name, ifindex).
fn interfaces() -> Vec<(String, u32)> {
    // if_nameindex asks the kernel over netlink from this thread: it sees the namespace the
    // thread is in, where /sys/class/net shows the one sysfs was mounted from.
    // SAFETY: the list is read up to its terminating entry, then freed once.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name);
            out.push((name.to_string_lossy().into_owned(), (*entry).if_index));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
        out
    }
}

/// Whether `name` is an 802.1Q/802.1ad sub-interface (`ip link add link eth0 type vlan`):
/// the 8021q module lists them, one a line after two of headings ("eth0.7 | 7 | eth0"), for
/// this thread's namespace. No file: no VLAN support, so no VLAN devices.
fn is_vlan_device(name: &str) -> bool {
    std::fs::read_to_string("/proc/thread-self/net/vlan/config").is_ok_and(|config| {
        config
            .lines()
            .skip(2)
            .any(|l| l.split('|').next().map(str::trim) == Some(name))
    })
}
/// `ETHTOOL_GDRVINFO`: the driver's name and versions.
const ETHTOOL_GDRVINFO: u32 = 0x3;

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (padded to the union's size).
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _union_rest: [u8; 16],
}

/// The driver of `iface` as `ethtool -i` names it (`veth`, `mlx5_core`, ...), if the kernel
/// says.
pub fn interface_driver(iface: &str) -> Option<String> {
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&raw mut info).cast(),
        _union_rest: [0; 16],
    };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a socket only for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL reads the name and fills `info` through `data`, both live here.
    let rc = unsafe { libc::ioctl(fd, 0x8946, &raw mut request) };
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}
