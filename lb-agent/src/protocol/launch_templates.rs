//! Launch templates (and the legacy launch configurations) as the API shows them: read-only,
//! from the config in force. `list` is EC2's `describe-launch-templates` (name, default and
//! latest version numbers), `describe` is its `describe-launch-template-versions` (every
//! version's launch data, the default one marked), in this product's fields: what runs, where,
//! and with which limits. Launch configurations are listed beside the templates, marked as
//! such, so users migrating from them find theirs.
//!
//! Environment values are not shown (they may hold secrets), only their names; nor is user
//! data, only its size, as EC2's console hides user data until asked.

use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::config::{Config, InstanceDefinition, LaunchTemplate};

/// What kind of definition a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionKind {
    /// `[[launch_template]]`: versioned.
    LaunchTemplate,
    /// `[[launch_configuration]]`: EC2's legacy form, one unversioned definition.
    LaunchConfiguration,
}

/// One launch template or configuration as `launch-templates list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchTemplateSummary {
    pub name: String,
    pub kind: DefinitionKind,
    /// The version `$Default` resolves to (none for a launch configuration).
    pub default_version_number: Option<u32>,
    /// The version `$Latest` resolves to (none for a launch configuration).
    pub latest_version_number: Option<u32>,
    /// How many versions it has (1 for a launch configuration).
    pub version_count: u32,
    /// The auto scaling groups that launch from it.
    pub used_by: Vec<String>,
}

/// One launch template or configuration, every version, as `launch-templates describe`
/// shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchTemplateView {
    pub name: String,
    pub kind: DefinitionKind,
    pub default_version_number: Option<u32>,
    pub latest_version_number: Option<u32>,
    /// Version 1 first (a launch configuration's one definition, unnumbered).
    pub versions: Vec<LaunchTemplateVersionView>,
    pub used_by: Vec<String>,
}

/// One version's launch data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchTemplateVersionView {
    /// 1..n (none for a launch configuration).
    pub version_number: Option<u32>,
    /// Whether `$Default` names it (EC2's `DefaultVersion`).
    pub default_version: bool,
    /// Whether `$Latest` names it.
    pub latest_version: bool,
    /// What runs, with its arguments.
    pub command: Vec<String>,
    /// The working directory, its "image" (none written: `/`).
    pub directory: Option<String>,
    pub instance_type: Option<InstanceTypeView>,
    pub ports: Vec<u16>,
    /// Where addresses come from when the group names no subnet.
    pub subnet: Option<String>,
    /// The instance's "security group"; none written: its ports from anywhere.
    pub inbound_rules: Option<Vec<InboundRuleView>>,
    /// Between SIGTERM and SIGKILL when it stops.
    pub stop_timeout_seconds: f64,
    /// The names of its environment variables (values are not shown).
    pub environment_keys: Vec<String>,
    /// The user data script's size in bytes (none: no user data).
    pub user_data_bytes: Option<usize>,
}

/// An instance type with its limits (none when the config in force does not define it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceTypeView {
    pub name: String,
    /// Cores.
    pub cpu: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// One inbound rule: these ports from these networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundRuleView {
    pub ports: Vec<u16>,
    /// Networks like `198.18.0.0/15`; empty: any.
    pub sources: Vec<String>,
}

/// Every launch template, then every launch configuration, each by name.
pub fn list(config: &Config) -> Vec<LaunchTemplateSummary> {
    let mut templates: Vec<LaunchTemplateSummary> = config
        .launch_templates
        .iter()
        .map(|t| LaunchTemplateSummary {
            name: t.name.clone(),
            kind: DefinitionKind::LaunchTemplate,
            default_version_number: Some(t.default_version()),
            latest_version_number: Some(t.latest_version()),
            version_count: t.latest_version(),
            used_by: used_by(config, DefinitionKind::LaunchTemplate, &t.name),
        })
        .collect();
    templates.sort_by(|a, b| a.name.cmp(&b.name));
    let mut configurations: Vec<LaunchTemplateSummary> = config
        .launch_configurations
        .iter()
        .map(|c| LaunchTemplateSummary {
            name: c.name.clone(),
            kind: DefinitionKind::LaunchConfiguration,
            default_version_number: None,
            latest_version_number: None,
            version_count: 1,
            used_by: used_by(config, DefinitionKind::LaunchConfiguration, &c.name),
        })
        .collect();
    configurations.sort_by(|a, b| a.name.cmp(&b.name));
    templates.extend(configurations);
    templates
}

/// The launch template `name` with every version; a launch configuration of that name if no
/// template has it (templates and configurations are separate namespaces in EC2, and a group
/// names which one it means; here the template wins). 404 naming the known ones if neither.
pub fn describe(config: &Config, name: &str) -> Result<LaunchTemplateView, ApiError> {
    if let Some(t) = config.launch_templates.iter().find(|t| t.name == name) {
        return Ok(template_view(config, t));
    }
    if let Some(c) = config.launch_configurations.iter().find(|c| c.name == name) {
        return Ok(LaunchTemplateView {
            name: c.name.clone(),
            kind: DefinitionKind::LaunchConfiguration,
            default_version_number: None,
            latest_version_number: None,
            versions: vec![version_view(config, &c.definition, None, false, false)],
            used_by: used_by(config, DefinitionKind::LaunchConfiguration, &c.name),
        });
    }
    Err(not_found(config, name))
}

