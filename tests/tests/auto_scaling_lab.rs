//! Auto scaling groups with real processes and real XDP: a group of `local` instances
//! (`instance-server`) behind a VIP in the namespace lab. Each test prints what it measured
//! (`measured: ...`), the figures the issue asks for.
//!
//! Needs root (namespaces, cgroups, XDP): skipped otherwise, like the other lab tests.

use std::{
    collections::BTreeSet,
    process::Stdio,
    time::{Duration, Instant},
};

use tests::auto_scaling_lab::{
    AsgLab, config, finish_downloads, in_state, instance_ids, running_as_root, start_downloads,
};
use xtask::lab::VIP4;

const SERVER: &str = env!("CARGO_BIN_EXE_instance-server");

#[test]
fn instances_serve_through_the_vip_and_a_killed_one_is_replaced() {
    if !running_as_root() {
        return;
    }
    let lab = AsgLab::up("asg-heal", &config(SERVER, (1, 2, 4), "5s", ""));
    let (group, took) = lab.wait_in_service("web-asg", 2);
    println!("measured: 2 instances in service {took:?} after the agent started");
    let ids = instance_ids(&group);
    for id in &ids {
        lab.wait_until_serving(id, Duration::from_secs(30));
    }
    // Every request is answered, by both instances.
    let answers = lab.answers(20);
    assert_eq!(answers.get("failed"), None, "{answers:?}");
    assert_eq!(answers.len(), 2, "{answers:?}");

    // kill -9 one instance: the group replaces it, and the new one serves.
    let victim = &group.instances[0];
    let pid = victim.pid.expect("a local instance's pid");
    let (new, killed_at) =
        lab.kill_and_wait_for_replacement("web-asg", &victim.instance_id, pid, &ids, 2);
    lab.wait_until_serving(&new, Duration::from_secs(30));
    let replaced_in = killed_at.elapsed();
    println!(
        "measured: a killed instance's replacement served through the VIP {replaced_in:?} after the kill"
    );
    let answers = lab.answers(20);
    assert!(!answers.contains_key(&victim.instance_id), "{answers:?}");
    // The history says why, in EC2's words.
    let termination = lab.termination_activity("web-asg", &victim.instance_id);
    assert!(
        termination.cause.contains("EC2 health check"),
        "{termination:?}"
    );
    assert_eq!(termination.status, "Successful");

    // set-desired 3: the time until the new instance serves through the VIP.
    let after = lab.group("web-asg");
    let asked = Instant::now();
    lab.cli(&["asg", "set-desired", "web-asg", "3"]);
    let (grown, _) = lab.wait_for("web-asg", Duration::from_secs(30), "3 in service", |g| {
        in_state(g, "InService").len() == 3
    });
    let before: BTreeSet<&str> = in_state(&after, "InService").into_iter().collect();
    let third = in_state(&grown, "InService")
        .into_iter()
        .find(|id| !before.contains(id))
        .expect("a new instance")
        .to_owned();
    lab.wait_until_serving(&third, Duration::from_secs(30));
    println!(
        "measured: set-desired 2 -> 3: the new instance served through the VIP {:?} after the request",
        asked.elapsed()
    );
    // Prometheus sees the group too.
    let metrics = lab.cli(&["metrics"]);
    for line in [
        "lb_asg_desired_capacity{group=\"web-asg\"} 3",
        "lb_asg_instances{group=\"web-asg\",lifecycle_state=\"InService\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} not in /metrics");
    }
    let launch = lab
        .activities("web-asg")
        .into_iter()
        .find(|a| a.description.ends_with(&third))
        .expect("its launch");
    assert!(
        launch
            .cause
            .contains("a user request explicitly set group desired capacity changing the desired capacity from 2 to 3"),
        "{launch:?}"
    );
}

