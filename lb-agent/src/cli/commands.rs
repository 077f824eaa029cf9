//! The commands that talk to a running agent: each sends one typed request through the
//! client and prints the typed answer (`print`), or its JSON with `--json`.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use lb_agent::{
    client::{Client, ClientError},
    config::HealthCheck,
    pinning::PinDir,
    protocol::{Answer, Request, parse_target},
};
use serde::Serialize;

use super::{
    EXIT_BAD_CONFIG,
    args::{ConfigCommand, GroupsCommand, HealthCheckArgs, OverridesCommand, TargetsCommand},
    print,
};

/// An answer of another kind than the request's (the protocol rules it out).
pub(super) fn unexpected(answer: &Answer) -> anyhow::Error {
    anyhow::anyhow!("the agent answered with an unexpected {answer:?}")
}

/// `value` as pretty JSON.
pub(super) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Sends `request`; its answer, which must be of the variant given.
macro_rules! call {
    ($socket:expr, $request:expr, $variant:ident) => {{
        match Client::new($socket).call(&$request)? {
            Answer::$variant(answer) => answer,
            other => return Err(unexpected(&other)),
        }
    }};
}

pub fn targets(command: TargetsCommand) -> anyhow::Result<()> {
    match command {
        TargetsCommand::Add {
            group,
            target,
            weight,
            socket,
        } => {
            let (address, port) = parse_target(&target).map_err(anyhow::Error::msg)?;
            let request = Request::TargetsAdd {
                group,
                address,
                port,
                weight,
            };
            let r = call!(&socket, request, TargetRegistered);
            println!(
                "registered {} in {} (weight {})",
                r.target, r.group, r.weight
            );
        }
        TargetsCommand::Remove {
            group,
            target,
            socket,
        } => {
            let (address, port) = parse_target(&target).map_err(anyhow::Error::msg)?;
            let request = Request::TargetsRemove {
                group,
                address,
                port,
            };
            let r = call!(&socket, request, TargetDeregistered);
            println!(
                "deregistered {} from {}: {}",
                r.target,
                r.group,
                if r.draining_seconds > 0.0 {
                    format!(
                        "draining, its established flows are cut in {}s",
                        r.draining_seconds
                    )
                } else {
                    "its established flows were cut".to_owned()
                }
            );
        }
        TargetsCommand::Weight {
            group,
            target,
            weight,
            socket,
        } => {
            let (address, port) = parse_target(&target).map_err(anyhow::Error::msg)?;
            let request = Request::TargetsWeight {
                group,
                address,
                port,
                weight,
            };
            let r = call!(&socket, request, WeightChanged);
            println!(
                "{} in {}: weight {} (was {})",
                r.target, r.group, r.weight, r.previous_weight
            );
        }
        TargetsCommand::List {
            group,
            json,
            socket,
        } => {
            let list = call!(&socket, Request::TargetsList { group }, Targets);
            if json {
                print_json(&list)?;
            } else {
                print::targets(&list);
            }
        }
    }
    Ok(())
}

pub fn groups(command: GroupsCommand) -> anyhow::Result<()> {
    match command {
        GroupsCommand::List { json, socket } => {
            let list = call!(&socket, Request::Groups, Groups);
            if json {
                print_json(&list)?;
            } else {
                print::groups(&list);
            }
        }
        GroupsCommand::HealthCheck(args) => health_check(*args)?,
    }
    Ok(())
}

/// `groups health-check`: the given fields replace the current check's (or the defaults').
fn health_check(args: HealthCheckArgs) -> anyhow::Result<()> {
    let HealthCheckArgs {
        group,
        reset,
        disable,
        enable,
        protocol,
        port,
        path,
        method,
        host,
        matcher,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        socket,
    } = args;
    let current = if reset {
        None
    } else {
        call!(&socket, Request::Groups, Groups)
            .into_iter()
            .find(|g| g.name == group)
            .with_context(|| format!("no target group `{group}`"))?
            .health_check
    };
    // Edited as JSON and read back: the same names, defaults and errors as the file.
    let mut fields = serde_json::to_value(current.unwrap_or_default())?;
    let mut set = |key: &str, value: serde_json::Value| fields[key] = value;
    if disable {
        set("enabled", false.into());
    }
    if enable {
        set("enabled", true.into());
    }
    for (key, value) in [
        ("protocol", protocol),
        ("path", path),
        ("method", method),
        ("host", host),
        ("matcher", matcher),
        ("interval", interval),
        ("timeout", timeout),
    ] {
        if let Some(value) = value {
            set(key, value.into());
        }
    }
    for (key, value) in [
        ("port", port.map(u32::from)),
        ("healthy_threshold", healthy_threshold),
        ("unhealthy_threshold", unhealthy_threshold),
    ] {
        if let Some(value) = value {
            set(key, value.into());
        }
    }
    let health_check: HealthCheck =
        serde_json::from_value(fields).context("invalid health check")?;
    let request = Request::HealthCheckSet {
        group: group.clone(),
        health_check,
    };
    let r = call!(&socket, request, HealthCheckSet);
    println!(
        "{group}: {}",
        print::describe_check(Some(&r.health_check), None)
    );
    Ok(())
}

