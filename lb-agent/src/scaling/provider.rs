//! Instance providers: what runs an instance an auto scaling group asks for. `local` runs it
//! on this machine (a process tree in its own network namespace and cgroup); `exec` hands it
//! to a hook program the user writes (containers, VMs, a cluster scheduler).
//!
//! A provider is blocking code (it runs commands, waits for processes): the agent calls it
//! from `tokio::task::spawn_blocking`. Its answer to a launch is an `InstanceRecord`, which the
//! caller keeps (in the state file) and gives back to `adopt` after an agent restart, so a
//! restarted agent takes over the instances still running instead of launching new ones.

pub mod command;
pub mod exec;
pub mod local;

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// What one instance is, resolved from its launch template version and its group.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    /// Its id, AWS style (`i-` and 17 hex digits); names its namespace, cgroup and files.
    pub instance_id: String,
    /// The auto scaling group it belongs to.
    pub group: String,
    /// The launch template it was launched from.
    pub template: String,
    /// The template version it was launched from (resolved at launch: `$Default`/`$Latest`
    /// never reach a provider).
    pub template_version: u32,
    /// What to run: the template's "image".
    pub image: Image,
    /// A shell script run before the command (AWS's user data), if any.
    pub user_data: Option<String>,
    /// Extra environment for the user data and the command.
    pub environment: BTreeMap<String, String>,
    /// Its CPU and memory limits.
    pub instance_type: InstanceType,
    /// The ports it serves.
    pub ports: Vec<u16>,
    /// Its address, chosen by the caller from the group's subnet.
    pub address: IpAddr,
    /// The subnet's router address, which the instance routes through. AWS reserves the
    /// subnet's network address + 1 for it ("Subnet CIDR blocks", Amazon VPC user guide).
    pub gateway: IpAddr,
    /// Its security group's inbound rules: what is not allowed is dropped.
    pub inbound_rules: Vec<InboundRule>,
    /// How long the command may take to stop after SIGTERM before it is killed.
    pub stop_timeout: Duration,
}

/// What to run: a command with its arguments, in a working directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The program and its arguments; the program is looked up in `PATH`.
    pub command: Vec<String>,
    /// Where it runs; the instance's own directory when `None`.
    pub working_directory: Option<PathBuf>,
}

/// An instance type: named CPU and memory limits.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceType {
    /// Its name (`small`).
    pub name: String,
    /// CPU as a fraction of one core (0.5 = half a core).
    pub cpu: f64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
}

/// The protocol an inbound rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleProtocol {
    /// TCP, on the rule's ports.
    Tcp,
    /// UDP, on the rule's ports.
    Udp,
    /// Every protocol and port (AWS's IpProtocol `-1`).
    All,
}

/// One security-group inbound rule: traffic of `protocol` to ports `from_port..=to_port`
/// from any of `sources` is allowed. Like AWS's rules, rules only allow; the rest is dropped
/// ("Security group rules", Amazon VPC user guide).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRule {
    /// The protocol allowed.
    pub protocol: RuleProtocol,
    /// First port allowed (ignored for `All`).
    pub from_port: u16,
    /// Last port allowed (ignored for `All`).
    pub to_port: u16,
    /// Source CIDRs allowed.
    pub sources: Vec<Cidr>,
}

/// An address block, `198.18.0.0/15` or `fd00:198:18::/48`: the config's.
pub use crate::config::Cidr;

/// What a provider keeps about a launched instance: enough for another agent to find it
/// again (`adopt`). Persisted by the caller, hence serde.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Its id.
    pub instance_id: String,
    /// Its group.
    pub group: String,
    /// Its launch template.
    pub template: String,
    /// Its launch template version.
    pub template_version: u32,
    /// Its address.
    pub address: IpAddr,
    /// When it was launched, seconds since the Unix epoch.
    pub launched_at: u64,
    /// The provider's own part.
    pub detail: ProviderDetail,
}

/// The provider-specific part of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case")]
pub enum ProviderDetail {
    /// Run by the `local` provider.
    Local(local::LocalDetail),
    /// Run by an `exec` hook; `data` is the hook's own, given back to it unchanged.
    Exec {
        /// Whatever the hook answered to `launch` as `data` (null if nothing).
        data: serde_json::Value,
    },
}