fn template_view(config: &Config, t: &LaunchTemplate) -> LaunchTemplateView {
    let default = t.default_version();
    let latest = t.latest_version();
    let versions = (1..=latest)
        .zip(&t.versions)
        .map(|(number, d)| {
            version_view(config, d, Some(number), number == default, number == latest)
        })
        .collect();
    LaunchTemplateView {
        name: t.name.clone(),
        kind: DefinitionKind::LaunchTemplate,
        default_version_number: Some(default),
        latest_version_number: Some(latest),
        versions,
        used_by: used_by(config, DefinitionKind::LaunchTemplate, &t.name),
    }
}

fn version_view(
    config: &Config,
    d: &InstanceDefinition,
    number: Option<u32>,
    default: bool,
    latest: bool,
) -> LaunchTemplateVersionView {
    LaunchTemplateVersionView {
        version_number: number,
        default_version: default,
        latest_version: latest,
        command: d.command.clone(),
        directory: d.directory.as_ref().map(|p| p.display().to_string()),
        instance_type: d.instance_type.as_ref().map(|name| {
            let limits = config.instance_types.get(name);
            InstanceTypeView {
                name: name.clone(),
                cpu: limits.map(|l| l.cpu),
                memory_bytes: limits.map(|l| l.memory),
            }
        }),
        ports: d.ports.clone(),
        subnet: d.subnet.map(|s| s.to_string()),
        inbound_rules: d.inbound_rules.as_ref().map(|rules| {
            rules
                .iter()
                .map(|r| InboundRuleView {
                    ports: r.ports.clone(),
                    sources: r.sources.iter().map(ToString::to_string).collect(),
                })
                .collect()
        }),
        stop_timeout_seconds: d.stop_timeout.as_secs_f64(),
        environment_keys: d.environment.keys().cloned().collect(),
        user_data_bytes: d.user_data.as_ref().map(String::len),
    }
}

/// The auto scaling groups launching from the template or configuration `name`.
fn used_by(config: &Config, kind: DefinitionKind, name: &str) -> Vec<String> {
    config
        .auto_scaling_groups
        .iter()
        .filter(|g| match kind {
            DefinitionKind::LaunchTemplate => {
                g.launch_template.as_ref().is_some_and(|r| r.name == name)
            }
            DefinitionKind::LaunchConfiguration => g.launch_configuration.as_deref() == Some(name),
        })
        .map(|g| g.name.clone())
        .collect()
}

