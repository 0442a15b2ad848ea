//! One test per task kind, plus the sandbox's promises: the timeout kills
//! grandchildren, the memory limit holds, bad messages are rejected.

use std::{collections::BTreeMap, time::Duration};

use taskctl_protocol::{HEADER_DEAD_REASON, TaskKind, TaskStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_task_runs_with_env_cwd_and_captured_output() {
    let h = Harness::new().await;
    let _agent = h.agent("a", &[]).await;
    let mut env = BTreeMap::new();
    env.insert("GREETING".to_owned(), "hello".to_owned());
    let kind = TaskKind::Command {
        argv: [
            "/bin/sh",
            "-c",
            "echo $GREETING from $(pwd) attempt $TASKCTL_ATTEMPT; echo oops >&2",
        ]
        .map(String::from)
        .to_vec(),
        env,
        cwd: Some("/tmp".to_owned()),
    };
    h.publish(&task("cmd-1", kind)).await;
    let results = h.results(1, WAIT).await;
    let r = &results[0];
    assert_eq!(r.task_id, "cmd-1");
    assert_eq!(r.status, TaskStatus::Succeeded, "{r:?}");
    assert_eq!(r.output, "hello from /tmp attempt 1\n");
    assert_eq!(r.stderr, "oops\n");
    assert_eq!((r.code, r.kind.as_str()), (Some(0), "command"));
    assert_eq!(r.trace_id.as_deref(), Some("trace-cmd-1"));
    assert!(r.agent_id.ends_with("-a"));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group_including_grandchildren() {
    let h = Harness::new().await;
    let _agent = h.agent("a", &[("MAX_ATTEMPTS", "1")]).await;
    let pidfile = h.workdir.join("grandchild.pid");
    let script = format!("sleep 100 & echo $! > {}; sleep 100", pidfile.display());
    let mut t = task("slow", sh(&script));
    t.timeout_ms = Some(1000);
    h.publish(&t).await;
    let r = &h.results(1, WAIT).await[0];
    assert_eq!(r.status, TaskStatus::TimedOut, "{r:?}");
    assert!(r.run_ms >= 1000 && r.run_ms < 5000, "{r:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually(
        "grandchild `sleep 100` is gone",
        Duration::from_secs(5),
        || async move {
            // Gone, or a zombie waiting for its new parent to reap it: either way
            // it no longer runs.
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(stat) => stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')),
            }
        },
    )
    .await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_enforced() {
    let h = Harness::new().await;
    let _agent = h
        .agent("a", &[("COMMAND_MEMORY_MB", "64"), ("MAX_ATTEMPTS", "1")])
        .await;
    // 256 MiB cannot fit under a 64 MiB address-space limit; 8 MiB can.
    h.publish(&task(
        "big",
        command(&["/usr/bin/python3", "-c", "b = bytearray(256 << 20)"]),
    ))
    .await;
    h.publish(&task(
        "small",
        command(&["/usr/bin/python3", "-c", "b = bytearray(8 << 20)"]),
    ))
    .await;
    let results = h.results(2, WAIT).await;
    let map = by_task(&results);
    let big = map["big"][0];
    assert_eq!(big.status, TaskStatus::Failed, "{big:?}");
    assert!(big.stderr.contains("MemoryError"), "{big:?}");
    assert_eq!(
        map["small"][0].status,
        TaskStatus::Succeeded,
        "{:?}",
        map["small"]
    );
    h.cleanup().await;
}

/// A one-route HTTP server for the http kind (a real socket, not a double of
/// the agent: it stands for the integration target).
async fn serve_once_per_connection(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let key = request
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("idempotency-key: ")
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let body = format!("pong {key}");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_task_reaches_allowed_hosts_only() {
    let h = Harness::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_once_per_connection(listener));
    let allowed = format!("127.0.0.1:{port}");
    let _agent = h.agent("a", &[("HTTP_ALLOWED_HOSTS", &allowed)]).await;

    let mut ok = task(
        "http-ok",
        TaskKind::Http {
            method: "POST".into(),
            url: format!("http://127.0.0.1:{port}/ping"),
            headers: Default::default(),
            body: Some("ping".into()),
        },
    );
    ok.idempotency_key = Some("k-1".into());
    h.publish(&ok).await;
    h.publish(&task(
        "http-denied",
        TaskKind::Http {
            method: "GET".into(),
            url: "http://localhost:1/".into(),
            headers: Default::default(),
            body: None,
        },
    ))
    .await;
    let results = h.results(2, WAIT).await;
    let map = by_task(&results);
    let ok = map["http-ok"][0];
    assert_eq!(
        (ok.status, ok.code),
        (TaskStatus::Succeeded, Some(200)),
        "{ok:?}"
    );
    assert_eq!(ok.output, "pong k-1");
    let denied = map["http-denied"][0];
    assert_eq!(denied.status, TaskStatus::Rejected, "{denied:?}");
    assert!(
        denied
            .error
            .as_deref()
            .unwrap()
            .contains("HTTP_ALLOWED_HOSTS")
    );
    assert_eq!(h.drain_queue(&h.dead_queue).await.len(), 1);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_and_echo_succeed() {
    let h = Harness::new().await;
    let _agent = h.agent("a", &[]).await;
    h.publish(&task("noop", TaskKind::Noop)).await;
    h.publish(&task(
        "echo",
        TaskKind::Echo {
            message: "hi".into(),
            delay_ms: 10,
        },
    ))
    .await;
    let results = h.results(2, WAIT).await;
    let map = by_task(&results);
    assert_eq!(map["noop"][0].status, TaskStatus::Succeeded);
    assert_eq!(map["echo"][0].output, "hi");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_messages_are_rejected_and_dead_lettered() {
    let h = Harness::new().await;
    let agent = h.agent("a", &[]).await;
    let props = lapin::BasicProperties::default();
    h.publish_raw(&h.task_queue, b"{not json", props.clone())
        .await;
    h.publish_raw(
        &h.task_queue,
        br#"{"version":1,"id":"weird","kind":{"type":"launch-missiles"},"created_at_ms":0}"#,
        props.clone(),
    )
    .await;
    h.publish_raw(
        &h.task_queue,
        br#"{"version":99,"id":"future","kind":{"type":"noop"},"created_at_ms":0}"#,
        props,
    )
    .await;
    let results = h.results(3, WAIT).await;
    assert!(
        results.iter().all(|r| r.status == TaskStatus::Rejected),
        "{results:?}"
    );
    let ids: std::collections::BTreeSet<_> = results.iter().map(|r| r.task_id.as_str()).collect();
    assert_eq!(ids, ["", "future", "weird"].into_iter().collect());
    let dead = h.drain_queue(&h.dead_queue).await;
    assert_eq!(dead.len(), 3);
    for msg in &dead {
        let headers = msg.properties.headers().as_ref().unwrap();
        assert!(headers.contains_key(HEADER_DEAD_REASON), "{headers:?}");
    }
    // Still alive and consuming.
    assert_eq!(agent.ready().await.unwrap().0, 200);
    h.publish(&task("after", TaskKind::Noop)).await;
    assert_eq!(h.results(1, WAIT).await[0].task_id, "after");
    assert_eq!(
        agent
            .metric("task_executor_dead_letters_total{reason=\"malformed\"}")
            .await,
        3.0
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limit_and_no_new_privileges_apply() {
    let h = Harness::new().await;
    let _agent = h
        .agent("a", &[("COMMAND_CPU_SECONDS", "1"), ("MAX_ATTEMPTS", "1")])
        .await;
    let mut spin = task("spin", sh("while :; do :; done"));
    spin.timeout_ms = Some(60_000);
    h.publish(&spin).await;
    h.publish(&task(
        "privs",
        sh("grep NoNewPrivs /proc/self/status; ulimit -t"),
    ))
    .await;
    let results = h.results(2, Duration::from_secs(60)).await;
    let map = by_task(&results);
    let spin = map["spin"][0];
    // SIGXCPU (24) at the soft limit; well before the 60 s timeout.
    assert_eq!(spin.status, TaskStatus::Failed, "{spin:?}");
    assert!(
        spin.error.as_deref().unwrap().contains("signal"),
        "{spin:?}"
    );
    assert!(spin.run_ms < 30_000, "{spin:?}");
    let privs = map["privs"][0];
    assert_eq!(privs.output, "NoNewPrivs:\t1\n1\n", "{privs:?}");
    h.cleanup().await;
}
