//! More auto scaling groups with real processes and real XDP: a group's instances behind an
//! L4 (`tcp`) listener, a group on the `exec` provider driven through the engine by a hook of
//! the test's own, and a one-off scheduled action. Each test prints what it measured
//! (`measured: ...`).
//!
//! Needs root (namespaces, cgroups, XDP): skipped otherwise, like the other lab tests.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tests::auto_scaling_lab::{
    AsgLab, L4_PORT, config, finish_downloads, in_state, instance_ids, l4_config, running_as_root,
    start_downloads,
};

const SERVER: &str = env!("CARGO_BIN_EXE_instance-server");

#[test]
fn instances_behind_an_l4_listener_get_traffic_heal_and_drain_on_scale_in() {
    if !running_as_root() {
        return;
    }
    let lab = AsgLab::up("asg-l4", &l4_config(SERVER, (1, 2, 2), "60s", ""));
    let (group, took) = lab.wait_in_service("web-asg", 2);
    println!("measured: L4: 2 instances in service {took:?} after the agent started");
    let ids = instance_ids(&group);
    for id in &ids {
        let took = lab.wait_until_serving_on(L4_PORT, id, Duration::from_secs(30));
        println!("measured: L4: {id} answered through VIP:{L4_PORT} {took:?} after in service");
    }
    // Every connection through the XDP program is answered, by both instances.
    let answers = lab.answers_on(L4_PORT, 40);
    assert_eq!(answers.get("failed"), None, "{answers:?}");
    assert_eq!(answers.len(), 2, "{answers:?}");

    // kill -9 one instance: its replacement gets L4 traffic.
    let victim = &group.instances[0];
    let pid = victim.pid.expect("a local instance's pid");
    let (new, killed_at) =
        lab.kill_and_wait_for_replacement("web-asg", &victim.instance_id, pid, &ids, 2);
    lab.wait_until_serving_on(L4_PORT, &new, Duration::from_secs(30));
    println!(
        "measured: L4: a killed instance's replacement served through VIP:{L4_PORT} {:?} after the kill",
        killed_at.elapsed()
    );
    let answers = lab.answers_on(L4_PORT, 40);
    assert_eq!(answers.get("failed"), None, "{answers:?}");
    assert!(!answers.contains_key(&victim.instance_id), "{answers:?}");
    assert_eq!(answers.len(), 2, "{answers:?}");

    // Scale-in 2 -> 1 with L4 downloads in flight: Maglev spreads 8 connections over both
    // instances (all 8 on one: 1 chance in 128), so the leaving one has some.
    let (seconds, rate) = (8u64, 50_000u64);
    let downloads = start_downloads(&lab, L4_PORT, 8, seconds, rate);
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    lab.cli(&["asg", "set-desired", "web-asg", "1"]);
    let (shrunk, _) = lab.wait_for("web-asg", Duration::from_secs(5), "draining one", |g| {
        g.instances
            .iter()
            .any(|i| i.lifecycle_state.starts_with("Terminating"))
    });
    let leaving = shrunk
        .instances
        .iter()
        .find(|i| i.lifecycle_state.starts_with("Terminating"))
        .expect("one leaves")
        .instance_id
        .clone();
    // New connections no longer reach it while it drains.
    let answers = lab.answers_on(L4_PORT, 16);
    assert!(!answers.contains_key(&leaving), "{answers:?}");
    assert_eq!(answers.get("failed"), None, "{answers:?}");

    let served = finish_downloads(downloads, (seconds * rate) as usize);
    let broken: Vec<&(String, bool)> = served.iter().filter(|(_, whole)| !whole).collect();
    let on_leaving = served.iter().filter(|(i, _)| *i == leaving).count();
    println!(
        "measured: L4 scale-in 2 -> 1: {on_leaving} of {} downloads on the leaving instance, {} connections broken",
        served.len(),
        broken.len()
    );
    assert!(broken.is_empty(), "downloads cut: {served:?}");
    assert!(
        on_leaving > 0,
        "no download on the leaving instance {leaving}: {served:?}"
    );
    // Once its flows ended it goes, before the 60 s delay is over.
    lab.wait_for(
        "web-asg",
        Duration::from_secs(75),
        "the leaving instance gone",
        |g| g.instances.iter().all(|i| i.instance_id != leaving),
    );
    println!(
        "measured: L4 scale-in: the leaving instance stopped {:?} after the request (downloads of {seconds} s, delay 60 s)",
        asked.elapsed()
    );
}