#[test]
fn scale_in_drains_a_long_download_to_its_last_byte_and_then_stops_the_instance() {
    if !running_as_root() {
        return;
    }
    // A long deregistration delay: the instance must stop when its download ends, not then.
    let lab = AsgLab::up("asg-drain", &config(SERVER, (1, 2, 2), "120s", ""));
    let (group, _) = lab.wait_in_service("web-asg", 2);
    for i in &group.instances {
        lab.wait_until_serving(&i.instance_id, Duration::from_secs(30));
    }
    // Two downloads of 8 s, one connection each: round robin gives each instance one, so
    // whichever the scale-in chooses has a download in flight.
    let (seconds, rate) = (8, 50_000);
    let downloads = start_downloads(&lab, 80, 2, seconds as u64, rate as u64);
    // Both under way before the scale-in.
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    lab.cli(&["asg", "set-desired", "web-asg", "1"]);
    let (shrunk, _) = lab.wait_for("web-asg", Duration::from_secs(5), "draining one", |g| {
        in_state(g, "Terminating").len() + in_state(g, "Terminating:Proceed").len() == 1
    });
    let leaving = shrunk
        .instances
        .iter()
        .find(|i| i.lifecycle_state.starts_with("Terminating"))
        .expect("one leaves")
        .instance_id
        .clone();
    // New requests no longer reach it while it drains.
    let answers = lab.answers(10);
    assert!(!answers.contains_key(&leaving), "{answers:?}");
    assert_eq!(answers.get("failed"), None, "{answers:?}");

    let served: Vec<(String, bool)> = finish_downloads(downloads, seconds * rate);
    // Every byte, and the right bytes.
    assert!(served.iter().all(|(_, whole)| *whole), "{served:?}");
    let served_by: Vec<String> = served.into_iter().map(|(instance, _)| instance).collect();
    assert!(
        served_by.contains(&leaving),
        "the download to the leaving instance: {served_by:?} (leaving {leaving})"
    );
    // It stops once its download ended: long before the 120 s delay.
    let (_, _) = lab.wait_for(
        "web-asg",
        Duration::from_secs(30),
        "the leaving instance gone",
        |g| g.instances.iter().all(|i| i.instance_id != leaving),
    );
    let gone_after = asked.elapsed();
    assert!(
        gone_after < Duration::from_secs(seconds as u64 + 20),
        "stopped {gone_after:?} after the scale-in"
    );
    println!(
        "measured: scale-in 2 -> 1 with a {seconds} s download in flight on the leaving instance: 0 bytes lost, instance stopped {gone_after:?} after the request"
    );
}

#[test]
fn an_agent_restart_keeps_every_instance_running_and_adopts_them() {
    if !running_as_root() {
        return;
    }
    let mut lab = AsgLab::up("asg-adopt", &config(SERVER, (2, 2, 3), "5s", ""));
    let (before, _) = lab.wait_in_service("web-asg", 2);
    let launches = lab.activities("web-asg").len();
    // A probe through the VIP while the agent restarts: the data plane and the instances
    // keep serving; the proxy is the agent's, so requests fail only while it is down.
    lab.restart_agent();
    let after = lab.group("web-asg");
    let pids = |g: &lb_agent::protocol::scaling::AsgView| -> Vec<(String, Option<u32>)> {
        let mut v: Vec<_> = g
            .instances
            .iter()
            .map(|i| (i.instance_id.clone(), i.pid))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        pids(&after),
        pids(&before),
        "the same instances, the same processes"
    );
    assert_eq!(in_state(&after, "InService").len(), 2, "{after:#?}");
    // Nothing launched or terminated over the next seconds.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(pids(&lab.group("web-asg")), pids(&before));
    assert_eq!(lab.activities("web-asg").len(), launches, "no new activity");
    for i in &before.instances {
        lab.wait_until_serving(&i.instance_id, Duration::from_secs(30));
    }
    println!(
        "measured: agent restart: {} instances adopted, 0 launched",
        before.instances.len()
    );
}

