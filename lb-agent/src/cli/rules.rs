//! `lb-agent listeners` and `lb-agent rules`: listeners of every kind, and the rules of an
//! http or https listener changed through the API. A rule given by flags is written as the
//! file writes it (JSON in the config's vocabulary) and read with the config's own types, so
//! it takes the same names, defaults and errors as a `[[listener.rule]]`.

use std::collections::BTreeMap;

use anyhow::Context as _;
use lb_agent::{
    client::Client,
    config::Rule,
    protocol::{Answer, Request},
};
use serde_json::{Map, Value, json};

use super::{
    args::{ListenersCommand, RuleArgs, RulesCommand},
    commands::{print_json, unexpected},
    print,
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

pub fn listeners(command: ListenersCommand) -> anyhow::Result<()> {
    match command {
        ListenersCommand::List { json, socket } => {
            let list = call!(&socket, Request::Listeners, Listeners);
            if json {
                return print_json(&list);
            }
            print::listeners(&list);
        }
    }
    Ok(())
}

pub fn rules(command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::List {
            listener,
            json,
            socket,
        } => {
            let view = call!(&socket, Request::RulesList { listener }, Rules);
            if json {
                return print_json(&view);
            }
            print::rules(&view);
        }
        RulesCommand::Add(args) => {
            let socket = args.socket.clone();
            let listener = args.listener.clone();
            let rule = rule_of(&args)?;
            let r = call!(
                &socket,
                Request::RulesAdd {
                    listener,
                    rule: Box::new(rule),
                },
                RuleAdded
            );
            println!(
                "{}: rule {} added: {} -> {}",
                r.listener,
                r.rule.priority,
                print::describe_conditions(&r.rule.conditions),
                print::describe_action(&r.rule.action)
            );
        }
        RulesCommand::Remove {
            listener,
            priority,
            socket,
        } => {
            let request = Request::RulesRemove { listener, priority };
            let r = call!(&socket, request, RuleRemoved);
            println!(
                "{}: rule {} removed ({} -> {})",
                r.listener,
                r.rule.priority,
                print::describe_conditions(&r.rule.conditions),
                print::describe_action(&r.rule.action)
            );
        }
        RulesCommand::SetPriority {
            listener,
            priority,
            to,
            socket,
        } => {
            let request = Request::RulesSetPriority {
                listener,
                priority,
                new_priority: to,
            };
            let r = call!(&socket, request, RuleMoved);
            println!(
                "{}: rule {} is now at priority {}",
                r.listener, r.previous_priority, r.priority
            );
        }
    }
    Ok(())
}

/// The rule `rules add` describes: its `--json`, or one written from its flags.
fn rule_of(args: &RuleArgs) -> anyhow::Result<Rule> {
    let value = match &args.json {
        Some(text) => serde_json::from_str(text).context("--json is not JSON")?,
        None => rule_json(args)?,
    };
    serde_json::from_value(value).context("invalid rule")
}

/// The rule of the flags as the config file writes it.
fn rule_json(args: &RuleArgs) -> anyhow::Result<Value> {
    let mut conditions = Map::new();
    for (key, values) in [
        ("host", &args.host),
        ("path", &args.path),
        ("http_request_method", &args.method),
        ("source_ip", &args.source_ip),
    ] {
        if !values.is_empty() {
            conditions.insert(key.to_owned(), json!(values));
        }
    }
    let mut headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for pair in &args.header {
        let (name, value) = split_pair(pair, "--header", "NAME=VALUE")?;
        headers.entry(name).or_default().push(value);
    }
    if !headers.is_empty() {
        conditions.insert("http_header".to_owned(), json!(headers));
    }
    let mut query: BTreeMap<&str, &str> = BTreeMap::new();
    for pair in &args.query {
        let (key, value) = split_pair(pair, "--query", "KEY=VALUE")?;
        if query.insert(key, value).is_some() {
            anyhow::bail!("--query {key}=... is given twice: one value pattern per key");
        }
    }
    if !query.is_empty() {
        conditions.insert("query_string".to_owned(), json!(query));
    }
    Ok(json!({
        "priority": args.priority,
        "conditions": conditions,
        "action": action_json(args)?,
    }))
}

/// The one action the flags name.
fn action_json(args: &RuleArgs) -> anyhow::Result<Value> {
    let mut redirect = Map::new();
    for (key, value) in [
        ("protocol", args.redirect_protocol.clone().map(Value::from)),
        ("host", args.redirect_host.clone().map(Value::from)),
        ("port", args.redirect_port.map(Value::from)),
        ("path", args.redirect_path.clone().map(Value::from)),
        ("query", args.redirect_query.clone().map(Value::from)),
        ("status_code", args.redirect_status.map(Value::from)),
    ] {
        if let Some(value) = value {
            redirect.insert(key.to_owned(), value);
        }
    }
    let mut actions = Vec::new();
    if !args.forward.is_empty() {
        actions.push(("forward", forward_json(&args.forward)?));
    }
    if !redirect.is_empty() {
        actions.push(("redirect", Value::Object(redirect)));
    }
    if let Some(status) = args.fixed_status {
        let mut fixed = Map::new();
        fixed.insert("status_code".to_owned(), status.into());
        if let Some(t) = &args.fixed_content_type {
            fixed.insert("content_type".to_owned(), t.clone().into());
        }
        if let Some(b) = &args.fixed_body {
            fixed.insert("message_body".to_owned(), b.clone().into());
        }
        actions.push(("fixed_response", Value::Object(fixed)));
    }
    match actions.as_slice() {
        [(key, value)] => Ok(json!({ *key: value })),
        _ => anyhow::bail!(
            "a rule has one action: --forward, --redirect-* or --fixed-status, not several"
        ),
    }
}

