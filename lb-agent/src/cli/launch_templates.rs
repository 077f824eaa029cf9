//! `lb-agent launch-templates list|describe`: the running config's launch templates and
//! launch configurations, read through the API and printed as EC2's
//! describe-launch-templates and describe-launch-template-versions show them (`--json`: the
//! API's answer as it is).

use lb_agent::{
    client::Client,
    config::duration_text,
    protocol::{
        Answer, LaunchTemplateSummary, LaunchTemplateView, Request,
        launch_templates::{DefinitionKind, LaunchTemplateVersionView},
    },
};

use super::{
    args::LaunchTemplatesCommand,
    commands::{print_json, unexpected},
};

/// Sends `request`; its answer, which must be of the variant given.
macro_rules! call {
    ($socket:expr, $request:expr, $variant:ident) => {{
        match Client::new($socket).call(&$request)? {
            Answer::$variant(answer) => answer,
            other => return Err(unexpected(&other)),
        }
    }};
}

pub fn launch_templates(command: LaunchTemplatesCommand) -> anyhow::Result<()> {
    match command {
        LaunchTemplatesCommand::List { json, socket } => {
            let list = call!(&socket, Request::LaunchTemplatesList, LaunchTemplates);
            if json {
                return print_json(&list);
            }
            print!("{}", list_text(&list));
        }
        LaunchTemplatesCommand::Describe { name, json, socket } => {
            let view = call!(
                &socket,
                Request::LaunchTemplatesDescribe { name },
                LaunchTemplate
            );
            if json {
                return print_json(&view);
            }
            print!("{}", describe_text(&view));
        }
    }
    Ok(())
}

fn kind_text(kind: DefinitionKind) -> &'static str {
    match kind {
        DefinitionKind::LaunchTemplate => "launch template",
        DefinitionKind::LaunchConfiguration => "launch configuration",
    }
}

