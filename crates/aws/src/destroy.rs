//! The sweep that ends a destroy: the step graph ([`crate::provider`])
//! removes each resource of the profile, dependents first; its root step
//! then runs [`sweep`], which needs only the [`Environment`]: it finds
//! anything still carrying the environment's tags (and the network
//! interfaces and security groups left inside its VPCs), removes it in
//! reverse dependency order, and reports what it removed.
//!
//! Guarantees: idempotent (what is gone is skipped); it waits for NAT
//! gateways, node groups and clusters to be really gone before removing
//! what they depend on. A deletion AWS refuses because a dependency
//! is still going away (`DependencyViolation`) is retried with backoff until
//! the `patience` timeout.

use crate::error::{ErrorKind, Result};
use crate::iam_role::{self, ROLE_PATH};
use crate::internet_gateway::{self, InternetGatewayState};
use crate::route_table;
use crate::tags::{self, Environment};
use crate::wait::{Progress, WaitOptions};
use crate::{
    Aws, AwsError, cluster, elastic_ip, nat_gateway, node_group, security_group, subnet, vpc,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

/// One resource removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// `node-group`, `cluster`, `nat-gateway`, `elastic-ip`,
    /// `network-interface`, `security-group`, `route-table`, `subnet`,
    /// `internet-gateway`, `vpc`, `iam-role`.
    pub kind: &'static str,
    /// AWS id or name.
    pub id: String,
    /// taskctl's logical id, when tagged.
    pub resource: Option<String>,
}

/// Timeouts of teardown.
#[derive(Debug, Clone, Copy)]
pub struct DestroyOptions {
    pub node_group_wait: WaitOptions,
    pub cluster_wait: WaitOptions,
    pub nat_wait: WaitOptions,
    /// How long to retry deletions refused for a dependency still going away.
    pub patience: WaitOptions,
}

impl DestroyOptions {
    pub fn new() -> Self {
        DestroyOptions {
            node_group_wait: WaitOptions::new(Duration::from_secs(20 * 60)),
            cluster_wait: WaitOptions::new(Duration::from_secs(20 * 60)),
            nat_wait: WaitOptions::new(Duration::from_secs(10 * 60)),
            patience: WaitOptions::new(Duration::from_secs(5 * 60)),
        }
    }

    /// Short intervals, for emulators and tests.
    pub fn fast(timeout: Duration) -> Self {
        let w = WaitOptions::fast(timeout);
        DestroyOptions {
            node_group_wait: w,
            cluster_wait: w,
            nat_wait: w,
            patience: w,
        }
    }
}

impl Default for DestroyOptions {
    fn default() -> Self {
        DestroyOptions::new()
    }
}

/// Retries `op` while AWS answers with a conflict (dependency still there).
async fn patiently<F, Fut>(options: WaitOptions, mut op: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let started = Instant::now();
    let mut interval = options.initial_interval;
    loop {
        match op().await {
            Err(e)
                if (e.kind == ErrorKind::Conflict || e.is_retryable())
                    && started.elapsed() + interval <= options.timeout =>
            {
                tracing::debug!(provider = "aws", operation = %e.operation, "dependency still present, retrying");
                tokio::time::sleep(interval).await;
                interval = (interval + interval / 2).min(options.max_interval);
            }
            other => return other,
        }
    }
}

fn resource_of(tags: &BTreeMap<String, String>) -> Option<String> {
    tags.get(tags::RESOURCE).cloned()
}

