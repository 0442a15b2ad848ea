//! The render context: a small, serializable view of the typed profile.
//!
//! Templates see this view, never the raw profile, so they stay simple:
//! every decision (is a service managed here or external, which Secret holds
//! a credential, what share of the cluster a quota grants) is made here, in
//! Rust, where it is tested.
//!
//! Guarantees:
//! - Every field is always present (absent values serialize as `null`,
//!   lists as `[]`), so templates in strict mode can test them with `#if`.
//! - No secret value is ever in the view: credentials appear as the name and
//!   key of the Kubernetes Secret taskctl creates from Vault, plus the
//!   profile's reference (`vault:PATH#KEY`) for annotations.
//!
//! Secret naming contract (for whoever creates the Secrets from Vault): a
//! reference `vault:secret/messaging#password` under mount `secret` becomes
//! key `password` of Secret `taskctl-messaging` in the namespace of the
//! workload that uses it; `env:NAME` becomes key `NAME` of `taskctl-env`.
//!
//! `model.rs` holds the types templates read; this file builds them.

use crate::render::RenderError;
use serde::Serialize;
use std::path::Path;
use taskctl_core::profile::builtins::is_gpu_instance;
use taskctl_core::profile::value::{Checked, SecretRef};
use taskctl_core::profile::{
    Agent, External, NodeRole, Persistence, Profile, ScaledResource, ServiceType, TargetKind,
    vault_unseal_key_alias,
};

mod model;
pub use model::*;

/// Builds the view of a profile. `templates` is the templates directory,
/// where the Grafana dashboards named by the profile are read from.
pub fn build(profile: &Profile, templates: &Path) -> Result<View, RenderError> {
    build_from(
        profile,
        &crate::render::Templates::Dir(templates.to_path_buf()),
    )
}

