//! An instance's network: its own named namespace (`lbi-<id>`), a veth pair to the load
//! balancer's namespace (the LB end holds the subnet's router address and a host route to the
//! instance; the instance end, `eth0`, holds the instance's address and a default route via
//! the router), and its security group's inbound rules, enforced inside the namespace with
//! nftables, or iptables where `nft` is not installed. Outbound traffic is left open, as a
//! new AWS security group's default outbound rule allows all of it.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use super::LocalError;
use crate::scaling::provider::{
    InboundRule, RuleProtocol,
    command::{self, Output},
};

/// The instance's namespace for instance `id`.
pub fn namespace_name(id: &str) -> String {
    format!("lbi-{id}")
}

/// The LB end of instance `id`'s veth: interface names are at most 15 bytes and ids longer,
/// so `lbi` and 11 hex digits of a hash of the id (FNV-1a, stable across agents).
pub fn lb_interface_name(id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("lbi{:011x}", hash & 0xfff_ffff_ffff)
}

/// Where one instance's network is made and how long each command may take.
#[derive(Debug, Clone)]
pub struct Network<'a> {
    /// The instance's namespace.
    pub namespace: &'a str,
    /// The load balancer's namespace; the caller's when `None`.
    pub lb_namespace: Option<&'a str>,
    /// The LB end of the veth.
    pub lb_interface: &'a str,
    /// Time allowed per command.
    pub timeout: Duration,
}

impl Network<'_> {
    /// Makes the namespace and the veth pair, addresses and routes: `address` for the
    /// instance, `gateway` (the subnet's router) on the LB end.
    pub fn create(&self, address: IpAddr, gateway: IpAddr) -> Result<(), LocalError> {
        let ns = self.namespace;
        let host = |a: IpAddr| format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 });
        // IPv6 addresses skip duplicate address detection: the link has only the two ends,
        // and an address in "tentative" state would refuse the first connections.
        let nodad: &[&str] = if address.is_ipv6() { &["nodad"] } else { &[] };
        // `default` alone means IPv4's: the family is named on every route.
        let family = if address.is_ipv4() { "-4" } else { "-6" };
        self.ip(None, &["netns", "add", ns])?;
        self.ip(Some(ns), &["link", "set", "lo", "up"])?;
        self.ip(
            self.lb_namespace,
            &[
                "link",
                "add",
                self.lb_interface,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ],
        )?;
        let gateway_host = host(gateway);
        let lb_addr: Vec<&str> = ["addr", "add", &gateway_host, "dev", self.lb_interface]
            .into_iter()
            .chain(nodad.iter().copied())
            .collect();
        self.ip(self.lb_namespace, &lb_addr)?;
        self.ip(self.lb_namespace, &["link", "set", self.lb_interface, "up"])?;
        let address_host = host(address);
        let instance_addr: Vec<&str> = ["addr", "add", &address_host, "dev", "eth0"]
            .into_iter()
            .chain(nodad.iter().copied())
            .collect();
        self.ip(Some(ns), &instance_addr)?;
        self.ip(Some(ns), &["link", "set", "eth0", "up"])?;
        let gateway = gateway.to_string();
        self.ip(
            Some(ns),
            &[
                family, "route", "add", &gateway, "dev", "eth0", "scope", "link",
            ],
        )?;
        self.ip(
            Some(ns),
            &[
                family, "route", "add", "default", "via", &gateway, "dev", "eth0",
            ],
        )?;
        self.ip(
            self.lb_namespace,
            &[
                family,
                "route",
                "add",
                &address_host,
                "dev",
                self.lb_interface,
            ],
        )?;
        Ok(())
    }

    /// Applies `rules` inside the namespace with `firewall`.
    pub fn apply_rules(&self, firewall: Firewall, rules: &[InboundRule]) -> Result<(), LocalError> {
        match firewall {
            Firewall::Nft => {
                self.exec_inside(&["nft", "-f", "-"], &nft_ruleset(rules))?;
            }
            Firewall::Iptables => {
                let (v4, v6) = iptables_rulesets(rules);
                self.exec_inside(&["iptables-restore"], &v4)?;
                self.exec_inside(&["ip6tables-restore"], &v6)?;
            }
        }
        Ok(())
    }

    /// Kills whatever still runs in the namespace (5 s at most), then removes the veth and
    /// the namespace; what is already gone is fine.
    pub fn delete(&self) -> Result<(), LocalError> {
        let ns = self.namespace;
        if Path::new("/run/netns").join(ns).exists() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let pids: Vec<i32> = self
                    .ip(None, &["netns", "pids", ns])?
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                if pids.is_empty() || Instant::now() >= deadline {
                    break;
                }
                for pid in pids {
                    // SAFETY: kill(2) has no memory effects; `pid` runs in the namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Deleting either end removes the pair; the namespace's end goes with it.
        let _ = self.ip(self.lb_namespace, &["link", "del", self.lb_interface]);
        if Path::new("/run/netns").join(ns).exists() {
            self.ip(None, &["netns", "del", ns])?;
        }
        Ok(())
    }

    /// `ip [-n NS] ARGS`; its stdout, or an error with its stderr.
    fn ip(&self, ns: Option<&str>, args: &[&str]) -> Result<String, LocalError> {
        let mut cmd = Command::new("ip");
        if let Some(ns) = ns {
            cmd.args(["-n", ns]);
        }
        cmd.args(args);
        checked(cmd, "", self.timeout)
    }

    /// `ip netns exec NS ARGS` with `input` on its stdin.
    fn exec_inside(&self, args: &[&str], input: &str) -> Result<String, LocalError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.namespace]).args(args);
        checked(cmd, input, self.timeout)
    }
}

