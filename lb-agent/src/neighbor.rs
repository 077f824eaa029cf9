//! Keeps the next hop of every target resolved, and resolves the next hops towards clients
//! the data plane missed.
//!
//! `bpf_fib_lookup` only succeeds when the kernel already knows the next hop's MAC address; an
//! XDP program cannot trigger ARP or neighbour discovery itself. A "managed" neighbour entry
//! (Linux 5.16+) makes the kernel resolve the address and keep it resolved, so the data plane
//! never has to drop a flow's first packets while an entry is missing or stale.
//!
//! Clients are too many to keep resolved, and their next hop is usually learned from their own
//! packets; when it is not (the entry expired, or nothing from the client reached the kernel:
//! XDP forwards it all), the data plane notes the hop it dropped a reply for, and
//! [`resolve_misses`] has the kernel resolve it (`ip neigh replace .. use`: an entry of the
//! usual kind, which the kernel ages and collects) within about 100 ms.
//!
//! The kernel is asked over rtnetlink, as `ip route get` and `ip neigh replace .. managed` do.

use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    time::Duration,
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourState,
        },
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
    },
};

/// Errors resolving a next hop.
#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    /// The agent could not open a netlink socket (or has no async runtime to serve it).
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel has no route to the target.
    #[error("no route to {target}: {source}")]
    Route {
        target: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    /// The kernel's route to the target names no output interface or an unusable gateway.
    #[error("the route to {0} has no output interface or an unusable gateway")]
    Unroutable(IpAddr),
    /// The kernel's neighbour table could not be read.
    #[error("reading the neighbour table: {0}")]
    Table(#[source] rtnetlink::Error),
    /// The kernel refused the neighbour entry.
    #[error("cannot keep {hop} resolved on interface {ifindex}: {source}")]
    Neighbour {
        hop: IpAddr,
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Where the kernel sends packets for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    /// The gateway, or the target itself on a directly connected network.
    hop: IpAddr,
    /// The output interface's index.
    ifindex: u32,
    /// The target is an address of this host: there is nothing to resolve.
    local: bool,
}

/// A netlink connection whose task lives as long as it does.
struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    fn open() -> Result<Self, NeighborError> {
        // The socket registers with the current tokio runtime: without one it would panic.
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| NeighborError::Socket(std::io::Error::other(e)))?;
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(NeighborError::Socket)?;
        let task = runtime.spawn(connection);
        Ok(Self { handle, task })
    }

    /// The route the kernel would take to `target` (`ip route get`).
    async fn route(&self, target: IpAddr) -> Result<Route, NeighborError> {
        let mut request = RouteMessage::default();
        (
            request.header.address_family,
            request.header.destination_prefix_length,
        ) = match target {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        request
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(target)));
        let answer = self
            .handle
            .route()
            .get(request)
            .execute()
            .try_next()
            .await
            .map_err(|source| NeighborError::Route { target, source })?
            .ok_or(NeighborError::Unroutable(target))?;
        route_from(target, &answer)
    }

    /// Asks for a managed entry for `hop` on `ifindex` (`ip neigh replace .. managed`).
    async fn keep_resolved(&self, hop: IpAddr, ifindex: u32) -> Result<(), NeighborError> {
        let mut request = self
            .handle
            .neighbours()
            .add(ifindex, hop)
            // No state of our own: the kernel resolves the address (a permanent entry with
            // the managed flag is refused).
            .state(NeighbourState::None)
            .replace();
        request
            .message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        request
            .execute()
            .await
            .map_err(|source| NeighborError::Neighbour {
                hop,
                ifindex,
                source,
            })
    }
}

impl Netlink {
    /// Starts resolving `hop` on `ifindex` now, as if a packet were sent to it (`ip neigh
    /// replace .. use`); the entry is an ordinary one that ages and goes.
    async fn resolve_now(&self, hop: IpAddr, ifindex: u32) -> Result<(), NeighborError> {
        self.handle
            .neighbours()
            .add(ifindex, hop)
            // NTF_USE keeps the entry's state and starts resolution (neigh_event_send).
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await
            .map_err(|source| NeighborError::Neighbour {
                hop,
                ifindex,
                source,
            })
    }