/// The exec hook the test writes: it "launches" each instance as the template's command run
/// in the lab's backend namespace (`ip netns exec`), on the address the group chose for it,
/// which it adds to the backend's `eth0` (the load balancer reaches it over the lab's
/// bridge); it keeps what it started in a JSON file, under a lock (the engine calls it from
/// several threads at once), and logs every request.
const HOOK: &str = r#"#!/usr/bin/env python3
import fcntl, json, os, signal, subprocess, sys, time
NS, STATE, LOGS = "@NS@", "@STATE@", "@LOGS@"

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def ip(*args):
    subprocess.run(["ip", "-n", NS, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

request = json.load(sys.stdin)
with open(STATE + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    state = json.load(open(STATE)) if os.path.exists(STATE) else {}
    with open(os.path.join(LOGS, "requests.log"), "a") as log:
        log.write(json.dumps(request) + "\n")
    action = request["action"]
    if action == "launch":
        inst = request["instance"]
        iid, address = inst["instance_id"], inst["address"]
        ip("addr", "add", address + "/32", "dev", "eth0")
        env = dict(os.environ)
        env.update(inst["environment"])
        out = open(os.path.join(LOGS, iid + ".log"), "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", NS, *inst["image"]["command"], "--listen", address],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        state[iid] = {"pid": proc.pid, "address": address}
        answer = {"instance_id": iid, "address": address, "data": {"pid": proc.pid}}
    elif action == "describe":
        answer = {"instances": [
            {"instance_id": i["instance_id"], "running": alive(state[i["instance_id"]]["pid"]),
             "pid": state[i["instance_id"]]["pid"]}
            for i in request["instances"] if i["instance_id"] in state]}
    elif action == "terminate":
        iid = request["instance_id"]
        known = state.pop(iid, None)
        if known is not None:
            pid = known["pid"]
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
                end = time.time() + request["stop_timeout_seconds"]
                while alive(pid) and time.time() < end:
                    time.sleep(0.05)
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            ip("addr", "del", known["address"] + "/32", "dev", "eth0")
        answer = {"instance_id": iid}
    else:
        answer = {"error": "unknown action " + action}
    with open(STATE, "w") as f:
        json.dump(state, f)
print(json.dumps(answer))
"#;

/// The processes the hook started, killed on drop (the lab knows nothing of them).
struct HookInstances {
    dir: PathBuf,
}

impl HookInstances {
    fn state(&self) -> serde_json::Map<String, serde_json::Value> {
        std::fs::read_to_string(self.dir.join("state.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    /// The actions of the requests the hook got, in order.
    fn actions(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("requests.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|r| r["action"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for HookInstances {
    fn drop(&mut self) {
        for (_, instance) in self.state() {
            if let Some(pid) = instance["pid"].as_i64() {
                // SAFETY: a plain kill(2) of a process the hook started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the hook for backend namespace `ns` in `dir`; its path.
fn write_hook(dir: &Path, ns: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).expect("the hook's directory");
    let hook = dir.join("hook");
    let text = HOOK
        .replace("@NS@", ns)
        .replace("@STATE@", &dir.join("state.json").display().to_string())
        .replace("@LOGS@", &dir.display().to_string());
    std::fs::write(&hook, text).expect("the hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    hook
}

/// The exec group's addresses: on the lab's bridge network (198.18.0.0/24), above every lab
/// host (.1, .10, .21-.30...), so the load balancer reaches them as it reaches a backend.
const EXEC_SUBNET: &str = "198.18.0.192/26";

#[test]
fn an_exec_group_launches_serves_scales_in_and_heals_through_its_hook() {
    if !running_as_root() {
        return;
    }
    let hook_dir = std::env::temp_dir().join(format!("lb-asg-exec-hook-{}", std::process::id()));
    // Dropped after the lab (declared before it): the agent stops first, then what the hook
    // started is killed.
    let instances = HookInstances {
        dir: hook_dir.clone(),
    };
    let lab_config = |ns: &str| {
        let hook = write_hook(&hook_dir, ns);
        config(SERVER, (1, 2, 3), "5s", "").replace(
            "subnet = \"198.18.8.0/24\"",
            &format!(
                "subnet = \"{EXEC_SUBNET}\"\nprovider = \"exec\"\nexec_hook = \"{}\"",
                hook.display()
            ),
        )
    };
    // The backend's namespace is known once the lab is up: the agent starts on a config
    // without the group, then reloads with it.
    let idle = config(SERVER, (0, 0, 1), "5s", "").replace("name = \"web-asg\"", "name = \"idle\"");
    let lab = AsgLab::up("asg-exec", &idle);
    let ns = lab.lab.backends()[0].ns.clone();
    std::fs::write(tests::lab_traffic::config_path(&lab.lab), lab_config(&ns))
        .expect("the exec group's config");
    let asked = Instant::now();
    lab.cli(&["reload"]);
    let (group, took) = lab.wait_for("web-asg", Duration::from_secs(60), "2 in service", |g| {
        g.provider == "exec" && in_state(g, "InService").len() == 2
    });
    println!("measured: exec: 2 instances in service {took:?} after the reload");
    let ids = instance_ids(&group);
    // Launched through the hook, each on an address of its own (the hook put it on the
    // backend), registered on the template's port.
    let launched = instances.state();
    for id in &ids {
        assert!(
            launched.contains_key(id),
            "{id} not the hook's: {launched:?}"
        );
        let instance = group
            .instances
            .iter()
            .find(|i| &i.instance_id == id)
            .expect("listed");
        assert_eq!(
            launched[id]["address"].as_str(),
            Some(instance.address.to_string().as_str())
        );
        lab.wait_until_serving(id, Duration::from_secs(30));
    }
    println!(
        "measured: exec: both instances served through the VIP {:?} after the reload",
        asked.elapsed()
    );
    let answers = lab.answers(20);
    assert_eq!(answers.get("failed"), None, "{answers:?}");
    assert_eq!(answers.len(), 2, "{answers:?}");

    // An instance the hook reports not running is replaced (through the hook).
    let victim = group.instances[0].instance_id.clone();
    let pid = launched[&victim]["pid"].as_i64().expect("a pid");
    let (replacement, killed) =
        lab.kill_and_wait_for_replacement("web-asg", &victim, pid as u32, &ids, 2);
    lab.wait_until_serving(&replacement, Duration::from_secs(30));
    println!(
        "measured: exec: a killed instance's replacement served through the VIP {:?} after the kill",
        killed.elapsed()
    );
    let termination = lab
        .activities("web-asg")
        .into_iter()
        .find(|a| a.description == format!("Terminating instance: {victim}"))
        .expect("the dead instance's termination is an activity");
    assert!(
        termination.cause.contains("EC2 health check"),
        "{termination:?}"
    );
    assert!(
        !instances.state().contains_key(&victim),
        "the hook terminated it"
    );

    // set-desired 1: one instance is terminated through the hook.
    let asked = Instant::now();
    lab.cli(&["asg", "set-desired", "web-asg", "1"]);
    let (shrunk, _) = lab.wait_for("web-asg", Duration::from_secs(30), "1 left", |g| {
        g.instances.len() == 1 && in_state(g, "InService").len() == 1
    });
    let left: BTreeSet<String> = shrunk
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    let kept: BTreeSet<String> = instances.state().keys().cloned().collect();
    assert_eq!(kept, left, "the hook runs exactly the group's instance");
    println!(
        "measured: exec: set-desired 2 -> 1 terminated through the hook {:?} after the request",
        asked.elapsed()
    );
    let answers = lab.answers(10);
    assert_eq!(answers.get("failed"), None, "{answers:?}");
    assert_eq!(answers.len(), 1, "{answers:?}");
    let actions = instances.actions();
    let count = |what: &str| actions.iter().filter(|a| *a == what).count();
    assert_eq!(count("launch"), 3, "{actions:?}");
    assert_eq!(count("terminate"), 2, "{actions:?}");
    assert!(count("describe") > 0, "{actions:?}");
}

#[test]
fn a_one_off_scheduled_action_grows_the_group_at_its_time() {
    if !running_as_root() {
        return;
    }
    let lab = AsgLab::up("asg-sched", &config(SERVER, (1, 1, 3), "5s", ""));
    lab.wait_in_service("web-asg", 1);
    // The action is added by a reload once the agent runs (its start can take longer than
    // "a few seconds"): 8 s from now, to the second, in UTC.
    let at = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(8))
        .expect("a time")
        .round(jiff::Unit::Second)
        .expect("rounded");
    let action = format!(
        "[[auto_scaling_group.scheduled_action]]\nname = \"grow\"\nstart_time = \"{}\"\ndesired_capacity = 2\n",
        at.strftime("%Y-%m-%dT%H:%M:%SZ")
    );
    std::fs::write(
        tests::lab_traffic::config_path(&lab.lab),
        config(SERVER, (1, 1, 3), "5s", &action),
    )
    .expect("the config with the action");
    lab.cli(&["reload"]);
    // Nothing happens before its time.
    let before = lab.group("web-asg");
    assert_eq!(before.desired_capacity, 1, "{before:#?}");
    let (grown, _) = lab.wait_for("web-asg", Duration::from_secs(30), "grown", |g| {
        g.desired_capacity == 2
    });
    let seen = jiff::Timestamp::now();
    assert!(
        seen >= at,
        "desired 2 at {seen}, before the action's time {at}"
    );
    assert_eq!((grown.min_size, grown.max_size), (1, 3), "{grown:#?}");
    // The launch's activity is kept once the provider's launch returns (a moment after the
    // capacity changed): polled for, 10 s at most.
    let polled = Instant::now();
    let launch = loop {
        let activities = lab.activities("web-asg");
        let found = activities.into_iter().find(|a| {
            a.description.starts_with("Launching")
                && a.cause
                    .contains("a scheduled action update of AutoScalingGroup constraints")
        });
        if let Some(launch) = found {
            break launch;
        }
        assert!(
            polled.elapsed() < Duration::from_secs(10),
            "no launch for the scheduled action: {:#?}",
            lab.activities("web-asg")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        launch.cause.contains(
            "a scheduled action update of AutoScalingGroup constraints to min: 1, max: 3, desired: 2 changing the desired capacity from 1 to 2"
        ) && launch.cause.contains(
            "an instance was started in response to a difference between desired and actual capacity, increasing the capacity from 1 to 2"
        ),
        "{launch:?}"
    );
    let started: jiff::Timestamp = launch.start_time.parse().expect("an RFC 3339 time");
    let delay = started.duration_since(at);
    println!(
        "measured: scheduled action at {at}: launch started {delay:?} after its time (seen by a poll {:?} after)",
        seen.duration_since(at)
    );
    assert!(
        delay >= jiff::SignedDuration::ZERO && delay < jiff::SignedDuration::from_secs(3),
        "launch at {started}, action at {at}"
    );
    let (grown, _) = lab.wait_for("web-asg", Duration::from_secs(30), "2 in service", |g| {
        in_state(g, "InService").len() == 2
    });
    for i in &grown.instances {
        lab.wait_until_serving(&i.instance_id, Duration::from_secs(30));
    }
    println!(
        "measured: scheduled action: 2 instances serving through the VIP {:?} after its time",
        jiff::Timestamp::now().duration_since(at)
    );
}
