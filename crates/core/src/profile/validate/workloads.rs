//! Platform services and agents: sizes, ports, probes, scaling, env and
//! secrets.

use super::Report;
use crate::path;
use crate::profile::model::{
    Agent, External, HorizontalScaling, MongoArchitecture, NodeRole, Persistence, Profile,
    ResourceList, TargetKind,
};
use crate::profile::node::Path;
use crate::profile::value::{Checked, Quantity, SecretRef};
use std::collections::BTreeSet;

pub(super) fn check(r: &mut Report, p: &Profile) {
    services(r, p);
    if let Some(logs) = p.storage.as_ref().and_then(|s| s.logs.as_ref()) {
        r.check(logs, path!["storage", "logs"]);
    }
    let mut names = BTreeSet::new();
    for (i, agent) in p.agents.iter().enumerate() {
        if !names.insert(agent.name.as_str()) {
            r.error(
                path!["agents", i, "name"],
                format!("agent `{}` is defined twice", agent.name),
            );
        }
        check_agent(r, p, agent, path!["agents", i]);
    }
    for (i, component) in p.components.iter().enumerate() {
        if !names.insert(component.name.as_str()) {
            r.error(
                path!["components", i, "name"],
                format!(
                    "`{}` is already the name of an agent or component",
                    component.name
                ),
            );
        }
        check_agent(r, p, component, path!["components", i]);
    }
    components(r, p);
    if let Some(env) = p.environment() {
        let at = path![
            "environments",
            p.metadata.environment.as_str(),
            "resource_limits"
        ];
        r.check(&env.resource_limits.cpu, at.child("cpu"));
        r.check(&env.resource_limits.memory, at.child("memory"));
    }
}

/// The services a workload's `depends_on` may name: those the profile
/// enables.
fn enabled_services(p: &Profile) -> BTreeSet<&'static str> {
    let s = &p.services;
    let mut out = BTreeSet::new();
    let on = |yes: bool, name: &'static str, out: &mut BTreeSet<&'static str>| {
        if yes {
            out.insert(name);
        }
    };
    on(
        s.rabbitmq.as_ref().is_some_and(|x| x.enabled),
        "rabbitmq",
        &mut out,
    );
    on(
        s.mongodb.as_ref().is_some_and(|x| x.enabled),
        "mongodb",
        &mut out,
    );
    on(
        s.postgres.as_ref().is_some_and(|x| x.enabled),
        "postgres",
        &mut out,
    );
    on(
        s.vault.as_ref().is_some_and(|x| x.enabled),
        "vault",
        &mut out,
    );
    on(
        s.grafana.as_ref().is_some_and(|x| x.enabled),
        "grafana",
        &mut out,
    );
    let prometheus = s.prometheus.as_ref().filter(|x| x.enabled);
    on(prometheus.is_some(), "prometheus", &mut out);
    on(
        prometheus.is_some_and(|x| x.alertmanager.enabled),
        "alertmanager",
        &mut out,
    );
    out
}

