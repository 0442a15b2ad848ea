//! A raft cluster's `sys` endpoints: node status, initialization and
//! unsealing, over plain HTTP (no token needed for any of them).
//!
//! [`ensure_cluster`] initializes the cluster once (on the first node),
//! writes the unseal keys and the initial root token to a keys file that is
//! never overwritten (JSON, mode 0600), and unseals every sealed node with
//! the keys read back from that file; a second call on a healthy cluster
//! changes nothing. [`plan_cluster`] says what it would do without doing it.
//! No key or token ever appears in a `Debug`, `Display` or error message.
//!
//! Auto-unsealed clusters (a `seal "transit"`, `"awskms"`, … stanza, seen in
//! `sys/seal-status`: `type` other than `shamir`, `recovery_seal`) are
//! initialized with recovery shares instead; the recovery keys go to the
//! keys file (marked with the seal type), and no key is ever sent to such a
//! node: it unseals itself through its seal, and taskctl only waits for it.

use crate::VaultError;
use crate::client::clean_errors;
use crate::error::transport_cause;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use taskctl_secret::Secret;

mod keys;
mod node;
mod pgp;

pub(crate) use keys::open_new;
use keys::*;
pub use keys::{KeysFile, SHAMIR};
use node::*;
pub use node::{NodeStatus, node_status};
pub use pgp::PgpKey;

/// One request's limit (health, seal status, one unseal key).
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// `sys/init` waits for the node to become raft leader (about 6 s, 1.5 to
/// 2 s with `performance_multiplier = 1`).
pub(super) const INIT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a node may take to join through `retry_join`, to unseal after
/// its last key (a joining node unseals about 1 s later), and how long the
/// cluster may take to elect an active node.
pub(super) const WAIT: Duration = Duration::from_secs(45);
pub(super) const POLL: Duration = Duration::from_millis(200);

/// The cluster taskctl initializes and unseals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// API addresses (`http://` only on loopback); the first is initialized.
    pub nodes: Vec<String>,
    pub key_shares: u8,
    pub key_threshold: u8,
    /// Where the unseal keys and the initial root token are written at
    /// initialization (never overwritten) and read from to unseal.
    pub keys_file: PathBuf,
    /// OpenPGP public keys, one per share, that an auto-unsealed cluster's
    /// recovery keys are encrypted to at initialization (`sys/init`'s
    /// `recovery_pgp_keys`): the keys file then holds only ciphertext, share
    /// `i` readable by the holder of key `i`. Empty: recovery keys in clear.
    /// Refused for a Shamir seal, whose unseal keys taskctl itself needs.
    pub recovery_pgp_keys: Vec<PgpKey>,
}

/// What [`ensure_cluster`] did to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeAction {
    /// Initialized the cluster here, then unsealed it (with an auto-unseal
    /// seal: it unsealed itself right after initialization).
    Initialized,
    /// Unsealed with the Shamir unseal keys from the keys file.
    Unsealed,
    AlreadyUnsealed,
    /// Sealed (restarted, or joining the cluster) and auto-unsealed: the node
    /// unsealed itself through its seal (transit, KMS, …) while taskctl
    /// waited; no key was sent to it.
    AutoUnsealed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterOutcome {
    /// True when this call initialized the cluster.
    pub initialized: bool,
    /// One entry per node, in the order of [`ClusterSpec::nodes`].
    pub actions: Vec<(String, NodeAction)>,
}

impl ClusterOutcome {
    /// Whether anything was initialized or unsealed.
    pub fn changed(&self) -> bool {
        self.initialized
            || self
                .actions
                .iter()
                .any(|(_, a)| *a != NodeAction::AlreadyUnsealed)
    }
}

/// A plan step: the node is initialized (the first node of an
/// uninitialized cluster).
pub const PLAN_INITIALIZE: &str = "initialize";
/// A plan step: the node is sealed (Shamir) and gets the unseal keys.
pub const PLAN_UNSEAL: &str = "unseal";
/// A plan step: the node is sealed but auto-unsealed; nothing is sent to it.
pub const PLAN_WAIT_AUTO_UNSEAL: &str = "wait for auto-unseal";
/// A plan step: nothing to do.
pub const PLAN_NONE: &str = "none";

