//! The data plane on the veths of `local` instances (`InstanceLinks`): the load balancer on
//! the LB end (native, else generic), its ifindex in the redirect map and forwarding on for
//! `bpf_fib_lookup`; the pass program natively on the instance's end, attached from a thread
//! that enters the instance's namespace for the one call (interface indexes and XDP links
//! resolve in the caller's namespace), with TX checksum offload turned off there. With a pin
//! directory both links are pinned in `instances/` (`LB_END` and `LB_END-peer`), apart from the
//! NICs' `links/`, so a start-up on other NICs does not drop them and the next agent takes
//! them over.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::MapError,
    programs::{
        XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::program_names;

use super::{AttachMode, Dataplane, DataplaneError};
use crate::dataplane::{InstanceAttached, InstanceLinks, InstanceVeth, Result};

/// The suffix of the pin of the instance end's link, after the LB end's name.
const PEER_PIN_SUFFIX: &str = "-peer";

/// The data plane on one instance's veth.
pub(super) struct InstanceAttachment {
    veth: InstanceVeth,
    /// The LB end's ifindex when attached (its redirect-map key).
    ifindex: u32,
    mode: AttachMode,
    lb_end: Link,
    peer: Link,
}

/// One XDP link of an instance veth.
enum Link {
    /// Attached by this agent without pins: ends with the agent, or when detached.
    Owned(&'static str, XdpLinkId),
    /// Pinned at the path: stays attached until the pin is removed (and our handle closed).
    Pinned(FdLink, PathBuf),
}

/// The instance links of one data plane, by LB end.
pub(super) type InstanceAttachments = BTreeMap<String, InstanceAttachment>;

fn link_error(iface: &str, message: impl Into<String>) -> DataplaneError {
    DataplaneError::Link {
        iface: iface.to_owned(),
        message: message.into(),
    }
}

impl InstanceLinks for Dataplane {
    fn attach_instance(&mut self, veth: &InstanceVeth) -> Result<InstanceAttached> {
        if let Some(attached) = self.instances.get(&veth.lb_interface) {
            return Ok(InstanceAttached {
                mode: attached.mode,
                taken_over: false,
            });
        }
        let lb = veth.lb_interface.as_str();
        let ifindex = if_index(lb).ok_or_else(|| DataplaneError::NoInterface(lb.to_owned()))?;
        // bpf_fib_lookup refuses packets that arrive on an interface that does not forward:
        // the instance's replies arrive on this one.
        crate::forwarding::enable_for_fib_lookup(lb)
            .map_err(|e| link_error(lb, format!("enabling forwarding: {e}")))?;
        let lb_pin = self.pins.as_ref().map(|p| p.instance_link(lb));
        let peer_pin = self
            .pins
            .as_ref()
            .map(|p| p.instance_link(&format!("{lb}{PEER_PIN_SUFFIX}")));
        let (lb_end, mode, lb_taken) = self.attach_lb_end(lb, ifindex, lb_pin)?;
        let peer = match self.attach_peer(veth, peer_pin) {
            Ok((peer, _taken_over)) => peer,
            Err(e) => {
                // Never half attached (redirected frames would be dropped on a bare peer): the
                // LB end goes again; its own error, if any, is not the one to tell.
                let _ = self.release(lb_end);
                return Err(e);
            }
        };
        if let Err(e) = self.tx_ports()?.insert(ifindex, ifindex, None, 0) {
            let _ = self.release(lb_end);
            let _ = self.release(peer);
            return Err(DataplaneError::TxPort(format!("{lb}: {e}")));
        }
        self.instances.insert(
            lb.to_owned(),
            InstanceAttachment {
                veth: veth.clone(),
                ifindex,
                mode,
                lb_end,
                peer,
            },
        );
        Ok(InstanceAttached {
            mode,
            taken_over: lb_taken,
        })
    }

    fn detach_instance(&mut self, lb_interface: &str) -> Result<bool> {
        let Some(attached) = self.instances.remove(lb_interface) else {
            // Perhaps an earlier agent's, not taken over: its pins alone hold it.
            return self.remove_instance_pins(lb_interface);
        };
        // The kernel drops a deleted interface from a devmap itself, and its XDP links with
        // it; an index now naming another interface is not ours to remove.
        let present = if_index(lb_interface) == Some(attached.ifindex);
        if present {
            match self.tx_ports()?.remove(attached.ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(DataplaneError::TxPort(format!("{lb_interface}: {e}"))),
            }
        }
        for link in [attached.lb_end, attached.peer] {
            match self.release(link) {
                Ok(()) => {}
                Err(e) if present => return Err(e),
                // Nothing left to detach from: only our handle had to go.
                Err(e) => {
                    tracing::debug!(lb_interface, error = %e, "detaching from a deleted veth")
                }
            }
        }
        tracing::debug!(
            instance = attached.veth.instance_id,
            lb_interface,
            "detached from the instance's veth"
        );
        Ok(true)
    }

    fn retain_instances(&mut self, keep: &[String]) -> Result<Vec<String>> {
        let mut dropped = Vec::new();
        for lb_interface in self.instance_links() {
            if !keep.contains(&lb_interface) {
                self.detach_instance(&lb_interface)?;
                dropped.push(lb_interface);
            }
        }
        Ok(dropped)
    }

    fn instance_links(&self) -> Vec<String> {
        let mut links: Vec<String> = self.instances.keys().cloned().collect();
        if let Some(pins) = &self.pins {
            let dir = pins.instance_link("");
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let lb_end = name.strip_suffix(PEER_PIN_SUFFIX).unwrap_or(&name);
                links.push(lb_end.to_owned());
            }
        }
        links.sort_unstable();
        links.dedup();
        links
    }
}

impl Dataplane {
    /// The load balancer on the LB end: the pinned link taken over, else attached afresh
    /// (native, else generic), pinned at `pin` if given. Also says whether it was taken over.
    fn attach_lb_end(
        &mut self,
        lb: &str,
        ifindex: u32,
        pin: Option<PathBuf>,
    ) -> Result<(Link, AttachMode, bool)> {
        if let Some(path) = &pin
            && let Some(fd) = self.take_over_link(program_names::LB, lb, path)?
        {
            let mode = match super::attach::attached_mode(lb) {
                Some(AttachMode::Generic) => AttachMode::Generic,
                _ => AttachMode::Native,
            };
            return Ok((Link::Pinned(fd, path.clone()), mode, true));
        }
        if pin.is_some()
            && let Some(program) = super::attach::attached_program(lb)
        {
            return Err(DataplaneError::Occupied {
                iface: lb.to_owned(),
                program,
            });
        }
        let program = self.program(program_names::LB)?;
        let (id, mode) = match program.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(native) => match program.attach_to_if_index(ifindex, XdpMode::Skb) {
                Ok(id) => {
                    tracing::warn!(iface = lb, error = %native, "native XDP unavailable on an instance's veth; attached in generic mode");
                    (id, AttachMode::Generic)
                }
                Err(generic) => {
                    return Err(DataplaneError::Attach {
                        iface: lb.to_owned(),
                        native: Box::new(native),
                        generic: Box::new(generic),
                    });
                }
            },
        };
        let link = self.keep_link(program_names::LB, lb, id, pin)?;
        Ok((link, mode, false))
    }

    /// The pass program on the instance's end: the pinned link taken over, else attached
    /// natively from inside the instance's namespace (the veth quirk wants the peer's program
    /// in the driver). Also says whether it was taken over.
    fn attach_peer(&mut self, veth: &InstanceVeth, pin: Option<PathBuf>) -> Result<(Link, bool)> {
        let what = format!("{} in {}", veth.interface, veth.namespace);
        if let Some(path) = &pin
            && let Some(fd) = self.take_over_link(program_names::PASS, &what, path)?
        {
            return Ok((Link::Pinned(fd, path.clone()), true));
        }
        let namespace = File::open(Path::new("/run/netns").join(&veth.namespace))
            .map_err(|e| link_error(&what, format!("opening the namespace: {e}")))?;
        let program = self.program(program_names::PASS)?;
        let interface = veth.interface.as_str();
        // A thread of its own enters the namespace: the writer's thread stays where it is
        // whatever happens in there.
        let attached = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns(2) on an open namespace file; it moves only this thread.
                    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(format!(
                            "entering the namespace: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                    let ifindex = if_index(interface)
                        .ok_or_else(|| "the interface does not exist".to_owned())?;
                    // Senders on a veth hand over checksums still to be computed (TX checksum
                    // offload, on by default), which the load balancer rewrites as if complete:
                    // every reply would reach the client with a bad checksum.
                    disable_tx_checksum(interface)
                        .map_err(|e| format!("turning TX checksum offload off: {e}"))?;
                    program
                        .attach_to_if_index(ifindex, XdpMode::Driver)
                        .map_err(|e| format!("attaching the pass program natively: {e}"))
                })
                .join()
                .unwrap_or_else(|_| Err("the thread in the namespace panicked".to_owned()))
        });
        let id = attached.map_err(|message| link_error(&what, message))?;
        let link = self.keep_link(program_names::PASS, &what, id, pin)?;
        Ok((link, false))
    }

    /// Keeps link `id` of `program`: pinned at `pin`, or owned by the program.
    fn keep_link(
        &mut self,
        program: &'static str,
        what: &str,
        id: XdpLinkId,
        pin: Option<PathBuf>,
    ) -> Result<Link> {
        let Some(path) = pin else {
            return Ok(Link::Owned(program, id));
        };
        let link = self
            .program(program)?
            .take_link(id)
            .map_err(|e| link_error(what, e.to_string()))?;
        let fd = FdLink::try_from(link).map_err(|e| {
            link_error(
                what,
                format!("the kernel attached no bpf_link (needs 5.9+): {e}"),
            )
        })?;
        let pinned = fd
            .pin(&path)
            .map_err(|e| link_error(what, format!("pinning at {}: {e}", path.display())))?;
        Ok(Link::Pinned(FdLink::from(pinned), path))
    }

    /// Puts `program` on the link pinned at `path`, in place; `None` (the pin removed) when
    /// there is no pin or it is stale (its interface went away).
    fn take_over_link(
        &mut self,
        program: &'static str,
        what: &str,
        path: &Path,
    ) -> Result<Option<FdLink>> {
        if !path.exists() {
            return Ok(None);
        }
        let pinned = PinnedLink::from_pin(path)
            .map_err(|e| link_error(what, format!("opening its pin: {e}")))?;
        let xdp = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| link_error(what, format!("the pin is no XDP link: {e}")))?;
        let xdp_program = self.program(program)?;
        let id = match xdp_program.attach_to_link(xdp) {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(iface = what, error = %e, "a stale pinned instance link: removed");
                remove_pin(what, path)?;
                return Ok(None);
            }
        };
        let link = xdp_program
            .take_link(id)
            .map_err(|e| link_error(what, e.to_string()))?;
        FdLink::try_from(link)
            .map(Some)
            .map_err(|e| link_error(what, e.to_string()))
    }

    /// Ends one link: its pin removed and our handle closed, or the program's link detached.
    fn release(&mut self, link: Link) -> Result<()> {
        match link {
            Link::Owned(program, id) => match self.program(program)?.detach(id) {
                Ok(()) => Ok(()),
                Err(source) => Err(DataplaneError::Program {
                    name: program,
                    source: Box::new(source),
                }),
            },
            Link::Pinned(fd, path) => {
                // The kernel detaches once the pin and our descriptor are both gone.
                remove_pin(&path.display().to_string(), &path)?;
                drop(fd);
                Ok(())
            }
        }
    }

    /// Removes the pins of the instance veth whose LB end is `lb_interface` (an earlier
    /// agent's, not taken over); whether there were any.
    fn remove_instance_pins(&mut self, lb_interface: &str) -> Result<bool> {
        let Some(pins) = &self.pins else {
            return Ok(false);
        };
        let mut any = false;
        for name in [
            lb_interface.to_owned(),
            format!("{lb_interface}{PEER_PIN_SUFFIX}"),
        ] {
            let path = pins.instance_link(&name);
            if path.exists() {
                remove_pin(lb_interface, &path)?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Detaches from every instance veth and removes their pins (`detach_all`).
    pub(super) fn detach_instances(&mut self) -> Result<()> {
        for lb_interface in self.instance_links() {
            self.detach_instance(&lb_interface)?;
        }
        Ok(())
    }
}

/// Removes a pin; one already gone is fine.
fn remove_pin(what: &str, path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(link_error(
            what,
            format!("removing {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

/// The index of `iface` in the calling thread's namespace.
fn if_index(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `ETHTOOL_STXCSUM`: set TX checksum offload (`ethtool -K DEV tx on|off`).
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` (linux/ethtool.h).
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (padded to the union's size).
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _union_rest: [u8; 16],
}

/// Turns TX checksum offload off on `iface` in the calling thread's namespace, as
/// `ethtool -K IFACE tx off` does (without needing ethtool installed).
fn disable_tx_checksum(iface: &str) -> std::io::Result<()> {
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut request = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&raw mut value).cast(),
        _union_rest: [0; 16],
    };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a socket only for the ioctl, closed below; it lives in this thread's namespace.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCETHTOOL reads the name and `value` through `data`, both live here.
    let rc = unsafe { libc::ioctl(fd, 0x8946, &raw mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(error);
    }
    Ok(())
}