/// What only components have, what they may not have, their target, and
/// every workload's `depends_on`: names that exist, and no cycle.
fn components(r: &mut Report, p: &Profile) {
    for (i, agent) in p.agents.iter().enumerate() {
        let at = path!["agents", i];
        if !agent.command.is_empty() {
            r.error_help(
                at.child("command"),
                "an agent runs the task-executor; `command` is for components",
                "remove it, or move this workload under `components`",
            );
        }
        if agent.user.is_some() {
            r.error_help(
                at.child("user"),
                "an agent runs as the task-executor image's user; `user` is for components",
                "remove it, or move this workload under `components`",
            );
        }
    }
    for (i, c) in p.components.iter().enumerate() {
        let at = path!["components", i];
        if i == 0 && p.target.kind != TargetKind::Docker {
            r.error_help(
                path!["components"],
                format!(
                    "components are deployed on target docker only; target {} does not render them yet",
                    serde_json::to_value(p.target.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
                "deploy them with a docker profile, or as your own manifests beside taskctl's",
            );
        }
        if c.build.as_ref().is_some_and(|b| b.dockerfile.is_none()) {
            r.error_help(
                at.child("build"),
                "a component is built from its own Dockerfile; `build` without `dockerfile` packs the task-executor agent",
                "set build.dockerfile, or remove `build` to run an existing image",
            );
        }
        if c.probes.readiness.is_none() {
            r.error_help(
                at.child("probes"),
                format!("component `{}` has no readiness probe", c.name),
                "add probes.readiness (an HTTP GET path and port): a rolling update replaces a replica only once its replacement is ready, and the gates ask it",
            );
        }
        if c.user.is_some() && c.numeric_user().is_none() {
            r.error_help(
                at.child("user"),
                format!(
                    "`{}` is not a numeric UID[:GID] other than root",
                    c.user.as_deref().unwrap_or_default()
                ),
                "write e.g. `10001:10001`; containers never run as root",
            );
        }
        for what in ["gpus", "scaling", "service", "config_map"] {
            let set = match what {
                "gpus" => c.gpus.is_some(),
                "scaling" => c.scaling.is_some(),
                "service" => c.service.is_some(),
                _ => false,
            };
            if set {
                r.error_help(
                    at.child(what),
                    format!("`{what}` is not supported on a component"),
                    "remove it",
                );
            }
        }
    }
    // depends_on: every name exists, and following them never comes back.
    let services = enabled_services(p);
    let workloads: std::collections::BTreeMap<&str, &Agent> =
        p.workloads().map(|(_, w)| (w.name.as_str(), w)).collect();
    let listed = p
        .agents
        .iter()
        .enumerate()
        .map(|(i, w)| (path!["agents", i, "depends_on"], w))
        .chain(
            p.components
                .iter()
                .enumerate()
                .map(|(i, w)| (path!["components", i, "depends_on"], w)),
        );
    for (at, w) in listed {
        for (j, dep) in w.depends_on.iter().enumerate() {
            if dep == &w.name {
                r.error(at.child(j), format!("`{dep}` depends on itself"));
            } else if !workloads.contains_key(dep.as_str()) && !services.contains(dep.as_str()) {
                let mut known: Vec<&str> = workloads.keys().copied().collect();
                known.extend(services.iter().copied());
                known.retain(|k| *k != w.name);
                r.error_help(
                    at.child(j),
                    format!("`{dep}` is no agent, component or enabled service of this profile"),
                    format!("name one of: {}", known.join(", ")),
                );
            }
        }
        // Reported once, at the circle's first name.
        if let Some(cycle) = cycle_from(&workloads, &w.name)
            && cycle.iter().min() == Some(&w.name.as_str())
        {
            r.error_help(
                at,
                format!("`depends_on` goes round in a circle: {}", cycle.join(" → ")),
                "break the circle: something must start first",
            );
        }
    }
}

/// The circle of `depends_on` that starts and ends at `start`, if any.
fn cycle_from<'a>(
    workloads: &std::collections::BTreeMap<&'a str, &'a Agent>,
    start: &'a str,
) -> Option<Vec<&'a str>> {
    fn walk<'a>(
        workloads: &std::collections::BTreeMap<&'a str, &'a Agent>,
        start: &'a str,
        at: &'a str,
        path: &mut Vec<&'a str>,
        seen: &mut BTreeSet<&'a str>,
    ) -> bool {
        let Some(w) = workloads.get(at) else {
            return false;
        };
        for dep in &w.depends_on {
            let dep = dep.as_str();
            if dep == start && dep != w.name {
                path.push(dep);
                return true;
            }
            if seen.insert(dep) {
                path.push(dep);
                if walk(workloads, start, dep, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start];
    let mut seen = BTreeSet::from([start]);
    walk(workloads, start, start, &mut path, &mut seen).then_some(path)
}

fn services(r: &mut Report, p: &Profile) {
    let s = &p.services;
    if let Some(g) = &s.grafana {
        secret(
            r,
            g.admin_password.as_ref(),
            path!["services", "grafana", "admin_password"],
        );
    }
    if let Some(mq) = &s.rabbitmq {
        let at = path!["services", "rabbitmq"];
        external(r, mq.external.as_ref(), &at);
        persistence(r, mq.persistence.as_ref(), &at);
        secret(r, mq.credentials.as_ref(), at.child("credentials"));
        secret(r, mq.erlang_cookie.as_ref(), at.child("erlang_cookie"));
        if mq.clustering.replicas == 0 {
            r.error(
                at.child("clustering").child("replicas"),
                "replicas must be at least 1",
            );
        }
        if mq.clustering.enabled && mq.clustering.replicas < 3 {
            r.warning(
                at.child("clustering").child("replicas"),
                format!(
                    "a RabbitMQ cluster of {} node(s) cannot keep a quorum when one fails",
                    mq.clustering.replicas
                ),
                Some("use 3 or more replicas".into()),
            );
        }
        if let Some(hpa) = &mq.autoscaling {
            horizontal(r, hpa, at.child("autoscaling"), None);
        }
    }
    if let Some(db) = &s.mongodb {
        let at = path!["services", "mongodb"];
        external(r, db.external.as_ref(), &at);
        persistence(r, db.persistence.as_ref(), &at);
        secret(r, db.keyfile.as_ref(), at.child("keyfile"));
        secret(r, db.root_password.as_ref(), at.child("root_password"));
        if db.architecture == MongoArchitecture::Replicaset
            && (db.replicas < 3 || db.replicas % 2 == 0)
        {
            r.warning(
                at.child("replicas"),
                format!("a replica set of {} member(s) cannot elect a primary after a failure as reliably as an odd count of 3 or more", db.replicas),
                None,
            );
        }
    }
    if let Some(pg) = &s.postgres {
        let at = path!["services", "postgres"];
        external(r, pg.external.as_ref(), &at);
        persistence(r, pg.persistence.as_ref(), &at);
        r.check(&pg.password, at.child("password"));
        if pg.version < 12 {
            r.error(
                at.child("version"),
                format!(
                    "PostgreSQL {} is too old: the task router needs 12 or newer",
                    pg.version
                ),
            );
        }
        if let Some(backup) = &pg.backup {
            r.check(&backup.retention, at.child("backup").child("retention"));
            if backup.schedule.split_whitespace().count() != 5 {
                r.error(
                    at.child("backup").child("schedule"),
                    format!(
                        "malformed cron schedule `{}`: expected five fields such as `0 3 * * *`",
                        backup.schedule
                    ),
                );
            }
        }
    }
    if let Some(prom) = &s.prometheus {
        let at = path!["services", "prometheus"];
        external(r, prom.external.as_ref(), &at);
        r.check(&prom.retention, at.child("retention"));
        persistence(r, prom.storage.as_ref(), &at.child("storage"));
        let mut jobs = BTreeSet::new();
        for (i, job) in prom.scrape_configs.iter().enumerate() {
            let jat = at.child("scrape_configs").child(i);
            if !jobs.insert(job.job_name.as_str()) {
                r.error(
                    jat.child("job_name"),
                    format!("scrape job `{}` is defined twice", job.job_name),
                );
            }
            if let Some(interval) = &job.scrape_interval {
                r.check(interval, jat.child("scrape_interval"));
            }
            for (j, sc) in job.static_configs.iter().enumerate() {
                for (k, target) in sc.targets.iter().enumerate() {
                    let ok = target.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if !ok {
                        r.error(
                            jat.child("static_configs").child(j).child("targets").child(k),
                            format!("malformed scrape target `{target}`: expected HOST:PORT such as `task-executor:9090`"),
                        );
                    }
                }
            }
        }
        let mut alerts = BTreeSet::new();
        for (i, rule) in prom.alerting_rules.iter().enumerate() {
            let rat = at.child("alerting_rules").child(i);
            if !alerts.insert(rule.name.as_str()) {
                r.error(
                    rat.child("name"),
                    format!("alert `{}` is defined twice", rule.name),
                );
            }
            if rule.expr.trim().is_empty() {
                r.error(rat.child("expr"), "an alert needs a PromQL expression");
            }
            if let Some(d) = &rule.for_ {
                r.check(d, rat.child("for"));
            }
        }
        for (i, rule) in prom.recording_rules.iter().enumerate() {
            let valid = !rule.record.is_empty()
                && rule
                    .record
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            if !valid {
                r.error(
                    at.child("recording_rules").child(i).child("record"),
                    format!("invalid metric name `{}`", rule.record),
                );
            }
        }
    }
    if let Some(vault) = &s.vault {
        let at = path!["services", "vault"];
        external(r, vault.external.as_ref(), &at);
        if let Some(c) = &vault.cluster {
            // The StatefulSet of targets kubernetes and aws, whose pods
            // taskctl finds itself (`Profile::vault_in_cluster`).
            let in_cluster = p.target.kind != TargetKind::Docker && vault.external.is_none();
            if c.nodes.is_empty() && !in_cluster {
                r.error_help(
                    at.child("cluster").child("nodes"),
                    match p.target.kind {
                        TargetKind::Docker => {
                            "no node addresses: target docker needs each node's API address"
                        }
                        _ => "no node addresses: the Vault these nodes belong to is `external`",
                    },
                    "list each node's API address, e.g. nodes: [\"https://vault-0.example:8200\"]",
                );
            }
            if !c.nodes.is_empty() && in_cluster {
                r.error_help(
                    at.child("cluster").child("nodes"),
                    "node addresses for the Vault StatefulSet taskctl deploys: taskctl reaches its pods through the API server itself",
                    "remove `nodes`, or make this Vault `external`",
                );
            }
            let n = c.recovery_pgp_keys.len();
            if n != 0 && n != usize::from(c.key_shares) {
                r.error_help(
                    at.child("cluster").child("recovery_pgp_keys"),
                    format!(
                        "{n} PGP key(s) for {} recovery key shares: each share is encrypted to one key",
                        c.key_shares
                    ),
                    "give one key file per share, or set key_shares to the number of keys",
                );
            }
        }
        if vault.ha.enabled && (vault.ha.replicas < 3 || vault.ha.replicas % 2 == 0) {
            r.warning(
                at.child("ha").child("replicas"),
                format!(
                    "Vault HA with raft needs an odd number of 3 or more replicas, found {}",
                    vault.ha.replicas
                ),
                None,
            );
        }
    }
    if let Some(logging) = &s.logging {
        let at = path!["services", "logging", "fluentd"];
        for (i, input) in logging.fluentd.inputs.iter().enumerate() {
            port(r, input.port, at.child("inputs").child(i).child("port"));
        }
        for (i, output) in logging.fluentd.outputs.iter().enumerate() {
            port(r, output.port, at.child("outputs").child(i).child("port"));
            if let Err(e) = super::names::host(&output.host) {
                r.error(at.child("outputs").child(i).child("host"), e);
            }
        }
    }
}

fn external(r: &mut Report, ext: Option<&External>, at: &Path) {
    let Some(ext) = ext else { return };
    let at = at.child("external");
    secret(r, ext.credentials.as_ref(), at.child("credentials"));
    match url_has_password(&ext.url) {
        Some(true) => r.secret_error(
            at.child("url"),
            "the URL carries a password",
            "keep the URL without credentials and put them in `credentials: vault:PATH#KEY`",
        ),
        Some(false) => {}
        None => r.error(
            at.child("url"),
            format!(
                "malformed URL `{}`: expected SCHEME://HOST[:PORT][/PATH]",
                ext.url
            ),
        ),
    }
}

/// `Some(true)` when `url` has a `user:password@` part; `None` when it is
/// not a URL at all.
fn url_has_password(url: &str) -> Option<bool> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.is_empty() || rest.is_empty() {
        return None;
    }
    let authority = rest.split('/').next().unwrap_or_default();
    Some(
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':')),
    )
}

