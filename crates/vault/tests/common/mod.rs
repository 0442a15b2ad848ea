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
