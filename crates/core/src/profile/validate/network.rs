//! VPC, subnets and security rules.

use super::Report;
use crate::path;
use crate::profile::model::{Profile, TargetKind};
use crate::profile::value::PortRange;
use std::collections::BTreeMap;

pub(super) fn check(r: &mut Report, p: &Profile) {
    let Some(net) = &p.network else { return };
    let vpc = r
        .check(&net.vpc.cidr, path!["network", "vpc", "cidr"])
        .copied();
    if let Some(vpc) = vpc {
        let len = vpc.0.prefix_len();
        if !(16..=28).contains(&len) {
            r.error(
                path!["network", "vpc", "cidr"],
                format!("a VPC's CIDR must be between /16 and /28, found /{len}"),
            );
        }
    }

    // Every subnet: parsed, inside the VPC, overlapping none of the others.
    let mut seen: Vec<(ipnet::IpNet, String)> = Vec::new();
    let mut zones: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    let region = p.target.aws.as_ref().map(|a| a.region.as_str());
    for (kind, list) in [
        ("public", &net.subnets.public),
        ("private", &net.subnets.private),
    ] {
        for (i, subnet) in list.iter().enumerate() {
            let at = path!["network", "subnets", kind, i, "cidr"];
            let entry = zones.entry(subnet.zone.as_str()).or_default();
            if kind == "public" {
                entry.0 = true;
            } else {
                entry.1 = true;
            }
            if let (Some(region), TargetKind::Aws) = (region, p.target.kind) {
                let zone_ok = subnet
                    .zone
                    .strip_prefix(region)
                    .is_some_and(|z| z.len() == 1 && z.chars().all(|c| c.is_ascii_lowercase()));
                if !zone_ok {
                    r.error(
                        path!["network", "subnets", kind, i, "zone"],
                        format!(
                            "zone `{}` is not a zone of region `{region}` (expected `{region}a`, `{region}b`, …)",
                            subnet.zone
                        ),
                    );
                }
            }
            let Some(cidr) = r.check(&subnet.cidr, at.clone()).copied() else {
                continue;
            };
            let label = format!("{kind}[{i}] {}", cidr.0);
            if let Some(vpc) = vpc
                && !vpc.0.contains(&cidr.0)
            {
                r.error(
                    at.clone(),
                    format!("subnet {} is not inside the VPC {}", cidr.0, vpc.0),
                );
            }
            for (other, other_label) in &seen {
                if other.contains(&cidr.0.network()) || cidr.0.contains(&other.network()) {
                    r.error(
                        at.clone(),
                        format!("subnet {} overlaps subnet {other_label}", cidr.0),
                    );
                }
            }
            seen.push((cidr.0, label));
        }
    }

    if p.target.kind == TargetKind::Aws {
        if zones.len() < 2 {
            r.error_help(
                path!["network", "subnets"],
                format!(
                    "EKS needs subnets in at least two zones, found {}",
                    zones.len()
                ),
                "add a public and a private subnet in a second zone",
            );
        }
        for (zone, (public, private)) in &zones {
            if !public || !private {
                let missing = if *public { "private" } else { "public" };
                r.error(
                    path!["network", "subnets", missing],
                    format!("zone `{zone}` has no {missing} subnet; every zone needs one public and one private subnet"),
                );
            }
        }
    }

    for (i, rule) in net.security.ingress_rules.iter().enumerate() {
        let port = r
            .check(
                &rule.port,
                path!["network", "security", "ingress_rules", i, "port"],
            )
            .copied();
        let source = r
            .check(
                &rule.source,
                path!["network", "security", "ingress_rules", i, "source"],
            )
            .copied();
        if let (Some(port), Some(source)) = (port, source) {
            if source.0.prefix_len() == 0 && !port.contains_only(&[80, 443]) {
                r.warning(
                    path!["network", "security", "ingress_rules", i],
                    format!(
                        "ingress on port {port} is open to the whole internet ({})",
                        source.0
                    ),
                    Some(
                        "only 80 and 443 are expected to face the internet; narrow `source`".into(),
                    ),
                );
            }
            if port == PortRange::All && rule.protocol != crate::profile::model::Protocol::All {
                r.note(
                    path!["network", "security", "ingress_rules", i, "port"],
                    "`port: all` opens every port of the protocol",
                );
            }
        }
    }
    for (i, rule) in net.security.egress_rules.iter().enumerate() {
        r.check(
            &rule.port,
            path!["network", "security", "egress_rules", i, "port"],
        );
        r.check(
            &rule.destination,
            path!["network", "security", "egress_rules", i, "destination"],
        );
    }
}
