//! The agent's side of the `local` provider's link hook: every new instance's veth gets the
//! data plane (the load balancer on the LB end, the pass program on the instance's end) before
//! the instance starts, through the writer, which owns the data plane and does it in order
//! with every other write; a terminated instance's veth loses it again.
//!
//! The provider calls the hook on a blocking thread (its launch runs in `spawn_blocking`), so
//! the hook sends the change and waits for the writer's answer, a bounded time: a writer that
//! does not answer fails the launch, and the attach it may still make later is undone by a
//! detach sent right behind it.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::writer::{Change, InstanceLinkReply};
use crate::{
    dataplane::{DataplaneError, InstanceAttached, InstanceVeth},
    scaling::provider::{
        InstanceRecord, ProviderDetail,
        local::{InstanceLink, LinkHook, lb_interface_name},
    },
};

/// How long the hook waits for the writer: it answers within milliseconds unless a reload
/// of a large config is ahead of it.
pub const WRITER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an instance's veth could not be attached to or detached from.
#[derive(Debug, thiserror::Error)]
pub enum InstanceLinkError {
    /// The writer has stopped (the agent is shutting down).
    #[error("the agent's writer has stopped, so {what} was not done")]
    WriterGone { what: String },
    /// The writer did not answer in time.
    #[error("the agent's writer did not answer within {timeout:?}: {what} is not known to be done")]
    Timeout { what: String, timeout: Duration },
    /// The data plane (the kernel) refused.
    #[error("{what}: {source}")]
    Dataplane {
        what: String,
        #[source]
        source: DataplaneError,
    },
}

/// The veth of a link the provider hands its hook, as the data plane names it.
pub fn veth(link: &InstanceLink<'_>) -> InstanceVeth {
    InstanceVeth {
        instance_id: link.instance_id.to_owned(),
        lb_interface: link.lb_interface.to_owned(),
        namespace: link.namespace.to_owned(),
        interface: link.interface.to_owned(),
    }
}

/// The link hook for a `local` provider of this agent: attaches the data plane to each new
/// instance's veth through the writer (`changes`), waiting `WRITER_TIMEOUT` at most; an error
/// fails the launch with what failed.
pub fn link_hook(changes: mpsc::UnboundedSender<Change>) -> LinkHook {
    link_hook_with_timeout(changes, WRITER_TIMEOUT)
}

/// As `link_hook`, waiting `timeout` at most for the writer.
pub fn link_hook_with_timeout(
    changes: mpsc::UnboundedSender<Change>,
    timeout: Duration,
) -> LinkHook {
    LinkHook(Arc::new(move |link: &InstanceLink<'_>| {
        attach(&changes, veth(link), timeout)
            .map(|attached| {
                tracing::info!(
                    instance = link.instance_id,
                    lb_interface = link.lb_interface,
                    mode = attached.mode.as_str(),
                    taken_over = attached.taken_over,
                    "the data plane serves the instance's veth"
                );
            })
            .map_err(|e| match (&e, link.lb_namespace) {
                // The data plane attaches in the agent's own namespace only.
                (
                    InstanceLinkError::Dataplane {
                        source: DataplaneError::NoInterface(_),
                        ..
                    },
                    Some(ns),
                ) => format!(
                    "{e}; its LB end is in namespace {ns}, and the agent attaches only in its own: run the agent there, or give the provider no LB namespace"
                ),
                _ => e.to_string(),
            })
    }))
}

/// Attaches the data plane to `veth` through the writer; blocks until it answers, `timeout`
/// at most (then a detach follows the attach, so a late attach is undone).
pub fn attach(
    changes: &mpsc::UnboundedSender<Change>,
    veth: InstanceVeth,
    timeout: Duration,
) -> Result<InstanceAttached, InstanceLinkError> {
    let what = format!(
        "attaching the data plane to instance {}'s veth ({}, and {} in {})",
        veth.instance_id, veth.lb_interface, veth.interface, veth.namespace
    );
    let lb_interface = veth.lb_interface.clone();
    let answer = ask(
        changes,
        |reply| Change::AttachInstanceLink { veth, reply },
        &what,
        timeout,
    );
    if let Err(InstanceLinkError::Timeout { .. }) = &answer {
        // Behind the attach in the writer's queue: whatever the attach does, this undoes.
        let (reply, _) = std::sync::mpsc::sync_channel(1);
        let _ = changes.send(Change::DetachInstanceLink {
            lb_interface,
            reply,
        });
    }
    answer
}