/// What [`ensure_cluster`] would do, without doing it: per node
/// `"initialize"`, `"unseal"`, `"wait for auto-unseal"` (a sealed or joining
/// node of an auto-unsealed cluster) or `"none"`. Errors as `ensure_cluster`
/// would fail before changing anything: a bad spec, an unreachable node
/// (named), nodes that disagree on their seal, a keys file that exists while
/// the cluster is uninitialized, a keys file that cannot be read (or holds
/// recovery keys) while a Shamir node needs unsealing.
pub async fn plan_cluster(
    http: &reqwest::Client,
    spec: &ClusterSpec,
) -> Result<Vec<(String, &'static str)>, VaultError> {
    let nodes = validate(spec)?;
    let statuses = probe_all(http, &nodes).await?;
    let seal = seal_kind(http, &nodes).await?;
    refuse_pgp_for_shamir(spec, &seal, &statuses)?;
    let sealed_step = match seal {
        Seal::Shamir => PLAN_UNSEAL,
        Seal::Auto(_) => PLAN_WAIT_AUTO_UNSEAL,
    };
    if !statuses.iter().any(|s| s.initialized) {
        refuse_existing_keys_file(spec, &nodes)?;
        return Ok(nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    if i == 0 { PLAN_INITIALIZE } else { sealed_step },
                )
            })
            .collect());
    }
    let plan: Vec<(String, &'static str)> = statuses
        .iter()
        .map(|s| {
            (
                s.addr.clone(),
                if s.sealed { sealed_step } else { PLAN_NONE },
            )
        })
        .collect();
    if plan.iter().any(|(_, a)| *a == PLAN_UNSEAL) {
        let keys = KeysFile::read(&spec.keys_file)?;
        check_unseal_keys(spec, &keys)?;
    }
    Ok(plan)
}

/// Initializes the cluster if no node is initialized (on the first node;
/// the keys file is created before `sys/init` is sent, so an existing file
/// stops it first), then unseals every sealed node with the keys read from
/// the keys file: the nodes that are already members first, then, once a
/// node is active, the ones that join through `retry_join` (each is waited
/// for until it has joined, and polled after its last key, as a joining
/// node unseals about 1 s later). Finally waits for an active node if it
/// changed anything. An unreachable node, or one that stays sealed, is an
/// error naming its address.
///
/// An auto-unsealed cluster (every node's `sys/seal-status` says a seal type
/// other than `shamir`) is initialized with `recovery_shares` and
/// `recovery_threshold` (the spec's `key_shares` and `key_threshold`); the
/// keys file then holds the recovery keys, with `"seal": "<type>"`. No key is
/// sent to its nodes: every sealed or joining node is polled until it has
/// unsealed itself ([`NodeAction::AutoUnsealed`]); one still sealed after
/// 45 s is a [`VaultError::NodeSealed`] naming it (its seal could not reach
/// its key holder). The keys file is not read for such a cluster.
pub async fn ensure_cluster(
    http: &reqwest::Client,
    spec: &ClusterSpec,
) -> Result<ClusterOutcome, VaultError> {
    let nodes = validate(spec)?;
    let statuses = probe_all(http, &nodes).await?;
    let seal = seal_kind(http, &nodes).await?;
    refuse_pgp_for_shamir(spec, &seal, &statuses)?;
    if let Seal::Auto(seal_type) = &seal {
        return ensure_auto_unsealed(http, spec, &nodes, &statuses, seal_type).await;
    }
    let mut actions: Vec<(String, NodeAction)> = nodes
        .iter()
        .map(|n| (n.clone(), NodeAction::AlreadyUnsealed))
        .collect();

    let mut initialized = false;
    // Members: initialized and sealed. Joiners: not initialized (a raft node
    // that has not joined yet says so even when its cluster is).
    let mut members: Vec<usize> = Vec::new();
    let mut joiners: Vec<usize> = Vec::new();
    if !statuses.iter().any(|s| s.initialized) {
        initialize(http, spec, &nodes, &seal).await?;
        initialized = true;
        actions[0].1 = NodeAction::Initialized;
        members.push(0);
        joiners.extend(1..nodes.len());
    } else {
        for (i, s) in statuses.iter().enumerate() {
            if !s.sealed {
                continue;
            }
            if s.initialized {
                members.push(i);
            } else {
                joiners.push(i);
            }
        }
    }
    if members.is_empty() && joiners.is_empty() {
        return Ok(ClusterOutcome {
            initialized,
            actions,
        });
    }

    let keys = KeysFile::read(&spec.keys_file)?;
    check_unseal_keys(spec, &keys)?;
    let path = spec.keys_file.as_path();
    // Members first (a joining node needs an active node to join), then the
    // joining ones: all their keys sent, then all waited for.
    for (group, joining) in [(members, false), (joiners, true)] {
        if group.is_empty() {
            continue;
        }
        if joining {
            wait_active(http, &nodes).await?;
        }
        let deadline = Instant::now() + WAIT;
        let mut pending = Vec::new();
        for &i in &group {
            if !send_keys(http, &nodes[i], &keys, path, deadline).await? {
                pending.push(i);
            }
        }
        for &i in &pending {
            wait_unsealed(http, &nodes[i], path, deadline).await?;
        }
        for &i in &group {
            if actions[i].1 != NodeAction::Initialized {
                actions[i].1 = NodeAction::Unsealed;
            }
        }
    }
    wait_active(http, &nodes).await?;
    Ok(ClusterOutcome {
        initialized,
        actions,
    })
}

