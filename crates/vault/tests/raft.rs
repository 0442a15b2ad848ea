//! A three-node OpenBao raft cluster on loopback (issue 12 item 6): taskctl
//! initializes and unseals it, a second run changes nothing, a restarted
//! (sealed) node is named and unsealed again, a stopped node is named.
//!
//! The test starts its own `bao server` processes (raft storage in a
//! temporary directory, free loopback ports, `retry_join` to each other,
//! `performance_multiplier = 1`) and kills them when done, also on panic.

mod common;

use common::BaoProcess;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use taskctl_vault::VaultError;
use taskctl_vault::sys::{
    ClusterSpec, KeysFile, NodeAction, NodeStatus, PgpKey, ensure_cluster, node_status,
    plan_cluster,
};

struct Node {
    addr: String,
    config: PathBuf,
    log: PathBuf,
    process: Option<BaoProcess>,
}

/// The processes are dropped (killed) before the directory is removed.
struct Cluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(bin: &Path, n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (common::free_port(), common::free_port()))
            .collect();
        let mut nodes = Vec::new();
        for (i, (api, cluster)) in ports.iter().enumerate() {
            let data = dir.path().join(format!("n{i}"));
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
            let hcl = format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n{i}\"\n  performance_multiplier = 1\n{joins}}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{api}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://127.0.0.1:{api}\"\ncluster_addr = \"https://127.0.0.1:{cluster}\"\ndisable_mlock = true\n",
                data.display()
            );
            let config = dir.path().join(format!("n{i}.hcl"));
            std::fs::write(&config, hcl).unwrap();
            nodes.push(Node {
                addr: format!("http://127.0.0.1:{api}"),
                config,
                log: dir.path().join(format!("n{i}.log")),
                process: None,
            });
        }
        let mut c = Cluster {
            bin: bin.to_path_buf(),
            nodes,
            dir,
        };
        for i in 0..n {
            c.launch(i);
        }
        for i in 0..n {
            c.wait_listening(i).await;
        }
        c
    }

    fn launch(&mut self, i: usize) {
        let node = &self.nodes[i];
        let arg = format!("-config={}", node.config.display());
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

    fn kill(&mut self, i: usize) {
        // Dropping the handle kills and reaps this process.
        self.nodes[i].process.take();
    }

    async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
        self.wait_listening(i).await;
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    fn addr(&self, i: usize) -> String {
        self.nodes[i].addr.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for n in &mut self.nodes {
            n.process.take();
            if panicking {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- log of {} (last lines, newest first) ---", n.addr);
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
    }
}

async fn statuses(http: &reqwest::Client, addrs: &[String]) -> Vec<NodeStatus> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(node_status(http, a).await);
    }
    out
}

/// Waits until every node is unsealed, one active and the others standby
/// (standby status settles shortly after a change of leader).
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

