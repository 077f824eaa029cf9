//! What a group's config says about its instances, in the terms the group and the providers
//! take: the group's settings and capacity, the launch template version a launch resolves to
//! and the instance it describes, and the port an instance is registered on. Pure.

use std::{net::IpAddr, time::Duration};

use crate::{
    config::{AutoScalingGroup, Cidr, Config, InstanceDefinition, TargetGroup, TemplateVersion},
    scaling::{
        addressing,
        capacity::{CapacityError, GroupCapacity},
        group::GroupSettings,
        lifecycle::LifecycleHook,
        maintenance::InstanceMaintenancePolicy,
        provider::{Image, InboundRule, InstanceSpec, InstanceType, RuleProtocol},
        termination::{CurrentLaunch, LaunchSource},
    },
};

/// The instance type of a definition that names none: one core and 512 MiB.
pub const DEFAULT_INSTANCE_TYPE: (&str, f64, u64) = ("default", 1.0, 512 << 20);

/// How long after the deregistration delay a draining instance is stopped anyway: the
/// writer ends the target's draining at the delay, and the group looks once a second.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// The group's settings from its config: the longest deregistration delay of its target
/// groups is how long its instances may drain.
pub fn settings(group: &AutoScalingGroup, config: &Config) -> GroupSettings {
    let deregistration_delay = target_groups(group, config)
        .map(|t| t.deregistration_delay)
        .max()
        .unwrap_or_default();
    GroupSettings {
        name: group.name.clone(),
        health_check_type: group.health_check_type,
        health_check_grace_period: group.health_check_grace_period,
        deregistration_delay: deregistration_delay + DRAIN_MARGIN,
        termination_policies: group.termination_policies.clone(),
        new_instances_protected_from_scale_in: group.new_instances_protected_from_scale_in,
        max_instance_lifetime: group.max_instance_lifetime,
        // The config's checks refuse a policy out of EC2's bounds first.
        maintenance_policy: group.instance_maintenance_policy.and_then(|m| {
            InstanceMaintenancePolicy::new(m.min_healthy_percentage, m.max_healthy_percentage).ok()
        }),
        current_launch: current_launch(group),
        // The config's checks refuse hooks these cannot build first.
        lifecycle_hooks: group
            .lifecycle_hooks
            .iter()
            .filter_map(|h| {
                LifecycleHook::new(
                    &h.name,
                    h.transition,
                    Some(h.heartbeat_timeout),
                    Some(h.default_result),
                )
                .ok()
            })
            .collect(),
    }
}

/// The group's sizes as its config writes them (desired defaults to min, as EC2's).
pub fn capacity(group: &AutoScalingGroup) -> Result<GroupCapacity, CapacityError> {
    GroupCapacity::new(
        group.min_size,
        group.desired_capacity.unwrap_or(group.min_size),
        group.max_size,
    )
}

/// What the group launches from now.
pub fn current_launch(group: &AutoScalingGroup) -> CurrentLaunch {
    match (&group.launch_template, &group.launch_configuration) {
        (Some(template), _) => CurrentLaunch::LaunchTemplate {
            name: template.name.clone(),
        },
        (None, Some(name)) => CurrentLaunch::LaunchConfiguration { name: name.clone() },
        // The config's checks refuse a group with neither.
        (None, None) => CurrentLaunch::LaunchConfiguration {
            name: String::new(),
        },
    }
}

/// The target groups the group registers its instances in.
pub fn target_groups<'a>(
    group: &'a AutoScalingGroup,
    config: &'a Config,
) -> impl Iterator<Item = &'a TargetGroup> + 'a {
    group
        .target_groups
        .iter()
        .filter_map(|name| config.target_groups.iter().find(|t| &t.name == name))
}

