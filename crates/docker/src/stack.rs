//! The managed services of the docker target, from the profile: what each
//! container runs, as which user, with which files, ports, limits and
//! health check. Steps ([`crate::steps::Service`]) turn a [`ServiceDef`]
//! into a container; nothing here talks to the engine.
//!
//! Every service runs hardened: its own non-root user, no capability,
//! `no-new-privileges`, a read-only root file system (tmpfs where the
//! server writes scratch files), pids, memory and CPU limits, its data on
//! a named volume, its configuration as files in `/etc/taskctl` and its
//! secrets as files in `/run/secrets` (see [`crate::secret_files`]).
//!
//! The container contract (user, entrypoint, paths) is the official
//! image's; `scripts/images.sh` builds images from Debian packages that
//! keep the same contract, for machines that reach no registry.

use crate::error::DockerError;
use serde::Serialize;
use taskctl_core::profile::Profile;
use taskctl_core::profile::value::SecretRef;

use crate::spec::EnvSource;

/// Where non-secret configuration files are mounted.
pub const CONFIG_DIR: &str = "/etc/taskctl";

/// Where a managed Prometheus reads the agents' `file_sd` target files.
pub const FILE_SD_DIR: &str = "/etc/prometheus-sd";

/// Default images: the official ones, pinned.
pub const DEFAULT_IMAGES: &[(&str, &str)] = &[
    ("rabbitmq", "rabbitmq:3.13.7-management"),
    ("mongodb", "mongo:7.0.14"),
    ("prometheus", "prom/prometheus:v2.54.1"),
    ("alertmanager", "prom/alertmanager:v0.27.0"),
    ("vault", "openbao/openbao:2.0.2"),
];

/// Names a profile may use in `target.docker.{images,publish,limits}`.
pub const SERVICE_NAMES: &[&str] = &[
    "rabbitmq",
    "postgres",
    "mongodb",
    "prometheus",
    "alertmanager",
    "vault",
];

/// One port of a managed service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortDef {
    /// The `target.docker.publish` key.
    pub name: &'static str,
    pub container: u16,
    /// Published on 127.0.0.1 at this port; `None`: on the network only.
    pub host: Option<u16>,
}

/// A file the container reads: plain configuration, or one rendered with
/// secrets at apply time (then delivered like a secret).
#[derive(Debug, Clone)]
pub enum FileDef {
    Config {
        name: String,
        content: String,
    },
    /// RabbitMQ's configuration, with the administrator in it.
    RabbitConf {
        name: String,
        admin_user: SecretRef,
        admin_password: SecretRef,
        rest: String,
    },
}

impl FileDef {
    pub fn name(&self) -> &str {
        match self {
            FileDef::Config { name, .. } | FileDef::RabbitConf { name, .. } => name,
        }
    }
}

/// CPU, memory and process limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub nano_cpus: i64,
    pub memory: i64,
    pub pids: i64,
}

/// A service the profile marks managed (enabled, not `external`), run as
/// one hardened container on the stack's network.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub name: &'static str,
    pub image: String,
    /// `uid:gid` the server runs as; never root.
    pub user: String,
    /// Owner of its secret files (the uid above).
    pub file_owner: u64,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<(String, EnvSource)>,
    pub files: Vec<FileDef>,
    pub ports: Vec<PortDef>,
    /// The named volume's mount point.
    pub data_path: &'static str,
    /// Writable scratch directories (tmpfs) on the read-only root.
    pub tmpfs: Vec<&'static str>,
    /// Host directories mounted read-only: (host path, container path).
    pub binds: Vec<(String, &'static str)>,
    /// Docker health check (`CMD` form).
    pub health: Vec<String>,
    pub limits: Limits,
    /// Seconds a health check may take to pass after start.
    pub start_seconds: u32,
    /// Services that must be healthy first.
    pub after: Vec<&'static str>,
    /// `host.docker.internal` names this machine in the container (an
    /// Alertmanager whose webhook receiver runs on the host).
    pub host_gateway: bool,
    /// The signal `docker stop` sends (PostgreSQL: SIGINT, a fast shutdown
    /// that does not wait for clients to leave).
    pub stop_signal: Option<&'static str>,
}

impl ServiceDef {
    /// The port published for taskctl's own use, if any.
    pub fn host_port(&self, name: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.host)
    }
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn docker_settings(profile: &Profile) -> Option<&taskctl_core::profile::model::DockerTarget> {
    profile.target.docker.as_ref()
}

/// The image of `service`: the profile's `target.docker.images`, its own
/// `image`, or the default.
fn image_of(profile: &Profile, service: &str, own: Option<&String>, default: String) -> String {
    docker_settings(profile)
        .and_then(|d| d.images.get(service).cloned())
        .or_else(|| own.cloned())
        .unwrap_or(default)
}

