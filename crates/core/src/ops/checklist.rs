//! Seed `001`'s deployment checklist, judged: each item passes, fails or is
//! unknown, with the reason and the evidence it was judged on.
//!
//! The evidence is the profile (what taskctl deploys), the environment's
//! audit log (what was actually done: rollbacks, backup verifications) and,
//! where the target can look, the running environment ([`Probe`]s, merged
//! by [`with_live`]). A fail is something a user can change; unknown is
//! something taskctl cannot see (an image scanner or a load test run
//! elsewhere).

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::profile::value::{Checked, SecretRef};
use crate::profile::{Profile, TargetKind};
use crate::state::AuditEntry;

/// How recent a rollback drill or a verified backup must be to count.
pub const DRILL_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Unknown,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Unknown => "unknown",
        }
    }
}

/// One item of the checklist.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub id: &'static str,
    /// The seed's wording.
    pub title: &'static str,
    pub verdict: Verdict,
    pub reason: String,
    pub evidence: Vec<String>,
}

fn item(
    id: &'static str,
    title: &'static str,
    verdict: Verdict,
    reason: impl Into<String>,
    evidence: Vec<String>,
) -> Item {
    Item {
        id,
        title,
        verdict,
        reason: reason.into(),
        evidence,
    }
}

/// Judges every item from `profile` and the environment's `audit` log at
/// time `now`.
pub fn judge(profile: &Profile, audit: &[AuditEntry], now: SystemTime) -> Vec<Item> {
    vec![
        secrets_in_vault(profile),
        database_tls(profile),
        authenticated_endpoints(profile),
        health_checks(profile),
        monitoring(profile),
        backups(profile, audit, now),
        rollback(profile, audit, now),
        image_scanning(profile),
        network(profile),
        item(
            "load_testing",
            "Load testing has been performed to validate scaling capabilities",
            Verdict::Unknown,
            "taskctl records no load test of the environment",
            vec![],
        ),
    ]
}

/// One thing taskctl looked at in the running environment, for the item
/// `item` (an [`Item::id`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    pub item: String,
    /// `RabbitMQ 127.0.0.1:5671`, `Prometheus HTTP API`.
    pub what: String,
    /// What it answered, for people.
    pub seen: String,
    /// Whether it is as the item requires; `None` when it could not be
    /// judged (the service did not answer).
    pub holds: Option<bool>,
}

/// Adds what the running environment showed to the items judged from the
/// profile and the audit log: each probe is evidence (`now: …`), and one
/// that does not hold fails its item, whatever the profile promised.
pub fn with_live(mut items: Vec<Item>, probes: &[Probe]) -> Vec<Item> {
    for item in &mut items {
        let mine: Vec<&Probe> = probes.iter().filter(|p| p.item == item.id).collect();
        for p in &mine {
            let mark = match p.holds {
                Some(true) => "",
                Some(false) => " (does not hold)",
                None => " (could not be judged)",
            };
            item.evidence
                .push(format!("now: {}: {}{mark}", p.what, p.seen));
        }
        let failed: Vec<String> = mine
            .iter()
            .filter(|p| p.holds == Some(false))
            .map(|p| format!("{}: {}", p.what, p.seen))
            .collect();
        if failed.is_empty() {
            continue;
        }
        let now = format!("now, {}", failed.join("; "));
        item.reason = match item.verdict {
            Verdict::Fail => format!("{}; {now}", item.reason),
            _ => now,
        };
        item.verdict = Verdict::Fail;
    }
    items
}

