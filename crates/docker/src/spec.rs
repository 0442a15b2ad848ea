//! What the profile asks of the engine, as plain data: names, labels, the
//! desired spec of every agent replica and how two specs differ. No I/O
//! here, so everything the plan shows is unit-tested.

use crate::error::DockerError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use taskctl_core::engine::FieldDiff;
use taskctl_core::profile::Profile;
use taskctl_core::profile::model::{Agent, RestartPolicy, WorkloadKind};
use taskctl_core::profile::value::SecretRef;

/// Label keys; the `taskctl.dev/` prefix is the one `crates/kube` uses.
pub mod label {
    pub const MANAGED_BY: &str = "taskctl.dev/managed-by";
    /// `<profile name>.<environment>`, as on Kubernetes objects.
    pub const ENVIRONMENT: &str = "taskctl.dev/environment";
    /// The run that made the object (a release number for release records).
    pub const RELEASE: &str = "taskctl.dev/release";
    /// sha256 of [`super::SpecSummary`]: equal hashes mean nothing to do.
    pub const SPEC_HASH: &str = "taskctl.dev/spec-hash";
    /// The summary itself (JSON, no secret and no literal value), so a plan
    /// can say which fields differ.
    pub const SPEC: &str = "taskctl.dev/spec";
    /// `agent`, `service`, `network`, `volume`, `release`.
    pub const ROLE: &str = "taskctl.dev/role";
    pub const AGENT: &str = "taskctl.dev/agent";
    pub const SERVICE: &str = "taskctl.dev/service";
    pub const REPLICA: &str = "taskctl.dev/replica";
    /// Port slot (0 or 1) of an agent replica: see [`super::replica_ports`].
    pub const SLOT: &str = "taskctl.dev/slot";
    /// A release record: gzip + base64 of the release JSON.
    pub const RECORD: &str = "taskctl.dev/release-record";
    pub const MANAGED_BY_VALUE: &str = "taskctl";
}

/// `<profile name>.<environment>`: the environment label's value and the
/// suffix of every container name (container names are global to an
/// engine, so two environments of one profile must not collide).
pub fn environment_label(profile: &Profile) -> String {
    profile.environment_label()
}

/// The environment's bridge network (`target.docker.network`).
pub fn network_name(profile: &Profile) -> String {
    profile
        .target
        .docker
        .as_ref()
        .map(|d| d.network.clone())
        .unwrap_or_else(|| "taskctl".into())
}

/// The labels every object of the environment carries.
pub fn base_labels(profile: &Profile, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            label::MANAGED_BY.to_string(),
            label::MANAGED_BY_VALUE.to_string(),
        ),
        (label::ENVIRONMENT.to_string(), environment_label(profile)),
        (label::ROLE.to_string(), role.to_string()),
    ])
}

/// `automated-task-executor-1.task-local.development`.
pub fn replica_name(profile: &Profile, agent: &str, index: u32) -> String {
    format!("{agent}-{index}.{}", environment_label(profile))
}

/// The name a replacement runs under until it is healthy.
pub fn next_name(primary: &str) -> String {
    format!("{primary}.next")
}

/// `taskctl-release-task-local.development-3`.
pub fn release_name(environment: &str, revision: u32) -> String {
    format!("taskctl-release-{environment}-{revision}")
}

