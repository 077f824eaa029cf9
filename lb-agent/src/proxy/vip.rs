//! How an L7 listener's VIP reaches the proxy, with no address configured on the node.
//!
//! The XDP program passes an L7 listener's packets up to the kernel (`pass_to_stack`). The
//! kernel delivers them locally because the agent adds, for each such VIP, a `local` route in
//! the `local` table on `lo` ("AnyIP", as `ip route add local VIP dev lo table local`): the
//! kernel takes packets to the VIP as its own without the address being on any interface, so
//! it does not show in `ip addr`, is never picked as a source address, and IPv6 neighbour
//! discovery does not answer for it. (IPv4 ARP does answer for it with the default
//! `arp_ignore = 0`, as for any local address; VIPs are normally routed to the node, so
//! nothing asks.) The routes carry a route protocol of our own, [`ROUTE_PROTOCOL`], so that
//! the agent finds exactly its own and never touches anyone else's.
//!
//! The proxy's listening sockets are bound with `IP_FREEBIND` / `IPV6_FREEBIND`: binding
//! then depends neither on the order of route and bind, nor on IPv6's bind check, which
//! accepts assigned addresses only (a local route is not enough there).
//!
//! A VIP that is already local (an address of the node, or someone else's local route) gets
//! no route of ours. The routes stay when the agent exits without detaching (the data plane
//! stays pinned and serving too); `lb-agent detach` and `--detach-on-exit` remove them.
//!
//! The kernel is asked over rtnetlink; the calls are synchronous (the writer's thread, the
//! start, the detach) and run on a thread and runtime of their own (see [`with_netlink`]).

use std::{
    collections::BTreeSet,
    future::Future,
    net::{IpAddr, SocketAddr},
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily,
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    },
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

/// The route protocol (`proto` in `ip route`) of the agent's VIP routes: unused in
/// /etc/iproute2/rt_protos (0xb1 = 177). `ip route show table local proto 177` lists them.
pub const ROUTE_PROTOCOL: u8 = 0xb1;

/// The kernel's `local` routing table (RT_TABLE_LOCAL).
const LOCAL_TABLE: u8 = 255;

