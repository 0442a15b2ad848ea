//! `setup::bootstrap` against an OpenBao dev server of the test's own (its
//! root token is revoked at the end, so never the shared one): KV v2,
//! taskctl's policy and AppRole, Kubernetes auth with one read-only role per
//! agent, the AppRole file 0600, and the root token revoked.

mod common;

use common::{BaoProcess, bao_binary, free_port};
use taskctl_vault::setup::{AgentRole, AgentsAuth, AppRoleFile, Bootstrap, bootstrap};
use taskctl_vault::{Secret, Vault, VaultConfig};

async fn get(addr: &str, token: &str, path: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .get(format!("{addr}/v1/{path}"))
        .header("X-Vault-Token", token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// A throwaway self-signed CA certificate (openssl), as the API server's.
fn ca_pem(dir: &std::path::Path) -> String {
    let (key, cert) = (dir.join("ca.key"), dir.join("ca.crt"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl makes a CA");
    std::fs::read_to_string(cert).unwrap()
}

#[tokio::test]
async fn bootstrap_sets_up_approle_and_agent_roles_then_revokes_the_root_token() {
    let Some(bin) = bao_binary("bootstrap") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut server = BaoProcess::start(
        &bin,
        &[
            "server",
            "-dev",
            "-dev-root-token-id=setup-root",
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ],
        dir.path(),
        dir.path().join("bao.log"),
    );
    server.wait_listening(&addr).await;

    let approle_file = dir.path().join("approle.json");
    let b = Bootstrap {
        mount: "secret".into(),
        approle_file: approle_file.clone(),
        agents: Some(AgentsAuth {
            kubernetes_host: "https://kubernetes.default.svc".into(),
            kubernetes_ca_cert: Some(ca_pem(dir.path())),
            roles: vec![AgentRole {
                name: "task-executor".into(),
                namespace: "agent-system".into(),
                service_account: "task-executor".into(),
                paths: vec!["messaging".into()],
            }],
        }),
    };
    let root = Secret::new("setup-root");
    let http = reqwest::Client::new();
    // An orphan admin token of the test's own, which outlives the root
    // token, to look at what bootstrap set up.
    let admin = http
        .post(format!("{addr}/v1/auth/token/create-orphan"))
        .header("X-Vault-Token", "setup-root")
        .json(&serde_json::json!({"policies": ["root"], "ttl": "10m"}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let file = bootstrap(&http, &addr, &root, &b).await.expect("bootstrap");

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&approle_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let read = AppRoleFile::read(&approle_file).unwrap();
    assert_eq!(read.role_id, file.role_id);
    assert!(!format!("{read:?}").contains(read.secret_id.expose()));

    // The root token is gone.
    let (status, _) = get(&addr, "setup-root", "auth/token/lookup-self").await;
    assert_eq!(status, 403, "the root token still works");

    // taskctl logs in with the AppRole and may write its mount, nothing else.
    let cfg = VaultConfig::from_lookup(
        Some(&addr),
        &|k| match k {
            "VAULT_ROLE_ID" => Some(read.role_id.clone()),
            "VAULT_SECRET_ID" => Some(read.secret_id.expose().to_string()),
            _ => None,
        },
        None,
    )
    .unwrap();
    let vault = Vault::connect(cfg).await.expect("AppRole login");
    let data = common::data(&[("password", "written-through-approle")]);
    vault
        .write("secret", "messaging", &data, Some(0))
        .await
        .unwrap();
    let token_of = |v: &Vault| format!("{v:?}");
    assert!(!token_of(&vault).contains("written-through-approle"));
    let denied = vault
        .write("cubbyhole", "x", &data, None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        denied.to_string().contains("permission denied")
            || denied.to_string().contains("cubbyhole"),
        "{denied}"
    );

    // Kubernetes auth: one role per agent, bound to its service account,
    // with a policy that reads its own paths only. (A second server would
    // be needed to read them with a token: the root is revoked, so a
    // recovery read uses a token made from the AppRole's own lookups.)
    let login = reqwest::Client::new()
        .post(format!("{addr}/v1/auth/approle/login"))
        .json(&serde_json::json!({"role_id": read.role_id, "secret_id": read.secret_id.expose()}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let token = login["auth"]["client_token"].as_str().unwrap().to_string();
    let (status, _) = get(&addr, &token, "auth/kubernetes/role/task-executor").await;
    assert_eq!(
        status, 403,
        "taskctl's AppRole cannot read auth configuration"
    );
    let (status, role) = get(&addr, &admin, "auth/kubernetes/role/task-executor").await;
    assert_eq!(status, 200, "{role}");
    assert_eq!(
        role["data"]["bound_service_account_names"][0],
        "task-executor"
    );
    assert_eq!(
        role["data"]["bound_service_account_namespaces"][0],
        "agent-system"
    );
    assert_eq!(
        role["data"]["token_policies"][0],
        "taskctl-agent-task-executor"
    );
    let (_, policy) = get(
        &addr,
        &admin,
        "sys/policies/acl/taskctl-agent-task-executor",
    )
    .await;
    assert_eq!(
        policy["data"]["policy"],
        "path \"secret/data/messaging\" { capabilities = [\"read\"] }\n"
    );
    assert_eq!(
        taskctl_vault::setup::agent_policy("secret", &["messaging".into()]),
        "path \"secret/data/messaging\" { capabilities = [\"read\"] }\n"
    );
    // A second bootstrap refuses to overwrite the AppRole file.
    let again = bootstrap(&http, &addr, &root, &b).await.unwrap_err();
    assert!(again.to_string().contains("never overwritten"), "{again}");
    drop(server);
}
