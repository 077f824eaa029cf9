//! A lifecycle hook's command: run when an instance starts waiting on the hook, with what it
//! waits for in its environment (EC2 Auto Scaling sends a notification to an SNS topic, an
//! SQS queue or EventBridge instead). The command answers with `lb-agent asg
//! complete-lifecycle-action` (or the API) when its work is done; its output goes to the
//! agent's log.

use std::time::Duration;

use crate::scaling::lifecycle::LifecycleTransition;

/// How long a hook's command may run before it is killed (the hook's own timeout decides
/// the instance's fate; this only bounds the process).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(7200);

/// Starts `command` for `instance` (at `address`) waiting on `hook` of `group`: in its
/// environment `GROUP`, `LIFECYCLE_HOOK`, `LIFECYCLE_TRANSITION` (AWS's
/// `autoscaling:EC2_INSTANCE_LAUNCHING` or `..._TERMINATING`), `INSTANCE_ID` and
/// `INSTANCE_ADDRESS`. It runs on its own; a failure to start is logged.
pub fn run(
    command: &[String],
    group: &str,
    hook: &str,
    transition: LifecycleTransition,
    instance: &str,
    address: &str,
) {
    let Some((program, args)) = command.split_first() else {
        return;
    };
    let transition = match transition {
        LifecycleTransition::Launching => "autoscaling:EC2_INSTANCE_LAUNCHING",
        LifecycleTransition::Terminating => "autoscaling:EC2_INSTANCE_TERMINATING",
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("GROUP", group)
        .env("LIFECYCLE_HOOK", hook)
        .env("LIFECYCLE_TRANSITION", transition)
        .env("INSTANCE_ID", instance)
        .env("INSTANCE_ADDRESS", address)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let (group, hook, instance) = (group.to_owned(), hook.to_owned(), instance.to_owned());
    match cmd.spawn() {
        Ok(child) => {
            tokio::spawn(async move {
                match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
                    Ok(Ok(out)) => tracing::info!(
                        group,
                        hook,
                        instance,
                        status = %out.status,
                        stdout = %String::from_utf8_lossy(&out.stdout).trim(),
                        stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                        "lifecycle hook command ended"
                    ),
                    Ok(Err(e)) => {
                        tracing::warn!(group, hook, instance, error = %e, "lifecycle hook command failed");
                    }
                    Err(_) => {
                        tracing::warn!(
                            group,
                            hook,
                            instance,
                            "lifecycle hook command ran too long: killed"
                        );
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(group, hook, instance, error = %e, command = ?command, "lifecycle hook command did not start");
        }
    }
}
