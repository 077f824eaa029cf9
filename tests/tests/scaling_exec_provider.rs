//! The `exec` provider drives a hook of the test's own through launch, describe and
//! terminate, passing the hook's data back to it; a hook printing garbage, refusing or never
//! answering gives a typed error. Needs no root.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use lb_agent::scaling::provider::{
    Image, InstanceRecord, InstanceSpec, InstanceType, Provider, ProviderDetail, ProviderError,
    exec::{ExecConfig, ExecError, ExecProvider},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh id per call: `i-` and 17 hex digits, from this process and a counter.
fn instance_id() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("i-{:09x}{:08x}", std::process::id(), n)
}

/// The real python3 (the machine's `python3` may be a shim needing more environment).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A hook keeping its instances in a JSON file beside it and logging every request.
const HOOK: &str = r#"
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
state_file = os.path.join(here, "state.json")
state = json.load(open(state_file)) if os.path.exists(state_file) else {}
request = json.load(sys.stdin)
with open(os.path.join(here, "requests.log"), "a") as log:
    log.write(json.dumps(request) + "\n")
action = request["action"]
if action == "launch":
    inst = request["instance"]
    state[inst["instance_id"]] = {"slot": len(state) + 1}
    answer = {"instance_id": inst["instance_id"], "data": state[inst["instance_id"]]}
elif action == "describe":
    answer = {"instances": [
        {"instance_id": i["instance_id"], "running": True, "cpu_utilization": 12.5}
        for i in request["instances"] if i["instance_id"] in state]}
elif action == "terminate":
    if request["instance_id"] not in state:
        answer = {"error": "no such instance"}
    else:
        del state[request["instance_id"]]
        answer = {"instance_id": request["instance_id"]}
json.dump(state, open(state_file, "w"))
print(json.dumps(answer))
"#;

/// A directory for a hook, removed on drop.
struct HookDir(PathBuf);

impl HookDir {
    fn new(tag: &str, script: &str) -> HookDir {
        let dir = std::env::temp_dir().join(format!(
            "lb-scaling-hook-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hook"), script).unwrap();
        HookDir(dir)
    }
}

impl Drop for HookDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_exec_provider_drives_a_hook_through_launch_describe_and_terminate() {
    let dir = HookDir::new("drive", HOOK);
    let provider = ExecProvider::new(ExecConfig {
        hook: vec![python(), dir.0.join("hook").display().to_string()],
        timeout: Duration::from_secs(20),
    });
    let fixture_spec = InstanceSpec {
        instance_id: instance_id(),
        group: "web-asg".into(),
        template: "web".into(),
        template_version: 1,
        image: Image {
            command: vec!["python3".into(), "-m".into(), "http.server".into()],
            working_directory: None,
        },
        user_data: Some("echo hi".into()),
        environment: BTreeMap::new(),
        instance_type: InstanceType {
            name: "small".into(),
            cpu: 0.5,
            memory_bytes: 256 << 20,
        },
        ports: vec![8000],
        address: "198.18.9.10".parse().unwrap(),
        gateway: "198.18.9.1".parse().unwrap(),
        inbound_rules: vec![],
        stop_timeout: Duration::from_secs(7),
    };
    let id = fixture_spec.instance_id.clone();
    let record = provider.launch(&fixture_spec).unwrap();
    assert_eq!(
        record.detail,
        ProviderDetail::Exec {
            data: serde_json::json!({"slot": 1})
        }
    );
    assert_eq!(record.address, "198.18.9.10".parse::<IpAddr>().unwrap());

    let status = provider.describe().unwrap();
    assert_eq!(status.len(), 1);
    assert!(status[0].running);
    assert_eq!(status[0].cpu_utilization, Some(12.5));

    provider.terminate(&id, Duration::from_secs(7)).unwrap();
    assert!(provider.describe().unwrap().is_empty());

    let requests: Vec<serde_json::Value> = std::fs::read_to_string(dir.0.join("requests.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = requests
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["launch", "describe", "terminate"]);
    assert_eq!(requests[0]["instance"]["user_data"], "echo hi");
    assert_eq!(requests[0]["instance"]["environment"]["INSTANCE_ID"], id);
    assert_eq!(
        requests[0]["instance"]["environment"]["TEMPLATE_VERSION"],
        "1"
    );
    assert_eq!(requests[0]["instance"]["instance_type"]["cpu"], 0.5);
    assert_eq!(requests[1]["instances"][0]["data"]["slot"], 1);
    assert_eq!(requests[2]["data"]["slot"], 1);
    assert_eq!(requests[2]["stop_timeout_seconds"], 7.0);

    // Terminating what the hook does not know is its refusal, in its words.
    provider
        .adopt(&[InstanceRecord {
            detail: ProviderDetail::Exec {
                data: serde_json::Value::Null,
            },
            ..record
        }])
        .unwrap();
    match provider.terminate(&id, Duration::ZERO) {
        Err(ProviderError::Exec(ExecError::Refused { message, .. })) => {
            assert_eq!(message, "no such instance");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_hook_printing_garbage_gives_a_bad_answer_error() {
    let dir = HookDir::new("garbage", "echo 'this is not json'\n");
    let provider = ExecProvider::new(ExecConfig {
        hook: vec!["/bin/sh".into(), dir.0.join("hook").display().to_string()],
        timeout: Duration::from_secs(10),
    });
    let spec = InstanceSpec {
        instance_id: instance_id(),
        group: "g".into(),
        template: "t".into(),
        template_version: 1,
        image: Image {
            command: vec!["true".into()],
            working_directory: None,
        },
        user_data: None,
        environment: BTreeMap::new(),
        instance_type: InstanceType {
            name: "small".into(),
            cpu: 0.5,
            memory_bytes: 1 << 20,
        },
        ports: vec![],
        address: "198.18.9.11".parse().unwrap(),
        gateway: "198.18.9.1".parse().unwrap(),
        inbound_rules: vec![],
        stop_timeout: Duration::from_secs(1),
    };
    match provider.launch(&spec) {
        Err(ProviderError::Exec(ExecError::BadAnswer { action, answer, .. })) => {
            assert_eq!(action, "launch");
            assert_eq!(answer, "this is not json");
        }
        other => panic!("{other:?}"),
    }
    assert!(provider.describe().unwrap().is_empty(), "nothing launched");

    // A hook that never answers is killed at its timeout.
    let slow = HookDir::new("slow", "sleep 30\n");
    let provider = ExecProvider::new(ExecConfig {
        hook: vec!["/bin/sh".into(), slow.0.join("hook").display().to_string()],
        timeout: Duration::from_millis(500),
    });
    let started = Instant::now();
    let err = provider.launch(&spec).unwrap_err();
    assert!(
        matches!(err, ProviderError::Exec(ExecError::Run { .. })),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