/// [`build`] with the dashboards read from `templates`.
pub fn build_from(
    profile: &Profile,
    templates: &crate::render::Templates,
) -> Result<View, RenderError> {
    let env_name = profile.metadata.environment.clone();
    let env = profile.environment();
    let s = &profile.services;
    let mount = profile.secrets.mount.as_str();
    let storage_class_name = profile.storage.as_ref().map(|st| st.class.name.clone());

    let release = Release {
        name: profile.metadata.name.clone(),
        environment: env_name.clone(),
        environment_label: profile.environment_label(),
        environment_annotation: profile.environment_key(),
        log_level: env
            .map(|e| e.log_level.as_str())
            .unwrap_or("INFO")
            .to_string(),
        labels: profile.metadata.labels.clone(),
    };

    let agent_namespaces: Vec<String> = {
        let mut v: Vec<String> = profile.agents.iter().map(|a| a.namespace.clone()).collect();
        v.sort();
        v.dedup();
        v
    };

    let volume = |p: Option<&Persistence>| {
        p.filter(|p| p.enabled).map(|p| VolumeView {
            size: p.size.raw().to_string(),
            storage_class: storage_class_name.clone(),
        })
    };

    let rabbitmq = s
        .rabbitmq
        .as_ref()
        .filter(|r| r.enabled && r.external.is_none())
        .map(|r| {
            let credentials = r.credentials.as_ref().and_then(|c| secret_key(c, mount));
            let erlang_cookie = r.erlang_cookie.as_ref().and_then(|c| secret_key(c, mount));
            let tls = r.tls.as_ref().and_then(|t| {
                Some(TlsView {
                    cert: secret_key(&t.cert, mount)?,
                    key: secret_key(&t.key, mount)?,
                    ca: t.ca.as_ref().and_then(|c| secret_key(c, mount)),
                })
            });
            RabbitMqView {
                namespace: MESSAGING.into(),
                image: r.image.clone().unwrap_or_else(|| RABBITMQ_IMAGE.into()),
                replicas: if r.clustering.enabled {
                    r.clustering.replicas
                } else {
                    1
                },
                clustered: r.clustering.enabled && r.clustering.replicas > 1,
                volume: volume(r.persistence.as_ref()),
                enabled_plugins: format!("[{}].", r.plugins.join(",")),
                plugins: r.plugins.clone(),
                default_user: broker_default_user(profile),
                secret_sources: sources(&[
                    credentials.as_ref(),
                    erlang_cookie.as_ref(),
                    tls.as_ref().map(|t| &t.cert),
                    tls.as_ref().map(|t| &t.key),
                    tls.as_ref().and_then(|t| t.ca.as_ref()),
                ]),
                no_restart: targets(&[credentials.as_ref(), erlang_cookie.as_ref()]),
                credentials,
                erlang_cookie,
                amqp_port: if tls.is_some() { 5671 } else { 5672 },
                tls,
                autoscaling: r.autoscaling.as_ref().map(hpa),
                client_namespaces: agent_namespaces.clone(),
            }
        });

    let postgres = s
        .postgres
        .as_ref()
        .filter(|p| p.enabled && p.external.is_none())
        .map(|p| {
            let password = secret_key(&p.password, mount);
            PostgresView {
                namespace: DATABASE.into(),
                image: p
                    .image
                    .clone()
                    .unwrap_or_else(|| format!("{POSTGRES_IMAGE_REPOSITORY}:{}", p.version)),
                database: p.database.clone(),
                user: p.user.clone(),
                volume: volume(p.persistence.as_ref()),
                no_restart: targets(&[password.as_ref()]),
                secret_sources: sources(&[password.as_ref()]),
                password,
                client_namespaces: agent_namespaces.clone(),
            }
        });

    let mongodb = s
        .mongodb
        .as_ref()
        .filter(|m| m.enabled && m.external.is_none())
        .map(|m| {
            use taskctl_core::profile::MongoArchitecture;
            let replicas = match m.architecture {
                MongoArchitecture::Replicaset => m.replicas.max(1),
                MongoArchitecture::Standalone => 1,
            };
            let replica_set = (m.architecture == MongoArchitecture::Replicaset).then(|| {
                let members: Vec<String> = (0..replicas)
                    .map(|i| {
                        format!("mongodb-{i}.mongodb-headless.{DATABASE}.svc.cluster.local:27017")
                    })
                    .collect();
                let config = serde_json::json!({
                    "_id": "rs0",
                    "members": members.iter().enumerate()
                        .map(|(i, host)| serde_json::json!({ "_id": i, "host": host }))
                        .collect::<Vec<_>>(),
                });
                ReplicaSetView {
                    name: "rs0".into(),
                    members,
                    config: config.to_string(),
                }
            });
            // A key file only makes sense between replica set members.
            let keyfile = m
                .keyfile
                .as_ref()
                .filter(|_| replica_set.is_some())
                .and_then(|c| secret_key(c, mount));
            let root_password = m.root_password.as_ref().and_then(|c| secret_key(c, mount));
            MongoDbView {
                namespace: DATABASE.into(),
                image: m.image.clone().unwrap_or_else(|| MONGODB_IMAGE.into()),
                replicas,
                replica_set,
                volume: volume(m.persistence.as_ref()),
                secret_sources: sources(&[keyfile.as_ref(), root_password.as_ref()]),
                keyfile,
                root_password,
                client_namespaces: agent_namespaces.clone(),
            }
        });

    let prometheus = s
        .prometheus
        .as_ref()
        .filter(|p| p.enabled && p.external.is_none())
        .map(|p| {
            let (scrape_configs, claimed_by) = scrape_views(p, &profile.agents);
            PrometheusView {
                namespace: MONITORING.into(),
                image: p.image.clone().unwrap_or_else(|| PROMETHEUS_IMAGE.into()),
                retention: p.retention.raw().to_string(),
                volume: volume(p.storage.as_ref()),
                scrape_configs: scrape_configs
                    .iter()
                    .filter(|c| !c.targets.is_empty())
                    .cloned()
                    .collect(),
                recording_rules: p
                    .recording_rules
                    .iter()
                    .map(|r| RecordingView {
                        record: r.record.clone(),
                        expr: r.expr.clone(),
                    })
                    .collect(),
                alerting_rules: p
                    .alerting_rules
                    .iter()
                    .map(|a| AlertView {
                        name: a.name.clone(),
                        expr: a.expr.clone(),
                        for_: a.for_.as_ref().map(|d| d.raw().to_string()),
                        labels: a.labels.clone(),
                        annotations: a.annotations.clone(),
                    })
                    .collect(),
                alertmanager: p.alertmanager.enabled.then(|| AlertmanagerView {
                    image: ALERTMANAGER_IMAGE.into(),
                    replicas: p.alertmanager.replicas.unwrap_or(1),
                }),
                dns_searches: agent_namespaces
                    .iter()
                    .map(|n| format!("{n}.svc.cluster.local"))
                    .collect(),
                agent_targets: profile
                    .agents
                    .iter()
                    .filter_map(|a| {
                        let port = metrics_port(a)?;
                        let claimed = claimed_by.iter().find(|(name, _)| *name == a.name);
                        Some(PortInNamespace {
                            name: a.name.clone(),
                            namespace: a.namespace.clone(),
                            port,
                            job: claimed
                                .map(|(_, c)| c.job_name.clone())
                                .unwrap_or_else(|| format!("taskctl-agent-pods/{}", a.name)),
                            scrape_interval: claimed.and_then(|(_, c)| c.scrape_interval.clone()),
                            metrics_path: claimed.and_then(|(_, c)| c.metrics_path.clone()),
                            keep: format!("{};{port}", a.name),
                        })
                    })
                    .collect(),
                rabbitmq_targets: rabbitmq
                    .iter()
                    .flat_map(|r| {
                        (0..r.replicas).map(|i| {
                            format!(
                                "rabbitmq-{i}.rabbitmq-headless.{MESSAGING}.svc.cluster.local:15692"
                            )
                        })
                    })
                    .collect(),
            }
        });

    let grafana = match s.grafana.as_ref().filter(|g| g.enabled) {
        None => None,
        Some(g) => {
            let mut dashboards = Vec::new();
            for d in &g.dashboards {
                let content = templates.read(&d.file)?;
                let key = Path::new(&d.file)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| d.file.clone());
                dashboards.push(DashboardView {
                    name: d.name.clone(),
                    file: d.file.clone(),
                    key,
                    content,
                });
            }
            // An external Prometheus is queried where it is; otherwise the
            // in-cluster one (which a profile without Prometheus lacks, and
            // Grafana then shows no data rather than failing to start).
            let prometheus_url = s
                .prometheus
                .as_ref()
                .filter(|p| p.enabled)
                .and_then(|p| p.external.as_ref())
                .map(|x| x.url.clone())
                .unwrap_or_else(|| {
                    format!("http://prometheus.{MONITORING}.svc.cluster.local:9090")
                });
            let admin_password = g.admin_password.as_ref().and_then(|c| secret_key(c, mount));
            Some(GrafanaView {
                namespace: MONITORING.into(),
                image: g.image.clone().unwrap_or_else(|| GRAFANA_IMAGE.into()),
                dashboards,
                prometheus_url,
                secret_sources: sources(&[admin_password.as_ref()]),
                admin_password,
            })
        }
    };

    let vault = s
        .vault
        .as_ref()
        .filter(|v| v.enabled && v.external.is_none())
        .map(|v| {
            let replicas = if v.ha.enabled {
                v.ha.replicas.max(1)
            } else {
                1
            };
            VaultView {
                namespace: VAULT.into(),
                image: v.image.clone().unwrap_or_else(|| VAULT_IMAGE.into()),
                replicas,
                ha: v.ha.enabled,
                peers: (0..replicas)
                    .map(|i| {
                        format!("http://vault-{i}.vault-internal.{VAULT}.svc.cluster.local:8200")
                    })
                    .collect(),
                volume: VolumeView {
                    size: "10Gi".into(),
                    storage_class: storage_class_name.clone(),
                },
                seal: profile
                    .target
                    .aws
                    .as_ref()
                    .filter(|_| {
                        profile.target.kind == TargetKind::Aws && profile.vault_in_cluster()
                    })
                    .map(|aws| AwsKmsSealView {
                        region: aws.region.clone(),
                        key: vault_unseal_key_alias(
                            &profile.metadata.name,
                            &profile.metadata.environment,
                        ),
                    }),
            }
        });

    let fluentd = s
        .logging
        .as_ref()
        .map(|l| &l.fluentd)
        .filter(|f| f.enabled)
        .map(|f| {
            use taskctl_core::profile::{FluentInputKind, FluentOutputKind};
            FluentdView {
                namespace: LOGGING.into(),
                image: f.image.clone().unwrap_or_else(|| FLUENTD_IMAGE.into()),
                inputs: f
                    .inputs
                    .iter()
                    .map(|i| FluentInputView {
                        kind: match i.kind {
                            FluentInputKind::Forward => "forward".into(),
                            FluentInputKind::Http => "http".into(),
                        },
                        port: i.port,
                    })
                    .collect(),
                filters: f
                    .filters
                    .iter()
                    .map(|x| FluentFilterView {
                        kind: "parser".into(),
                        format: enum_name(&x.format),
                    })
                    .collect(),
                outputs: f
                    .outputs
                    .iter()
                    .map(|o| FluentOutputView {
                        kind: enum_name(&o.kind),
                        host: o.host.clone(),
                        port: o.port,
                        elasticsearch: o.kind == FluentOutputKind::Elasticsearch,
                    })
                    .collect(),
                forward_port: f
                    .inputs
                    .iter()
                    .find(|i| i.kind == FluentInputKind::Forward)
                    .map(|i| i.port),
            }
        });

    // The in-cluster databases' ports, which the agents may reach.
    let database_ports: Vec<u16> = [
        mongodb.as_ref().map(|_| 27017),
        postgres.as_ref().map(|_| 5432),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut agents = Vec::new();
    for a in &profile.agents {
        agents.push(agent(
            a,
            mount,
            &release.log_level,
            profile,
            rabbitmq.as_ref(),
            &database_ports,
            fluentd.as_ref(),
        ));
    }

    let mut namespaces: Vec<NamespaceView> = Vec::new();
    let mut add_ns = |name: &str, component: &str| {
        if !namespaces.iter().any(|n| n.name == name) {
            namespaces.push(NamespaceView {
                name: name.into(),
                component: component.into(),
            });
        }
    };
    if rabbitmq.is_some() {
        add_ns(MESSAGING, "rabbitmq");
    }
    if mongodb.is_some() {
        add_ns(DATABASE, "mongodb");
    }
    if postgres.is_some() {
        add_ns(DATABASE, "postgres");
    }
    if prometheus.is_some() || grafana.is_some() {
        add_ns(MONITORING, "monitoring");
    }
    if vault.is_some() {
        add_ns(VAULT, "vault");
    }
    if fluentd.is_some() {
        add_ns(LOGGING, "fluentd");
    }
    for n in &agent_namespaces {
        add_ns(n, "agents");
    }

    let ceiling = env.map(|e| &e.resource_limits);
    let limit_range = LimitRangeView {
        max_cpu: ceiling
            .map(|c| c.cpu.raw().to_string())
            .unwrap_or_else(|| "8".into()),
        max_memory: ceiling
            .map(|c| c.memory.raw().to_string())
            .unwrap_or_else(|| "16Gi".into()),
        default_cpu: "500m".into(),
        default_memory: "512Mi".into(),
        default_request_cpu: "100m".into(),
        default_request_memory: "128Mi".into(),
    };

    let gpu_groups: Vec<String> = profile
        .compute
        .iter()
        .flat_map(|c| c.node_groups.iter())
        .filter(|g| g.role == NodeRole::Gpu || is_gpu_instance(&g.instance_type))
        .map(|g| g.name.clone())
        .collect();
    let gpu = (!gpu_groups.is_empty()).then(|| GpuView {
        device_plugin_image: DEVICE_PLUGIN_IMAGE.into(),
        node_groups: gpu_groups.clone(),
        node_group: match gpu_groups.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        },
    });
    if let Some(a) = profile
        .agents
        .iter()
        .find(|a| a.gpus.is_some_and(|n| n > 0))
        && gpu.is_none()
    {
        return Err(RenderError::Profile(format!(
            "agent `{}` asks for GPUs but the profile has no GPU node group",
            a.name
        )));
    }

    Ok(View {
        release,
        namespaces,
        storage_class: profile.storage.as_ref().map(|st| StorageClassView {
            name: st.class.name.clone(),
            provisioner: st.class.provisioner.clone(),
            volume_type: enum_name(&st.class.volume_type),
            default: st.class.default,
            encrypted: st.class.encrypted,
            reclaim_policy: enum_name(&st.class.reclaim_policy),
            volume_binding_mode: enum_name(&st.class.volume_binding_mode),
        }),
        limit_range,
        quota: quota(profile, &agent_namespaces)?,
        rabbitmq,
        mongodb,
        postgres,
        prometheus,
        grafana,
        vault,
        fluentd,
        agents,
        gpu,
    })
}

