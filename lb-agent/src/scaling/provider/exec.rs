//! The `exec` provider: instances live wherever a hook program the user writes puts them
//! (containers, VMs, a cluster scheduler). The agent runs the hook once per call with one JSON
//! request on its standard input (closed after it), and reads one JSON answer from its
//! standard output; standard error is kept for messages.
//!
//! # Protocol
//!
//! Every request has an `action`: `launch`, `terminate` or `describe`.
//!
//! `launch` carries the instance to start:
//! ```json
//! {"action": "launch", "instance": {
//!   "instance_id": "i-0123456789abcdef0", "group": "web-asg", "template": "web",
//!   "template_version": 2,
//!   "image": {"command": ["python3", "-m", "http.server", "8080"], "working_directory": null},
//!   "user_data": "echo booting",
//!   "environment": {"COLOR": "blue", "INSTANCE_ID": "i-0123456789abcdef0",
//!                   "INSTANCE_ADDRESS": "198.18.8.10", "GROUP": "web-asg", "TEMPLATE_VERSION": "2"},
//!   "instance_type": {"name": "small", "cpu": 0.5, "memory_bytes": 268435456},
//!   "ports": [8080], "address": "198.18.8.10", "gateway": "198.18.8.1",
//!   "inbound_rules": [{"protocol": "tcp", "from_port": 8080, "to_port": 8080,
//!                      "sources": ["198.18.0.0/15"]}],
//!   "stop_timeout_seconds": 30.0}}
//! ```
//! and is answered with the instance's id, optionally the address it really got (when the
//! engine chooses it; the requested one otherwise) and any `data` the hook wants back in
//! later requests (a container id, say):
//! `{"instance_id": "i-0123456789abcdef0", "address": "198.18.8.10", "data": {"container": "c1"}}`.
//!
//! `terminate` names the instance, its stop timeout and its `data`:
//! `{"action": "terminate", "instance_id": "i-…", "stop_timeout_seconds": 30.0, "data": {…}}`;
//! the hook stops it (SIGTERM or its engine's equivalent, the stop timeout, then a kill) and
//! answers `{"instance_id": "i-…"}` once it is gone.
//!
//! `describe` lists the instances the agent knows, with their address and `data`:
//! `{"action": "describe", "instances": [{"instance_id": "i-…", "address": "…", "data": {…}}]}`,
//! answered with `{"instances": [{"instance_id": "i-…", "running": true, "pid": 1234,
//! "cpu_utilization": 42.0}]}` (`pid` and `cpu_utilization`, in percent of the instance type's
//! CPU, are optional; an instance left out is taken as not running).
//!
//! Any request may be answered with `{"error": "what went wrong"}` (or a non-zero exit): the
//! call fails with that message. A hook gets `timeout` to answer (`terminate`: plus the stop
//! timeout), and is killed after it.

use std::{collections::BTreeMap, net::IpAddr, process::Command, sync::Mutex, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    InboundRule, InstanceRecord, InstanceSpec, InstanceStatus, Provider, ProviderDetail,
    ProviderError, RuleProtocol, check_spec,
    command::{self, CommandError},
    instance_environment, unix_now,
};

/// How much of a bad answer an error quotes.
const QUOTE: usize = 200;

/// Why the exec provider failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The hook could not be run or did not answer in time.
    #[error("exec hook, {action}: {source}")]
    Run {
        /// The request's action.
        action: &'static str,
        /// Why.
        source: CommandError,
    },
    /// The hook exited with a failure status.
    #[error("exec hook, {action}: exited with {status}: {stderr}")]
    Failed {
        /// The request's action.
        action: &'static str,
        /// Its exit status.
        status: String,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// The hook answered `{"error": ...}`.
    #[error("exec hook, {action}: refused: {message}")]
    Refused {
        /// The request's action.
        action: &'static str,
        /// Its message.
        message: String,
    },
    /// The hook's answer is not the JSON the protocol asks for.
    #[error("exec hook, {action}: bad answer ({reason}): {answer:?}")]
    BadAnswer {
        /// The request's action.
        action: &'static str,
        /// What is wrong with it.
        reason: String,
        /// Its start.
        answer: String,
    },
}

