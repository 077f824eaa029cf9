//! What an instance is: `[instance_types]` (named CPU and memory limits),
//! `[[launch_template]]` (named, versioned, immutable definitions) and
//! `[[launch_configuration]]` (the legacy form: one unversioned definition).
//!
//! An instance is a process tree on this machine (or on whatever an `exec` provider drives),
//! not a virtual machine: the "image" is a directory and a command. Fields of EC2's launch
//! templates that mean nothing here are refused by name with what to write instead, rather
//! than ignored (`refused_field`).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

use super::{cidr::Cidr, duration};

/// A named instance size: the limits of each instance's cgroup.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    /// CPU in cores (0.5: half a core), enforced as a CFS quota.
    pub cpu: f64,
    /// Memory in bytes, written like `"256MiB"` or `"1GiB"`.
    #[serde(deserialize_with = "deserialize_memory")]
    pub memory: u64,
}

/// `[[launch_template]]`: a name and its versions, 1..n in the order written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplate {
    pub name: String,
    /// The version `$Default` names (the first until set, like EC2).
    pub default_version: Option<u32>,
    /// Version 1 first; a change is a new version (a version is never edited).
    #[serde(rename = "version", default)]
    pub versions: Vec<InstanceDefinition>,
}

impl LaunchTemplate {
    /// The version `$Default` resolves to.
    pub fn default_version(&self) -> u32 {
        self.default_version.unwrap_or(1)
    }

    /// The version `$Latest` resolves to.
    pub fn latest_version(&self) -> u32 {
        u32::try_from(self.versions.len()).unwrap_or(u32::MAX)
    }

    /// Version `number` (from 1).
    pub fn version(&self, number: u32) -> Option<&InstanceDefinition> {
        let index = usize::try_from(number).ok()?.checked_sub(1)?;
        self.versions.get(index)
    }
}

/// `[[launch_configuration]]`: one unversioned, immutable definition (EC2's legacy form).
#[derive(Debug, Clone, Deserialize)]
pub struct LaunchConfiguration {
    pub name: String,
    #[serde(flatten)]
    pub definition: InstanceDefinition,
}

/// What an instance is: one launch template version, or a launch configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InstanceDefinition {
    /// What to run, with its arguments (the instance's main process).
    #[serde(default)]
    pub command: Vec<String>,
    /// The instance's working directory, its "image" (default `/`).
    pub directory: Option<PathBuf>,
    /// A shell script run before `command`, with `INSTANCE_ID`, `INSTANCE_ADDRESS`, `GROUP`
    /// and `TEMPLATE_VERSION` in its environment; its output is kept.
    pub user_data: Option<String>,
    /// A name from `[instance_types]`.
    pub instance_type: Option<String>,
    /// Extra environment of `user_data` and `command`.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// The ports the instance serves (registered as targets: the first, unless the target
    /// group's port is among them).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Where addresses come from when the group names no subnet.
    pub subnet: Option<Cidr>,
    /// The instance's "security group": the only inbound traffic it accepts. None written: its
    /// `ports` from anywhere.
    pub inbound_rules: Option<Vec<InboundRule>>,
    /// How long a stopping instance gets between SIGTERM and SIGKILL (default 30 s).
    #[serde(
        default = "default_stop_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub stop_timeout: Duration,
    /// Fields serde does not know: EC2's are refused by name (`refused_field`), others as
    /// unknown. (Collected rather than denied, so the message can say why.)
    #[serde(flatten)]
    pub other: BTreeMap<String, toml::Value>,
}

/// One inbound rule: these ports from these sources.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundRule {
    /// Ports allowed (TCP and UDP).
    pub ports: Vec<u16>,
    /// Sources allowed; none written: any.
    #[serde(default)]
    pub sources: Vec<Cidr>,
}

/// The fields an instance definition takes, for the message about one it does not.
pub const DEFINITION_FIELDS: &[&str] = &[
    "command",
    "directory",
    "user_data",
    "instance_type",
    "environment",
    "ports",
    "subnet",
    "inbound_rules",
    "stop_timeout",
];

/// Why an EC2 launch-template field is refused here, and what to write instead.
pub fn refused_field(field: &str) -> Option<&'static str> {
    Some(match field {
        "image_id" => {
            "an instance here is a process tree, not an AMI: write `directory` and `command`"
        }
        "key_name" => "instances have no SSH key pairs here: they are processes on this machine",
        "security_group_ids" | "security_groups" => {
            "write `inbound_rules` (ports and source networks): they are the instance's security group"
        }
        "network_interfaces" | "subnet_id" => "write `subnet` (a network like \"198.18.8.0/24\")",
        "iam_instance_profile" => "there is no instance metadata service to hand roles out here",
        "block_device_mappings" | "ebs_optimized" => {
            "instances use the machine's file system: there are no volumes to attach"
        }
        "placement" | "capacity_reservation_specification" | "instance_market_options" => {
            "everything runs on this machine: there is no placement, reservation or spot market"
        }
        "cpu_options" | "credit_specification" | "elastic_gpu_specifications" => {
            "write `instance_type`, a name from [instance_types] with `cpu` and `memory`"
        }
        "user_data_base64" => "write `user_data` as plain text",
        "kernel_id" | "ram_disk_id" | "hibernation_options" | "enclave_options" => {
            "instances share this machine's kernel"
        }
        "monitoring" => "CPU utilisation is always measured (from the instance's cgroup)",
        "metadata_options" | "private_dns_name_options" | "maintenance_options" => {
            "there is no instance metadata service, DNS or maintenance here"
        }
        "license_specifications" | "tag_specifications" | "disable_api_termination" => {
            "not meaningful on one machine"
        }
        "instance_initiated_shutdown_behavior" => {
            "an instance whose command exits has stopped; its group replaces it"
        }
        _ => return None,
    })
}

