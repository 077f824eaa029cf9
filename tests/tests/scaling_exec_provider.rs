//! The `exec` provider drives a hook of the test's own through launch, describe and
//! terminate, passing the hook's data back to it; a hook printing garbage, refusing or never
//! answering gives a typed error. Needs no root.

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_agent::scaling::provider::{
    InstanceRecord, Provider, ProviderDetail, ProviderError,
    exec::{ExecConfig, ExecError, ExecProvider},
};
use tests::scaling::{self, instance_id, python};

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
        // An instance id is unique to this process and call.
        let dir = std::env::temp_dir().join(format!("lb-scaling-hook-{tag}-{}", instance_id()));
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
    let mut fixture_spec = scaling::spec(
        &instance_id(),
        1,
        vec!["python3".into(), "-m".into(), "http.server".into()],
        (
            "198.18.9.10".parse().unwrap(),
            "198.18.9.1".parse().unwrap(),
        ),
        8000,
        &[],
    );
    fixture_spec.user_data = Some("echo hi".into());
    fixture_spec.stop_timeout = Duration::from_secs(7);
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
    let spec = scaling::spec(
        &instance_id(),
        1,
        vec!["true".into()],
        (
            "198.18.9.11".parse().unwrap(),
            "198.18.9.1".parse().unwrap(),
        ),
        8080,
        &[],
    );
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
