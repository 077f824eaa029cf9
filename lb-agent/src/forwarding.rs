//! Forwarding for `bpf_fib_lookup`, without making the node a router.
//!
//! The helper refuses packets that arrive on an interface that does not forward
//! (BPF_FIB_LKUP_RET_FWD_DISABLED), so the agent turns forwarding on on its NICs. Two side
//! effects come with it, and are undone here:
//! - The kernel would route whatever XDP passes up: a packet for another host that arrives on
//!   one of those NICs would be forwarded. An nftables table of the agent's own, `inet
//!   lb_agent`, drops in the forward hook what arrived on the agent's NICs (the set `nics`),
//!   unless `agent.kernel_forwarding` asks for a router. What XDP sends never reaches that
//!   hook, so balancing is unaffected. The table stays while the data plane is attached (it
//!   keeps serving, forwarding on, while the agent is stopped) and goes with a detach.
//! - An IPv6 interface that forwards ignores router advertisements when `accept_ra` is 1, and
//!   turning forwarding on removes the default routes they gave, except on interfaces with
//!   `accept_ra` 2: it becomes 2 first.
//!
//! Agents on one node share the table: each adds its NICs to the set and removes only its own.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

/// The agent's nftables table (family `inet`: IPv4 and IPv6).
pub const NFT_TABLE: &str = "lb_agent";

/// Errors setting up forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ForwardingError {
    /// A sysctl of the interface could not be read or written (kernel side).
    #[error("{path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `nft` is not installed on this node.
    #[error(
        "nft (nftables) is not installed: the agent needs it to keep the kernel from routing packets for other hosts that arrive on {ifaces}; install nftables, or set agent.kernel_forwarding = true to let this node route them"
    )]
    NftMissing { ifaces: String },
    /// `nft` refused the agent's table, or its output was not understood (kernel side).
    #[error("nft: {0}")]
    Nft(String),
    /// An interface name that cannot be written in an nftables rule (config side).
    #[error("interface name {0:?} cannot be written in an nftables rule")]
    IfaceName(String),
}

/// Turns on what `bpf_fib_lookup` needs on `iface`: IPv4 and IPv6 forwarding, with IPv6
/// `accept_ra` 1 made 2 before (so the node keeps taking its default route from router
/// advertisements). Returns the sysctls it changed, `name=value`.
pub fn enable_for_fib_lookup(iface: &str) -> Result<Vec<String>, ForwardingError> {
    let mut changed = Vec::new();
    // Before forwarding: turning it on removes RA-learned default routes unless accept_ra is 2.
    if read_sysctl("ipv6", iface, "accept_ra")? == "1" {
        write_sysctl("ipv6", iface, "accept_ra", "2")?;
        changed.push(format!("net.ipv6.conf.{iface}.accept_ra=2 (was 1)"));
    }
    for family in ["ipv4", "ipv6"] {
        if read_sysctl(family, iface, "forwarding")? != "1" {
            write_sysctl(family, iface, "forwarding", "1")?;
            changed.push(format!("net.{family}.conf.{iface}.forwarding=1"));
        }
    }
    Ok(changed)
}

fn sysctl_path(family: &str, iface: &str, name: &str) -> String {
    format!("/proc/sys/net/{family}/conf/{iface}/{name}")
}

fn read_sysctl(family: &str, iface: &str, name: &str) -> Result<String, ForwardingError> {
    let path = sysctl_path(family, iface, name);
    match std::fs::read_to_string(&path) {
        Ok(value) => Ok(value.trim().to_owned()),
        Err(source) => Err(ForwardingError::Sysctl { path, source }),
    }
}

fn write_sysctl(family: &str, iface: &str, name: &str, value: &str) -> Result<(), ForwardingError> {
    let path = sysctl_path(family, iface, name);
    std::fs::write(&path, value).map_err(|source| ForwardingError::Sysctl { path, source })
}

/// Makes the kernel drop, in its forward hook, packets that arrived on `ifaces` (adding them
/// to the agent's table, created if missing). Idempotent, in one nft transaction.
pub fn block_kernel_forwarding(ifaces: &[String]) -> Result<(), ForwardingError> {
    nft(&block_script(ifaces)?, ifaces).map(drop)
}

