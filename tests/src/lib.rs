//! Shared pieces of the integration tests: crafted frames and a test bed that runs the real
//! XDP program with BPF_PROG_TEST_RUN, its maps filled by the agent's own code.

pub mod agent_views;
pub mod auto_scaling_lab;
pub mod bed_config;
pub mod decode;
pub mod flood;
pub mod h2_reset;
pub mod l7_lab;
pub mod lab_configs;
pub mod lab_traffic;
pub mod packet;
pub mod raw_http;
pub mod scaling;
pub mod table;
pub mod tls_client;
pub mod websocket;
pub mod websocket_client;

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use lb_agent::{
    config::Config,
    dataplane::{Dataplane, Maps as _},
    state::{Ids, State},
};
use lb_common::{Settings, map_names, program_names};
use xtask::lab::netns::{Inside, NetNs};

use crate::bed_config::BedConfig;

/// The neighbour MAC the test bed gives a lab host whose address ends in byte `last`.
pub fn mac_of(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, last]
}

/// The neighbour MAC the test bed gives the lab host at `ip`.
pub fn host_mac(ip: IpAddr) -> [u8; 6] {
    mac_of(match ip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    })
}

static BED_SEQ: AtomicU32 = AtomicU32::new(0);

/// The XDP program loaded and programmed by the agent's code, runnable on crafted frames in a
/// private namespace whose FIB and neighbour table know the lab's hosts.
pub struct TestBed {
    pub dataplane: Dataplane,
    pub state: State,
    pub config: Config,
    ifindex: u32,
    // Last: leave the namespace after the program's maps are gone, then delete it.
    _inside: Inside,
    ns: NetNs,
}

impl TestBed {
    /// A bed programmed with the lab's plan (`BedConfig::lab`).
    pub fn new() -> Self {
        Self::with_config(BedConfig::lab().build())
    }

