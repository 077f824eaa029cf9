//! How auto scaling groups replace instances, with real processes and real XDP: an instance
//! maintenance policy that launches before terminating keeps an impaired instance (stopped
//! with SIGSTOP: its process still runs, its health checks time out) until its replacement is
//! healthy, and an image that exits at once is relaunched with a back-off rather than every
//! second. Each test prints what it measured (`measured: ...`).
//!
//! Needs root (namespaces, cgroups, XDP): skipped otherwise, like the other lab tests.

use std::time::{Duration, Instant};

use tests::auto_scaling_lab::{AsgLab, config, in_state, instance_ids, running_as_root};

const SERVER: &str = env!("CARGO_BIN_EXE_instance-server");

#[test]
fn launch_before_terminating_keeps_an_impaired_instance_until_its_replacement_is_healthy() {
    if !running_as_root() {
        return;
    }
    let extra = "health_check_type = \"ELB\"\nhealth_check_grace_period = \"1s\"\n\
                 instance_maintenance_policy = { min_healthy_percentage = 100, max_healthy_percentage = 110 }\n";
    let lab = AsgLab::up("asg-imp", &config(SERVER, (1, 2, 4), "5s", extra));
    let (group, _) = lab.wait_in_service("web-asg", 2);
    let ids = instance_ids(&group);
    for id in &ids {
        lab.wait_until_serving(id, Duration::from_secs(30));
    }
    let described = lab.cli(&["asg", "describe", "web-asg"]);
    assert!(
        described.contains("min healthy 100%, max healthy 110%"),
        "{described}"
    );

    // Impair one instance: its process is stopped, not gone (EC2's check still passes).
    let victim = &group.instances[0];
    let pid = victim.pid.expect("a local instance's pid");
    let stopped_at = Instant::now();
    // SAFETY: a plain kill(2).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);

    // Until the victim leaves service, at least 2 instances are in service all along, and
    // when it leaves its replacement is in service and healthy.
    let mut fewest_in_service = usize::MAX;
    let mut replacement_launched = None;
    let deadline = stopped_at + Duration::from_secs(60);
    let (left, replacement) = loop {
        assert!(
            Instant::now() < deadline,
            "the impaired instance was not replaced within 60 s: {:#?}",
            lab.group("web-asg")
        );
        let g = lab.group("web-asg");
        let in_service = in_state(&g, "InService");
        let victim_serves = in_service.contains(&victim.instance_id.as_str());
        let new: Vec<&str> = g
            .instances
            .iter()
            .map(|i| i.instance_id.as_str())
            .filter(|id| !ids.iter().any(|old| old == id))
            .collect();
        if replacement_launched.is_none() && !new.is_empty() {
            replacement_launched = Some(stopped_at.elapsed());
        }
        if !victim_serves {
            assert_eq!(new.len(), 1, "one replacement: {g:#?}");
            let replacement = g
                .instances
                .iter()
                .find(|i| i.instance_id == new[0])
                .expect("the replacement");
            assert_eq!(
                (
                    replacement.lifecycle_state.as_str(),
                    replacement.health_status.as_str()
                ),
                ("InService", "Healthy"),
                "the impaired instance left before its replacement served: {g:#?}"
            );
            break (stopped_at.elapsed(), new[0].to_owned());
        }
        fewest_in_service = fewest_in_service.min(in_service.len());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(fewest_in_service >= 2, "{fewest_in_service} in service");
    let launched = replacement_launched.expect("a replacement was launched");
    assert!(
        launched < left,
        "launched {launched:?}, left {left:?}: terminated before launching"
    );
    lab.wait_until_serving(&replacement, Duration::from_secs(30));
    println!(
        "measured: impaired instance (SIGSTOP): replacement launched {launched:?} after, \
         impaired one taken out of service {left:?} after, replacement serving {:?} after; \
         in service throughout: at least {fewest_in_service}",
        stopped_at.elapsed()
    );
    let termination = lab.termination_activity("web-asg", &victim.instance_id);
    assert!(
        termination
            .cause
            .contains("ELB system health check failure"),
        "{termination:?}"
    );
    // The stopped process is killed at the end of its stop timeout, and the group is 2 again.
    lab.wait_for(
        "web-asg",
        Duration::from_secs(30),
        "back to 2 instances",
        |g| g.instances.len() == 2 && in_state(g, "InService").len() == 2,
    );
}

#[test]
fn an_image_that_exits_at_once_is_relaunched_with_a_back_off() {
    if !running_as_root() {
        return;
    }
    // The template's command is `false`: every instance exits as soon as it starts.
    let lab = AsgLab::up("asg-crash", &config("/bin/false", (1, 1, 1), "5s", ""));
    let watched = Duration::from_secs(25);
    let started = Instant::now();
    let mut wait_shown = None;
    while started.elapsed() < watched {
        let g = lab.group("web-asg");
        if wait_shown.is_none() && g.launches_wait_until.is_some() {
            wait_shown = g.launches_wait_until.clone();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let launches: Vec<_> = lab
        .activities("web-asg")
        .into_iter()
        .filter(|a| a.description.starts_with("Launching a new instance"))
        .collect();
    println!(
        "measured: an image that exits at once: {} launches in {watched:?} (a retry at once, then 10 s, 20 s ... apart)",
        launches.len()
    );
    // At most the first, its retry at once and one 10 s later (about one every 2 s without
    // the back-off).
    assert!(
        (1..=3).contains(&launches.len()),
        "{} launches: {launches:#?}",
        launches.len()
    );
    assert!(wait_shown.is_some(), "asg describe never showed the wait");
    assert_eq!(in_state(&lab.group("web-asg"), "InService").len(), 0);
}