/// How the exec provider is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecConfig {
    /// The hook: a program and its arguments.
    pub hook: Vec<String>,
    /// How long the hook may take to answer.
    pub timeout: Duration,
}

/// The instance as a `launch` request carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireInstance {
    /// Its id.
    pub instance_id: String,
    /// Its auto scaling group.
    pub group: String,
    /// Its launch template.
    pub template: String,
    /// The template version it is launched from.
    pub template_version: u32,
    /// What to run.
    pub image: WireImage,
    /// The script to run before the command, if any.
    pub user_data: Option<String>,
    /// The environment for the user data and the command: the template's, with
    /// `INSTANCE_ID`, `INSTANCE_ADDRESS`, `GROUP` and `TEMPLATE_VERSION` added.
    pub environment: BTreeMap<String, String>,
    /// Its CPU and memory limits.
    pub instance_type: WireInstanceType,
    /// The ports it serves.
    pub ports: Vec<u16>,
    /// The address the group chose for it.
    pub address: IpAddr,
    /// The subnet's router.
    pub gateway: IpAddr,
    /// Its security group's inbound rules.
    pub inbound_rules: Vec<WireRule>,
    /// Time between SIGTERM and a kill when it is terminated.
    pub stop_timeout_seconds: f64,
}

/// The image in a `launch` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireImage {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Where it runs (the engine's choice when null).
    pub working_directory: Option<String>,
}

/// The instance type in a `launch` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireInstanceType {
    /// Its name.
    pub name: String,
    /// CPU as a fraction of one core.
    pub cpu: f64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
}

/// An inbound rule in a `launch` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireRule {
    /// `tcp`, `udp` or `all`.
    pub protocol: RuleProtocol,
    /// First port allowed.
    pub from_port: u16,
    /// Last port allowed.
    pub to_port: u16,
    /// Source CIDRs allowed.
    pub sources: Vec<String>,
}

impl From<&InstanceSpec> for WireInstance {
    fn from(spec: &InstanceSpec) -> WireInstance {
        let rule = |r: &InboundRule| WireRule {
            protocol: r.protocol,
            from_port: r.from_port,
            to_port: r.to_port,
            sources: r.sources.iter().map(ToString::to_string).collect(),
        };
        WireInstance {
            instance_id: spec.instance_id.clone(),
            group: spec.group.clone(),
            template: spec.template.clone(),
            template_version: spec.template_version,
            image: WireImage {
                command: spec.image.command.clone(),
                working_directory: spec
                    .image
                    .working_directory
                    .as_ref()
                    .map(|p| p.display().to_string()),
            },
            user_data: spec.user_data.clone(),
            environment: instance_environment(spec),
            instance_type: WireInstanceType {
                name: spec.instance_type.name.clone(),
                cpu: spec.instance_type.cpu,
                memory_bytes: spec.instance_type.memory_bytes,
            },
            ports: spec.ports.clone(),
            address: spec.address,
            gateway: spec.gateway,
            inbound_rules: spec.inbound_rules.iter().map(rule).collect(),
            stop_timeout_seconds: spec.stop_timeout.as_secs_f64(),
        }
    }
}

/// One request to the hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Request {
    /// Start an instance.
    Launch {
        /// What to start (boxed: the other requests are a few words).
        instance: Box<WireInstance>,
    },
    /// Stop an instance.
    Terminate {
        /// Which.
        instance_id: String,
        /// Its stop timeout.
        stop_timeout_seconds: f64,
        /// The hook's data from the launch.
        data: serde_json::Value,
    },
    /// Report on instances.
    Describe {
        /// The instances the agent knows.
        instances: Vec<Known>,
    },
}

/// An instance named in a `describe` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Known {
    /// Its id.
    pub instance_id: String,
    /// Its address.
    pub address: IpAddr,
    /// The hook's data from its launch.
    pub data: serde_json::Value,
}

/// The answer to `launch`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LaunchAnswer {
    /// The instance launched: must be the one asked for.
    pub instance_id: String,
    /// The address it got, when not the one asked for.
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Anything the hook wants back in later requests.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// The answer to `terminate`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TerminateAnswer {
    /// The instance stopped: must be the one asked for.
    pub instance_id: String,
}

