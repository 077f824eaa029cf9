//! An instance's process: started in a session of its own (so it outlives the agent: when the
//! agent exits it is reparented to init, and no terminal hangup reaches it), inside the
//! instance's network namespace and cgroups from its first instruction, running the user
//! data then `exec`ing the command; and told apart from a later process that reuses its pid
//! by its start time in `/proc/PID/stat`.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::{File, OpenOptions},
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use super::LocalError;

/// The wrapper the instance's first process runs: the user data (when there is a file), its
/// output appended to its log, then the command in its place. Like EC2's, a failing user
/// data script does not stop the instance: its log says what happened.
const WRAPPER: &str = r#"ud="$1"; log="$2"; shift 2
if [ -n "$ud" ]; then
  echo "user data: starting $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$log"
  /bin/sh "$ud" >>"$log" 2>&1 </dev/null
  echo "user data: exit status $?" >>"$log"
fi
exec "$@""#;

/// What to start.
#[derive(Debug, Clone)]
pub struct Start<'a> {
    /// The instance's network namespace (`/run/netns/NAME`).
    pub netns: &'a Path,
    /// The `cgroup.procs` files to join.
    pub cgroup_procs: &'a [PathBuf],
    /// The user data script file, if any.
    pub user_data: Option<&'a Path>,
    /// Where the user data's output goes.
    pub user_data_log: &'a Path,
    /// Where the command's output goes (the instance's console).
    pub console_log: &'a Path,
    /// The program and arguments.
    pub command: &'a [String],
    /// Its working directory.
    pub working_directory: &'a Path,
    /// Its whole environment.
    pub environment: &'a BTreeMap<String, String>,
}

/// Starts the instance's first process; the child (the caller reaps it while it lives).
pub fn start(start: &Start<'_>) -> Result<Child, LocalError> {
    let sys = |what: &str, e: std::io::Error| LocalError::Process(format!("{what}: {e}"));
    let netns = File::open(start.netns)
        .map_err(|e| sys(&format!("opening {}", start.netns.display()), e))?;
    let procs: Vec<CString> = start
        .cgroup_procs
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| LocalError::Process("a cgroup path holds a NUL byte".into()))?;
    let console = OpenOptions::new()
        .create(true)
        .append(true)
        .open(start.console_log)
        .map_err(|e| sys(&format!("opening {}", start.console_log.display()), e))?;
    let console_err = console
        .try_clone()
        .map_err(|e| sys("duplicating the console log", e))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("lb-instance")
        .arg(start.user_data.map(Path::as_os_str).unwrap_or_default())
        .arg(start.user_data_log)
        .args(start.command)
        .current_dir(start.working_directory)
        .env_clear()
        .envs(start.environment)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err);
    let netns_fd = netns.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes only system calls (setsid, setns, open,
    // write, close) on values prepared before the fork, and allocates nothing
    // (`last_os_error` holds an errno, no heap).
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own: no controlling terminal, not in the agent's process
            // group, so nothing the agent's group receives reaches it.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for path in &procs {
                // "0" moves the writing process (cgroup v1 and v2 alike).
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| sys("starting the instance", e))?;
    // The namespace file stays open until the child has it: `spawn` returns after exec.
    drop(netns);
    Ok(child)
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Its state letter (`R`, `S`, `Z` ...).
    pub state: char,
    /// When it started, in clock ticks after boot: with the pid, it names one process.
    pub start_time: u64,
}

/// Parses `/proc/PID/stat`: the command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`; state is field 3, starttime field 22 (proc(5)).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The stat of process `pid`, if it exists.
pub fn stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `pid` is still the process that started at `start_time` and has not exited
/// (a zombie has).
pub fn is_running(pid: u32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z' && s.state != 'X')
}

/// Sends `signal` to `pid` (errors ignored: the process may be gone).
pub fn signal(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory effects.
        unsafe { libc::kill(pid, signal) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let text = "1234 (we (ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    98765 1000000 200 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                start_time: 98765
            })
        );
    }

    #[test]
    fn this_process_is_running_and_a_wrong_start_time_is_not_it() {
        let me = std::process::id();
        let own = stat(me).unwrap();
        assert!(is_running(me, own.start_time));
        assert!(!is_running(me, own.start_time + 1));
    }

    #[test]
    fn a_truncated_stat_is_none() {
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }
}
