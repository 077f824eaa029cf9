//! The data plane on the veths of `local` instances: the load balancer on the LB end (a
//! redirect target, forwarding on), the pass program natively on the instance's `eth0` (TX
//! checksum offload off), both pinned apart from the NICs' links, taken over by a restarted
//! agent, and gone after a detach, also once the veth itself is gone; and a VIP balancing to
//! an instance the `local` provider launched with the agent's link hook passes traffic both
//! ways through the veth. Needs root (skipped otherwise); one test at a time.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{DevMapHash, Map, MapData},
    programs::XdpMode,
};
use lb_agent::{
    agent::{Node, Writer, instance_links},
    config::Config,
    dataplane::{AttachMode, Dataplane, InstanceLinks as _, InstanceVeth, Maps as _},
    overrides::Overrides,
    pinning::PinDir,
    scaling::provider::{
        Provider as _,
        local::{LocalConfig, LocalProvider, lb_interface_name},
    },
    state::{Ids, State},
};
use lb_common::{map_names, program_names, xdp_attachment::XdpAttachment};
use tests::scaling::{instance_id, python, spec};
use xtask::lab::netns::{Inside, NetNs, run_inside};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A BPF filesystem of the test's own, unmounted (pins and all) on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(tag: &str) -> Bpffs {
        let dir = std::env::temp_dir().join(format!("lbt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting bpffs on {}", dir.display());
        Bpffs(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A load balancer's namespace and an instance's, joined by a veth as the `local` provider
/// joins them (the LB end `lbi…`, the instance's `eth0`).
struct Veth {
    veth: InstanceVeth,
    // Dropped in this order: the namespaces go after everything else the test holds.
    instance: NetNs,
    lb: NetNs,
}

impl Veth {
    fn new(tag: &str) -> Veth {
        let pid = std::process::id();
        let lb = NetNs::create(&format!("lbt-{tag}{pid}")).expect("LB namespace");
        let instance = NetNs::create(&format!("lbt-{tag}i{pid}")).expect("instance namespace");
        let id = instance_id();
        let lb_interface = lb_interface_name(&id);
        lb.ip(&[
            "link",
            "add",
            &lb_interface,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            instance.name(),
        ])
        .expect("veth");
        lb.ip(&["link", "set", &lb_interface, "up"]).expect("up");
        instance.ip(&["link", "set", "eth0", "up"]).expect("up");
        Veth {
            veth: InstanceVeth {
                instance_id: id,
                lb_interface,
                namespace: instance.name().to_owned(),
                interface: "eth0".into(),
            },
            instance,
            lb,
        }
    }

    /// The XDP programs on the LB end and on the instance's end.
    fn programs(&self) -> (Option<XdpAttachment>, Option<XdpAttachment>) {
        (
            XdpAttachment::read(Some(self.lb.name()), &self.veth.lb_interface).expect("ip link"),
            XdpAttachment::read(Some(self.instance.name()), "eth0").expect("ip link"),
        )
    }

    /// The LB end's ifindex (the caller is in the LB namespace).
    fn lb_ifindex(&self) -> u32 {
        let name = std::ffi::CString::new(self.veth.lb_interface.as_str()).expect("a name");
        // SAFETY: a NUL-terminated string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    }
}

/// The keys of the redirect map pinned in `pins`.
fn tx_ports(pins: &Path) -> Vec<u32> {
    let data = MapData::from_pin(pins.join("maps").join(map_names::TX_PORTS)).expect("pinned");
    let map = DevMapHash::try_from(Map::DevMapHash(data)).expect("a devmap");
    map.keys().map(|k| k.expect("a key")).collect()
}

fn prog_name(attachment: &Option<XdpAttachment>) -> Option<&str> {
    attachment.as_ref().and_then(|a| a.prog_name.as_deref())
}

fn load(pins: &Path) -> Dataplane {
    Dataplane::load_pinned(251, 4, 4096, PinDir::open(pins).expect("pin dir")).expect("loaded")
}

#[test]
fn an_instance_veth_gets_both_programs_pinned_apart_from_the_nics_taken_over_by_the_next_agent_and_detached()
 {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let bpffs = Bpffs::mount("il-pin");
    let pins = bpffs.0.join("lb-agent");
    let bed = Veth::new("ilp");
    let _inside = Inside::enter(bed.lb.name()).expect("into the LB namespace");
    let ifindex = bed.lb_ifindex();

    let mut dataplane = load(&pins);
    let attached = dataplane.attach_instance(&bed.veth).expect("attached");
    assert_eq!(attached.mode, AttachMode::Native);
    assert!(!attached.taken_over);
    let (lb_end, peer) = bed.programs();
    assert_eq!(prog_name(&lb_end), Some(program_names::LB), "{lb_end:?}");
    assert_eq!(lb_end.as_ref().map(|a| a.mode), Some(AttachMode::Native));
    assert_eq!(prog_name(&peer), Some(program_names::PASS), "{peer:?}");
    assert_eq!(peer.as_ref().map(|a| a.mode), Some(AttachMode::Native));
    assert!(tx_ports(&pins).contains(&ifindex), "not a redirect target");
    let forwarding = format!(
        "/proc/sys/net/ipv4/conf/{}/forwarding",
        bed.veth.lb_interface
    );
    assert_eq!(std::fs::read_to_string(&forwarding).unwrap().trim(), "1");
    let features = bed
        .instance
        .exec(&["ethtool", "-k", "eth0"])
        .expect("ethtool");
    assert!(
        features.contains("tx-checksumming: off"),
        "TX checksum offload still on:\n{features}"
    );
    let pinned = pins.join("instances").join(&bed.veth.lb_interface);
    assert!(pinned.exists(), "no pin at {}", pinned.display());

    // A start-up on other NICs drops the NICs' links it does not serve, not the instances'.
    let dropped = dataplane.drop_other_links(&["lbt-none".into()]).unwrap();
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(
        dataplane.instance_links(),
        std::slice::from_ref(&bed.veth.lb_interface)
    );

    // The agent stops: the pins keep both programs attached; the next agent takes them over,
    // its program replacing the old one in place.
    let old_id = lb_end.and_then(|a| a.prog_id);
    drop(dataplane);
    let (lb_end, peer) = bed.programs();
    assert_eq!(
        prog_name(&lb_end),
        Some(program_names::LB),
        "gone with the agent"
    );
    assert_eq!(
        prog_name(&peer),
        Some(program_names::PASS),
        "gone with the agent"
    );
    let mut dataplane = load(&pins);
    assert!(dataplane.adopted());
    assert_eq!(
        dataplane.instance_links(),
        std::slice::from_ref(&bed.veth.lb_interface),
        "the link the earlier agent pinned is listed before it is taken over"
    );
    let again = dataplane.attach_instance(&bed.veth).expect("taken over");
    assert!(again.taken_over, "{again:?}");
    let (lb_end, peer) = bed.programs();
    assert_eq!(prog_name(&lb_end), Some(program_names::LB));
    assert_ne!(
        lb_end.and_then(|a| a.prog_id),
        old_id,
        "the old program stayed"
    );
    assert_eq!(prog_name(&peer), Some(program_names::PASS));

    // Terminated: both ends bare, pins and redirect entry gone.
    assert!(dataplane.detach_instance(&bed.veth.lb_interface).unwrap());
    assert_eq!(bed.programs(), (None, None));
    assert!(!pinned.exists());
    assert!(
        !pins
            .join("instances")
            .join(format!("{}-peer", bed.veth.lb_interface))
            .exists()
    );
    assert!(
        !tx_ports(&pins).contains(&ifindex),
        "still a redirect target"
    );
    assert!(!dataplane.detach_instance(&bed.veth.lb_interface).unwrap());
    lb_agent::dataplane::Detach::detach(&mut dataplane).expect("detached");
}

#[test]
fn a_veth_deleted_under_the_data_plane_is_detached_without_error() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let bpffs = Bpffs::mount("il-del");
    let pins = bpffs.0.join("lb-agent");
    let bed = Veth::new("ild");
    let _inside = Inside::enter(bed.lb.name()).expect("into the LB namespace");
    let mut dataplane = load(&pins);
    dataplane.attach_instance(&bed.veth).expect("attached");
    bed.lb
        .ip(&["link", "del", &bed.veth.lb_interface])
        .expect("deleted");
    assert!(dataplane.detach_instance(&bed.veth.lb_interface).unwrap());
    assert!(
        std::fs::read_dir(pins.join("instances"))
            .unwrap()
            .next()
            .is_none(),
        "pins left"
    );
    // And a pin an earlier agent left for a veth now gone: the next attach fails cleanly on
    // the missing interface, and a detach removes the pins.
    let bed = Veth::new("ild2");
    drop(dataplane);
    let _inside2 = Inside::enter(bed.lb.name()).expect("into the second LB namespace");
    let mut dataplane = load(&pins);
    dataplane.attach_instance(&bed.veth).expect("attached");
    drop(dataplane);
    bed.lb
        .ip(&["link", "del", &bed.veth.lb_interface])
        .expect("deleted");
    let mut dataplane = load(&pins);
    let e = dataplane
        .attach_instance(&bed.veth)
        .expect_err("no interface");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert_eq!(
        dataplane.retain_instances(&[]).unwrap(),
        std::slice::from_ref(&bed.veth.lb_interface)
    );
    assert!(dataplane.instance_links().is_empty());
    lb_agent::dataplane::Detach::detach(&mut dataplane).expect("detached");
}

/// The namespaces of the end-to-end test: a client and a load balancer joined by a veth
/// (`lbn0` 198.18.0.1 ⇄ `cl0` 198.18.0.10), the VIP 198.18.1.100 routed to the load balancer.
struct Site {
    client: NetNs,
    lb: NetNs,
}

impl Site {
    fn new() -> Site {
        let pid = std::process::id();
        let lb = NetNs::create(&format!("lbt-ile{pid}")).expect("LB namespace");
        let client = NetNs::create(&format!("lbt-ilc{pid}")).expect("client namespace");
        let ip = |ns: &NetNs, args: &[&str]| {
            ns.ip(args)
                .unwrap_or_else(|e| panic!("ip {args:?} in {}: {e:#}", ns.name()))
        };
        ip(
            &lb,
            &[
                "link",
                "add",
                "lbn0",
                "type",
                "veth",
                "peer",
                "name",
                "cl0",
                "netns",
                client.name(),
            ],
        );
        ip(&lb, &["addr", "add", "198.18.0.1/24", "dev", "lbn0"]);
        ip(&lb, &["link", "set", "lbn0", "up"]);
        ip(&client, &["addr", "add", "198.18.0.10/24", "dev", "cl0"]);
        ip(&client, &["link", "set", "cl0", "up"]);
        ip(
            &client,
            &["route", "add", "198.18.1.0/24", "via", "198.18.0.1"],
        );
        // The client's frames reach XDP with whole checksums (the veth quirk, DESIGN.md).
        client
            .exec(&["ethtool", "-K", "cl0", "tx", "off"])
            .expect("ethtool");
        Site { client, lb }
    }
}

/// The MAC of `dev` in `ns`.
fn mac(ns: &NetNs, dev: &str) -> String {
    let out = ns.ip(&["-o", "link", "show", dev]).expect("ip link");
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_owned()
}

/// `GET /` to `addr` from namespace `ns`, one attempt; the status line.
fn http_get(ns: &str, addr: SocketAddr) -> Result<String, String> {
    http_get_path(ns, addr, "/").map(|(line, _)| line)
}

/// `GET path` to `addr` from namespace `ns`, one attempt (1 s to connect, 5 s between
/// reads); the status line and the whole response's length.
fn http_get_path(ns: &str, addr: SocketAddr, path: &str) -> Result<(String, usize), String> {
    run_inside(ns, || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response[..response.len().min(200)]).into_owned();
        Ok((
            text.lines().next().unwrap_or_default().to_owned(),
            response.len(),
        ))
    })
    .map_err(|e| format!("{e:#}"))
}

