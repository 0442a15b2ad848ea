//! The Kubernetes Secrets the rendered workloads reference, made from the
//! profile's secret references at deploy time.
//!
//! The render never holds a value: a workload names Secret `taskctl-<path>`
//! and key `<key>` (see [`crate::view::secret_key`]) and lists where each
//! comes from in its pod template's `taskctl.dev/secret-sources` annotation
//! (`secret/key=vault:PATH#KEY,…`). With a resolver
//! ([`crate::KubeOptions::secrets`]), the `kubernetes/secrets` step reads
//! that annotation, resolves every reference and applies one Opaque Secret
//! per name and namespace, before the workloads. Values exist only in the
//! apply request: plans show the key and the reference pinned to the KV
//! version read (`vault:secret/messaging?version=3#password`).
//!
//! Every workload that rolls (Deployment, StatefulSet, DaemonSet, CronJob)
//! gets the pod-template annotation `taskctl.dev/secret-checksum`: a sha256
//! over the sorted `(reference, KV version)` pairs it uses, so a new KV
//! version changes its pod template and rolls it. Jobs get none: their pod
//! template is immutable, and a Job that has run does not run again.
//!
//! Without a resolver, nothing is made, and the step only checks that every
//! Secret key a workload needs exists in the cluster, failing the plan (or
//! the apply, for a cluster created in the same run) with a message naming
//! the workload, the Secret and the reference, rather than leaving pods in
//! `CreateContainerConfigError`.

use crate::cluster::{self, step_error};
use crate::diff::diff;
use crate::manifest::Manifest;
use crate::provider::Shared;
use crate::resources::{self, Known};
use async_trait::async_trait;
use k8s_openapi::ByteString;
use kube::Client;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use taskctl_core::engine::{
    Action, Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::profile::value::{SecretRef, Syntax};
use taskctl_core::secrets::{Secret, SecretError, Secrets};

/// The pod-template annotation listing `secret/key=reference` pairs.
pub const SECRET_SOURCES: &str = "taskctl.dev/secret-sources";
/// The pod-template annotation that changes when a secret it uses does.
pub const SECRET_CHECKSUM: &str = "taskctl.dev/secret-checksum";
/// The pod-template annotation listing the `secret/key` pairs among
/// [`SECRET_SOURCES`] whose new version must not restart the workload: the
/// in-cluster RabbitMQ's own password (`RABBITMQ_DEFAULT_PASS`, read at its
/// first boot only; taskctl changes it live through the management API) and
/// its Erlang cookie (kept by a rotation, and one that changed under a
/// rolling restart would split the cluster). They do not enter
/// [`SECRET_CHECKSUM`].
pub const SECRET_NO_RESTART: &str = "taskctl.dev/secret-no-restart";

/// Where the pod template of a workload kind is.
pub fn pod_template(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Kinds whose pods are replaced when the pod template changes.
pub fn rolls(kind: &str) -> bool {
    matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet" | "CronJob")
}

/// One key of a Secret a workload uses, and the reference it is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub secret: String,
    pub key: String,
    pub reference: SecretRef,
}

/// The reference without a version pin: what the checksum names, so a
/// rollback pinning the same version yields the same checksum.
pub fn unpinned(r: &SecretRef) -> String {
    match r {
        SecretRef::Vault { path, key, .. } => SecretRef::Vault {
            path: path.clone(),
            key: key.clone(),
            version: None,
        }
        .to_string(),
        SecretRef::Env { .. } => r.to_string(),
    }
}

/// `r` pinned to the version read, as plans and the Secret's annotation
/// show it.
pub fn shown(r: &SecretRef, version: Option<u64>) -> String {
    match (r, version) {
        (SecretRef::Vault { path, key, .. }, Some(v)) => SecretRef::Vault {
            path: path.clone(),
            key: key.clone(),
            version: Some(v),
        }
        .to_string(),
        _ => r.to_string(),
    }
}

/// The Secret keys `m` uses, from its pod template's
/// `taskctl.dev/secret-sources` annotation.
pub fn uses(m: &Manifest) -> Result<Vec<Use>, String> {
    let Some(template) = pod_template(&m.kind).and_then(|p| m.value.pointer(p)) else {
        return Ok(Vec::new());
    };
    let Some(sources) = template
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SECRET_SOURCES))
        .and_then(Value::as_str)
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for pair in sources.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let malformed = || {
            format!(
                "{}: annotation {SECRET_SOURCES} entry `{pair}` is not `secret/key=reference`",
                m.id()
            )
        };
        let (target, source) = pair.split_once('=').ok_or_else(malformed)?;
        let (secret, key) = target.split_once('/').ok_or_else(malformed)?;
        let reference = SecretRef::parse(source).map_err(|e| {
            format!(
                "{}: annotation {SECRET_SOURCES}: `{source}` is not a secret reference: {e}",
                m.id()
            )
        })?;
        out.push(Use {
            secret: secret.to_string(),
            key: key.to_string(),
            reference,
        });
    }
    Ok(out)
}