/// Runs `cmd` (`timeout` at most); its stdout, or an error naming it with its stderr.
fn checked(cmd: Command, input: &str, timeout: Duration) -> Result<String, LocalError> {
    let line = command::describe(&cmd);
    let Output {
        status,
        stdout,
        stderr,
    } = command::run(cmd, input.as_bytes(), timeout)?;
    if !status.success() {
        return Err(LocalError::Command {
            command: line,
            stderr: stderr.trim().to_owned(),
        });
    }
    Ok(stdout)
}

/// The firewall that enforces inbound rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// nftables (`nft`).
    Nft,
    /// iptables and ip6tables (`iptables-restore`, `ip6tables-restore`).
    Iptables,
}

impl Firewall {
    /// nftables if `nft` is on `PATH`, else iptables if `iptables-restore` is.
    pub fn detect() -> Result<Firewall, LocalError> {
        if on_path("nft") {
            Ok(Firewall::Nft)
        } else if on_path("iptables-restore") {
            Ok(Firewall::Iptables)
        } else {
            Err(LocalError::NoFirewall)
        }
    }
}

/// Whether `program` is an executable in a `PATH` directory (or `/usr/sbin`, `/sbin`, where
/// both live but which a minimal `PATH` may lack).
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .any(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The nftables ruleset for `rules`: a security group is stateful and allow-only ("Security
/// group rules", Amazon VPC user guide), so replies to the instance's own connections, the
/// loopback and IPv6 neighbour discovery (which keeps the link working) pass, each rule
/// allows its sources to its ports, and other inbound traffic is dropped.
pub fn nft_ruleset(rules: &[InboundRule]) -> String {
    let mut out = String::from(
        "table inet lb_instance {\n\tchain inbound {\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiif \"lo\" accept\n\
         \t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept\n",
    );
    for rule in rules {
        for source in &rule.sources {
            let family = if source.network.is_ipv4() {
                "ip"
            } else {
                "ip6"
            };
            let _ = write!(out, "\t\t{family} saddr {source} ");
            if let Some(proto) = transport(rule) {
                let _ = write!(out, "{proto} dport {} ", port_range(rule, "-"));
            }
            out.push_str("accept\n");
        }
    }
    out.push_str("\t}\n}\n");
    out
}

/// The iptables-restore and ip6tables-restore inputs for `rules`, with the same meaning as
/// `nft_ruleset`.
pub fn iptables_rulesets(rules: &[InboundRule]) -> (String, String) {
    let head = "*filter\n:INPUT DROP [0:0]\n\
                -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
                -A INPUT -i lo -j ACCEPT\n";
    let mut v4 = head.to_owned();
    let mut v6 = head.to_owned();
    for t in [135, 136, 134] {
        let _ = writeln!(v6, "-A INPUT -p ipv6-icmp --icmpv6-type {t} -j ACCEPT");
    }
    for rule in rules {
        for source in &rule.sources {
            let out = if source.network.is_ipv4() {
                &mut v4
            } else {
                &mut v6
            };
            let _ = write!(out, "-A INPUT -s {source} ");
            if let Some(proto) = transport(rule) {
                let _ = write!(out, "-p {proto} --dport {} ", port_range(rule, ":"));
            }
            out.push_str("-j ACCEPT\n");
        }
    }
    v4.push_str("COMMIT\n");
    v6.push_str("COMMIT\n");
    (v4, v6)
}

/// The rule's transport protocol, as both tools name it; none: every protocol (no port).
fn transport(rule: &InboundRule) -> Option<&'static str> {
    match rule.protocol {
        RuleProtocol::All => None,
        RuleProtocol::Tcp => Some("tcp"),
        RuleProtocol::Udp => Some("udp"),
    }
}

/// `from` alone, or `from<sep>to`.
fn port_range(rule: &InboundRule, sep: &str) -> String {
    if rule.from_port == rule.to_port {
        rule.from_port.to_string()
    } else {
        format!("{}{sep}{}", rule.from_port, rule.to_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web_rule() -> InboundRule {
        InboundRule {
            protocol: RuleProtocol::Tcp,
            from_port: 8080,
            to_port: 8080,
            sources: vec!["198.18.0.0/15".parse().unwrap()],
        }
    }

    #[test]
    fn interface_names_fit_the_kernels_limit_and_differ_per_instance() {
        let a = lb_interface_name("i-0123456789abcdef0");
        let b = lb_interface_name("i-0123456789abcdef1");
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, lb_interface_name("i-0123456789abcdef0"));
    }

    #[test]
    fn nft_allows_listed_sources_and_ports_and_drops_the_rest() {
        let mut udp = web_rule();
        udp.protocol = RuleProtocol::Udp;
        udp.from_port = 5000;
        udp.to_port = 5010;
        udp.sources = vec!["fd00:198:18::/48".parse().unwrap()];
        let set = nft_ruleset(&[web_rule(), udp]);
        assert!(set.contains("policy drop;"), "{set}");
        assert!(set.contains("ct state established,related accept"), "{set}");
        assert!(
            set.contains("ip saddr 198.18.0.0/15 tcp dport 8080 accept"),
            "{set}"
        );
        assert!(
            set.contains("ip6 saddr fd00:198:18::/48 udp dport 5000-5010 accept"),
            "{set}"
        );
    }

    #[test]
    fn an_all_traffic_rule_names_no_port() {
        let mut all = web_rule();
        all.protocol = RuleProtocol::All;
        let set = nft_ruleset(&[all]);
        assert!(set.contains("ip saddr 198.18.0.0/15 accept"), "{set}");
    }

    #[test]
    fn iptables_splits_rules_by_family() {
        let (v4, v6) = iptables_rulesets(&[web_rule()]);
        assert!(v4.contains(":INPUT DROP"), "{v4}");
        assert!(
            v4.contains("-A INPUT -s 198.18.0.0/15 -p tcp --dport 8080 -j ACCEPT"),
            "{v4}"
        );
        assert!(!v6.contains("8080"), "{v6}");
        assert!(v6.contains("--icmpv6-type 135"), "{v6}");
    }
}