/// ring's SHA-256 is assembly, fast in debug builds too, where a pure-Rust
/// one takes ~0.3 s for the 12 MB agent binary every deploy hashes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// The HTTP and metrics ports of replica `index` (1-based) in `slot`.
///
/// Agents use the host's network (see the crate docs), so every running
/// container needs its own ports, including a replacement that starts
/// beside the container it replaces. Each replica therefore owns two port
/// pairs: `base + 2·(index−1) + slot`; a rolling update moves a replica to
/// the other slot.
pub fn replica_ports(http_base: u16, metrics_base: u16, index: u32, slot: u8) -> (u16, u16) {
    let offset = (2 * (index - 1) + u32::from(slot)) as u16;
    (http_base + offset, metrics_base + offset)
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvSource {
    Literal(String),
    /// Resolved at apply time only; never stored, logged or labelled.
    Secret(SecretRef),
}

/// The agent's `ImageBuild`-independent desired state for one replica.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    /// An agent (ports per slot, taskctl's variables) or a component (run
    /// as its image and the profile say).
    pub kind: WorkloadKind,
    pub agent: String,
    pub index: u32,
    pub image: String,
    /// Profile env plus what taskctl sets (ports, agent id, bind address,
    /// log level), in order; ports are filled per slot by [`Self::env_for`].
    pub env: Vec<(String, EnvSource)>,
    pub http_base: u16,
    pub metrics_base: u16,
    pub nano_cpus: i64,
    pub memory: i64,
    pub memory_reservation: i64,
    pub restart: RestartPolicy,
    pub health: HealthSpec,
    /// Env name → KV version of its Vault secret, once resolved
    /// ([`crate::secret_files::versions`]); part of the summary, so a
    /// rotated secret rolls the replica.
    pub secret_versions: BTreeMap<String, u64>,
    /// Components: the ports they listen on (the same in every replica:
    /// each container has its own address on the environment's network).
    pub listens: Vec<(String, u16)>,
    /// Components: the port of the readiness probe.
    pub probe_port: Option<u16>,
    /// Components: the command, in place of the image's.
    pub command: Vec<String>,
    /// Components: `UID:GID`.
    pub user: Option<(u32, u32)>,
}

/// The readiness probe as a Docker health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub path: String,
    pub interval_s: u32,
    pub timeout_s: u32,
    pub retries: u32,
    pub start_period_s: u32,
}

impl HealthSpec {
    /// How long a new container may take to become healthy before the
    /// rollout gives up on it: the start period, then every retry of the
    /// check, with room for a slow engine.
    pub fn deadline(&self) -> std::time::Duration {
        let per_try = u64::from(self.interval_s + self.timeout_s);
        std::time::Duration::from_secs(
            u64::from(self.start_period_s) + per_try * u64::from(self.retries + 2) + 30,
        )
    }
}

/// What the spec label holds: every field of the desired state, with
/// literal values reduced to a short hash and secrets to their reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecSummary {
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub ports: String,
    pub cpu: String,
    pub memory: String,
    pub restart: String,
    pub health: String,
    /// Managed services: configuration files by name (a short hash; the
    /// references and versions of the secrets a file is rendered with).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Managed services: user, entrypoint, mounts, limits.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
}

impl SpecSummary {
    pub fn hash(&self) -> String {
        sha256_hex(serde_json::to_string(self).expect("plain data").as_bytes())
    }

    /// Which fields differ from `observed`, for the plan: env vars by NAME
    /// only (values are never shown).
    pub fn diff(&self, observed: &SpecSummary) -> Vec<FieldDiff> {
        let mut diffs = Vec::new();
        let mut field = |name: &str, from: &str, to: &str| {
            if from != to {
                diffs.push(FieldDiff::new(name, from, to));
            }
        };
        field("image", &observed.image, &self.image);
        field("ports", &observed.ports, &self.ports);
        field("cpu", &observed.cpu, &self.cpu);
        field("memory", &observed.memory, &self.memory);
        field("restart", &observed.restart, &self.restart);
        field("health", &observed.health, &self.health);
        field("runtime", &observed.runtime, &self.runtime);
        for (name, value) in &self.files {
            if observed.files.get(name) != Some(value) {
                diffs.push(FieldDiff::new(format!("file {name}"), "old", "changed"));
            }
        }
        for (name, value) in &self.env {
            match observed.env.get(name) {
                None => diffs.push(FieldDiff::new(format!("env {name}"), "unset", "set")),
                Some(old) if old != value => diffs.push(FieldDiff::new(
                    format!("env {name}"),
                    "old value",
                    "changed",
                )),
                Some(_) => {}
            }
        }
        for name in observed.env.keys() {
            if !self.env.contains_key(name) {
                diffs.push(FieldDiff::new(format!("env {name}"), "set", "unset"));
            }
        }
        diffs
    }
}

