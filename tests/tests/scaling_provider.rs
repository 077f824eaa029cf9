//! The instance providers on real namespaces, cgroups and processes: a `local` instance serves
//! HTTP to the load balancer's namespace, carries its type's limits, enforces its inbound
//! rules, stops on SIGTERM (or is killed after its stop timeout) leaving nothing behind, runs
//! its user data, outlives the agent that launched it and is adopted by a new one. Needs
//! root; each test makes and removes its own namespaces and instances. (The `exec` provider's
//! tests are in `scaling_exec_provider.rs`.)

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_agent::scaling::provider::{
    InstanceRecord, InstanceSpec, Provider, ProviderDetail, ProviderError,
    local::{
        Layout, LinkHook, LocalConfig, LocalDetail, LocalProvider, lb_interface_name,
        namespace_name,
    },
};
use tests::scaling::{self, instance_id, python};
use xtask::lab::netns::{self, NetNs, run_inside};

/// A load balancer's namespace, a state directory and a local provider using both; on drop
/// every instance the provider knows is terminated and the directory removed.
struct Fixture {
    provider: LocalProvider,
    config: LocalConfig,
    // After `provider`'s instances are gone (Drop below), the namespace goes.
    lb: NetNs,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let lb = NetNs::create(&format!("lbt-{tag}-{}", std::process::id())).unwrap();
        let config = LocalConfig {
            // An instance id is unique to this process and call.
            state_dir: std::env::temp_dir().join(format!("lb-scaling-{tag}-{}", instance_id())),
            lb_namespace: Some(lb.name().to_owned()),
            cgroup_parent: None,
        };
        let provider = LocalProvider::new(config.clone()).unwrap();
        Fixture {
            provider,
            config,
            lb,
        }
    }

    /// A spec for instance `id` at 198.18.8.`host` running `command`, allowing TCP 8080 from
    /// the lab's range.
    fn spec(&self, id: &str, host: u8, command: &[&str]) -> InstanceSpec {
        scaling::spec(
            id,
            2,
            command.iter().map(|s| (*s).to_owned()).collect(),
            (
                format!("198.18.8.{host}").parse().unwrap(),
                "198.18.8.1".parse().unwrap(),
            ),
            8080,
            &["198.18.0.0/15"],
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Instances a test's helper launched but the test never adopted (it failed first)
        // are found by their records.
        if let Ok(saved) = self.provider.saved_records() {
            let _ = self.provider.adopt(&saved);
        }
        if let Ok(statuses) = self.provider.describe() {
            for status in statuses {
                if let Err(e) = self.provider.terminate(&status.instance_id, Duration::ZERO) {
                    eprintln!("cleaning up {}: {e}", status.instance_id);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.config.state_dir);
    }
}

fn local_detail(record: &InstanceRecord) -> &LocalDetail {
    match &record.detail {
        ProviderDetail::Local(detail) => detail,
        other => panic!("not a local record: {other:?}"),
    }
}

/// `GET /` to `addr` from namespace `ns`, one attempt (1 s to connect, 3 s to answer); the
/// response's status line.
fn http_get(ns: &str, addr: SocketAddr) -> Result<String, String> {
    run_inside(ns, || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response).into_owned();
        Ok(text.lines().next().unwrap_or_default().to_owned())
    })
    .map_err(|e| format!("{e:#}"))
}

