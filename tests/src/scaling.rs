//! What the instance-provider tests share: fresh instance ids, the real python3, and an
//! instance spec serving one TCP port to given sources.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use lb_agent::scaling::provider::{Image, InboundRule, InstanceSpec, InstanceType, RuleProtocol};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh id per call: `i-` and 17 hex digits, from this process and a counter.
pub fn instance_id() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("i-{:09x}{:08x}", std::process::id(), n)
}

/// The real python3 (the machine's `python3` may be a shim needing more environment).
pub fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout)
        .expect("a path")
        .trim()
        .to_owned()
}

/// Instance `id` of group `web-asg` (template `web`, the given version) at `address` behind
/// `gateway`, running `command` as a `small` type (half a core, 256 MiB) with a 5 s stop
/// timeout; it serves `port` over TCP to `sources` (none: no inbound rule).
pub fn spec(
    id: &str,
    template_version: u32,
    command: Vec<String>,
    (address, gateway): (IpAddr, IpAddr),
    port: u16,
    sources: &[&str],
) -> InstanceSpec {
    let inbound_rules = if sources.is_empty() {
        Vec::new()
    } else {
        vec![InboundRule {
            protocol: RuleProtocol::Tcp,
            from_port: port,
            to_port: port,
            sources: sources
                .iter()
                .map(|s| s.parse().expect("a network"))
                .collect(),
        }]
    };
    InstanceSpec {
        instance_id: id.to_owned(),
        group: "web-asg".into(),
        template: "web".into(),
        template_version,
        image: Image {
            command,
            working_directory: None,
        },
        user_data: None,
        environment: BTreeMap::new(),
        instance_type: InstanceType {
            name: "small".into(),
            cpu: 0.5,
            memory_bytes: 256 << 20,
        },
        ports: vec![port],
        address,
        gateway,
        inbound_rules,
        stop_timeout: Duration::from_secs(5),
    }
}
