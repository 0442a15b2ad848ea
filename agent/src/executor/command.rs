//! `command` tasks: a program run in a sandbox.
//!
//! Guarantees: the child runs in a new session (so its own process group)
//! as the sandbox user (`SANDBOX_UID`/`SANDBOX_GID`; `nobody` when the agent
//! runs as root and names none; else the agent's own user, and the agent is
//! then non-dumpable so a task cannot read its `/proc/<pid>/environ`), with
//! no supplementary groups, `RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_NOFILE`,
//! `RLIMIT_NPROC` (a fork bomb stops there), `RLIMIT_FSIZE` (a write past it
//! gets SIGXFSZ), no core dumps and `PR_SET_NO_NEW_PRIVS`; with only the
//! environment the task gives (plus `PATH`, `HOME`, `TMPDIR` and
//! `TASKCTL_*`), never the agent's own (which holds the broker credentials);
//! in a private working directory (mode 0700) removed afterwards. At the
//! timeout, when the leader exits, and when the future is dropped, the whole
//! group gets SIGKILL, so background grandchildren do not outlive the task.
//! stdout and stderr are read concurrently and kept up to a bound; the rest
//! is drained and discarded so a chatty child never blocks on a full pipe.
//!
//! With `SANDBOX_UID_COUNT` > 1 each running task has a uid of its own
//! (`super::uids`): its `RLIMIT_NPROC` is its alone, and every process of
//! that uid is killed when the task ends, including descendants that left
//! the group with `setsid()`.
//!
//! Caveats, with one shared uid (the default): a descendant that calls
//! `setsid()` leaves the group and escapes the kill, and `RLIMIT_NPROC`
//! counts every process of the user, so one task's fork bomb stops the
//! others' forks until it is killed; when tasks run as the agent's own user
//! the agent's threads count too. Where the kernel lacks them, Landlock and
//! seccomp filters are not applied (the agent says so at start-up).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

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

/// The uid and gid tasks run as: the configured ones; `nobody` (65534)
/// when the agent is root and none is configured (root would ignore
/// `RLIMIT_NPROC` and could undo every other limit); else the agent's own.
pub fn sandbox_user(limits: &CommandLimits) -> Option<(u32, u32)> {
    limits
        .user
        .or_else(|| nix::unistd::geteuid().is_root().then_some((65_534, 65_534)))
}

/// Syscalls a task has no business making, each of which widens what it
/// can reach (other processes' memory, namespaces, mounts, kernel keys and
/// modules, BPF, the clock): refused with `EPERM`, everything else allowed.
/// A deny list rather than an allow list because tasks run arbitrary
/// allowed programs (interpreters included), whose syscalls are not known.
const DENIED_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
];

/// The sandbox's seccomp filter as BPF, compiled once; `Err` says why it
/// cannot be used here (then tasks run without it, and the agent says so).
pub fn seccomp_filter() -> Result<seccompiler::BpfProgram, String> {
    let has_seccomp = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
        .unwrap_or(false);
    if !has_seccomp {
        return Err("the kernel has no seccomp".into());
    }
    let arch: seccompiler::TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("no seccomp filter for {}: {e}", std::env::consts::ARCH))?;
    // c_long is i64 here, i32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let rules = DENIED_SYSCALLS
        .iter()
        .map(|n| (i64::from(*n), Vec::new()))
        .collect();
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("building the seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("compiling the seccomp filter: {e}"))
}

/// A private working directory for one attempt, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(root: &Path, task_id: &str, user: Option<(u32, u32)>) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let safe: String = task_id
            .chars()
            .take(40)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut random = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| std::io::Error::other("no random source"))?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = root.join(format!("task-{safe}-{suffix}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let dir = WorkDir(dir);
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir.0, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %error, "failed to remove a task's working directory");
        }
    }
}

/// Checks the program against its pinned SHA-256, if any. The file is read
/// again by exec afterwards: a program replaced in between is not caught,
/// so pinned programs belong in directories only root can write.
pub async fn check_pin(program: &str, pin: Option<[u8; 32]>) -> Result<(), String> {
    let Some(expected) = pin else {
        return Ok(());
    };
    let path = program.to_owned();
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::io::Read as _;
        let mut file = std::fs::File::open(&path)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        Ok(ctx.finish().as_ref().to_vec())
    })
    .await
    .map_err(|e| format!("cannot hash `{program}`: {e}"))?
    .map_err(|e| format!("cannot read `{program}` to check its sha256: {e}"))?;
    if digest == expected {
        Ok(())
    } else {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Err(format!(
            "`{program}` has sha256 {hex}, not the one COMMAND_ALLOWED pins"
        ))
    }
}

