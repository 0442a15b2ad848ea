//! Start-up and shutdown: bad config exits 64 before binding anything,
//! readiness follows the broker, GPU queue consumed only with a GPU, SIGTERM
//! drains without losing a task.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use taskctl_protocol::{TaskKind, TaskStatus};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn bad_config_exits_64_naming_the_variable_before_binding() {
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_task-executor"))
        .env_clear()
        .env("BROKER_URL", "amqp://127.0.0.1:1/%2f")
        .env("MAX_CONCURRENT_TASKS", "many")
        .env("EXECUTION_TIMEOUT", "-5")
        .env("HEALTH_PORT", port.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MAX_CONCURRENT_TASKS: expected an integer from 1 to 10000, got `many`"),
        "{stderr}"
    );
    assert!(stderr.contains("EXECUTION_TIMEOUT"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_task-executor"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BROKER_URL"));
}

#[test]
fn unreadable_or_conflicting_secret_files_exit_64_naming_variable_and_path() {
    let missing = std::env::temp_dir().join(format!("agent-test-missing-{}", random_id()));
    let out = Command::new(env!("CARGO_BIN_EXE_task-executor"))
        .env_clear()
        .env("BROKER_URL", "amqp://agent@127.0.0.1:1/%2f")
        .env("BROKER_PASSWORD_FILE", &missing)
        .env("BROKER_USERNAME", "agent")
        .env("BROKER_USERNAME_FILE", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "BROKER_PASSWORD_FILE: expected a readable file holding BROKER_PASSWORD, cannot read `{}`",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "BROKER_USERNAME: expected either BROKER_USERNAME or BROKER_USERNAME_FILE, not both"
        ),
        "{stderr}"
    );
}

/// The way taskctl delivers credentials: files of mode 0400, the URL
/// without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_credentials_from_files_reach_the_broker() {
    use std::os::unix::fs::PermissionsExt;

    let h = Harness::new().await;
    let url = amqp_url();
    let uri: lapin::uri::AMQPUri = url.parse().unwrap();
    let (scheme, rest) = url.split_once("://").unwrap();
    let bare_url = format!(
        "{scheme}://{}",
        rest.rsplit_once('@').map_or(rest, |(_, r)| r)
    );
    let secrets = h.workdir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let mut vars = vec![("BROKER_URL".to_owned(), bare_url)];
    for (name, value) in [
        ("broker_username", &uri.authority.userinfo.username),
        ("broker_password", &uri.authority.userinfo.password),
    ] {
        let path = secrets.join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        vars.push((
            format!("{}_FILE", name.to_ascii_uppercase()),
            path.display().to_string(),
        ));
    }
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _agent = h.agent("files", &extra).await;
    h.publish(&task("via-files", TaskKind::Noop)).await;
    let results = h.results(1, WAIT).await;
    assert_eq!(results[0].task_id, "via-files");
    assert_eq!(results[0].status, TaskStatus::Succeeded);
    h.cleanup().await;
}