fn default_image(service: &str) -> String {
    DEFAULT_IMAGES
        .iter()
        .find(|(s, _)| *s == service)
        .map(|(_, i)| i.to_string())
        .unwrap_or_default()
}

/// The host port of `name`: the profile's `publish`, else `default`
/// (`None`: not published). `0` in the profile publishes nothing.
fn published(profile: &Profile, name: &str, default: Option<u16>) -> Option<u16> {
    match docker_settings(profile).and_then(|d| d.publish.get(name)) {
        Some(0) => None,
        Some(p) => Some(*p),
        None => default,
    }
}

fn limits(
    profile: &Profile,
    service: &str,
    default: (f64, u64, i64),
) -> Result<Limits, DockerError> {
    let l = docker_settings(profile).and_then(|d| d.limits.get(service));
    let cpu = match l.and_then(|l| l.cpu.as_ref()) {
        Some(c) => c.get().map(|q| q.0).ok_or_else(|| {
            DockerError::Profile(format!(
                "target.docker.limits.{service}.cpu `{}` is malformed",
                c.raw()
            ))
        })?,
        None => default.0,
    };
    let memory = match l.and_then(|l| l.memory.as_ref()) {
        Some(m) => m.get().map(|q| q.0 as u64).ok_or_else(|| {
            DockerError::Profile(format!(
                "target.docker.limits.{service}.memory `{}` is malformed",
                m.raw()
            ))
        })?,
        None => default.1,
    };
    if memory < 16 << 20 {
        return Err(DockerError::Profile(format!(
            "target.docker.limits.{service}.memory: at least 16Mi is needed, {memory} bytes given"
        )));
    }
    let pids = l
        .and_then(|l| l.pids)
        .map(i64::from)
        .unwrap_or(default.2)
        .max(16);
    Ok(Limits {
        nano_cpus: (cpu * 1e9) as i64,
        memory: memory as i64,
        pids,
    })
}

const MI: u64 = 1 << 20;