/// The kernel filters and the output bound every command task gets.
pub struct Sandbox {
    pub seccomp: Option<std::sync::Arc<seccompiler::BpfProgram>>,
    pub landlock: Option<i64>,
    pub output_limit: usize,
}

/// Runs the task as `user` (uid, gid; `None`: the agent's own).
pub async fn run(
    spec: &CommandSpec<'_>,
    user: Option<(u32, u32)>,
    limits: &CommandLimits,
    sandbox: Sandbox,
    timeout: Duration,
) -> Outcome {
    let Sandbox {
        seccomp,
        landlock,
        output_limit,
    } = sandbox;
    let Some((program, args)) = spec.argv.split_first() else {
        return Outcome::with_error(TaskStatus::Rejected, "command task has an empty argv");
    };
    let workdir = match WorkDir::create(&limits.work_root, spec.task_id, user) {
        Ok(dir) => dir,
        Err(error) => {
            return Outcome::with_error(
                TaskStatus::Failed,
                format!(
                    "cannot create a working directory under {}: {error}",
                    limits.work_root.display()
                ),
            );
        }
    };
    // Built here (it opens paths and allocates); only applied in the child.
    let ruleset = match landlock {
        None => None,
        Some(abi) => {
            let mut writable: Vec<&Path> = vec![&workdir.0];
            writable.extend(limits.writable.iter().map(PathBuf::as_path));
            match super::landlock::ruleset(abi, &writable) {
                Ok(fd) => Some(fd),
                Err(error) => {
                    return Outcome::with_error(
                        TaskStatus::Failed,
                        format!("cannot build the task's Landlock ruleset: {error}"),
                    );
                }
            }
        }
    };
    let ruleset_fd = ruleset.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &workdir.0)
        .env("TMPDIR", &workdir.0)
        .env("TASKCTL_TASK_ID", spec.task_id)
        .env("TASKCTL_ATTEMPT", spec.attempt.to_string())
        .envs(spec.env)
        .current_dir(&workdir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some((uid, gid)) = user {
        // std drops supplementary groups when it changes the uid.
        cmd.uid(uid).gid(gid);
    }
    if let Some(key) = spec.idempotency_key {
        cmd.env("TASKCTL_IDEMPOTENCY_KEY", key);
    }
    if let Some(cwd) = spec.cwd {
        cmd.current_dir(cwd);
    }
    let limits = limits.clone();
    let (cpu, memory, files, processes, file_bytes) = (
        limits.cpu_seconds,
        limits.memory_bytes,
        limits.open_files,
        limits.processes,
        limits.file_bytes,
    );
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe syscalls (setsid, setrlimit, prctl); it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            // A new session: its own process group (pgid = pid), no
            // controlling terminal.
            nix::unistd::setsid()?;
            setrlimit(Resource::RLIMIT_NPROC, processes, processes)?;
            setrlimit(Resource::RLIMIT_FSIZE, file_bytes, file_bytes)?;
            setrlimit(Resource::RLIMIT_CPU, cpu, cpu)?;
            setrlimit(Resource::RLIMIT_AS, memory, memory)?;
            setrlimit(Resource::RLIMIT_NOFILE, files, files)?;
            setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
            nix::sys::prctl::set_no_new_privs()?;
            if let Some(fd) = ruleset_fd {
                super::landlock::restrict_self(fd)?;
            }
            // Last: after it, only exec. apply_filter builds the kernel's
            // sock_fprog on the stack; nothing is allocated.
            if let Some(filter) = &seccomp
                && seccompiler::apply_filter(filter).is_err()
            {
                return Err(std::io::Error::last_os_error());
            }
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
        // setsid() makes the child's pid its group id.
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
            processes: 4096,
            file_bytes: 64 * 1024 * 1024,
            user: None,
            user_count: 1,
            work_root: std::env::temp_dir(),
            writable: Vec::new(),
        }
    }

    fn unfiltered(output_limit: usize) -> Sandbox {
        Sandbox {
            seccomp: None,
            landlock: None,
            output_limit,
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
        let limits = limits();
        run(
            &spec,
            sandbox_user(&limits),
            &limits,
            unfiltered(limit),
            Duration::from_millis(timeout_ms),
        )
        .await
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
        let limits = limits();
        let user = sandbox_user(&limits);
        let out = run(
            &spec,
            user,
            &limits,
            unfiltered(100),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(out.status, TaskStatus::Failed);
    }
}
