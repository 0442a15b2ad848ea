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
//! with an in-cluster Vault:
//! kms-key/vault-unseal ──────────────┐
//! cluster ── oidc-provider/cluster ──┴─ iam-role/vault
//! ```
//!
//! [`crate::provider`] turns those specs into the engine's step graph, the
//! one path that plans, applies and destroys them (an older walk of the same
//! specs, `ensure`, was removed: a fix in one path did not reach the other).

use crate::cluster::ClusterSpec;
use crate::elastic_ip::ElasticIpSpec;
use crate::error::{AwsError, ErrorKind, Result};
use crate::iam_role::RoleSpec;
use crate::internet_gateway::InternetGatewaySpec;
use crate::kms_key::{KmsKeySpec, Retention};
use crate::nat_gateway::NatGatewaySpec;
use crate::node_group::NodeGroupSpec;
use crate::oidc_provider::OidcProviderSpec;
use crate::route_table::{RouteTableSpec, RouteTarget};
use crate::security_group::{Rule, SecurityGroupSpec};
use crate::subnet::{SubnetSpec, Tier};
use crate::tags::{Environment, Tags};
use crate::vpc::VpcSpec;
use std::collections::{BTreeMap, BTreeSet};
use taskctl_core::profile::builtins::SUPPORTED_KUBERNETES;
use taskctl_core::profile::{IN_CLUSTER_VAULT_ACCOUNT, NatGateways, Profile};

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
    /// With an in-cluster Vault ([`Profile::vault_in_cluster`]): its
    /// auto-unseal key, and the role its pods assume to use it.
    pub vault_seal: Option<VaultSealSpec>,
}

/// What the in-cluster Vault's `seal "awskms"` needs: a KMS key, the
/// cluster's IAM OIDC provider, and a role the Vault service account may
/// assume (IRSA) that may use that key only.
#[derive(Debug, Clone)]
pub struct VaultSealSpec {
    pub key: KmsKeySpec,
    pub oidc_provider: OidcProviderSpec,
    pub role: RoleSpec,
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
            vault_seal: profile.vault_in_cluster().then(|| {
                let (namespace, account) = IN_CLUSTER_VAULT_ACCOUNT;
                VaultSealSpec {
                    // Destroy keeps it unless told otherwise (the provider's
                    // `delete_data`).
                    key: KmsKeySpec::vault_unseal(tags("kms-key/vault-unseal"), Retention::Keep),
                    oidc_provider: OidcProviderSpec::for_cluster(tags("oidc-provider/cluster")),
                    role: RoleSpec::vault(tags("iam-role/vault"), namespace, account),
                }
            }),
            environment: env,
        })
    }
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
}
