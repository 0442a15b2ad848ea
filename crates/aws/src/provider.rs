//! The `aws` target as an engine [`Provider`]: preflight, and the
//! infrastructure layer as one engine step per AWS resource.
//!
//! ```text
//! aws/environment ─┬─ iam-role/cluster ───────────────────────────────┐
//!                  ├─ iam-role/node ───────────────────────────────┐  │
//!                  ├─ elastic-ip/nat/<zone> ─┐                     │  │
//!                  └─ vpc ─┬─ subnet/public/<zone> ─┴─ nat-gateway/<zone>
//!                          ├─ subnet/private/<zone>  │             │  │
//!                          ├─ internet-gateway       ├─ route-table/…  │
//!                          └─ security-group/cluster ┴──────── cluster ─ node-group/<name>
//!
//! with an in-cluster Vault (its auto-unseal, `seal "awskms"`):
//! aws/environment ── kms-key/vault-unseal ─────────┐
//!            cluster ── oidc-provider/cluster ─────┴─ iam-role/vault
//! ```
//!
//! Each step observes its resource by tags, diffs it against the profile and
//! creates or updates it; ids it needs (the VPC id of a subnet, the subnets
//! of a cluster) come from its dependencies' outputs. So the engine journals
//! every resource's intent and outcome, runs independent resources in
//! parallel (both zones' NAT gateways wait together; the IAM roles are made
//! while the network is), and a re-run after a kill resumes at the resource
//! that was in flight. This is the only path: the CLI and the crate's tests
//! go through these steps.
//!
//! Replacements (a changed VPC CIDR) are reported, never performed:
//! destroying a cluster or a VPC is the user's decision. `aws/environment`
//! is the root every resource hangs from: it changes nothing on deploy and,
//! on destroy, runs last and sweeps whatever still carries the
//! environment's tags (left by an interrupted run or by in-cluster
//! controllers).

use crate::Aws;
use crate::cluster::{self, ClusterSpec, ClusterState};
use crate::destroy::{DestroyOptions, sweep};
use crate::diff::{FieldDiff as AwsDiff, needs_replacement};
use crate::ecr::image::{self as ecr_image, ImageSpec, ImageState};
use crate::ecr::repository::{self as ecr_repository, RepositorySpec, RepositoryState};
use crate::elastic_ip::{self, ElasticIpSpec, ElasticIpState};
use crate::error::{AwsError, ErrorKind as AwsKind, Result as AwsResult};
use crate::iam_role::{self, RoleSpec, RoleState, Trust};
use crate::internet_gateway::{self, InternetGatewaySpec, InternetGatewayState};
use crate::kms_key::{self, KmsKeySpec, KmsKeyState, Retention};
use crate::nat_gateway::{self, NatGatewaySpec, NatGatewayState};
use crate::node_group::{self, NodeGroupSpec, NodeGroupState};
use crate::oidc_provider::{self, OidcProviderSpec, OidcProviderState};
use crate::route_table::{self, RouteTableSpec, RouteTableState, RouteTarget};
use crate::security_group::{self, SecurityGroupSpec, SecurityGroupState};
use crate::stack::StackSpec;
use crate::subnet::{self, SubnetSpec, SubnetState, Tier};
use crate::tags::Environment;
use crate::vpc::{self, VpcSpec, VpcState};
use crate::wait::{Progress, WaitOptions};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use taskctl_core::engine::{
    Action, Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::ops::{Finding, Layer, OpsError, Provider, Scope};
use taskctl_core::profile::Profile;

pub struct AwsProvider {
    aws: Arc<Aws>,
    /// `destroy --delete-data`: destroy schedules the deletion of the
    /// Vault unseal key too (kept otherwise, see [`crate::kms_key`]).
    delete_data: bool,
}

impl AwsProvider {
    /// Clients from the standard AWS environment (credential chain,
    /// `AWS_PROFILE`, `AWS_ENDPOINT_URL…`) for `region`.
    pub async fn from_env(region: &str) -> Result<Self, AwsError> {
        Ok(AwsProvider {
            aws: Arc::new(Aws::from_env(region).await?),
            delete_data: false,
        })
    }

    /// With `yes`, destroy also schedules the deletion of what only data
    /// needs (the Vault unseal key).
    pub fn delete_data(mut self, yes: bool) -> Self {
        self.delete_data = yes;
        self
    }

    /// The clients the steps use.
    pub fn aws(&self) -> &Arc<Aws> {
        &self.aws
    }
}

/// The id of the step that makes the EKS cluster; its outputs are
/// `name`, `arn`, `endpoint` and `certificate_authority`
/// ([`crate::access::ClusterAccess::from_outputs`]).
pub const CLUSTER_STEP: &str = "aws/cluster";

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        "aws"
    }

    fn layers(&self) -> Vec<Layer> {
        vec![Layer::Infrastructure]
    }

    async fn preflight(&self, profile: &Profile, _scope: &Scope) -> Result<Vec<Finding>, OpsError> {
        Ok(crate::preflight(&self.aws, profile)
            .await
            .into_iter()
            .map(|f| Finding {
                severity: f.severity,
                check: f.check.to_string(),
                message: f.message,
            })
            .collect())
    }

    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        if !scope.includes(Layer::Infrastructure) {
            return Ok(Vec::new());
        }
        // The run tag is set per run (see `Resource::spec`); the empty one
        // given here never reaches AWS.
        let mut spec =
            StackSpec::from_profile(profile, "").map_err(|e| OpsError::Provider(e.to_string()))?;
        if self.delete_data
            && let Some(seal) = &mut spec.vault_seal
        {
            seal.key.retention = Retention::ScheduleDeletion;
        }
        Ok(steps(&self.aws, spec))
    }
}