/// `GROUP` alone forwards to one group; `GROUP:WEIGHT`s (or several groups) split by weight.
fn forward_json(entries: &[String]) -> anyhow::Result<Value> {
    if let [only] = entries
        && !only.contains(':')
    {
        return Ok(Value::from(only.as_str()));
    }
    let mut list = Vec::new();
    for entry in entries {
        let mut group = Map::new();
        // Group names have no `:` (`[A-Za-z0-9_-]`): the last one starts the weight.
        let (name, weight) = match entry.rsplit_once(':') {
            Some((name, weight)) => {
                let weight: u32 = weight
                    .parse()
                    .with_context(|| format!("--forward {entry}: the weight is not a number"))?;
                (name, Some(weight))
            }
            None => (entry.as_str(), None),
        };
        group.insert("target_group".to_owned(), name.into());
        if let Some(weight) = weight {
            group.insert("weight".to_owned(), weight.into());
        }
        list.push(Value::Object(group));
    }
    Ok(Value::Array(list))
}

/// `NAME=VALUE` split at its first `=`.
fn split_pair<'a>(pair: &'a str, flag: &str, shape: &str) -> anyhow::Result<(&'a str, &'a str)> {
    pair.split_once('=')
        .with_context(|| format!("{flag} {pair}: write {shape}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::args::{Cli, Command};

    /// The rule `lb-agent rules add ARGS` sends.
    fn rule_from(args: &[&str]) -> anyhow::Result<Rule> {
        let mut all = vec!["lb-agent", "rules", "add", "--listener", "site"];
        all.extend(args);
        let cli = Cli::try_parse_from(all)?;
        let Command::Rules {
            command: RulesCommand::Add(args),
        } = cli.command
        else {
            panic!("not rules add");
        };
        rule_of(&args)
    }

    fn json_of(rule: &Rule) -> Value {
        serde_json::to_value(rule).unwrap()
    }

    #[test]
    fn flags_make_the_rule_the_file_would_write() {
        let rule = rule_from(&[
            "--priority",
            "10",
            "--host",
            "api.example.com",
            "--host",
            "*.api.example.com",
            "--path",
            "/v1/*",
            "--method",
            "GET",
            "--source-ip",
            "198.18.0.0/15",
            "--header",
            "x-debug=1",
            "--header",
            "x-debug=yes",
            "--query",
            "version=v?",
            "--forward",
            "api:90",
            "--forward",
            "canary:10",
        ])
        .unwrap();
        assert_eq!(
            json_of(&rule),
            json!({
                "priority": 10,
                "conditions": {
                    "host": ["api.example.com", "*.api.example.com"],
                    "path": ["/v1/*"],
                    "http_request_method": ["GET"],
                    "source_ip": ["198.18.0.0/15"],
                    "http_header": { "x-debug": ["1", "yes"] },
                    "query_string": { "version": "v?" },
                },
                "action": { "forward": [
                    { "target_group": "api", "weight": 90 },
                    { "target_group": "canary", "weight": 10 },
                ] },
            })
        );
    }

    #[test]
    fn one_group_forwards_by_name_and_redirects_and_fixed_answers_take_their_fields() {
        let forward = rule_from(&["--priority", "1", "--path", "/a", "--forward", "web"]).unwrap();
        assert_eq!(json_of(&forward)["action"], json!({ "forward": "web" }));
        let redirect = rule_from(&[
            "--priority",
            "2",
            "--path",
            "/old/*",
            "--redirect-path",
            "/new/#{path}",
            "--redirect-status",
            "302",
        ])
        .unwrap();
        assert_eq!(
            json_of(&redirect)["action"],
            json!({ "redirect": { "path": "/new/#{path}", "status_code": 302 } })
        );
        let fixed = rule_from(&[
            "--priority",
            "3",
            "--path",
            "/teapot",
            "--fixed-status",
            "418",
            "--fixed-body",
            "short and stout",
        ])
        .unwrap();
        assert_eq!(
            json_of(&fixed)["action"],
            json!({ "fixed_response": { "status_code": 418, "message_body": "short and stout" } })
        );
    }

    #[test]
    fn a_rule_given_as_json_is_taken_whole() {
        let text =
            r#"{"priority": 7, "conditions": {"path": ["/x"]}, "action": {"forward": "web"}}"#;
        let rule = rule_from(&["--json", text]).unwrap();
        assert_eq!(rule.priority, 7);
        assert!(rule_from(&["--json", text, "--priority", "8"]).is_err());
        let misspelt = r#"{"priority": 7, "conditions": {"pth": ["/x"]}, "action": {}}"#;
        let e = format!("{:#}", rule_from(&["--json", misspelt]).unwrap_err());
        assert!(e.contains("pth"), "{e}");
    }

    #[test]
    fn two_actions_a_missing_action_and_a_bad_pair_are_refused() {
        let two = rule_from(&[
            "--priority",
            "1",
            "--path",
            "/a",
            "--forward",
            "web",
            "--fixed-status",
            "404",
        ]);
        assert!(
            format!("{:#}", two.unwrap_err()).contains("one action"),
            "two actions"
        );
        assert!(rule_from(&["--priority", "1", "--path", "/a"]).is_err());
        let pair = rule_from(&["--priority", "1", "--header", "x-debug", "--forward", "web"]);
        assert!(
            format!("{:#}", pair.unwrap_err()).contains("NAME=VALUE"),
            "bad pair"
        );
    }
}