/// The [`uses`] of a workload whose new version restarts it: all but those
/// its pod template names in [`SECRET_NO_RESTART`]. What the checksum is
/// made of; a workload with none carries no checksum.
pub fn restarting_uses(m: &Manifest) -> Result<Vec<Use>, String> {
    let no_restart = no_restart(m);
    Ok(uses(m)?
        .into_iter()
        .filter(|u| !no_restart.contains(&format!("{}/{}", u.secret, u.key)))
        .collect())
}

/// The `secret/key` pairs a workload's pod template names in
/// [`SECRET_NO_RESTART`].
fn no_restart(m: &Manifest) -> BTreeSet<String> {
    pod_template(&m.kind)
        .and_then(|p| m.value.pointer(p))
        .and_then(|t| t.pointer("/metadata/annotations"))
        .and_then(|a| a.get(SECRET_NO_RESTART))
        .and_then(Value::as_str)
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A Secret the workloads need taskctl to make.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub namespace: String,
    pub name: String,
    /// Data key → the reference it is made from.
    pub keys: BTreeMap<String, SecretRef>,
    /// The workloads that use it (`Kind namespace/name`).
    pub users: BTreeSet<String>,
}

impl Wanted {
    pub fn id(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }
}

/// Every Secret the workloads among `manifests` name in their
/// `taskctl.dev/secret-sources`, one per namespace and name. Two workloads
/// making one key from different references is an error.
pub fn wanted<'a>(
    manifests: impl IntoIterator<Item = &'a Manifest>,
) -> Result<Vec<Wanted>, String> {
    let mut out: BTreeMap<(String, String), Wanted> = BTreeMap::new();
    let mut first_user: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for m in manifests {
        let uses = uses(m)?;
        if uses.is_empty() {
            continue;
        }
        let namespace = m.namespace.clone().unwrap_or_else(|| "default".into());
        for u in uses {
            let w = out
                .entry((namespace.clone(), u.secret.clone()))
                .or_insert_with(|| Wanted {
                    namespace: namespace.clone(),
                    name: u.secret.clone(),
                    keys: BTreeMap::new(),
                    users: BTreeSet::new(),
                });
            w.users.insert(m.id());
            match w.keys.get(&u.key) {
                Some(existing) if *existing != u.reference => {
                    let by = first_user
                        .get(&(namespace.clone(), u.secret.clone(), u.key.clone()))
                        .cloned()
                        .unwrap_or_default();
                    return Err(format!(
                        "key `{}` of Secret {namespace}/{} would be made from both {existing} (for {by}) and {} (for {}); give them different paths or keys",
                        u.key,
                        u.secret,
                        u.reference,
                        m.id()
                    ));
                }
                Some(_) => {}
                None => {
                    first_user.insert((namespace.clone(), u.secret.clone(), u.key.clone()), m.id());
                    w.keys.insert(u.key.clone(), u.reference.clone());
                }
            }
        }
    }
    Ok(out.into_values().collect())
}

/// A Secret key a workload needs that taskctl does not make: it must exist.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Needed {
    pub namespace: String,
    pub name: String,
    /// `None`: the whole Secret (`envFrom`, a volume without items).
    pub key: Option<String>,
    /// Which workload needs it.
    pub by: String,
    /// The reference it would be made from, when the render names one.
    pub reference: Option<String>,
}