/// The launch template version (or launch configuration) a launch of `group` resolves to
/// now, and its definition: `$Default` and `$Latest` are resolved at each launch, as EC2's.
pub fn resolve<'a>(
    group: &AutoScalingGroup,
    config: &'a Config,
) -> Result<(LaunchSource, &'a InstanceDefinition), String> {
    if let Some(reference) = &group.launch_template {
        let template = config
            .launch_templates
            .iter()
            .find(|t| t.name == reference.name)
            .ok_or_else(|| format!("no launch template `{}`", reference.name))?;
        let version = match reference.version {
            TemplateVersion::Default => template.default_version(),
            TemplateVersion::Latest => template.latest_version(),
            TemplateVersion::Number(n) => n,
        };
        let definition = template.version(version).ok_or_else(|| {
            format!(
                "launch template `{}` has no version {version}",
                template.name
            )
        })?;
        return Ok((
            LaunchSource::LaunchTemplate {
                name: template.name.clone(),
                version,
            },
            definition,
        ));
    }
    let name = group
        .launch_configuration
        .as_deref()
        .ok_or("the group names no launch template and no launch configuration")?;
    let configuration = config
        .launch_configurations
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("no launch configuration `{name}`"))?;
    Ok((
        LaunchSource::LaunchConfiguration {
            name: name.to_owned(),
        },
        &configuration.definition,
    ))
}

/// Where the group's addresses come from: the group's subnet, else the definition's.
pub fn subnet(group: &AutoScalingGroup, definition: &InstanceDefinition) -> Option<Cidr> {
    group.subnet.or(definition.subnet)
}

/// The instance `id` at `address` that `definition` describes, for a provider.
pub fn instance_spec(
    group: &AutoScalingGroup,
    config: &Config,
    source: &LaunchSource,
    definition: &InstanceDefinition,
    id: &str,
    address: IpAddr,
) -> InstanceSpec {
    let (template, template_version) = match source {
        LaunchSource::LaunchTemplate { name, version } => (name.clone(), *version),
        LaunchSource::LaunchConfiguration { name } => (name.clone(), 0),
    };
    let instance_type = match definition
        .instance_type
        .as_ref()
        .and_then(|name| config.instance_types.get(name).map(|t| (name, t)))
    {
        Some((name, t)) => InstanceType {
            name: name.clone(),
            cpu: t.cpu,
            memory_bytes: t.memory,
        },
        None => InstanceType {
            name: DEFAULT_INSTANCE_TYPE.0.to_owned(),
            cpu: DEFAULT_INSTANCE_TYPE.1,
            memory_bytes: DEFAULT_INSTANCE_TYPE.2,
        },
    };
    let gateway = subnet(group, definition)
        .and_then(|s| addressing::gateway(&s))
        .unwrap_or(if address.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        });
    // No rules written: the instance's ports from anywhere (TCP and UDP).
    let inbound_rules = match &definition.inbound_rules {
        Some(rules) => rules
            .iter()
            .flat_map(|rule| {
                rule.ports.iter().flat_map(move |&port| {
                    [RuleProtocol::Tcp, RuleProtocol::Udp].map(|protocol| InboundRule {
                        protocol,
                        from_port: port,
                        to_port: port,
                        sources: or_anywhere(&rule.sources),
                    })
                })
            })
            .collect(),
        None => definition
            .ports
            .iter()
            .flat_map(|&port| {
                [RuleProtocol::Tcp, RuleProtocol::Udp].map(|protocol| InboundRule {
                    protocol,
                    from_port: port,
                    to_port: port,
                    sources: anywhere(),
                })
            })
            .collect(),
    };
    InstanceSpec {
        instance_id: id.to_owned(),
        group: group.name.clone(),
        template,
        template_version,
        image: Image {
            command: definition.command.clone(),
            working_directory: definition.directory.clone(),
        },
        user_data: definition.user_data.clone(),
        environment: definition.environment.clone(),
        instance_type,
        ports: definition.ports.clone(),
        address,
        gateway,
        inbound_rules,
        stop_timeout: definition.stop_timeout,
    }
}

/// Sources written, or anywhere when none are (the config's rule: none written, any).
fn or_anywhere(sources: &[Cidr]) -> Vec<Cidr> {
    if sources.is_empty() {
        anywhere()
    } else {
        sources.to_vec()
    }
}