fn agent(
    a: &Agent,
    mount: &str,
    log_level: &str,
    profile: &Profile,
    rabbitmq: Option<&RabbitMqView>,
    database_ports: &[u16],
    fluentd: Option<&FluentdView>,
) -> AgentView {
    let mut env: Vec<EnvView> = a
        .env
        .iter()
        .map(|e| EnvView {
            name: e.name.clone(),
            value: e.value.clone(),
            config_map: e.config_map.as_ref().map(|k| KeyRefView {
                name: k.name.clone(),
                key: k.key.clone(),
            }),
            secret: e.secret.as_ref().and_then(|s| secret_key(s, mount)),
        })
        .collect();
    if !env.iter().any(|e| e.name == "LOG_LEVEL") {
        env.push(EnvView {
            name: "LOG_LEVEL".into(),
            value: Some(log_level.into()),
            config_map: None,
            secret: None,
        });
    }
    let secret_refs: Vec<&SecretKey> = env.iter().filter_map(|e| e.secret.as_ref()).collect();
    let secret_sources = sources(&secret_refs.iter().map(|s| Some(*s)).collect::<Vec<_>>());

    let s = &profile.services;
    let mut egress = Vec::new();
    let mut external = |x: Option<&External>, default_port: u16| {
        if let Some(x) = x {
            egress.push(EgressView {
                namespace: None,
                port: url_port(&x.url).unwrap_or(default_port),
            });
        }
    };
    external(s.rabbitmq.as_ref().and_then(|r| r.external.as_ref()), 5672);
    external(s.mongodb.as_ref().and_then(|m| m.external.as_ref()), 27017);
    external(s.postgres.as_ref().and_then(|p| p.external.as_ref()), 5432);
    if rabbitmq.is_some() {
        egress.push(EgressView {
            namespace: Some(MESSAGING.into()),
            port: 5672,
        });
    }
    for port in database_ports {
        egress.push(EgressView {
            namespace: Some(DATABASE.into()),
            port: *port,
        });
    }
    if let Some(port) = fluentd.and_then(|f| f.forward_port) {
        egress.push(EgressView {
            namespace: Some(LOGGING.into()),
            port,
        });
    }

    AgentView {
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        image: a.image.clone(),
        replicas: a.replicas,
        requests: ResourcesView {
            cpu: a.resources.requests.cpu.raw().to_string(),
            memory: a.resources.requests.memory.raw().to_string(),
        },
        limits: ResourcesView {
            cpu: a.resources.limits.cpu.raw().to_string(),
            memory: a.resources.limits.memory.raw().to_string(),
        },
        gpus: a.gpus.filter(|n| *n > 0),
        env,
        config_map: a.config_map.as_ref().map(|c| ConfigMapView {
            name: c.name.clone(),
            data: c.data.clone(),
        }),
        ports: a
            .ports
            .iter()
            .map(|p| PortView {
                name: p.name.clone(),
                port: p.port,
            })
            .collect(),
        service: a.service.as_ref().map(|svc| ServiceView {
            name: svc.name.clone(),
            kind: match svc.kind {
                ServiceType::ClusterIP => "ClusterIP".into(),
                ServiceType::NodePort => "NodePort".into(),
                ServiceType::LoadBalancer => "LoadBalancer".into(),
            },
            ports: svc
                .ports
                .iter()
                .map(|p| ServicePortView {
                    name: a
                        .ports
                        .iter()
                        .find(|cp| cp.port == p.target_port)
                        .map(|cp| cp.name.clone())
                        .unwrap_or_else(|| format!("port-{}", p.port)),
                    port: p.port,
                    target_port: p.target_port,
                })
                .collect(),
        }),
        metrics_port: metrics_port(a),
        liveness: a.probes.liveness.as_ref().map(probe),
        readiness: a.probes.readiness.as_ref().map(probe),
        hpa: a
            .scaling
            .as_ref()
            .and_then(|sc| sc.horizontal.as_ref())
            .map(hpa),
        secret_sources,
        egress,
    }
}