/// Everything still tagged with `environment`, removed in reverse dependency
/// order; returns what was removed.
pub async fn sweep(
    aws: &Aws,
    environment: &Environment,
    options: DestroyOptions,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Vec<Removed>> {
    let mut removed = Vec::new();
    let filters = environment.filters();

    // EKS: node groups, then clusters.
    let mut clusters = Vec::new();
    let mut token = None;
    loop {
        let out = aws
            .eks
            .list_clusters()
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ListClusters", e))?;
        clusters.extend(out.clusters().iter().cloned());
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    for name in clusters {
        let Some(state) = cluster::describe(aws, &name).await? else {
            continue;
        };
        if !environment.owns(&state.tags) {
            continue;
        }
        let groups = aws
            .eks
            .list_nodegroups()
            .cluster_name(&name)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ListNodegroups", e))?;
        for group in groups.nodegroups() {
            node_group::delete(aws, &name, group, options.node_group_wait, on_progress).await?;
            removed.push(Removed {
                kind: "node-group",
                id: format!("{name}/{group}"),
                resource: None,
            });
        }
        cluster::delete(aws, &name, options.cluster_wait, on_progress).await?;
        removed.push(Removed {
            kind: "cluster",
            id: name,
            resource: resource_of(&state.tags),
        });
    }

    let vpcs = aws
        .ec2
        .describe_vpcs()
        .set_filters(Some(filters.clone()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeVpcs", e))?;
    let vpcs: Vec<(String, Option<String>)> = vpcs
        .vpcs()
        .iter()
        .filter(|v| environment.owns(&tags::from_ec2(v.tags())))
        .filter_map(|v| {
            Some((
                v.vpc_id()?.to_owned(),
                resource_of(&tags::from_ec2(v.tags())),
            ))
        })
        .collect();
    let vpc_ids: Vec<&str> = vpcs.iter().map(|(id, _)| id.as_str()).collect();

    // NAT gateways (tag filters are checked here too: moto ignores them).
    let nats = aws
        .ec2
        .describe_nat_gateways()
        .set_filter(Some(filters.clone()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeNatGateways", e))?;
    for nat in nats.nat_gateways() {
        let tags = tags::from_ec2(nat.tags());
        let state = nat.state().map(|s| s.as_str()).unwrap_or_default();
        if !environment.owns(&tags) || state == "deleted" {
            continue;
        }
        let Some(id) = nat.nat_gateway_id() else {
            continue;
        };
        nat_gateway::delete(aws, id, options.nat_wait, on_progress).await?;
        removed.push(Removed {
            kind: "nat-gateway",
            id: id.to_owned(),
            resource: resource_of(&tags),
        });
    }

    let addresses = aws
        .ec2
        .describe_addresses()
        .set_filters(Some(filters.clone()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeAddresses", e))?;
    for address in addresses.addresses() {
        let tags = tags::from_ec2(address.tags());
        let Some(id) = address.allocation_id().filter(|_| environment.owns(&tags)) else {
            continue;
        };
        patiently(options.patience, || elastic_ip::delete(aws, id)).await?;
        removed.push(Removed {
            kind: "elastic-ip",
            id: id.to_owned(),
            resource: resource_of(&tags),
        });
    }

    // Network interfaces left in the environment's VPCs (or tagged with it)
    // that nothing uses any more.
    if !vpc_ids.is_empty() {
        let enis = aws
            .ec2
            .describe_network_interfaces()
            .filters(tags::filter("vpc-id", &vpc_ids))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeNetworkInterfaces", e))?;
        for eni in enis.network_interfaces() {
            let Some(id) = eni.network_interface_id() else {
                continue;
            };
            if eni
                .attachment()
                .is_some_and(|a| a.attachment_id().is_some())
            {
                tracing::debug!(
                    provider = "aws",
                    network_interface_id = id,
                    "skipping attached interface"
                );
                continue;
            }
            let result = aws
                .ec2
                .delete_network_interface()
                .network_interface_id(id)
                .send()
                .await;
            match result.map_err(|e| AwsError::from_sdk("DeleteNetworkInterface", e)) {
                Ok(_) => removed.push(Removed {
                    kind: "network-interface",
                    id: id.to_owned(),
                    resource: resource_of(&tags::from_ec2(eni.tag_set())),
                }),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }

    // Security groups: tagged ones, and every non-default one in our VPCs.
    let mut groups = aws
        .ec2
        .describe_security_groups()
        .set_filters(Some(filters.clone()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeSecurityGroups", e))?
        .security_groups()
        .iter()
        .filter(|g| environment.owns(&tags::from_ec2(g.tags())))
        .map(security_group::state_of)
        .collect::<Vec<_>>();
    if !vpc_ids.is_empty() {
        let inside = aws
            .ec2
            .describe_security_groups()
            .filters(tags::filter("vpc-id", &vpc_ids))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeSecurityGroups", e))?;
        for g in inside.security_groups() {
            let state = security_group::state_of(g);
            if state.group_name != "default" && !groups.iter().any(|s| s.group_id == state.group_id)
            {
                groups.push(state);
            }
        }
    }
    for g in groups {
        patiently(options.patience, || {
            security_group::delete(aws, &g.group_id)
        })
        .await?;
        removed.push(Removed {
            kind: "security-group",
            id: g.group_id.clone(),
            resource: resource_of(&g.tags),
        });
    }

    let tables = aws
        .ec2
        .describe_route_tables()
        .set_filters(Some(filters.clone()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeRouteTables", e))?;
    for rt in tables.route_tables() {
        let state = route_table::state_of(rt);
        if !environment.owns(&state.tags) || state.main {
            continue;
        }
        route_table::delete(aws, &state).await?;
        removed.push(Removed {
            kind: "route-table",
            id: state.route_table_id.clone(),
            resource: resource_of(&state.tags),
        });
    }

    let igws = aws
        .ec2
        .describe_internet_gateways()
        .set_filters(Some(filters.clone()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeInternetGateways", e))?;
    for igw in igws.internet_gateways() {
        let tags = tags::from_ec2(igw.tags());
        if !environment.owns(&tags) {
            continue;
        }
        let state = InternetGatewayState {
            internet_gateway_id: igw.internet_gateway_id().unwrap_or_default().to_owned(),
            attached_vpcs: igw
                .attachments()
                .iter()
                .filter_map(|a| a.vpc_id().map(str::to_owned))
                .collect(),
            tags: tags.clone(),
        };
        patiently(options.patience, || internet_gateway::delete(aws, &state)).await?;
        removed.push(Removed {
            kind: "internet-gateway",
            id: state.internet_gateway_id.clone(),
            resource: resource_of(&tags),
        });
    }

    let subnets = aws
        .ec2
        .describe_subnets()
        .set_filters(Some(filters.clone()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeSubnets", e))?;
    for s in subnets.subnets() {
        let tags = tags::from_ec2(s.tags());
        let Some(id) = s.subnet_id().filter(|_| environment.owns(&tags)) else {
            continue;
        };
        patiently(options.patience, || subnet::delete(aws, id)).await?;
        removed.push(Removed {
            kind: "subnet",
            id: id.to_owned(),
            resource: resource_of(&tags),
        });
    }

    for (id, resource) in vpcs {
        patiently(options.patience, || vpc::delete(aws, &id)).await?;
        removed.push(Removed {
            kind: "vpc",
            id,
            resource,
        });
    }

    // IAM: taskctl's roles live under one path; their tags say whose they are.
    let mut marker = None;
    let mut roles = Vec::new();
    loop {
        let out = aws
            .iam
            .list_roles()
            .path_prefix(ROLE_PATH)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ListRoles", e))?;
        roles.extend(out.roles().iter().map(|r| r.role_name().to_owned()));
        marker = out.marker().map(str::to_owned);
        if !out.is_truncated() || marker.is_none() {
            break;
        }
    }
    for name in roles {
        let tags = match iam_role::role_tags(aws, &name).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        if !environment.owns(&tags) {
            continue;
        }
        iam_role::delete(aws, &name).await?;
        removed.push(Removed {
            kind: "iam-role",
            id: name,
            resource: resource_of(&tags),
        });
    }
    tracing::info!(provider = "aws", environment = %environment.tag_value(), removed = removed.len(), "sweep done");
    Ok(removed)
}