/// Detaches the data plane from the veth of `local` instance `instance_id` (on terminate);
/// blocks until the writer answers, `timeout` at most. Whether it was attached; a veth
/// already deleted is fine. Call it once the instance's processes are gone (after the
/// provider's terminate): until then the LB end must keep rewriting the replies of the flows
/// still draining.
pub fn detach(
    changes: &mpsc::UnboundedSender<Change>,
    instance_id: &str,
    timeout: Duration,
) -> Result<bool, InstanceLinkError> {
    let lb_interface = lb_interface_name(instance_id);
    let what =
        format!("detaching the data plane from instance {instance_id}'s veth ({lb_interface})");
    ask(
        changes,
        |reply| Change::DetachInstanceLink {
            lb_interface,
            reply,
        },
        &what,
        timeout,
    )
}

/// Detaches the data plane from the veths of every instance but `instance_ids` (after a
/// restart, once the instances still there are adopted: an earlier agent's attachments to
/// veths of instances now gone). The LB ends it detached from.
pub fn retain(
    changes: &mpsc::UnboundedSender<Change>,
    instance_ids: &[String],
    timeout: Duration,
) -> Result<Vec<String>, InstanceLinkError> {
    let keep = instance_ids
        .iter()
        .map(|id| lb_interface_name(id))
        .collect();
    ask(
        changes,
        |reply| Change::RetainInstanceLinks { keep, reply },
        "detaching the data plane from the veths of instances gone",
        timeout,
    )
}

/// What `adopt` did.
#[derive(Debug, Default)]
pub struct AdoptedLinks {
    /// The LB ends whose links an earlier agent pinned and this one took over, or attached
    /// afresh (none was pinned).
    pub attached: Vec<String>,
    /// The LB ends of veths of instances no longer there, detached from.
    pub dropped: Vec<String>,
    /// Instances whose veth could not be attached to, and why (they serve no L4 traffic).
    pub failed: Vec<(String, InstanceLinkError)>,
}

/// After a restart, once the provider adopted the instances of `records`: takes over the
/// links an earlier agent pinned on their veths (or attaches afresh), and detaches from the
/// veths of instances no longer there. Records of other providers are skipped.
pub fn adopt(
    changes: &mpsc::UnboundedSender<Change>,
    records: &[InstanceRecord],
    timeout: Duration,
) -> Result<AdoptedLinks, InstanceLinkError> {
    let mut adopted = AdoptedLinks::default();
    let mut keep = Vec::new();
    for record in records {
        let ProviderDetail::Local(detail) = &record.detail else {
            continue;
        };
        keep.push(detail.lb_interface.clone());
        let veth = InstanceVeth {
            instance_id: record.instance_id.clone(),
            lb_interface: detail.lb_interface.clone(),
            namespace: detail.namespace.clone(),
            interface: "eth0".into(),
        };
        match attach(changes, veth, timeout) {
            Ok(_) => adopted.attached.push(detail.lb_interface.clone()),
            Err(e @ InstanceLinkError::Dataplane { .. }) => {
                adopted.failed.push((record.instance_id.clone(), e));
            }
            // The writer is gone or stuck: the next ones would fare no better.
            Err(e) => return Err(e),
        }
    }
    adopted.dropped = ask(
        changes,
        |reply| Change::RetainInstanceLinks { keep, reply },
        "detaching the data plane from the veths of instances gone",
        timeout,
    )?;
    Ok(adopted)
}

/// Sends the change `make` builds around a reply channel; the writer's answer, `timeout` at
/// most.
fn ask<T>(
    changes: &mpsc::UnboundedSender<Change>,
    make: impl FnOnce(InstanceLinkReply<T>) -> Change,
    what: &str,
    timeout: Duration,
) -> Result<T, InstanceLinkError> {
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let gone = || InstanceLinkError::WriterGone {
        what: what.to_owned(),
    };
    changes.send(make(reply)).map_err(|_| gone())?;
    match answer.recv_timeout(timeout) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(InstanceLinkError::Dataplane {
            what: what.to_owned(),
            source,
        }),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(InstanceLinkError::Timeout {
            what: what.to_owned(),
            timeout,
        }),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
    }
}

#[cfg(test)]
mod tests {
    use std::{thread::JoinHandle, time::Instant};

    use super::*;
    use crate::{
        agent::writer::{Node, Writer},
        config::Config,
        dataplane::{InstanceLinks as _, memory::MemoryMaps},
        overrides::Overrides,
        state::{Ids, State},
    };