/// Every IPv4 and IPv6 source (AWS's `0.0.0.0/0` and `::/0`).
fn anywhere() -> Vec<Cidr> {
    ["0.0.0.0/0", "::/0"]
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The port an instance launched from `definition` is registered on in `target_group`: the
/// group's port if the instance serves it, else the instance's first port (EC2 Auto Scaling
/// registers instances on the target group's port).
pub fn registration_port(
    target_group: &TargetGroup,
    definition: &InstanceDefinition,
) -> Option<u16> {
    match target_group.port {
        Some(port) if definition.ports.contains(&port) || definition.ports.is_empty() => Some(port),
        _ => definition.ports.first().copied().or(target_group.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = r#"
[[target_group]]
name = "web"
protocol = "http"
port = 8080
deregistration_delay = "10s"

[[target_group]]
name = "api"
protocol = "tcp"
port = 9000
deregistration_delay = "30s"

[instance_types]
small = { cpu = 0.5, memory = "256MiB" }

[[launch_template]]
name = "web"
default_version = 1

[[launch_template.version]]
command = ["srv", "--v1"]
instance_type = "small"
ports = [8080]
subnet = "198.18.8.0/24"

[[launch_template.version]]
command = ["srv", "--v2"]
ports = [8080, 9000]
subnet = "198.18.8.0/24"
inbound_rules = [{ ports = [8080], sources = ["198.18.0.0/15"] }]

[[auto_scaling_group]]
name = "web-asg"
launch_template = { name = "web", version = "$VERSION" }
min_size = 1
max_size = 4
target_groups = ["web", "api"]
"#;

    fn with_version(version: &str) -> Config {
        config(&BASE.replace("$VERSION", version))
    }

    #[test]
    fn default_and_latest_resolve_to_the_template_s_versions_at_launch() {
        for (written, expected) in [("$Default", 1), ("$Latest", 2), ("2", 2)] {
            let config = with_version(written);
            let group = &config.auto_scaling_groups[0];
            let (source, definition) = resolve(group, &config).unwrap();
            assert_eq!(
                source,
                LaunchSource::LaunchTemplate {
                    name: "web".into(),
                    version: expected
                },
                "{written}"
            );
            assert_eq!(definition.command[1], format!("--v{expected}"));
        }
    }

    #[test]
    fn an_instance_gets_its_type_s_limits_the_subnet_s_gateway_and_its_ports_as_rules() {
        let config = with_version("1");
        let group = &config.auto_scaling_groups[0];
        let (source, definition) = resolve(group, &config).unwrap();
        let spec = instance_spec(
            group,
            &config,
            &source,
            definition,
            "i-0123456789abcdef0",
            "198.18.8.2".parse().unwrap(),
        );
        assert_eq!(spec.instance_type.name, "small");
        assert_eq!(spec.instance_type.memory_bytes, 256 << 20);
        assert_eq!(spec.gateway, "198.18.8.1".parse::<IpAddr>().unwrap());
        assert_eq!(spec.template_version, 1);
        // No rules written: its port, TCP and UDP, from anywhere.
        assert_eq!(spec.inbound_rules.len(), 2);
        assert!(
            spec.inbound_rules
                .iter()
                .all(|r| r.from_port == 8080 && r.sources == anywhere() && r.sources.len() == 2)
        );

        let config = with_version("2");
        let group = &config.auto_scaling_groups[0];
        let (source, definition) = resolve(group, &config).unwrap();
        let spec = instance_spec(
            group,
            &config,
            &source,
            definition,
            "i-0123456789abcdef0",
            "198.18.8.2".parse().unwrap(),
        );
        assert_eq!(spec.instance_type.name, DEFAULT_INSTANCE_TYPE.0);
        assert_eq!(spec.inbound_rules.len(), 2, "only the written rule's port");
        assert_eq!(spec.inbound_rules[0].sources.len(), 1);
    }

    #[test]
    fn instances_register_on_each_target_group_s_port_and_drain_as_long_as_the_longest_delay() {
        let config = with_version("2");
        let group = &config.auto_scaling_groups[0];
        let (_, definition) = resolve(group, &config).unwrap();
        let ports: Vec<Option<u16>> = target_groups(group, &config)
            .map(|t| registration_port(t, definition))
            .collect();
        assert_eq!(ports, [Some(8080), Some(9000)]);
        let settings = settings(group, &config);
        assert_eq!(
            settings.deregistration_delay,
            Duration::from_secs(30) + DRAIN_MARGIN
        );
        assert_eq!(
            capacity(group).unwrap().desired(),
            1,
            "desired defaults to min"
        );
    }
}