/// Takes `ifaces` out of the agent's table, and the table away once no NIC is left in it.
/// Returns the interfaces that were blocked. Without nft nothing can have been installed.
pub fn unblock_kernel_forwarding(ifaces: &[String]) -> Result<Vec<String>, ForwardingError> {
    let listed = match nft(&format!("list set inet {NFT_TABLE} nics"), ifaces) {
        Ok(listed) => listed,
        Err(ForwardingError::NftMissing { .. }) => return Ok(Vec::new()),
        // No table (or no set): nothing is blocked.
        Err(ForwardingError::Nft(message)) if message.contains("No such file or directory") => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let blocked = set_elements(&listed);
    let (ours, others): (Vec<String>, Vec<String>) =
        blocked.into_iter().partition(|b| ifaces.contains(b));
    if ours.is_empty() {
        return Ok(ours);
    }
    let script = if others.is_empty() {
        format!("delete table inet {NFT_TABLE}\n")
    } else {
        format!(
            "delete element inet {NFT_TABLE} nics {{ {} }}\n",
            quoted_list(&ours)?
        )
    };
    nft(&script, ifaces)?;
    Ok(ours)
}

/// Takes `ifaces`, which the data plane no longer serves, out of the agent's block on kernel
/// forwarding; a failure is a warning (the block outlives this agent, which has nothing left
/// to stop).
pub fn lift_block(ifaces: &[String]) {
    if ifaces.is_empty() {
        return;
    }
    match unblock_kernel_forwarding(ifaces) {
        Ok(unblocked) if unblocked.is_empty() => {}
        Ok(unblocked) => {
            tracing::info!(ifaces = ?unblocked, "removed the block on kernel forwarding with the data plane (forwarding stays on)");
        }
        Err(e) => {
            tracing::warn!(ifaces = ?ifaces, error = %e, "cannot remove the block on kernel forwarding: `nft delete table inet lb_agent` does");
        }
    }
}

/// The nft script that blocks `ifaces`: every object added if missing, the chain's one rule
/// written afresh (flush, then add), so running it again changes nothing.
fn block_script(ifaces: &[String]) -> Result<String, ForwardingError> {
    Ok(format!(
        "add table inet {NFT_TABLE}\n\
         add set inet {NFT_TABLE} nics {{ type ifname; }}\n\
         add chain inet {NFT_TABLE} forward {{ type filter hook forward priority 0; policy accept; }}\n\
         flush chain inet {NFT_TABLE} forward\n\
         add rule inet {NFT_TABLE} forward iifname @nics counter drop\n\
         add element inet {NFT_TABLE} nics {{ {} }}\n",
        quoted_list(ifaces)?
    ))
}

/// `"eth0", "eth1"`. A name with a quote, a backslash or a control character is refused:
/// nft has no escape for them.
fn quoted_list(ifaces: &[String]) -> Result<String, ForwardingError> {
    let quoted: Result<Vec<String>, ForwardingError> = ifaces
        .iter()
        .map(|iface| {
            if iface.is_empty()
                || iface
                    .chars()
                    .any(|c| c == '"' || c == '\\' || c.is_control())
            {
                Err(ForwardingError::IfaceName(iface.clone()))
            } else {
                Ok(format!("\"{iface}\""))
            }
        })
        .collect();
    Ok(quoted?.join(", "))
}

/// The elements of a set as `nft list set` prints it (`elements = { "eth0", "eth1" }`, maybe
/// over several lines; names may be printed without quotes).
fn set_elements(listed: &str) -> Vec<String> {
    let Some(start) = listed.find("elements = {") else {
        return Vec::new();
    };
    let rest = &listed[start + "elements = {".len()..];
    let body = &rest[..rest.find('}').unwrap_or(rest.len())];
    body.split(',')
        .map(|e| e.trim().trim_matches('"').to_owned())
        .filter(|e| !e.is_empty())
        .collect()
}

/// Runs `nft -f -` with `script` on its standard input; its output. `ifaces` are named in
/// the error when nft is missing.
fn nft(script: &str, ifaces: &[String]) -> Result<String, ForwardingError> {
    let spawned = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ForwardingError::NftMissing {
                ifaces: ifaces.join(", "),
            });
        }
        Err(e) => return Err(ForwardingError::Nft(format!("starting nft: {e}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| ForwardingError::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ForwardingError::Nft(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(ForwardingError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_block_drops_what_arrives_on_the_agents_nics_in_the_forward_hook() {
        let script = block_script(&names(&["eth0", "ens1f0.100"])).expect("script");
        assert!(
            script.contains("type filter hook forward priority 0; policy accept;"),
            "{script}"
        );
        assert!(
            script.contains("add rule inet lb_agent forward iifname @nics counter drop"),
            "{script}"
        );
        assert!(
            script.contains("add element inet lb_agent nics { \"eth0\", \"ens1f0.100\" }"),
            "{script}"
        );
        // Written afresh on every start: the rule is never added twice.
        let flush = script.find("flush chain").expect("flush");
        assert!(flush < script.find("add rule").expect("rule"), "{script}");
    }

    #[test]
    fn an_interface_name_nft_cannot_quote_is_refused() {
        for bad in ["", "a\"b", "a\\b", "a\nb"] {
            assert!(
                matches!(block_script(&names(&[bad])), Err(ForwardingError::IfaceName(n)) if n == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn set_elements_are_read_from_nfts_listing() {
        let listed = "table inet lb_agent {\n\tset nics {\n\t\ttype ifname\n\t\telements = { \"eth0\",\n\t\t\t     \"eth1\" }\n\t}\n}\n";
        assert_eq!(set_elements(listed), names(&["eth0", "eth1"]));
        let empty = "table inet lb_agent {\n\tset nics {\n\t\ttype ifname\n\t}\n}\n";
        assert!(set_elements(empty).is_empty());
    }
}
