//! Only signed tasks run, each in a sandbox, and no message can stall the
//! consumer: the issue-14 checks against the real RabbitMQ.

use std::time::Duration;

use lapin::{BasicProperties, types::AMQPValue};
use taskctl_protocol::{HEADER_DEAD_REASON, TaskKind, TaskMessage, TaskStatus};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The dead-letter reasons of what is in the test's dead-letter queue.
async fn dead_reasons(h: &Harness, n: usize) -> Vec<String> {
    let mut reasons = Vec::new();
    for _ in 0..300 {
        for msg in h.drain_queue(&h.dead_queue).await {
            let headers = msg.properties.headers().clone().unwrap_or_default();
            match headers.inner().get(HEADER_DEAD_REASON) {
                Some(AMQPValue::LongString(s)) => {
                    reasons.push(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                other => panic!("no dead-letter reason: {other:?}"),
            }
        }
        if reasons.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reasons.sort();
    reasons
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_unknown_key_expired_and_replayed_tasks_never_run() {
    let h = Harness::new().await;
    let agent = h.agent("a", &[]).await;
    let marker = h.workdir.join("ran");
    let touch = |id: &str| task(id, sh(&format!("echo {id} >> {}", marker.display())));

    // Unsigned.
    let body = serde_json::to_vec(&touch("unsigned")).unwrap();
    h.publish_unsigned(&h.task_queue, &body, BasicProperties::default())
        .await;
    // Signed by a key the agent does not hold.
    let stranger = new_signer();
    let body = serde_json::to_vec(&touch("stranger")).unwrap();
    h.publish_unsigned(
        &h.task_queue,
        &body,
        signed_props(&stranger, &body, BasicProperties::default()),
    )
    .await;
    // Signed, then altered on the way.
    let body = serde_json::to_vec(&touch("tampered")).unwrap();
    let props = signed_props(&h.signer, &body, BasicProperties::default());
    let altered = String::from_utf8(body)
        .unwrap()
        .replace("tampered", "tampereD");
    h.publish_unsigned(&h.task_queue, altered.as_bytes(), props)
        .await;
    // Signed but expired.
    let expired = TaskMessage {
        expires_at_ms: Some(now_ms() - 1),
        ..touch("expired")
    };
    h.publish(&expired).await;
    // A valid task, run once; then the very same message again.
    let valid = touch("valid");
    h.publish(&valid).await;
    let first = h.results(5, WAIT).await;
    assert_eq!(
        first
            .iter()
            .filter(|r| r.status == TaskStatus::Succeeded)
            .map(|r| r.task_id.as_str())
            .collect::<Vec<_>>(),
        ["valid"],
        "{first:#?}"
    );
    h.publish(&valid).await;
    let replay = h.results(1, WAIT).await;
    assert_eq!(replay[0].status, TaskStatus::Rejected, "{replay:?}");

    let reasons = dead_reasons(&h, 5).await;
    assert_eq!(reasons.len(), 5, "{reasons:#?}");
    for expected in [
        "is not signed",
        "which this agent does not trust",
        "does not verify",
        "expired",
        "replay of task `valid`",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason with `{expected}` in {reasons:#?}"
        );
    }
    // Only the valid task ever ran.
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "valid\n");
    for (label, n) in [
        ("unsigned", 1.0),
        ("unknown_key", 1.0),
        ("bad_signature", 1.0),
        ("expired", 1.0),
        ("replayed", 1.0),
    ] {
        let series = format!("task_executor_dead_letters_total{{reason=\"{label}\"}}");
        assert_eq!(agent.metric(&series).await, n, "{series}");
    }
    // An unauthenticated sender's reply_to gets nothing: results of
    // rejected unsigned tasks went to the result queue (read above).
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_accepts_old_and_new_keys_at_once() {
    let h = Harness::new().await;
    let next = new_signer();
    let both = format!(
        "{}\n{}",
        h.signer.public_key_base64(),
        next.public_key_base64()
    );
    let _agent = h
        .agent("a", &[("TASK_SIGNING_PUBLIC_KEYS", both.as_str())])
        .await;
    h.publish(&task("old-key", TaskKind::Noop)).await;
    let body = serde_json::to_vec(&task("new-key", TaskKind::Noop)).unwrap();
    h.publish_unsigned(
        &h.task_queue,
        &body,
        signed_props(&next, &body, BasicProperties::default()),
    )
    .await;
    let results = h.results(2, WAIT).await;
    assert!(
        results.iter().all(|r| r.status == TaskStatus::Succeeded),
        "{results:#?}"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_and_the_consumer_goes_on() {
    let h = Harness::new().await;
    let agent = h.agent("a", &[]).await;
    let props = BasicProperties::default();
    // A 300-byte id (it used to panic the handler), correctly signed.
    h.publish(&task(&"x".repeat(300), TaskKind::Noop)).await;
    // 20 MiB of JSON-ish bytes, signed.
    let mut big = br#"{"version":1,"id":"big","kind":{"type":"echo","message":""#.to_vec();
    big.resize(20 * 1024 * 1024, b'a');
    big.extend_from_slice(br#""},"created_at_ms":0}"#);
    h.publish_raw(&h.task_queue, &big, props.clone()).await;
    // Invalid JSON and an empty body, signed.
    h.publish_raw(&h.task_queue, b"{\"version\":1,", props.clone())
        .await;
    h.publish_raw(&h.task_queue, b"", props.clone()).await;
    // Bad UTF-8.
    h.publish_raw(&h.task_queue, b"\xff\xfe\xfd", props).await;

    let reasons = dead_reasons(&h, 5).await;
    assert_eq!(reasons.len(), 5, "{reasons:#?}");
    for expected in [
        "300 bytes is longer than 200",
        "exceeds MAX_MESSAGE_BYTES",
        "empty message body",
        "malformed task message",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason with `{expected}` in {reasons:#?}"
        );
    }
    // Still consuming, and /ready says so truthfully.
    assert_eq!(agent.ready().await.unwrap().0, 200);
    h.publish(&task("after", TaskKind::Noop)).await;
    let results = h.results(6, WAIT).await;
    assert!(
        results
            .iter()
            .any(|r| r.task_id == "after" && r.status == TaskStatus::Succeeded),
        "{results:#?}"
    );
    assert_eq!(h.ready_count(&h.task_queue).await, 0);
    assert_eq!(
        agent.metric("task_executor_handler_panics_total").await,
        0.0
    );
    assert!(
        !agent.log_text().contains("panicked"),
        "{}",
        agent.log_text()
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_kinds_and_programs_run() {
    let h = Harness::new().await;
    let _agent = h
        .agent(
            "a",
            &[
                ("ENABLED_KINDS", "noop,command"),
                ("COMMAND_ALLOWED", "/bin/true"),
            ],
        )
        .await;
    h.publish(&task(
        "echo",
        TaskKind::Echo {
            message: "x".into(),
            delay_ms: 0,
        },
    ))
    .await;
    h.publish(&task("sh", sh("true"))).await;
    h.publish(&task("relative", command(&["true"]))).await;
    h.publish(&task("allowed", command(&["/bin/true"]))).await;
    let results = h.results(4, WAIT).await;
    let map = by_task(&results);
    assert_eq!(map["allowed"][0].status, TaskStatus::Succeeded);
    for id in ["echo", "sh", "relative"] {
        assert_eq!(map[id][0].status, TaskStatus::Rejected, "{id}");
    }
    assert!(
        map["echo"][0]
            .error
            .as_deref()
            .unwrap()
            .contains("ENABLED_KINDS")
    );
    assert!(map["sh"][0].error.as_deref().unwrap().contains("/bin/sh"));
    assert!(
        map["relative"][0]
            .error
            .as_deref()
            .unwrap()
            .contains("absolute path")
    );
    h.cleanup().await;
}

/// Pids of processes owned by `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let owner = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok());
        if owner == Some(uid) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_contains_environ_reads_fork_bombs_big_writes_syscalls_and_leftovers() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test switches the sandbox user and needs root (CI runs as root)");
    }
    let h = Harness::new().await;
    // A uid of its own, so the fork bomb's processes are countable and no
    // other test's tasks share its RLIMIT_NPROC.
    let uid = 61_000 + (std::process::id() % 1000);
    let uid_text = uid.to_string();
    let work = h.workdir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let work_text = work.display().to_string();
    let agent = h
        .agent(
            "a",
            &[
                ("SANDBOX_UID", uid_text.as_str()),
                ("SANDBOX_GID", uid_text.as_str()),
                ("COMMAND_MAX_PROCESSES", "40"),
                ("COMMAND_MAX_FILE_MB", "8"),
                ("COMMAND_WORK_DIR", work_text.as_str()),
                ("MAX_ATTEMPTS", "1"),
            ],
        )
        .await;
    let agent_pid = agent.child.id();

    let environ = task(
        "environ",
        sh(&format!("id -u; cat /proc/{agent_pid}/environ")),
    );
    let mut bomb = task("fork-bomb", sh("bomb() { bomb | bomb & }; bomb; sleep 30"));
    bomb.timeout_ms = Some(3_000);
    let write = task(
        "big-write",
        sh("head -c 2147483648 /dev/zero > $TMPDIR/big; echo status $?; ls -l $TMPDIR/big"),
    );
    let leftover = task("leftover", sh("echo kept > $HOME/file; pwd"));
    // Refused by the seccomp filter (both succeed for nobody without it).
    let namespaces = task("unshare", sh("unshare -U true; echo status $?"));
    let ptrace = task(
        "ptrace",
        command(&[
            "/usr/bin/python3",
            "-c",
            "import ctypes; l = ctypes.CDLL(None, use_errno=True); \
             print(l.ptrace(0, 0, 0, 0), ctypes.get_errno())",
        ]),
    );
    // Landlock: no writes outside the task's own directory (and the
    // harness's COMMAND_WRITABLE_PATHS), reads still allowed.
    let outside = std::env::temp_dir().join(format!("landlock-probe-{}", random_id()));
    let escape = task(
        "escape",
        sh(&format!(
            "echo x > {} 2>/dev/null; echo write $?; head -c 4 /etc/hostname >/dev/null; echo read $?",
            outside.display()
        )),
    );
    for t in [&environ, &write, &leftover, &namespaces, &ptrace, &escape] {
        h.publish(t).await;
    }
    let mut results = h.results(6, Duration::from_secs(60)).await;
    // The fork bomb alone: RLIMIT_NPROC counts every process of the
    // sandbox user, so while it holds the limit no other task of that user
    // can fork either (what a uid per agent, or a cgroup, isolates).
    h.publish(&bomb).await;
    results.extend(h.results(1, Duration::from_secs(60)).await);
    let map = by_task(&results);

    let r = map["environ"][0];
    assert_eq!(r.status, TaskStatus::Failed, "{r:?}");
    assert_eq!(r.output.trim(), uid_text, "runs as the sandbox user: {r:?}");
    assert!(r.stderr.contains("Permission denied"), "{r:?}");

    let r = map["fork-bomb"][0];
    assert_eq!(r.status, TaskStatus::TimedOut, "{r:?}");
    eventually("no process of the task survives", WAIT, || async {
        processes_of(uid).is_empty()
    })
    .await;

    let r = map["big-write"][0];
    // head gets SIGXFSZ (25) at the limit: the shell reports 128 + 25.
    assert!(r.output.contains("status 153"), "{r:?}");
    assert!(
        r.output.contains(&(8u64 * 1024 * 1024).to_string()),
        "the file stopped at 8 MiB: {r:?}"
    );

    let r = map["unshare"][0];
    assert!(r.output.contains("status 1"), "{r:?}");
    assert!(r.stderr.contains("Operation not permitted"), "{r:?}");
    let r = map["ptrace"][0];
    assert_eq!(r.output.trim(), "-1 1", "ptrace refused with EPERM: {r:?}");

    let r = map["escape"][0];
    assert_eq!(r.output, "write 2\nread 0\n", "{r:?}");
    assert!(!outside.exists(), "the task wrote outside its directory");

    let r = map["leftover"][0];
    assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
    assert!(r.output.starts_with(&work_text), "{r:?}");
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "every private working directory was removed"
    );

    // The agent kept serving through all of it.
    h.publish(&task("after", TaskKind::Noop)).await;
    assert_eq!(h.results(1, WAIT).await[0].status, TaskStatus::Succeeded);
    assert_eq!(agent.ready().await.unwrap().0, 200);
    h.cleanup().await;
}

/// SANDBOX_UID_COUNT=2: each running command task has a uid of its own, so
/// a fork bomb exhausts only its own RLIMIT_NPROC (a task running beside it
/// still forks), and a descendant that left the task's process group with
/// setsid is killed when the task ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_per_task_isolates_fork_bombs_and_leaves_nothing_behind() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test switches the sandbox user and needs root (CI runs as root)");
    }
    let h = Harness::new().await;
    // Two uids of their own, apart from the other sandbox test's.
    let first = 62_000 + (std::process::id() % 500) * 2;
    let first_text = first.to_string();
    let work = h.workdir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let work_text = work.display().to_string();
    let _agent = h
        .agent(
            "a",
            &[
                ("SANDBOX_UID", first_text.as_str()),
                ("SANDBOX_GID", first_text.as_str()),
                ("SANDBOX_UID_COUNT", "2"),
                ("COMMAND_MAX_PROCESSES", "30"),
                ("COMMAND_WORK_DIR", work_text.as_str()),
                ("MAX_ATTEMPTS", "1"),
            ],
        )
        .await;
    let mut bomb = task(
        "bomb",
        sh("id -u; bomb() { bomb | bomb & }; bomb; sleep 30"),
    );
    bomb.timeout_ms = Some(4_000);
    // Starts while the bomb holds its uid's every process slot: with one
    // shared uid its forks would fail (and it would exit 9).
    let beside = task(
        "beside",
        sh("sleep 1; for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true || exit 9; done; id -u"),
    );
    h.publish(&bomb).await;
    h.publish(&beside).await;
    let results = h.results(2, Duration::from_secs(60)).await;
    let map = by_task(&results);
    let b = map["bomb"][0];
    let w = map["beside"][0];
    assert_eq!(b.status, TaskStatus::TimedOut, "{b:?}");
    assert_eq!(
        w.status,
        TaskStatus::Succeeded,
        "forks beside a fork bomb: {w:?}"
    );
    let bomb_uid: u32 = b.output.lines().next().unwrap().trim().parse().unwrap();
    let beside_uid: u32 = w.output.trim().parse().unwrap();
    assert_ne!(bomb_uid, beside_uid);
    for uid in [bomb_uid, beside_uid] {
        assert!((first..first + 2).contains(&uid), "{uid} from the pool");
        eventually("no process of the task's uid survives", WAIT, || async {
            processes_of(uid).is_empty()
        })
        .await;
    }

    // A sleeper that leaves the task's process group: killed with its uid.
    h.publish(&task("escape", sh("id -u; setsid sleep 60 & echo started")))
        .await;
    let r = h.results(1, WAIT).await.remove(0);
    assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
    let escape_uid: u32 = r.output.lines().next().unwrap().trim().parse().unwrap();
    assert!(r.output.contains("started"), "{r:?}");
    eventually("the setsid sleeper is gone with its task", WAIT, || async {
        processes_of(escape_uid).is_empty()
    })
    .await;
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "every private working directory was removed"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_never_go_to_a_queue_outside_the_result_queue() {
    let h = Harness::new().await;
    let _agent = h.agent("a", &[]).await;
    // Another application's queue on the same broker.
    let other = format!("{}.billing", h.prefix);
    h.channel
        .queue_declare(
            other.as_str().into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let props = BasicProperties::default().with_reply_to(other.as_str().into());
    h.publish_to(&h.task_queue, &task("elsewhere", TaskKind::Noop), props)
        .await;
    let results = h.results(1, WAIT).await;
    assert_eq!(results[0].task_id, "elsewhere");
    assert_eq!(h.ready_count(&other).await, 0);
    h.cleanup().await;
}