/// The step id of a resource: `aws/` and its logical id.
fn id(resource: &str) -> StepId {
    StepId::new(format!("aws/{resource}"))
}

/// The step every resource of the infrastructure hangs from.
pub const ROOT: &str = "aws/environment";

/// The step graph of a stack.
pub fn steps(aws: &Arc<Aws>, spec: StackSpec) -> Vec<Arc<dyn Step>> {
    let root = StepId::new(ROOT);
    let vpc = id(&spec.vpc.tags.resource);
    let igw = id(&spec.internet_gateway.tags.resource);
    let cluster_role = id(&spec.cluster_role.tags.resource);
    let node_role = id(&spec.node_role.tags.resource);
    let sg = id(&spec.security_group.tags.resource);
    let cluster = id(&spec.cluster.tags.resource);
    let subnet_of = |tier: Tier, zone: &str| {
        spec.subnets
            .iter()
            .find(|s| s.tier == tier && s.zone == zone)
            .map(|s| id(&s.tags.resource))
    };
    let subnets_of = |tier: Option<Tier>| -> Vec<StepId> {
        spec.subnets
            .iter()
            .filter(|s| tier.is_none_or(|t| s.tier == t))
            .map(|s| id(&s.tags.resource))
            .collect()
    };
    let nat_of_zone: Vec<(String, StepId)> = spec
        .nat_gateways
        .iter()
        .map(|(_, n)| (n.zone.clone(), id(&n.tags.resource)))
        .collect();

    let mut out: Vec<Arc<dyn Step>> = vec![Arc::new(Root {
        id: root.clone(),
        aws: aws.clone(),
        environment: spec.environment.clone(),
    })];
    let mut add = |step: Arc<dyn Step>| out.push(step);
    let short = Duration::from_secs(5 * 60);

    for role in [&spec.cluster_role, &spec.node_role] {
        add(Arc::new(Resource::<Role> {
            id: id(&role.tags.resource),
            aws: aws.clone(),
            spec: role.clone(),
            deps: vec![root.clone()],
            wire: Box::new(|_, _| Ok(())),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
    }
    add(Arc::new(Resource::<Vpc> {
        id: vpc.clone(),
        aws: aws.clone(),
        spec: spec.vpc.clone(),
        deps: vec![root.clone()],
        wire: Box::new(|_, _| Ok(())),
        timeout: short,
        attempts: AtomicU32::new(0),
    }));
    for s in &spec.subnets {
        let vpc = vpc.clone();
        add(Arc::new(Resource::<Subnet> {
            id: id(&s.tags.resource),
            aws: aws.clone(),
            spec: s.clone(),
            deps: vec![vpc.clone()],
            wire: Box::new(move |spec, ctx| {
                spec.vpc_id = need(ctx, &vpc, "vpc_id")?;
                Ok(())
            }),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
    }
    {
        let vpc = vpc.clone();
        add(Arc::new(Resource::<Igw> {
            id: igw.clone(),
            aws: aws.clone(),
            spec: spec.internet_gateway.clone(),
            deps: vec![vpc.clone()],
            wire: Box::new(move |spec, ctx| {
                spec.vpc_id = need(ctx, &vpc, "vpc_id")?;
                Ok(())
            }),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
    }
    for (eip, nat) in &spec.nat_gateways {
        let eip_id = id(&eip.tags.resource);
        add(Arc::new(Resource::<Eip> {
            id: eip_id.clone(),
            aws: aws.clone(),
            spec: eip.clone(),
            deps: vec![root.clone()],
            wire: Box::new(|_, _| Ok(())),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
        let subnet = subnet_of(Tier::Public, &nat.zone).unwrap_or_else(|| vpc.clone());
        let deps = vec![eip_id.clone(), subnet.clone()];
        add(Arc::new(Resource::<Nat> {
            id: id(&nat.tags.resource),
            aws: aws.clone(),
            spec: nat.clone(),
            deps,
            wire: Box::new(move |spec, ctx| {
                spec.allocation_id = need(ctx, &eip_id, "allocation_id")?;
                spec.subnet_id = need(ctx, &subnet, "subnet_id")?;
                Ok(())
            }),
            timeout: Duration::from_secs(12 * 60),
            attempts: AtomicU32::new(0),
        }));
    }
    {
        let public = subnets_of(Some(Tier::Public));
        let mut deps = vec![vpc.clone(), igw.clone()];
        deps.extend(public.iter().cloned());
        let (vpc, igw) = (vpc.clone(), igw.clone());
        add(Arc::new(Resource::<Routes> {
            id: id(&spec.public_route_table.tags.resource),
            aws: aws.clone(),
            spec: spec.public_route_table.clone(),
            deps,
            wire: Box::new(move |spec, ctx| {
                spec.vpc_id = need(ctx, &vpc, "vpc_id")?;
                spec.default_route =
                    RouteTarget::InternetGateway(need(ctx, &igw, "internet_gateway_id")?);
                spec.subnet_ids = public
                    .iter()
                    .map(|s| need(ctx, s, "subnet_id"))
                    .collect::<Result<_, _>>()?;
                Ok(())
            }),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
    }
    for rt in &spec.private_route_tables {
        let zone = rt
            .tags
            .resource
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let nat = nat_of_zone
            .iter()
            .find(|(z, _)| *z == zone)
            .or(nat_of_zone.first())
            .map(|(_, n)| n.clone());
        let private = subnet_of(Tier::Private, &zone);
        let mut deps = vec![vpc.clone()];
        deps.extend(nat.iter().cloned());
        deps.extend(private.iter().cloned());
        let vpc = vpc.clone();
        add(Arc::new(Resource::<Routes> {
            id: id(&rt.tags.resource),
            aws: aws.clone(),
            spec: rt.clone(),
            deps,
            wire: Box::new(move |spec, ctx| {
                spec.vpc_id = need(ctx, &vpc, "vpc_id")?;
                if let Some(nat) = &nat {
                    spec.default_route = RouteTarget::NatGateway(need(ctx, nat, "nat_gateway_id")?);
                }
                spec.subnet_ids = private
                    .iter()
                    .map(|s| need(ctx, s, "subnet_id"))
                    .collect::<Result<_, _>>()?;
                Ok(())
            }),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
    }
    {
        let vpc = vpc.clone();
        add(Arc::new(Resource::<Sg> {
            id: sg.clone(),
            aws: aws.clone(),
            spec: spec.security_group.clone(),
            deps: vec![vpc.clone()],
            wire: Box::new(move |spec, ctx| {
                spec.vpc_id = need(ctx, &vpc, "vpc_id")?;
                Ok(())
            }),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
    }
    {
        let all = subnets_of(None);
        let mut deps = vec![cluster_role.clone(), sg.clone()];
        deps.extend(all.iter().cloned());
        let (role, sg) = (cluster_role.clone(), sg.clone());
        add(Arc::new(Resource::<Cluster> {
            id: cluster.clone(),
            aws: aws.clone(),
            spec: spec.cluster.clone(),
            deps,
            wire: Box::new(move |spec, ctx| {
                spec.role_arn = need(ctx, &role, "arn")?;
                spec.security_group_ids = [need(ctx, &sg, "group_id")?].into();
                spec.subnet_ids = all
                    .iter()
                    .map(|s| need(ctx, s, "subnet_id"))
                    .collect::<Result<_, _>>()?;
                Ok(())
            }),
            // Up to 25 minutes for EKS, with room for retries.
            timeout: Duration::from_secs(30 * 60),
            attempts: AtomicU32::new(0),
        }));
    }
    for group in &spec.node_groups {
        let private = subnets_of(Some(Tier::Private));
        let mut deps = vec![cluster.clone(), node_role.clone()];
        deps.extend(private.iter().cloned());
        let (cluster, role) = (cluster.clone(), node_role.clone());
        add(Arc::new(Resource::<NodeGroup> {
            id: id(&group.tags.resource),
            aws: aws.clone(),
            spec: group.clone(),
            deps,
            wire: Box::new(move |spec, ctx| {
                // Without a cluster there is nothing to look in: the group
                // is new.
                need(ctx, &cluster, "name")?;
                spec.node_role_arn = need(ctx, &role, "arn")?;
                spec.subnet_ids = private
                    .iter()
                    .map(|s| need(ctx, s, "subnet_id"))
                    .collect::<Result<BTreeSet<_>, _>>()?;
                Ok(())
            }),
            timeout: Duration::from_secs(25 * 60),
            attempts: AtomicU32::new(0),
        }));
    }
    if let Some(seal) = &spec.vault_seal {
        let key = id(&seal.key.tags.resource);
        let oidc = id(&seal.oidc_provider.tags.resource);
        add(Arc::new(Resource::<Key> {
            id: key.clone(),
            aws: aws.clone(),
            spec: seal.key.clone(),
            deps: vec![root.clone()],
            wire: Box::new(|_, _| Ok(())),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
        {
            let cluster = cluster.clone();
            add(Arc::new(Resource::<Oidc> {
                id: oidc.clone(),
                aws: aws.clone(),
                spec: seal.oidc_provider.clone(),
                deps: vec![cluster.clone()],
                wire: Box::new(move |spec, ctx| {
                    spec.url = need(ctx, &cluster, "oidc_issuer")?;
                    Ok(())
                }),
                timeout: short,
                attempts: AtomicU32::new(0),
            }));
        }
        let cluster = cluster.clone();
        add(Arc::new(Resource::<Role> {
            id: id(&seal.role.tags.resource),
            aws: aws.clone(),
            spec: seal.role.clone(),
            deps: vec![oidc.clone(), key.clone(), cluster.clone()],
            wire: Box::new(move |spec, ctx| {
                if let Trust::ServiceAccount {
                    provider_arn,
                    issuer,
                    ..
                } = &mut spec.trust
                {
                    *provider_arn = need(ctx, &oidc, "arn")?;
                    *issuer = need(ctx, &cluster, "oidc_issuer")?;
                }
                spec.inline.insert(
                    iam_role::VAULT_UNSEAL_POLICY.into(),
                    iam_role::vault_unseal_policy(&need(ctx, &key, "arn")?),
                );
                Ok(())
            }),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
    }
    out
}

/// A dependency's output that is not there: the dependency does not exist
/// yet (planning a new environment).
struct Missing(String);

fn need(ctx: &StepContext, dep: &StepId, key: &str) -> Result<String, Missing> {
    ctx.dep_output(dep, key)
        .map(str::to_owned)
        .ok_or_else(|| Missing(format!("{dep} does not exist yet")))
}

/// An AWS error as the engine's: its kind kept, so throttling and
/// transient failures are retried, with the request id.
pub fn step_error(e: AwsError) -> StepError {
    let kind = match e.kind {
        AwsKind::NotFound => ErrorKind::NotFound,
        AwsKind::AlreadyExists => ErrorKind::AlreadyExists,
        AwsKind::Throttled => ErrorKind::Throttled,
        AwsKind::Denied => ErrorKind::Denied,
        AwsKind::Conflict => ErrorKind::Conflict,
        AwsKind::Transient => ErrorKind::Transient,
        AwsKind::Invalid => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    };
    let request_id = e.request_id.clone();
    StepError {
        kind,
        message: e.to_string(),
        request_id,
    }
}

fn report(ctx: &StepContext) -> impl FnMut(&Progress) + Send + '_ {
    move |p: &Progress| {
        ctx.progress(&format!(
            "waiting for {}: {} ({}s)",
            p.resource,
            p.status,
            p.elapsed.as_secs()
        ))
    }
}

/// One kind of AWS resource, as the resource modules implement it.
#[async_trait]
trait Kind: Send + Sync + 'static {
    type Spec: Clone + Send + Sync + 'static;
    type State: Send + Sync;
    /// For display: `vpc`, `nat-gateway`.
    const NAME: &'static str;

    fn tags_mut(spec: &mut Self::Spec) -> &mut crate::tags::Tags;
    async fn find(aws: &Aws, spec: &Self::Spec) -> AwsResult<Option<Self::State>>;
    async fn create(aws: &Aws, spec: &Self::Spec) -> AwsResult<Self::State>;
    fn diff(spec: &Self::Spec, state: &Self::State) -> Vec<AwsDiff>;
    async fn update(aws: &Aws, spec: &Self::Spec, state: &Self::State) -> AwsResult<Self::State>;
    /// What dependents need: ids, ARNs, names.
    fn outputs(state: &Self::State) -> Outputs;
    /// Waits until a new or changed resource can be used.
    async fn settle(
        _aws: &Aws,
        _spec: &Self::Spec,
        state: Self::State,
        _changed: bool,
        _ctx: &StepContext,
    ) -> AwsResult<Self::State> {
        Ok(state)
    }
    /// Removes it, waiting where AWS deletes asynchronously.
    async fn delete(aws: &Aws, state: &Self::State, ctx: &StepContext) -> AwsResult<()>;
}

fn outputs<const N: usize>(pairs: [(&str, &str); N]) -> Outputs {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Retries a deletion AWS refuses while a dependency is still going away
/// (`DependencyViolation`): the engine removes dependents first, but AWS
/// releases their network interfaces a little later.
async fn patiently<F, Fut>(mut op: F) -> AwsResult<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = AwsResult<()>>,
{
    let options = WaitOptions::new(Duration::from_secs(5 * 60));
    let started = Instant::now();
    let mut interval = Duration::from_millis(500);
    loop {
        match op().await {
            Err(e) if e.kind == AwsKind::Conflict && started.elapsed() < options.timeout => {
                tokio::time::sleep(interval).await;
                interval = (interval * 2).min(options.max_interval);
            }
            other => return other,
        }
    }
}

struct Role;
struct Vpc;
struct Subnet;
struct Igw;
struct Eip;
struct Nat;
struct Routes;
struct Sg;
struct Cluster;
struct NodeGroup;
struct Key;
struct Oidc;
struct EcrRepo;
struct EcrImage;

/// A kind whose find, create, diff and update are its module's functions;
/// the rest of the impl (outputs, delete, and settle where AWS is slow) is
/// given. One macro so `#[async_trait]` sees every method at once.
macro_rules! kind_impl {
    ($ty:ident, $name:literal, $module:ident, $spec:ty, $state:ty; $($rest:tt)*) => {
        #[async_trait]
        impl Kind for $ty {
            type Spec = $spec;
            type State = $state;
            const NAME: &'static str = $name;

            fn tags_mut(spec: &mut $spec) -> &mut crate::tags::Tags {
                &mut spec.tags
            }
            async fn find(aws: &Aws, spec: &$spec) -> AwsResult<Option<$state>> {
                $module::find(aws, spec).await
            }
            async fn create(aws: &Aws, spec: &$spec) -> AwsResult<$state> {
                $module::create(aws, spec).await
            }
            fn diff(spec: &$spec, state: &$state) -> Vec<AwsDiff> {
                $module::diff(spec, state)
            }
            async fn update(aws: &Aws, spec: &$spec, state: &$state) -> AwsResult<$state> {
                $module::update(aws, spec, state).await
            }
            $($rest)*
        }
    };
}

/// The plain kinds: ready at once, deleted by id.
macro_rules! kind {
    ($ty:ident, $name:literal, $module:ident, $spec:ty, $state:ty,
     |$s:ident| $outputs:expr, |$aws:ident, $st:ident| $delete:expr) => {
        kind_impl!($ty, $name, $module, $spec, $state;
            fn outputs($s: &$state) -> Outputs {
                $outputs
            }
            async fn delete($aws: &Aws, $st: &$state, _ctx: &StepContext) -> AwsResult<()> {
                $delete
            }
        );
    };
}

kind!(
    Role,
    "iam-role",
    iam_role,
    RoleSpec,
    RoleState,
    |s| outputs([("arn", &s.arn), ("name", &s.role_name)]),
    |aws, s| iam_role::delete(aws, &s.role_name).await
);
kind!(
    Vpc,
    "vpc",
    vpc,
    VpcSpec,
    VpcState,
    |s| outputs([("vpc_id", &s.vpc_id)]),
    |aws, s| patiently(|| vpc::delete(aws, &s.vpc_id)).await
);
kind!(
    Subnet,
    "subnet",
    subnet,
    SubnetSpec,
    SubnetState,
    |s| outputs([("subnet_id", &s.subnet_id)]),
    |aws, s| patiently(|| subnet::delete(aws, &s.subnet_id)).await
);
kind!(
    Igw,
    "internet-gateway",
    internet_gateway,
    InternetGatewaySpec,
    InternetGatewayState,
    |s| outputs([("internet_gateway_id", &s.internet_gateway_id)]),
    |aws, s| patiently(|| internet_gateway::delete(aws, s)).await
);
kind!(
    Eip,
    "elastic-ip",
    elastic_ip,
    ElasticIpSpec,
    ElasticIpState,
    |s| outputs([("allocation_id", &s.allocation_id)]),
    |aws, s| patiently(|| elastic_ip::delete(aws, &s.allocation_id)).await
);
kind!(
    Routes,
    "route-table",
    route_table,
    RouteTableSpec,
    RouteTableState,
    |s| outputs([("route_table_id", &s.route_table_id)]),
    |aws, s| patiently(|| route_table::delete(aws, s)).await
);
kind!(
    Sg,
    "security-group",
    security_group,
    SecurityGroupSpec,
    SecurityGroupState,
    |s| outputs([("group_id", &s.group_id)]),
    |aws, s| patiently(|| security_group::delete(aws, &s.group_id)).await
);

kind!(
    Oidc,
    "iam-oidc-provider",
    oidc_provider,
    OidcProviderSpec,
    OidcProviderState,
    |s| outputs([("arn", &s.arn), ("url", &s.url)]),
    |aws, s| oidc_provider::delete(aws, &s.arn).await
);

kind_impl!(EcrRepo, "ecr-repository", ecr_repository, RepositorySpec, RepositoryState;
    fn outputs(s: &RepositoryState) -> Outputs {
        outputs([("name", &s.name), ("uri", &s.uri), ("arn", &s.arn)])
    }
    async fn delete(aws: &Aws, state: &RepositoryState, ctx: &StepContext) -> AwsResult<()> {
        let done = ecr_repository::delete(aws, state).await?;
        ctx.progress(&done);
        Ok(())
    }
);

kind_impl!(EcrImage, "ecr-image", ecr_image, ImageSpec, ImageState;
    fn outputs(s: &ImageState) -> Outputs {
        let mut out = outputs([("digest", &s.digest), ("tag", &s.tag)]);
        if let Some(scan) = &s.scan {
            out.insert("scan".into(), scan.summary());
        }
        out
    }
    /// Images go with their repository (or its lifecycle policy).
    async fn delete(_aws: &Aws, _state: &ImageState, _ctx: &StepContext) -> AwsResult<()> {
        Ok(())
    }
);

/// An agent image to push into the agent's ECR repository.
#[derive(Debug, Clone)]
pub struct AgentImage {
    pub agent: String,
    pub image: Arc<crate::ecr::OciImage>,
    /// The tag it is pushed under ([`crate::ecr::OciImage::tag`]).
    pub tag: String,
    /// Images the repository keeps.
    pub keep_images: u32,
    /// `target.aws.image_scan.fail_on`.
    pub fail_on: Option<taskctl_core::profile::model::ScanSeverity>,
}

/// The steps that put each agent's image in ECR: `aws/ecr-repository/<agent>`
/// and `aws/ecr-image/<agent>`. Apart from the infrastructure's graph, so
/// a deploy of the in-cluster layers alone still pushes what it deploys;
/// with `delete_data`, destroy deletes the repositories. The repository
/// steps depend on `after` (the caller's choice: the cluster step).
pub fn image_steps(
    aws: &Arc<Aws>,
    environment: &Environment,
    images: &[AgentImage],
    delete_data: bool,
    after: &[StepId],
) -> Vec<Arc<dyn Step>> {
    let mut out: Vec<Arc<dyn Step>> = Vec::new();
    let short = Duration::from_secs(5 * 60);
    for i in images {
        let repo_resource = format!("ecr-repository/{}", i.agent);
        let repo = id(&repo_resource);
        let retention = if delete_data {
            crate::ecr::Retention::Delete
        } else {
            crate::ecr::Retention::Keep
        };
        out.push(Arc::new(Resource::<EcrRepo> {
            id: repo.clone(),
            aws: aws.clone(),
            spec: RepositorySpec::agent(
                crate::tags::Tags::new(environment, repo_resource.as_str(), ""),
                &i.agent,
                i.keep_images,
                retention,
            ),
            deps: after.to_vec(),
            wire: Box::new(|_, _| Ok(())),
            timeout: short,
            attempts: AtomicU32::new(0),
        }));
        let image_resource = format!("ecr-image/{}", i.agent);
        out.push(Arc::new(Resource::<EcrImage> {
            id: id(&image_resource),
            aws: aws.clone(),
            spec: ImageSpec {
                repository: String::new(),
                tag: i.tag.clone(),
                image: i.image.clone(),
                tags: crate::tags::Tags::new(environment, image_resource.as_str(), ""),
                fail_on: i.fail_on,
            },
            deps: vec![repo.clone()],
            wire: Box::new(move |spec, ctx| {
                spec.repository = need(ctx, &repo, "name")?;
                Ok(())
            }),
            // A 12 MB binary in 10 MB parts, then the scan: minutes.
            timeout: crate::ecr::image::SCAN_TIMEOUT + Duration::from_secs(15 * 60),
            attempts: AtomicU32::new(0),
        }));
    }
    out
}

kind_impl!(Key, "kms-key", kms_key, KmsKeySpec, KmsKeyState;
    fn outputs(s: &KmsKeyState) -> Outputs {
        outputs([("key_id", &s.key_id), ("arn", &s.arn)])
    }
    async fn delete(aws: &Aws, state: &KmsKeyState, ctx: &StepContext) -> AwsResult<()> {
        let done = kms_key::delete(aws, state).await?;
        ctx.progress(&done);
        Ok(())
    }
);

kind_impl!(Nat, "nat-gateway", nat_gateway, NatGatewaySpec, NatGatewayState;
    fn outputs(s: &NatGatewayState) -> Outputs {
        outputs([("nat_gateway_id", &s.nat_gateway_id)])
    }
    async fn settle(
        aws: &Aws,
        _spec: &NatGatewaySpec,
        state: NatGatewayState,
        _changed: bool,
        ctx: &StepContext,
    ) -> AwsResult<NatGatewayState> {
        if state.state == "available" {
            return Ok(state);
        }
        let wait = WaitOptions::new(Duration::from_secs(10 * 60));
        nat_gateway::wait_available(aws, &state.nat_gateway_id, wait, &mut report(ctx)).await
    }
    async fn delete(aws: &Aws, state: &NatGatewayState, ctx: &StepContext) -> AwsResult<()> {
        let wait = WaitOptions::new(Duration::from_secs(10 * 60));
        nat_gateway::delete(aws, &state.nat_gateway_id, wait, &mut report(ctx)).await
    }
);

kind_impl!(Cluster, "eks-cluster", cluster, ClusterSpec, ClusterState;
    fn outputs(s: &ClusterState) -> Outputs {
        let mut out = outputs([("name", &s.name), ("arn", &s.arn)]);
        if let Some(issuer) = &s.oidc_issuer {
            out.insert("oidc_issuer".into(), issuer.clone());
        }
        if let Some(endpoint) = &s.endpoint {
            out.insert("endpoint".into(), endpoint.clone());
        }
        if let Some(ca) = &s.certificate_authority {
            out.insert("certificate_authority".into(), ca.clone());
        }
        out
    }
    async fn settle(
        aws: &Aws,
        spec: &ClusterSpec,
        state: ClusterState,
        changed: bool,
        ctx: &StepContext,
    ) -> AwsResult<ClusterState> {
        // An update leaves the cluster UPDATING, and EKS takes one change
        // at a time: node groups wait for ACTIVE.
        if state.status == "ACTIVE" && !changed {
            return Ok(state);
        }
        let wait = WaitOptions::new(Duration::from_secs(25 * 60));
        cluster::wait_active(aws, &spec.name, wait, &mut report(ctx)).await
    }
    async fn delete(aws: &Aws, state: &ClusterState, ctx: &StepContext) -> AwsResult<()> {
        let wait = WaitOptions::new(Duration::from_secs(20 * 60));
        cluster::delete(aws, &state.name, wait, &mut report(ctx)).await
    }
);

kind_impl!(NodeGroup, "eks-node-group", node_group, NodeGroupSpec, NodeGroupState;
    fn outputs(s: &NodeGroupState) -> Outputs {
        outputs([("name", &s.name), ("arn", &s.arn)])
    }
    async fn settle(
        aws: &Aws,
        spec: &NodeGroupSpec,
        state: NodeGroupState,
        changed: bool,
        ctx: &StepContext,
    ) -> AwsResult<NodeGroupState> {
        if state.status == "ACTIVE" && !changed {
            return Ok(state);
        }
        let wait = WaitOptions::new(Duration::from_secs(20 * 60));
        node_group::wait_active(aws, &spec.cluster_name, &spec.name, wait, &mut report(ctx)).await
    }
    async fn delete(aws: &Aws, state: &NodeGroupState, ctx: &StepContext) -> AwsResult<()> {
        let wait = WaitOptions::new(Duration::from_secs(20 * 60));
        node_group::delete(
            aws,
            &state.cluster_name,
            &state.name,
            wait,
            &mut report(ctx),
        )
        .await
    }
);

/// Fills a spec's dependency ids from its dependencies' outputs.
type Wiring<S> = Box<dyn Fn(&mut S, &StepContext) -> Result<(), Missing> + Send + Sync>;

/// One AWS resource as an engine step.
struct Resource<K: Kind> {
    id: StepId,
    aws: Arc<Aws>,
    spec: K::Spec,
    deps: Vec<StepId>,
    wire: Wiring<K::Spec>,
    timeout: Duration,
    /// Calls of `apply` in this process (the engine retries).
    attempts: AtomicU32,
}

enum Observed<S> {
    /// A dependency does not exist yet, so neither can this.
    Blocked(String),
    Absent,
    Present(S),
}

impl<K: Kind> Resource<K> {
    /// The spec for this run: dependency ids filled in, the run's tag set.
    fn spec(&self, ctx: &StepContext) -> Result<K::Spec, Missing> {
        let mut spec = self.spec.clone();
        (self.wire)(&mut spec, ctx)?;
        K::tags_mut(&mut spec).run.clone_from(&ctx.run_id);
        Ok(spec)
    }

    async fn observe(
        &self,
        ctx: &StepContext,
    ) -> Result<(Option<K::Spec>, Observed<K::State>), StepError> {
        let spec = match self.spec(ctx) {
            Ok(spec) => spec,
            Err(Missing(why)) => return Ok((None, Observed::Blocked(why))),
        };
        let state = K::find(&self.aws, &spec).await.map_err(step_error)?;
        Ok((
            Some(spec),
            match state {
                Some(s) => Observed::Present(s),
                None => Observed::Absent,
            },
        ))
    }
}

fn core_diffs(diffs: &[AwsDiff]) -> Vec<FieldDiff> {
    diffs
        .iter()
        .map(|d| {
            let field = if d.replace {
                format!("{} (forces replacement)", d.field)
            } else {
                d.field.clone()
            };
            FieldDiff::new(field, &d.from, &d.to)
        })
        .collect()
}

#[async_trait]
impl<K: Kind> Step for Resource<K> {
    fn id(&self) -> &StepId {
        &self.id
    }

    fn kind(&self) -> &str {
        K::NAME
    }

    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        let (spec, observed) = self.observe(ctx).await?;
        Ok(match (spec, observed) {
            (_, Observed::Blocked(why)) => StepPlan {
                change: Change::create(format!("not found ({why})")),
                outputs: Outputs::new(),
            },
            (_, Observed::Absent) => StepPlan {
                change: Change::create("not found"),
                outputs: Outputs::new(),
            },
            (Some(spec), Observed::Present(state)) => {
                let diffs = K::diff(&spec, &state);
                let mut change = if diffs.is_empty() {
                    Change::none()
                } else {
                    Change::update(core_diffs(&diffs))
                };
                if needs_replacement(&diffs) {
                    change.reason = format!(
                        "{}; AWS cannot change this in place, so taskctl leaves it as it is (destroy and deploy to replace it)",
                        change.reason
                    );
                }
                StepPlan {
                    change,
                    outputs: K::outputs(&state),
                }
            }
            (None, Observed::Present(_)) => unreachable!("a resource is only observed with a spec"),
        })
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        // The engine hands over the plan it made a moment ago under this
        // run's lock: when it found nothing, the first attempt creates
        // without looking again. A retry looks first, since a call that
        // failed in transit may have succeeded.
        let first = self.attempts.fetch_add(1, Ordering::SeqCst) == 0;
        let (spec, observed) =
            if first && plan.change.action == Action::Create && plan.outputs.is_empty() {
                match self.spec(ctx) {
                    Ok(spec) => (Some(spec), Observed::Absent),
                    Err(Missing(why)) => (None, Observed::Blocked(why)),
                }
            } else {
                self.observe(ctx).await?
            };
        let (spec, state, changed) = match (spec, observed) {
            (_, Observed::Blocked(why)) => {
                return Err(StepError::new(
                    ErrorKind::Invalid,
                    format!("cannot make {}: {why}", self.id),
                ));
            }
            (Some(spec), Observed::Absent) => {
                let state = K::create(&self.aws, &spec).await.map_err(step_error)?;
                (spec, state, true)
            }
            (Some(spec), Observed::Present(state)) => {
                let diffs = K::diff(&spec, &state);
                if diffs.is_empty() || needs_replacement(&diffs) {
                    (spec, state, false)
                } else {
                    let state = K::update(&self.aws, &spec, &state)
                        .await
                        .map_err(step_error)?;
                    (spec, state, true)
                }
            }
            (None, _) => unreachable!("a resource is only observed with a spec"),
        };
        let state = K::settle(&self.aws, &spec, state, changed, ctx)
            .await
            .map_err(step_error)?;
        Ok(K::outputs(&state))
    }

    async fn destroy(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        // Found by tags alone: dependency ids are not needed to delete.
        let mut spec = self.spec.clone();
        let _ = (self.wire)(&mut spec, ctx);
        match K::find(&self.aws, &spec).await.map_err(step_error)? {
            Some(state) => K::delete(&self.aws, &state, ctx).await.map_err(step_error),
            None => Ok(()),
        }
    }
}

/// The environment itself: nothing to make, and on destroy, after every
/// resource, a sweep of whatever still carries its tags.
struct Root {
    id: StepId,
    aws: Arc<Aws>,
    environment: Environment,
}

#[async_trait]
impl Step for Root {
    fn id(&self) -> &StepId {
        &self.id
    }

    fn kind(&self) -> &str {
        "aws-environment"
    }

    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(45 * 60)
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        Ok(StepPlan {
            change: Change {
                action: Action::NoOp,
                diffs: Vec::new(),
                reason: format!(
                    "resources tagged taskctl:environment={}",
                    self.environment.tag_value()
                ),
            },
            outputs: Outputs::new(),
        })
    }

    async fn apply(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        Ok(Outputs::new())
    }

    async fn destroy(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let swept = sweep(
            &self.aws,
            &self.environment,
            DestroyOptions::new(),
            &mut report(ctx),
        )
        .await
        .map_err(step_error)?;
        if !swept.is_empty() {
            ctx.progress(&format!(
                "removed {} more resource(s) by tag: {}",
                swept.len(),
                swept
                    .iter()
                    .map(|r| format!("{} {}", r.kind, r.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(())
    }
}