    /// The (interface, address) of every neighbour entry with a usable link-layer address
    /// (`NUD_VALID`): resolved, or fixed.
    async fn valid_entries(&self) -> Result<HashSet<(u32, IpAddr)>, NeighborError> {
        let mut dump = self.handle.neighbours().get().execute();
        let mut valid = HashSet::new();
        while let Some(entry) = dump.try_next().await.map_err(NeighborError::Table)? {
            if !is_valid(entry.header.state) {
                continue;
            }
            for attribute in &entry.attributes {
                let address = match attribute {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => IpAddr::V4(*a),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => IpAddr::V6(*a),
                    _ => continue,
                };
                valid.insert((entry.header.ifindex, address));
            }
        }
        Ok(valid)
    }
}

/// NUD_VALID: states in which the kernel (and `bpf_fib_lookup`) uses the link-layer address.
fn is_valid(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Permanent
            | NeighbourState::Noarp
            | NeighbourState::Reachable
            | NeighbourState::Probe
            | NeighbourState::Stale
            | NeighbourState::Delay
    )
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the next hop and interface out of the kernel's answer to a route request.
fn route_from(target: IpAddr, answer: &RouteMessage) -> Result<Route, NeighborError> {
    let mut ifindex = None;
    let mut gateway = None;
    for attribute in &answer.attributes {
        match attribute {
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            // An IPv4 route through an IPv6 gateway.
            RouteAttribute::Via(RouteVia::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => {
                return Err(NeighborError::Unroutable(target));
            }
            _ => {}
        }
    }
    Ok(Route {
        hop: gateway.unwrap_or(target),
        ifindex: ifindex.ok_or(NeighborError::Unroutable(target))?,
        local: answer.header.kind == RouteType::Local,
    })
}

/// The next hop (gateway, or the target itself on a directly connected network) and the index
/// of the interface the kernel would use to reach `target`.
pub async fn next_hop(target: IpAddr) -> Result<(IpAddr, u32), NeighborError> {
    let route = Netlink::open()?.route(target).await?;
    Ok((route.hop, route.ifindex))
}

/// Asks the kernel to resolve `target`'s next hop now and keep it resolved.
pub async fn keep_resolved(target: IpAddr) -> Result<(), NeighborError> {
    keep_resolved_over(&Netlink::open()?, target).await
}

async fn keep_resolved_over(netlink: &Netlink, target: IpAddr) -> Result<(), NeighborError> {
    let route = netlink.route(target).await?;
    if route.local {
        return Ok(());
    }
    netlink.keep_resolved(route.hop, route.ifindex).await
}

/// `keep_resolved` for each of `targets`, once per address; a failure is a warning (the
/// target is still served, its first packets may meet an unresolved next hop).
pub async fn keep_all_resolved(targets: impl IntoIterator<Item = IpAddr>) {
    let addresses: BTreeSet<IpAddr> = targets.into_iter().collect();
    if addresses.is_empty() {
        return;
    }
    let netlink = match Netlink::open() {
        Ok(netlink) => netlink,
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep the targets' next hops resolved");
            return;
        }
    };
    for address in addresses {
        if let Err(e) = keep_resolved_over(&netlink, address).await {
            tracing::warn!(target = %address, error = %e, "cannot keep the target's next hop resolved");
        }
    }
}

/// [`keep_all_resolved`] for threads outside async code (start-up before the runtime, the
/// writer's thread), on a runtime of its own.
pub fn keep_all_resolved_blocking(targets: impl IntoIterator<Item = IpAddr>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep the targets' next hops resolved: no runtime");
            return;
        }
    };
    runtime.block_on(keep_all_resolved(targets));
}

