//! A three-node OpenBao raft cluster auto-unsealed by the `transit` seal (the
//! stand-in for `seal "awskms"`, which the OpenBao 2.7 binary lacks; taskctl
//! sees the same `sys/seal-status`): taskctl initializes it with recovery
//! shares, sends no unseal key, waits for the nodes to unseal themselves, and
//! names a node whose seal cannot reach its key holder.
//!
//! The test starts its own key holder (`bao server -dev` with the transit
//! engine and key `autounseal`) and three `bao server` raft nodes (temporary
//! directory, free loopback ports, `retry_join` to each other,
//! `performance_multiplier = 1`), and kills them when done, also on panic.

mod common;

use common::BaoProcess;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use taskctl_vault::VaultError;
use taskctl_vault::sys::{
    ClusterSpec, KeysFile, NodeAction, NodeStatus, PgpKey, ensure_cluster, node_status,
    plan_cluster,
};

const KEY_HOLDER_TOKEN: &str = "autounseal-test-root";

struct Node {
    addr: String,
    /// Seal token: the key holder's root token.
    config: PathBuf,
    /// Seal token allowed to encrypt but not to decrypt (until granted).
    config_encrypt_only: PathBuf,
    log: PathBuf,
    process: Option<BaoProcess>,
}

/// The processes are dropped (killed) before the directory is removed.
struct Setup {
    bin: PathBuf,
    key_holder: Option<BaoProcess>,
    key_holder_addr: String,
    key_holder_log: PathBuf,
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

/// A free port whose successor is free too (a dev server's cluster port).
fn free_port_pair() -> u16 {
    loop {
        let p = common::free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

impl Setup {
    async fn start(bin: &Path, http: &reqwest::Client, n: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let kh_port = free_port_pair();
        let key_holder_addr = format!("http://127.0.0.1:{kh_port}");
        let key_holder_log = dir.path().join("key-holder.log");
        let mut kh = BaoProcess::start(
            bin,
            &[
                "server",
                "-dev",
                &format!("-dev-root-token-id={KEY_HOLDER_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{kh_port}"),
            ],
            dir.path(),
            key_holder_log.clone(),
        );
        kh.wait_listening(&key_holder_addr).await;
        let mut s = Setup {
            bin: bin.to_path_buf(),
            key_holder: Some(kh),
            key_holder_addr,
            key_holder_log,
            nodes: Vec::new(),
            dir,
        };
        s.key_holder_api(
            http,
            "POST",
            "sys/mounts/transit",
            json(r#"{"type":"transit"}"#),
        )
        .await;
        s.key_holder_api(http, "POST", "transit/keys/autounseal", None)
            .await;
        s.set_encrypt_only_policy(http, false).await;
        let created = s
            .key_holder_api(
                http,
                "POST",
                "auth/token/create",
                json(r#"{"policies":["seal-encrypt-only"],"no_parent":true}"#),
            )
            .await;
        let weak_token = created["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_string();

        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (common::free_port(), common::free_port()))
            .collect();
        for (i, (api, cluster)) in ports.iter().enumerate() {
            let data = s.dir.path().join(format!("n{i}"));
            std::fs::create_dir(&data).unwrap();
            let joins: String = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (p, _))| {
                    format!(
                        "  retry_join {{\n    leader_api_addr = \"http://127.0.0.1:{p}\"\n  }}\n"
                    )
                })
                .collect();
            let hcl = |token: &str| {
                format!(
                    "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n{i}\"\n  performance_multiplier = 1\n{joins}}}\n\
                     listener \"tcp\" {{\n  address = \"127.0.0.1:{api}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n\
                     seal \"transit\" {{\n  address = \"{}\"\n  token = \"{token}\"\n  key_name = \"autounseal\"\n  mount_path = \"transit/\"\n  disable_renewal = \"true\"\n}}\n\
                     api_addr = \"http://127.0.0.1:{api}\"\ncluster_addr = \"https://127.0.0.1:{cluster}\"\ndisable_mlock = true\n",
                    data.display(),
                    s.key_holder_addr
                )
            };
            let config = s.dir.path().join(format!("n{i}.hcl"));
            std::fs::write(&config, hcl(KEY_HOLDER_TOKEN)).unwrap();
            let config_encrypt_only = s.dir.path().join(format!("n{i}-encrypt-only.hcl"));
            std::fs::write(&config_encrypt_only, hcl(&weak_token)).unwrap();
            s.nodes.push(Node {
                addr: format!("http://127.0.0.1:{api}"),
                config,
                config_encrypt_only,
                log: s.dir.path().join(format!("n{i}.log")),
                process: None,
            });
        }
        for i in 0..n {
            s.launch(i, false);
        }
        for i in 0..n {
            s.wait_listening(i).await;
        }
        s
    }

    /// A call to the key holder with its root token; panics unless 2xx.
    async fn key_holder_api(
        &self,
        http: &reqwest::Client,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = http
            .request(
                method.clone(),
                format!("{}/v1/{path}", self.key_holder_addr),
            )
            .header("X-Vault-Token", KEY_HOLDER_TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// The policy of the weak seal token: encrypt only, or encrypt and
    /// decrypt (what a transit seal needs).
    async fn set_encrypt_only_policy(&self, http: &reqwest::Client, decrypt: bool) {
        let mut policy =
            String::from("path \"transit/encrypt/autounseal\" { capabilities = [\"update\"] }\n");
        if decrypt {
            policy
                .push_str("path \"transit/decrypt/autounseal\" { capabilities = [\"update\"] }\n");
        }
        self.key_holder_api(
            http,
            "PUT",
            "sys/policies/acl/seal-encrypt-only",
            Some(serde_json::json!({ "policy": policy })),
        )
        .await;
    }

    fn launch(&mut self, i: usize, encrypt_only: bool) {
        let node = &self.nodes[i];
        let config = if encrypt_only {
            &node.config_encrypt_only
        } else {
            &node.config
        };
        let arg = format!("-config={}", config.display());
        let p = BaoProcess::start(
            &self.bin,
            &["server", &arg],
            self.dir.path(),
            node.log.clone(),
        );
        self.nodes[i].process = Some(p);
    }

    async fn wait_listening(&mut self, i: usize) {
        let addr = self.nodes[i].addr.clone();
        self.nodes[i]
            .process
            .as_mut()
            .unwrap()
            .wait_listening(&addr)
            .await;
    }

    async fn restart(&mut self, i: usize, encrypt_only: bool) {
        self.nodes[i].process.take();
        self.launch(i, encrypt_only);
        self.wait_listening(i).await;
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let mut logs = vec![(self.key_holder_addr.clone(), self.key_holder_log.clone())];
        logs.extend(self.nodes.iter().map(|n| (n.addr.clone(), n.log.clone())));
        self.key_holder.take();
        for n in &mut self.nodes {
            n.process.take();
        }
        if panicking {
            for (addr, log) in logs {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- log of {addr} (last lines, newest first) ---");
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn json(text: &str) -> Option<serde_json::Value> {
    Some(serde_json::from_str(text).unwrap())
}

async fn seal_status(http: &reqwest::Client, addr: &str) -> serde_json::Value {
    http.get(format!("{addr}/v1/sys/seal-status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn statuses(http: &reqwest::Client, addrs: &[String]) -> Vec<NodeStatus> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(node_status(http, a).await);
    }
    out
}

/// Waits until every node is unsealed, one active and the others standby.
async fn wait_one_active(http: &reqwest::Client, addrs: &[String]) -> Vec<NodeStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = statuses(http, addrs).await;
        let all_unsealed = s.iter().all(|n| n.reachable && n.initialized && !n.sealed);
        let active = s.iter().filter(|n| n.active()).count();
        let standby = s.iter().filter(|n| n.standby).count();
        if all_unsealed && active == 1 && standby == addrs.len() - 1 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "expected every node unsealed, one active and the others standby: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn step(t0: Instant, what: &str) {
    eprintln!("[{:>6.2} s] {what}", t0.elapsed().as_secs_f64());
}

/// Runs `f` with the keys file moved away: whatever `f` does cannot read a
/// key from it (an auto-unsealed cluster needs none).
async fn without_keys_file<T>(path: &Path, f: impl std::future::Future<Output = T>) -> T {
    let away = path.with_extension("away");
    std::fs::rename(path, &away).unwrap();
    let out = f.await;
    std::fs::rename(&away, path).unwrap();
    out
}

#[tokio::test]
async fn transit_auto_unsealed_raft_cluster() {
    let Some(bin) = common::bao_binary("transit_auto_unsealed_raft_cluster") else {
        return;
    };
    let t0 = Instant::now();
    let http = reqwest::Client::new();
    let mut c = Setup::start(&bin, &http, 3).await;
    step(t0, "key holder with transit key, 3 nodes listening");
    let addrs = c.addrs();
    let spec = ClusterSpec {
        nodes: addrs.clone(),
        key_shares: 3,
        key_threshold: 2,
        keys_file: c.dir.path().join("recovery-keys.json"),
        recovery_pgp_keys: Vec::new(),
    };

    // The nodes say what taskctl detects: a transit seal with recovery keys.
    for a in &addrs {
        let st = seal_status(&http, a).await;
        assert_eq!(st["type"], "transit", "{st}");
        assert_eq!(st["recovery_seal"], true, "{st}");
        assert_eq!(st["initialized"], false, "{st}");
    }

    // (1) Plan, then initialization with recovery shares; every node
    // unseals itself (AutoUnsealed: taskctl sent no key).
    let plan = plan_cluster(&http, &spec).await.unwrap();
    assert_eq!(
        plan,
        vec![
            (addrs[0].clone(), "initialize"),
            (addrs[1].clone(), "wait for auto-unseal"),
            (addrs[2].clone(), "wait for auto-unseal"),
        ]
    );
    let out = ensure_cluster(&http, &spec).await.unwrap();
    step(t0, "ensure_cluster: initialized, all auto-unsealed");
    assert!(out.initialized && out.changed());
    assert_eq!(
        out.actions,
        vec![
            (addrs[0].clone(), NodeAction::Initialized),
            (addrs[1].clone(), NodeAction::AutoUnsealed),
            (addrs[2].clone(), NodeAction::AutoUnsealed),
        ]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&spec.keys_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "keys file mode {mode:o}");
    }
    let keys_text = std::fs::read_to_string(&spec.keys_file).unwrap();
    let on_disk: serde_json::Value = serde_json::from_str(&keys_text).unwrap();
    assert_eq!(on_disk["seal"], "transit");
    let keys = KeysFile::read(&spec.keys_file).unwrap();
    assert!(keys.recovery() && keys.seal == "transit");
    assert_eq!(keys.keys_base64.len(), 3, "recovery_shares = key_shares");
    let mut values: Vec<&str> = keys.keys_base64.iter().map(|k| k.expose()).collect();
    values.push(keys.root_token.expose());
    for v in &values {
        assert!(v.len() >= 20 && keys_text.contains(v));
    }
    let shown = format!("{keys:?} {out:?}");
    assert!(values.iter().all(|v| !shown.contains(v)), "a key in Debug");
    for a in &addrs {
        let st = seal_status(&http, a).await;
        assert_eq!(st["sealed"], false, "{st}");
        // Recovery threshold and shares, and no unseal in progress.
        assert_eq!((st["t"].as_u64(), st["n"].as_u64()), (Some(2), Some(3)));
        assert_eq!(st["progress"], 0, "{st}");
    }
    let s = wait_one_active(&http, &addrs).await;
    let active = s.iter().position(|n| n.active()).unwrap();
    let resp = http
        .get(format!("{}/v1/auth/token/lookup-self", addrs[active]))
        .header("X-Vault-Token", keys.root_token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "root token from the keys file");
    step(t0, "one active node, two standby; root token valid");

    // (2) A second run changes nothing and does not need the keys file.
    let plan = plan_cluster(&http, &spec).await.unwrap();
    assert!(plan.iter().all(|(_, a)| *a == "none"), "{plan:?}");
    let out = without_keys_file(&spec.keys_file, ensure_cluster(&http, &spec))
        .await
        .unwrap();
    assert!(!out.initialized && !out.changed(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&spec.keys_file).unwrap(), keys_text);
    step(t0, "second ensure_cluster: nothing to do");

    // (3) A restarted node unseals itself (its seal reaches the key holder).
    let r = (0..3).find(|&i| i != active).unwrap();
    let restarted = addrs[r].clone();
    c.restart(r, false).await;
    let out = without_keys_file(&spec.keys_file, ensure_cluster(&http, &spec))
        .await
        .unwrap();
    step(t0, &format!("restarted node: {out:?}"));
    assert!(!out.initialized);
    for (a, action) in &out.actions {
        if *a == restarted {
            // Unsealed by itself before or while ensure_cluster looked.
            assert!(
                matches!(
                    action,
                    NodeAction::AutoUnsealed | NodeAction::AlreadyUnsealed
                ),
                "{out:?}"
            );
        } else {
            assert_eq!(*action, NodeAction::AlreadyUnsealed, "{out:?}");
        }
    }
    let st = seal_status(&http, &restarted).await;
    assert_eq!(
        (st["sealed"].as_bool(), st["progress"].as_u64()),
        (Some(false), Some(0))
    );
    wait_one_active(&http, &addrs).await;

    // (4) Its seal may encrypt but not decrypt: it stays sealed, planned
    // "wait for auto-unseal", and ensure_cluster names it after its wait.
    c.restart(r, true).await;
    let st = node_status(&http, &restarted).await;
    assert!(st.reachable && st.initialized && st.sealed, "{st:?}");
    let plan = plan_cluster(&http, &spec).await.unwrap();
    for (a, action) in &plan {
        let want = if *a == restarted {
            "wait for auto-unseal"
        } else {
            "none"
        };
        assert_eq!(*action, want, "{plan:?}");
    }
    let e = without_keys_file(&spec.keys_file, ensure_cluster(&http, &spec))
        .await
        .unwrap_err();
    step(t0, &format!("sealed auto-unseal node named: {e}"));
    assert!(
        matches!(&e, VaultError::NodeSealed { addr, .. } if *addr == restarted),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("key holder") && msg.contains("transit"),
        "{msg}"
    );
    assert!(values.iter().all(|v| !msg.contains(v)), "{msg}");

    // Decrypt granted while ensure_cluster waits: the node unseals itself
    // (it retries every 5 s) and is reported AutoUnsealed.
    let (out, ()) = without_keys_file(&spec.keys_file, async {
        tokio::join!(ensure_cluster(&http, &spec), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.set_encrypt_only_policy(&http, true).await;
        })
    })
    .await;
    let out = out.unwrap();
    step(t0, "decrypt granted: node auto-unsealed");
    for (a, action) in &out.actions {
        let want = if *a == restarted {
            NodeAction::AutoUnsealed
        } else {
            NodeAction::AlreadyUnsealed
        };
        assert_eq!(*action, want, "{out:?}");
    }
    wait_one_active(&http, &addrs).await;

    // (5) The key holder gone, a restarted node cannot unseal: OpenBao 2.7
    // does not even start (it cannot configure its transit seal), so
    // ensure_cluster names it as unreachable (or sealed, were it up).
    c.key_holder.take();
    let s = statuses(&http, &addrs).await;
    let k = (0..3).find(|&i| !s[i].active()).unwrap();
    let victim = addrs[k].clone();
    c.nodes[k].process.take();
    c.launch(k, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let exited = c.nodes[k]
            .process
            .as_mut()
            .unwrap()
            .child
            .try_wait()
            .unwrap()
            .is_some();
        let st = node_status(&http, &victim).await;
        if exited || (st.reachable && st.sealed) {
            step(
                t0,
                &format!("node restarted without key holder: exited={exited}, {st:?}"),
            );
            break;
        }
        assert!(Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = without_keys_file(&spec.keys_file, ensure_cluster(&http, &spec))
        .await
        .unwrap_err();
    step(t0, &format!("node without key holder named: {e}"));
    assert!(
        matches!(&e, VaultError::NodeUnreachable { addr, .. } | VaultError::NodeSealed { addr, .. } if *addr == victim),
        "{e:?}"
    );
    assert!(e.to_string().contains(&victim), "{e}");
    let log = std::fs::read_to_string(&c.nodes[k].log).unwrap_or_default();
    assert!(log.contains("seal \"transit\""), "node log: {log}");
}

/// `gpg` in a private home (`GNUPGHOME`); panics with its stderr unless it
/// succeeds.
fn gpg(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("gpg")
        .env("GNUPGHOME", home)
        .args(["--batch", "--quiet", "--no-tty"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gpg (Debian package gnupg) runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gpg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Two operators' OpenPGP keys (made here, RSA with an encryption subkey):
/// the recovery keys are encrypted to them at initialization, the keys file
/// holds only ciphertext, and the shares each operator decrypts with gpg
/// generate a root token, which only the real recovery keys can do.
#[tokio::test]
async fn recovery_keys_encrypted_to_pgp_keys_are_the_real_shares() {
    let Some(bin) = common::bao_binary("recovery_keys_encrypted_to_pgp_keys_are_the_real_shares")
    else {
        return;
    };
    let t0 = Instant::now();
    let http = reqwest::Client::new();
    let c = Setup::start(&bin, &http, 1).await;
    let home = c.dir.path().join("gnupg");
    std::fs::create_dir(&home).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let mut keys = Vec::new();
    let mut fingerprints = Vec::new();
    for (i, armor) in [(0, true), (1, false)] {
        let email = format!("op{i}@example.test");
        let params = format!(
            "%no-protection\nKey-Type: RSA\nKey-Length: 2048\nSubkey-Type: RSA\nSubkey-Length: 2048\nName-Real: operator {i}\nName-Email: {email}\nExpire-Date: 0\n%commit\n"
        );
        gpg(&home, &["--gen-key"], Some(params.as_bytes()));
        let mut export = vec!["--export"];
        if armor {
            export.insert(0, "--armor");
        }
        export.push(&email);
        let file = c
            .dir
            .path()
            .join(format!("op{i}.{}", if armor { "asc" } else { "gpg" }));
        std::fs::write(&file, gpg(&home, &export, None)).unwrap();
        let colons = String::from_utf8(gpg(
            &home,
            &["--with-colons", "--fingerprint", &email],
            None,
        ))
        .unwrap();
        // The first `fpr` record is the primary key's.
        let fpr = colons
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.trim_end_matches(':').rsplit(':').next())
            .unwrap()
            .to_string();
        let key = PgpKey::read(&file).unwrap();
        assert_eq!(key.fingerprint, fpr, "fingerprint of {}", file.display());
        fingerprints.push(fpr);
        keys.push(key);
    }
    step(t0, "two operator keys made with gpg (armored and binary)");
    let addrs = c.addrs();
    let spec = ClusterSpec {
        nodes: addrs.clone(),
        key_shares: 2,
        key_threshold: 2,
        keys_file: c.dir.path().join("recovery-keys.json"),
        recovery_pgp_keys: keys,
    };
    // One key short of the shares: refused before anything changes.
    let short = ClusterSpec {
        recovery_pgp_keys: spec.recovery_pgp_keys[..1].to_vec(),
        ..spec.clone()
    };
    let e = ensure_cluster(&http, &short).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("1 PGP keys for 2 recovery key shares"),
        "{e}"
    );
    assert!(!spec.keys_file.exists());

    let out = ensure_cluster(&http, &spec).await.unwrap();
    assert_eq!(
        out.actions,
        vec![(addrs[0].clone(), NodeAction::Initialized)]
    );
    step(
        t0,
        "initialized with recovery keys encrypted to the two keys",
    );
    let file = KeysFile::read(&spec.keys_file).unwrap();
    assert_eq!(file.encrypted_to.len(), 2);
    for (i, fpr) in fingerprints.iter().enumerate() {
        assert!(
            file.encrypted_to[i].starts_with(fpr.as_str()),
            "{:?}",
            file.encrypted_to
        );
    }
    let mut shares = Vec::new();
    for ciphertext in &file.keys_base64 {
        use base64::Engine as _;
        let binary = base64::engine::general_purpose::STANDARD
            .decode(ciphertext.expose())
            .expect("each share in the keys file is base64 of a PGP message");
        let share = String::from_utf8(gpg(&home, &["--decrypt"], Some(&binary)))
            .unwrap()
            .trim()
            .to_string();
        assert!(share.len() >= 32, "a decrypted share");
        assert!(
            !std::fs::read_to_string(&spec.keys_file)
                .unwrap()
                .contains(&share),
            "a share in clear in the keys file"
        );
        shares.push(share);
    }
    step(t0, "each share decrypted by its operator's key");

    // Only the cluster's real recovery keys complete a root generation
    // (OpenBao 2.x: `sys/generate-root-token`, behind a token).
    wait_one_active(&http, &addrs).await;
    let token = file.root_token.expose();
    let attempt: serde_json::Value = http
        .put(format!("{}/v1/sys/generate-root-token/attempt", addrs[0]))
        .header("X-Vault-Token", token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(attempt["data"]["required"], 2, "{attempt}");
    let nonce = attempt["data"]["nonce"]
        .as_str()
        .unwrap_or_else(|| panic!("a nonce: {attempt}"))
        .to_string();
    let mut last = serde_json::Value::Null;
    for share in &shares {
        let resp = http
            .put(format!("{}/v1/sys/generate-root-token/update", addrs[0]))
            .header("X-Vault-Token", token)
            .json(&serde_json::json!({ "key": share, "nonce": nonce }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        last = resp.json().await.unwrap();
        assert!(status.is_success(), "{status} {last}");
    }
    assert_eq!(last["data"]["complete"], true, "{last}");
    assert!(
        last["data"]["encoded_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{last}"
    );
    step(t0, "the decrypted shares generated a root token");
}
