//! Route tables: one public (default route to the internet gateway) and one
//! private per zone (default route to that zone's NAT gateway, or the single
//! shared one), each associated with its subnets.
//!
//! Guarantees: [`create`] finds by tags first and tags in the create call.
//! [`update`] repairs the default route (`CreateRoute` or `ReplaceRoute`) and
//! the associations (adds missing, moving a subnet from another table if
//! needed, removes extra) without recreating the table, so traffic is never
//! cut by a re-run.

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, ErrorKind, Result, ignore_not_found};
use crate::tags::{self, Tags};
use crate::wait::settle;
use aws_sdk_ec2::types::{ResourceType, RouteTable};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The destination of the default route.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// Where the default route leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteTarget {
    InternetGateway(String),
    NatGateway(String),
}

impl RouteTarget {
    fn id(&self) -> &str {
        match self {
            RouteTarget::InternetGateway(id) | RouteTarget::NatGateway(id) => id,
        }
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTableSpec {
    /// Filled in once the VPC exists.
    pub vpc_id: String,
    /// Filled in once the gateway exists.
    pub default_route: RouteTarget,
    /// Subnets to associate; filled in once they exist.
    pub subnet_ids: BTreeSet<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    pub association_id: String,
    pub subnet_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTableState {
    pub route_table_id: String,
    pub vpc_id: String,
    pub default_route: Option<RouteTarget>,
    /// Explicit subnet associations (the main association is not listed).
    pub associations: Vec<Association>,
    pub main: bool,
    pub tags: BTreeMap<String, String>,
}

impl RouteTableState {
    pub fn subnet_ids(&self) -> BTreeSet<String> {
        self.associations
            .iter()
            .map(|a| a.subnet_id.clone())
            .collect()
    }
}

pub(crate) fn state_of(rt: &RouteTable) -> RouteTableState {
    let default_route = rt
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE))
        .and_then(|r| {
            if let Some(nat) = r.nat_gateway_id() {
                Some(RouteTarget::NatGateway(nat.to_owned()))
            } else {
                r.gateway_id()
                    .filter(|g| *g != "local")
                    .map(|g| RouteTarget::InternetGateway(g.to_owned()))
            }
        });
    RouteTableState {
        route_table_id: rt.route_table_id().unwrap_or_default().to_owned(),
        vpc_id: rt.vpc_id().unwrap_or_default().to_owned(),
        default_route,
        associations: rt
            .associations()
            .iter()
            .filter(|a| !a.main().unwrap_or(false))
            .filter_map(|a| {
                Some(Association {
                    association_id: a.route_table_association_id()?.to_owned(),
                    subnet_id: a.subnet_id()?.to_owned(),
                })
            })
            .collect(),
        main: rt.associations().iter().any(|a| a.main().unwrap_or(false)),
        tags: tags::from_ec2(rt.tags()),
    }
}

pub async fn find(aws: &Aws, spec: &RouteTableSpec) -> Result<Option<RouteTableState>> {
    let out = aws
        .ec2
        .describe_route_tables()
        .set_filters(Some(spec.tags.identity_filters()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeRouteTables", e))?;
    Ok(out
        .route_tables()
        .iter()
        .map(state_of)
        .find(|s| spec.tags.identifies(&s.tags)))
}

pub async fn create(aws: &Aws, spec: &RouteTableSpec) -> Result<RouteTableState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", resource = %spec.tags.resource, vpc_id = %spec.vpc_id, "creating route table");
    let out = aws
        .ec2
        .create_route_table()
        .vpc_id(&spec.vpc_id)
        .tag_specifications(spec.tags.ec2_spec(ResourceType::RouteTable))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateRouteTable", e))?;
    let state = out.route_table().map(state_of).ok_or_else(|| {
        AwsError::new(
            ErrorKind::Other,
            "CreateRouteTable",
            "AWS returned no route table",
        )
    })?;
    settle(|| update(aws, spec, &state)).await
}

/// Repairs the default route, the associations and the tags.
pub async fn update(
    aws: &Aws,
    spec: &RouteTableSpec,
    state: &RouteTableState,
) -> Result<RouteTableState> {
    let mut state = state.clone();
    let rt_id = state.route_table_id.clone();
    if state.default_route.as_ref() != Some(&spec.default_route) {
        tracing::info!(provider = "aws", route_table_id = %rt_id, target = %spec.default_route, "setting default route");
        let result = if state.default_route.is_none() {
            let request = aws
                .ec2
                .create_route()
                .route_table_id(&rt_id)
                .destination_cidr_block(DEFAULT_ROUTE);
            match &spec.default_route {
                RouteTarget::InternetGateway(id) => request.gateway_id(id),
                RouteTarget::NatGateway(id) => request.nat_gateway_id(id),
            }
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("CreateRoute", e))
        } else {
            let request = aws
                .ec2
                .replace_route()
                .route_table_id(&rt_id)
                .destination_cidr_block(DEFAULT_ROUTE);
            match &spec.default_route {
                RouteTarget::InternetGateway(id) => request.gateway_id(id),
                RouteTarget::NatGateway(id) => request.nat_gateway_id(id),
            }
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("ReplaceRoute", e))
        };
        result?;
        state.default_route = Some(spec.default_route.clone());
    }
    let have = state.subnet_ids();
    for subnet_id in spec.subnet_ids.difference(&have) {
        let association_id = associate(aws, &rt_id, subnet_id).await?;
        state.associations.push(Association {
            association_id,
            subnet_id: subnet_id.clone(),
        });
    }
    let mut kept = Vec::new();
    for association in std::mem::take(&mut state.associations) {
        if spec.subnet_ids.contains(&association.subnet_id) {
            kept.push(association);
        } else {
            disassociate(aws, &association.association_id).await?;
        }
    }
    state.associations = kept;
    crate::ec2_tags::reconcile(aws, &rt_id, &spec.tags, &mut state.tags).await?;
    Ok(state)
}

