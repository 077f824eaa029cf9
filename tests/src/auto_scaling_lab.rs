//! The auto scaling lab: a lab whose agent runs an auto scaling group of `local` instances
//! (the `instance-server` binary) behind a VIP, in the machine's mount namespace as a service
//! manager would run it (`LabAgent::start_in_host_mounts`), so that the instances' namespaces
//! and cgroups are the machine's and a restarted agent finds them.
//!
//! Instances outlive their agent by design: on drop, the lab terminates every instance the
//! agent's `local` provider left (through the provider itself, from its records), before the
//! lab's namespaces go.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use lb_agent::{
    protocol::scaling::{ActivityView, AsgView},
    scaling::provider::{
        Provider as _,
        local::{LocalConfig, LocalProvider},
    },
};
use xtask::{
    agent::LabAgent,
    lab::{Lab, VIP4},
};

use crate::lab_traffic::{agent_binary, config_path, lab_up, write_config};

/// Whether the tests run as root (namespaces, cgroups, XDP); says it skips when not.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root");
    }
    root
}

/// The subnet the lab's groups take addresses from.
pub const SUBNET: &str = "198.18.8.0/24";

/// A lab with an agent running an auto scaling group.
pub struct AsgLab {
    agent: Option<LabAgent>,
    pub lab: Lab,
}

impl AsgLab {
    /// A lab (one idle backend, the least a lab has) whose agent runs `config` (see `config`).
    pub fn up(tag: &str, config: &str) -> Self {
        let lab = lab_up(tag, 1);
        write_config(&lab, config);
        let agent = start(&lab);
        Self {
            agent: Some(agent),
            lab,
        }
    }

    pub fn agent(&self) -> &LabAgent {
        self.agent.as_ref().expect("an agent runs")
    }

