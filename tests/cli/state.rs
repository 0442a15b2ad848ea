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

/// `taskctl checklist` judges seed 001's checklist from the profile and the
/// audit log: the local stack passes what it does (secrets in Vault, TLS
/// to the broker, probes, alerting to a webhook, ports on loopback), fails
/// what it does not (PostgreSQL without TLS, open Prometheus, no restore or
/// rollback rehearsed yet) and exits 1; a recent rollback that verified the
/// backups in the audit log turns those two items to pass; a broker reached
/// over plain AMQP fails the TLS item.
#[test]
fn checklist_judges_the_profile_and_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let local = profile("local.yaml");
    let judge = |p: &str| {
        let out = taskctl_in(dir.path(), &["checklist", "-p", p, "-o", "json"]);
        let items: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        let verdicts: std::collections::BTreeMap<String, serde_json::Value> = items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["id"].as_str().unwrap().to_string(), i.clone()))
            .collect();
        (out.status.code(), verdicts)
    };
    let (code, items) = judge(&local);
    assert_eq!(code, Some(1), "a FAIL exits 1");
    assert_eq!(items.len(), 10, "the seed's ten items");
    let verdict = |items: &std::collections::BTreeMap<String, serde_json::Value>, id: &str| {
        items[id]["verdict"].as_str().unwrap().to_string()
    };
    for (id, want) in [
        ("secrets_in_vault", "pass"),
        ("database_tls", "fail"),
        ("authenticated_endpoints", "fail"),
        ("health_checks", "pass"),
        ("monitoring_and_alerting", "pass"),
        ("backup_and_restore", "fail"),
        ("rollback", "fail"),
        ("image_scanning", "unknown"),
        ("network_policies", "pass"),
        ("load_testing", "unknown"),
    ] {
        assert_eq!(verdict(&items, id), want, "{id}: {:#}", items[id]);
    }
    let evidence = items["database_tls"]["evidence"].to_string();
    assert!(
        evidence.contains("RabbitMQ: AMQP over TLS only")
            && evidence.contains("PostgreSQL: no TLS"),
        "{evidence}"
    );
    assert!(
        items["secrets_in_vault"]["evidence"]
            .to_string()
            .contains("secret/taskctl/local/messaging"),
        "{:#}",
        items["secrets_in_vault"]
    );

    // A rollback two days ago whose backup_verification restored the dump.
    let status = taskctl_in(dir.path(), &["status", "-p", &local, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let state = dir.path().join(status["state"].as_str().unwrap());
    std::fs::create_dir_all(&state).unwrap();
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    let entry = serde_json::json!({
        "at": humantime::format_rfc3339_seconds(two_days_ago).to_string(),
        "actor": "alice@ops-1", "action": "rollback", "environment": "task-local/development",
        "run_id": "r-drill",
        "detail": "rolled back from 2 to release 1 as release 3; backups: restored tasks-20261205.dump into a scratch database: 4 tables",
    });
    std::fs::write(state.join("audit.jsonl"), format!("{entry}\n")).unwrap();
    let (_, items) = judge(&local);
    assert_eq!(
        verdict(&items, "backup_and_restore"),
        "pass",
        "{:#}",
        items["backup_and_restore"]
    );
    assert_eq!(
        verdict(&items, "rollback"),
        "pass",
        "{:#}",
        items["rollback"]
    );
    assert!(
        items["backup_and_restore"]["evidence"]
            .to_string()
            .contains("last restore verified 2days"),
        "{:#}",
        items["backup_and_restore"]
    );

    // The agents' broker reached over plain AMQP: the TLS item names it.
    let (code, items) = judge(&profile("local-external.yaml"));
    assert_eq!(code, Some(1));
    assert_eq!(verdict(&items, "database_tls"), "fail");
    assert!(
        items["database_tls"]["reason"]
            .as_str()
            .unwrap()
            .contains("RabbitMQ (external URL is not amqps://)"),
        "{:#}",
        items["database_tls"]
    );

    // The human form says the same, with a summary line.
    let out = taskctl_in(dir.path(), &["checklist", "-p", &local]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("FAIL") && text.contains("failed,"), "{text}");
}