#[tokio::test]
async fn three_node_raft_cluster() {
    let Some(bin) = common::bao_binary("three_node_raft_cluster") else {
        return;
    };
    let t0 = Instant::now();
    let http = reqwest::Client::new();
    let mut c = Cluster::start(&bin, 3).await;
    step(t0, "3 nodes listening");
    let addrs = c.addrs();
    let spec = ClusterSpec {
        nodes: addrs.clone(),
        key_shares: 3,
        key_threshold: 2,
        keys_file: c.dir.path().join("unseal-keys.json"),
        recovery_pgp_keys: Vec::new(),
    };

    // Fresh nodes: reachable, uninitialized, sealed.
    for s in statuses(&http, &addrs).await {
        assert!(
            s.reachable && !s.initialized && s.sealed && !s.standby && !s.active(),
            "{s:?}"
        );
        assert!(s.version.is_some(), "{s:?}");
    }

    // PGP keys for the shares of a Shamir cluster: refused before anything
    // changes (taskctl needs the unseal keys in clear to unseal it).
    let pgp = ClusterSpec {
        recovery_pgp_keys: (0..3)
            .map(|i| PgpKey {
                file: format!("op{i}.asc"),
                fingerprint: format!("{i:040X}"),
                base64: "mQENBF4=".into(),
            })
            .collect(),
        ..spec.clone()
    };
    for e in [
        plan_cluster(&http, &pgp).await.unwrap_err(),
        ensure_cluster(&http, &pgp).await.unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(
            msg.contains("Shamir seal") && msg.contains("auto-unseal"),
            "{msg}"
        );
    }
    assert!(!spec.keys_file.exists());
    for s in statuses(&http, &addrs).await {
        assert!(!s.initialized, "{s:?}");
    }

    // A keys file left from elsewhere stops initialization, and is kept.
    std::fs::write(&spec.keys_file, "left over\n").unwrap();
    let path = spec.keys_file.display().to_string();
    let e = plan_cluster(&http, &spec).await.unwrap_err();
    assert!(
        matches!(&e, VaultError::KeysFile { path: p, .. } if *p == path),
        "{e:?}"
    );
    let e = ensure_cluster(&http, &spec).await.unwrap_err();
    assert!(
        matches!(&e, VaultError::KeysFile { path: p, .. } if *p == path),
        "{e:?}"
    );
    assert!(e.to_string().contains("move it away"), "{e}");
    step(t0, &format!("left-over keys file refused: {e}"));
    assert_eq!(
        std::fs::read_to_string(&spec.keys_file).unwrap(),
        "left over\n"
    );
    assert!(
        statuses(&http, &addrs).await.iter().all(|s| !s.initialized),
        "nothing was initialized"
    );
    std::fs::remove_file(&spec.keys_file).unwrap();

    // (1) The plan, then initialization and unsealing of all three.
    let plan = plan_cluster(&http, &spec).await.unwrap();
    assert_eq!(
        plan,
        vec![
            (addrs[0].clone(), "initialize"),
            (addrs[1].clone(), "unseal"),
            (addrs[2].clone(), "unseal"),
        ]
    );
    step(t0, "planned: initialize, unseal, unseal");
    let out = ensure_cluster(&http, &spec).await.unwrap();
    step(t0, "ensure_cluster: initialized and unsealed");
    assert!(out.initialized && out.changed());
    assert_eq!(
        out.actions,
        vec![
            (addrs[0].clone(), NodeAction::Initialized),
            (addrs[1].clone(), NodeAction::Unsealed),
            (addrs[2].clone(), NodeAction::Unsealed),
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
    let keys = KeysFile::read(&spec.keys_file).unwrap();
    assert_eq!(keys.keys_base64.len(), 3);
    assert!(!keys.root_token.is_empty());
    let mut values: Vec<&str> = keys.keys_base64.iter().map(|k| k.expose()).collect();
    values.push(keys.root_token.expose());
    for v in &values {
        assert!(v.len() >= 20 && keys_text.contains(v));
    }
    let shown = format!("{keys:?} {out:?}");
    assert!(
        values.iter().all(|v| !shown.contains(v)),
        "a key or the token in Debug"
    );
    let s = wait_one_active(&http, &addrs).await;
    step(t0, "one active node, two standby");
    let active = s.iter().position(|n| n.active()).unwrap();
    // The root token written to the file is the cluster's.
    let resp = http
        .get(format!("{}/v1/auth/token/lookup-self", addrs[active]))
        .header("X-Vault-Token", keys.root_token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "root token from the keys file");

    // (2) A second run changes nothing, and neither touches the keys file.
    let plan = plan_cluster(&http, &spec).await.unwrap();
    assert!(plan.iter().all(|(_, a)| *a == "none"), "{plan:?}");
    let out = ensure_cluster(&http, &spec).await.unwrap();
    step(t0, "second ensure_cluster: nothing to do");
    assert!(!out.initialized && !out.changed(), "{out:?}");
    assert_eq!(
        out.actions,
        addrs
            .iter()
            .map(|a| (a.clone(), NodeAction::AlreadyUnsealed))
            .collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read_to_string(&spec.keys_file).unwrap(), keys_text);

    // (3) A restarted node comes back sealed: named, then unsealed again.
    let r = (0..3).find(|&i| i != active).unwrap();
    let restarted = c.addr(r);
    c.restart(r).await;
    step(t0, "one standby node restarted");
    let st = node_status(&http, &restarted).await;
    assert!(st.reachable && st.initialized && st.sealed, "{st:?}");
    let plan = plan_cluster(&http, &spec).await.unwrap();
    for (a, action) in &plan {
        let want = if *a == restarted { "unseal" } else { "none" };
        assert_eq!(*action, want, "{plan:?}");
    }
    // Keys of another cluster: the error names the node, shows no key.
    let wrong = c.dir.path().join("wrong-keys.json");
    let bogus: Vec<String> = (1u8..=3)
        .map(|x| {
            use base64::Engine as _;
            let mut share = vec![0x5au8.wrapping_mul(x); 32];
            share.push(x);
            base64::engine::general_purpose::STANDARD.encode(share)
        })
        .collect();
    KeysFile {
        keys_base64: bogus.iter().map(|k| k.as_str().into()).collect(),
        root_token: "s.not-a-real-token-0123456789".into(),
        seal: taskctl_vault::sys::SHAMIR.into(),
        encrypted_to: Vec::new(),
    }
    .create_new(&wrong)
    .unwrap();
    let e = ensure_cluster(
        &http,
        &ClusterSpec {
            keys_file: wrong.clone(),
            ..spec.clone()
        },
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&restarted), "{msg}");
    assert!(bogus.iter().all(|k| !msg.contains(k.as_str())), "{msg}");
    assert!(node_status(&http, &restarted).await.sealed);
    step(t0, &format!("wrong keys refused: {msg}"));

    let out = ensure_cluster(&http, &spec).await.unwrap();
    step(t0, "restarted node unsealed from the keys file");
    assert!(!out.initialized);
    for (a, action) in &out.actions {
        let want = if *a == restarted {
            NodeAction::Unsealed
        } else {
            NodeAction::AlreadyUnsealed
        };
        assert_eq!(*action, want, "{out:?}");
    }
    wait_one_active(&http, &addrs).await;

    // (4) A node stopped and not restarted: plan and ensure name it.
    let s = statuses(&http, &addrs).await;
    let k = (0..3).find(|&i| !s[i].active()).unwrap();
    let stopped = c.addr(k);
    c.kill(k);
    let st = node_status(&http, &stopped).await;
    assert!(!st.reachable && st.version.is_none(), "{st:?}");
    for e in [
        plan_cluster(&http, &spec).await.unwrap_err(),
        ensure_cluster(&http, &spec).await.map(|_| ()).unwrap_err(),
    ] {
        assert!(
            matches!(&e, VaultError::NodeUnreachable { addr, .. } if *addr == stopped),
            "{e:?}"
        );
        assert!(e.to_string().contains(&stopped), "{e}");
        step(t0, &format!("stopped node named: {e}"));
    }
}