pub fn stats(socket: &Path, json: bool) -> anyhow::Result<()> {
    let s = call!(socket, Request::Stats, Stats);
    if json {
        return print_json(&s);
    }
    print::stats(&s);
    Ok(())
}

/// Prints at most `limit` flows (0: all), and says so on stderr when there are more.
pub fn flows(socket: &Path, json: bool, limit: usize) -> anyhow::Result<()> {
    // One more than shown tells whether the list was cut.
    let asked = (limit != 0).then(|| limit.saturating_add(1));
    let mut list = call!(socket, Request::Flows { limit: asked }, Flows);
    if limit != 0 && list.len() > limit {
        list.truncate(limit);
        eprintln!("showing the first {limit} flows of more; --limit N for more, --limit 0 for all");
    }
    if json {
        return print_json(&list);
    }
    print::flows(&list);
    Ok(())
}

pub fn status(socket: &Path, json: bool) -> anyhow::Result<()> {
    let s = call!(socket, Request::Status, Status);
    if json {
        return print_json(&s);
    }
    print::status(&s);
    Ok(())
}

pub fn metrics(socket: &Path) -> anyhow::Result<()> {
    print!("{}", Client::new(socket).get_text("/metrics")?);
    Ok(())
}

/// A change the agent refused as invalid: printed, exit 64; other errors as usual.
fn refused_config(
    result: Result<Answer, ClientError>,
    what: &str,
) -> anyhow::Result<Result<Answer, ExitCode>> {
    match result {
        Ok(answer) => Ok(Ok(answer)),
        Err(ClientError::Refused(e)) => {
            eprintln!("{what}, the running config stays:\n{}", e.message);
            Ok(Err(ExitCode::from(EXIT_BAD_CONFIG)))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn reload(socket: &Path) -> anyhow::Result<ExitCode> {
    let answer = match refused_config(Client::new(socket).call(&Request::Reload), "reload refused")?
    {
        Ok(answer) => answer,
        Err(code) => return Ok(code),
    };
    let Answer::Changes(c) = answer else {
        return Err(unexpected(&answer));
    };
    if c.changes.is_empty() {
        println!("reloaded: no changes");
    } else {
        print::changes("reloaded", &c.changes);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn config(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    let read = |file: &Path| {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    };
    match command {
        ConfigCommand::Show { socket } => {
            let r = call!(&socket, Request::ConfigGet, ConfigFile);
            eprintln!(
                "# {} (+ {} API changes in {})",
                r.path, r.overrides, r.state_file
            );
            print!("{}", r.text);
        }
        ConfigCommand::Validate { file, socket } => {
            let request = Request::ConfigValidate { text: read(&file)? };
            let r = call!(&socket, request, Validation);
            if r.valid {
                println!("{}: ok", file.display());
            } else {
                for e in &r.errors {
                    eprintln!(
                        "{}:{}:{}: {}: {}",
                        file.display(),
                        e.line,
                        e.column,
                        e.field,
                        e.message
                    );
                }
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
        }
        ConfigCommand::Apply { file, socket } => {
            let request = Request::ConfigApply { text: read(&file)? };
            let answer = match refused_config(Client::new(&socket).call(&request), "not applied")? {
                Ok(answer) => answer,
                Err(code) => return Ok(code),
            };
            let Answer::Changes(c) = answer else {
                return Err(unexpected(&answer));
            };
            print::changes("applied", &c.changes);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn overrides(command: OverridesCommand) -> anyhow::Result<()> {
    match command {
        OverridesCommand::List { json, socket } => {
            let o = call!(&socket, Request::OverridesList, Overrides);
            if json {
                return print_json(&o);
            }
            print::overrides(&o);
        }
        OverridesCommand::Clear {
            group,
            listener,
            socket,
        } => {
            let c = call!(
                &socket,
                Request::OverridesClear { group, listener },
                Changes
            );
            print::changes("cleared; back to the config file", &c.changes);
        }
    }
    Ok(())
}

/// Asks the running agent to detach and stop; with none running, removes its pins.
pub fn detach(socket: &Path, pin_dir: &Path) -> anyhow::Result<()> {
    match Client::new(socket).call(&Request::Detach) {
        Ok(_) => {
            println!("detached");
            Ok(())
        }
        Err(ClientError::Connect { .. }) if pin_dir.exists() => {
            let pins = PinDir::open(pin_dir)?;
            // The NICs the data plane was attached to: their block on kernel forwarding goes too.
            let ifaces: Vec<String> = std::fs::read_dir(pins.link(""))
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
            pins.remove_all()?;
            lb_agent::forwarding::lift_block(&ifaces);
            lb_agent::proxy::vip::remove_local_routes_or_warn();
            println!(
                "no agent running: removed the data plane pinned in {}",
                pin_dir.display()
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