    const CONFIG: &str = r#"
[agent]
snat_addresses = ["198.18.0.1"]
maglev_table_size = 251

[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.8.10" }]

[[listener]]
name = "web"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = { forward = "web" }
"#;

    /// A writer of `CONFIG` on `maps`, running on a thread of its own: its channel, and the
    /// thread, which gives the maps back once every sender is gone.
    fn running_writer(maps: MemoryMaps) -> (mpsc::UnboundedSender<Change>, JoinHandle<MemoryMaps>) {
        running_writer_then(maps, |_| {})
    }

    /// As `running_writer`, with `then` done to the maps once the config is programmed.
    fn running_writer_then(
        mut maps: MemoryMaps,
        then: impl FnOnce(&mut MemoryMaps),
    ) -> (mpsc::UnboundedSender<Change>, JoinHandle<MemoryMaps>) {
        let file = Config::parse(CONFIG, "t.toml").expect("a valid config");
        let snat = file.agent.snat_addresses.clone();
        let state = State::apply(&file, &snat, &mut maps, &Ids::default(), Instant::now())
            .expect("programmed");
        then(&mut maps);
        let (writer, _) = Writer::new(state, maps, file, None, Overrides::default(), Node::fixed());
        let (changes, receiver) = mpsc::unbounded_channel();
        (changes, std::thread::spawn(move || writer.run(receiver)))
    }

    /// The link the provider hands its hook for instance `id`.
    fn call_hook(hook: &LinkHook, id: &str, lb_namespace: Option<&str>) -> Result<(), String> {
        let lb_interface = lb_interface_name(id);
        let namespace = format!("lbi-{id}");
        (hook.0)(&InstanceLink {
            instance_id: id,
            namespace: &namespace,
            interface: "eth0",
            lb_namespace,
            lb_interface: &lb_interface,
        })
    }

    fn maps() -> MemoryMaps {
        MemoryMaps::new(251, 4)
    }

    #[test]
    fn the_link_hook_attaches_the_data_plane_to_both_ends_of_the_instances_veth() {
        let (changes, writer) = running_writer(maps());
        let hook = link_hook(changes);
        call_hook(&hook, "i-0a", None).expect("attached");
        drop(hook);
        let maps = writer.join().expect("the writer ran");
        let lb_interface = lb_interface_name("i-0a");
        assert_eq!(
            maps.instance_veths.get(&lb_interface),
            Some(&InstanceVeth {
                instance_id: "i-0a".into(),
                lb_interface: lb_interface.clone(),
                namespace: "lbi-i-0a".into(),
                interface: "eth0".into(),
            })
        );
    }

    #[test]
    fn detach_removes_the_instances_link_and_says_whether_there_was_one() {
        let (changes, writer) = running_writer(maps());
        let hook = link_hook(changes.clone());
        call_hook(&hook, "i-0a", None).expect("attached");
        call_hook(&hook, "i-0b", None).expect("attached");
        assert!(detach(&changes, "i-0a", WRITER_TIMEOUT).expect("detached"));
        assert!(!detach(&changes, "i-0a", WRITER_TIMEOUT).expect("nothing to detach"));
        drop((hook, changes));
        let maps = writer.join().expect("the writer ran");
        assert_eq!(
            maps.instance_links(),
            [lb_interface_name("i-0b")],
            "only i-0b's veth keeps the data plane"
        );
    }

    #[test]
    fn a_refused_attach_fails_the_launch_saying_which_instance_and_why() {
        let (changes, writer) = running_writer_then(maps(), |m| m.refuse_writes_after(0));
        let message = call_hook(&link_hook(changes), "i-0a", None).expect_err("refused");
        for part in ["instance i-0a", &lb_interface_name("i-0a"), "TX_PORTS"] {
            assert!(message.contains(part), "`{part}` missing from: {message}");
        }
        assert!(writer.join().expect("ran").instance_veths.is_empty());
    }

    #[test]
    fn an_lb_end_in_another_namespace_is_refused_with_where_the_agent_attaches() {
        let mut absent = maps();
        absent.absent_interfaces.insert(lb_interface_name("i-0a"));
        let (changes, writer) = running_writer(absent);
        let message = call_hook(&link_hook(changes), "i-0a", Some("lbt-elsewhere"))
            .expect_err("no such interface here");
        assert!(
            message.contains("does not exist") && message.contains("namespace lbt-elsewhere"),
            "{message}"
        );
        writer.join().expect("ran");
    }

    #[test]
    fn a_writer_that_does_not_answer_fails_the_hook_in_time_and_the_late_attach_is_undone() {
        let (changes, mut receiver) = mpsc::unbounded_channel();
        let hook = link_hook_with_timeout(changes, Duration::from_millis(50));
        let started = Instant::now();
        let message = call_hook(&hook, "i-0a", None).expect_err("no answer");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(message.contains("did not answer within 50ms"), "{message}");
        let lb = lb_interface_name("i-0a");
        assert!(
            matches!(receiver.try_recv(), Ok(Change::AttachInstanceLink { veth, .. }) if veth.lb_interface == lb)
        );
        assert!(
            matches!(receiver.try_recv(), Ok(Change::DetachInstanceLink { lb_interface, .. }) if lb_interface == lb),
            "no detach follows the attach"
        );
    }

    /// A `local` record of instance `id`, as the provider writes it.
    fn record(id: &str) -> InstanceRecord {
        let detail = crate::scaling::provider::local::LocalDetail {
            pid: 1,
            start_time: 1,
            namespace: format!("lbi-{id}"),
            lb_namespace: None,
            lb_interface: lb_interface_name(id),
            cgroups: Vec::new(),
            cpu: 0.5,
            directory: std::path::PathBuf::from("/nonexistent"),
        };
        InstanceRecord {
            instance_id: id.into(),
            group: "web-asg".into(),
            template: "web".into(),
            template_version: 1,
            address: "198.18.8.10".parse().unwrap(),
            launched_at: 0,
            detail: ProviderDetail::Local(detail),
        }
    }

    #[test]
    fn adopting_takes_over_the_adopted_instances_links_reports_failures_and_drops_the_rest() {
        let (changes, writer) = running_writer(maps());
        let hook = link_hook(changes);
        for id in ["i-0a", "i-0b", "i-0c"] {
            call_hook(&hook, id, None).expect("attached");
        }
        drop(hook);
        let mut pinned = writer.join().expect("ran").adopt();
        // i-0b's veth went away while no agent ran.
        pinned.absent_interfaces.insert(lb_interface_name("i-0b"));

        let (changes, writer) = running_writer(pinned);
        let adopted = adopt(&changes, &[record("i-0a"), record("i-0b")], WRITER_TIMEOUT)
            .expect("the writer answered");
        assert_eq!(adopted.attached, [lb_interface_name("i-0a")]);
        assert_eq!(adopted.failed.len(), 1, "{adopted:?}");
        assert_eq!(adopted.failed[0].0, "i-0b");
        assert!(
            adopted.failed[0].1.to_string().contains("does not exist"),
            "{adopted:?}"
        );
        assert_eq!(adopted.dropped, [lb_interface_name("i-0c")]);
        drop(changes);
        let maps = writer.join().expect("ran");
        assert_eq!(maps.instance_veths.len(), 1);
        assert!(maps.instance_veths.contains_key(&lb_interface_name("i-0a")));
    }

    #[test]
    fn a_stopped_writer_fails_the_hook() {
        let (changes, receiver) = mpsc::unbounded_channel();
        drop(receiver);
        let message = call_hook(&link_hook(changes), "i-0a", None).expect_err("no writer");
        assert!(message.contains("writer has stopped"), "{message}");
    }

    #[test]
    fn after_a_restart_the_links_of_adopted_instances_are_taken_over_and_the_others_dropped() {
        // The earlier agent attached to three instances' veths, then stopped.
        let (changes, writer) = running_writer(maps());
        let hook = link_hook(changes);
        for id in ["i-0a", "i-0b", "i-0c"] {
            call_hook(&hook, id, None).expect("attached");
        }
        drop(hook);
        let pinned = writer.join().expect("ran").adopt();
        assert!(pinned.instance_veths.is_empty());
        assert_eq!(pinned.pinned_instances.len(), 3);

        // The next one adopts i-0a and i-0b; i-0c is gone.
        let (changes, writer) = running_writer(pinned);
        let kept = ["i-0a".to_owned(), "i-0b".to_owned()];
        let dropped = retain(&changes, &kept, WRITER_TIMEOUT).expect("retained");
        assert_eq!(dropped, [lb_interface_name("i-0c")]);
        let veth = |id: &str| InstanceVeth {
            instance_id: id.into(),
            lb_interface: lb_interface_name(id),
            namespace: format!("lbi-{id}"),
            interface: "eth0".into(),
        };
        let again = attach(&changes, veth("i-0a"), WRITER_TIMEOUT).expect("taken over");
        assert!(again.taken_over, "{again:?}");
        let fresh = attach(&changes, veth("i-0d"), WRITER_TIMEOUT).expect("attached");
        assert!(!fresh.taken_over, "{fresh:?}");
        drop(changes);
        let maps = writer.join().expect("ran");
        assert_eq!(maps.instance_links(), {
            let mut l: Vec<String> = ["i-0a", "i-0b", "i-0d"]
                .iter()
                .map(|id| lb_interface_name(id))
                .collect();
            l.sort();
            l
        });
        assert!(maps.pinned_instances.contains(&lb_interface_name("i-0b")));
    }
}