fn persistence(r: &mut Report, p: Option<&Persistence>, at: &Path) {
    if let Some(p) = p {
        let size = r
            .check(&p.size, at.child("persistence").child("size"))
            .copied();
        if size.is_some_and(|s| s.0 < 1024f64.powi(3) && p.enabled) {
            r.warning(
                at.child("persistence").child("size"),
                "volumes smaller than 1Gi are rounded up by most storage classes",
                None,
            );
        }
    }
}

fn secret(r: &mut Report, s: Option<&Checked<SecretRef>>, at: Path) {
    if let Some(s) = s {
        r.check(s, at);
    }
}

fn port(r: &mut Report, port: u16, at: Path) {
    if port == 0 {
        r.error(at, "port 0 is not a port: expected 1 to 65535");
    }
}

/// Names of environment variables that hold secrets.
fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|word| upper.contains(word))
}

fn quantities(
    r: &mut Report,
    list: &ResourceList,
    at: &Path,
) -> (Option<Quantity>, Option<Quantity>) {
    (
        r.check(&list.cpu, at.child("cpu")).copied(),
        r.check(&list.memory, at.child("memory")).copied(),
    )
}

/// Every name of an agent that reaches a manifest, by Kubernetes' rules.
fn agent_names(r: &mut Report, agent: &Agent, at: &Path) {
    use super::names;
    let mut check = |result: Result<(), String>, at: Path| {
        if let Err(e) = result {
            r.error(at, e);
        }
    };
    check(names::dns_label(&agent.name), at.child("name"));
    check(names::dns_label(&agent.namespace), at.child("namespace"));
    for (i, var) in agent.env.iter().enumerate() {
        check(
            names::env_name(&var.name),
            at.child("env").child(i).child("name"),
        );
        if let Some(c) = &var.config_map {
            let c_at = at.child("env").child(i).child("config_map");
            check(names::dns_subdomain(&c.name), c_at.child("name"));
            check(names::config_key(&c.key), c_at.child("key"));
        }
    }
    if let Some(cm) = &agent.config_map {
        check(
            names::dns_subdomain(&cm.name),
            at.child("config_map").child("name"),
        );
        for key in cm.data.keys() {
            check(
                names::config_key(key),
                at.child("config_map").child("data").child(key.as_str()),
            );
        }
    }
    for (i, p) in agent.ports.iter().enumerate() {
        check(
            names::port_name(&p.name),
            at.child("ports").child(i).child("name"),
        );
    }
    if let Some(s) = &agent.service {
        check(
            names::dns1035_label(&s.name),
            at.child("service").child("name"),
        );
    }
}

