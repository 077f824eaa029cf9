//! `cargo xtask bench l4`: throughput through the VIP beside the direct path, and the XDP
//! program's cost per packet beside a trivial XDP_TX program, all from one run.

use xtask::{
    agent::LabAgent,
    lab::{self, Lab, LabSpec, VIP4},
};

use crate::{cargo, demo, workspace_root};

pub fn l4() -> anyhow::Result<()> {
    let agent_bin = demo::build_agent()?;
    {
        let lab = Lab::up(LabSpec {
            name: Lab::unique_name("bench"),
            backends: 3,
            router: None,
        })?;
        lab::start_backend_servers(&lab)?;
        // The nftables peer below is the kernel routing what XDP passes up: the agent must let
        // it (`kernel_forwarding`), or its own nftables table drops that in the forward hook.
        let demo_config = std::fs::read_to_string(workspace_root().join(demo::DEMO_CONFIG))?;
        anyhow::ensure!(
            demo_config.contains("[agent]\n"),
            "{} has no [agent] table",
            demo::DEMO_CONFIG
        );
        let config = lab.log_dir().join("bench.toml");
        std::fs::write(
            &config,
            demo_config.replacen("[agent]\n", "[agent]\nkernel_forwarding = true\n", 1),
        )?;
        let _agent = LabAgent::start(&lab, &agent_bin, &config)?;
        let backend = lab.backends()[0].v4.to_string();
        // The kernel's own full NAT on the same node as a peer: nftables DNAT + masquerade for
        // VIP:5202 -> b1:5201. Port 5202 has no listener, so XDP passes it to the stack: same
        // hops as the XDP path, the work done by netfilter instead.
        let rules = format!(
            "table ip lbpeer {{\n\
             chain pre {{ type nat hook prerouting priority dstnat; ip daddr {VIP4} tcp dport 5202 dnat to {backend}:5201; }}\n\
             chain post {{ type nat hook postrouting priority srcnat; ip daddr {backend} tcp dport 5201 masquerade; }}\n\
             }}\n"
        );
        let file = std::env::temp_dir().join(format!("{}-nft.conf", lab.name()));
        std::fs::write(&file, rules)?;
        lab.run(lab.lb(), &["nft", "-f", file.to_str().unwrap_or_default()])?;
        lab.run(lab.lb(), &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let vip = VIP4.to_string();
        // Alternate so drift on this noisy machine hits every path alike.
        let mut via_vip = Vec::new();
        let mut via_nft = Vec::new();
        let mut direct = Vec::new();
        for _ in 0..2 {
            via_vip.push(demo::iperf3(&lab, &vip, &["-t", "4"])?.0);
            via_nft.push(demo::iperf3(&lab, &vip, &["-t", "4", "-p", "5202"])?.0);
            direct.push(demo::iperf3(&lab, &backend, &["-t", "4"])?.0);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (v, n, d) = (mean(&via_vip), mean(&via_nft), mean(&direct));
        println!("iperf3 TCP, mean of 2 × 4 s runs each, same lab, same run:");
        println!("  client -> VIP, XDP full NAT        {v:8.2} Gbit/s");
        println!("  client -> VIP, nftables DNAT+SNAT  {n:8.2} Gbit/s");
        println!("  client -> backend directly         {d:8.2} Gbit/s");
        println!("  ratio XDP / nftables               {:8.2}", v / n);
        println!("  ratio XDP / direct                 {:8.2}", v / d);
    }
    // Per-packet cost: BPF_PROG_TEST_RUN with `repeat`, in a binary of the tests crate (it
    // links the agent's data-plane code, which xtask must not: xtask builds before bpf-linker).
    cargo(&[
        "run",
        "--release",
        "-q",
        "-p",
        "tests",
        "--bin",
        "prog-bench",
    ])
}