/// [`ensure_cluster`] for an auto-unsealed cluster: initialize with recovery
/// shares if no node is initialized, then wait for every sealed node (all of
/// them after initialization) to unseal itself.
pub(super) async fn ensure_auto_unsealed(
    http: &reqwest::Client,
    spec: &ClusterSpec,
    nodes: &[String],
    statuses: &[NodeStatus],
    seal_type: &str,
) -> Result<ClusterOutcome, VaultError> {
    let mut actions: Vec<(String, NodeAction)> = nodes
        .iter()
        .map(|n| (n.clone(), NodeAction::AlreadyUnsealed))
        .collect();
    let initialized = !statuses.iter().any(|s| s.initialized);
    let waiting: Vec<usize> = if initialized {
        initialize(http, spec, nodes, &Seal::Auto(seal_type.to_string())).await?;
        actions[0].1 = NodeAction::Initialized;
        (0..nodes.len()).collect()
    } else {
        (0..nodes.len()).filter(|&i| statuses[i].sealed).collect()
    };
    if waiting.is_empty() {
        return Ok(ClusterOutcome {
            initialized,
            actions,
        });
    }
    // The nodes unseal (and join) in parallel: one deadline for all.
    let deadline = Instant::now() + WAIT;
    for &i in &waiting {
        wait_auto_unsealed(http, &nodes[i], seal_type, deadline).await?;
        if actions[i].1 != NodeAction::Initialized {
            actions[i].1 = NodeAction::AutoUnsealed;
        }
    }
    wait_active(http, nodes).await?;
    Ok(ClusterOutcome {
        initialized,
        actions,
    })
}

