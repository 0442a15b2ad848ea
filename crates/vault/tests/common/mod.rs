//! Shared helpers: the test OpenBao from scripts/test-env.sh, unique names,
//! raw HTTP calls with the root token for setting things up.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use taskctl_vault::{Secret, Vault, VaultConfig};

pub struct Env {
    pub addr: String,
    pub token: String,
}

/// The test server, or None (with a printed message) when
/// TASKCTL_TEST_VAULT_ADDR is unset.
pub fn env(test: &str) -> Option<Env> {
    let Ok(addr) = std::env::var("TASKCTL_TEST_VAULT_ADDR") else {
        eprintln!(
            "skipping {test}: TASKCTL_TEST_VAULT_ADDR is unset (run scripts/test-env.sh up and eval its env)"
        );
        return None;
    };
    let token = std::env::var("TASKCTL_TEST_VAULT_TOKEN").unwrap_or_else(|_| "root".into());
    Some(Env { addr, token })
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn config_with(addr: &str, vars: &[(&str, &str)]) -> VaultConfig {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    VaultConfig::from_lookup(Some(addr), &move |k| vars.get(k).cloned(), None).expect("config")
}

pub async fn root(env: &Env) -> Vault {
    Vault::connect(config_with(&env.addr, &[("VAULT_TOKEN", &env.token)]))
        .await
        .expect("connect with the root token")
}

pub fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Secret::new(*v)))
        .collect()
}

/// A raw API call with the root token; panics unless 2xx. Returns the JSON body (or Null).
pub async fn api(
    env: &Env,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = client
        .request(method.clone(), format!("{}/v1/{path}", env.addr))
        .header("X-Vault-Token", &env.token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

/// The `bao` binary for tests that start their own servers:
/// TASKCTL_TEST_BAO_BIN (scripts/test-env.sh), TASKCTL_TEST_BAO, or the test
/// environment's venv; None (with a printed message) when none exists.
pub fn bao_binary(test: &str) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    for var in ["TASKCTL_TEST_BAO_BIN", "TASKCTL_TEST_BAO"] {
        if let Some(p) = std::env::var_os(var) {
            return Some(PathBuf::from(p));
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let venv = home.join(".cache/taskctl-test-env/venv/bin/bao");
    if venv.exists() {
        return Some(venv);
    }
    eprintln!(
        "skipping {test}: no bao binary (set TASKCTL_TEST_BAO_BIN, or run scripts/test-env.sh up)"
    );
    None
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `bao` process a test started, its output in `log`; killed (by its own
/// handle, never by name) and reaped when dropped, also on panic.
pub struct BaoProcess {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl BaoProcess {
    /// Starts `bao ARGS` with HOME set to `home` (the dev server writes
    /// ~/.vault-token) and without VAULT_ADDR/BAO_ADDR, appending to `log`.
    pub fn start(
        bin: &std::path::Path,
        args: &[&str],
        home: &std::path::Path,
        log: std::path::PathBuf,
    ) -> BaoProcess {
        use std::process::{Command, Stdio};
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin)
            .args(args)
            .env("HOME", home)
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        BaoProcess { child, log }
    }

    /// Waits until `addr` answers HTTP; panics (with the log) if the process
    /// exits or 30 s pass.
    pub async fn wait_listening(&mut self, addr: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
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
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("bao exited with {status}: {log}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "bao at {addr} did not start listening"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for BaoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
