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
        })?;
        lab::start_backend_servers(&lab)?;
        let _agent = LabAgent::start(&lab, &agent_bin, &workspace_root().join(demo::DEMO_CONFIG))?;
        let backend = lab.backends()[0].v4.to_string();
        // Alternate so drift on this noisy machine hits both paths alike.
        let mut via_vip = Vec::new();
        let mut direct = Vec::new();
        for _ in 0..2 {
            via_vip.push(demo::iperf3(&lab, &VIP4.to_string(), &["-t", "4"])?.0);
            direct.push(demo::iperf3(&lab, &backend, &["-t", "4"])?.0);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (v, d) = (mean(&via_vip), mean(&direct));
        println!("iperf3 TCP, mean of 2 × 4 s runs each, same lab, same run:");
        println!("  client -> VIP (XDP full NAT)  {v:8.2} Gbit/s");
        println!("  client -> backend directly     {d:8.2} Gbit/s");
        println!("  ratio VIP / direct            {:8.2}", v / d);
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
