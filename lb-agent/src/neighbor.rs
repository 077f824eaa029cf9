//! Keeps the next hop of every target resolved.
//!
//! `bpf_fib_lookup` only succeeds when the kernel already knows the next hop's MAC address; an
//! XDP program cannot trigger ARP or neighbour discovery itself. A "managed" neighbour entry
//! (Linux 5.16+) makes the kernel resolve the address and keep it resolved, so the data plane
//! never has to drop a flow's first packets while an entry is missing or stale.

use std::{net::IpAddr, process::Command};

/// Errors resolving a next hop.
#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    /// `ip` could not be run.
    #[error("running `ip`: {0}")]
    Spawn(#[from] std::io::Error),
    /// The kernel has no route to the target, or refused the entry.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    /// The route's output could not be read.
    #[error("cannot read the route to {0}: {1:?}")]
    Route(IpAddr, String),
}

fn ip(args: &[&str]) -> Result<String, NeighborError> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(NeighborError::Command {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The next hop (gateway, or the target itself on a directly connected network) and the
/// interface the kernel would use to reach `target`.
pub fn next_hop(target: IpAddr) -> Result<(IpAddr, String), NeighborError> {
    let route = ip(&["route", "get", &target.to_string()])?;
    let words: Vec<&str> = route.split_whitespace().collect();
    let after = |word: &str| {
        words
            .iter()
            .position(|w| *w == word)
            .and_then(|i| words.get(i + 1))
    };
    let dev = after("dev").ok_or_else(|| NeighborError::Route(target, route.clone()))?;
    let hop = match after("via") {
        Some(gw) => gw
            .parse()
            .map_err(|_| NeighborError::Route(target, route.clone()))?,
        None => target,
    };
    Ok((hop, (*dev).to_owned()))
}

/// Asks the kernel to resolve `target`'s next hop now and keep it resolved.
pub fn keep_resolved(target: IpAddr) -> Result<(), NeighborError> {
    let (hop, dev) = next_hop(target)?;
    if dev == "lo" {
        return Ok(());
    }
    ip(&["neigh", "replace", &hop.to_string(), "dev", &dev, "managed"])?;
    Ok(())
}

/// `keep_resolved` for each of `targets`, once per address; a failure is a warning (the
/// target is still served, its first packets may meet an unresolved next hop).
pub fn keep_all_resolved(targets: impl IntoIterator<Item = IpAddr>) {
    let addresses: std::collections::BTreeSet<IpAddr> = targets.into_iter().collect();
    for address in addresses {
        if let Err(e) = keep_resolved(address) {
            tracing::warn!(target = %address, error = %e, "cannot keep the target's next hop resolved");
        }
    }
}