    /// Stops the agent (SIGTERM, as a service manager does) and starts a new one on the same
    /// config and state.
    pub fn restart_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            // SAFETY: a plain kill(2) of the agent's pid.
            unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.lab.is_running(agent.pid()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                !self.lab.is_running(agent.pid()),
                "the agent did not stop on SIGTERM"
            );
        }
        self.agent = Some(start(&self.lab));
    }

    /// Kills process `pid` of instance `victim` of `group` (SIGKILL) and waits (at most
    /// 30 s) until the group has replaced it: `in_service` instances again, none of them it;
    /// the replacement's id (not in `before`) and when the kill was.
    pub fn kill_and_wait_for_replacement(
        &self,
        group: &str,
        victim: &str,
        pid: u32,
        before: &[String],
        in_service: usize,
    ) -> (String, Instant) {
        let killed = Instant::now();
        // SAFETY: a plain kill(2).
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        let (healed, _) = self.wait_for(group, Duration::from_secs(30), "healed", |g| {
            g.instances.iter().all(|i| i.instance_id != victim)
                && in_state(g, "InService").len() == in_service
        });
        let new: Vec<&str> = in_state(&healed, "InService")
            .into_iter()
            .filter(|id| !before.iter().any(|old| old == id))
            .collect();
        assert_eq!(new.len(), 1, "one replacement: {healed:#?}");
        (new[0].to_owned(), killed)
    }

    /// Replaces the lab's config file (the agent reads it on `reload`).
    pub fn write_config(&self, config: &str) {
        write_config(&self.lab, config);
    }

    /// `asg describe GROUP --json`.
    pub fn group(&self, name: &str) -> AsgView {
        read(self.agent(), &["asg", "describe", name, "--json"])
    }

    /// `asg activities GROUP --json`, newest first.
    pub fn activities(&self, name: &str) -> Vec<ActivityView> {
        read(
            self.agent(),
            &["asg", "activities", name, "--limit", "1000", "--json"],
        )
    }

    /// The activity terminating `instance` of `group` (EC2's "Terminating instance: ID").
    pub fn termination_activity(&self, group: &str, instance: &str) -> ActivityView {
        let description = format!("Terminating instance: {instance}");
        self.activities(group)
            .into_iter()
            .find(|a| a.description == description)
            .unwrap_or_else(|| panic!("no activity `{description}` in {group}"))
    }

    /// `lb-agent ARGS` against the agent.
    pub fn cli(&self, args: &[&str]) -> String {
        self.agent()
            .cli(args)
            .unwrap_or_else(|e| panic!("lb-agent {}: {e:#}", args.join(" ")))
    }

    /// Polls `asg describe` every 100 ms until `done` holds, for at most `within`; the group
    /// then and how long it took.
    pub fn wait_for(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        done: impl Fn(&AsgView) -> bool,
    ) -> (AsgView, Duration) {
        let start = Instant::now();
        loop {
            let group = self.group(name);
            if done(&group) {
                return (group, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "{name}: not {what} within {within:?}: {group:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (at most 60 s) until `count` instances of `group` are in service; the group then
    /// and how long it took.
    pub fn wait_in_service(&self, group: &str, count: usize) -> (AsgView, Duration) {
        self.wait_for(
            group,
            Duration::from_secs(60),
            &format!("{count} in service"),
            |g| in_state(g, "InService").len() == count,
        )
    }

    /// `count` requests to `http://VIP/` from the client, one connection each; how many each
    /// instance answered (failures count under `"failed"`).
    pub fn answers(&self, count: usize) -> BTreeMap<String, usize> {
        self.answers_on(80, count)
    }

    /// Polls the VIP (8 requests every 100 ms) until `instance` answers, for at most
    /// `within`; how long that took.
    pub fn wait_until_serving(&self, instance: &str, within: Duration) -> Duration {
        self.wait_until_serving_on(80, instance, within)
    }
}

impl Drop for AsgLab {
    fn drop(&mut self) {
        // The agent first, so that it launches nothing more; then every instance it left.
        drop(self.agent.take());
        self.lab.stop_processes();
        terminate_instances(&instances_dir(&self.lab));
    }
}

/// Starts the agent on the lab's config, in the machine's mount namespace, and waits (at most
/// 30 s) until its groups run: they start once the API serves, after adopting instances.
fn start(lab: &Lab) -> LabAgent {
    let agent = LabAgent::start_in_host_mounts(lab, &agent_binary(), &config_path(lab))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = agent.cli(&["asg", "list", "--json"]) {
        assert!(
            Instant::now() < deadline,
            "the agent's auto scaling groups did not start within 30 s: {e:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
}

/// Where the agent's `local` provider keeps its instances (`NAME.instances` beside the
/// config).
pub fn instances_dir(lab: &Lab) -> PathBuf {
    config_path(lab).with_extension("instances")
}

/// Terminates every instance recorded in `dir` (SIGTERM, 1 s, SIGKILL), with its namespace,
/// veth and cgroups.
pub fn terminate_instances(dir: &std::path::Path) {
    if !dir.exists() {
        return;
    }
    let provider = match LocalProvider::new(LocalConfig {
        state_dir: dir.to_owned(),
        lb_namespace: None,
        cgroup_parent: None,
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cleaning up instances in {}: {e}", dir.display());
            return;
        }
    };
    let records = provider.saved_records().unwrap_or_default();
    if records.is_empty() {
        return;
    }
    if let Err(e) = provider.adopt(&records) {
        eprintln!("cleaning up instances in {}: {e}", dir.display());
    }
    for record in records {
        if let Err(e) = provider.terminate(&record.instance_id, Duration::from_secs(1)) {
            eprintln!("terminating {}: {e}", record.instance_id);
        }
    }
}

/// `lb-agent ARGS` read as JSON.
fn read<T: serde::de::DeserializeOwned>(agent: &LabAgent, args: &[&str]) -> T {
    let out = agent
        .cli(args)
        .unwrap_or_else(|e| panic!("lb-agent {}: {e:#}", args.join(" ")));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}: {out}", args.join(" ")))
}

/// The ids of `group`'s instances.
pub fn instance_ids(group: &AsgView) -> Vec<String> {
    group
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect()
}

/// The ids of `group`'s instances in lifecycle state `state` (`InService`, `Pending`, ...).
pub fn in_state<'a>(group: &'a AsgView, state: &str) -> Vec<&'a str> {
    group
        .instances
        .iter()
        .filter(|i| i.lifecycle_state == state)
        .map(|i| i.instance_id.as_str())
        .collect()
}

/// An agent config: an http listener on VIP:80 forwarding to target group `web` (port 8080,
/// health checks on `/health` every 5 s, `deregistration_delay`), and auto scaling group
/// `web-asg` of `instance-server` (at `server`) instances with `min`/`desired`/`max`, and
/// `extra` lines appended to the group (policies, alarms...).
pub fn config(
    server: &str,
    (min, desired, max): (u32, u32, u32),
    deregistration_delay: &str,
    extra: &str,
) -> String {
    format!(
        r#"[agent]
interface = "eth0"

[[target_group]]
name = "web"
protocol = "http"
port = 8080
deregistration_delay = "{deregistration_delay}"
health_check = {{ protocol = "http", path = "/health", interval = "5s", timeout = "2s", healthy_threshold = 2, unhealthy_threshold = 2 }}

[[listener]]
name = "site"
address = "{VIP4}"
port = 80
protocol = "http"
default_action = {{ forward = "web" }}

[instance_types]
small = {{ cpu = 0.5, memory = "256MiB" }}

[[launch_template]]
name = "web"
[[launch_template.version]]
command = ["{server}", "--port", "8080"]
instance_type = "small"
ports = [8080]
stop_timeout = "1s"

[[auto_scaling_group]]
name = "web-asg"
launch_template = {{ name = "web" }}
subnet = "{SUBNET}"
min_size = {min}
desired_capacity = {desired}
max_size = {max}
target_groups = ["web"]
{extra}
"#
    )
}

/// The TCP port of the L4 listener `l4_config` writes.
pub const L4_PORT: u16 = 9000;

/// As `config`, but behind an L4 listener only: a `tcp` listener on VIP:`L4_PORT` forwarding
/// to `tcp` target group `l4` (port 8080, HTTP health checks on `/health`), whose targets are
/// the group's instances. Nothing but the XDP program carries a request to an instance.
///
/// Draining ends once both sides have closed a target's last flow (not at the closed
/// timeout), so the agent's defaults stand.
pub fn l4_config(
    server: &str,
    sizes: (u32, u32, u32),
    deregistration_delay: &str,
    extra: &str,
) -> String {
    config(server, sizes, deregistration_delay, extra)
        .replace(
            "[[listener]]\nname = \"site\"",
            &format!(
                "[[target_group]]\nname = \"l4\"\nprotocol = \"tcp\"\nport = 8080\n\
                 deregistration_delay = \"{deregistration_delay}\"\n\
                 health_check = {{ protocol = \"http\", path = \"/health\", interval = \"5s\", timeout = \"2s\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n\n\
                 [[listener]]\nname = \"l4\"\naddress = \"{VIP4}\"\nport = {L4_PORT}\n\
                 protocol = \"tcp\"\ndefault_action = {{ forward = \"l4\" }}\n\n\
                 [[listener]]\nname = \"site\""
            ),
        )
        .replace("target_groups = [\"web\"]", "target_groups = [\"l4\"]")
}

impl AsgLab {
    /// `count` requests to `http://VIP:port/` from the client, one connection each; how many
    /// each instance answered (failures count under `"failed"`).
    pub fn answers_on(&self, port: u16, count: usize) -> BTreeMap<String, usize> {
        let script = format!(
            "import urllib.request\n\
             for i in range({count}):\n\
             \x20   try:\n\
             \x20       print(urllib.request.urlopen('http://{VIP4}:{port}/', timeout=2).read().decode().strip(), flush=True)\n\
             \x20   except Exception:\n\
             \x20       print('failed', flush=True)\n"
        );
        let out = self
            .lab
            .run(self.lab.client(), &["python3", "-c", &script])
            .expect("requests from the client");
        let mut answers = BTreeMap::new();
        for line in out.lines() {
            *answers.entry(line.to_owned()).or_insert(0) += 1;
        }
        answers
    }

    /// As `wait_until_serving`, through VIP:`port`.
    pub fn wait_until_serving_on(&self, port: u16, instance: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.answers_on(port, 8).contains_key(instance) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{instance} did not answer through VIP:{port} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts `count` downloads of `seconds` s from VIP:`port` (`/stream`), one connection each.
pub fn start_downloads(
    lab: &AsgLab,
    port: u16,
    count: usize,
    seconds: u64,
    rate: u64,
) -> Vec<std::process::Child> {
    (0..count)
        .map(|_| {
            lab.lab
                .cmd(lab.lab.client(), "curl")
                .args([
                    "-sS",
                    "-N",
                    "-D",
                    "-",
                    "--max-time",
                    &(seconds + 30).to_string(),
                    &format!(
                        "http://{VIP4}:{port}/stream?seconds={seconds}&bytes_per_second={rate}"
                    ),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect()
}

/// Waits for each download; the instance that served it and whether every byte (the right
/// ones) arrived.
pub fn finish_downloads(downloads: Vec<std::process::Child>, bytes: usize) -> Vec<(String, bool)> {
    downloads
        .into_iter()
        .map(|mut download| {
            let mut out = Vec::new();
            download
                .stdout
                .take()
                .expect("stdout")
                .read_to_end(&mut out)
                .expect("read the download");
            let status = download.wait().expect("curl ends");
            let text = String::from_utf8_lossy(&out);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                return ("no answer".to_owned(), false);
            };
            let instance = head
                .lines()
                .find_map(|l| l.strip_prefix("x-instance-id: "))
                .unwrap_or("unknown")
                .trim()
                .to_owned();
            let whole = status.success()
                && body.len() == bytes
                && body
                    .bytes()
                    .enumerate()
                    .all(|(k, b)| b == b'a' + (k % 26) as u8);
            (instance, whole)
        })
        .collect()
}