fn secrets_in_vault(profile: &Profile) -> Item {
    let refs = crate::secrets::references(profile);
    let mut vault = Vec::new();
    let mut elsewhere = Vec::new();
    for r in &refs {
        match r {
            SecretRef::Vault { path, .. } => vault.push(path.clone()),
            SecretRef::Env { .. } => elsewhere.push(r.to_string()),
        }
    }
    vault.sort();
    vault.dedup();
    let title = "All secrets are stored in a secure vault and not in configuration files";
    let mut evidence: Vec<String> = vault.iter().map(|p| format!("vault: {p}")).collect();
    evidence.extend(
        elsewhere
            .iter()
            .map(|r| format!("{r}: read from taskctl's environment")),
    );
    if !elsewhere.is_empty() {
        return item(
            "secrets_in_vault",
            title,
            Verdict::Fail,
            format!(
                "{} secret(s) come from environment variables, not a vault",
                elsewhere.len()
            ),
            evidence,
        );
    }
    if vault.is_empty() {
        return item(
            "secrets_in_vault",
            title,
            Verdict::Unknown,
            "the profile references no secret",
            evidence,
        );
    }
    item(
        "secrets_in_vault",
        title,
        Verdict::Pass,
        format!(
            "every secret reference is in Vault ({} path(s)); literal credentials are refused by validation",
            vault.len()
        ),
        evidence,
    )
}

fn from_vault(r: Option<&Checked<SecretRef>>) -> bool {
    matches!(r.and_then(|c| c.get()), Some(SecretRef::Vault { .. }))
}

fn database_tls(profile: &Profile) -> Item {
    let s = &profile.services;
    let mut evidence = Vec::new();
    let mut missing = Vec::new();
    if let Some(mq) = s.rabbitmq.as_ref().filter(|m| m.enabled) {
        match &mq.external {
            Some(ext) => {
                let tls = ext.url.starts_with("amqps://");
                evidence.push(format!(
                    "RabbitMQ (external): {}",
                    if tls { "amqps://" } else { "plain amqp://" }
                ));
                if !tls {
                    missing.push("RabbitMQ (external URL is not amqps://)");
                }
            }
            None => {
                let tls = mq.tls.is_some();
                let auth = from_vault(mq.credentials.as_ref());
                evidence.push(format!(
                    "RabbitMQ: {}; agents' credential {}",
                    if tls {
                        "AMQP over TLS only (5671)"
                    } else {
                        "plain AMQP (no services.rabbitmq.tls)"
                    },
                    if auth {
                        "generated in Vault"
                    } else {
                        "not from Vault"
                    }
                ));
                if !tls {
                    missing.push("RabbitMQ (no TLS listener)");
                }
                if !auth {
                    missing.push("RabbitMQ (credential not from Vault)");
                }
            }
        }
    }
    if let Some(pg) = s.postgres.as_ref().filter(|p| p.enabled) {
        let auth = from_vault(Some(&pg.password));
        evidence.push(format!(
            "PostgreSQL: no TLS listener (taskctl does not configure PostgreSQL TLS); password {}",
            if auth { "from Vault" } else { "not from Vault" }
        ));
        missing.push("PostgreSQL (no TLS)");
    }
    if let Some(mongo) = s.mongodb.as_ref().filter(|m| m.enabled) {
        let auth = from_vault(mongo.root_password.as_ref());
        evidence.push(format!(
            "MongoDB: no TLS listener (taskctl does not configure MongoDB TLS); root password {}",
            if auth { "from Vault" } else { "not from Vault" }
        ));
        missing.push("MongoDB (no TLS)");
    }
    let title = "Database connections use TLS and strong authentication";
    if evidence.is_empty() {
        return item(
            "database_tls",
            title,
            Verdict::Unknown,
            "the profile runs no broker or database",
            evidence,
        );
    }
    if missing.is_empty() {
        item(
            "database_tls",
            title,
            Verdict::Pass,
            "every broker and database connection is TLS with a credential from Vault",
            evidence,
        )
    } else {
        item(
            "database_tls",
            title,
            Verdict::Fail,
            format!("not TLS with a Vault credential: {}", missing.join(", ")),
            evidence,
        )
    }
}