/// Associates `subnet_id`, moving it from another table if it has one (a
/// subnet has at most one explicit association).
async fn associate(aws: &Aws, rt_id: &str, subnet_id: &str) -> Result<String> {
    let current = aws
        .ec2
        .describe_route_tables()
        .filters(tags::filter("association.subnet-id", &[subnet_id]))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeRouteTables", e))?;
    let existing = current
        .route_tables()
        .iter()
        .flat_map(|t| t.associations())
        .find(|a| a.subnet_id() == Some(subnet_id))
        .and_then(|a| a.route_table_association_id().map(str::to_owned));
    if let Some(association_id) = existing {
        tracing::info!(
            provider = "aws",
            route_table_id = rt_id,
            subnet_id,
            "moving subnet association"
        );
        let out = aws
            .ec2
            .replace_route_table_association()
            .association_id(association_id)
            .route_table_id(rt_id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ReplaceRouteTableAssociation", e))?;
        return Ok(out.new_association_id().unwrap_or_default().to_owned());
    }
    tracing::info!(
        provider = "aws",
        route_table_id = rt_id,
        subnet_id,
        "associating subnet"
    );
    let out = aws
        .ec2
        .associate_route_table()
        .route_table_id(rt_id)
        .subnet_id(subnet_id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("AssociateRouteTable", e))?;
    Ok(out.association_id().unwrap_or_default().to_owned())
}

async fn disassociate(aws: &Aws, association_id: &str) -> Result<()> {
    tracing::info!(
        provider = "aws",
        association_id,
        "disassociating route table"
    );
    ignore_not_found(
        aws.ec2
            .disassociate_route_table()
            .association_id(association_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("DisassociateRouteTable", e)),
    )
}

/// Removes the table's associations, then the table.
pub async fn delete(aws: &Aws, state: &RouteTableState) -> Result<()> {
    for association in &state.associations {
        disassociate(aws, &association.association_id).await?;
    }
    tracing::info!(provider = "aws", route_table_id = %state.route_table_id, "deleting route table");
    ignore_not_found(
        aws.ec2
            .delete_route_table()
            .route_table_id(&state.route_table_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("DeleteRouteTable", e)),
    )
}

pub fn diff(spec: &RouteTableSpec, state: &RouteTableState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if !spec.vpc_id.is_empty() {
        diff::immutable(&mut out, "vpc_id", &state.vpc_id, &spec.vpc_id);
    }
    if !spec.default_route.id().is_empty()
        && state.default_route.as_ref() != Some(&spec.default_route)
    {
        out.push(FieldDiff::update(
            format!("routes.{DEFAULT_ROUTE}"),
            state
                .default_route
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            &spec.default_route,
        ));
    }
    let have = state.subnet_ids();
    if spec.subnet_ids.iter().all(|s| !s.is_empty()) && have != spec.subnet_ids {
        out.push(FieldDiff::update(
            "associations",
            diff::set(&have),
            diff::set(&spec.subnet_ids),
        ));
    }
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Environment;

    fn spec() -> RouteTableSpec {
        RouteTableSpec {
            vpc_id: "vpc-1".into(),
            default_route: RouteTarget::NatGateway("nat-a".into()),
            subnet_ids: ["subnet-a".to_string()].into(),
            tags: Tags::new(
                &Environment::new("ts", "prod"),
                "route-table/private/us-west-2a",
                "r",
            ),
        }
    }

    #[test]
    fn wrong_target_and_missing_association() {
        let state = RouteTableState {
            route_table_id: "rtb-1".into(),
            vpc_id: "vpc-1".into(),
            default_route: Some(RouteTarget::NatGateway("nat-b".into())),
            associations: vec![],
            main: false,
            tags: spec().tags.to_map(),
        };
        assert_eq!(
            diff(&spec(), &state),
            [
                FieldDiff::update("routes.0.0.0.0/0", "nat-b", "nat-a"),
                FieldDiff::update("associations", "{}", "{subnet-a}"),
            ]
        );
        let synced = RouteTableState {
            default_route: Some(RouteTarget::NatGateway("nat-a".into())),
            associations: vec![Association {
                association_id: "rtbassoc-1".into(),
                subnet_id: "subnet-a".into(),
            }],
            ..state
        };
        assert_eq!(diff(&spec(), &synced), []);
    }
}