fn probe(p: &taskctl_core::profile::Probe) -> ProbeView {
    ProbeView {
        path: p.path.clone(),
        port: p.port,
        initial_delay_seconds: p.initial_delay_seconds,
        period_seconds: p.period_seconds,
        timeout_seconds: p.timeout_seconds,
        failure_threshold: p.failure_threshold,
    }
}

/// The profile's scrape configs, less the targets that name an agent's
/// metrics Service (`task-executor:9090`, `NAME.NAMESPACE.svc…:PORT`): a
/// Service reaches one pod per scrape, so its counters would jump from pod
/// to pod (rate() reads each jump as a reset) and add to the per-pod job's.
/// Those agents' pods are scraped once, by the per-pod job, under the
/// profile's job name, interval and path; a job left with no target is
/// dropped. Also returns which agent each such job claimed.
fn scrape_views(
    p: &taskctl_core::profile::Prometheus,
    agents: &[Agent],
) -> (Vec<ScrapeView>, Vec<(String, ScrapeView)>) {
    let service_of = |target: &str| -> Option<String> {
        let (host, port) = target.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        agents
            .iter()
            .find(|a| {
                metrics_port(a) == Some(port)
                    && [
                        a.name.clone(),
                        format!("{}.{}", a.name, a.namespace),
                        format!("{}.{}.svc", a.name, a.namespace),
                        format!("{}.{}.svc.cluster.local", a.name, a.namespace),
                    ]
                    .iter()
                    .any(|h| h == host)
            })
            .map(|a| a.name.clone())
    };
    let mut views = Vec::new();
    let mut claimed: Vec<(String, ScrapeView)> = Vec::new();
    for c in &p.scrape_configs {
        let mut view = ScrapeView {
            job_name: c.job_name.clone(),
            scrape_interval: c.scrape_interval.as_ref().map(|d| d.raw().to_string()),
            metrics_path: c.metrics_path.clone(),
            targets: Vec::new(),
        };
        for target in c.static_configs.iter().flat_map(|sc| sc.targets.iter()) {
            match service_of(target) {
                Some(agent) if !claimed.iter().any(|(a, _)| *a == agent) => {
                    claimed.push((agent, view.clone()));
                }
                Some(_) => {}
                None => view.targets.push(target.clone()),
            }
        }
        views.push(view);
    }
    // Job names are unique: a job that keeps static targets or names more
    // than one agent's Service gives each agent's pods `JOB/AGENT`.
    let shared: Vec<String> = claimed
        .iter()
        .filter(|(_, c)| {
            claimed
                .iter()
                .filter(|(_, o)| o.job_name == c.job_name)
                .count()
                > 1
                || views
                    .iter()
                    .any(|v| v.job_name == c.job_name && !v.targets.is_empty())
        })
        .map(|(a, _)| a.clone())
        .collect();
    for (agent, view) in &mut claimed {
        if shared.contains(agent) {
            view.job_name = format!("{}/{agent}", view.job_name);
        }
    }
    (views, claimed)
}

