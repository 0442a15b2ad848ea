//! Sealed and uninitialized servers: this test starts its own OpenBao
//! processes (the `bao` binary of the test environment) on free loopback
//! ports, in a temporary directory, and stops them when done.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taskctl_vault::{Vault, VaultError};

fn bao_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TASKCTL_TEST_BAO") {
        return p.into();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let venv = home.join(".cache/taskctl-test-env/venv/bin/bao");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("bao")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server this test started; killed (by its own handle) when dropped.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str], dir: tempfile::TempDir) -> Server {
    let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
    let child = Command::new(bao_binary())
        .args(args)
        // The dev server writes its root token to $HOME/.vault-token.
        .env("HOME", dir.path())
        .env_remove("VAULT_ADDR")
        .env_remove("BAO_ADDR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (set TASKCTL_TEST_BAO to the bao binary)",
                bao_binary().display()
            )
        });
    Server { child, _dir: dir }
}

async fn wait_listening(addr: &str, server: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        if client
            .get(format!("{addr}/v1/sys/health"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        if let Some(status) = server.child.try_wait().unwrap() {
            let log =
                std::fs::read_to_string(server._dir.path().join("bao.log")).unwrap_or_default();
            panic!("bao exited with {status}: {log}");
        }
        assert!(
            Instant::now() < deadline,
            "bao at {addr} did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn uninitialized_server() {
    let Some(_env) = common::env("uninitialized_server") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let cluster_port = free_port();
    let data_dir = dir.path().join("raft");
    std::fs::create_dir(&data_dir).unwrap();
    // OpenBao 2.x has no file storage; raft (one node) it is.
    let config = format!(
        "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\napi_addr = \"{addr}\"\ncluster_addr = \"https://127.0.0.1:{cluster_port}\"\n",
        data_dir.display()
    );
    let hcl = dir.path().join("server.hcl");
    std::fs::write(&hcl, config).unwrap();
    let mut server = start(&["server", &format!("-config={}", hcl.display())], dir);
    wait_listening(&addr, &mut server).await;

    let e = Vault::connect(common::config_with(&addr, &[("VAULT_TOKEN", "anything")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, VaultError::Uninitialized { addr: a } if *a == addr),
        "{e:?}"
    );
    assert!(e.to_string().contains(&addr), "{e}");
}

#[tokio::test]
async fn sealed_server() {
    let Some(_env) = common::env("sealed_server") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut server = start(
        &[
            "server",
            "-dev",
            "-dev-root-token-id=root",
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ],
        dir,
    );
    wait_listening(&addr, &mut server).await;
    let root = common::config_with(&addr, &[("VAULT_TOKEN", "root")]);

    // Unsealed: connects, and health says so.
    let v = Vault::connect(root.clone())
        .await
        .expect("dev server before sealing");
    assert!(!v.health().await.unwrap().sealed);

    let resp = reqwest::Client::new()
        .put(format!("{addr}/v1/sys/seal"))
        .header("X-Vault-Token", "root")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "seal: {}", resp.status());

    let e = Vault::connect(root).await.unwrap_err();
    assert!(
        matches!(&e, VaultError::Sealed { addr: a } if *a == addr),
        "{e:?}"
    );
    assert!(e.to_string().contains(&addr), "{e}");
    // The client connected before sealing sees it too.
    let h = v.health().await.unwrap();
    assert!(h.sealed && h.initialized, "{h:?}");
    let e = v.read("secret", "anything", None).await.unwrap_err();
    assert!(matches!(e, VaultError::Sealed { .. }), "{e:?}");
}