impl super::Config {
    /// What `new` would change of this config's launch templates and configurations that EC2
    /// never lets change, as (dotted field of `new`, message): a version of a template is
    /// immutable (a change is a new version; EC2's `CreateLaunchTemplateVersion`), and so is
    /// a launch configuration (EC2 has no `UpdateLaunchConfiguration`). Removing trailing
    /// versions or a whole template is fine; the default version must exist, which the
    /// config's own checks see. Instances record the version they were launched from, so an
    /// edited version would make that record lie.
    pub fn immutable_changes(&self, new: &super::Config) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (i, t) in new.launch_templates.iter().enumerate() {
            let Some(old) = self.launch_templates.iter().find(|o| o.name == t.name) else {
                continue;
            };
            for (k, (was, is)) in old.versions.iter().zip(&t.versions).enumerate() {
                if was != is {
                    problems.push((
                        format!("launch_template[{i}].version[{k}]"),
                        format!(
                            "version {} of launch template `{}` changed: versions are immutable; \
                             add a new `[[launch_template.version]]` after the last (and set \
                             `default_version` to use it by default)",
                            k + 1,
                            t.name
                        ),
                    ));
                }
            }
        }
        for (i, c) in new.launch_configurations.iter().enumerate() {
            if let Some(old) = self.launch_configurations.iter().find(|o| o.name == c.name)
                && old.definition != c.definition
            {
                problems.push((
                    format!("launch_configuration[{i}]"),
                    format!(
                        "launch configuration `{}` changed: launch configurations cannot be \
                         changed; create one with another name and point the group at it (or \
                         move to a launch template, whose versions can follow changes)",
                        c.name
                    ),
                ));
            }
        }
        problems
    }
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Parses a memory size: `"256MiB"`, `"1GiB"`, `"512KiB"`, `"300MB"`, or bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("`{text}` is not a size like \"256MiB\" or \"1GiB\""))?;
    let factor: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        unit => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn deserialize_memory<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Bytes(u64),
        Text(String),
    }
    match Written::deserialize(d)? {
        Written::Bytes(bytes) => Ok(bytes),
        Written::Text(text) => parse_memory(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_memory("256MiB"), Ok(256 << 20));
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("300MB"), Ok(300_000_000));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert!(parse_memory("12XB").unwrap_err().contains("unknown unit"));
        assert!(parse_memory("MiB").unwrap_err().contains("not a size"));
    }

    const TEMPLATES: &str = r#"
[instance_types]
small = { cpu = 0.5, memory = "256MiB" }

[[launch_template]]
name = "web"
[[launch_template.version]]
command = ["/srv/web", "--port", "8080"]
ports = [8080]
[[launch_template.version]]
command = ["/srv/web", "--port", "8080", "--fast"]
ports = [8080]

[[launch_configuration]]
name = "old-web"
command = ["/srv/web"]
instance_type = "small"
"#;

    fn config(text: &str) -> crate::config::Config {
        crate::config::Config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_new_version_is_a_change_and_an_edited_one_is_refused() {
        let old = config(TEMPLATES);
        let added = TEMPLATES.replace(
            "\n[[launch_configuration]]",
            "[[launch_template.version]]\ncommand = [\"/srv/web\", \"--v3\"]\nports = [8080]\n\n[[launch_configuration]]",
        );
        assert_eq!(old.immutable_changes(&config(&added)), []);
        // The last version removed, and the whole template: fine.
        let removed = TEMPLATES.replacen(
            "[[launch_template.version]]\ncommand = [\"/srv/web\", \"--port\", \"8080\", \"--fast\"]\nports = [8080]\n",
            "",
            1,
        );
        assert_eq!(config(&removed).launch_templates[0].versions.len(), 1);
        assert_eq!(old.immutable_changes(&config(&removed)), []);
        let edited = TEMPLATES.replace("\"--fast\"", "\"--faster\"");
        let problems = old.immutable_changes(&config(&edited));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "launch_template[0].version[1]");
        assert!(
            problems[0]
                .1
                .contains("version 2 of launch template `web` changed")
        );
        let changed = TEMPLATES.replace("command = [\"/srv/web\"]", "command = [\"/srv/web2\"]");
        let problems = old.immutable_changes(&config(&changed));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "launch_configuration[0]");
        assert!(problems[0].1.contains("cannot be changed"));
    }

    #[test]
    fn ec2_only_fields_have_a_reason_and_ours_have_none() {
        assert!(refused_field("image_id").unwrap().contains("`command`"));
        assert!(
            refused_field("security_group_ids")
                .unwrap()
                .contains("inbound_rules")
        );
        for field in DEFINITION_FIELDS {
            assert_eq!(refused_field(field), None, "{field}");
        }
        assert_eq!(refused_field("comand"), None);
    }
}
