//! The whole AWS side of an environment, from a profile, in dependency order.
//!
//! [`StackSpec::from_profile`] turns a profile's `network` and `compute`
//! into one spec per resource, each with its logical id:
//!
//! ```text
//! iam-role/cluster, iam-role/node
//! vpc ─┬─ subnet/{public,private}/<zone> ─┬─ elastic-ip/nat/<zone> ── nat-gateway/<zone>
//!      ├─ internet-gateway                 ├─ route-table/public, route-table/private/<zone>
//!      └─ security-group/cluster           └─ cluster ── node-group/<name>
//! ```
//!
//! [`ensure`] walks that order. For every resource it finds by tags, diffs,
//! and then, in [`Mode::Apply`], creates or updates; in [`Mode::Plan`] it
//! stops before the first mutating call and only reports, through the same
//! code path. Replacements are reported, never performed: destroying a
//! cluster or a VPC is the engine's (and the user's) decision.
//!
//! Guarantees: a second `ensure` of an unchanged profile makes no mutating
//! call (the call log proves it in the tests); an `ensure` interrupted at any
//! point is completed by the next one, which adopts what the first made.

use crate::Aws;
use crate::cluster::{self, ClusterSpec};
use crate::diff::{FieldDiff, needs_replacement};
use crate::elastic_ip::{self, ElasticIpSpec};
use crate::error::{AwsError, ErrorKind, Result};
use crate::iam_role::{self, RoleSpec};
use crate::internet_gateway::{self, InternetGatewaySpec};
use crate::nat_gateway::{self, NatGatewaySpec};
use crate::node_group::{self, NodeGroupSpec};
use crate::route_table::{self, RouteTableSpec, RouteTarget};
use crate::security_group::{self, Rule, SecurityGroupSpec};
use crate::subnet::{self, SubnetSpec, Tier};
use crate::tags::{Environment, Tags};
use crate::vpc::{self, VpcSpec};
use crate::wait::{Progress, WaitOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use taskctl_core::profile::builtins::SUPPORTED_KUBERNETES;
use taskctl_core::profile::{NatGateways, Profile};

/// Every resource of one environment.
#[derive(Debug, Clone)]
pub struct StackSpec {
    pub environment: Environment,
    pub cluster_role: RoleSpec,
    pub node_role: RoleSpec,
    pub vpc: VpcSpec,
    pub subnets: Vec<SubnetSpec>,
    pub internet_gateway: InternetGatewaySpec,
    /// One per zone, or one in the first zone when NAT is `single`.
    pub nat_gateways: Vec<(ElasticIpSpec, NatGatewaySpec)>,
    pub public_route_table: RouteTableSpec,
    /// One per zone with a private subnet.
    pub private_route_tables: Vec<RouteTableSpec>,
    pub security_group: SecurityGroupSpec,
    pub cluster: ClusterSpec,
    pub node_groups: Vec<NodeGroupSpec>,
}

fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::new(ErrorKind::Invalid, "read profile", message)
}

/// `metadata.name` and `metadata.environment` of a profile.
pub fn environment_of(profile: &Profile) -> Environment {
    Environment::new(&profile.metadata.name, &profile.metadata.environment)
}

/// The newest supported Kubernetes version the profile's constraint admits.
pub fn kubernetes_version(profile: &Profile) -> Result<String> {
    let compute = profile
        .compute
        .as_ref()
        .ok_or_else(|| invalid("the profile has no `compute`"))?;
    let constraint = compute.kubernetes.version.get().ok_or_else(|| {
        invalid(format!(
            "malformed Kubernetes version constraint `{}`",
            compute.kubernetes.version.raw()
        ))
    })?;
    let (major, minor) = constraint.newest_of(SUPPORTED_KUBERNETES).ok_or_else(|| {
        invalid(format!(
            "no EKS-supported Kubernetes version matches `{}`",
            compute.kubernetes.version.raw()
        ))
    })?;
    Ok(format!("{major}.{minor}"))
}