fn authenticated_endpoints(profile: &Profile) -> Item {
    let s = &profile.services;
    let mut open = Vec::new();
    let mut evidence = vec![
        "agents: /health, /ready and /metrics answer without credentials (probes and Prometheus read them); tasks run only when signed".to_string(),
    ];
    if s.rabbitmq.as_ref().is_some_and(|m| m.enabled) {
        evidence.push("RabbitMQ management API: user and password".into());
    }
    if s.vault.as_ref().is_some_and(|v| v.enabled) {
        evidence.push("Vault: token, AppRole or Kubernetes auth".into());
    }
    if let Some(p) = s.prometheus.as_ref().filter(|p| p.enabled) {
        evidence.push("Prometheus HTTP API: no authentication".into());
        open.push("Prometheus");
        if p.alertmanager.enabled {
            evidence.push("Alertmanager HTTP API: no authentication".into());
            open.push("Alertmanager");
        }
    }
    if s.grafana.as_ref().is_some_and(|g| g.enabled) {
        evidence.push("Grafana: admin password from the profile".into());
    }
    let title = "API endpoints are secured with proper authentication";
    if open.is_empty() {
        item(
            "authenticated_endpoints",
            title,
            Verdict::Pass,
            "every API taskctl runs asks for credentials (the agents' probes excepted, by design)",
            evidence,
        )
    } else {
        item(
            "authenticated_endpoints",
            title,
            Verdict::Fail,
            format!(
                "{} answer(s) without credentials to anyone who reaches them (loopback or in-cluster only)",
                open.join(" and ")
            ),
            evidence,
        )
    }
}

/// Pass where taskctl pushes the agents' images to ECR with a scan gate
/// (target aws, `build: {}`, `target.aws.image_scan`); otherwise unknown:
/// images taskctl does not push may be scanned elsewhere.
fn image_scanning(profile: &Profile) -> Item {
    const TITLE: &str = "Security scanning of container images is implemented";
    let gate = profile
        .target
        .aws
        .as_ref()
        .filter(|_| profile.target.kind == crate::profile::model::TargetKind::Aws)
        .and_then(|a| a.image_scan.as_ref());
    let pushed: Vec<&str> = profile
        .agents
        .iter()
        .filter(|a| a.packs_static_agent())
        .map(|a| a.name.as_str())
        .collect();
    match gate {
        Some(scan) if !pushed.is_empty() => item(
            "image_scanning",
            TITLE,
            Verdict::Pass,
            format!(
                "ECR scans every agent image taskctl pushes, and a finding at or above {} stops the deploy before the cluster runs it",
                scan.fail_on.ecr_name().to_ascii_lowercase()
            ),
            pushed
                .iter()
                .map(|a| {
                    format!(
                        "agent {a}: pushed to ECR (scan on push), target.aws.image_scan.fail_on"
                    )
                })
                .collect(),
        ),
        _ => item(
            "image_scanning",
            TITLE,
            Verdict::Unknown,
            "taskctl scans only the agent images it pushes to ECR on target aws with `target.aws.image_scan`; it cannot tell whether these images were scanned elsewhere",
            vec![],
        ),
    }
}

fn health_checks(profile: &Profile) -> Item {
    let mut evidence = Vec::new();
    let mut missing = Vec::new();
    for a in &profile.agents {
        match (&a.probes.readiness, &a.probes.liveness) {
            (Some(r), Some(l)) => evidence.push(format!(
                "agent {}: readiness {} on {}, liveness {} on {}",
                a.name, r.path, r.port, l.path, l.port
            )),
            (r, l) => {
                if r.is_none() {
                    missing.push(format!("agent {}: no readiness probe", a.name));
                }
                if l.is_none() {
                    missing.push(format!("agent {}: no liveness probe", a.name));
                }
            }
        }
    }
    for c in &profile.components {
        match &c.probes.readiness {
            Some(r) => evidence.push(format!(
                "component {}: readiness {} on {}",
                c.name, r.path, r.port
            )),
            None => missing.push(format!("component {}: no readiness probe", c.name)),
        }
    }
    evidence.push(
        "every service taskctl runs gets a health check (a Docker HEALTHCHECK, or Kubernetes probes from templates/)"
            .into(),
    );
    let title = "Health check endpoints are configured";
    if missing.is_empty() {
        item(
            "health_checks",
            title,
            Verdict::Pass,
            "every agent has readiness and liveness probes",
            evidence,
        )
    } else {
        evidence.extend(missing.iter().cloned());
        item(
            "health_checks",
            title,
            Verdict::Fail,
            missing.join("; "),
            evidence,
        )
    }
}