fn metrics_port(a: &Agent) -> Option<u16> {
    a.ports.iter().find(|p| p.name == "metrics").map(|p| p.port)
}

fn hpa(h: &taskctl_core::profile::HorizontalScaling) -> HpaView {
    HpaView {
        min_replicas: h.min_replicas,
        max_replicas: h.max_replicas,
        metrics: h
            .metrics
            .iter()
            .map(|m| HpaMetric {
                resource: match m.resource {
                    ScaledResource::Cpu => "cpu".into(),
                    ScaledResource::Memory => "memory".into(),
                },
                average_utilization: m.average_utilization,
            })
            .collect(),
    }
}

/// The Kubernetes Secret key a profile secret reference becomes (see the
/// module docs). `None` when the reference is malformed, which validation
/// has already reported.
pub fn secret_key(r: &Checked<SecretRef>, mount: &str) -> Option<SecretKey> {
    let (secret, key) = match r.get()? {
        SecretRef::Vault { path, key, .. } => {
            let path = path
                .strip_prefix(mount)
                .and_then(|p| p.strip_prefix('/'))
                .unwrap_or(path);
            (format!("taskctl-{}", dns_label(path)), secret_data_key(key))
        }
        SecretRef::Env { name } => ("taskctl-env".to_string(), secret_data_key(name)),
    };
    Some(SecretKey {
        secret,
        key,
        source: r.raw().trim().to_string(),
    })
}