/// Connections the kernel queues for a listener before the proxy accepts them: a burst of
/// new clients should wait, not be refused.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Errors giving VIPs to the proxy.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The agent could not open a netlink socket, or start the thread and runtime serving it.
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The node has no `lo` interface (in this network namespace).
    #[error("no `lo` interface to route VIPs to")]
    NoLoopback,
    /// The kernel's routing tables could not be read.
    #[error("reading the local routing table: {0}")]
    Dump(#[source] rtnetlink::Error),
    /// The kernel refused a VIP's local route.
    #[error("adding the local route for {vip}: {source}")]
    Add {
        vip: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    /// The kernel refused to remove one of our local routes.
    #[error("removing the local route for {vip}: {source}")]
    Remove {
        vip: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    /// A listening socket could not be made or bound (the address or port is taken, or the
    /// kernel refused an option).
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a [`sync_local_routes`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipChanges {
    /// VIPs that got a local route.
    pub added: Vec<IpAddr>,
    /// VIPs whose local route of ours went.
    pub removed: Vec<IpAddr>,
}

impl VipChanges {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// A host route (/32, /128) of type `local` in the `local` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalRoute {
    address: IpAddr,
    /// Tagged with [`ROUTE_PROTOCOL`].
    ours: bool,
}

/// The distinct addresses of `config`'s http, https and tls listeners, in order.
pub fn l7_vips(config: &Config) -> Vec<IpAddr> {
    config
        .listeners
        .iter()
        .filter(|l| l.is_l7())
        .map(|l| l.address)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Gives the proxy `config`'s L7 VIPs: [`sync_local_routes`] of [`l7_vips`]. The one call per
/// config in force (at start, and after every reload or API change).
pub fn sync_for(config: &Config) -> Result<VipChanges, VipError> {
    sync_local_routes(&l7_vips(config))
}

/// Adds a local route for each of `vips` that lacks one and is not local already, and removes
/// our routes for addresses no longer among them (or local by other means now). Running it
/// again changes nothing. Every change is tried; the first failure is returned.
pub fn sync_local_routes(vips: &[IpAddr]) -> Result<VipChanges, VipError> {
    let lo = loopback_index()?;
    let vips = vips.to_vec();
    with_netlink(move |handle| async move {
        let routes = local_routes(&handle).await?;
        let changes = plan(&vips, &routes);
        let mut first_error = None;
        for &vip in &changes.added {
            if let Err(e) = add_route(&handle, vip, lo).await {
                first_error.get_or_insert(e);
            }
        }
        for &vip in &changes.removed {
            if let Err(e) = remove_route(&handle, vip).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(changes), Err)
    })
}

/// Removes every local route of ours (detach); how many went. Every one is tried; the first
/// failure is returned.
pub fn remove_local_routes() -> Result<usize, VipError> {
    sync_local_routes(&[]).map(|changes| changes.removed.len())
}

/// [`remove_local_routes`] for the detach paths, where a failure must not stop the rest of
/// the clean-up: logs what it did or why it could not.
pub fn remove_local_routes_or_warn() {
    match remove_local_routes() {
        Ok(0) => {}
        Ok(removed) => {
            tracing::info!(
                removed,
                "removed the local routes that gave L7 listeners' VIPs to the proxy"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot remove the local routes of L7 listeners' VIPs: `ip route flush table local proto {ROUTE_PROTOCOL}` and `ip -6 route flush table local proto {ROUTE_PROTOCOL}` do");
        }
    }
}

/// A listening TCP socket on `addr` for the proxy: nonblocking, `SO_REUSEADDR` (a restarted
/// agent binds while old connections linger in TIME_WAIT), `IP(V6)_FREEBIND` (the VIP need
/// not be local yet, and IPv6 would otherwise refuse an address no interface has), backlog
/// [`LISTEN_BACKLOG`].
pub fn bind_listener(addr: SocketAddr) -> Result<std::net::TcpListener, VipError> {
    let bind = || -> std::io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        // One socket per proxy worker on the same address (`workers`).
        socket.set_reuse_port(true)?;
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => {
                socket.set_freebind_v6(true)?;
                // A listener's VIP is one family's: never take the other's traffic on `::`.
                socket.set_only_v6(true)?;
            }
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(socket)
    };
    bind()
        .map(std::net::TcpListener::from)
        .map_err(|source| VipError::Bind { addr, source })
}

/// What to add and remove so that exactly the VIPs of `wanted` that are not local by other
/// means have a route of ours, given the local table's host `routes`.
fn plan(wanted: &[IpAddr], routes: &[LocalRoute]) -> VipChanges {
    let theirs: BTreeSet<IpAddr> = routes
        .iter()
        .filter(|r| !r.ours)
        .map(|r| r.address)
        .collect();
    let ours: BTreeSet<IpAddr> = routes
        .iter()
        .filter(|r| r.ours)
        .map(|r| r.address)
        .collect();
    let needed: BTreeSet<IpAddr> = wanted
        .iter()
        .copied()
        // Loopback addresses are local already (127/8 is one route); unspecified and
        // multicast ones are no VIP a route could give.
        .filter(|a| !a.is_loopback() && !a.is_unspecified() && !a.is_multicast())
        .filter(|a| !theirs.contains(a))
        .collect();
    VipChanges {
        added: needed.difference(&ours).copied().collect(),
        removed: ours.difference(&needed).copied().collect(),
    }
}

/// `lo`'s interface index.
fn loopback_index() -> Result<u32, VipError> {
    // SAFETY: a NUL-terminated string.
    match unsafe { libc::if_nametoindex(c"lo".as_ptr()) } {
        0 => Err(VipError::NoLoopback),
        index => Ok(index),
    }
}

/// Runs `work` with a netlink handle on a thread and current-thread runtime of its own, and
/// waits for it. A thread of its own: the caller may be inside a tokio runtime (where
/// `block_on` panics); the new thread shares the caller's network namespace, so the routes
/// are the caller's.
fn with_netlink<T, F, Fut>(work: F) -> Result<T, VipError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, VipError>>,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("lb-vip-routes".into())
            .spawn_scoped(scope, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(VipError::Socket)?;
                runtime.block_on(async move {
                    // The socket registers with this runtime: it must exist first.
                    let (connection, handle, _) =
                        rtnetlink::new_connection().map_err(VipError::Socket)?;
                    let task = tokio::spawn(connection);
                    let done = work(handle).await;
                    task.abort();
                    done
                })
            })
            .map_err(VipError::Socket)?;
        worker.join().unwrap_or_else(|_| {
            Err(VipError::Socket(std::io::Error::other(
                "the netlink thread panicked",
            )))
        })
    })
}

/// The host routes of type `local` in the `local` table, both families.
async fn local_routes(handle: &Handle) -> Result<Vec<LocalRoute>, VipError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        // No destination: a dump (of every table; filtered here, as the kernel filters a
        // dump only for sockets that ask for strict checking).
        let mut dump = handle.route().get(request).execute();
        while let Some(route) = dump.try_next().await.map_err(VipError::Dump)? {
            if let Some(local) = local_route_of(&route) {
                out.push(local);
            }
        }
    }
    Ok(out)
}