/// Polls an auto-unsealed node's seal status until it has joined and
/// unsealed itself, or `deadline`.
pub(super) async fn wait_auto_unsealed(
    http: &reqwest::Client,
    addr: &str,
    seal_type: &str,
    deadline: Instant,
) -> Result<(), VaultError> {
    loop {
        let st = seal_status(http, addr).await?;
        if st.initialized && !st.sealed {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let detail = if st.initialized {
                format!(
                    "it is auto-unsealed (seal \"{seal_type}\") but did not unseal itself within {} s: its seal could not reach its key holder (the transit server or KMS key: check the seal's address, credentials, key name and its permission to encrypt and decrypt, and the node's log); taskctl sends no unseal keys to an auto-unsealed node",
                    WAIT.as_secs()
                )
            } else {
                format!(
                    "it has not joined the raft cluster within {} s (it still says uninitialized); check its retry_join stanza, that it can reach the active node, and that its seal (\"{seal_type}\") can reach its key holder",
                    WAIT.as_secs()
                )
            };
            return Err(VaultError::NodeSealed {
                addr: addr.to_string(),
                detail,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How the cluster's nodes are sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seal {
    Shamir,
    /// Auto-unseal, with the seal's type (`transit`, `awskms`, …).
    Auto(String),
}

/// The seal every node reports in `sys/seal-status` (`type`, and
/// `recovery_seal` for an auto-unseal seal). Nodes that disagree, or a seal
/// migration in progress, are an error naming them.
pub(super) async fn seal_kind(
    http: &reqwest::Client,
    nodes: &[String],
) -> Result<Seal, VaultError> {
    let mut kinds: Vec<(String, Seal)> = Vec::with_capacity(nodes.len());
    for n in nodes {
        let st = seal_status(http, n).await?;
        if st.migration {
            return Err(VaultError::Other {
                what: format!("raft node {n}"),
                cause: "a seal migration is in progress; finish it (`bao operator unseal -migrate`) before taskctl initializes or unseals the cluster".into(),
            });
        }
        let seal_type = st
            .seal_type
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| SHAMIR.to_string());
        let kind = if seal_type == SHAMIR && !st.recovery_seal {
            Seal::Shamir
        } else {
            Seal::Auto(seal_type)
        };
        kinds.push((n.clone(), kind));
    }
    let first = kinds[0].1.clone();
    if kinds.iter().any(|(_, k)| *k != first) {
        let list: Vec<String> = kinds
            .iter()
            .map(|(n, k)| match k {
                Seal::Shamir => format!("{n}: {SHAMIR}"),
                Seal::Auto(t) => format!("{n}: {t} (auto-unseal)"),
            })
            .collect();
        return Err(VaultError::Config(format!(
            "the raft nodes disagree on their seal ({}); give every node the same seal stanza",
            list.join(", ")
        )));
    }
    Ok(first)
}

/// PGP keys with a Shamir seal: taskctl unseals every node itself with the
/// unseal keys, so it cannot have them encrypted to someone else. Checked
/// only while the cluster is uninitialized (the keys matter only then).
pub(super) fn refuse_pgp_for_shamir(
    spec: &ClusterSpec,
    seal: &Seal,
    statuses: &[NodeStatus],
) -> Result<(), VaultError> {
    if spec.recovery_pgp_keys.is_empty()
        || *seal != Seal::Shamir
        || statuses.iter().any(|s| s.initialized)
    {
        return Ok(());
    }
    Err(VaultError::Config(format!(
        "PGP keys are given for the recovery keys, but the nodes ({}) use a Shamir seal: taskctl unseals a Shamir cluster itself and needs its unseal keys in clear. Give the nodes an auto-unseal seal (awskms, transit) or remove the PGP keys",
        spec.nodes.join(", ")
    )))
}

/// The node addresses without trailing slashes, after checking the spec.
pub(super) fn validate(spec: &ClusterSpec) -> Result<Vec<String>, VaultError> {
    if spec.nodes.is_empty() {
        return Err(VaultError::Config("the raft cluster has no nodes".into()));
    }
    if spec.key_shares == 0
        || spec.key_threshold == 0
        || spec.key_threshold > spec.key_shares
        || (spec.key_shares > 1 && spec.key_threshold < 2)
    {
        return Err(VaultError::Config(format!(
            "key_shares {} and key_threshold {}: the threshold must be between 2 and the number of shares (both 1 for a single key)",
            spec.key_shares, spec.key_threshold
        )));
    }
    if !spec.recovery_pgp_keys.is_empty()
        && spec.recovery_pgp_keys.len() != usize::from(spec.key_shares)
    {
        return Err(VaultError::Config(format!(
            "{} PGP keys for {} recovery key shares: give one key per share",
            spec.recovery_pgp_keys.len(),
            spec.key_shares
        )));
    }
    let mut nodes: Vec<String> = Vec::with_capacity(spec.nodes.len());
    for n in &spec.nodes {
        let url = url::Url::parse(n).map_err(|e| {
            VaultError::Config(format!("raft node address `{n}` is not a URL ({e})"))
        })?;
        match url.scheme() {
            "https" => {}
            "http" if crate::is_loopback(&url) => {}
            "http" => {
                return Err(VaultError::Config(format!(
                    "raft node address {n} is http:// off loopback: the unseal keys would travel in clear; use https://"
                )));
            }
            other => {
                return Err(VaultError::Config(format!(
                    "raft node address {n}: scheme `{other}` is not http or https"
                )));
            }
        }
        let n = n.trim_end_matches('/').to_string();
        if nodes.contains(&n) {
            return Err(VaultError::Config(format!("raft node {n} is listed twice")));
        }
        nodes.push(n);
    }
    Ok(nodes)
}

/// The keys file can unseal a Shamir node: unseal keys (not recovery keys),
/// at least the threshold.
pub(super) fn check_unseal_keys(spec: &ClusterSpec, keys: &KeysFile) -> Result<(), VaultError> {
    if keys.recovery() {
        return Err(keys_error(
            &spec.keys_file,
            format!(
                "holds the recovery keys of a cluster auto-unsealed by its \"{}\" seal, not unseal keys, but the nodes use a Shamir seal; use the keys file written when this cluster was initialized",
                keys.seal
            ),
        ));
    }
    if keys.keys_base64.len() < usize::from(spec.key_threshold) {
        return Err(keys_error(
            &spec.keys_file,
            format!(
                "holds {} unseal keys, fewer than the threshold {}",
                keys.keys_base64.len(),
                spec.key_threshold
            ),
        ));
    }
    Ok(())
}

pub(super) fn refuse_existing_keys_file(
    spec: &ClusterSpec,
    nodes: &[String],
) -> Result<(), VaultError> {
    if spec.keys_file.exists() {
        return Err(keys_error(&spec.keys_file, already_exists_cause(nodes)));
    }
    Ok(())
}

pub(super) fn already_exists_cause(nodes: &[String]) -> String {
    format!(
        "already exists, but no node of the cluster ({}) is initialized: it holds the keys of another cluster or of an earlier attempt; move it away to initialize this cluster (it is never overwritten)",
        nodes.join(", ")
    )
}

/// `sys/init` on `addr`, with the keys file created first (so an existing
/// file stops before anything changes) and removed again if init fails.
/// With an auto-unseal seal, asks for recovery shares and writes the
/// recovery keys, marked with the seal type.
pub(super) async fn initialize(
    http: &reqwest::Client,
    spec: &ClusterSpec,
    nodes: &[String],
    seal: &Seal,
) -> Result<(), VaultError> {
    let addr = nodes[0].as_str();
    let file = match open_new(&spec.keys_file) {
        Err(VaultError::KeysFile { .. }) if spec.keys_file.exists() => {
            return Err(keys_error(&spec.keys_file, already_exists_cause(nodes)));
        }
        other => other?,
    };
    let answer = init_request(http, spec, addr, seal).await;
    let (answer, root_token) = match answer {
        Ok(a) => a,
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&spec.keys_file);
            return Err(e);
        }
    };
    let keys = KeysFile {
        keys_base64: answer.into_iter().map(Secret::new).collect(),
        root_token: Secret::new(root_token),
        seal: match seal {
            Seal::Shamir => SHAMIR.to_string(),
            Seal::Auto(t) => t.clone(),
        },
        encrypted_to: spec
            .recovery_pgp_keys
            .iter()
            .map(|k| format!("{} ({})", k.fingerprint, k.file))
            .collect(),
    };
    keys.write_to(file, &spec.keys_file).map_err(|e| match e {
        VaultError::KeysFile { path, cause } => VaultError::KeysFile {
            path,
            cause: format!(
                "{cause}; the cluster at {addr} IS initialized and its keys are lost: reset the nodes' raft data and start over"
            ),
        },
        other => other,
    })
}

/// Sends the keys to one node: waits until it has joined (initialized),
/// clears a stale unseal progress, sends keys until it unseals (true) or the
/// threshold is reached (false: a joining node unseals about 1 s later, see
/// [`wait_unsealed`]).
pub(super) async fn send_keys(
    http: &reqwest::Client,
    addr: &str,
    keys: &KeysFile,
    path: &Path,
    deadline: Instant,
) -> Result<bool, VaultError> {
    let mut st = seal_status(http, addr).await?;
    while !st.initialized {
        if Instant::now() >= deadline {
            return Err(VaultError::NodeSealed {
                addr: addr.to_string(),
                detail: format!(
                    "it has not joined the raft cluster within {} s (it still says uninitialized); check its retry_join stanza and that it can reach the active node",
                    WAIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
        st = seal_status(http, addr).await?;
    }
    if !st.sealed {
        return Ok(true);
    }
    if st.progress > 0 {
        unseal_request(http, addr, serde_json::json!({ "reset": true })).await?;
    }
    let mut threshold_reached = false;
    for key in &keys.keys_base64 {
        let st = unseal_request(http, addr, serde_json::json!({ "key": key.expose() }))
            .await
            .map_err(|e| match e {
                VaultError::Other { what, cause } => VaultError::Other {
                    what,
                    cause: format!("{cause} (with a key from {})", path.display()),
                },
                other => other,
            })?;
        if !st.sealed {
            return Ok(true);
        }
        if st.progress == 0 {
            // All the shares it needs: a joining node unseals shortly after.
            threshold_reached = true;
            break;
        }
    }
    if !threshold_reached {
        return Err(VaultError::NodeSealed {
            addr: addr.to_string(),
            detail: format!(
                "the {} keys in {} are fewer than its unseal threshold",
                keys.keys_base64.len(),
                path.display()
            ),
        });
    }
    Ok(false)
}

/// Polls one node's seal status until it is unsealed or `deadline`.
pub(super) async fn wait_unsealed(
    http: &reqwest::Client,
    addr: &str,
    path: &Path,
    deadline: Instant,
) -> Result<(), VaultError> {
    loop {
        if !seal_status(http, addr).await?.sealed {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(VaultError::NodeSealed {
                addr: addr.to_string(),
                detail: format!(
                    "it took the keys from {} but did not unseal within {} s; check its log and that it can reach the active node",
                    path.display(),
                    WAIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until one node is active (the raft leader, unsealed).
pub(super) async fn wait_active(
    http: &reqwest::Client,
    nodes: &[String],
) -> Result<(), VaultError> {
    let deadline = Instant::now() + WAIT;
    loop {
        for n in nodes {
            if probe(http, n).await.is_ok_and(|s| s.active()) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(VaultError::Other {
                what: format!("the raft cluster of {}", nodes.join(", ")),
                cause: format!(
                    "no node became active within {} s; check that a quorum of nodes is running and unsealed, and their logs",
                    WAIT.as_secs()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nodes: &[&str], shares: u8, threshold: u8) -> ClusterSpec {
        ClusterSpec {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            key_shares: shares,
            key_threshold: threshold,
            keys_file: PathBuf::from("/nonexistent/keys.json"),
            recovery_pgp_keys: Vec::new(),
        }
    }

    #[test]
    fn spec_is_checked() {
        let ok = validate(&spec(&["http://127.0.0.1:8200/", "https://v2:8200"], 3, 2)).unwrap();
        assert_eq!(ok, vec!["http://127.0.0.1:8200", "https://v2:8200"]);
        assert!(validate(&spec(&["http://localhost:8200"], 1, 1)).is_ok());
        for (s, want) in [
            (spec(&[], 3, 2), "no nodes"),
            (spec(&["http://127.0.0.1:1"], 3, 4), "threshold"),
            (spec(&["http://127.0.0.1:1"], 3, 1), "threshold"),
            (spec(&["http://127.0.0.1:1"], 0, 0), "threshold"),
            (
                spec(&["http://vault.example:8200"], 3, 2),
                "http:// off loopback",
            ),
            (spec(&["ftp://127.0.0.1:1"], 3, 2), "scheme"),
            (spec(&["127.0.0.1:8200"], 3, 2), "127.0.0.1:8200"),
            (
                spec(&["http://127.0.0.1:1", "http://127.0.0.1:1/"], 3, 2),
                "listed twice",
            ),
        ] {
            let e = validate(&s).unwrap_err();
            assert!(matches!(e, VaultError::Config(_)), "{e:?}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn keys_file_is_private_never_overwritten_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let keys = KeysFile {
            keys_base64: vec!["a2V5LW9uZS1zZWNyZXQ=".into(), "a2V5LXR3by1zZWNyZXQ=".into()],
            root_token: "s.root-token-value".into(),
            seal: SHAMIR.into(),
            encrypted_to: Vec::new(),
        };
        keys.create_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        let back = KeysFile::read(&path).unwrap();
        assert_eq!(back.keys_base64.len(), 2);
        assert!(!back.recovery() && back.seal == SHAMIR);
        assert!(back.keys_base64[1].same_as(&keys.keys_base64[1]));
        assert!(back.root_token.same_as(&keys.root_token));
        let shown = format!("{back:?}");
        assert!(
            !shown.contains("a2V5") && !shown.contains("root-token"),
            "{shown}"
        );

        let before = std::fs::read(&path).unwrap();
        let e = keys.create_new(&path).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), before);

        // The CLI's `bao operator init -format=json` names the keys differently.
        let cli = dir.path().join("cli.json");
        std::fs::write(
            &cli,
            r#"{"unseal_keys_b64":["k1"],"unseal_keys_hex":["00"],"root_token":"t"}"#,
        )
        .unwrap();
        let k = KeysFile::read(&cli).unwrap();
        assert_eq!(k.keys_base64.len(), 1);
        assert!(!k.recovery());

        // A file written before the `seal` field: unseal keys.
        let old = dir.path().join("old.json");
        std::fs::write(&old, r#"{"keys_base64":["k1","k2"],"root_token":"t"}"#).unwrap();
        let k = KeysFile::read(&old).unwrap();
        assert_eq!((k.keys_base64.len(), k.seal.as_str()), (2, SHAMIR));

        // Recovery keys of an auto-unsealed cluster, as taskctl writes them.
        let rec = dir.path().join("recovery.json");
        KeysFile {
            seal: "transit".into(),
            ..keys.clone()
        }
        .create_new(&rec)
        .unwrap();
        let text = std::fs::read_to_string(&rec).unwrap();
        assert!(text.contains(r#""seal": "transit""#), "{text}");
        let k = KeysFile::read(&rec).unwrap();
        assert!(k.recovery() && k.seal == "transit");
        assert!(k.keys_base64[0].same_as(&keys.keys_base64[0]));
        // ... and as the CLI writes them (auto-unseal: no unseal keys).
        std::fs::write(
            &cli,
            r#"{"unseal_keys_b64":[],"recovery_keys_b64":["r1","r2"],"root_token":"t"}"#,
        )
        .unwrap();
        let k = KeysFile::read(&cli).unwrap();
        assert!(k.recovery() && k.keys_base64.len() == 2, "{k:?}");

        // Recovery keys never go to a Shamir node.
        let e = check_unseal_keys(
            &ClusterSpec {
                keys_file: rec.clone(),
                ..spec(&["http://127.0.0.1:1"], 2, 2)
            },
            &KeysFile::read(&rec).unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("recovery keys"), "{e}");
        assert!(!e.to_string().contains("a2V5"), "{e}");
    }

    #[test]
    fn keys_file_errors_name_the_path_and_quote_no_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        // serde's own message would quote this string.
        std::fs::write(
            &path,
            r#"{"keys_base64":"c2VjcmV0LXZhbHVl","root_token":"t"}"#,
        )
        .unwrap();
        let e = KeysFile::read(&path).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
        assert!(!msg.contains("c2VjcmV0"), "{msg}");

        std::fs::write(&path, r#"{"keys_base64":[],"root_token":"t"}"#).unwrap();
        assert!(
            KeysFile::read(&path)
                .unwrap_err()
                .to_string()
                .contains("no unseal or recovery keys")
        );
        let e = KeysFile::read(&dir.path().join("absent.json")).unwrap_err();
        assert!(e.to_string().contains("absent.json"), "{e}");
    }

    #[test]
    fn error_messages_name_the_node_or_the_file() {
        let e = VaultError::NodeSealed {
            addr: "https://n2:8200".into(),
            detail: "it did not unseal".into(),
        };
        assert!(e.to_string().contains("https://n2:8200"), "{e}");
        let e = VaultError::NodeUnreachable {
            addr: "https://n3:8200".into(),
            cause: "timed out".into(),
        };
        assert!(e.to_string().contains("https://n3:8200"), "{e}");
        let e = VaultError::KeysFile {
            path: "/etc/taskctl/keys.json".into(),
            cause: "cannot read".into(),
        };
        assert!(e.to_string().contains("/etc/taskctl/keys.json"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_node_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let st = node_status(&http, &format!("{addr}/")).await;
        assert_eq!(st.addr, addr);
        assert!(
            !st.reachable && !st.active() && st.version.is_none(),
            "{st:?}"
        );
        let s = spec(&[&addr], 1, 1);
        let e = plan_cluster(&http, &s).await.unwrap_err();
        assert!(
            matches!(&e, VaultError::NodeUnreachable { addr: a, .. } if *a == addr),
            "{e:?}"
        );
        let e = ensure_cluster(&http, &s).await.unwrap_err();
        assert!(e.to_string().contains(&addr), "{e}");
    }
}