/// `a/b_c` → `a-b-c`: lowercase alphanumerics and dashes.
fn dns_label(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    mapped.trim_matches('-').to_string()
}

/// Secret data keys allow `[-._a-zA-Z0-9]`.
fn secret_data_key(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `secret/key=vault:…` pairs for the `taskctl.dev/secret-sources` annotation.
/// `secret/key` pairs (sorted, deduplicated) for the
/// `taskctl.dev/secret-no-restart` annotation.
fn targets(keys: &[Option<&SecretKey>]) -> String {
    let mut v: Vec<String> = keys
        .iter()
        .flatten()
        .map(|k| format!("{}/{}", k.secret, k.key))
        .collect();
    v.sort();
    v.dedup();
    v.join(",")
}

fn sources(keys: &[Option<&SecretKey>]) -> String {
    let mut v: Vec<String> = keys
        .iter()
        .flatten()
        .map(|k| format!("{}/{}={}", k.secret, k.key, k.source))
        .collect();
    v.sort();
    v.dedup();
    v.join(",")
}

/// The in-cluster RabbitMQ's own user (`RABBITMQ_DEFAULT_USER`, made at
/// its first boot with the profile's `credentials`, an administrator): the
/// user of the first agent `broker_url` that names one, else `taskctl`.
pub fn broker_default_user(profile: &Profile) -> String {
    broker_user(&profile.agents).unwrap_or_else(|| "taskctl".into())
}

/// The user of the first agent `broker_url` that names one.
fn broker_user(agents: &[Agent]) -> Option<String> {
    agents
        .iter()
        .filter_map(|a| a.config_map.as_ref())
        .flat_map(|c| c.data.values())
        .filter_map(|url| {
            let rest = url.split_once("://")?.1;
            let (userinfo, _) = rest.split_once('@')?;
            let user = userinfo.split(':').next()?;
            (!user.is_empty()).then(|| user.to_string())
        })
        .next()
}

/// The port of `scheme://[user@]host[:port][/…]`.
fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit('@').next()?;
    match hostport.rsplit_once(':') {
        Some((_, port)) => port.parse().ok(),
        None => match scheme {
            "amqp" => Some(5672),
            "amqps" => Some(5671),
            "http" => Some(80),
            "https" => Some(443),
            "mongodb" => Some(27017),
            "postgres" | "postgresql" => Some(5432),
            _ => None,
        },
    }
}