/// The Secret keys the pod template of `m` cannot start without: non-optional
/// `secretKeyRef`s, `envFrom` Secrets and Secret volumes.
pub fn needed(m: &Manifest) -> Vec<Needed> {
    let Some(spec) = pod_template(&m.kind).and_then(|p| m.value.pointer(&format!("{p}/spec")))
    else {
        return Vec::new();
    };
    let namespace = m.namespace.clone().unwrap_or_else(|| "default".into());
    let optional = |v: &Value| v.get("optional").and_then(Value::as_bool) == Some(true);
    let mut found: BTreeSet<(String, Option<String>)> = BTreeSet::new();
    for list in ["containers", "initContainers"] {
        for c in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                if let Some(r) = e.pointer("/valueFrom/secretKeyRef")
                    && !optional(r)
                    && let (Some(name), Some(key)) = (
                        r.get("name").and_then(Value::as_str),
                        r.get("key").and_then(Value::as_str),
                    )
                {
                    found.insert((name.to_string(), Some(key.to_string())));
                }
            }
            for e in c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(r) = e.get("secretRef")
                    && !optional(r)
                    && let Some(name) = r.get("name").and_then(Value::as_str)
                {
                    found.insert((name.to_string(), None));
                }
            }
        }
    }
    for v in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(s) = v.get("secret")
            && !optional(s)
            && let Some(name) = s.get("secretName").and_then(Value::as_str)
        {
            let items: Vec<&str> = s
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("key").and_then(Value::as_str))
                .collect();
            if items.is_empty() {
                found.insert((name.to_string(), None));
            }
            for key in items {
                found.insert((name.to_string(), Some(key.to_string())));
            }
        }
    }
    let sources = uses(m).unwrap_or_default();
    found
        .into_iter()
        .map(|(name, key)| Needed {
            reference: sources
                .iter()
                .find(|u| u.secret == name && key.as_deref().is_none_or(|k| k == u.key))
                .map(|u| u.reference.to_string()),
            namespace: namespace.clone(),
            name,
            key,
            by: m.id(),
        })
        .collect()
}

/// The value of the `taskctl.dev/secret-checksum` annotation: sha256 over
/// the sorted `(reference, KV version)` pairs, never over values.
pub fn checksum(pairs: &BTreeSet<(String, Option<u64>)>) -> String {
    let mut h = Sha256::new();
    for (reference, version) in pairs {
        h.update(reference.as_bytes());
        h.update(b"\t");
        match version {
            Some(v) => h.update(v.to_string().as_bytes()),
            None => h.update(b"-"),
        }
        h.update(b"\n");
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// A resolver's error as a step error: references and paths, never values
/// (and masked once more, should a backend's words carry one).
pub fn resolve_error(secrets: &Secrets, what: &str, e: SecretError) -> StepError {
    let kind = match e {
        SecretError::Vault { .. } => ErrorKind::Other,
        _ => ErrorKind::Invalid,
    };
    StepError::new(kind, secrets.redactor().redact(&format!("{what}: {e}")))
}

/// `manifests` with the `taskctl.dev/secret-checksum` annotation on the pod
/// template of every rolling workload that uses a secret. A reference a step
/// of this run is about to write shows as pending (plans only: by apply
/// time, it has been written).
pub async fn with_checksums(
    secrets: &Secrets,
    manifests: &[Manifest],
) -> Result<Vec<Manifest>, StepError> {
    let mut out = manifests.to_vec();
    for m in &mut out {
        if !rolls(&m.kind) {
            continue;
        }
        let uses = restarting_uses(m).map_err(|e| StepError::new(ErrorKind::Invalid, e))?;
        if uses.is_empty() {
            continue;
        }
        let mut pairs = BTreeSet::new();
        let mut pending = BTreeSet::new();
        for u in &uses {
            if secrets.is_pending(&u.reference) {
                pending.insert(unpinned(&u.reference));
                continue;
            }
            let resolved = secrets
                .resolve(&u.reference)
                .await
                .map_err(|e| resolve_error(secrets, &m.id(), e))?;
            pairs.insert((unpinned(&u.reference), resolved.version));
        }
        let value = if pending.is_empty() {
            checksum(&pairs)
        } else {
            let list: Vec<String> = pending.into_iter().collect();
            format!("(after the new version of {})", list.join(", "))
        };
        let pointer = format!(
            "{}/metadata",
            pod_template(&m.kind).expect("a workload kind")
        );
        if let Some(meta) = m.value.pointer_mut(&pointer).and_then(Value::as_object_mut) {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(SECRET_CHECKSUM.to_string(), Value::String(value));
            }
        }
        if let Ok(yaml) = serde_norway::to_string(&m.value) {
            m.yaml = yaml;
        }
    }
    Ok(out)
}

/// What one Secret should hold, resolved.
struct Desired<'a> {
    wanted: &'a Wanted,
    /// Data key → value; keys whose reference is pending are absent.
    data: BTreeMap<String, Secret>,
    /// Data key → the reference pinned to the version read, or a note that
    /// a new version is about to be written.
    shown: BTreeMap<String, String>,
}