#[test]
fn a_port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_task-executor"))
        .env_clear()
        .env("BROKER_URL", "amqp://127.0.0.1:1/%2f")
        .env("ALLOW_UNSIGNED_TASKS", "true")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("HEALTH_PORT", port.to_string())
        .env("METRICS_PORT", free_port().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("failed to bind the health port 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_a_broker_but_alive_and_exits_0_on_sigterm() {
    let workdir = std::env::temp_dir().join(format!("agent-test-nobroker-{}", random_id()));
    std::fs::create_dir_all(&workdir).unwrap();
    let env = vec![
        (
            "BROKER_URL".to_owned(),
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()),
        ),
        ("BIND_ADDRESS".to_owned(), "127.0.0.1".to_owned()),
        ("ALLOW_UNSIGNED_TASKS".to_owned(), "true".to_owned()),
    ];
    let mut agent = Agent::spawn("nobroker", &env, &workdir);
    eventually("health answers", Duration::from_secs(10), || async {
        reqwest::get(agent.url("/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let (status, body) = agent.ready().await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["waiting_on"][0], "broker");
    agent.sigterm();
    assert_eq!(
        agent.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    let _ = std::fs::remove_dir_all(&workdir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_queue_is_consumed_only_when_a_gpu_is_present() {
    let h = Harness::new().await;
    let plain = h.agent("cpu", &[]).await;
    assert_eq!(plain.ready().await.unwrap().1["gpus"], 0);
    assert_eq!(plain.metric("task_executor_gpus").await, 0.0);
    h.publish_to(
        &h.gpu_queue,
        &task("gpu-1", TaskKind::Noop),
        Default::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        h.ready_count(&h.gpu_queue).await,
        1,
        "a CPU-only agent took a GPU task"
    );
    assert_eq!(h.consumer_count(&h.gpu_queue).await, 0);
    assert_eq!(h.consumer_count(&h.task_queue).await, 1);

    // A device directory with nvidia0 is what the driver gives a GPU node.
    let dev = h.workdir.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("nvidia0"), b"").unwrap();
    std::fs::write(dev.join("nvidiactl"), b"").unwrap();
    let gpu = h
        .agent("gpu", &[("GPU_DEVICE_DIR", dev.to_str().unwrap())])
        .await;
    assert_eq!(gpu.ready().await.unwrap().1["gpus"], 1);
    assert_eq!(gpu.metric("task_executor_gpus").await, 1.0);
    let r = &h.results(1, WAIT).await[0];
    assert_eq!(r.task_id, "gpu-1");
    assert!(r.agent_id.ends_with("-gpu"), "{r:?}");
    assert_eq!(h.consumer_count(&h.gpu_queue).await, 1);
    // The management API names the consumer (its statistics lag a few seconds).
    let mgmt = env("TASKCTL_TEST_RABBITMQ_MGMT_URL");
    let url = format!("{mgmt}/api/queues/%2f/{}", h.gpu_queue);
    eventually(
        "the management API lists the GPU agent's consumer",
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move {
                let queue: serde_json::Value = reqwest::Client::new()
                    .get(&url)
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                queue["consumer_details"].as_array().is_some_and(|c| {
                    c.len() == 1
                        && c[0]["consumer_tag"]
                            .as_str()
                            .is_some_and(|t| t.contains("-gpu."))
                })
            }
        },
    )
    .await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_tasks_and_leaves_the_rest_queued() {
    let h = Harness::new().await;
    let mut first = h
        .agent(
            "first",
            &[
                ("MAX_CONCURRENT_TASKS", "4"),
                ("SHUTDOWN_GRACE_PERIOD", "20000"),
            ],
        )
        .await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            task(
                &format!("drain-{i}"),
                TaskKind::Echo {
                    message: format!("{i}"),
                    delay_ms: 1500,
                },
            )
        })
        .collect();
    h.publish_many(&tasks).await;
    eventually("tasks in flight", Duration::from_secs(10), || async {
        first.metric("task_executor_tasks_in_flight").await >= 4.0
    })
    .await;
    let signalled = Instant::now();
    first.sigterm();
    first.wait_not_ready(Duration::from_secs(5)).await;
    let status = first.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", first.log_text());
    assert!(
        signalled.elapsed() >= Duration::from_millis(500),
        "did not wait for in-flight tasks"
    );
    let done_by_first = h.ready_count(&h.result_queue).await as usize;
    assert!((4..20).contains(&done_by_first), "{done_by_first}");

    let _second = h.agent("second", &[("MAX_CONCURRENT_TASKS", "20")]).await;
    let results = h.results(20, WAIT).await;
    let map = by_task(&results);
    assert_eq!(map.len(), 20, "every task has a result");
    assert!(
        map.values().all(|rs| rs.len() == 1),
        "no task ran twice: {map:?}"
    );
    assert!(results.iter().all(|r| r.status == TaskStatus::Succeeded));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_kills_and_requeues_the_task() {
    let h = Harness::new().await;
    let mut agent = h.agent("a", &[("SHUTDOWN_GRACE_PERIOD", "500")]).await;
    h.publish(&task("long", sh("sleep 60"))).await;
    eventually("task in flight", Duration::from_secs(10), || async {
        agent.metric("task_executor_tasks_in_flight").await >= 1.0
    })
    .await;
    agent.sigterm();
    assert_eq!(
        agent.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );
    assert_eq!(
        h.ready_count(&h.task_queue).await,
        1,
        "the task went back to the queue"
    );
    assert_eq!(h.ready_count(&h.result_queue).await, 0);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_are_counted_from_nvidia_smi_when_there_are_no_device_files() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new().await;
    // Test double of the driver's tool: prints what `nvidia-smi -L` prints on
    // a two-GPU node.
    let bin = h.workdir.join("fake-nvidia-smi");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("nvidia-smi");
    std::fs::write(
        &tool,
        "#!/bin/sh\n[ \"$1\" = -L ] || exit 2\n\
         echo 'GPU 0: NVIDIA A10G (UUID: GPU-1)'\necho 'GPU 1: NVIDIA A10G (UUID: GPU-2)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let agent = h.agent("smi", &[("PATH", &path)]).await;
    assert_eq!(agent.ready().await.unwrap().1["gpus"], 2);
    assert_eq!(h.consumer_count(&h.gpu_queue).await, 1);
    h.cleanup().await;
}
