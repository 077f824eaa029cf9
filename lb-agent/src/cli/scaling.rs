//! `lb-agent asg`: the auto scaling groups of a running agent, with EC2 Auto Scaling's verbs
//! (`describe-auto-scaling-groups`, `set-desired-capacity`,
//! `terminate-instance-in-auto-scaling-group`, `set-instance-protection`,
//! `describe-scaling-activities`).

use std::path::PathBuf;

use clap::Subcommand;
use lb_agent::{
    client::Client,
    protocol::{
        Answer, Request,
        scaling::{ActivityView, AsgView, ProcessesSet, RefreshView},
    },
};

use super::{
    args::DEFAULT_SOCKET,
    commands::{print_json, unexpected},
};

#[derive(Subcommand)]
pub enum AsgCommand {
    /// Every group: sizes, instances in service, launch template.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// One group and each of its instances: lifecycle state, health, template version,
    /// protection, CPU.
    Describe {
        group: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Set a group's desired capacity (within min and max); instances launch or drain and
    /// stop to reach it.
    SetDesired {
        group: String,
        desired_capacity: u32,
        /// Refuse while the group's cooldown runs (EC2's `--honor-cooldown`).
        #[arg(long)]
        honor_cooldown: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Terminate an instance: it drains from its target groups, then stops; a replacement is
    /// launched unless `--decrement` lowers the desired capacity instead.
    TerminateInstance {
        instance: String,
        #[arg(long)]
        decrement: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Protect instances from scale-in (`--off`: remove the protection).
    SetProtection {
        group: String,
        #[arg(required = true)]
        instances: Vec<String>,
        #[arg(long)]
        off: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Replace every instance of a group (to its launch template as it resolves now, a new
    /// version say), in batches that keep `--min-healthy-percentage` in service.
    StartRefresh {
        group: String,
        /// The share of the desired capacity kept in service (EC2's default 90).
        #[arg(long)]
        min_healthy_percentage: Option<u32>,
        /// The share that may be in service or pending, 100-200 (default: the group's
        /// instance maintenance policy's, else 100: terminate before launching).
        #[arg(long)]
        max_healthy_percentage: Option<u32>,
        /// Seconds a replacement warms up before the next batch (default: the group's
        /// default instance warmup, else its health check grace period).
        #[arg(long)]
        instance_warmup: Option<u64>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Cancel the group's instance refresh: the batch under way finishes, no other starts.
    CancelRefresh {
        group: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Suspend processes of a group (Launch, Terminate, HealthCheck, ReplaceUnhealthy,
    /// AlarmNotification, ScheduledActions, AddToLoadBalancer, InstanceRefresh); none: all.
    Suspend {
        group: String,
        processes: Vec<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Resume processes of a group; none named: all.
    Resume {
        group: String,
        processes: Vec<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// End an instance's wait on a lifecycle hook: CONTINUE (into service, or on to
    /// terminate) or ABANDON (a launch is terminated and replaced).
    CompleteLifecycleAction {
        group: String,
        hook: String,
        instance: String,
        #[arg(long)]
        result: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Restart the timeout of an instance's wait on a lifecycle hook.
    RecordHeartbeat {
        group: String,
        hook: String,
        instance: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// A group's launches and terminations, newest first, with their causes.
    Activities {
        group: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
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

pub fn asg(command: AsgCommand) -> anyhow::Result<()> {
    match command {
        AsgCommand::List { json, socket } => {
            let groups = call!(&socket, Request::AsgList, AutoScalingGroups);
            if json {
                return print_json(&groups);
            }
            for g in &groups {
                print_group_line(g);
            }
        }
        AsgCommand::Describe {
            group,
            json,
            socket,
        } => {
            let g = call!(&socket, Request::AsgDescribe { group }, AutoScalingGroup);
            if json {
                return print_json(&g);
            }
            describe(&g);
        }
        AsgCommand::SetDesired {
            group,
            desired_capacity,
            honor_cooldown,
            json,
            socket,
        } => {
            let request = Request::AsgSetDesired {
                group,
                desired_capacity,
                honor_cooldown,
            };
            let r = call!(&socket, request, DesiredCapacitySet);
            if json {
                return print_json(&r);
            }
            println!(
                "{}: desired capacity {} -> {}",
                r.group, r.previous_desired_capacity, r.desired_capacity
            );
        }
        AsgCommand::TerminateInstance {
            instance,
            decrement,
            json,
            socket,
        } => {
            let request = Request::AsgTerminateInstance {
                instance,
                decrement,
            };
            let r = call!(&socket, request, InstanceTerminating);
            if json {
                return print_json(&r);
            }
            println!(
                "{}: terminating {} ({}; desired capacity {})",
                r.group,
                r.instance_id,
                if r.decremented {
                    "not replaced"
                } else {
                    "a replacement launches"
                },
                r.desired_capacity
            );
        }
        AsgCommand::SetProtection {
            group,
            instances,
            off,
            json,
            socket,
        } => {
            let request = Request::AsgSetProtection {
                group,
                instances,
                protected: !off,
            };
            let r = call!(&socket, request, ProtectionSet);
            if json {
                return print_json(&r);
            }
            println!(
                "{}: {} {} from scale-in",
                r.group,
                r.instances.join(", "),
                if r.protected_from_scale_in {
                    "protected"
                } else {
                    "no longer protected"
                }
            );
        }
        AsgCommand::StartRefresh {
            group,
            min_healthy_percentage,
            max_healthy_percentage,
            instance_warmup,
            json,
            socket,
        } => {
            let request = Request::AsgStartRefresh {
                group,
                min_healthy_percentage,
                max_healthy_percentage,
                instance_warmup_seconds: instance_warmup,
            };
            let r = call!(&socket, request, InstanceRefresh);
            if json {
                return print_json(&r);
            }
            print_refresh(&r);
        }
        AsgCommand::CancelRefresh {
            group,
            json,
            socket,
        } => {
            let r = call!(
                &socket,
                Request::AsgCancelRefresh { group },
                InstanceRefresh
            );
            if json {
                return print_json(&r);
            }
            print_refresh(&r);
        }
        AsgCommand::Suspend {
            group,
            processes,
            json,
            socket,
        } => {
            let r = call!(
                &socket,
                Request::AsgSuspend { group, processes },
                ProcessesSet
            );
            print_processes(&r, json)?;
        }
        AsgCommand::Resume {
            group,
            processes,
            json,
            socket,
        } => {
            let r = call!(
                &socket,
                Request::AsgResume { group, processes },
                ProcessesSet
            );
            print_processes(&r, json)?;
        }
        AsgCommand::CompleteLifecycleAction {
            group,
            hook,
            instance,
            result,
            json,
            socket,
        } => {
            let request = Request::AsgCompleteLifecycleAction {
                group,
                hook,
                instance,
                result,
            };
            let r = call!(&socket, request, LifecycleAction);
            if json {
                return print_json(&r);
            }
            println!(
                "{}: {} completed {} for {}",
                r.group,
                r.hook,
                r.result.as_deref().unwrap_or("-"),
                r.instance_id
            );
        }
        AsgCommand::RecordHeartbeat {
            group,
            hook,
            instance,
            json,
            socket,
        } => {
            let request = Request::AsgRecordHeartbeat {
                group,
                hook,
                instance,
            };
            let r = call!(&socket, request, LifecycleAction);
            if json {
                return print_json(&r);
            }
            println!(
                "{}: {} for {} now times out at {}",
                r.group,
                r.hook,
                r.instance_id,
                r.timeout_at.as_deref().unwrap_or("-")
            );
        }
        AsgCommand::Activities {
            group,
            limit,
            json,
            socket,
        } => {
            let mut list = call!(&socket, Request::AsgActivities { group }, Activities);
            list.truncate(limit);
            if json {
                return print_json(&list);
            }
            for a in &list {
                print_activity(a);
            }
        }
    }
    Ok(())
}

fn print_refresh(r: &RefreshView) {
    println!(
        "{}: instance refresh {} {}  {}% complete, {} to update, min healthy {}%, max healthy {}%, warmup {}s, started {}{}",
        r.group,
        r.instance_refresh_id,
        r.status,
        r.percentage_complete,
        r.instances_to_update,
        r.min_healthy_percentage,
        r.max_healthy_percentage,
        r.instance_warmup_seconds,
        r.start_time,
        r.end_time
            .as_ref()
            .map_or(String::new(), |e| format!(", ended {e}"))
    );
}

fn print_processes(r: &ProcessesSet, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    println!(
        "{}: suspended [{}]",
        r.group,
        r.suspended_processes.join(", ")
    );
    Ok(())
}

fn print_group_line(g: &AsgView) {
    let in_service = g
        .instances
        .iter()
        .filter(|i| i.lifecycle_state == "InService")
        .count();
    println!(
        "{}  min {} desired {} max {}  {} in service of {} instances  {}{}",
        g.name,
        g.min_size,
        g.desired_capacity,
        g.max_size,
        in_service,
        g.instances.len(),
        g.launch_template
            .as_deref()
            .or(g.launch_configuration.as_deref())
            .unwrap_or("-"),
        if g.deleting { "  (deleting)" } else { "" },
    );
}

fn describe(g: &AsgView) {
    print_group_line(g);
    println!(
        "    provider {}, target groups [{}], health check {} (grace {}s), cooldown {}s, termination policies [{}]{}",
        g.provider,
        g.target_groups.join(", "),
        g.health_check_type,
        g.health_check_grace_period_seconds,
        g.default_cooldown_seconds,
        g.termination_policies.join(", "),
        if g.suspended_processes.is_empty() {
            String::new()
        } else {
            format!(", suspended [{}]", g.suspended_processes.join(", "))
        }
    );
    if let Some(m) = &g.instance_maintenance_policy {
        println!(
            "    instance maintenance policy: min healthy {}%, max healthy {}%",
            m.min_healthy_percentage, m.max_healthy_percentage
        );
    }
    if let Some(at) = &g.launches_wait_until {
        println!("    launches failed: the next waits until {at}");
    }
    if let Some(r) = &g.instance_refresh {
        print!("    ");
        print_refresh(r);
    }
    for a in &g.alarms {
        println!(
            "    alarm {}  {}  {} (threshold {}, last {})  {}",
            a.name,
            a.state,
            a.metric,
            a.threshold,
            a.last_value.map_or("-".to_owned(), |v| format!("{v:.1}")),
            a.reason
        );
    }
    for i in &g.instances {
        let source = match (&i.launch_template, i.launch_template_version) {
            (Some(t), Some(v)) => format!("{t} v{v}"),
            _ => i.launch_configuration.clone().unwrap_or_default(),
        };
        println!(
            "    {}  {}  {}  {}  {}{}{}  launched {}",
            i.instance_id,
            i.address,
            i.lifecycle_state,
            i.health_status,
            source,
            i.cpu_utilization
                .map_or(String::new(), |c| format!("  cpu {c:.0}%")),
            if i.protected_from_scale_in {
                "  protected"
            } else {
                ""
            },
            i.launched_at
        );
    }
}

fn print_activity(a: &ActivityView) {
    println!(
        "{}  {}  {}{}",
        a.start_time,
        a.status,
        a.description,
        a.status_message
            .as_ref()
            .map_or(String::new(), |m| format!(" ({m})"))
    );
    println!("    {}", a.cause);
}