/// EC2's `InvalidLaunchTemplateName.NotFoundException` words, with the names there are.
fn not_found(config: &Config, name: &str) -> ApiError {
    let names = |list: Vec<&str>| {
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };
    let templates = names(
        config
            .launch_templates
            .iter()
            .map(|t| t.name.as_str())
            .collect(),
    );
    let configurations = names(
        config
            .launch_configurations
            .iter()
            .map(|c| c.name.as_str())
            .collect(),
    );
    ApiError::new(
        404,
        format!(
            "the specified launch template, with template name {name}, does not exist \
             (launch templates: {templates}; launch configurations: {configurations})"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::ConfigFile;

    const SCALING: &str = r#"
[instance_types]
small = { cpu = 0.5, memory = "256MiB" }

[[launch_template]]
name = "web"
default_version = 2
[[launch_template.version]]
command = ["python3", "-m", "http.server", "8080"]
instance_type = "small"
ports = [8080]
[[launch_template.version]]
command = ["instance-server", "--port", "8080"]
directory = "/srv/web"
user_data = "echo booting $INSTANCE_ID"
instance_type = "small"
ports = [8080]
subnet = "198.18.8.0/24"
environment = { MODE = "v2", TOKEN = "s3cret" }
inbound_rules = [{ ports = [8080], sources = ["198.18.0.0/15"] }]
stop_timeout = "5s"
[[launch_template.version]]
command = ["instance-server", "--port", "8080"]
ports = [8080]

[[launch_template]]
name = "api"
[[launch_template.version]]
command = ["sleep", "1000"]

[[launch_configuration]]
name = "legacy"
command = ["sleep", "1000"]

[[auto_scaling_group]]
name = "web-asg"
launch_template = { name = "web" }
subnet = "198.18.8.0/24"
min_size = 1
max_size = 6
target_groups = ["web"]

[[auto_scaling_group]]
name = "old"
launch_configuration = "legacy"
subnet = "198.18.9.0/24"
min_size = 0
max_size = 1
"#;

    fn config() -> Config {
        let text = format!("{}\n{SCALING}", ConfigFile::good().text());
        Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn templates_are_listed_by_name_with_default_and_latest_then_launch_configurations() {
        let list = list(&config());
        type Row<'a> = (&'a str, DefinitionKind, Option<u32>, Option<u32>, u32);
        let rows: Vec<Row> = list
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.kind,
                    s.default_version_number,
                    s.latest_version_number,
                    s.version_count,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("api", DefinitionKind::LaunchTemplate, Some(1), Some(1), 1),
                ("web", DefinitionKind::LaunchTemplate, Some(2), Some(3), 3),
                ("legacy", DefinitionKind::LaunchConfiguration, None, None, 1),
            ]
        );
        assert_eq!(list[1].used_by, ["web-asg"]);
        assert_eq!(list[2].used_by, ["old"]);
        assert!(list[0].used_by.is_empty());
    }

    #[test]
    fn describe_marks_the_default_and_the_latest_version_and_shows_each_versions_data() {
        let view = describe(&config(), "web").unwrap();
        let marks: Vec<(Option<u32>, bool, bool)> = view
            .versions
            .iter()
            .map(|v| (v.version_number, v.default_version, v.latest_version))
            .collect();
        assert_eq!(
            marks,
            [
                (Some(1), false, false),
                (Some(2), true, false),
                (Some(3), false, true)
            ]
        );
        let v2 = &view.versions[1];
        assert_eq!(v2.command, ["instance-server", "--port", "8080"]);
        assert_eq!(v2.directory.as_deref(), Some("/srv/web"));
        assert_eq!(
            v2.instance_type,
            Some(InstanceTypeView {
                name: "small".into(),
                cpu: Some(0.5),
                memory_bytes: Some(256 << 20),
            })
        );
        assert_eq!(v2.ports, [8080]);
        assert_eq!(v2.subnet.as_deref(), Some("198.18.8.0/24"));
        assert_eq!(
            v2.inbound_rules,
            Some(vec![InboundRuleView {
                ports: vec![8080],
                sources: vec!["198.18.0.0/15".into()],
            }])
        );
        assert_eq!(v2.stop_timeout_seconds, 5.0);
        assert_eq!(v2.environment_keys, ["MODE", "TOKEN"]);
        assert_eq!(v2.user_data_bytes, Some("echo booting $INSTANCE_ID".len()));
        // Unwritten: no type, rules as the default says, AWS's 30 s stop.
        let v3 = &view.versions[2];
        assert_eq!(
            (v3.instance_type.as_ref(), v3.inbound_rules.as_ref()),
            (None, None)
        );
        assert_eq!(v3.stop_timeout_seconds, 30.0);
        assert_eq!(v3.user_data_bytes, None);
    }

    #[test]
    fn environment_values_are_never_shown() {
        let view = describe(&config(), "web").unwrap();
        let json = serde_json::to_string(&view).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        assert!(!json.contains("booting"), "{json}");
    }

    #[test]
    fn a_launch_configuration_is_described_as_one_unnumbered_definition() {
        let view = describe(&config(), "legacy").unwrap();
        assert_eq!(view.kind, DefinitionKind::LaunchConfiguration);
        assert_eq!(view.default_version_number, None);
        assert_eq!(view.versions.len(), 1);
        assert_eq!(view.versions[0].version_number, None);
        assert_eq!(view.versions[0].command, ["sleep", "1000"]);
    }

    #[test]
    fn an_unknown_name_is_404_in_ec2s_words_naming_the_known_ones() {
        let e = describe(&config(), "nope").unwrap_err();
        assert_eq!(e.status, 404);
        assert!(
            e.message
                .contains("launch template, with template name nope, does not exist"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("launch templates: web, api"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("launch configurations: legacy"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_config_without_templates_lists_nothing() {
        let config = Config::parse(&ConfigFile::good().text(), "t.toml").unwrap();
        assert!(list(&config).is_empty());
        let e = describe(&config, "web").unwrap_err();
        assert!(
            e.message.contains("launch templates: none"),
            "{}",
            e.message
        );
    }

    /// The schema's property names, sorted.
    fn documented(schema: &str) -> Vec<String> {
        // The file the API serves (`api::OPENAPI`), read here directly: the protocol does
        // not depend on its server.
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../openapi.json")).unwrap();
        let properties = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {schema}"));
        let mut names: Vec<String> = properties.keys().cloned().collect();
        names.sort();
        names
    }

    /// The JSON object's keys, sorted.
    fn keys(value: &serde_json::Value) -> Vec<String> {
        let mut names: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    #[test]
    fn the_openapi_document_names_every_field_the_answers_carry() {
        let config = config();
        let summary = serde_json::to_value(&list(&config)[0]).unwrap();
        assert_eq!(keys(&summary), documented("LaunchTemplateSummary"));
        let view = serde_json::to_value(describe(&config, "web").unwrap()).unwrap();
        assert_eq!(keys(&view), documented("LaunchTemplate"));
        assert_eq!(
            keys(&view["versions"][1]),
            documented("LaunchTemplateVersion")
        );
    }
}