/// A plugin name RabbitMQ could have (`rabbitmq_management`): nothing that
/// could break out of the Erlang term the plugins file is.
fn plugin_name_ok(p: &str) -> bool {
    !p.is_empty()
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Whether the agents run on the environment's network: when taskctl runs
/// the broker they talk to or the Prometheus that scrapes them (see the
/// crate docs). Otherwise they keep the host's network, where an external
/// broker and Prometheus on loopback are reachable; a managed database or
/// Vault does not change that (the agents do not talk to them, and get
/// their secrets as files).
pub fn agents_bridged(profile: &Profile) -> bool {
    let s = &profile.services;
    s.rabbitmq
        .as_ref()
        .is_some_and(|x| x.enabled && x.external.is_none())
        || s.prometheus
            .as_ref()
            .is_some_and(|x| x.enabled && x.external.is_none())
}

/// The managed services of the profile, in start order.
pub fn managed_services(profile: &Profile) -> Result<Vec<ServiceDef>, DockerError> {
    if let Some(d) = docker_settings(profile) {
        for (what, keys) in [
            ("images", d.images.keys().collect::<Vec<_>>()),
            ("publish", d.publish.keys().collect()),
            ("limits", d.limits.keys().collect()),
        ] {
            for k in keys {
                let ok = SERVICE_NAMES.contains(&k.as_str())
                    || (what == "publish" && k == "rabbitmq_management");
                if !ok {
                    return Err(DockerError::Profile(format!(
                        "target.docker.{what}.{k}: not a managed service (expected one of {}{})",
                        SERVICE_NAMES.join(", "),
                        if what == "publish" {
                            ", rabbitmq_management"
                        } else {
                            ""
                        }
                    )));
                }
            }
        }
    }
    let s = &profile.services;
    let mut out = Vec::new();
    let secret = |c: &taskctl_core::profile::value::Checked<SecretRef>, what: &str| {
        c.get()
            .cloned()
            .ok_or_else(|| DockerError::Profile(format!("{what} is not a valid secret reference")))
    };

    if let Some(v) = &s.vault
        && v.enabled
        && v.external.is_none()
    {
        let Some(cluster) = &v.cluster else {
            return Err(DockerError::Profile("services.vault: a Vault (OpenBao) taskctl runs on docker needs `cluster` (nodes: [\"http://127.0.0.1:8200\"], keys_file: …), which taskctl initializes and unseals".into()));
        };
        if cluster.nodes.len() != 1 {
            return Err(DockerError::Profile(format!(
                "services.vault.cluster.nodes: the docker target runs one Vault node, {} are listed",
                cluster.nodes.len()
            )));
        }
        let node = url::Url::parse(&cluster.nodes[0])
            .map_err(|e| DockerError::Profile(format!("services.vault.cluster.nodes[0]: {e}")))?;
        let loopback = matches!(node.host_str(), Some("127.0.0.1" | "localhost"));
        if !loopback || node.scheme() != "http" {
            return Err(DockerError::Profile(format!(
                "services.vault.cluster.nodes[0] `{node}`: the docker target publishes Vault on 127.0.0.1 over http; expected http://127.0.0.1:PORT"
            )));
        }
        let port = node.port_or_known_default().unwrap_or(8200);
        let hcl = format!(
            "# Written by taskctl.\nstorage \"raft\" {{\n  path    = \"/openbao/data\"\n  node_id = \"node1\"\n}}\nlistener \"tcp\" {{\n  address     = \"0.0.0.0:8200\"\n  tls_disable = true\n}}\napi_addr      = \"http://127.0.0.1:{port}\"\ncluster_addr  = \"http://127.0.0.1:8201\"\ndisable_mlock = true\nui            = false\n"
        );
        out.push(ServiceDef {
            name: "vault",
            image: image_of(profile, "vault", v.image.as_ref(), default_image("vault")),
            user: "100:1000".into(),
            file_owner: 100,
            entrypoint: Some(strs(&["/bin/bao"])),
            cmd: Some(vec![
                "server".into(),
                format!("-config={CONFIG_DIR}/openbao.hcl"),
            ]),
            env: vec![(
                "BAO_ADDR".into(),
                EnvSource::Literal("http://127.0.0.1:8200".into()),
            )],
            files: vec![FileDef::Config {
                name: "openbao.hcl".into(),
                content: hcl,
            }],
            ports: vec![PortDef {
                name: "vault",
                container: 8200,
                host: Some(port),
            }],
            data_path: "/openbao/data",
            tmpfs: vec!["/tmp"],
            binds: Vec::new(),
            // Answers at all (sealed is 503, standby 429): unsealing is the
            // vault/cluster step's job, after this one.
            health: vec![
                "CMD-SHELL".into(),
                // 0 unsealed, 2 sealed, 1 no answer.
                "/bin/bao status -address=http://127.0.0.1:8200 >/dev/null 2>&1; [ $? -ne 1 ]"
                    .into(),
            ],
            limits: limits(profile, "vault", (1.0, 256 * MI, 256))?,
            start_seconds: 30,
            after: Vec::new(),
            host_gateway: false,
            stop_signal: None,
        });
    }

    if let Some(r) = &s.rabbitmq
        && r.enabled
        && r.external.is_none()
    {
        let admin = r.admin.as_ref().ok_or_else(|| {
            DockerError::Profile("services.rabbitmq: a broker taskctl runs needs `admin` (vault:PATH#password of a secrets.entries entry of type rabbitmq), its only administrator; no guest user is created".to_string())
        })?;
        let admin = secret(admin, "services.rabbitmq.admin")?;
        let SecretRef::Vault { path, version, .. } = &admin else {
            return Err(DockerError::Profile("services.rabbitmq.admin: expected vault:PATH#password (the username is read from PATH#username)".into()));
        };
        let admin_user = SecretRef::Vault {
            path: path.clone(),
            key: "username".into(),
            version: *version,
        };
        let mut plugins: Vec<&str> = r
            .plugins
            .iter()
            .map(String::as_str)
            // Kubernetes peer discovery means nothing on one engine.
            .filter(|p| *p != "rabbitmq_peer_discovery_k8s")
            .collect();
        for needed in ["rabbitmq_management", "rabbitmq_prometheus"] {
            if !plugins.contains(&needed) {
                plugins.push(needed);
            }
        }
        if let Some(bad) = plugins.iter().find(|p| !plugin_name_ok(p)) {
            return Err(DockerError::Profile(format!(
                "services.rabbitmq.plugins: `{bad}` is not a plugin name (lower-case letters, digits, _)"
            )));
        }
        let rabbit_limits = limits(profile, "rabbitmq", (1.0, 512 * MI, 512))?;
        let mut env: Vec<(String, EnvSource)> = [
            ("HOME", "/var/lib/rabbitmq"),
            // The node's name names its storage directory: a name of its
            // own (not the container id) keeps the data of the volume.
            ("RABBITMQ_NODENAME", "rabbit@localhost"),
            ("RABBITMQ_CONFIG_FILE", "/run/secrets/rabbitmq.conf"),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                "/etc/taskctl/enabled_plugins",
            ),
            ("RABBITMQ_MNESIA_BASE", "/var/lib/rabbitmq/mnesia"),
            ("RABBITMQ_LOG_BASE", "/var/lib/rabbitmq/log"),
            (
                "RABBITMQ_PLUGINS_EXPAND_DIR",
                "/var/lib/rabbitmq/plugins-expand",
            ),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), EnvSource::Literal(v.into())))
        .collect();
        // AMQP: over TLS only when the profile gives a certificate (the
        // certificate, key and CA arrive as secret files like every
        // secret), plain otherwise.
        let (listeners, amqp_port) = match &r.tls {
            Some(tls) => {
                let mut conf = String::from("listeners.tcp = none\nlisteners.ssl.default = 5671\n");
                let mut file = |name: &str,
                                c: &taskctl_core::profile::value::Checked<SecretRef>,
                                what: &str,
                                option: &str|
                 -> Result<(), DockerError> {
                    env.push((name.to_string(), EnvSource::Secret(secret(c, what)?)));
                    conf.push_str(&format!(
                        "ssl_options.{option} = {}/{}\n",
                        crate::secret_files::DIR,
                        crate::secret_files::file_name(name)
                    ));
                    Ok(())
                };
                file(
                    "RABBITMQ_TLS_CERT",
                    &tls.cert,
                    "services.rabbitmq.tls.cert",
                    "certfile",
                )?;
                file(
                    "RABBITMQ_TLS_KEY",
                    &tls.key,
                    "services.rabbitmq.tls.key",
                    "keyfile",
                )?;
                if let Some(ca) = &tls.ca {
                    file(
                        "RABBITMQ_TLS_CA",
                        ca,
                        "services.rabbitmq.tls.ca",
                        "cacertfile",
                    )?;
                }
                // TLS 1.3 and 1.2 only; client certificates are asked for
                // when a CA is given, never required (agents authenticate
                // with their password).
                conf.push_str(
                    "ssl_options.versions.1 = tlsv1.3\nssl_options.versions.2 = tlsv1.2\n",
                );
                conf.push_str(if tls.ca.is_some() {
                    "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = false\n"
                } else {
                    "ssl_options.verify = verify_none\n"
                });
                (conf, 5671)
            }
            None => ("listeners.tcp.default = 5672\n".to_string(), 5672),
        };
        out.push(ServiceDef {
            name: "rabbitmq",
            image: image_of(
                profile,
                "rabbitmq",
                r.image.as_ref(),
                default_image("rabbitmq"),
            ),
            user: "999:999".into(),
            file_owner: 999,
            entrypoint: Some(strs(&["rabbitmq-server"])),
            cmd: None,
            env,
            files: vec![
                FileDef::Config {
                    name: "enabled_plugins".into(),
                    content: format!("[{}].\n", plugins.join(",")),
                },
                FileDef::RabbitConf {
                    name: "rabbitmq.conf".into(),
                    admin_user,
                    admin_password: admin,
                    // RabbitMQ sizes its memory alarm from the host's RAM,
                    // not the container's limit: 40% of the limit instead.
                    rest: format!(
                        "loopback_users = none\n{listeners}management.tcp.port = 15672\nprometheus.tcp.port = 15692\nlog.console = true\nlog.file = false\nvm_memory_high_watermark.absolute = {}\n",
                        rabbit_limits.memory * 2 / 5
                    ),
                },
            ],
            ports: vec![
                PortDef {
                    name: "rabbitmq",
                    container: amqp_port,
                    host: published(profile, "rabbitmq", Some(amqp_port)),
                },
                PortDef {
                    name: "rabbitmq_management",
                    container: 15672,
                    host: published(profile, "rabbitmq_management", Some(15672)),
                },
            ],
            data_path: "/var/lib/rabbitmq",
            tmpfs: vec!["/tmp"],
            binds: Vec::new(),
            // Every listener answers (AMQP and the management API, which
            // comes up seconds after the node answers a ping).
            health: strs(&[
                "CMD",
                "rabbitmq-diagnostics",
                "-q",
                "check_port_connectivity",
            ]),
            limits: rabbit_limits,
            start_seconds: 90,
            after: Vec::new(),
            host_gateway: false,
            stop_signal: None,
        });
    }

    if let Some(p) = &s.postgres
        && p.enabled
        && p.external.is_none()
    {
        if p.version < 12 {
            return Err(DockerError::Profile(format!(
                "services.postgres.version: 12 or newer is supported, {} given",
                p.version
            )));
        }
        out.push(ServiceDef {
            name: "postgres",
            image: postgres_image(profile, p),
            user: "999:999".into(),
            file_owner: 999,
            entrypoint: None,
            cmd: Some(strs(&["postgres"])),
            env: vec![
                ("POSTGRES_DB".into(), EnvSource::Literal(p.database.clone())),
                ("POSTGRES_USER".into(), EnvSource::Literal(p.user.clone())),
                (
                    "POSTGRES_PASSWORD".into(),
                    EnvSource::Secret(secret(&p.password, "services.postgres.password")?),
                ),
                (
                    "PGDATA".into(),
                    EnvSource::Literal("/var/lib/postgresql/data".into()),
                ),
            ],
            files: Vec::new(),
            ports: vec![PortDef {
                name: "postgres",
                container: 5432,
                host: published(profile, "postgres", None),
            }],
            data_path: "/var/lib/postgresql/data",
            tmpfs: vec!["/tmp", "/var/run/postgresql"],
            binds: Vec::new(),
            health: vec![
                "CMD".into(),
                "pg_isready".into(),
                "-q".into(),
                "-h".into(),
                "127.0.0.1".into(),
                "-U".into(),
                p.user.clone(),
                "-d".into(),
                p.database.clone(),
            ],
            limits: limits(profile, "postgres", (1.0, 512 * MI, 256))?,
            start_seconds: 60,
            after: Vec::new(),
            host_gateway: false,
            stop_signal: Some("SIGINT"),
        });
        if let Some(b) = &p.backup {
            out.push(postgres_backup(
                profile,
                p,
                b,
                &secret(&p.password, "services.postgres.password")?,
            )?);
        }
    }

    if let Some(m) = &s.mongodb
        && m.enabled
        && m.external.is_none()
    {
        let mut env = Vec::new();
        if let Some(p) = &m.root_password {
            env.push((
                "MONGO_INITDB_ROOT_USERNAME".into(),
                EnvSource::Literal("root".into()),
            ));
            env.push((
                "MONGO_INITDB_ROOT_PASSWORD".into(),
                EnvSource::Secret(secret(p, "services.mongodb.root_password")?),
            ));
        }
        out.push(ServiceDef {
            name: "mongodb",
            image: image_of(
                profile,
                "mongodb",
                m.image.as_ref(),
                default_image("mongodb"),
            ),
            user: "999:999".into(),
            file_owner: 999,
            entrypoint: None,
            cmd: Some(strs(&["mongod", "--bind_ip_all"])),
            env,
            files: Vec::new(),
            ports: vec![PortDef {
                name: "mongodb",
                container: 27017,
                host: published(profile, "mongodb", None),
            }],
            data_path: "/data/db",
            tmpfs: vec!["/tmp"],
            binds: Vec::new(),
            health: strs(&[
                "CMD",
                "mongosh",
                "--quiet",
                "--eval",
                "db.adminCommand('ping').ok",
            ]),
            limits: limits(profile, "mongodb", (1.0, 1024 * MI, 512))?,
            start_seconds: 60,
            after: Vec::new(),
            host_gateway: false,
            stop_signal: None,
        });
    }

    if let Some(p) = &s.prometheus
        && p.enabled
        && p.external.is_none()
    {
        let alertmanager = p.alertmanager.enabled;
        if alertmanager {
            let url = p.alertmanager.webhook_url.as_ref().ok_or_else(|| {
                DockerError::Profile("services.prometheus.alertmanager: a managed Alertmanager needs `webhook_url`, the receiver its alerts go to".to_string())
            })?;
            let parsed = url::Url::parse(url).map_err(|e| {
                DockerError::Profile(format!("services.prometheus.alertmanager.webhook_url: {e}"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(DockerError::Profile(format!(
                    "services.prometheus.alertmanager.webhook_url `{url}`: expected an http(s) URL"
                )));
            }
            out.push(ServiceDef {
                name: "alertmanager",
                image: image_of(profile, "alertmanager", None, default_image("alertmanager")),
                user: "65534:65534".into(),
                file_owner: 65534,
                entrypoint: Some(strs(&["/bin/alertmanager"])),
                cmd: Some(vec![
                    format!("--config.file={CONFIG_DIR}/alertmanager.yml"),
                    "--storage.path=/alertmanager".into(),
                    "--web.listen-address=:9093".into(),
                    "--cluster.listen-address=".into(),
                ]),
                env: Vec::new(),
                files: vec![FileDef::Config {
                    name: "alertmanager.yml".into(),
                    content: alertmanager_config(url)?,
                }],
                ports: vec![PortDef {
                    name: "alertmanager",
                    container: 9093,
                    host: published(profile, "alertmanager", Some(9093)),
                }],
                data_path: "/alertmanager",
                tmpfs: vec!["/tmp"],
                binds: Vec::new(),
                health: strs(&[
                    "CMD",
                    "/bin/amtool",
                    "--alertmanager.url=http://127.0.0.1:9093",
                    "config",
                    "show",
                ]),
                limits: limits(profile, "alertmanager", (0.5, 128 * MI, 128))?,
                start_seconds: 30,
                after: Vec::new(),
                host_gateway: true,
                stop_signal: None,
            });
        }
        let retention = p.retention.raw().to_string();
        if p.retention.get().is_none() {
            return Err(DockerError::Profile(format!(
                "services.prometheus.retention `{retention}` is not a duration"
            )));
        }
        let mut binds = Vec::new();
        if let Some(dir) = crate::steps::file_sd_dir(profile) {
            binds.push((dir.display().to_string(), FILE_SD_DIR));
        }
        out.push(ServiceDef {
            name: "prometheus",
            image: image_of(
                profile,
                "prometheus",
                p.image.as_ref(),
                default_image("prometheus"),
            ),
            user: "65534:65534".into(),
            file_owner: 65534,
            entrypoint: Some(strs(&["/bin/prometheus"])),
            cmd: Some(vec![
                format!("--config.file={CONFIG_DIR}/prometheus.yml"),
                "--storage.tsdb.path=/prometheus".into(),
                format!("--storage.tsdb.retention.time={retention}"),
                "--web.listen-address=:9090".into(),
            ]),
            env: Vec::new(),
            files: vec![
                FileDef::Config {
                    name: "prometheus.yml".into(),
                    content: prometheus_config(profile, alertmanager)?,
                },
                FileDef::Config {
                    name: "rules.yml".into(),
                    content: rules(p)?,
                },
            ],
            ports: vec![PortDef {
                name: "prometheus",
                container: 9090,
                host: published(profile, "prometheus", Some(9090)),
            }],
            data_path: "/prometheus",
            tmpfs: vec!["/tmp"],
            binds,
            // Answers a query: up and ready (promtool of 2.42, Debian's, has
            // no `check healthy`).
            health: strs(&[
                "CMD",
                "/bin/promtool",
                "query",
                "instant",
                "http://127.0.0.1:9090",
                "vector(1)",
            ]),
            limits: limits(profile, "prometheus", (1.0, 512 * MI, 256))?,
            start_seconds: 30,
            after: if alertmanager {
                vec!["alertmanager"]
            } else {
                Vec::new()
            },
            host_gateway: false,
            stop_signal: None,
        });
    }
    Ok(out)
}

#[derive(Serialize)]
struct FileSd<'a> {
    files: Vec<&'a str>,
    refresh_interval: &'a str,
}

#[derive(Serialize)]
struct StaticTargets {
    targets: Vec<String>,
}

#[derive(Serialize)]
struct ScrapeJob {
    job_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scrape_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_path: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    static_configs: Vec<StaticTargets>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    file_sd_configs: Vec<FileSd<'static>>,
}

fn yaml<T: Serialize>(what: &str, value: &T) -> Result<String, DockerError> {
    serde_norway::to_string(value)
        .map_err(|e| DockerError::Profile(format!("rendering {what}: {e}")))
}

/// `prometheus.yml`: itself, the broker, the agents (`file_sd`, written by
/// the replica steps), the profile's own jobs, the rules, Alertmanager.
/// Every value reaches the YAML through serialization, never by pasting.
pub fn prometheus_config(profile: &Profile, alertmanager: bool) -> Result<String, DockerError> {
    let p = profile
        .services
        .prometheus
        .as_ref()
        .ok_or_else(|| DockerError::Profile("services.prometheus is missing".into()))?;
    let mut jobs = vec![
        ScrapeJob {
            job_name: "prometheus".into(),
            scrape_interval: None,
            metrics_path: None,
            static_configs: vec![StaticTargets {
                targets: vec!["127.0.0.1:9090".into()],
            }],
            file_sd_configs: Vec::new(),
        },
        ScrapeJob {
            job_name: "task-executor".into(),
            scrape_interval: Some("5s".into()),
            metrics_path: None,
            static_configs: Vec::new(),
            file_sd_configs: vec![FileSd {
                files: vec!["/etc/prometheus-sd/*.json"],
                refresh_interval: "5s",
            }],
        },
    ];
    if profile
        .services
        .rabbitmq
        .as_ref()
        .is_some_and(|r| r.enabled && r.external.is_none())
    {
        jobs.push(ScrapeJob {
            job_name: "rabbitmq".into(),
            scrape_interval: None,
            metrics_path: None,
            static_configs: vec![StaticTargets {
                targets: vec!["rabbitmq:15692".into()],
            }],
            file_sd_configs: Vec::new(),
        });
    }
    for job in &p.scrape_configs {
        if jobs.iter().any(|j| j.job_name == job.job_name) {
            // The agents' job is taskctl's (file_sd, wherever the rollout
            // put them); a profile's static one for it would scrape
            // addresses the containers do not have.
            if job.job_name == "task-executor" {
                continue;
            }
            return Err(DockerError::Profile(format!(
                "services.prometheus.scrape_configs: job `{}` is one taskctl defines itself",
                job.job_name
            )));
        }
        jobs.push(ScrapeJob {
            job_name: job.job_name.clone(),
            scrape_interval: job.scrape_interval.as_ref().map(|d| d.raw().to_string()),
            metrics_path: job.metrics_path.clone(),
            static_configs: job
                .static_configs
                .iter()
                .map(|s| StaticTargets {
                    targets: s.targets.clone(),
                })
                .collect(),
            file_sd_configs: Vec::new(),
        });
    }
    let mut doc = serde_json::json!({
        "global": { "scrape_interval": "15s", "evaluation_interval": "15s" },
        "rule_files": [format!("{CONFIG_DIR}/rules.yml")],
        "scrape_configs": jobs,
    });
    if alertmanager {
        doc["alerting"] = serde_json::json!({
            "alertmanagers": [{ "static_configs": [{ "targets": ["alertmanager:9093"] }] }]
        });
    }
    yaml("prometheus.yml", &doc)
}

/// The profile's recording and alerting rules as one rule group each.
pub fn rules(p: &taskctl_core::profile::model::Prometheus) -> Result<String, DockerError> {
    let recording: Vec<serde_json::Value> = p
        .recording_rules
        .iter()
        .map(|r| serde_json::json!({ "record": r.record, "expr": r.expr }))
        .collect();
    let alerting: Vec<serde_json::Value> = p
        .alerting_rules
        .iter()
        .map(|r| {
            let mut rule = serde_json::json!({ "alert": r.name, "expr": r.expr });
            if let Some(f) = &r.for_ {
                rule["for"] = f.raw().into();
            }
            if !r.labels.is_empty() {
                rule["labels"] = serde_json::to_value(&r.labels).expect("strings");
            }
            if !r.annotations.is_empty() {
                rule["annotations"] = serde_json::to_value(&r.annotations).expect("strings");
            }
            rule
        })
        .collect();
    let mut groups = Vec::new();
    if !recording.is_empty() {
        groups.push(serde_json::json!({ "name": "taskctl-recording", "rules": recording }));
    }
    if !alerting.is_empty() {
        groups.push(serde_json::json!({ "name": "taskctl-alerts", "rules": alerting }));
    }
    yaml("rules.yml", &serde_json::json!({ "groups": groups }))
}

/// The image of the managed PostgreSQL (and of its backups).
fn postgres_image(profile: &Profile, p: &taskctl_core::profile::model::Postgres) -> String {
    image_of(
        profile,
        "postgres",
        p.image.as_ref(),
        format!("postgres:{}", p.version),
    )
}

/// The daily time of a `M H * * *` schedule, the only form the docker
/// target runs (it has no cron): `(minute, hour)`.
pub fn daily_schedule(schedule: &str) -> Result<(u32, u32), DockerError> {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let expected = || {
        format!(
            "services.postgres.backup.schedule: `{schedule}`: the docker target runs daily schedules only, `M H * * *` (e.g. `0 3 * * *`, 03:00 UTC)"
        )
    };
    match fields.as_slice() {
        [m, h, "*", "*", "*"] => match (m.parse::<u32>(), h.parse::<u32>()) {
            (Ok(m), Ok(h)) if m < 60 && h < 24 => Ok((m, h)),
            _ => Err(DockerError::Profile(expected())),
        },
        _ => Err(DockerError::Profile(expected())),
    }
}

/// Where dumps are kept: the image's home of the postgres user, so the
/// named volume mounted there starts owned by that user (a new path would
/// be root's, and the read-only root file system leaves no other place).
pub const BACKUP_DIR: &str = "/var/lib/postgresql";

/// PostgreSQL's backups: a container of the same image beside the
/// database, which takes a `pg_dump -Fc` at start when there is none and
/// then every day at the schedule's time (UTC), into its own volume,
/// deleting dumps older than the retention. A dump is written to a
/// `.partial` file and renamed, so a dump that is there is complete. The
/// password reaches `pg_dump` from the secret file, never the container's
/// configuration. Healthy once a dump exists.
fn postgres_backup(
    profile: &Profile,
    p: &taskctl_core::profile::model::Postgres,
    b: &taskctl_core::profile::model::Backup,
    password: &SecretRef,
) -> Result<ServiceDef, DockerError> {
    let (minute, hour) = daily_schedule(&b.schedule)?;
    let keep_minutes = b
        .retention
        .get()
        .map(|d| (d.0.as_secs() / 60).max(1))
        .ok_or_else(|| {
            DockerError::Profile(
                "services.postgres.backup.retention: expected a duration such as `30d`".to_string(),
            )
        })?;
    let script = format!(
        r#"set -u
export PGPASSWORD="$(cat "$PGPASSWORD_FILE")"
dump() {{
  until pg_isready -q; do sleep 2; done
  f="{BACKUP_DIR}/$PGDATABASE-$(date -u +%Y%m%dT%H%M%SZ).dump"
  if pg_dump -Fc -f "$f.partial"; then mv "$f.partial" "$f"; echo "backup $f"; else rm -f "$f.partial"; echo "backup failed" >&2; fi
  find {BACKUP_DIR} -name '*.dump' -mmin +{keep_minutes} -delete
}}
ls {BACKUP_DIR}/*.dump >/dev/null 2>&1 || dump
last=""
while :; do
  if [ "$(date -u +%H:%M)" = "{hour:02}:{minute:02}" ] && [ "$last" != "$(date -u +%Y%m%d)" ]; then
    last="$(date -u +%Y%m%d)"; dump
  fi
  sleep 20
done
"#
    );
    Ok(ServiceDef {
        name: "postgres-backup",
        // The database's own image: its pg_dump matches the server.
        image: postgres_image(profile, p),
        user: "999:999".into(),
        file_owner: 999,
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        cmd: Some(Vec::new()),
        env: vec![
            ("PGHOST".into(), EnvSource::Literal("postgres".into())),
            ("PGUSER".into(), EnvSource::Literal(p.user.clone())),
            ("PGDATABASE".into(), EnvSource::Literal(p.database.clone())),
            ("PGPASSWORD".into(), EnvSource::Secret(password.clone())),
        ],
        files: Vec::new(),
        ports: Vec::new(),
        data_path: BACKUP_DIR,
        tmpfs: vec!["/tmp"],
        binds: Vec::new(),
        health: vec![
            "CMD-SHELL".into(),
            format!("ls {BACKUP_DIR}/*.dump >/dev/null 2>&1"),
        ],
        limits: limits(profile, "postgres-backup", (0.5, 256 * MI, 64))?,
        start_seconds: 120,
        after: vec!["postgres"],
        host_gateway: false,
        stop_signal: None,
    })
}

/// `alertmanager.yml`: every alert to the profile's webhook.
pub fn alertmanager_config(webhook: &str) -> Result<String, DockerError> {
    yaml(
        "alertmanager.yml",
        &serde_json::json!({
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname"],
                "group_wait": "10s",
                "group_interval": "1m",
                "repeat_interval": "4h",
            },
            "receivers": [{
                "name": "webhook",
                "webhook_configs": [{ "url": webhook, "send_resolved": true }],
            }],
        }),
    )
}

/// RabbitMQ's configuration with the administrator: the values come from
/// Vault, so anything that could end the line and start another setting
/// is refused rather than written.
pub fn rabbit_conf(user: &str, password: &str, rest: &str) -> Result<String, DockerError> {
    for (what, v) in [("username", user), ("password", password)] {
        if v.is_empty() || v.chars().any(|c| c.is_control() || c == '#') || v.trim() != v {
            return Err(DockerError::Profile(format!(
                "the broker administrator's {what} from Vault has characters a rabbitmq.conf value cannot hold (control characters, `#`, surrounding spaces)"
            )));
        }
    }
    Ok(format!(
        "# Written by taskctl.\ndefault_user = {user}\ndefault_pass = {password}\ndefault_vhost = /\ndefault_permissions.configure = .*\ndefault_permissions.read = .*\ndefault_permissions.write = .*\ndefault_user_tags.administrator = true\n{rest}"
    ))
}

#[cfg(test)]
mod backup_tests {
    use super::daily_schedule;

    #[test]
    fn only_daily_schedules_run_on_docker() {
        assert_eq!(daily_schedule("0 3 * * *"), Ok((0, 3)));
        assert_eq!(daily_schedule("45 23 * * *"), Ok((45, 23)));
        for bad in [
            "0 3 * * 1",
            "*/5 * * * *",
            "60 3 * * *",
            "0 24 * * *",
            "daily",
            "",
        ] {
            let e = daily_schedule(bad).unwrap_err();
            assert!(e.to_string().contains("M H * * *"), "{bad}: {e}");
        }
    }
}