/// Makes the Secrets of [`Wanted`] (with a resolver) and checks that every
/// [`Needed`] key exists (always).
pub(crate) struct SecretsStep {
    pub id: StepId,
    pub depends: Vec<StepId>,
    pub environment: String,
    pub wanted: Vec<Wanted>,
    pub needed: Vec<Needed>,
    /// The labels every rendered object carries (profile labels, instance,
    /// part-of, managed-by, environment); `app.kubernetes.io/name` is added
    /// per Secret.
    pub labels: BTreeMap<String, String>,
    /// The `taskctl.dev/environment` annotation (`<name>/<env>`).
    pub environment_annotation: String,
    pub shared: Arc<Shared>,
}

fn secret_kind() -> Known {
    resources::lookup("v1", "Secret").expect("Secret is a known kind")
}

/// The live Secret's keys, and their bytes, or `None` when it is absent.
async fn live_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<(Value, BTreeMap<String, ByteString>)>, StepError> {
    let api = cluster::api(client, &secret_kind(), Some(namespace));
    let live = match api.get_opt(name).await {
        Ok(o) => o,
        Err(e) => return Err(step_error(&format!("Secret {namespace}/{name}"), e)),
    };
    let Some(live) = live else {
        return Ok(None);
    };
    let mut value = serde_json::to_value(live).unwrap_or(Value::Null);
    let data: BTreeMap<String, ByteString> = value
        .get("data")
        .cloned()
        .and_then(|d| serde_json::from_value(d).ok())
        .unwrap_or_default();
    // Only keys leave this function with the object; the bytes go apart.
    if let Some(o) = value.as_object_mut() {
        o.remove("data");
        o.remove("stringData");
    }
    Ok(Some((value, data)))
}

impl SecretsStep {
    fn secrets(&self) -> Option<&Arc<Secrets>> {
        self.shared.options.secrets.as_ref()
    }

    /// The keys that must exist already: the [`Needed`] ones taskctl does
    /// not make (all of them without a resolver).
    fn must_exist(&self) -> Vec<&Needed> {
        let made = |n: &Needed| {
            self.secrets().is_some()
                && self.wanted.iter().any(|w| {
                    w.namespace == n.namespace
                        && w.name == n.name
                        && n.key.as_ref().is_none_or(|k| w.keys.contains_key(k))
                })
        };
        self.needed.iter().filter(|n| !made(n)).collect()
    }