impl ReplicaSpec {
    /// The replica's spec from the profile; `image` is the reference the
    /// image step resolved (a content-addressed tag or an image id).
    pub fn new(
        profile: &Profile,
        agent: &Agent,
        index: u32,
        image: &str,
    ) -> Result<Self, DockerError> {
        Self::of(profile, WorkloadKind::Agent, agent, index, image)
    }

    /// [`Self::new`] for an agent or a component.
    pub fn of(
        profile: &Profile,
        kind: WorkloadKind,
        agent: &Agent,
        index: u32,
        image: &str,
    ) -> Result<Self, DockerError> {
        if kind == WorkloadKind::Component {
            return Self::component(agent, index, image);
        }
        let port = |name: &str, default: u16| {
            agent
                .ports
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.port)
                .unwrap_or(default)
        };
        let http_base = port("http", 8080);
        let metrics_base = port("metrics", 9090);
        let top = u32::from(http_base.max(metrics_base)) + 2 * agent.replicas;
        if top > u32::from(u16::MAX) {
            return Err(DockerError::Profile(format!(
                "agent `{}`: {} replicas need ports up to {top}, above 65535; lower its `ports`",
                agent.name, agent.replicas
            )));
        }
        // The profile's variables, then what taskctl sets unless they do.
        let mut env = profile_env(agent)?;
        let given: Vec<String> = env.iter().map(|(n, _)| n.clone()).collect();
        let has = |name: &str| given.iter().any(|n| n == name);
        if !has("LOG_LEVEL")
            && let Some(level) = profile.environment().map(|e| &e.log_level)
            && let Ok(serde_json::Value::String(level)) = serde_json::to_value(level)
        {
            env.push(("LOG_LEVEL".into(), EnvSource::Literal(level)));
        }
        if !has("BIND_ADDRESS") {
            // Host network: listen on loopback only, like the test servers.
            // On the environment's network: on its address, which only the
            // network and the ports published on 127.0.0.1 reach.
            let bind = if crate::stack::agents_bridged(profile) {
                "0.0.0.0"
            } else {
                "127.0.0.1"
            };
            env.push(("BIND_ADDRESS".into(), EnvSource::Literal(bind.into())));
        }
        let probe = agent
            .probes
            .readiness
            .as_ref()
            .or(agent.probes.liveness.as_ref());
        let health = HealthSpec {
            path: probe
                .map(|p| p.path.clone())
                .unwrap_or_else(|| "/ready".into()),
            interval_s: probe.map(|p| p.period_seconds.max(1)).unwrap_or(2),
            timeout_s: probe.map(|p| p.timeout_seconds.max(1)).unwrap_or(1),
            retries: probe.map(|p| p.failure_threshold.max(1)).unwrap_or(3),
            start_period_s: probe.map(|p| p.initial_delay_seconds).unwrap_or(0),
        };
        let (nano_cpus, memory, memory_reservation) = limits(agent)?;
        Ok(ReplicaSpec {
            kind: WorkloadKind::Agent,
            agent: agent.name.clone(),
            index,
            image: image.to_string(),
            env,
            http_base,
            metrics_base,
            nano_cpus,
            memory,
            memory_reservation,
            restart: agent.restart,
            health,
            secret_versions: BTreeMap::new(),
            listens: Vec::new(),
            probe_port: None,
            command: Vec::new(),
            user: None,
        })
    }

    /// A component's replica: its environment as the profile gives it, its
    /// own ports, its readiness probe (required at validation), its user.
    fn component(c: &Agent, index: u32, image: &str) -> Result<Self, DockerError> {
        let probe = c.probes.readiness.as_ref().ok_or_else(|| {
            DockerError::Profile(format!(
                "component `{}` has no readiness probe: the rollout replaces a replica only once its replacement is ready",
                c.name
            ))
        })?;
        let user = c.numeric_user().ok_or_else(|| {
            DockerError::Profile(format!(
                "component `{}`: user `{}` is not a numeric UID[:GID] other than root",
                c.name,
                c.user.as_deref().unwrap_or_default()
            ))
        })?;
        let (nano_cpus, memory, memory_reservation) = limits(c)?;
        Ok(ReplicaSpec {
            kind: WorkloadKind::Component,
            agent: c.name.clone(),
            index,
            image: image.to_string(),
            env: profile_env(c)?,
            http_base: probe.port,
            metrics_base: probe.port,
            nano_cpus,
            memory,
            memory_reservation,
            restart: c.restart,
            health: HealthSpec {
                path: probe.path.clone(),
                interval_s: probe.period_seconds.max(1),
                timeout_s: probe.timeout_seconds.max(1),
                retries: probe.failure_threshold.max(1),
                start_period_s: probe.initial_delay_seconds,
            },
            secret_versions: BTreeMap::new(),
            listens: c.ports.iter().map(|p| (p.name.clone(), p.port)).collect(),
            probe_port: Some(probe.port),
            command: c.command.clone(),
            user: Some(user),
        })
    }

    pub fn ports(&self, slot: u8) -> (u16, u16) {
        replica_ports(self.http_base, self.metrics_base, self.index, slot)
    }

    pub fn summary(&self) -> SpecSummary {
        let env = self
            .env
            .iter()
            .map(|(name, source)| {
                (
                    name.clone(),
                    shown(source, self.secret_versions.get(name).copied()),
                )
            })
            .collect();
        SpecSummary {
            image: self.image.clone(),
            env,
            ports: match self.kind {
                WorkloadKind::Agent => {
                    format!("http {}, metrics {}", self.http_base, self.metrics_base)
                }
                WorkloadKind::Component => self
                    .listens
                    .iter()
                    .map(|(name, port)| format!("{name} {port}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            cpu: format!("{}", self.nano_cpus as f64 / 1e9),
            memory: format!("{}", self.memory),
            restart: restart_name(self.restart).to_string(),
            health: format!(
                "GET {} every {}s, timeout {}s, {} retries, start {}s",
                self.health.path,
                self.health.interval_s,
                self.health.timeout_s,
                self.health.retries,
                self.health.start_period_s
            ),
            files: BTreeMap::new(),
            // A component's user and command (the command as a short hash,
            // like any literal: it may carry what should not be shown).
            runtime: match (self.user, self.command.is_empty()) {
                (None, _) => String::new(),
                (Some((uid, gid)), true) => format!("user {uid}:{gid}"),
                (Some((uid, gid)), false) => format!(
                    "user {uid}:{gid}, command {}",
                    shown(
                        &EnvSource::Literal(serde_json::to_string(&self.command).expect("strings")),
                        None
                    )
                ),
            },
        }
    }

    /// The container's environment for `slot`: the profile's, then the
    /// ports and the agent id. Secrets stay references here;
    /// [`crate::secret_files::resolve`] turns them into files.
    pub fn env_for(&self, slot: u8, agent_id: &str) -> Vec<(String, EnvSource)> {
        if self.kind == WorkloadKind::Component {
            return self.env.clone();
        }
        let (http, metrics) = self.ports(slot);
        let mut out = self.env.clone();
        for (name, value) in [
            ("HEALTH_PORT", http.to_string()),
            ("METRICS_PORT", metrics.to_string()),
            ("AGENT_ID", agent_id.to_string()),
        ] {
            out.push((name.to_string(), EnvSource::Literal(value)));
        }
        out
    }
}

/// CPU (nano-CPUs), memory and its reservation (bytes) from the limits.
fn limits(agent: &Agent) -> Result<(i64, i64, i64), DockerError> {
    let quantity =
        |q: &taskctl_core::profile::value::Checked<taskctl_core::profile::value::Quantity>,
         what: &str| {
            q.get().map(|q| q.0).ok_or_else(|| {
                DockerError::Profile(format!(
                    "`{}`: {what} `{}` is malformed",
                    agent.name,
                    q.raw()
                ))
            })
        };
    let cpu = quantity(&agent.resources.limits.cpu, "resources.limits.cpu")?;
    let memory = quantity(&agent.resources.limits.memory, "resources.limits.memory")?;
    let request = quantity(
        &agent.resources.requests.memory,
        "resources.requests.memory",
    )?;
    Ok(((cpu * 1e9) as i64, memory as i64, request as i64))
}

/// The workload's environment as the profile gives it: literals (config
/// map keys resolved) and secret references.
fn profile_env(agent: &Agent) -> Result<Vec<(String, EnvSource)>, DockerError> {
    let config: BTreeMap<&str, &BTreeMap<String, String>> = agent
        .config_map
        .iter()
        .map(|c| (c.name.as_str(), &c.data))
        .collect();
    let mut env = Vec::new();
    for var in &agent.env {
        let source = if let Some(value) = &var.value {
            EnvSource::Literal(value.clone())
        } else if let Some(secret) = &var.secret {
            EnvSource::Secret(secret.get().cloned().ok_or_else(|| {
                DockerError::Profile(format!(
                    "`{}`: env {} has a malformed secret reference",
                    agent.name, var.name
                ))
            })?)
        } else if let Some(key) = &var.config_map {
            let value = config
                .get(key.name.as_str())
                .and_then(|data| data.get(&key.key))
                .ok_or_else(|| {
                    DockerError::Profile(format!(
                        "`{}`: env {} refers to config map `{}` key `{}`, which its `config_map` does not have",
                        agent.name, var.name, key.name, key.key
                    ))
                })?;
            EnvSource::Literal(value.clone())
        } else {
            EnvSource::Literal(String::new())
        };
        env.push((var.name.clone(), source));
    }
    Ok(env)
}

pub fn restart_name(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::UnlessStopped => "unless-stopped",
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::No => "no",
    }
}

/// Every secret reference in the profile (`vault:…`, `env:…`), sorted.
pub fn secret_refs(profile: &Profile) -> Vec<String> {
    taskctl_core::secrets::references(profile)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// How a spec summary shows an env entry: literals as a short hash (enough
/// to see a change, useless to recover the value), secrets as their
/// reference and the KV version resolved.
pub fn shown(source: &EnvSource, version: Option<u64>) -> String {
    match source {
        EnvSource::Literal(v) => format!("sha256:{}", &sha256_hex(v.as_bytes())[..12]),
        EnvSource::Secret(r) => {
            // The reference without its pin: a release restored at the
            // version that runs is the same spec, and replaces nothing.
            let r = match r {
                SecretRef::Vault { path, key, .. } => SecretRef::Vault {
                    path: path.clone(),
                    key: key.clone(),
                    version: None,
                },
                other => other.clone(),
            };
            match version {
                Some(crate::secret_files::NEXT) => format!("{r} (new version)"),
                Some(v) => format!("{r} (version {v})"),
                None => r.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn local(overlay: &str) -> Profile {
        let dir = tempfile_dir();
        let base = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../profiles/local-external.yaml"
        );
        let over = dir.join("over.yaml");
        std::fs::write(
            &over,
            format!("apiVersion: taskctl.dev/v1\nkind: Profile\ninclude: [{base}]\n{overlay}"),
        )
        .unwrap();
        let loaded = taskctl_core::profile::load(&taskctl_core::profile::LoadOptions {
            files: vec![over],
            environment: None,
            vars: &|_| None,
        });
        loaded.valid_profile().expect("valid profile").clone()
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "taskctl-docker-spec-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn spec(profile: &Profile, index: u32) -> ReplicaSpec {
        ReplicaSpec::new(
            profile,
            &profile.agents[0],
            index,
            "task-executor:0.1.0-abc",
        )
        .unwrap()
    }

    #[test]
    fn local_profile_gives_limits_health_and_ports() {
        let p = local("");
        let s = spec(&p, 2);
        assert_eq!(s.nano_cpus, 1_000_000_000);
        assert_eq!(s.memory, 512 * 1024 * 1024);
        assert_eq!(s.health.path, "/ready");
        assert_eq!(s.health.interval_s, 2);
        assert_eq!(s.ports(0), (8082, 9092));
        assert_eq!(s.ports(1), (8083, 9093));
        let env = s.env_for(1, "a-2");
        let has = |n: &str, v: &str| env.contains(&(n.to_string(), EnvSource::Literal(v.into())));
        assert!(has("HEALTH_PORT", "8083"));
        assert!(has("METRICS_PORT", "9093"));
        assert!(has("LOG_LEVEL", "DEBUG"));
        assert!(has("MAX_CONCURRENT_TASKS", "50"));
    }

    #[test]
    fn the_summary_names_changed_env_vars_but_never_their_values() {
        let p = local("");
        let old = spec(&p, 1).summary();
        let mut changed = spec(&p, 1);
        for (name, source) in &mut changed.env {
            if name == "MAX_CONCURRENT_TASKS" {
                *source = EnvSource::Literal("7".into());
            }
        }
        changed.image = "task-executor:0.1.0-def".into();
        let new = changed.summary();
        assert_ne!(old.hash(), new.hash());
        let diffs = new.diff(&old);
        let fields: Vec<&str> = diffs.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["image", "env MAX_CONCURRENT_TASKS"]);
        let text = serde_json::to_string(&diffs).unwrap() + &serde_json::to_string(&new).unwrap();
        assert!(!text.contains("\"7\"") && !text.contains("=7"), "{text}");
        assert_eq!(spec(&p, 1).summary().hash(), old.hash(), "stable hash");
    }

    #[test]
    fn secrets_stay_references_and_their_version_is_part_of_the_spec() {
        let p = local(
            "agents:\n  - name: automated-task-executor\n    env:\n      - name: API_TOKEN\n        secret: vault:secret/api#token\n",
        );
        let mut s = spec(&p, 1);
        let summary = serde_json::to_string(&s.summary()).unwrap();
        assert!(summary.contains("vault:secret/api#token"), "{summary}");
        let before = s.summary().hash();
        s.secret_versions.insert("API_TOKEN".into(), 2);
        let rotated = s.summary();
        assert_ne!(
            rotated.hash(),
            before,
            "a new secret version rolls the replica"
        );
        assert_eq!(
            rotated.env["API_TOKEN"],
            "vault:secret/api#token (version 2)"
        );
        assert!(secret_refs(&p).contains(&"vault:secret/api#token".to_string()));
    }

    #[test]
    fn names_are_unique_per_environment() {
        let p = local("");
        assert_eq!(
            replica_name(&p, "automated-task-executor", 1),
            "automated-task-executor-1.task-local-external.development"
        );
        assert_eq!(next_name("a-1.x"), "a-1.x.next");
        assert_eq!(
            release_name("task-local.development", 3),
            "taskctl-release-task-local.development-3"
        );
    }

    #[test]
    fn too_many_replicas_for_the_port_range_is_an_error() {
        let mut p = local("");
        p.agents[0].replicas = 40;
        p.agents[0].ports[0].port = 65500;
        let err = ReplicaSpec::new(&p, &p.agents[0], 1, "x").unwrap_err();
        assert!(err.to_string().contains("above 65535"), "{err}");
    }
}