#[test]
fn cpu_load_scales_out_under_target_tracking_and_its_end_scales_in_with_drain() {
    if !running_as_root() {
        return;
    }
    // Target tracking on CPU at 40% with 10 s datapoints (AWS's high-resolution period):
    // 3 high ones scale out, 15 low ones scale in.
    let policy = r#"default_instance_warmup = "10s"
[[auto_scaling_group.policy]]
name = "cpu40"
type = "target_tracking"
metric = "cpu_utilization"
target = 40.0
period = "10s"
"#;
    let lab = AsgLab::up("asg-cpu", &config(SERVER, (1, 1, 3), "300s", policy));
    let (group, _) = lab.wait_in_service("web-asg", 1);
    lab.wait_until_serving(&group.instances[0].instance_id, Duration::from_secs(30));
    // Load: 4 clients asking for 200 ms of CPU each, back to back, on an instance of half a
    // core: it runs at its limit. Bounded: at most 180 s, stopped once the group has grown.
    let stop = lab.lab.log_dir().join("stop-load");
    let load = format!(
        "import threading, time, os, urllib.request\n\
         def run():\n\
         \x20   end = time.time() + 180\n\
         \x20   while time.time() < end and not os.path.exists('{stop}'):\n\
         \x20       try: urllib.request.urlopen('http://{VIP4}/burn?ms=200', timeout=10).read()\n\
         \x20       except Exception: time.sleep(0.1)\n\
         ts = [threading.Thread(target=run) for _ in range(4)]\n\
         [t.start() for t in ts]\n\
         [t.join() for t in ts]\n",
        stop = stop.display()
    );
    let mut loader = lab
        .lab
        .cmd(lab.lab.client(), "python3")
        .args(["-c", &load])
        .spawn()
        .expect("the load");
    let loaded = Instant::now();
    let (grown, _) = lab.wait_for("web-asg", Duration::from_secs(150), "scaled out", |g| {
        g.desired_capacity > 1
    });
    let reaction = loaded.elapsed();
    println!(
        "measured: CPU load -> scale-out decided {reaction:?} after the load began (desired {} -> {}); alarms: {:?}",
        group.desired_capacity,
        grown.desired_capacity,
        grown
            .alarms
            .iter()
            .map(|a| (&a.name, &a.state, a.last_value))
            .collect::<Vec<_>>()
    );
    let (grown, _) = lab.wait_for(
        "web-asg",
        Duration::from_secs(60),
        "the new instances in service",
        |g| in_state(g, "InService").len() as u32 == g.desired_capacity,
    );
    // The launches say why, in EC2's words.
    let cause = lab
        .activities("web-asg")
        .into_iter()
        .find(|a| a.description.starts_with("Launching"))
        .map(|a| a.cause)
        .unwrap_or_default();
    assert!(
        cause.contains(
            "TargetTracking-web-asg-AlarmHigh-cpu40 in state ALARM triggered policy cpu40"
        ),
        "{cause}"
    );
    for i in &grown.instances {
        lab.wait_until_serving(&i.instance_id, Duration::from_secs(30));
    }
    println!(
        "measured: scale-out under load: {} instances serving {:?} after the load began",
        grown.instances.len(),
        loaded.elapsed()
    );
    // The load ends; long downloads run across the scale-in that follows (15 low datapoints
    // of 10 s), one to each instance or more.
    std::fs::write(&stop, b"").expect("stop the load");
    let _ = loader.wait();
    let ended = Instant::now();
    let (seconds, rate) = (240, 1000);
    let downloads = start_downloads(&lab, 80, 3 * grown.instances.len(), seconds, rate);
    let (shrunk, _) = lab.wait_for("web-asg", Duration::from_secs(230), "scaled in", |g| {
        g.desired_capacity < grown.desired_capacity
    });
    println!(
        "measured: scale-in decided {:?} after the load ended (desired {} -> {})",
        ended.elapsed(),
        grown.desired_capacity,
        shrunk.desired_capacity
    );
    let leaving: BTreeSet<String> = lab
        .group("web-asg")
        .instances
        .iter()
        .filter(|i| i.lifecycle_state.starts_with("Terminating"))
        .map(|i| i.instance_id.clone())
        .collect();
    assert!(!leaving.is_empty(), "{shrunk:#?}");
    let served = finish_downloads(downloads, (seconds * rate) as usize);
    assert!(served.iter().all(|(_, whole)| *whole), "{served:?}");
    let served_by: Vec<String> = served.into_iter().map(|(instance, _)| instance).collect();
    let cut = 0; // every download was checked whole above
    let on_leaving = served_by.iter().filter(|i| leaving.contains(*i)).count();
    assert!(
        on_leaving > 0,
        "no download on a leaving instance: {served_by:?} {leaving:?}"
    );
    // Drained, the leaving instances go (long before the 300 s delay).
    lab.wait_for(
        "web-asg",
        Duration::from_secs(30),
        "the leaving instances gone",
        |g| {
            g.instances
                .iter()
                .all(|i| !leaving.contains(&i.instance_id))
        },
    );
    println!(
        "measured: scale-in with drain: {on_leaving} downloads on {} leaving instances, {cut} connections broken",
        leaving.len()
    );
}