/// The serde name of a unit enum variant (`gp3`, `Delete`, `WaitForFirstConsumer`).
fn enum_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// vCPUs and GiB of memory of an EC2 instance type, for the families the
/// shipped profiles use. Memory per vCPU is the family's ratio.
pub fn instance_capacity(instance_type: &str) -> Option<(u32, u32)> {
    let (family, size) = instance_type.split_once('.')?;
    let vcpus = match size {
        "large" => 2,
        "xlarge" => 4,
        other => {
            let n: u32 = other.strip_suffix("xlarge")?.parse().ok()?;
            n * 4
        }
    };
    let gib_per_vcpu = match family.chars().next()? {
        'c' => 2,
        'm' => 4,
        'r' => 8,
        // g4dn and g5 carry 4 GiB per vCPU from xlarge up.
        'g' => 4,
        _ => return None,
    };
    Some((vcpus, vcpus * gib_per_vcpu))
}

/// The quota shares of the profile applied to the worker node groups'
/// capacity at their desired size (GPU nodes are excluded: they are tainted
/// and reserved for GPU work).
fn quota(profile: &Profile, namespaces: &[String]) -> Result<Option<QuotaView>, RenderError> {
    let Some(compute) = profile.compute.as_ref() else {
        return Ok(None);
    };
    let Some(q) = compute.resource_quotas.as_ref() else {
        return Ok(None);
    };
    let (mut cpu, mut mem, mut disk) = (0u64, 0u64, 0u64);
    let mut basis = Vec::new();
    for g in compute
        .node_groups
        .iter()
        .filter(|g| g.role != NodeRole::Gpu && !is_gpu_instance(&g.instance_type))
    {
        let (c, m) = instance_capacity(&g.instance_type).ok_or_else(|| {
            RenderError::Profile(format!(
                "node group `{}`: the capacity of instance type `{}` is unknown, so its resource quota cannot be computed",
                g.name, g.instance_type
            ))
        })?;
        let n = u64::from(g.scaling.desired);
        cpu += n * u64::from(c);
        mem += n * u64::from(m);
        disk += n * u64::from(g.disk.size_gib);
        basis.push(format!(
            "{}x{} ({c} vCPU, {m}Gi, {}Gi disk)",
            n, g.instance_type, g.disk.size_gib
        ));
    }
    if cpu == 0 {
        return Ok(None);
    }
    let share = |p: &Checked<taskctl_core::profile::value::Percent>| p.get().map(|p| p.0);
    let millis = |pct: Option<f64>| pct.map(|p| format!("{}m", (cpu as f64 * 10.0 * p).floor()));
    let mib = |total_gib: u64, pct: Option<f64>| {
        pct.map(|p| format!("{}Mi", (total_gib as f64 * 1024.0 * p / 100.0).floor()))
    };
    let or_err = |v: Option<String>, what: &str| {
        v.ok_or_else(|| RenderError::Profile(format!("resource quota `{what}` is malformed")))
    };
    Ok(Some(QuotaView {
        namespaces: namespaces.to_vec(),
        requests_cpu: or_err(millis(share(&q.cpu.request)), "cpu.request")?,
        limits_cpu: or_err(millis(share(&q.cpu.limit)), "cpu.limit")?,
        requests_memory: or_err(mib(mem, share(&q.memory.request)), "memory.request")?,
        limits_memory: or_err(mib(mem, share(&q.memory.limit)), "memory.limit")?,
        requests_ephemeral_storage: q
            .storage
            .as_ref()
            .and_then(|s| mib(disk, share(&s.request))),
        limits_ephemeral_storage: q.storage.as_ref().and_then(|s| mib(disk, share(&s.limit))),
        basis: basis.join(", "),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_capacity_of_the_shipped_types() {
        assert_eq!(instance_capacity("c6i.4xlarge"), Some((16, 32)));
        assert_eq!(instance_capacity("c6i.xlarge"), Some((4, 8)));
        assert_eq!(instance_capacity("g5.xlarge"), Some((4, 16)));
        assert_eq!(instance_capacity("x9.huge"), None);
    }

    #[test]
    fn secret_references_become_secret_keys() {
        let r = Checked::<SecretRef>::new("vault:secret/messaging#password");
        let k = secret_key(&r, "secret").unwrap();
        assert_eq!(
            (k.secret.as_str(), k.key.as_str()),
            ("taskctl-messaging", "password")
        );
        let e = Checked::<SecretRef>::new("env:TASKCTL_AMQP_CREDENTIALS");
        let k = secret_key(&e, "secret").unwrap();
        assert_eq!(k.secret, "taskctl-env");
        assert_eq!(k.key, "TASKCTL_AMQP_CREDENTIALS");
    }

    #[test]
    fn url_ports() {
        assert_eq!(url_port("amqp://127.0.0.1:5672/%2f"), Some(5672));
        assert_eq!(url_port("amqp://u@rabbit/%2f"), Some(5672));
        assert_eq!(url_port("https://vault"), Some(443));
    }
}
