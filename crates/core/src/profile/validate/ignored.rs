//! Fields a target does not act on: each is a warning at its location, so
//! nobody believes a setting works that nothing reads. The table in
//! `profiles/README.md` ("Which target honors which field") is the same
//! list for people.

use super::Report;
use crate::path;
use crate::profile::model::{Profile, TargetKind};
use crate::profile::node::Path;

pub(super) fn check(r: &mut Report, p: &Profile) {
    let target = p.target.kind;
    let ignored = |r: &mut Report, at: Path, what: String, help: &str| {
        r.warning(at, what, Some(help.to_string()));
    };

    // Every target.
    for (name, env) in &p.environments {
        let at = path!["environments", name.as_str()];
        if !env.metrics_enabled {
            ignored(
                r,
                at.child("metrics_enabled"),
                "`metrics_enabled: false` is ignored on every target: the agents always serve /metrics, which Prometheus scrapes and `validate_metrics` checks".into(),
                "remove it",
            );
        }
        if env.tracing_enabled {
            ignored(
                r,
                at.child("tracing_enabled"),
                "`tracing_enabled: true` is ignored on every target: the agent exports no traces (it has no tracing exporter)".into(),
                "remove it",
            );
        }
    }
    let s = &p.services;
    let charts = [
        (
            "rabbitmq",
            s.rabbitmq.as_ref().and_then(|x| x.chart.as_ref()),
        ),
        ("mongodb", s.mongodb.as_ref().and_then(|x| x.chart.as_ref())),
        (
            "prometheus",
            s.prometheus.as_ref().and_then(|x| x.chart.as_ref()),
        ),
        ("vault", s.vault.as_ref().and_then(|x| x.chart.as_ref())),
    ];
    for (service, chart) in charts {
        if chart.is_some() {
            ignored(
                r,
                path!["services", service, "chart"],
                format!(
                    "`chart` is ignored on every target: taskctl deploys {service} from its own templates (kubernetes, aws) or container (docker), never from a Helm chart"
                ),
                "remove it; the image and settings beside it are what taskctl uses",
            );
        }
    }
    if let Some(fluentd) = s.logging.as_ref().map(|l| &l.fluentd)
        && fluentd.chart.is_some()
    {
        ignored(
            r,
            path!["services", "logging", "fluentd", "chart"],
            "`chart` is ignored on every target: taskctl deploys fluentd from its own templates, never from a Helm chart".into(),
            "remove it; `image` beside it is what taskctl uses",
        );
    }
    for (i, agent) in p.agents.iter().enumerate() {
        let at = path!["agents", i];
        let scaling = agent.scaling.as_ref();
        if scaling.is_some_and(|s| s.vertical.is_some()) {
            ignored(
                r,
                at.child("scaling").child("vertical"),
                "`scaling.vertical` is ignored on every target: no VerticalPodAutoscaler is rendered (it needs the VPA's own controllers in the cluster)".into(),
                "remove it, and size `resources` from the agents' measured use",
            );
        }
        // An image build: docker builds any; aws packs the static agent
        // (`build: {}`) itself and pushes it to ECR; kubernetes builds none.
        if let Some(build) = &agent.build {
            let dockerfile = !build.is_static_agent();
            match target {
                TargetKind::Kubernetes => ignored(
                    r,
                    at.child("build"),
                    "`build` is ignored on target kubernetes: taskctl builds no image for it; the cluster pulls `image`".into(),
                    "push the image to a registry the cluster reaches and name it in `image`; or use target aws, which pushes `build: {}` to ECR",
                ),
                TargetKind::Aws if dockerfile => ignored(
                    r,
                    at.child("build"),
                    "a Dockerfile `build` is ignored on target aws: it needs a Docker engine; only `build: {}` (the static agent, packed by taskctl) is pushed to ECR".into(),
                    "use `build: {}`, or push your image yourself and name it in `image`",
                ),
                _ => {}
            }
        }
        if target != TargetKind::Docker {
            continue;
        }
        // Kubernetes-only settings of a workload, on the docker target.
        let docker = |what: &str, why: &str| format!("`{what}` is ignored on target docker: {why}");
        if r.doc.lookup(&at.child("namespace")).is_some() {
            ignored(
                r,
                at.child("namespace"),
                docker(
                    "namespace",
                    "containers are named and labelled by environment, not namespace",
                ),
                "remove it, or deploy to target kubernetes or aws",
            );
        }
        if agent.service.is_some() {
            ignored(
                r,
                at.child("service"),
                docker(
                    "service",
                    "each replica publishes its ports on 127.0.0.1 itself",
                ),
                "remove it, or deploy to target kubernetes or aws",
            );
        }
        if scaling.is_some_and(|s| s.horizontal.is_some()) {
            ignored(
                r,
                at.child("scaling").child("horizontal"),
                docker(
                    "scaling.horizontal",
                    "nothing autoscales containers; `replicas` is what runs",
                ),
                "remove it, or deploy to target kubernetes or aws",
            );
        }
        if agent.gpus.is_some() {
            ignored(
                r,
                at.child("gpus"),
                docker("gpus", "no GPU is passed to containers"),
                "remove it, or deploy to target aws with a GPU node group",
            );
        }
    }

    // Whole sections only one kind of target reads.
    let only = |section: &str, honored: &[TargetKind], what: &str| -> Option<(Path, String)> {
        (!honored.contains(&target)).then(|| {
            (
                path![section],
                format!(
                    "`{section}` is ignored on target {}: {what} (read by target{} {})",
                    target.as_str(),
                    if honored.len() == 1 { "" } else { "s" },
                    honored
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            )
        })
    };
    if p.network.is_some()
        && let Some((at, message)) = only(
            "network",
            &[TargetKind::Aws],
            "it describes the AWS VPC taskctl makes",
        )
    {
        ignored(
            r,
            at,
            message,
            "remove it, or move it to a profile for target aws",
        );
    }
    if p.compute.is_some()
        && let Some((at, message)) = only(
            "compute",
            &[TargetKind::Aws, TargetKind::Kubernetes],
            "it sizes node groups and the namespaces' quotas",
        )
    {
        ignored(
            r,
            at,
            message,
            "remove it, or move it to a profile for a cluster target",
        );
    }
    if p.storage.is_some()
        && let Some((at, message)) = only(
            "storage",
            &[TargetKind::Aws, TargetKind::Kubernetes],
            "it is the cluster's storage class and volume claims; docker keeps data in named volumes",
        )
    {
        ignored(
            r,
            at,
            message,
            "remove it, or move it to a profile for a cluster target",
        );
    }
}