impl StackSpec {
    /// The specs of a validated profile; `run` is this run's id (tag only).
    pub fn from_profile(profile: &Profile, run: &str) -> Result<StackSpec> {
        let env = environment_of(profile);
        let network = profile
            .network
            .as_ref()
            .ok_or_else(|| invalid("the profile has no `network`"))?;
        let compute = profile
            .compute
            .as_ref()
            .ok_or_else(|| invalid("the profile has no `compute`"))?;
        let labels = &profile.metadata.labels;
        let tags = |resource: &str| Tags::new(&env, resource, run).with_all(labels);
        let cluster_name = env.prefix();
        let cidr =
            |c: &taskctl_core::profile::value::Checked<taskctl_core::profile::value::Cidr>| {
                c.get()
                    .map(|c| c.0.to_string())
                    .ok_or_else(|| invalid(format!("malformed CIDR `{}`", c.raw())))
            };

        let mut subnets = Vec::new();
        for (tier, list) in [
            (Tier::Public, &network.subnets.public),
            (Tier::Private, &network.subnets.private),
        ] {
            for s in list {
                let mut spec =
                    SubnetSpec::new(&env, run, tier, &cidr(&s.cidr)?, &s.zone, &cluster_name);
                spec.tags = spec.tags.with_all(labels);
                subnets.push(spec);
            }
        }
        let public_zones: Vec<String> = network
            .subnets
            .public
            .iter()
            .map(|s| s.zone.clone())
            .collect();
        let nat_zones: Vec<String> = match network.nat_gateways {
            NatGateways::PerZone => public_zones.clone(),
            NatGateways::Single => public_zones.first().cloned().into_iter().collect(),
        };
        if nat_zones.is_empty() && !network.subnets.private.is_empty() {
            return Err(invalid(
                "private subnets need a public subnet for their NAT gateway",
            ));
        }
        let nat_gateways = nat_zones
            .iter()
            .map(|zone| {
                (
                    ElasticIpSpec {
                        tags: tags(&format!("elastic-ip/nat/{zone}")),
                    },
                    NatGatewaySpec {
                        zone: zone.clone(),
                        subnet_id: String::new(),
                        allocation_id: String::new(),
                        tags: tags(&format!("nat-gateway/{zone}")),
                    },
                )
            })
            .collect();
        let mut private_zones: Vec<String> = network
            .subnets
            .private
            .iter()
            .map(|s| s.zone.clone())
            .collect();
        private_zones.dedup();
        let private_route_tables = private_zones
            .iter()
            .map(|zone| RouteTableSpec {
                vpc_id: String::new(),
                default_route: RouteTarget::NatGateway(String::new()),
                subnet_ids: BTreeSet::new(),
                tags: tags(&format!("route-table/private/{zone}")),
            })
            .collect();

        let mut descriptions = BTreeMap::new();
        let mut ingress = BTreeSet::new();
        for r in &network.security.ingress_rules {
            let port = r
                .port
                .get()
                .copied()
                .ok_or_else(|| invalid(format!("malformed port `{}`", r.port.raw())))?;
            let rule = Rule::from_profile(r.protocol, port, &cidr(&r.source)?);
            if let Some(d) = &r.description {
                descriptions.insert(rule.clone(), d.clone());
            }
            ingress.insert(rule);
        }
        let mut egress = BTreeSet::new();
        for r in &network.security.egress_rules {
            let port = r
                .port
                .get()
                .copied()
                .ok_or_else(|| invalid(format!("malformed port `{}`", r.port.raw())))?;
            let rule = Rule::from_profile(r.protocol, port, &cidr(&r.destination)?);
            if let Some(d) = &r.description {
                descriptions.insert(rule.clone(), d.clone());
            }
            egress.insert(rule);
        }
        let sg_tags = tags("security-group/cluster");
        let security_group = SecurityGroupSpec {
            vpc_id: String::new(),
            group_name: sg_tags.name(),
            description: format!("taskctl {} cluster", env.tag_value()),
            ingress,
            egress,
            descriptions,
            tags: sg_tags,
        };

        let cluster = ClusterSpec {
            name: cluster_name.clone(),
            version: kubernetes_version(profile)?,
            role_arn: String::new(),
            subnet_ids: BTreeSet::new(),
            security_group_ids: BTreeSet::new(),
            endpoint_public_access: true,
            endpoint_private_access: true,
            tags: tags("cluster"),
        }
        .endpoint_access(compute.kubernetes.control_plane.endpoint_access);
        let node_groups = compute
            .node_groups
            .iter()
            .map(|g| {
                NodeGroupSpec::from_profile(
                    g,
                    &cluster_name,
                    tags(&format!("node-group/{}", g.name)),
                )
            })
            .collect();

        Ok(StackSpec {
            cluster_role: RoleSpec::cluster(tags("iam-role/cluster")),
            node_role: RoleSpec::node(tags("iam-role/node")),
            vpc: VpcSpec {
                cidr: cidr(&network.vpc.cidr)?,
                tags: tags("vpc"),
            },
            subnets,
            internet_gateway: InternetGatewaySpec {
                vpc_id: String::new(),
                tags: tags("internet-gateway"),
            },
            nat_gateways,
            public_route_table: RouteTableSpec {
                vpc_id: String::new(),
                default_route: RouteTarget::InternetGateway(String::new()),
                subnet_ids: BTreeSet::new(),
                tags: tags("route-table/public"),
            },
            private_route_tables,
            security_group,
            cluster,
            node_groups,
            environment: env,
        })
    }
}