/// What `describe` reports about one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceStatus {
    /// Its id.
    pub instance_id: String,
    /// Whether its process (or the hook's instance) runs: AWS's `EC2` health check.
    pub running: bool,
    /// Its main process, where the provider knows one.
    pub pid: Option<u32>,
    /// Its address.
    pub address: IpAddr,
    /// CPU used since the previous `describe`, in percent of its type's CPU (`None` before
    /// a second sample, or when it does not run).
    pub cpu_utilization: Option<f64>,
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The local provider failed (a system call, a command, the cgroups).
    #[error(transparent)]
    Local(#[from] local::LocalError),
    /// The exec provider's hook failed or answered badly.
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    /// The caller named an instance this provider does not know.
    #[error("instance {0} is not known to this provider (launch or adopt it first)")]
    UnknownInstance(String),
    /// The spec cannot be run (caller's side).
    #[error("instance {instance}: {reason}")]
    InvalidSpec {
        /// The instance.
        instance: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Runs instances. Every method blocks: call it from `spawn_blocking`.
pub trait Provider: Send + Sync {
    /// Starts the instance `spec` describes; its record, to keep for `adopt`.
    fn launch(&self, spec: &InstanceSpec) -> Result<InstanceRecord, ProviderError>;

    /// Stops instance `instance_id`: SIGTERM, up to `stop_timeout` to exit, then SIGKILL
    /// (the rule of ECS's container `stopTimeout` and `docker stop`); then removes what was
    /// made for it. Stopping one already gone only cleans up.
    fn terminate(&self, instance_id: &str, stop_timeout: Duration) -> Result<(), ProviderError>;

    /// The state of every instance this provider launched or adopted and has not terminated.
    fn describe(&self) -> Result<Vec<InstanceStatus>, ProviderError>;

    /// Takes over instances launched by an earlier agent from their records; their state
    /// (those no longer running are kept too, reported as not running, so the group replaces
    /// them and `terminate` cleans up after them).
    fn adopt(&self, records: &[InstanceRecord]) -> Result<Vec<InstanceStatus>, ProviderError>;
}

/// The environment every provider gives an instance's user data and command: the template's
/// environment, then what the instance is (`INSTANCE_ID`, `INSTANCE_ADDRESS`, `GROUP`,
/// `TEMPLATE_VERSION`), which win, as EC2's instance metadata cannot be overridden by the
/// instance's own settings.
pub fn instance_environment(spec: &InstanceSpec) -> BTreeMap<String, String> {
    let mut env = spec.environment.clone();
    env.insert("INSTANCE_ID".into(), spec.instance_id.clone());
    env.insert("INSTANCE_ADDRESS".into(), spec.address.to_string());
    env.insert("GROUP".into(), spec.group.clone());
    env.insert("TEMPLATE_VERSION".into(), spec.template_version.to_string());
    env
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// EC2's limit on user data, in bytes.
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// The check every provider makes before a launch: an id usable in names and paths, a
/// command, a positive CPU and memory.
pub(crate) fn check_spec(spec: &InstanceSpec) -> Result<(), ProviderError> {
    let invalid = |reason: &str| ProviderError::InvalidSpec {
        instance: spec.instance_id.clone(),
        reason: reason.to_owned(),
    };
    let id = &spec.instance_id;
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            "the instance id must be 1-64 letters, digits, '-' or '_'",
        ));
    }
    if spec.image.command.is_empty() {
        return Err(invalid("the image has no command"));
    }
    if !(spec.instance_type.cpu.is_finite() && spec.instance_type.cpu > 0.0) {
        return Err(invalid("the instance type's cpu must be above 0"));
    }
    if spec.instance_type.memory_bytes == 0 {
        return Err(invalid("the instance type's memory must be above 0"));
    }
    // "User data is limited to 16 KB, in raw form, before it is base64-encoded" (EC2 user
    // guide, "Run commands when you launch an EC2 instance with user data input").
    if spec
        .user_data
        .as_ref()
        .is_some_and(|u| u.len() > USER_DATA_LIMIT)
    {
        return Err(invalid("its user data is larger than 16 KB (EC2's limit)"));
    }
    if let Some(rule) = spec.inbound_rules.iter().find(|r| r.from_port > r.to_port) {
        return Err(ProviderError::InvalidSpec {
            instance: spec.instance_id.clone(),
            reason: format!(
                "an inbound rule's from_port {} is above its to_port {}",
                rule.from_port, rule.to_port
            ),
        });
    }
    if spec.address.is_ipv4() != spec.gateway.is_ipv4() {
        return Err(invalid(
            "the address and the gateway are of different families",
        ));
    }
    Ok(())
}

/// A valid spec for the providers' unit tests (each changes what it tests).
#[cfg(test)]
fn test_spec() -> InstanceSpec {
    InstanceSpec {
        instance_id: "i-0123456789abcdef0".into(),
        group: "web-asg".into(),
        template: "web".into(),
        template_version: 1,
        image: Image {
            command: vec!["true".into()],
            working_directory: None,
        },
        user_data: Some("x".repeat(USER_DATA_LIMIT)),
        environment: BTreeMap::new(),
        instance_type: InstanceType {
            name: "small".into(),
            cpu: 0.5,
            memory_bytes: 1 << 20,
        },
        ports: vec![8080],
        address: "198.18.8.10".parse().unwrap(),
        gateway: "198.18.8.1".parse().unwrap(),
        inbound_rules: vec![],
        stop_timeout: Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        test_spec()
    }

    #[test]
    fn user_data_up_to_16_kb_is_accepted_and_one_byte_more_refused() {
        assert!(check_spec(&spec()).is_ok());
        let mut big = spec();
        big.user_data = Some("x".repeat(USER_DATA_LIMIT + 1));
        let err = check_spec(&big).unwrap_err();
        assert!(err.to_string().contains("16 KB"), "{err}");
    }

    #[test]
    fn ids_that_cannot_name_a_namespace_or_path_are_refused() {
        for id in ["", "i-../../etc", "i 1", &"i".repeat(65)] {
            let mut bad = spec();
            bad.instance_id = id.to_owned();
            assert!(check_spec(&bad).is_err(), "{id:?}");
        }
    }

    #[test]
    fn a_rule_whose_port_range_is_backwards_is_refused() {
        let mut bad = spec();
        bad.inbound_rules.push(InboundRule {
            protocol: RuleProtocol::Tcp,
            from_port: 9000,
            to_port: 8000,
            sources: vec![],
        });
        assert!(check_spec(&bad).is_err());
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = InstanceRecord {
            instance_id: "i-0123456789abcdef0".into(),
            group: "web".into(),
            template: "web".into(),
            template_version: 2,
            address: "198.18.8.10".parse().unwrap(),
            launched_at: 1,
            detail: ProviderDetail::Exec {
                data: serde_json::json!({"container": "c1"}),
            },
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains(r#""provider":"exec""#), "{text}");
        assert_eq!(
            serde_json::from_str::<InstanceRecord>(&text).unwrap(),
            record
        );
    }
}