/// The answer to `describe`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DescribeAnswer {
    /// The instances the hook knows of those asked about.
    pub instances: Vec<DescribedInstance>,
}

/// One instance in a `describe` answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DescribedInstance {
    /// Its id.
    pub instance_id: String,
    /// Whether it runs.
    pub running: bool,
    /// Its main process, if the engine has one to show.
    #[serde(default)]
    pub pid: Option<u32>,
    /// CPU used, in percent of its type's CPU, if measured.
    #[serde(default)]
    pub cpu_utilization: Option<f64>,
}

/// Runs instances through a hook.
#[derive(Debug)]
pub struct ExecProvider {
    config: ExecConfig,
    /// The instances launched or adopted and not terminated, by id.
    instances: Mutex<BTreeMap<String, InstanceRecord>>,
}

impl ExecProvider {
    /// A provider calling `config.hook`.
    pub fn new(config: ExecConfig) -> ExecProvider {
        ExecProvider {
            config,
            instances: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, InstanceRecord>> {
        // Every change to the map is one insert or remove: still consistent after a panic.
        self.instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `request` to the hook (`extra` time on top of the timeout); its answer.
    fn call<T: for<'de> Deserialize<'de>>(
        &self,
        request: &Request,
        extra: Duration,
    ) -> Result<T, ExecError> {
        let action = match request {
            Request::Launch { .. } => "launch",
            Request::Terminate { .. } => "terminate",
            Request::Describe { .. } => "describe",
        };
        let Some((program, args)) = self.config.hook.split_first() else {
            return Err(ExecError::Refused {
                action,
                message: "no hook program is configured".into(),
            });
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        // Serializing these types cannot fail: no maps with non-string keys, no floats that
        // are NaN (a NaN becomes null).
        let input = serde_json::to_vec(request).unwrap_or_default();
        let out = command::run(cmd, &input, self.config.timeout + extra)
            .map_err(|source| ExecError::Run { action, source })?;
        if !out.status.success() {
            return Err(ExecError::Failed {
                action,
                status: out.status.to_string(),
                stderr: out.stderr.trim().to_owned(),
            });
        }
        parse_answer(action, &out.stdout)
    }
}

/// The hook's answer to `action`: `T`, or its `{"error": ...}`, or a typed complaint.
pub fn parse_answer<T: for<'de> Deserialize<'de>>(
    action: &'static str,
    stdout: &str,
) -> Result<T, ExecError> {
    let bad = |reason: String| ExecError::BadAnswer {
        action,
        reason,
        answer: stdout.trim().chars().take(QUOTE).collect(),
    };
    let value: serde_json::Value =
        serde_json::from_str(stdout.trim()).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(message) = value.get("error") {
        return Err(ExecError::Refused {
            action,
            message: message
                .as_str()
                .map_or_else(|| message.to_string(), str::to_owned),
        });
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

impl Provider for ExecProvider {
    fn launch(&self, spec: &InstanceSpec) -> Result<InstanceRecord, ProviderError> {
        check_spec(spec)?;
        let request = Request::Launch {
            instance: Box::new(WireInstance::from(spec)),
        };
        let answer: LaunchAnswer = self.call(&request, Duration::ZERO)?;
        if answer.instance_id != spec.instance_id {
            return Err(ExecError::BadAnswer {
                action: "launch",
                reason: format!("it names instance {}", answer.instance_id),
                answer: format!("expected {}", spec.instance_id),
            }
            .into());
        }
        let record = InstanceRecord {
            instance_id: spec.instance_id.clone(),
            group: spec.group.clone(),
            template: spec.template.clone(),
            template_version: spec.template_version,
            address: answer.address.unwrap_or(spec.address),
            launched_at: unix_now(),
            detail: ProviderDetail::Exec { data: answer.data },
        };
        self.lock()
            .insert(record.instance_id.clone(), record.clone());
        Ok(record)
    }

    fn terminate(&self, instance_id: &str, stop_timeout: Duration) -> Result<(), ProviderError> {
        let record = self
            .lock()
            .get(instance_id)
            .cloned()
            .ok_or_else(|| ProviderError::UnknownInstance(instance_id.to_owned()))?;
        let data = match record.detail {
            ProviderDetail::Exec { data } => data,
            ProviderDetail::Local(_) => serde_json::Value::Null,
        };
        let request = Request::Terminate {
            instance_id: instance_id.to_owned(),
            stop_timeout_seconds: stop_timeout.as_secs_f64(),
            data,
        };
        let answer: TerminateAnswer = self.call(&request, stop_timeout)?;
        if answer.instance_id != instance_id {
            return Err(ExecError::BadAnswer {
                action: "terminate",
                reason: format!("it names instance {}", answer.instance_id),
                answer: format!("expected {instance_id}"),
            }
            .into());
        }
        self.lock().remove(instance_id);
        Ok(())
    }

    fn describe(&self) -> Result<Vec<InstanceStatus>, ProviderError> {
        let known: Vec<InstanceRecord> = self.lock().values().cloned().collect();
        if known.is_empty() {
            return Ok(Vec::new());
        }
        let request = Request::Describe {
            instances: known
                .iter()
                .map(|r| Known {
                    instance_id: r.instance_id.clone(),
                    address: r.address,
                    data: match &r.detail {
                        ProviderDetail::Exec { data } => data.clone(),
                        ProviderDetail::Local(_) => serde_json::Value::Null,
                    },
                })
                .collect(),
        };
        let answer: DescribeAnswer = self.call(&request, Duration::ZERO)?;
        let mut by_id: BTreeMap<String, DescribedInstance> = answer
            .instances
            .into_iter()
            .map(|i| (i.instance_id.clone(), i))
            .collect();
        Ok(known
            .iter()
            .map(|r| {
                let found = by_id.remove(&r.instance_id);
                InstanceStatus {
                    instance_id: r.instance_id.clone(),
                    running: found.as_ref().is_some_and(|f| f.running),
                    pid: found.as_ref().and_then(|f| f.pid),
                    address: r.address,
                    cpu_utilization: found.and_then(|f| f.cpu_utilization),
                }
            })
            .collect())
    }

    fn adopt(&self, records: &[InstanceRecord]) -> Result<Vec<InstanceStatus>, ProviderError> {
        for record in records {
            if !matches!(record.detail, ProviderDetail::Exec { .. }) {
                return Err(ProviderError::InvalidSpec {
                    instance: record.instance_id.clone(),
                    reason: "its record is not an exec provider's".into(),
                });
            }
        }
        {
            let mut instances = self.lock();
            for record in records {
                instances
                    .entry(record.instance_id.clone())
                    .or_insert_with(|| record.clone());
            }
        }
        let ids: Vec<&str> = records.iter().map(|r| r.instance_id.as_str()).collect();
        Ok(self
            .describe()?
            .into_iter()
            .filter(|s| ids.contains(&s.instance_id.as_str()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_their_action_tag() {
        let request = Request::Terminate {
            instance_id: "i-1".into(),
            stop_timeout_seconds: 30.0,
            data: serde_json::json!({"c": 1}),
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"action":"terminate","instance_id":"i-1","stop_timeout_seconds":30.0,"data":{"c":1}}"#
        );
    }

    #[test]
    fn a_launch_answer_may_leave_out_address_and_data() {
        let answer: LaunchAnswer = parse_answer("launch", r#"{"instance_id":"i-1"}"#).unwrap();
        assert_eq!(answer.address, None);
        assert_eq!(answer.data, serde_json::Value::Null);
    }

    #[test]
    fn garbage_is_a_bad_answer_quoting_it() {
        let err = parse_answer::<LaunchAnswer>("launch", "hello there").unwrap_err();
        match err {
            ExecError::BadAnswer { answer, .. } => assert_eq!(answer, "hello there"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn json_of_the_wrong_shape_is_a_bad_answer() {
        let err = parse_answer::<DescribeAnswer>("describe", r#"{"instances": 3}"#).unwrap_err();
        assert!(matches!(err, ExecError::BadAnswer { .. }), "{err}");
    }

    #[test]
    fn an_error_answer_is_a_refusal_with_its_message() {
        let err = parse_answer::<TerminateAnswer>("terminate", r#"{"error":"no such container"}"#)
            .unwrap_err();
        match err {
            ExecError::Refused { message, .. } => assert_eq!(message, "no such container"),
            other => panic!("{other}"),
        }
    }
}