/// Apply changes, or only report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Plan,
}

/// What [`ensure`] did (or, in plan mode, would do) to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    /// The resource differs in a way AWS cannot change in place; left as is.
    Replace,
    NoOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Logical id, e.g. `subnet/public/us-west-2a`.
    pub resource: String,
    pub action: Action,
    pub diffs: Vec<FieldDiff>,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::NoOp => "no-op",
        })
    }
}

/// `update node-group/worker: scaling.desired 5 → 7, scaling.max 10 → 12`.
impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.action, self.resource)?;
        for (i, d) in self.diffs.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Options of [`ensure`]; the waits are the caller's timeouts.
#[derive(Debug, Clone, Copy)]
pub struct EnsureOptions {
    pub mode: Mode,
    pub nat_wait: WaitOptions,
    pub cluster_wait: WaitOptions,
    pub node_group_wait: WaitOptions,
}

impl EnsureOptions {
    /// AWS's usual durations: NAT 10 min, cluster 25 min, node groups 20 min.
    pub fn new(mode: Mode) -> Self {
        EnsureOptions {
            mode,
            nat_wait: WaitOptions::new(Duration::from_secs(10 * 60)),
            cluster_wait: WaitOptions::new(Duration::from_secs(25 * 60)),
            node_group_wait: WaitOptions::new(Duration::from_secs(20 * 60)),
        }
    }
}

struct Run<'a> {
    aws: &'a Aws,
    apply: bool,
    changes: Vec<Change>,
}

impl Run<'_> {
    fn record(&mut self, resource: &str, action: Action, diffs: Vec<FieldDiff>) {
        tracing::info!(provider = "aws", resource, action = ?action, diffs = diffs.len(), "ensure");
        self.changes.push(Change {
            resource: resource.to_owned(),
            action,
            diffs,
        });
    }
}

fn last_was_update(run: &Run<'_>) -> bool {
    run.changes
        .last()
        .is_some_and(|c| c.action == Action::Update)
}

/// find → diff → create or update (apply mode only) for one resource;
/// evaluates to the observed or new state, if any.
macro_rules! converge {
    ($run:expr, $module:ident, $spec:expr) => {{
        let spec = $spec;
        match $module::find($run.aws, spec).await? {
            None => {
                $run.record(&spec.tags.resource, Action::Create, Vec::new());
                if $run.apply {
                    Some($module::create($run.aws, spec).await?)
                } else {
                    None
                }
            }
            Some(state) => {
                let diffs = $module::diff(spec, &state);
                if diffs.is_empty() {
                    $run.record(&spec.tags.resource, Action::NoOp, diffs);
                    Some(state)
                } else if needs_replacement(&diffs) {
                    $run.record(&spec.tags.resource, Action::Replace, diffs);
                    Some(state)
                } else {
                    $run.record(&spec.tags.resource, Action::Update, diffs);
                    if $run.apply {
                        Some($module::update($run.aws, spec, &state).await?)
                    } else {
                        Some(state)
                    }
                }
            }
        }
    }};
}