/// A provider whose instances are terminated, and its state directory removed, on drop (a
/// failed test leaves nothing behind).
struct Instances(LocalProvider, PathBuf);

impl Drop for Instances {
    fn drop(&mut self) {
        for status in self.0.describe().unwrap_or_default() {
            if let Err(e) = self.0.terminate(&status.instance_id, Duration::ZERO) {
                eprintln!("cleaning up {}: {e}", status.instance_id);
            }
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

const CONFIG: &str = r#"
[agent]
snat_addresses = ["198.18.0.1"]
maglev_table_size = 251

[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.8.10" }]

[[listener]]
name = "web"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "web" }
"#;

#[test]
fn a_vip_balances_to_a_local_instance_through_the_veth_the_link_hook_attached_to() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let site = Site::new();

    // The agent's writer, in the load balancer's namespace, owning the data plane on lbn0.
    let (changes, receiver) = tokio::sync::mpsc::unbounded_channel();
    let lb_name = site.lb.name().to_owned();
    let client_name = site.client.name().to_owned();
    let (ready, started) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let _inside = Inside::enter(&lb_name).expect("into the LB namespace");
        let file = Config::parse(CONFIG, "t.toml").expect("a valid config");
        let mut dataplane = Dataplane::load_sized(251, 4, 4096).expect("loaded");
        // The client's veth receives frames the program redirects into lbn0: it needs an XDP
        // program of its own (the veth quirk), here the object's pass program.
        let pass = dataplane
            .program(program_names::PASS)
            .expect("pass program");
        run_inside(&client_name, || Ok(pass.attach("cl0", XdpMode::Driver)?))
            .expect("the pass program on the client's veth");
        lb_agent::forwarding::enable_for_fib_lookup("lbn0").expect("forwarding");
        dataplane.attach("lbn0").expect("attached to the NIC");
        let snat = file.agent.snat_addresses.clone();
        let state = State::apply(
            &file,
            &snat,
            &mut dataplane,
            &Ids::default(),
            Instant::now(),
        )
        .expect("programmed");
        let (writer, _) = Writer::new(
            state,
            dataplane,
            file,
            None,
            Overrides::default(),
            Node::fixed(),
        );
        ready.send(()).expect("the test waits");
        writer.run(receiver)
    });
    // Loading (verifying) the program takes a while: the hook's wait starts after it.
    started
        .recv_timeout(Duration::from_secs(120))
        .expect("the writer started");