/// `route` as a local host route of the local table, if it is one.
fn local_route_of(route: &RouteMessage) -> Option<LocalRoute> {
    let header = &route.header;
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    if table != u32::from(LOCAL_TABLE) || header.kind != RouteType::Local {
        return None;
    }
    let address = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    let host_length = if address.is_ipv4() { 32 } else { 128 };
    (header.destination_prefix_length == host_length).then(|| LocalRoute {
        address,
        ours: u8::from(header.protocol) == ROUTE_PROTOCOL,
    })
}

/// Our local route for `vip`: the message both adding and removing it send.
fn route_message(vip: IpAddr) -> RouteMessage {
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    (header.address_family, header.destination_prefix_length) = match vip {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    header.table = LOCAL_TABLE;
    // The tag that makes it ours: removal matches it, so another's route never goes.
    header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    header.scope = RouteScope::Host;
    header.kind = RouteType::Local;
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(vip)));
    message
}

async fn add_route(handle: &Handle, vip: IpAddr, lo: u32) -> Result<(), VipError> {
    let mut message = route_message(vip);
    message.attributes.push(RouteAttribute::Oif(lo));
    handle
        .route()
        .add(message)
        .execute()
        .await
        .map_err(|source| VipError::Add { vip, source })
}

async fn remove_route(handle: &Handle, vip: IpAddr) -> Result<(), VipError> {
    handle
        .route()
        .del(route_message(vip))
        .execute()
        .await
        .map_err(|source| VipError::Remove { vip, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn route(address: &str, ours: bool) -> LocalRoute {
        LocalRoute {
            address: ip(address),
            ours,
        }
    }

    #[test]
    fn missing_vips_get_a_route_and_ours_for_gone_vips_are_removed() {
        let routes = [route("198.18.1.100", true), route("198.18.1.101", true)];
        let changes = plan(&[ip("198.18.1.100"), ip("fd00:198:18:1::100")], &routes);
        assert_eq!(changes.added, vec![ip("fd00:198:18:1::100")]);
        assert_eq!(changes.removed, vec![ip("198.18.1.101")]);
    }

    #[test]
    fn a_second_sync_changes_nothing() {
        let routes = [route("198.18.1.100", true)];
        assert!(plan(&[ip("198.18.1.100")], &routes).is_empty());
    }

    #[test]
    fn a_vip_already_local_gets_no_route_and_others_routes_are_never_removed() {
        // 198.18.0.1 is an address of the node (its kernel local route); fd00::5 someone
        // else's AnyIP route.
        let routes = [route("198.18.0.1", false), route("fd00:198:18::5", false)];
        let changes = plan(&[ip("198.18.0.1")], &routes);
        assert!(changes.is_empty(), "{changes:?}");
        assert!(plan(&[], &routes).is_empty());
    }

    #[test]
    fn our_route_goes_once_the_vip_is_an_address_of_the_node() {
        let routes = [route("198.18.1.100", true), route("198.18.1.100", false)];
        let changes = plan(&[ip("198.18.1.100")], &routes);
        assert_eq!(changes.removed, vec![ip("198.18.1.100")]);
        assert!(changes.added.is_empty());
    }

    #[test]
    fn loopback_unspecified_and_multicast_addresses_get_no_route() {
        let wanted = [
            ip("127.0.0.5"),
            ip("::1"),
            ip("0.0.0.0"),
            ip("::"),
            ip("224.0.0.1"),
        ];
        assert!(plan(&wanted, &[]).is_empty());
    }

    #[test]
    fn repeated_vips_get_one_route() {
        let changes = plan(&[ip("198.18.1.100"), ip("198.18.1.100")], &[]);
        assert_eq!(changes.added, vec![ip("198.18.1.100")]);
    }

    #[test]
    fn l7_vips_are_the_distinct_addresses_of_http_https_and_tls_listeners_only() {
        let config = Config::parse(
            r#"
[[target_group]]
name = "tcp"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.21" }]

[[target_group]]
name = "web"
protocol = "http"
port = 8080
targets = [{ address = "198.18.0.21" }]

[[target_group]]
name = "web6"
protocol = "http"
port = 8080
targets = [{ address = "fd00:198:18::21" }]

[[listener]]
name = "l4"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "tcp" }

[[listener]]
name = "l4-only-vip"
address = "198.18.1.101"
port = 80
protocol = "tcp"
default_action = { forward = "tcp" }

[[listener]]
name = "web"
address = "198.18.1.100"
port = 8000
protocol = "http"
default_action = { forward = "web" }

[[listener]]
name = "web-again"
address = "198.18.1.100"
port = 8001
protocol = "http"
default_action = { forward = "web" }

[[listener]]
name = "web6"
address = "fd00:198:18:1::100"
port = 8000
protocol = "http"
default_action = { forward = "web6" }
"#,
            "test.toml",
        )
        .expect("valid config");
        assert_eq!(
            l7_vips(&config),
            vec![ip("198.18.1.100"), ip("fd00:198:18:1::100")]
        );
    }

    #[test]
    fn only_host_routes_of_type_local_in_the_local_table_count() {
        let ours = route_message(ip("198.18.1.100"));
        assert_eq!(local_route_of(&ours), Some(route("198.18.1.100", true)));

        let mut kernel = route_message(ip("fd00:198:18::1"));
        kernel.header.protocol = RouteProtocol::Kernel;
        assert_eq!(
            local_route_of(&kernel),
            Some(route("fd00:198:18::1", false))
        );

        let mut main_table = route_message(ip("198.18.1.100"));
        main_table.header.table = 254;
        assert_eq!(local_route_of(&main_table), None);

        let mut broadcast = route_message(ip("198.18.0.255"));
        broadcast.header.kind = RouteType::Broadcast;
        assert_eq!(local_route_of(&broadcast), None);

        let mut prefix = route_message(ip("127.0.0.0"));
        prefix.header.destination_prefix_length = 8;
        assert_eq!(local_route_of(&prefix), None);
    }

    #[test]
    fn bound_listener_is_nonblocking_and_takes_an_address_no_interface_has() {
        // A lab address on no interface of this host: only FREEBIND lets the bind succeed. Port 0:
        // no clash with anything else on the machine.
        let addr: SocketAddr = "198.18.254.77:0".parse().unwrap();
        let listener = bind_listener(addr).expect("freebind bind");
        assert_eq!(listener.local_addr().unwrap().ip(), addr.ip());
        // Nonblocking: no client, so accept returns WouldBlock at once instead of hanging.
        let accepted = listener.accept().map(|_| ()).unwrap_err();
        assert_eq!(accepted.kind(), std::io::ErrorKind::WouldBlock);

        let addr6: SocketAddr = "[fd00:198:18:fe::77]:0".parse().unwrap();
        let listener6 = bind_listener(addr6).expect("freebind bind v6");
        assert_eq!(listener6.local_addr().unwrap().ip(), addr6.ip());
    }
}