#[test]
fn an_instance_refresh_to_version_2_keeps_a_probe_loop_through_the_vip_error_free() {
    if !running_as_root() {
        return;
    }
    let v1 = config(SERVER, (2, 2, 2), "5s", "").replace(
        r#"launch_template = { name = "web" }"#,
        r#"launch_template = { name = "web", version = "$Latest" }"#,
    );
    let lab = AsgLab::up("asg-refresh", &v1);
    let (before, _) = lab.wait_in_service("web-asg", 2);
    for i in &before.instances {
        lab.wait_until_serving(&i.instance_id, Duration::from_secs(30));
        assert_eq!(i.launch_template_version, Some(1));
    }
    // Version 2 of the template (a changed environment), the group on `$Latest`.
    let version_2 = "\n[[launch_template.version]]\ncommand = [\"SERVER\", \"--port\", \"8080\"]\ninstance_type = \"small\"\nports = [8080]\nstop_timeout = \"1s\"\nenvironment = { RELEASE = \"2\" }\n"
        .replace("SERVER", SERVER);
    let v2 = v1.replacen(
        "\n[[auto_scaling_group]]",
        &format!("{version_2}\n[[auto_scaling_group]]"),
        1,
    );
    lab.write_config(&v2);
    lab.cli(&["reload"]);
    // A probe loop through the VIP for the whole refresh: a request every 50 ms.
    let stop = lab.lab.log_dir().join("stop-probe");
    let probe = format!(
        "import time, os, urllib.request\n\
         ok = failed = 0\n\
         end = time.time() + 240\n\
         while time.time() < end and not os.path.exists('{stop}'):\n\
         \x20   try:\n\
         \x20       urllib.request.urlopen('http://{VIP4}/', timeout=2).read(); ok += 1\n\
         \x20   except Exception as e:\n\
         \x20       failed += 1; print('failed:', e, flush=True)\n\
         \x20   time.sleep(0.05)\n\
         print('ok', ok, 'failed', failed, flush=True)\n",
        stop = stop.display()
    );
    let prober = lab
        .lab
        .cmd(lab.lab.client(), "python3")
        .args(["-c", &probe])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the probe loop");
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    lab.cli(&[
        "asg",
        "start-refresh",
        "web-asg",
        "--min-healthy-percentage",
        "50",
        "--instance-warmup",
        "3",
    ]);
    let (after, took) = lab.wait_for("web-asg", Duration::from_secs(120), "refreshed", |g| {
        g.instance_refresh
            .as_ref()
            .is_some_and(|r| r.status == "Successful")
            && in_state(g, "InService").len() == 2
            && g.instances.len() == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, b"").expect("stop the probe");
    let out = prober.wait_with_output().expect("the probe loop ends");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default().to_owned();
    println!("measured: instance refresh 1 -> 2 of 2 instances: {took:?}; probe loop: {last}");
    assert!(
        after
            .instances
            .iter()
            .all(|i| i.launch_template_version == Some(2)
                && !before
                    .instances
                    .iter()
                    .any(|b| b.instance_id == i.instance_id)),
        "{after:#?}"
    );
    assert!(last.ends_with("failed 0"), "{text}");
    let ok: usize = last
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ok > 20, "the probe ran: {text}");
    assert!(started.elapsed() < Duration::from_secs(120));
}