    let state_dir = std::env::temp_dir().join(format!("lbt-il-e2e-{}", instance_id()));
    let provider = Instances(
        LocalProvider::new(LocalConfig {
            state_dir: state_dir.clone(),
            lb_namespace: Some(site.lb.name().to_owned()),
            cgroup_parent: None,
        })
        .expect("provider")
        .with_link_hook(instance_links::link_hook(changes.clone())),
        state_dir,
    );
    let id = instance_id();
    let python = python();
    let command = [python.as_str(), "-m", "http.server", "8080"]
        .map(str::to_owned)
        .to_vec();
    let addresses = (
        "198.18.8.10".parse().unwrap(),
        "198.18.8.1".parse().unwrap(),
    );
    let record = provider
        .0
        .launch(&spec(&id, 1, command, addresses, 8080, &["198.18.0.0/15"]))
        .expect("launched, the hook attached");
    let lb_interface = lb_interface_name(&id);
    let namespace = lb_agent::scaling::provider::local::namespace_name(&id);
    let on_peer = XdpAttachment::read(Some(&namespace), "eth0").expect("ip link");
    assert_eq!(
        prog_name(&on_peer),
        Some(program_names::PASS),
        "{on_peer:?}"
    );

    // XDP cannot resolve next hops: the agent keeps them resolved (here, by hand).
    let instance_ns_mac = {
        let out = std::process::Command::new("ip")
            .args(["-n", &namespace, "-o", "link", "show", "eth0"])
            .output()
            .expect("ip");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {out}"))
            .to_owned()
    };
    for (addr, lladdr, dev) in [
        (
            "198.18.8.10",
            instance_ns_mac.as_str(),
            lb_interface.as_str(),
        ),
        ("198.18.0.10", &mac(&site.client, "cl0"), "lbn0"),
    ] {
        site.lb
            .ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                lladdr,
                "dev",
                dev,
                "nud",
                "permanent",
            ])
            .expect("neighbour");
    }

    // Nothing holds the VIP: only the XDP program answers it, and the instance's replies
    // (to the full-NAT source, the node's own address) reach the client only if the program
    // on the veth rewrites them.
    let vip: SocketAddr = "198.18.1.100:80".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        match http_get(site.client.name(), vip) {
            Ok(line) => break line,
            Err(e) if Instant::now() >= deadline => {
                panic!("the VIP never answered through the instance's veth: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(line.contains(" 200 "), "{line}");

    // A response of many segments: the instance sends no segmentation-offloaded frames (TX
    // checksum offload off takes TSO with it), each one is rewritten and gets through whole.
    let big = vec![b'x'; 4 << 20];
    std::fs::write(provider.0.instance_dir(&id).join("big"), &big).expect("a file to serve");
    let (line, length) = http_get_path(site.client.name(), vip, "/big").expect("GET /big");
    assert!(line.contains(" 200 "), "{line}");
    assert!(
        length > big.len(),
        "{length} bytes of more than {}",
        big.len()
    );

    // The agent's own traffic to the instance (its health checks) passes both programs.
    let direct = http_get(site.lb.name(), "198.18.8.10:8080".parse().unwrap())
        .expect("the instance answers the load balancer's namespace");
    assert!(direct.contains(" 200 "), "{direct}");

    // Terminated (the veth goes with it), then detached: no error, nothing left.
    provider
        .0
        .terminate(&record.instance_id, Duration::from_secs(2))
        .expect("terminated");
    assert!(
        instance_links::detach(&changes, &id, instance_links::WRITER_TIMEOUT).expect("detached")
    );
    drop((provider, changes));
    let mut dataplane = writer.join().expect("the writer ran");
    assert!(dataplane.instance_links().is_empty());
    lb_agent::dataplane::Detach::detach(&mut dataplane).expect("detached");
}
