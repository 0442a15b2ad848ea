use crate::harness::{profile, stderr, stdout, taskctl_in};

/// A lease held by a live process (pid 1) of this machine, as another
/// taskctl would leave it.
fn hold_lock(dir: &std::path::Path) {
    let lock_dir = dir.join(".taskctl/task-local-external/development");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let lease = serde_json::json!({
        "holder": format!("alice@{host}"), "pid": 1, "run_id": "r-other", "operation": "deploy",
        "started_at": now - 60, "expires_at": now + 3600,
    });
    std::fs::write(lock_dir.join("lock.json"), lease.to_string()).unwrap();
}

#[test]
fn lock_status_names_the_holder_and_break_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let local = profile("local-external.yaml");
    let out = taskctl_in(dir.path(), &["lock", "status", "-p", &local]);
    assert_eq!(
        stdout(&out),
        "task-local-external/development is not locked\n"
    );

    hold_lock(dir.path());
    let out = taskctl_in(dir.path(), &["lock", "status", "-p", &local]);
    let text = stdout(&out);
    assert!(
        text.contains("locked by alice@") && text.contains("deploy run r-other"),
        "{text}"
    );
    let out = taskctl_in(dir.path(), &["status", "-p", &local, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["lock"]["run_id"], "r-other");

    // Without --yes and without a terminal, nobody can confirm: refused.
    let out = taskctl_in(
        dir.path(),
        &["lock", "break", "--reason", "stuck", "-p", &local],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        dir.path()
            .join(".taskctl/task-local-external/development/lock.json")
            .exists()
    );

    let out = taskctl_in(
        dir.path(),
        &[
            "lock",
            "break",
            "--reason",
            "holder crashed",
            "--yes",
            "-p",
            &local,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !dir.path()
            .join(".taskctl/task-local-external/development/lock.json")
            .exists()
    );
    let out = taskctl_in(dir.path(), &["audit", "-p", &local, "-o", "json"]);
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = &audit[0];
    assert_eq!(entry["action"], "lock_break");
    assert_eq!(entry["run_id"], "r-other");
    assert!(
        entry["detail"].as_str().unwrap().contains("holder crashed"),
        "{entry}"
    );
}

#[test]
fn status_of_a_fresh_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = taskctl_in(
        dir.path(),
        &["status", "-p", &profile("local-external.yaml")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("lock         free") && text.contains("last run     none"),
        "{text}"
    );
}

/// An empty lock file (what a crash of an older taskctl left between
/// creating and writing it) blocks runs: `lock status` says so and how to
/// get out, `lock break` removes it and says what it removed.
#[test]
fn an_empty_lock_file_is_reported_and_broken() {
    let dir = tempfile::tempdir().unwrap();
    let local = profile("local-external.yaml");
    let lock_dir = dir.path().join(".taskctl/task-local-external/development");
    std::fs::create_dir_all(&lock_dir).unwrap();
    std::fs::write(lock_dir.join("lock.json"), b"").unwrap();

    let out = taskctl_in(dir.path(), &["lock", "status", "-p", &local]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("lock.json is unreadable (it is empty)") && err.contains("taskctl lock break"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = taskctl_in(
        dir.path(),
        &["lock", "break", "--reason", "crash", "--yes", "-p", &local],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("removed an unreadable lock file (it is empty)"),
        "{said}"
    );
    assert!(!lock_dir.join("lock.json").exists());
    let out = taskctl_in(dir.path(), &["audit", "-p", &local, "-o", "json"]);
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        audit[0]["detail"]
            .as_str()
            .unwrap()
            .contains("unreadable lock file"),
        "{audit}"
    );
    let out = taskctl_in(dir.path(), &["lock", "status", "-p", &local]);
    assert_eq!(
        stdout(&out),
        "task-local-external/development is not locked\n"
    );
}

/// `status --watch` refreshes until stopped: with `-o json`, one compact
/// document per line per refresh; `--interval` without `--watch` is a
/// usage error.
#[test]
fn status_watch_prints_a_document_per_refresh() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let local = profile("local-external.yaml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taskctl"))
        .current_dir(dir.path())
        .args([
            "status",
            "--watch",
            "--interval",
            "200ms",
            "-o",
            "json",
            "-p",
            &local,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let line = lines.next().expect("a refresh").unwrap();
        let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            doc["environment"], "task-local-external/development",
            "{doc}"
        );
    }
    // Three documents, two intervals apart at least.
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    // Ctrl-C stops it, successfully.
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    let out = taskctl_in(dir.path(), &["status", "--interval", "1s", "-p", &local]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}
