//! Kubernetes version, control plane, node groups and quotas.

use super::Report;
use crate::path;
use crate::profile::builtins::{MIN_KUBERNETES, SUPPORTED_KUBERNETES, is_gpu_instance};
use crate::profile::model::{ControlPlaneManager, NodeRole, Profile, TaintEffect, TargetKind};
use std::collections::BTreeSet;

pub(super) fn check(r: &mut Report, p: &Profile) {
    let Some(compute) = &p.compute else { return };
    let k8s = &compute.kubernetes;
    if let Some(constraint) = r.check(&k8s.version, path!["compute", "kubernetes", "version"]) {
        let supported = |&&(maj, min): &&(u64, u64)| (maj, min) >= MIN_KUBERNETES;
        let candidates: Vec<(u64, u64)> = SUPPORTED_KUBERNETES
            .iter()
            .filter(supported)
            .copied()
            .collect();
        if constraint.newest_of(&candidates).is_none() {
            let (lo, hi) = (candidates[0], candidates[candidates.len() - 1]);
            r.error_help(
                path!["compute", "kubernetes", "version"],
                format!(
                    "version constraint `{}` admits no supported Kubernetes version",
                    k8s.version
                ),
                format!(
                    "supported: {}.{} to {}.{}; for example `>=1.28`",
                    lo.0, lo.1, hi.0, hi.1
                ),
            );
        }
    }

    let cp = &k8s.control_plane;
    match (p.target.kind, cp.managed_by) {
        (TargetKind::Aws, ControlPlaneManager::External) => r.error_help(
            path!["compute", "kubernetes", "control_plane", "managed_by"],
            "the `aws` target creates an EKS cluster, whose control plane AWS manages",
            "set `managed_by: eks`",
        ),
        (TargetKind::Aws, ControlPlaneManager::Eks)
            if cp.count.is_some() || cp.instance_type.is_some() || cp.disk.is_some() =>
        {
            r.note(
                path!["compute", "kubernetes", "control_plane"],
                "EKS runs the control plane: `count`, `instance_type` and `disk` are recorded for reference, not provisioned",
            )
        }
        _ => {}
    }

    let mut names = BTreeSet::new();
    for (i, group) in compute.node_groups.iter().enumerate() {
        let at = |field: &str| path!["compute", "node_groups", i, field];
        if !names.insert(group.name.as_str()) {
            r.error(
                at("name"),
                format!("node group `{}` is defined twice", group.name),
            );
        }
        if group.name.is_empty()
            || !group
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            r.error(
                at("name"),
                format!(
                    "invalid node group name `{}`: letters, digits, `-` and `_` only",
                    group.name
                ),
            );
        }
        let s = group.scaling;
        if !(s.min <= s.desired && s.desired <= s.max) {
            r.error(
                at("scaling"),
                format!("node group scaling must satisfy min ≤ desired ≤ max, found min {}, desired {}, max {}", s.min, s.desired, s.max),
            );
        }
        if s.max == 0 {
            r.error(at("scaling"), "node group `max` must be at least 1");
        }
        let well_formed = group
            .instance_type
            .split_once('.')
            .is_some_and(|(f, size)| {
                !f.is_empty()
                    && !size.is_empty()
                    && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !well_formed {
            r.error(
                at("instance_type"),
                format!(
                    "malformed instance type `{}`: expected FAMILY.SIZE such as `c6i.4xlarge`",
                    group.instance_type
                ),
            );
        }
        let gpu_type = is_gpu_instance(&group.instance_type);
        match group.role {
            NodeRole::Gpu if !gpu_type && well_formed => r.error_help(
                at("instance_type"),
                format!(
                    "GPU node group `{}` uses `{}`, which has no NVIDIA GPU",
                    group.name, group.instance_type
                ),
                "use a GPU family such as g5, g6, g4dn or p4d (e.g. `g5.xlarge`)",
            ),
            NodeRole::Worker | NodeRole::System if gpu_type => r.warning(
                at("role"),
                format!(
                    "node group `{}` uses GPU instances `{}` but its role is not `gpu`",
                    group.name, group.instance_type
                ),
                Some(
                    "set `role: gpu` so the nodes get the GPU AMI and the nvidia.com/gpu taint"
                        .into(),
                ),
            ),
            _ => {}
        }
        if group.role == NodeRole::Gpu && !group.gpu_taint {
            let tainted = group
                .taints
                .iter()
                .any(|t| t.key == "nvidia.com/gpu" && t.effect == TaintEffect::NoSchedule);
            if !tainted {
                r.warning(
                    at("gpu_taint"),
                    format!(
                        "GPU node group `{}` is not tainted: any pod may take its expensive nodes",
                        group.name
                    ),
                    None,
                );
            }
        }
        let mut taint_keys = BTreeSet::new();
        for (j, t) in group.taints.iter().enumerate() {
            if !taint_keys.insert((t.key.as_str(), t.effect)) {
                r.error(
                    path!["compute", "node_groups", i, "taints", j],
                    format!(
                        "taint `{}` with effect {:?} is listed twice",
                        t.key, t.effect
                    ),
                );
            }
        }
        if group.disk.size_gib < 20 {
            r.error(
                path!["compute", "node_groups", i, "disk", "size_gib"],
                format!(
                    "node disks must be at least 20 GiB for the EKS AMIs, found {}",
                    group.disk.size_gib
                ),
            );
        }
    }
    if p.target.kind == TargetKind::Aws && compute.node_groups.is_empty() {
        r.error(
            path!["compute", "node_groups"],
            "the `aws` target needs at least one node group",
        );
    }

    if let Some(q) = &compute.resource_quotas {
        let mut pairs = vec![("cpu", &q.cpu), ("memory", &q.memory)];
        if let Some(storage) = &q.storage {
            pairs.push(("storage", storage));
        }
        for (name, share) in pairs {
            let req = r
                .check(
                    &share.request,
                    path!["compute", "resource_quotas", name, "request"],
                )
                .copied();
            let lim = r
                .check(
                    &share.limit,
                    path!["compute", "resource_quotas", name, "limit"],
                )
                .copied();
            if let (Some(req), Some(lim)) = (req, lim)
                && req.0 > lim.0
            {
                r.error(
                    path!["compute", "resource_quotas", name, "request"],
                    format!(
                        "{name} request share {}% is above its limit share {}%",
                        req.0, lim.0
                    ),
                );
            }
        }
    }
}
