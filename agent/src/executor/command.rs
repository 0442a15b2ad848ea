//! `command` tasks: a program run in a sandbox.
//!
//! Guarantees: the child runs in its own process group with `RLIMIT_CPU`,
//! `RLIMIT_AS`, `RLIMIT_NOFILE` and `PR_SET_NO_NEW_PRIVS`, with only the
//! environment the task gives (plus `PATH` and `TASKCTL_*`), never the agent's
//! own (which holds the broker credentials). At the timeout, when the leader
//! exits, and when the future is dropped, the whole group gets SIGKILL, so
//! background grandchildren do not outlive the task. stdout and stderr are read
//! concurrently and kept up to a bound; the rest is drained and discarded so a
//! chatty child never blocks on a full pipe.
//!
//! Caveat: a descendant that calls `setsid()` leaves the group and escapes the
//! kill; containing that needs a cgroup (the pod's, in Kubernetes).

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use nix::{
    sys::{
        resource::{Resource, setrlimit},
        signal::{Signal, killpg},
    },
    unistd::Pid,
};
use taskctl_protocol::TaskStatus;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Outcome, timeout_message};
use crate::config::CommandLimits;

/// How long to keep reading pipes after the group was killed: a descendant
/// that escaped the group could hold them open forever.
const PIPE_DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

pub struct CommandSpec<'a> {
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: Option<&'a str>,
    pub task_id: &'a str,
    pub attempt: u32,
    pub idempotency_key: Option<&'a str>,
}

/// Kills the process group when dropped, unless disarmed after the group is
/// known to be gone.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (group already gone) is the normal case after a clean exit.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn run(
    spec: &CommandSpec<'_>,
    limits: CommandLimits,
    output_limit: usize,
    timeout: Duration,
) -> Outcome {
    let Some((program, args)) = spec.argv.split_first() else {
        return Outcome::with_error(TaskStatus::Rejected, "command task has an empty argv");
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TASKCTL_TASK_ID", spec.task_id)
        .env("TASKCTL_ATTEMPT", spec.attempt.to_string())
        .envs(spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(key) = spec.idempotency_key {
        cmd.env("TASKCTL_IDEMPOTENCY_KEY", key);
    }
    if let Some(cwd) = spec.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe syscalls (setrlimit, prctl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds)?;
            setrlimit(
                Resource::RLIMIT_AS,
                limits.memory_bytes,
                limits.memory_bytes,
            )?;
            setrlimit(
                Resource::RLIMIT_NOFILE,
                limits.open_files,
                limits.open_files,
            )?;
            setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
            nix::sys::prctl::set_no_new_privs()?;
            Ok(())
        });
    }

    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(error) => {
            return Outcome::with_error(
                TaskStatus::Failed,
                format!("failed to start `{program}`: {error}"),
            );
        }
    };
    let mut guard = GroupGuard {
        // process_group(0) makes the child's pid its group id.
        pgid: child.id().map(|pid| Pid::from_raw(pid as i32)),
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut out_task = tokio::spawn(read_bounded(stdout, output_limit));
    let mut err_task = tokio::spawn(read_bounded(stderr, output_limit));

    let waited = tokio::time::timeout(timeout, child.wait()).await;
    // Whether the leader exited or timed out, nothing of the group may stay.
    guard.kill();
    let code = match &waited {
        Ok(Ok(exit)) => exit.code(),
        _ => None,
    };
    let (status, error) = match waited {
        Ok(Ok(exit)) => match exit.code() {
            Some(0) => (TaskStatus::Succeeded, None),
            Some(code) => (TaskStatus::Failed, Some(format!("exited with code {code}"))),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let signal = exit.signal().unwrap_or(0);
                (
                    TaskStatus::Failed,
                    Some(format!("killed by signal {signal}")),
                )
            }
        },
        Ok(Err(error)) => (
            TaskStatus::Failed,
            Some(format!("failed to wait for the command: {error}")),
        ),
        Err(_) => {
            // Reap the leader so it does not linger as a zombie.
            let _ = child.wait().await;
            (TaskStatus::TimedOut, Some(timeout_message(timeout)))
        }
    };

    let (out, out_cut) = collect(&mut out_task).await;
    let (err, err_cut) = collect(&mut err_task).await;
    Outcome {
        status,
        code,
        output: out,
        stderr: err,
        truncated: out_cut || err_cut,
        error,
    }
}

async fn collect(task: &mut tokio::task::JoinHandle<(Vec<u8>, bool)>) -> (String, bool) {
    match tokio::time::timeout(PIPE_DRAIN_AFTER_EXIT, &mut *task).await {
        Ok(Ok((bytes, cut))) => (String::from_utf8_lossy(&bytes).into_owned(), cut),
        Ok(Err(_)) => (String::new(), false),
        Err(_) => {
            task.abort();
            (String::new(), true)
        }
    }
}

/// Reads `reader` to the end, keeping at most `limit` bytes.
async fn read_bounded<R: AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                if n > room {
                    cut = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CommandLimits {
        CommandLimits {
            cpu_seconds: 10,
            memory_bytes: 256 * 1024 * 1024,
            open_files: 64,
        }
    }

    async fn sh(script: &str, limit: usize, timeout_ms: u64) -> Outcome {
        let argv = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let env = BTreeMap::new();
        let spec = CommandSpec {
            argv: &argv,
            env: &env,
            cwd: None,
            task_id: "t",
            attempt: 1,
            idempotency_key: None,
        };
        run(&spec, limits(), limit, Duration::from_millis(timeout_ms)).await
    }

    #[tokio::test]
    async fn captures_output_and_exit_code() {
        let ok = sh("echo out; echo err >&2", 1024, 5000).await;
        assert_eq!(ok.status, TaskStatus::Succeeded);
        assert_eq!((ok.output.as_str(), ok.stderr.as_str()), ("out\n", "err\n"));
        let failed = sh("exit 3", 1024, 5000).await;
        assert_eq!((failed.status, failed.code), (TaskStatus::Failed, Some(3)));
    }

    #[tokio::test]
    async fn chatty_child_is_bounded_without_deadlock() {
        let out = sh("head -c 1000000 /dev/zero | tr '\\0' x", 100, 10_000).await;
        assert_eq!(out.status, TaskStatus::Succeeded);
        assert_eq!(out.output.len(), 100);
        assert!(out.truncated);
    }

    #[tokio::test]
    async fn agent_environment_is_not_inherited() {
        // cargo and nextest run tests with CARGO_MANIFEST_DIR set; it stands
        // for the agent's own variables (BROKER_URL with its password).
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let out = sh("env", 65536, 5000).await;
        assert!(
            !out.output.contains("CARGO_MANIFEST_DIR="),
            "{}",
            out.output
        );
        assert!(out.output.contains("TASKCTL_TASK_ID=t"));
    }

    #[tokio::test]
    async fn open_files_limit_applies() {
        let out = sh("ulimit -n", 1024, 5000).await;
        assert_eq!(out.output.trim(), "64");
    }

    #[tokio::test]
    async fn missing_program_fails() {
        let argv = vec!["/nonexistent/program".to_owned()];
        let env = BTreeMap::new();
        let spec = CommandSpec {
            argv: &argv,
            env: &env,
            cwd: None,
            task_id: "t",
            attempt: 1,
            idempotency_key: None,
        };
        let out = run(&spec, limits(), 100, Duration::from_secs(5)).await;
        assert_eq!(out.status, TaskStatus::Failed);
    }
}