    async fn check_existing(&self, client: &Client) -> Result<(), StepError> {
        let mut missing = Vec::new();
        let mut checked: BTreeMap<(String, String), Option<BTreeSet<String>>> = BTreeMap::new();
        for n in self.must_exist() {
            let slot = (n.namespace.clone(), n.name.clone());
            if !checked.contains_key(&slot) {
                let keys = live_secret(client, &n.namespace, &n.name)
                    .await?
                    .map(|(_, data)| data.into_keys().collect());
                checked.insert(slot.clone(), keys);
            }
            let present = match (&checked[&slot], &n.key) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(keys), Some(k)) => keys.contains(k),
            };
            if !present {
                let what = match &n.key {
                    Some(k) => format!("key `{k}` of Secret {}/{}", n.namespace, n.name),
                    None => format!("Secret {}/{}", n.namespace, n.name),
                };
                let from = match &n.reference {
                    Some(r) => format!(" (from {r})"),
                    None => " (no taskctl.dev/secret-sources entry says what to make it from)"
                        .to_string(),
                };
                missing.push(format!("{} needs {what}{from}, which does not exist", n.by));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let hint = if self.secrets().is_none() {
            "; taskctl makes the Secrets of `vault:`/`env:` references only with a secret resolver, and none is configured"
        } else {
            ""
        };
        Err(StepError::new(
            ErrorKind::Invalid,
            format!(
                "workloads reference Secrets taskctl cannot make: {}{hint}",
                missing.join("; ")
            ),
        ))
    }