fn monitoring(profile: &Profile) -> Item {
    let title = "Monitoring and alerting are set up";
    let Some(p) = profile.services.prometheus.as_ref().filter(|p| p.enabled) else {
        return item(
            "monitoring_and_alerting",
            title,
            Verdict::Fail,
            "services.prometheus is not enabled",
            vec![],
        );
    };
    let mut evidence = vec![format!(
        "Prometheus: {} alerting rule(s): {}",
        p.alerting_rules.len(),
        p.alerting_rules
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )];
    let receiver = p.alertmanager.enabled && p.alertmanager.webhook_url.is_some();
    evidence.push(
        match (&p.alertmanager.enabled, &p.alertmanager.webhook_url) {
            (true, Some(_)) => "Alertmanager: a webhook receiver".into(),
            (true, None) => "Alertmanager: no receiver (alerts go nowhere)".into(),
            (false, _) => "Alertmanager: not enabled".into(),
        },
    );
    if p.alerting_rules.is_empty() || !receiver {
        let mut why = Vec::new();
        if p.alerting_rules.is_empty() {
            why.push("no alerting rule");
        }
        if !receiver {
            why.push("no Alertmanager receiver");
        }
        return item(
            "monitoring_and_alerting",
            title,
            Verdict::Fail,
            why.join(" and "),
            evidence,
        );
    }
    item(
        "monitoring_and_alerting",
        title,
        Verdict::Pass,
        "metrics scraped, alerting rules loaded, alerts delivered to a receiver",
        evidence,
    )
}

/// The newest audit entry `wanted` picks, with its time.
fn latest(
    audit: &[AuditEntry],
    wanted: impl Fn(&AuditEntry) -> bool,
) -> Option<(SystemTime, &AuditEntry)> {
    audit
        .iter()
        .filter(|e| wanted(e))
        .filter_map(|e| Some((humantime::parse_rfc3339_weak(&e.at).ok()?, e)))
        .max_by_key(|(t, _)| *t)
}

fn age(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    humantime::format_duration(Duration::from_secs(secs - secs % 60)).to_string()
}

fn backups(profile: &Profile, audit: &[AuditEntry], now: SystemTime) -> Item {
    let title = "Backup and restore procedures are tested";
    let Some(backup) = profile
        .services
        .postgres
        .as_ref()
        .filter(|p| p.enabled)
        .and_then(|p| p.backup.as_ref())
    else {
        return item(
            "backup_and_restore",
            title,
            Verdict::Fail,
            "no backup is configured (services.postgres.backup)",
            vec![],
        );
    };
    let mut evidence = vec![format!(
        "PostgreSQL: pg_dump at `{}` (UTC), kept {}",
        backup.schedule, backup.retention
    )];
    // A rollback's backup_verification restores the latest dump into a
    // scratch database before anything changes; its audit entry says so.
    let verified = latest(audit, |e| {
        e.action == "rollback" && e.detail.contains("; backups: ")
    });
    match verified {
        Some((t, e)) if now.duration_since(t).unwrap_or_default() <= DRILL_MAX_AGE => {
            evidence.push(format!(
                "last restore verified {} ago ({}): {}",
                age(now, t),
                e.at,
                e.detail.split("; backups: ").nth(1).unwrap_or_default()
            ));
            item(
                "backup_and_restore",
                title,
                Verdict::Pass,
                "backups are made and a restore was verified in the last 30 days",
                evidence,
            )
        }
        Some((t, e)) => {
            evidence.push(format!(
                "last restore verified {} ago ({})",
                age(now, t),
                e.at
            ));
            item(
                "backup_and_restore",
                title,
                Verdict::Fail,
                "the last verified restore is older than 30 days; a manual `taskctl rollback` verifies one (backup_verification)",
                evidence,
            )
        }
        None => item(
            "backup_and_restore",
            title,
            Verdict::Fail,
            "no restore was ever verified in this environment; a manual `taskctl rollback` verifies one (backup_verification)",
            evidence,
        ),
    }
}