    /// A bed programmed with `config`.
    pub fn with_config(config: Config) -> Self {
        let name = format!(
            "lbtr{}-{}",
            std::process::id(),
            BED_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns = NetNs::create(&name).unwrap_or_else(|e| panic!("{e:#}"));
        let inside = Inside::enter(&name).unwrap_or_else(|e| panic!("{e:#}"));
        let ip = |args: &[&str]| {
            ns.ip(args).unwrap_or_else(|e| panic!("{e:#}"));
        };
        // lbt0: the NIC packets arrive on (clients, and backends on 198.18.0.0/24).
        // lbt2: a second NIC towards 198.18.4.0/24, reached by redirect.
        for (nic, peer, v4, v6) in [
            ("lbt0", "lbt1", "198.18.0.1/24", "fd00:198:18::1/64"),
            ("lbt2", "lbt3", "198.18.4.1/24", "fd00:198:18:4::1/64"),
        ] {
            ip(&["link", "add", nic, "type", "veth", "peer", "name", peer]);
            ip(&["link", "set", nic, "up"]);
            ip(&["link", "set", peer, "up"]);
            ip(&["addr", "add", v4, "dev", nic]);
            ip(&["addr", "add", v6, "dev", nic, "nodad"]);
            lb_agent::forwarding::enable_for_fib_lookup(nic).expect("enable forwarding");
        }
        // Lab hosts .10 (client) and .21-.23 (backends), and 198.18.4.21 behind lbt2; a host's
        // MAC ends in its address's last byte (IPv6 ::21 is 0x21).
        let mut hosts: Vec<(String, &str)> = Vec::new();
        for host in ["10", "21", "22", "23"] {
            hosts.push((format!("198.18.0.{host}"), "lbt0"));
            hosts.push((format!("fd00:198:18::{host}"), "lbt0"));
        }
        hosts.push(("198.18.4.21".to_owned(), "lbt2"));
        for (addr, nic) in &hosts {
            let mac = host_mac(addr.parse().expect("lab address"))
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            ip(&[
                "neigh",
                "add",
                addr,
                "lladdr",
                &mac,
                "dev",
                nic,
                "nud",
                "permanent",
            ]);
        }
        let ifindex = {
            let c = std::ffi::CString::new("lbt0").expect("name");
            // SAFETY: valid C string; this thread is inside the namespace.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        };
        assert_ne!(ifindex, 0, "lbt0 not found in {name}");
        let mut dataplane = Dataplane::load_sized(
            config.agent.maglev_table_size,
            8,
            config.agent.connection_table_size,
        )
        .expect("load XDP object");
        // As attaching does: lbt2 becomes a redirect target.
        dataplane
            .add_redirect_ports()
            .expect("fill the redirect map");
        let snat: Vec<IpAddr> = config.agent.snat_addresses.clone();
        let state = State::apply(
            &config,
            &snat,
            &mut dataplane,
            &Ids::default(),
            std::time::Instant::now(),
        )
        .expect("program maps");
        Self {
            dataplane,
            state,
            config,
            ifindex,
            _inside: inside,
            ns,
        }
    }

    /// The MAC of the bed's NIC (`lbt0`): the source of frames the program sends back out.
    pub fn nic_mac(&self) -> [u8; 6] {
        let link = self
            .ns
            .ip(&["-o", "link", "show", "lbt0"])
            .unwrap_or_else(|e| panic!("{e:#}"));
        let text = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in `{link}`"));
        let mut mac = [0; 6];
        for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
            *byte = u8::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        mac
    }

    /// Runs `ip ARGS` in the bed's namespace (to change its routes, links, neighbours).
    pub fn ip(&self, args: &[&str]) {
        self.ns.ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Runs the load balancer once on `frame` as if it arrived on the bed's NIC.
    /// Returns the XDP action and the frame as the program left it.
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_program(program_names::LB, frame, 1).0
    }

    /// Runs program `name` `repeat` times on `frame`; also returns the mean ns per run.
    pub fn run_program(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> ((u32, Vec<u8>), f64) {
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        let mut data = frame.to_vec();
        if data.len() < 14 {
            data.resize(14, 0);
        }
        let mut out = vec![0u8; data.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let ctx: [u32; 6] = [0, data.len() as u32, 0, self.ifindex, 0, 0];
        let ctx_bytes: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let program = self.dataplane.program(name).expect("program");
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&data),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_bytes),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        out.truncate(result.data_size_out as usize);
        let ns = result.duration.as_nanos() as f64;
        ((result.return_value, out), ns)
    }

    /// The program's map `name`, opened by id (the bed's maps are not pinned): for writes the
    /// agent's own code never makes, which a test needs to stage a state.
    pub fn program_map(&mut self, name: &str) -> MapData {
        let program = self.dataplane.program(program_names::LB).expect("program");
        let ids = program
            .info()
            .expect("program info")
            .map_ids()
            .expect("map ids")
            .expect("the kernel lists the program's maps");
        ids.into_iter()
            .filter_map(|id| MapData::from_id(id).ok())
            .find(|map| {
                map.info()
                    .ok()
                    .and_then(|info| info.name_as_str().map(|n| n == name))
                    .unwrap_or(false)
            })
            .unwrap_or_else(|| panic!("the program uses no map {name}"))
    }

    /// Changes the data-plane settings as the agent wrote them: for timeouts shorter than a
    /// config accepts (a config's least is a second, or ten for UDP).
    pub fn change_settings(&mut self, change: impl FnOnce(&mut Settings)) {
        let map = Map::from_map_data(self.program_map(map_names::SETTINGS)).expect("SETTINGS");
        let mut settings: Array<_, Settings> = Array::try_from(map).expect("SETTINGS array");
        let mut value = settings.get(&0, 0).expect("settings");
        change(&mut value);
        settings.set(0, value, 0).expect("write settings");
    }

    /// The backend the program should pick for a new flow from `key`, predicted from the
    /// agent's Maglev table in the maps and `lb_common`'s hash.
    pub fn predict_backend(
        &self,
        group: &str,
        key: &lb_common::FlowKey,
        sticky: bool,
    ) -> SocketAddr {
        let group_id = self.state.group_id(group).expect("group");
        let info = self.dataplane.group(group_id).expect("group entry");
        // The seed the data plane hashes with (random unless the config sets one).
        let seed = self.dataplane.settings().expect("settings").hash_seed;
        let hash = if sticky {
            lb_common::hash::source_hash(&key.src, key.family, seed)
        } else {
            lb_common::hash::flow_hash(key, seed)
        };
        let id = self
            .dataplane
            .maglev_entry(
                group_id,
                info.active_slot,
                hash % self.dataplane.maglev_size(),
            )
            .expect("maglev entry");
        self.state
            .targets(&self.dataplane, Some(group))
            .expect("targets")
            .into_iter()
            .find(|t| self.state.backend_id(group, t.address) == Some(id))
            .map(|t| t.address)
            .unwrap_or_else(|| panic!("backend id {id} is no target of {group}"))
    }
}

impl Default for TestBed {
    fn default() -> Self {
        Self::new()
    }
}

/// The data plane's flow key of a crafted frame (what the hash sees).
pub fn flow_key(frame: &packet::Frame) -> lb_common::FlowKey {
    let (src, family) = lb_agent::state::addr_of(frame.src);
    let (dst, _) = lb_agent::state::addr_of(frame.dst);
    lb_common::FlowKey {
        src,
        dst,
        sport: frame.sport.to_be(),
        dport: frame.dport.to_be(),
        proto: frame.proto,
        family,
        _pad: [0; 2],
    }
}