    async fn desired(
        &self,
        secrets: &Secrets,
        planning: bool,
    ) -> Result<Vec<Desired<'_>>, StepError> {
        let mut out = Vec::new();
        for w in &self.wanted {
            let mut data = BTreeMap::new();
            let mut shown_keys = BTreeMap::new();
            for (key, reference) in &w.keys {
                if planning && secrets.is_pending(reference) {
                    shown_keys.insert(
                        key.clone(),
                        format!("(a new version of {})", unpinned(reference)),
                    );
                    continue;
                }
                let resolved = secrets
                    .resolve(reference)
                    .await
                    .map_err(|e| resolve_error(secrets, &w.id(), e))?;
                shown_keys.insert(key.clone(), shown(reference, resolved.version));
                data.insert(key.clone(), resolved.value);
            }
            out.push(Desired {
                wanted: w,
                data,
                shown: shown_keys,
            });
        }
        Ok(out)
    }

    /// The Secret without its data, as applied (and compared).
    fn public_object(&self, d: &Desired<'_>) -> Value {
        let mut labels = self.labels.clone();
        labels.insert("app.kubernetes.io/name".into(), d.wanted.name.clone());
        let sources: Vec<String> = d.shown.iter().map(|(k, r)| format!("{k}={r}")).collect();
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": d.wanted.name,
                "namespace": d.wanted.namespace,
                "labels": labels,
                "annotations": {
                    crate::render::ENVIRONMENT_ANNOTATION: self.environment_annotation,
                    SECRET_SOURCES: sources.join(","),
                },
            },
            "type": "Opaque",
        })
    }

    /// What differs for one Secret: keys and references, never values.
    async fn plan_one(
        &self,
        client: &Client,
        d: &Desired<'_>,
    ) -> Result<(Action, Vec<FieldDiff>), StepError> {
        let id = d.wanted.id();
        let Some((live, live_data)) =
            live_secret(client, &d.wanted.namespace, &d.wanted.name).await?
        else {
            let diffs = d
                .shown
                .iter()
                .map(|(k, r)| FieldDiff::new(format!("{id}: data[{k}]"), "(absent)", r))
                .collect();
            return Ok((Action::Create, diffs));
        };
        let live_sources: BTreeMap<String, String> = live
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SECRET_SOURCES))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, r)| (k.to_string(), r.to_string()))
            .collect();
        let mut diffs = Vec::new();
        for (key, to) in &d.shown {
            let same = match (d.data.get(key), live_data.get(key)) {
                (Some(want), Some(have)) => have.0 == want.expose().as_bytes(),
                // Pending: a new version is about to be written.
                (None, _) => false,
                (Some(_), None) => false,
            };
            let same_source = live_sources.get(key) == Some(to);
            if same && same_source {
                continue;
            }
            let from = match (live_data.contains_key(key), live_sources.get(key)) {
                (false, _) => "(absent)".to_string(),
                (true, Some(r)) if !same => format!("{r} (another value)"),
                (true, Some(r)) => r.clone(),
                (true, None) => "(another value)".to_string(),
            };
            diffs.push(FieldDiff::new(format!("{id}: data[{key}]"), from, to));
        }
        for (key, r) in &live_sources {
            if !d.shown.contains_key(key) && live_data.contains_key(key) {
                diffs.push(FieldDiff::new(format!("{id}: data[{key}]"), r, "(removed)"));
            }
        }
        let mut public = self.public_object(d);
        // Sources are shown per key above.
        if let Some(a) = public
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.remove(SECRET_SOURCES);
        }
        for f in diff("Secret", &public, &live) {
            diffs.push(FieldDiff::new(format!("{id}: {}", f.field), f.from, f.to));
        }
        Ok((
            if diffs.is_empty() {
                Action::NoOp
            } else {
                Action::Update
            },
            diffs,
        ))
    }

    async fn plan_all(
        &self,
        client: Option<&Client>,
        planning: bool,
    ) -> Result<Vec<(Action, Vec<FieldDiff>)>, StepError> {
        if let Some(client) = client {
            self.check_existing(client).await?;
        }
        let Some(secrets) = self.secrets() else {
            return Ok(Vec::new());
        };
        let desired = self.desired(secrets, planning).await?;
        let mut out = Vec::new();
        for d in &desired {
            out.push(match client {
                Some(client) => self.plan_one(client, d).await?,
                None => (
                    Action::Create,
                    d.shown
                        .iter()
                        .map(|(k, r)| {
                            FieldDiff::new(format!("{}: data[{k}]", d.wanted.id()), "(absent)", r)
                        })
                        .collect(),
                ),
            });
        }
        Ok(out)
    }

    fn change(&self, plans: &[(Action, Vec<FieldDiff>)]) -> Change {
        let made = if self.secrets().is_some() {
            self.wanted.len()
        } else {
            0
        };
        let created = plans.iter().filter(|p| p.0 == Action::Create).count();
        let updated: Vec<String> = self
            .wanted
            .iter()
            .zip(plans)
            .filter(|(_, p)| p.0 == Action::Update)
            .map(|(w, _)| w.id())
            .collect();
        if created == 0 && updated.is_empty() {
            return Change {
                action: Action::NoOp,
                diffs: Vec::new(),
                reason: if made == 0 {
                    "the Secrets the workloads reference exist (no secret resolver: taskctl makes none)".into()
                } else {
                    format!("{made} Secrets up to date")
                },
            };
        }
        let mut parts = Vec::new();
        if created > 0 {
            parts.push(format!("{created} to create"));
        }
        if !updated.is_empty() {
            parts.push(format!(
                "{} to update ({})",
                updated.len(),
                updated.join(", ")
            ));
        }
        Change {
            action: if updated.is_empty() && created == made {
                Action::Create
            } else {
                Action::Update
            },
            diffs: plans.iter().flat_map(|p| p.1.iter().cloned()).collect(),
            reason: format!("{} of {made} Secrets", parts.join(", ")),
        }
    }

    async fn apply_one(
        &self,
        client: &Client,
        secrets: &Secrets,
        d: &Desired<'_>,
    ) -> Result<(), StepError> {
        let mut body = self.public_object(d);
        let data: BTreeMap<&String, ByteString> = d
            .data
            .iter()
            .map(|(k, v)| (k, ByteString(v.expose().as_bytes().to_vec())))
            .collect();
        body["data"] = serde_json::to_value(&data).unwrap_or(Value::Null);
        drop(data);
        let api = cluster::api(client, &secret_kind(), Some(&d.wanted.namespace));
        let mut params = PatchParams::apply(cluster::FIELD_MANAGER);
        if self.shared.options.force_conflicts {
            params = params.force();
        }
        let result = api
            .patch(&d.wanted.name, &params, &Patch::Apply(&body))
            .await
            .map(|_| ());
        drop(body);
        result.map_err(|e| {
            let mut err = step_error(&d.wanted.id(), e);
            err.message = secrets.redactor().redact(&err.message).into_owned();
            err
        })
    }
}

#[async_trait]
impl Step for SecretsStep {
    fn id(&self) -> &StepId {
        &self.id
    }

    fn kind(&self) -> &str {
        "kubernetes-secrets"
    }

    fn depends_on(&self) -> Vec<StepId> {
        self.depends.clone()
    }