/// `http_get` until it answers, 20 s at most.
fn wait_http(ns: &str, addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(ns, addr) {
            Ok(line) => return line,
            Err(e) if Instant::now() >= deadline => panic!("{addr} never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits until `check` holds, `limit` at most; whether it did.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// What is left of an instance on the machine: its namespace, its LB-side veth, its cgroup
/// directories, its process.
fn leftovers(fixture: &Fixture, id: &str, detail: &LocalDetail) -> Vec<String> {
    let mut left = Vec::new();
    if netns::list().unwrap().contains(&namespace_name(id)) {
        left.push(format!("namespace {}", namespace_name(id)));
    }
    if fixture
        .lb
        .ip(&["link", "show", &lb_interface_name(id)])
        .is_ok()
    {
        left.push(format!("veth {}", lb_interface_name(id)));
    }
    for dir in &detail.cgroups {
        if dir.path.exists() {
            left.push(format!("cgroup {}", dir.path.display()));
        }
    }
    // A zombie has exited: only its parent (here the test, as the agent that launched it;
    // init after an agent restart) has yet to collect its status.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", detail.pid)).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|at| stat[at + 1..].split_whitespace().next());
    if state.is_some_and(|s| s != "Z" && s != "X") {
        left.push(format!("process {}", detail.pid));
    }
    left
}

#[test]
fn a_local_instance_serves_http_to_the_load_balancer_within_its_types_limits() {
    let fixture = Fixture::new("serve");
    let id = instance_id();
    let python = python();
    let spec = fixture.spec(&id, 10, &[&python, "-m", "http.server", "8080"]);
    let record = fixture.provider.launch(&spec).unwrap();
    let detail = local_detail(&record).clone();

    let line = wait_http(fixture.lb.name(), "198.18.8.10:8080".parse().unwrap());
    assert!(line.contains(" 200 "), "{line}");

    // Its limits: half a core (50 ms per 100 ms period), 256 MiB.
    for dir in &detail.cgroups {
        if dir.controllers.contains("cpu") && dir.path.join("cpu.cfs_quota_us").exists() {
            assert_eq!(read(&dir.path.join("cpu.cfs_quota_us")), "50000");
            assert_eq!(read(&dir.path.join("cpu.cfs_period_us")), "100000");
        }
        if dir.controllers.contains("cpu") && dir.path.join("cpu.max").exists() {
            assert_eq!(read(&dir.path.join("cpu.max")), "50000 100000");
        }
        if dir.controllers.contains("memory") {
            let file = ["memory.limit_in_bytes", "memory.max"]
                .iter()
                .map(|f| dir.path.join(f))
                .find(|p| p.exists())
                .unwrap();
            assert_eq!(read(&file), (256u64 << 20).to_string());
        }
        // The server is in every one of its cgroups.
        let procs = read(&dir.path.join("cgroup.procs"));
        assert!(
            procs
                .split_whitespace()
                .any(|p| p == detail.pid.to_string()),
            "{} holds {procs:?}, not {}",
            dir.path.display(),
            detail.pid
        );
    }
    assert!(
        detail.cgroups.iter().any(|d| d.controllers.contains("cpu"))
            && detail
                .cgroups
                .iter()
                .any(|d| d.controllers.contains("memory")),
        "{:?}",
        detail.cgroups
    );

    // A session of its own: it does not go down with the agent's process group or terminal.
    // SAFETY: getsid(2) only reads.
    let sid = unsafe { libc::getsid(detail.pid as i32) };
    assert_eq!(sid, detail.pid as i32, "the instance leads its own session");

    let status = fixture.provider.describe().unwrap();
    assert_eq!(status.len(), 1);
    assert!(status[0].running);
    assert_eq!(status[0].pid, Some(detail.pid));
    assert_eq!(status[0].address, spec.address);
}

#[test]
fn a_local_instance_serves_over_ipv6_behind_its_rules() {
    let fixture = Fixture::new("six");
    let id = instance_id();
    let python = python();
    let mut spec = fixture.spec(
        &id,
        20,
        &[&python, "-m", "http.server", "--bind", "::", "8080"],
    );
    spec.address = "fd00:198:18:8::20".parse().unwrap();
    spec.gateway = "fd00:198:18:8::1".parse().unwrap();
    spec.inbound_rules[0].sources = vec!["fd00:198:18::/48".parse().unwrap()];
    fixture.provider.launch(&spec).unwrap();
    let line = wait_http(
        fixture.lb.name(),
        "[fd00:198:18:8::20]:8080".parse().unwrap(),
    );
    assert!(line.contains(" 200 "), "{line}");
}

#[test]
fn an_inbound_rule_blocks_a_port_it_does_not_list() {
    let fixture = Fixture::new("rules");
    let id = instance_id();
    let python = python();
    let both = format!("{python} -m http.server 8080 & exec {python} -m http.server 9090");
    let spec = fixture.spec(&id, 11, &["/bin/sh", "-c", &both]);
    fixture.provider.launch(&spec).unwrap();

    let line = wait_http(fixture.lb.name(), "198.18.8.11:8080".parse().unwrap());
    assert!(line.contains(" 200 "), "{line}");
    // 9090 serves (seen from inside the instance, over its loopback)...
    let inside = wait_http(&namespace_name(&id), "127.0.0.1:9090".parse().unwrap());
    assert!(inside.contains(" 200 "), "{inside}");
    // ...but its security group does not let the load balancer in.
    let blocked = http_get(fixture.lb.name(), "198.18.8.11:9090".parse().unwrap());
    assert!(
        blocked.is_err(),
        "9090 answered through the rules: {blocked:?}"
    );
}

#[test]
fn a_cpu_burner_shows_utilisation_near_its_types_limit() {
    let fixture = Fixture::new("cpu");
    let id = instance_id();
    let python = python();
    let mut spec = fixture.spec(&id, 12, &[&python, "-c", "while True: pass"]);
    // A fifth of a core: near its limit even on a busy machine, and far below one core.
    spec.instance_type.cpu = 0.2;
    fixture.provider.launch(&spec).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let first = fixture.provider.describe().unwrap();
    assert_eq!(first[0].cpu_utilization, None, "one sample is no rate");
    std::thread::sleep(Duration::from_secs(3));
    let second = fixture.provider.describe().unwrap();
    let used = second[0]
        .cpu_utilization
        .expect("a second sample gives a rate");
    // Throttled at its quota: not far above 100%, and busy: not far below.
    assert!((60.0..=115.0).contains(&used), "utilisation {used:.1}%");
}

#[test]
fn terminate_stops_the_instance_with_sigterm_and_removes_everything_made_for_it() {
    let fixture = Fixture::new("term");
    let id = instance_id();
    let marker = fixture.config.state_dir.join("got-term");
    let script = format!(
        "trap 'echo TERM > {}; exit 0' TERM; while true; do sleep 0.1; done",
        marker.display()
    );
    let spec = fixture.spec(&id, 13, &["/bin/sh", "-c", &script]);
    let record = fixture.provider.launch(&spec).unwrap();
    let detail = local_detail(&record).clone();
    assert!(
        leftovers(&fixture, &id, &detail).len() >= 3,
        "made nothing?"
    );

    let started = Instant::now();
    fixture
        .provider
        .terminate(&id, Duration::from_secs(10))
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM should end it at once, took {:?}",
        started.elapsed()
    );
    assert_eq!(read(&marker), "TERM");
    assert_eq!(leftovers(&fixture, &id, &detail), Vec::<String>::new());
    assert!(fixture.provider.describe().unwrap().is_empty());
    assert!(!detail.directory.join("record.json").exists());
}

#[test]
fn a_process_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let fixture = Fixture::new("kill");
    let id = instance_id();
    // The marker says the trap is set: a SIGTERM before it would end the shell at once.
    let ready = fixture.config.state_dir.join("trap-set");
    let script = format!(
        "trap '' TERM; touch {}; while true; do sleep 0.1; done",
        ready.display()
    );
    let spec = fixture.spec(&id, 14, &["/bin/sh", "-c", &script]);
    let record = fixture.provider.launch(&spec).unwrap();
    let detail = local_detail(&record).clone();
    assert!(eventually(Duration::from_secs(10), || ready.exists()));

    let started = Instant::now();
    fixture
        .provider
        .terminate(&id, Duration::from_millis(1500))
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "killed before its stop timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(leftovers(&fixture, &id, &detail), Vec::<String>::new());
}

#[test]
fn a_new_provider_adopts_a_running_instance_from_its_record() {
    let mut fixture = Fixture::new("adopt");
    let id = instance_id();
    let python = python();
    let spec = fixture.spec(&id, 15, &[&python, "-m", "http.server", "8080"]);
    let record = fixture.provider.launch(&spec).unwrap();
    let addr: SocketAddr = "198.18.8.15:8080".parse().unwrap();
    wait_http(fixture.lb.name(), addr);

    // The agent goes away: a new provider over the same state directory.
    fixture.provider = LocalProvider::new(fixture.config.clone()).unwrap();
    assert!(fixture.provider.describe().unwrap().is_empty());
    let saved = fixture.provider.saved_records().unwrap();
    assert_eq!(saved, vec![record.clone()]);
    let adopted = fixture.provider.adopt(&saved).unwrap();
    assert_eq!(adopted.len(), 1);
    assert!(adopted[0].running);
    assert_eq!(adopted[0].pid, Some(local_detail(&record).pid));
    assert!(http_get(fixture.lb.name(), addr).unwrap().contains(" 200 "));

    // A record whose start time is not the process's names a process that reused the pid:
    // not this instance, so not running.
    let mut reused = record.clone();
    if let ProviderDetail::Local(detail) = &mut reused.detail {
        detail.start_time += 1;
    }
    let other = LocalProvider::new(LocalConfig {
        state_dir: fixture.config.state_dir.join("other"),
        ..fixture.config.clone()
    })
    .unwrap();
    assert!(!other.adopt(&[reused]).unwrap()[0].running);

    // The adopted instance is the new provider's to stop.
    fixture
        .provider
        .terminate(&id, Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        leftovers(&fixture, &id, local_detail(&record)),
        Vec::<String>::new()
    );
}

#[test]
fn an_instance_outlives_the_agent_that_launched_it_and_a_new_one_adopts_it() {
    let mut fixture = Fixture::new("outlive");
    let id = instance_id();
    let python = python();
    let helper = std::process::Command::new(env!("CARGO_BIN_EXE_launch-and-exit"))
        .args(["--lb-namespace", fixture.lb.name(), "--state-dir"])
        .arg(&fixture.config.state_dir)
        .args([
            "--id",
            &id,
            "--address",
            "198.18.8.17",
            "--gateway",
            "198.18.8.1",
        ])
        .args(["--port", "8080", "--", &python, "-m", "http.server", "8080"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A process group of its own, as an agent started from a shell or a supervisor has.
        .process_group(0)
        .spawn()
        .unwrap();
    let helper_pid = helper.id();
    let helper = helper.wait_with_output().unwrap();
    // What stops an agent's whole group (ctrl-c in its terminal, a supervisor) must not
    // reach its instances.
    // SAFETY: kill(2) has no memory effects; the group is the helper's own.
    unsafe { libc::kill(-(helper_pid as i32), libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        helper.status.success(),
        "{}",
        String::from_utf8_lossy(&helper.stderr)
    );
    let record: InstanceRecord = serde_json::from_slice(&helper.stdout).unwrap();
    let detail = local_detail(&record).clone();

    // The agent is gone; its instance serves on, no longer its child.
    let addr: SocketAddr = "198.18.8.17:8080".parse().unwrap();
    assert!(wait_http(fixture.lb.name(), addr).contains(" 200 "));
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", detail.pid)).unwrap();
    let ppid: u32 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(ppid, helper_pid, "the exited agent is still its parent?");
    assert_ne!(ppid, std::process::id());

    // The next agent adopts it from the record it left.
    fixture.provider = LocalProvider::new(fixture.config.clone()).unwrap();
    let saved = fixture.provider.saved_records().unwrap();
    assert_eq!(saved, vec![record.clone()]);
    let adopted = fixture.provider.adopt(&saved).unwrap();
    assert!(adopted[0].running, "{adopted:?}");
    assert_eq!(adopted[0].pid, Some(detail.pid));
    fixture
        .provider
        .terminate(&id, Duration::from_secs(5))
        .unwrap();
    assert_eq!(leftovers(&fixture, &id, &detail), Vec::<String>::new());
}

#[test]
fn the_link_hook_sees_each_new_veth_and_its_error_fails_the_launch_leaving_nothing() {
    let mut fixture = Fixture::new("hook");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = Arc::clone(&seen);
    let provider = LocalProvider::new(fixture.config.clone()).unwrap();
    fixture.provider = provider.with_link_hook(LinkHook(Arc::new(move |link| {
        // The instance's end exists in its namespace when the hook runs.
        let shown = std::process::Command::new("ip")
            .args(["-n", link.namespace, "link", "show", link.interface])
            .output()
            .map_err(|e| e.to_string())?;
        hook_seen.lock().unwrap().push((
            link.instance_id.to_owned(),
            link.namespace.to_owned(),
            link.lb_interface.to_owned(),
            shown.status.success(),
        ));
        if link.instance_id.ends_with('1') {
            Err("refused by the test".into())
        } else {
            Ok(())
        }
    })));
    let good = format!("{}0", &instance_id()[..18]);
    fixture
        .provider
        .launch(&fixture.spec(&good, 18, &["sleep", "30"]))
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().clone(),
        [(
            good.clone(),
            namespace_name(&good),
            lb_interface_name(&good),
            true
        )]
    );

    let bad = format!("{}1", &instance_id()[..18]);
    let err = fixture
        .provider
        .launch(&fixture.spec(&bad, 19, &["sleep", "30"]))
        .unwrap_err();
    assert!(err.to_string().contains("refused by the test"), "{err}");
    assert!(!netns::list().unwrap().contains(&namespace_name(&bad)));
    assert!(
        fixture
            .lb
            .ip(&["link", "show", &lb_interface_name(&bad)])
            .is_err()
    );
    let dirs = Layout::detect().unwrap().instance_dirs(None, &bad);
    assert!(dirs.iter().all(|d| !d.path.exists()), "{dirs:?}");
    assert_eq!(fixture.provider.describe().unwrap().len(), 1);
}

#[test]
fn user_data_output_lands_in_its_log_with_the_instance_environment() {
    let fixture = Fixture::new("userdata");
    let id = instance_id();
    let mut spec = fixture.spec(&id, 16, &["sleep", "30"]);
    spec.user_data = Some(
        "echo \"id=$INSTANCE_ID address=$INSTANCE_ADDRESS group=$GROUP version=$TEMPLATE_VERSION\"\n\
         echo to-stderr >&2\n"
            .into(),
    );
    fixture.provider.launch(&spec).unwrap();
    let log = fixture.provider.instance_dir(&id).join("user-data.log");
    let expected = format!("id={id} address=198.18.8.16 group=web-asg version=2");
    let found = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("exit status 0"))
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(found, "user data never finished: {text:?}");
    assert!(text.lines().any(|l| l == expected), "{text}");
    assert!(text.lines().any(|l| l == "to-stderr"), "{text}");
    // Then the command runs.
    assert!(fixture.provider.describe().unwrap()[0].running);
}

#[test]
fn an_instance_that_died_while_the_agent_was_away_is_adopted_as_not_running_and_cleaned_up() {
    let mut fixture = Fixture::new("dead");
    let id = instance_id();
    let record = fixture
        .provider
        .launch(&fixture.spec(&id, 21, &["sleep", "30"]))
        .unwrap();
    let detail = local_detail(&record).clone();
    // A second launch of the same id is refused: it would take the first's namespace.
    let again = fixture
        .provider
        .launch(&fixture.spec(&id, 22, &["sleep", "30"]));
    assert!(
        matches!(again, Err(ProviderError::InvalidSpec { .. })),
        "{again:?}"
    );

    fixture.provider = LocalProvider::new(fixture.config.clone()).unwrap();
    // SAFETY: kill(2) has no memory effects; the pid is the instance's.
    unsafe { libc::kill(detail.pid as i32, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{}/stat", detail.pid))
            .map_or(true, |s| s.contains(") Z "))
    }));

    let saved = fixture.provider.saved_records().unwrap();
    let adopted = fixture.provider.adopt(&saved).unwrap();
    assert_eq!(adopted.len(), 1);
    assert!(!adopted[0].running, "a dead instance is not running");
    assert_eq!(adopted[0].pid, None);
    // Terminating it removes what it left.
    fixture
        .provider
        .terminate(&id, Duration::from_secs(1))
        .unwrap();
    assert_eq!(leftovers(&fixture, &id, &detail), Vec::<String>::new());
    assert!(fixture.provider.saved_records().unwrap().is_empty());
}