fn rollback(profile: &Profile, audit: &[AuditEntry], now: SystemTime) -> Item {
    let title = "Deployment rollback procedures are documented and tested";
    let rb = &profile.rollback;
    let mut evidence = vec![format!(
        "automatic rollback: {} ({} condition(s)); manual: steps {}, prerequisites {}",
        if rb.automatic.enabled { "on" } else { "off" },
        rb.automatic.conditions.len(),
        rb.manual
            .steps
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        rb.manual.prerequisites.join(", ")
    )];
    let last = latest(audit, |e| {
        (e.action == "rollback" && e.detail.starts_with("rolled back"))
            || e.action == "automatic_rollback"
    });
    match last {
        Some((t, e)) if now.duration_since(t).unwrap_or_default() <= DRILL_MAX_AGE => {
            evidence.push(format!(
                "last rollback {} ago ({}, {}): {}",
                age(now, t),
                e.at,
                e.action,
                e.detail
            ));
            item(
                "rollback",
                title,
                Verdict::Pass,
                "rollback is configured and one succeeded in the last 30 days",
                evidence,
            )
        }
        Some((t, e)) => {
            evidence.push(format!("last rollback {} ago ({})", age(now, t), e.at));
            item(
                "rollback",
                title,
                Verdict::Fail,
                "the last rollback is older than 30 days; rehearse one (`taskctl rollback`)",
                evidence,
            )
        }
        None => item(
            "rollback",
            title,
            Verdict::Fail,
            "no rollback was ever done in this environment; rehearse one (`taskctl rollback`)",
            evidence,
        ),
    }
}

fn network(profile: &Profile) -> Item {
    let title = "Network policies or security groups are properly configured";
    match profile.target.kind {
        TargetKind::Docker => item(
            "network_policies",
            title,
            Verdict::Pass,
            "every port is published on 127.0.0.1 only, and the services share the environment's own bridge network",
            vec![
                "ports: 127.0.0.1 only (the docker target publishes nothing else)".into(),
                "network: one user-defined bridge per environment".into(),
            ],
        ),
        TargetKind::Kubernetes => item(
            "network_policies",
            title,
            Verdict::Pass,
            "a default-deny NetworkPolicy and explicit allow rules in every namespace taskctl creates (enforced only by a CNI that enforces policies)",
            vec!["templates/: default-deny plus allow rules per namespace".into()],
        ),
        TargetKind::Aws => item(
            "network_policies",
            title,
            Verdict::Fail,
            "the EKS cluster taskctl makes has security groups but no NetworkPolicy enforcement (the VPC CNI's policy agent is not turned on): the rendered policies are not enforced",
            vec![
                "security groups: cluster and node groups (crates/aws)".into(),
                "NetworkPolicies: rendered, not enforced".into(),
            ],
        ),
    }
}

#[cfg(test)]
mod live_tests {
    use super::*;

    fn probe(item: &str, holds: Option<bool>) -> Probe {
        Probe {
            item: item.into(),
            what: "RabbitMQ 127.0.0.1:5671".into(),
            seen: "no login over TLS: connection refused".into(),
            holds,
        }
    }

    #[test]
    fn a_probe_that_does_not_hold_fails_its_item_and_every_probe_is_evidence() {
        let items = vec![
            item("database_tls", "t", Verdict::Pass, "all TLS", vec![]),
            item(
                "monitoring_and_alerting",
                "m",
                Verdict::Fail,
                "no receiver",
                vec![],
            ),
            item("load_testing", "l", Verdict::Unknown, "none", vec![]),
        ];
        let judged = with_live(
            items,
            &[
                probe("database_tls", Some(false)),
                probe("monitoring_and_alerting", Some(false)),
                probe("load_testing", None),
            ],
        );
        assert_eq!(judged[0].verdict, Verdict::Fail);
        assert_eq!(
            judged[0].reason,
            "now, RabbitMQ 127.0.0.1:5671: no login over TLS: connection refused"
        );
        assert_eq!(
            judged[0].evidence,
            ["now: RabbitMQ 127.0.0.1:5671: no login over TLS: connection refused (does not hold)"]
        );
        assert!(judged[1].reason.starts_with("no receiver; now, "));
        // Not judged: evidence only, the verdict stays.
        assert_eq!(judged[2].verdict, Verdict::Unknown);
        assert!(judged[2].evidence[0].ends_with("(could not be judged)"));
    }
}