/// Brings every resource of `spec` in line, in dependency order, and
/// returns what was done per resource. `spec`'s dependency ids (VPC id,
/// subnet ids …) are filled in as resources are found or created.
pub async fn ensure(
    aws: &Aws,
    spec: &mut StackSpec,
    options: EnsureOptions,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Vec<Change>> {
    let mut run = Run {
        aws,
        apply: options.mode == Mode::Apply,
        changes: Vec::new(),
    };

    let cluster_role = converge!(run, iam_role, &spec.cluster_role);
    let node_role = converge!(run, iam_role, &spec.node_role);

    let vpc_id = converge!(run, vpc, &spec.vpc)
        .map(|s| s.vpc_id)
        .unwrap_or_default();
    let mut subnet_ids: BTreeMap<(Tier, String), String> = BTreeMap::new();
    for s in &mut spec.subnets {
        s.vpc_id.clone_from(&vpc_id);
        if let Some(state) = converge!(run, subnet, &*s) {
            subnet_ids.insert((s.tier, s.zone.clone()), state.subnet_id);
        }
    }
    spec.internet_gateway.vpc_id.clone_from(&vpc_id);
    let igw_id = converge!(run, internet_gateway, &spec.internet_gateway)
        .map(|s| s.internet_gateway_id)
        .unwrap_or_default();

    let mut nat_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut pending_nats = Vec::new();
    for (eip, nat) in &mut spec.nat_gateways {
        let eip_state = converge!(run, elastic_ip, &*eip);
        nat.allocation_id = eip_state.map(|s| s.allocation_id).unwrap_or_default();
        nat.subnet_id = subnet_ids
            .get(&(Tier::Public, nat.zone.clone()))
            .cloned()
            .unwrap_or_default();
        if let Some(state) = converge!(run, nat_gateway, &*nat) {
            if state.state != "available" {
                pending_nats.push(state.nat_gateway_id.clone());
            }
            nat_ids.insert(nat.zone.clone(), state.nat_gateway_id);
        }
    }
    if run.apply {
        for id in &pending_nats {
            nat_gateway::wait_available(aws, id, options.nat_wait, on_progress).await?;
        }
    }

    spec.public_route_table.vpc_id.clone_from(&vpc_id);
    spec.public_route_table.default_route = RouteTarget::InternetGateway(igw_id);
    spec.public_route_table.subnet_ids = subnet_ids
        .iter()
        .filter(|((tier, _), _)| *tier == Tier::Public)
        .map(|(_, id)| id.clone())
        .collect();
    converge!(run, route_table, &spec.public_route_table);
    let shared_nat = nat_ids.values().next().cloned().unwrap_or_default();
    for rt in &mut spec.private_route_tables {
        let zone = rt
            .tags
            .resource
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        rt.vpc_id.clone_from(&vpc_id);
        rt.default_route = RouteTarget::NatGateway(
            nat_ids
                .get(&zone)
                .cloned()
                .unwrap_or_else(|| shared_nat.clone()),
        );
        rt.subnet_ids = subnet_ids
            .get(&(Tier::Private, zone))
            .cloned()
            .into_iter()
            .collect();
        converge!(run, route_table, &*rt);
    }

    spec.security_group.vpc_id.clone_from(&vpc_id);
    let sg_id = converge!(run, security_group, &spec.security_group).map(|s| s.group_id);

    spec.cluster.role_arn = cluster_role.map(|r| r.arn).unwrap_or_default();
    spec.cluster.subnet_ids = subnet_ids.values().cloned().collect();
    spec.cluster.security_group_ids = sg_id.into_iter().collect();
    let cluster_state = converge!(run, cluster, &spec.cluster);
    // An update leaves the cluster UPDATING, and EKS takes one change at a time.
    let cluster_updated = last_was_update(&run);
    let cluster_exists = match cluster_state {
        Some(state) if run.apply && (state.status != "ACTIVE" || cluster_updated) => {
            cluster::wait_active(aws, &spec.cluster.name, options.cluster_wait, on_progress)
                .await?;
            true
        }
        Some(_) => true,
        None => false,
    };

    let node_role_arn = node_role.map(|r| r.arn).unwrap_or_default();
    let private_subnets: BTreeSet<String> = subnet_ids
        .iter()
        .filter(|((tier, _), _)| *tier == Tier::Private)
        .map(|(_, id)| id.clone())
        .collect();
    let mut pending_groups = Vec::new();
    for group in &mut spec.node_groups {
        group.node_role_arn.clone_from(&node_role_arn);
        group.subnet_ids.clone_from(&private_subnets);
        if !cluster_exists {
            // Plan mode without a cluster: every node group is new.
            run.record(&group.tags.resource, Action::Create, Vec::new());
            continue;
        }
        if let Some(state) = converge!(run, node_group, &*group)
            && (state.status != "ACTIVE" || last_was_update(&run))
        {
            pending_groups.push(group.name.clone());
        }
    }
    if run.apply {
        for name in &pending_groups {
            node_group::wait_active(
                aws,
                &spec.cluster.name,
                name,
                options.node_group_wait,
                on_progress,
            )
            .await?;
        }
    }
    Ok(run.changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskctl_core::profile::{LoadOptions, load};

    fn production() -> Profile {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../profiles/production.yaml");
        let loaded = load(&LoadOptions {
            files: vec![path],
            environment: None,
            vars: &|_| None,
        });
        loaded
            .valid_profile()
            .cloned()
            .expect("valid production profile")
    }

    #[test]
    fn production_profile_becomes_specs() {
        let spec = StackSpec::from_profile(&production(), "run-1").expect("specs");
        assert_eq!(spec.environment.tag_value(), "task-system/production");
        assert_eq!(spec.cluster.name, "task-system-production");
        assert_eq!(spec.cluster.version, "1.34");
        assert!(spec.cluster.endpoint_public_access && spec.cluster.endpoint_private_access);
        assert_eq!(spec.vpc.cidr, "10.0.0.0/16");
        let ids: Vec<&str> = spec
            .subnets
            .iter()
            .map(|s| s.tags.resource.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "subnet/public/us-west-2a",
                "subnet/public/us-west-2b",
                "subnet/private/us-west-2a",
                "subnet/private/us-west-2b"
            ]
        );
        let nats: Vec<&str> = spec
            .nat_gateways
            .iter()
            .map(|(_, n)| n.tags.resource.as_str())
            .collect();
        assert_eq!(
            nats,
            ["nat-gateway/us-west-2a", "nat-gateway/us-west-2b"],
            "per_zone"
        );
        assert_eq!(spec.private_route_tables.len(), 2);
        assert_eq!(spec.security_group.ingress.len(), 2);
        assert_eq!(
            spec.security_group
                .egress
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["all 0.0.0.0/0"]
        );
        let groups: Vec<(&str, &str, i32)> = spec
            .node_groups
            .iter()
            .map(|g| (g.name.as_str(), g.ami_type.as_str(), g.scaling.desired))
            .collect();
        assert_eq!(
            groups,
            [
                ("worker", "AL2023_x86_64_STANDARD", 5),
                ("gpu", "AL2023_x86_64_NVIDIA", 2)
            ]
        );
        assert_eq!(
            spec.cluster_role.role_name,
            "task-system-production-cluster"
        );
        assert!(
            spec.vpc
                .tags
                .to_map()
                .get("taskctl:run")
                .is_some_and(|r| r == "run-1")
        );
    }

    #[test]
    fn single_nat_serves_every_zone() {
        let mut profile = production();
        profile.network.as_mut().expect("network").nat_gateways = NatGateways::Single;
        let spec = StackSpec::from_profile(&profile, "r").expect("specs");
        assert_eq!(spec.nat_gateways.len(), 1);
        assert_eq!(spec.nat_gateways[0].1.zone, "us-west-2a");
        assert_eq!(spec.private_route_tables.len(), 2);
    }

    #[test]
    fn a_profile_without_network_is_invalid() {
        let mut profile = production();
        profile.network = None;
        let err = StackSpec::from_profile(&profile, "r").expect_err("no network");
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(err.message.contains("network"), "{err}");
    }

    #[test]
    fn change_reads_as_a_plan_line() {
        let change = Change {
            resource: "node-group/worker".into(),
            action: Action::Update,
            diffs: vec![
                FieldDiff::update("scaling.desired", 5, 7),
                FieldDiff::update("scaling.max", 10, 12),
            ],
        };
        assert_eq!(
            change.to_string(),
            "update node-group/worker: scaling.desired 5 → 7, scaling.max 10 → 12"
        );
        let none = Change {
            resource: "vpc".into(),
            action: Action::NoOp,
            diffs: vec![],
        };
        assert_eq!(none.to_string(), "no-op vpc");
    }
}