/// How often the data plane's missed next hops are read: a reply dropped for want of a
/// neighbour entry gets it resolved within this and one ARP or neighbour-discovery round trip.
pub const MISS_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Until `stop` turns true, takes the next hops the data plane missed (`take` empties its
/// map) every [`MISS_POLL_INTERVAL`] and has the kernel resolve each that has no valid entry
/// by then (one that does, a fixed one above all, is left alone).
pub async fn resolve_misses<E: std::fmt::Display>(
    mut take: impl FnMut() -> Result<Vec<(IpAddr, u32)>, E>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let netlink = match Netlink::open() {
        Ok(netlink) => netlink,
        Err(e) => {
            tracing::warn!(error = %e, "cannot resolve the next hops the data plane misses: replies to unresolved clients are dropped until the kernel learns them");
            return;
        }
    };
    let mut tick = tokio::time::interval(MISS_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let hops = match take() {
            Ok(hops) if hops.is_empty() => continue,
            Ok(hops) => hops,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next hops the data plane missed");
                continue;
            }
        };
        let valid = match netlink.valid_entries().await {
            Ok(valid) => valid,
            Err(e) => {
                tracing::warn!(error = %e, "reading the neighbour table");
                continue;
            }
        };
        for (hop, ifindex) in hops {
            if valid.contains(&(ifindex, hop)) {
                continue;
            }
            match netlink.resolve_now(hop, ifindex).await {
                Ok(()) => {
                    tracing::debug!(%hop, ifindex, "resolving a next hop the data plane dropped a packet for")
                }
                Err(e) => {
                    tracing::debug!(%hop, ifindex, error = %e, "cannot resolve a next hop the data plane missed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, os::fd::AsRawFd as _, process::Command};

    use super::*;

    /// A network namespace with a veth pair (`nb0` 198.18.250.1/24, its peer `nb1` without
    /// an address) and a route to 198.18.251.0/24 through 198.18.250.254; removed on drop,
    /// also when the test fails.
    struct Namespace {
        name: String,
    }

    impl Namespace {
        fn new(tag: &str) -> Self {
            let name = format!("lb-neigh-{tag}-{}", std::process::id());
            run("ip", &["netns", "add", &name]);
            let namespace = Self { name };
            for args in [
                &["link", "add", "nb0", "type", "veth", "peer", "name", "nb1"][..],
                &["link", "set", "nb0", "up"],
                &["link", "set", "nb1", "up"],
                &["address", "add", "198.18.250.1/24", "dev", "nb0"],
                &["route", "add", "198.18.251.0/24", "via", "198.18.250.254"],
            ] {
                namespace.ip(args);
            }
            namespace
        }

        fn ip(&self, args: &[&str]) -> String {
            let mut all = vec!["-n", &self.name];
            all.extend_from_slice(args);
            run("ip", &all)
        }

        fn ifindex(&self, device: &str) -> u32 {
            let links: serde_json::Value =
                serde_json::from_str(&self.ip(&["-j", "link", "show", device])).expect("JSON");
            let index = links[0]["ifindex"].as_u64().expect("ifindex");
            u32::try_from(index).expect("ifindex fits u32")
        }

        /// Runs the future `make` returns on a thread of its own inside the namespace (a
        /// netlink socket talks to the namespace it was opened in).
        fn run<F: Future>(&self, make: impl FnOnce() -> F + Send) -> F::Output
        where
            F::Output: Send,
        {
            let path = format!("/run/netns/{}", self.name);
            std::thread::scope(|scope| {
                scope
                    .spawn(move || {
                        let file = File::open(&path).expect("namespace file");
                        // SAFETY: setns only reads the descriptor, which `file` keeps open, and
                        // moves this thread alone (it ends with the scope) into the namespace.
                        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("runtime")
                            .block_on(make())
                    })
                    .join()
                    .expect("namespace thread")
            })
        }
    }

    impl Drop for Namespace {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn run(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().expect("spawn");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn answer(kind: RouteType, attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut answer = RouteMessage::default();
        answer.header.kind = kind;
        answer.attributes = attributes;
        answer
    }

    #[test]
    fn a_routed_target_resolves_its_gateway_and_an_on_link_one_itself() {
        let target: IpAddr = "198.18.251.7".parse().expect("address");
        let gateway = "198.18.250.254".parse().expect("address");
        let via = answer(
            RouteType::Unicast,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(
                    "198.18.251.7".parse().expect("address"),
                )),
                RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
                RouteAttribute::Oif(4),
            ],
        );
        let on_link = answer(RouteType::Unicast, vec![RouteAttribute::Oif(4)]);
        let local = answer(RouteType::Local, vec![RouteAttribute::Oif(1)]);
        let route = |answer| route_from(target, answer).expect("route");
        assert_eq!(
            route(&via),
            Route {
                hop: IpAddr::V4(gateway),
                ifindex: 4,
                local: false
            }
        );
        assert_eq!(
            route(&on_link),
            Route {
                hop: target,
                ifindex: 4,
                local: false
            }
        );
        assert!(route(&local).local);
    }

    #[test]
    fn a_route_without_an_interface_is_unroutable() {
        let target: IpAddr = "198.18.251.7".parse().expect("address");
        let result = route_from(target, &answer(RouteType::Unicast, Vec::new()));
        assert!(
            matches!(result, Err(NeighborError::Unroutable(t)) if t == target),
            "{result:?}"
        );
    }

    #[test]
    fn next_hops_get_a_managed_neighbour_entry_and_local_addresses_none() {
        if !is_root() {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let namespace = Namespace::new("managed");
        let nb0 = namespace.ifindex("nb0");
        let on_link: IpAddr = "198.18.250.2".parse().expect("address");
        let routed: IpAddr = "198.18.251.7".parse().expect("address");
        let local: IpAddr = "198.18.250.1".parse().expect("address");
        let gateway: IpAddr = "198.18.250.254".parse().expect("address");

        let (hops, lo) = namespace.run(|| async move {
            let hops = [
                next_hop(on_link).await.expect("on-link next hop"),
                next_hop(routed).await.expect("routed next hop"),
            ];
            let lo = Netlink::open()
                .expect("netlink")
                .route(local)
                .await
                .expect("local route");
            keep_all_resolved([on_link, routed, local, routed]).await;
            (hops, lo)
        });
        assert_eq!(hops, [(on_link, nb0), (gateway, nb0)]);
        assert!(lo.local, "{lo:?}");

        let entries: serde_json::Value =
            serde_json::from_str(&namespace.ip(&["-j", "neigh", "show"])).expect("JSON");
        let entries = entries.as_array().expect("array");
        let managed = |dst: IpAddr| {
            entries.iter().any(|e| {
                e["dst"] == dst.to_string() && e["dev"] == "nb0" && e.get("managed").is_some()
            })
        };
        assert!(managed(on_link), "{entries:?}");
        assert!(managed(gateway), "{entries:?}");
        assert!(
            !entries.iter().any(|e| e["dst"] == local.to_string()),
            "{entries:?}"
        );
    }

    #[test]
    fn a_missed_next_hop_is_resolved_and_a_fixed_entry_left_alone() {
        if !is_root() {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let namespace = Namespace::new("missed");
        let nb0 = namespace.ifindex("nb0");
        let fixed = "198.18.250.3";
        namespace.ip(&[
            "neigh",
            "replace",
            fixed,
            "lladdr",
            "02:00:00:00:00:03",
            "dev",
            "nb0",
            "nud",
            "permanent",
        ]);
        let missed: IpAddr = "198.18.250.2".parse().expect("address");
        let fixed_ip: IpAddr = fixed.parse().expect("address");
        namespace.run(|| async move {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut batches = vec![vec![(missed, nb0), (fixed_ip, nb0)]];
            let resolver = tokio::spawn(resolve_misses(
                move || Ok::<_, String>(batches.pop().unwrap_or_default()),
                stopped,
            ));
            tokio::time::sleep(MISS_POLL_INTERVAL * 3).await;
            stop.send(true).expect("resolver runs");
            resolver.await.expect("resolver ends");
        });
        // Nobody answers on nb0's link: resolution started (ARP sent) and is under way or
        // failed; the fixed entry is as it was.
        let shown = namespace.ip(&["neigh", "show", "dev", "nb0"]);
        assert!(
            shown.lines().any(|l| l.starts_with("198.18.250.2 ")
                && (l.contains("INCOMPLETE") || l.contains("FAILED"))),
            "{shown}"
        );
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with("198.18.250.3 ") && l.contains("PERMANENT")),
            "{shown}"
        );
    }

    #[test]
    fn a_target_without_a_route_is_an_error() {
        if !is_root() {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let namespace = Namespace::new("noroute");
        // 198.19.0.0/16 is not routed in the namespace (it has no default route).
        let target: IpAddr = "198.19.0.1".parse().expect("address");
        let result = namespace.run(|| async move { keep_resolved(target).await });
        assert!(
            matches!(result, Err(NeighborError::Route { .. })),
            "{result:?}"
        );
    }
}