fn check_agent(r: &mut Report, p: &Profile, agent: &Agent, at: Path) {
    agent_names(r, agent, &at);
    if agent.image.trim().is_empty() || agent.image.contains(char::is_whitespace) {
        r.error(
            at.child("image"),
            format!("malformed image reference `{}`", agent.image),
        );
    }
    let res = at.child("resources");
    let (req_cpu, req_mem) = quantities(r, &agent.resources.requests, &res.child("requests"));
    let (lim_cpu, lim_mem) = quantities(r, &agent.resources.limits, &res.child("limits"));
    for (what, req, lim) in [("cpu", req_cpu, lim_cpu), ("memory", req_mem, lim_mem)] {
        if let (Some(req), Some(lim)) = (req, lim)
            && req.0 > lim.0
        {
            r.error(
                res.child("requests").child(what),
                format!(
                    "{what} request `{}` is above its limit `{}`",
                    raw(&agent.resources.requests, what),
                    raw(&agent.resources.limits, what)
                ),
            );
        }
    }
    // The environment's resource ceiling caps every container's limits.
    if let Some(env) = p.environment() {
        let ceiling = (
            env.resource_limits.cpu.get().copied(),
            env.resource_limits.memory.get().copied(),
        );
        for (what, lim, max) in [("cpu", lim_cpu, ceiling.0), ("memory", lim_mem, ceiling.1)] {
            if let (Some(lim), Some(max)) = (lim, max)
                && lim.0 > max.0
            {
                r.error_help(
                        res.child("limits").child(what),
                        format!(
                            "{what} limit `{}` is above the {} environment's ceiling `{}`",
                            raw(&agent.resources.limits, what),
                            p.metadata.environment,
                            raw(&env.resource_limits, what)
                        ),
                        format!("lower it, or override the agent's resources under `environments.{}.overrides`", p.metadata.environment),
                    );
            }
        }
    }

    let config_map = agent.config_map.as_ref();
    for (i, var) in agent.env.iter().enumerate() {
        let vat = at.child("env").child(i);
        let sources = [
            var.value.is_some(),
            var.config_map.is_some(),
            var.secret.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources != 1 {
            r.error(
                vat.clone(),
                format!("environment variable `{}` needs exactly one of `value`, `config_map`, `secret`, found {sources}", var.name),
            );
        }
        if let Some(value) = &var.value {
            if looks_secret(&var.name) && !value.is_empty() {
                r.secret_error(
                    vat.child("value"),
                    format!("`{}` holds a literal secret", var.name),
                    format!("write `secret: vault:PATH#KEY` (or `secret: env:NAME`) instead of `value` for `{}`", var.name),
                );
            } else if url_has_password(value) == Some(true) {
                r.secret_error(
                    vat.child("value"),
                    format!("`{}` holds a URL with a password", var.name),
                    "move the whole URL to Vault and write `secret: vault:PATH#KEY`",
                );
            }
        }
        if let Some(s) = &var.secret {
            r.check(s, vat.child("secret"));
        }
        if let Some(key_ref) = &var.config_map {
            match config_map {
                Some(cm) if cm.name == key_ref.name => {
                    if !cm.data.contains_key(&key_ref.key) {
                        r.error(
                            vat.child("config_map").child("key"),
                            format!("config map `{}` has no key `{}`", cm.name, key_ref.key),
                        );
                    }
                }
                _ => r.error_help(
                    vat.child("config_map").child("name"),
                    format!("config map `{}` is not defined by this agent", key_ref.name),
                    "define it under the agent's `config_map`",
                ),
            }
        }
    }
    if let Some(cm) = config_map {
        for (key, value) in &cm.data {
            if url_has_password(value) == Some(true) {
                r.secret_error(
                    at.child("config_map").child("data").child(key.as_str()),
                    format!("config map key `{key}` holds a URL with a password"),
                    "config maps are not secret: keep credentials in Vault and reference them with `secret:`",
                );
            }
        }
    }

    let mut port_names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for (i, cp) in agent.ports.iter().enumerate() {
        port(r, cp.port, at.child("ports").child(i).child("port"));
        if !port_names.insert(cp.name.as_str()) || !ports.insert(cp.port) {
            r.error(
                at.child("ports").child(i),
                format!("port `{}` ({}) is declared twice", cp.name, cp.port),
            );
        }
    }
    if let Some(svc) = &agent.service {
        for (i, sp) in svc.ports.iter().enumerate() {
            port(
                r,
                sp.port,
                at.child("service").child("ports").child(i).child("port"),
            );
            if !ports.contains(&sp.target_port) {
                r.error(
                    at.child("service")
                        .child("ports")
                        .child(i)
                        .child("target_port"),
                    format!(
                        "service target port {} is not one of the agent's ports",
                        sp.target_port
                    ),
                );
            }
        }
    }
    for (name, probe) in [
        ("liveness", &agent.probes.liveness),
        ("readiness", &agent.probes.readiness),
    ] {
        let Some(probe) = probe else { continue };
        let pat = at.child("probes").child(name);
        if !ports.contains(&probe.port) {
            r.error(
                pat.child("port"),
                format!(
                    "{name} probe port {} is not one of the agent's ports",
                    probe.port
                ),
            );
        }
        if !probe.path.starts_with('/') {
            r.error(
                pat.child("path"),
                format!("probe path `{}` must start with `/`", probe.path),
            );
        }
        if probe.period_seconds == 0 {
            r.error(
                pat.child("period_seconds"),
                "a probe period must be at least 1 second",
            );
        }
    }

    if let Some(gpus) = agent.gpus.filter(|g| *g > 0) {
        let has_gpu_nodes = p
            .compute
            .as_ref()
            .is_some_and(|c| c.node_groups.iter().any(|g| g.role == NodeRole::Gpu));
        if p.target.kind == TargetKind::Aws && !has_gpu_nodes {
            r.error(
                at.child("gpus"),
                format!(
                    "agent `{}` requests {gpus} GPU(s) but no node group has `role: gpu`",
                    agent.name
                ),
            );
        }
    }

    if let Some(scaling) = &agent.scaling {
        if let Some(hpa) = &scaling.horizontal {
            horizontal(
                r,
                hpa,
                at.child("scaling").child("horizontal"),
                Some(agent.replicas),
            );
        }
        if let Some(vpa) = &scaling.vertical {
            let vat = at.child("scaling").child("vertical");
            for (what, step, lim) in [("cpu", &vpa.cpu, lim_cpu), ("memory", &vpa.memory, lim_mem)]
            {
                r.check(&step.increment, vat.child(what).child("increment"));
                let max = r.check(&step.max, vat.child(what).child("max")).copied();
                if let (Some(max), Some(lim)) = (max, lim)
                    && max.0 < lim.0
                {
                    r.error(
                        vat.child(what).child("max"),
                        format!(
                            "vertical scaling max `{}` is below the current {what} limit",
                            step.max
                        ),
                    );
                }
            }
        }
    }
}

fn horizontal(r: &mut Report, hpa: &HorizontalScaling, at: Path, replicas: Option<u32>) {
    if hpa.min_replicas == 0 {
        r.error(at.child("min_replicas"), "min_replicas must be at least 1");
    }
    if hpa.min_replicas > hpa.max_replicas {
        r.error(
            at.child("min_replicas"),
            format!(
                "min_replicas {} is above max_replicas {}",
                hpa.min_replicas, hpa.max_replicas
            ),
        );
    }
    if hpa.metrics.is_empty() {
        r.error(
            at.child("metrics"),
            "an autoscaler needs at least one metric",
        );
    }
    for (i, m) in hpa.metrics.iter().enumerate() {
        if !(1..=100).contains(&m.average_utilization) {
            r.error(
                at.child("metrics").child(i).child("average_utilization"),
                format!(
                    "target utilization must be 1 to 100 (%), found {}",
                    m.average_utilization
                ),
            );
        }
    }
    if let Some(n) = replicas
        && (n < hpa.min_replicas || n > hpa.max_replicas)
    {
        r.warning(
            at.clone(),
            format!(
                "replicas {n} is outside the autoscaler's range {}–{}; the autoscaler will move it",
                hpa.min_replicas, hpa.max_replicas
            ),
            None,
        );
    }
}

fn raw<'a>(list: &'a ResourceList, what: &str) -> &'a str {
    if what == "cpu" {
        list.cpu.raw()
    } else {
        list.memory.raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_passwords_in_urls() {
        assert_eq!(
            url_has_password("postgresql://user:password@postgres:5432/tasks"),
            Some(true)
        );
        assert_eq!(
            url_has_password("amqp://task-executor@rabbitmq:5672"),
            Some(false)
        );
        assert_eq!(url_has_password("http://task-router:8081"), Some(false));
        assert_eq!(url_has_password("not a url"), None);
    }
}