    fn timeout(&self) -> Duration {
        self.shared.options.step_timeout
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        let client = self.shared.client.get(Some(ctx)).await?;
        let plans = self.plan_all(client.as_ref(), true).await?;
        Ok(StepPlan {
            change: self.change(&plans),
            outputs: Outputs::from([("secrets".into(), plans.len().to_string())]),
        })
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let client = self.shared.client.require(Some(ctx), &self.id.0).await?;
        self.shared
            .ensure_locked(&client, &self.environment)
            .await?;
        self.check_existing(&client).await?;
        let Some(secrets) = self.secrets() else {
            return Ok(Outputs::from([("applied".into(), "0".into())]));
        };
        let desired = self.desired(secrets, false).await?;
        let mut applied = 0;
        for d in &desired {
            let (action, _) = self.plan_one(&client, d).await?;
            if action.is_change() {
                ctx.progress(&format!("applying {}", d.wanted.id()));
                self.apply_one(&client, secrets, d).await?;
                applied += 1;
            }
        }
        Ok(Outputs::from([
            ("secrets".into(), desired.len().to_string()),
            ("applied".into(), applied.to_string()),
        ]))
    }

    async fn destroy(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        // The values cannot be rendered again: kept unless prune_all.
        if !self.shared.options.prune_all || self.secrets().is_none() {
            return Ok(());
        }
        let Some(client) = self.shared.client.get(Some(ctx)).await? else {
            return Ok(());
        };
        self.shared
            .ensure_locked(&client, &self.environment)
            .await?;
        for w in &self.wanted {
            cluster::delete(&client, &secret_kind(), Some(&w.namespace), &w.name).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ApplyLevel;

    fn workload(kind: &str, ns: &str, name: &str, sources: &str) -> Manifest {
        let value = json!({
            "apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": {"template": {
                "metadata": {"annotations": {SECRET_SOURCES: sources}},
                "spec": {"containers": [{"name": "c", "env": [
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "taskctl-messaging", "key": "password"}}},
                    {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k", "optional": true}}},
                ]}]},
            }},
        });
        Manifest {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: Some(ns.into()),
            level: ApplyLevel::Workloads,
            template: "t".into(),
            yaml: String::new(),
            value,
        }
    }

    #[test]
    fn wanted_secrets_merge_keys_per_namespace_and_refuse_two_sources_for_one_key() {
        let a = workload(
            "Deployment",
            "agents",
            "a",
            "taskctl-messaging/password=vault:secret/messaging#password",
        );
        let b = workload(
            "StatefulSet",
            "agents",
            "b",
            "taskctl-messaging/cookie=vault:secret/messaging?version=2#cookie,taskctl-messaging/password=vault:secret/messaging#password",
        );
        let w = wanted([&a, &b]).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].keys.keys().collect::<Vec<_>>(), ["cookie", "password"]);
        assert_eq!(w[0].users.len(), 2);
        let c = workload(
            "Deployment",
            "agents",
            "c",
            "taskctl-messaging/password=vault:secret/messaging?version=1#password",
        );
        let err = wanted([&a, &c]).unwrap_err();
        assert!(
            err.contains("both vault:secret/messaging#password"),
            "{err}"
        );
        let n = needed(&a);
        assert_eq!(n.len(), 1, "optional references are not needed: {n:?}");
        assert_eq!(n[0].key.as_deref(), Some("password"));
        assert_eq!(
            n[0].reference.as_deref(),
            Some("vault:secret/messaging#password")
        );
    }

    #[test]
    fn the_checksum_depends_on_references_and_versions_only() {
        let one = BTreeSet::from([("vault:secret/a#k".to_string(), Some(1))]);
        let two = BTreeSet::from([("vault:secret/a#k".to_string(), Some(2))]);
        assert_ne!(checksum(&one), checksum(&two));
        assert_eq!(checksum(&one), checksum(&one.clone()));
        let pinned = SecretRef::parse("vault:secret/a?version=1#k").unwrap();
        assert_eq!(unpinned(&pinned), "vault:secret/a#k");
        assert_eq!(shown(&pinned, Some(3)), "vault:secret/a?version=3#k");
    }
}
