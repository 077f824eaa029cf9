//! How an L7 listener's VIP reaches the proxy, in a lab without an agent: the agent's own
//! `proxy::vip` calls give the LB node local routes for the VIPs (no address on any
//! interface) and bind the proxy's sockets; a client in its own namespace connects to the
//! VIPs; the routes then go, and with them the VIPs. Needs root; one test at a time.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_agent::proxy::vip::{
    ROUTE_PROTOCOL, VipChanges, bind_listener, remove_local_routes, sync_local_routes,
};
use tests::lab_traffic::lab_up;
use xtask::lab::{Lab, VIP4, VIP6, netns};

/// The port the stand-in proxy listens on.
const PORT: u16 = 8000;
/// What the stand-in proxy answers.
const GREETING: &[u8] = b"hello from the proxy\n";
/// How long a connection or an answer may take.
const WAIT: Duration = Duration::from_secs(10);

/// `sync_local_routes(vips)` inside the LB node's namespace.
fn sync_in_lb(lab: &Lab, vips: &[IpAddr]) -> VipChanges {
    netns::run_inside(&lab.lb().ns, || Ok(sync_local_routes(vips)))
        .expect("entering the LB namespace")
        .expect("sync_local_routes")
}

/// Our routes in the LB node's local table, both families, as `ip` lists them.
fn our_routes(lab: &Lab) -> String {
    let proto = ROUTE_PROTOCOL.to_string();
    let lb = &lab.lb().ns;
    let v4 = netns::ip(&["-n", lb, "route", "show", "table", "local", "proto", &proto]);
    let v6 = netns::ip(&[
        "-n", lb, "-6", "route", "show", "table", "local", "proto", &proto,
    ]);
    format!("{}{}", v4.expect("ip route"), v6.expect("ip -6 route"))
}

/// Answers the first connection to `listener` with `GREETING` (waiting at most `WAIT`); the
/// client's address.
fn answer_one(listener: TcpListener) -> JoinHandle<Option<SocketAddr>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        // The listener is nonblocking, as the proxy's are: poll it within the deadline.
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    stream.set_nonblocking(false).ok()?;
                    stream.write_all(GREETING).ok()?;
                    return Some(peer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return None,
            }
        }
        None
    })
}

/// Connects from the client's namespace to `vip`:`PORT` within `timeout`; what the server
/// said, or the error.
fn client_reads(lab: &Lab, vip: IpAddr, timeout: Duration) -> std::io::Result<Vec<u8>> {
    netns::run_inside(&lab.client().ns, || {
        Ok((|| {
            let mut stream = TcpStream::connect_timeout(&SocketAddr::new(vip, PORT), timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer)
        })())
    })
    .expect("entering the client namespace")
}

#[test]
fn l7_vips_are_served_through_local_routes_and_gone_once_the_routes_are_removed() {
    let lab = lab_up("vip", 1);
    let vips = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];

    // Bound before the routes exist: FREEBIND makes the order not matter.
    let listeners: Vec<TcpListener> = vips
        .iter()
        .map(|&vip| {
            netns::run_inside(&lab.lb().ns, || {
                Ok(bind_listener(SocketAddr::new(vip, PORT)))
            })
            .expect("entering the LB namespace")
            .unwrap_or_else(|e| panic!("binding {vip}: {e}"))
        })
        .collect();

    let changes = sync_in_lb(&lab, &vips);
    assert_eq!(changes.added, vips, "{changes:?}");
    assert!(changes.removed.is_empty(), "{changes:?}");
    assert!(
        sync_in_lb(&lab, &vips).is_empty(),
        "a second sync changed something"
    );
    let routes = our_routes(&lab);
    assert!(
        routes.contains(&VIP4.to_string()) && routes.contains(&VIP6.to_string()),
        "our routes: {routes}"
    );
    // AnyIP: no interface has the VIP.
    let addresses = netns::ip(&["-n", &lab.lb().ns, "addr"]).expect("ip addr");
    assert!(!addresses.contains(&VIP4.to_string()), "{addresses}");

    // The node's own address is local already: it gets no route.
    let own = IpAddr::V4(lab.lb().v4);
    let with_own = [vips[0], vips[1], own];
    assert!(sync_in_lb(&lab, &with_own).is_empty());

    for (vip, listener) in vips.iter().zip(listeners) {
        let server = answer_one(listener);
        let answer = client_reads(&lab, *vip, WAIT)
            .unwrap_or_else(|e| panic!("client to {vip}:{PORT}: {e}"));
        assert_eq!(answer, GREETING, "from {vip}");
        let peer = server.join().expect("server thread");
        let client = match vip {
            IpAddr::V4(_) => IpAddr::V4(lab.client().v4),
            IpAddr::V6(_) => IpAddr::V6(lab.client().v6),
        };
        assert_eq!(peer.map(|p| p.ip()), Some(client), "who connected to {vip}");
    }

    let removed = netns::run_inside(&lab.lb().ns, || Ok(remove_local_routes()))
        .expect("entering the LB namespace")
        .expect("remove_local_routes");
    assert_eq!(removed, 2);
    let routes = our_routes(&lab);
    assert!(routes.trim().is_empty(), "left behind: {routes}");
    // The socket is still bound (FREEBIND), but without the route the node no longer takes
    // the VIP's packets as its own.
    let _still_bound = netns::run_inside(&lab.lb().ns, || {
        Ok(bind_listener(SocketAddr::new(vips[0], PORT + 1)))
    })
    .expect("entering the LB namespace")
    .expect("bind");
    let gone = client_reads(&lab, vips[0], Duration::from_secs(2));
    assert!(gone.is_err(), "the VIP still answers: {gone:?}");
}

#[test]
fn removing_routes_spares_the_local_routes_of_others() {
    let lab = lab_up("vipo", 1);
    let lb = &lab.lb().ns;
    // Someone else's AnyIP route, as an operator would add it.
    netns::ip(&[
        "-n",
        lb,
        "route",
        "add",
        "local",
        "198.18.1.77",
        "dev",
        "lo",
        "table",
        "local",
    ])
    .expect("ip route add");
    let changes = sync_in_lb(&lab, &[IpAddr::V4(VIP4), "198.18.1.77".parse().unwrap()]);
    assert_eq!(changes.added, vec![IpAddr::V4(VIP4)], "{changes:?}");
    let removed = netns::run_inside(lb, || Ok(remove_local_routes()))
        .expect("entering the LB namespace")
        .expect("remove_local_routes");
    assert_eq!(removed, 1);
    let theirs =
        netns::ip(&["-n", lb, "route", "show", "table", "local", "198.18.1.77"]).expect("ip route");
    assert!(
        theirs.contains("198.18.1.77"),
        "their route went: {theirs:?}"
    );
}
