//! XDP in the lab: the kernel crate's own `pass` program (`lb_common::program_names::PASS`)
//! attached to veths that must receive XDP_TX or redirected frames, and reading what a NIC
//! runs (the reader the agent uses too).
//!
//! The veth quirk: a frame sent with XDP_TX (or redirected) into a veth is dropped by its peer
//! (`xdp_tx_errors`) unless the peer runs an XDP program itself, so the lab gives the LB
//! node's bridge port one that passes everything.

use std::path::Path;

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    programs::{Xdp, XdpMode, links::FdLink},
};
use lb_common::{map_names, program_names};

pub use lb_common::xdp_attachment::{AttachMode, XdpAttachment};

use super::{kernel_object, netns};

/// The XDP program on `dev` in namespace `ns`, if any.
pub fn xdp_attachment(ns: &str, dev: &str) -> anyhow::Result<Option<XdpAttachment>> {
    XdpAttachment::read(Some(ns), dev).with_context(|| format!("reading XDP on {dev} in {ns}"))
}

/// Detaches the pass program `attach_pass_program` attached to `dev` in `ns`: removing its
/// link's pin ends the link (nothing else holds it).
pub fn detach_pass_program(bpffs: &Path, ns: &str, dev: &str) -> anyhow::Result<()> {
    let pin = pass_pin(bpffs, ns, dev);
    std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))
}

/// Where the link of the pass program on `dev` in `ns` is pinned.
fn pass_pin(bpffs: &Path, ns: &str, dev: &str) -> std::path::PathBuf {
    bpffs.join(format!("pass-{ns}-{dev}"))
}

/// Attaches the kernel crate's `pass` program natively to `dev` in namespace `ns` with a
/// bpf_link pinned in `bpffs`, so that it outlives this process (`cargo xtask lab up` exits,
/// leaving the lab): it ends when the pin goes (the lab unmounts `bpffs`) or the interface
/// does.
pub fn attach_pass_program(bpffs: &Path, ns: &str, dev: &str) -> anyhow::Result<()> {
    let object = kernel_object::lb_ebpf_object()?;
    // Loading the object makes every map it declares, though `pass` uses none: make them
    // tiny instead of the hundreds of MB the connection table and stats take at full size.
    let mut loader = EbpfLoader::new();
    for map in [
        map_names::LISTENERS,
        map_names::PORTS,
        map_names::VIPS,
        map_names::GROUPS,
        map_names::MAGLEV,
        map_names::BACKENDS,
        map_names::CONNTRACK,
        map_names::SNAT,
        map_names::LISTENER_STATS,
        map_names::BACKEND_STATS,
    ] {
        loader.map_max_entries(map, 1);
    }
    let mut ebpf = loader
        .load_file(&object)
        .with_context(|| format!("loading {}", object.display()))?;
    let program: &mut Xdp = ebpf
        .program_mut(program_names::PASS)
        .with_context(|| format!("no program `{}` in the object", program_names::PASS))?
        .try_into()
        .context("the pass program is no XDP program")?;
    program.load().context("loading the pass program")?;
    let pin = pass_pin(bpffs, ns, dev);
    // The interface is looked up, and the link made, in the namespace of the calling thread.
    netns::run_inside(ns, || {
        let id = program
            .attach(dev, XdpMode::Driver)
            .with_context(|| format!("attaching natively to {dev}"))?;
        let link = program.take_link(id)?;
        let link = FdLink::try_from(link)
            .context("the kernel attached no bpf_link (XDP links need Linux 5.9+)")?;
        link.pin(&pin)
            .with_context(|| format!("pinning the link at {}", pin.display()))?;
        Ok(())
    })
    .with_context(|| format!("attaching the pass program to {dev} in {ns}"))
}