fn names_or_dash(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

fn number_or_dash(n: Option<u32>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// Launch templates, then launch configurations, a line each.
fn list_text(list: &[LaunchTemplateSummary]) -> String {
    let mut out = format!(
        "{:<24} {:<20} {:>7} {:>6} {:>8}  USED BY\n",
        "NAME", "KIND", "DEFAULT", "LATEST", "VERSIONS"
    );
    for t in list {
        out.push_str(&format!(
            "{:<24} {:<20} {:>7} {:>6} {:>8}  {}\n",
            t.name,
            kind_text(t.kind),
            number_or_dash(t.default_version_number),
            number_or_dash(t.latest_version_number),
            t.version_count,
            names_or_dash(&t.used_by)
        ));
    }
    out
}

/// A launch template's versions (or a launch configuration's definition), field by field.
fn describe_text(view: &LaunchTemplateView) -> String {
    let mut out = format!("{} ({})", view.name, kind_text(view.kind));
    if let (Some(default), Some(latest)) = (view.default_version_number, view.latest_version_number)
    {
        out.push_str(&format!(
            ": default version {default}, latest version {latest}"
        ));
    }
    out.push_str(&format!("; used by {}\n", names_or_dash(&view.used_by)));
    for v in &view.versions {
        out.push_str(&version_text(v));
    }
    out
}

fn version_text(v: &LaunchTemplateVersionView) -> String {
    let mut marks = Vec::new();
    if v.default_version {
        marks.push("$Default");
    }
    if v.latest_version {
        marks.push("$Latest");
    }
    let mut out = match v.version_number {
        Some(n) if marks.is_empty() => format!("version {n}\n"),
        Some(n) => format!("version {n} ({})\n", marks.join(", ")),
        None => "definition\n".to_owned(),
    };
    let mut field = |name: &str, value: String| out.push_str(&format!("    {name:<14} {value}\n"));
    field("command", command_text(&v.command));
    field(
        "directory",
        v.directory.clone().unwrap_or_else(|| "/".into()),
    );
    field(
        "instance type",
        v.instance_type.as_ref().map_or_else(
            || "none (no CPU or memory limit)".to_owned(),
            |t| match (t.cpu, t.memory_bytes) {
                (Some(cpu), Some(memory)) => {
                    format!("{} ({cpu} CPU, {} memory)", t.name, memory_text(memory))
                }
                _ => format!("{} (not in [instance_types])", t.name),
            },
        ),
    );
    field(
        "ports",
        if v.ports.is_empty() {
            "none".to_owned()
        } else {
            v.ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    field(
        "subnet",
        v.subnet.clone().unwrap_or_else(|| "the group's".into()),
    );
    field(
        "inbound rules",
        v.inbound_rules.as_ref().map_or_else(
            || "not written: its ports from anywhere".to_owned(),
            |rules| {
                if rules.is_empty() {
                    return "none: nothing inbound".to_owned();
                }
                rules
                    .iter()
                    .map(|r| {
                        let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
                        let from = if r.sources.is_empty() {
                            "anywhere".to_owned()
                        } else {
                            r.sources.join(", ")
                        };
                        format!("{} from {from}", ports.join(","))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ),
    );
    field(
        "stop timeout",
        duration_text(std::time::Duration::from_secs_f64(
            v.stop_timeout_seconds.max(0.0),
        )),
    );
    field(
        "environment",
        if v.environment_keys.is_empty() {
            "none".to_owned()
        } else {
            v.environment_keys.join(", ")
        },
    );
    field(
        "user data",
        v.user_data_bytes
            .map_or_else(|| "none".to_owned(), |n| format!("{n} bytes")),
    );
    out
}

/// A command as a shell would read it back: arguments with spaces or quotes single-quoted.
fn command_text(command: &[String]) -> String {
    if command.is_empty() {
        return "none".to_owned();
    }
    command
        .iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bytes in the largest binary unit that divides them, as `[instance_types]` writes sizes.
fn memory_text(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use lb_agent::protocol::launch_templates::{InboundRuleView, InstanceTypeView};

    use super::*;

    fn version(number: Option<u32>, default: bool, latest: bool) -> LaunchTemplateVersionView {
        LaunchTemplateVersionView {
            version_number: number,
            default_version: default,
            latest_version: latest,
            command: vec!["sh".into(), "-c".into(), "echo 'hi' there".into()],
            directory: None,
            instance_type: Some(InstanceTypeView {
                name: "small".into(),
                cpu: Some(0.5),
                memory_bytes: Some(256 << 20),
            }),
            ports: vec![8080, 8443],
            subnet: Some("198.18.8.0/24".into()),
            inbound_rules: None,
            stop_timeout_seconds: 30.0,
            environment_keys: vec!["MODE".into()],
            user_data_bytes: Some(25),
        }
    }

    #[test]
    fn a_described_template_marks_default_and_latest_and_spells_out_each_field() {
        let view = LaunchTemplateView {
            name: "web".into(),
            kind: DefinitionKind::LaunchTemplate,
            default_version_number: Some(1),
            latest_version_number: Some(2),
            versions: vec![
                version(Some(1), true, false),
                LaunchTemplateVersionView {
                    inbound_rules: Some(vec![InboundRuleView {
                        ports: vec![8080],
                        sources: vec!["198.18.0.0/15".into()],
                    }]),
                    instance_type: None,
                    ..version(Some(2), false, true)
                },
            ],
            used_by: vec!["web-asg".into()],
        };
        let text = describe_text(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "web (launch template): default version 1, latest version 2; used by web-asg"
        );
        assert_eq!(lines[1], "version 1 ($Default)");
        for line in [
            r"    command        sh -c 'echo '\''hi'\'' there'",
            "    instance type  small (0.5 CPU, 256MiB memory)",
            "    ports          8080, 8443",
            "    inbound rules  not written: its ports from anywhere",
            "    stop timeout   30s",
            "    user data      25 bytes",
            "version 2 ($Latest)",
            "    inbound rules  8080 from 198.18.0.0/15",
            "    instance type  none (no CPU or memory limit)",
        ] {
            assert!(lines.contains(&line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn launch_configurations_list_without_version_numbers() {
        let list = [LaunchTemplateSummary {
            name: "legacy".into(),
            kind: DefinitionKind::LaunchConfiguration,
            default_version_number: None,
            latest_version_number: None,
            version_count: 1,
            used_by: Vec::new(),
        }];
        let text = list_text(&list);
        let row = text.lines().nth(1).expect("a row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["legacy", "launch", "configuration", "-", "-", "1", "-"]
        );
    }

    #[test]
    fn memory_reads_in_the_largest_whole_binary_unit() {
        assert_eq!(memory_text(256 << 20), "256MiB");
        assert_eq!(memory_text(1 << 30), "1GiB");
        assert_eq!(memory_text(300_000_000), "300000000 bytes");
    }
}
