//! The `aws` target: the infrastructure of `taskctl-aws` (VPC, EKS cluster,
//! node groups), then the in-cluster layers of `taskctl-kube` on the cluster
//! it made. Neither crate knows the other; this is where they meet.
//!
//! The cluster's client is made when the first in-cluster step needs it:
//! from the cluster step's outputs in a run that created or checked the
//! cluster, else from `DescribeCluster` (for `history`, `rollback`, or a
//! deploy with `--only services`). It authenticates as an EKS kubeconfig
//! does, through this very binary as its credential plugin (`taskctl
//! eks-token`), so a token that expires (after 15 minutes) during a long
//! rollout is renewed by running the plugin again.

use anyhow::Context as _;
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::Arc;
use taskctl_aws::access::{ClusterAccess, cluster_name, describe_access};
use taskctl_aws::provider::{AgentImage, CLUSTER_STEP, image_steps};
use taskctl_aws::{Aws, AwsProvider};
use taskctl_core::engine::{ErrorKind, Step, StepContext, StepError, StepId};
use taskctl_core::events::EventSink;
use taskctl_core::ops::{
    Check, Finding, Layer, OpsError, PodPorts, Provider, ReleaseFacts, Scope, SecretsOrder,
    Workload,
};
use taskctl_core::profile::Profile;
use taskctl_core::release::{Release, ReleaseStore};
use taskctl_kube::cluster::{ExecKubeconfig, client_from_built};
use taskctl_kube::kube;
use taskctl_kube::{Connect, KubeOptions, KubernetesProvider};
use tokio_util::sync::CancellationToken;

/// The `aws` target's provider: infrastructure first, then the cluster's
/// contents, in one step graph.
pub struct EksStack {
    infrastructure: AwsProvider,
    cluster: KubernetesProvider,
    /// The agent images taskctl pushes to ECR (agents with `build: {}`),
    /// or why they cannot be made (preflight says it).
    images: Result<Vec<Pushed>, String>,
    /// `destroy --delete-data`: the ECR repositories go too.
    delete_data: bool,
}

/// An agent image for ECR and the reference the cluster pulls it by.
struct Pushed {
    image: AgentImage,
    /// `<account>.dkr.ecr.<region>.amazonaws.com/<repository>@sha256:…`.
    reference: String,
}

/// Images each agent's ECR repository keeps (its lifecycle policy expires
/// older ones): enough to roll back through every kept release.
const KEEP_IMAGES: u32 = 10;

impl EksStack {
    pub async fn connect(profile: &Profile, mut options: KubeOptions) -> anyhow::Result<EksStack> {
        let target = profile
            .target
            .aws
            .as_ref()
            .context("the profile's target has no `aws.region`")?;
        let infrastructure = AwsProvider::from_env(&target.region)
            .await?
            .delete_data(options.delete_data);
        if profile.vault_in_cluster() {
            // The Vault pods assume the role that may use their unseal key
            // (IRSA): their service account names it, account id included.
            let environment = taskctl_aws::stack::environment_of(profile);
            let arn = taskctl_aws::iam_role::vault_role_arn(infrastructure.aws(), &environment)
                .await
                .context("cannot find the AWS account the in-cluster Vault's IAM role is in")?;
            let (namespace, account) = taskctl_core::profile::IN_CLUSTER_VAULT_ACCOUNT;
            options.annotations.push(taskctl_kube::ExtraAnnotation {
                kind: "ServiceAccount".into(),
                namespace: namespace.into(),
                name: account.into(),
                key: IRSA_ROLE_ANNOTATION.into(),
                value: arn,
            });
        }
        let images = agent_images(infrastructure.aws(), profile).await;
        let connector = EksConnector {
            aws: infrastructure.aws().clone(),
            cluster: cluster_name(profile),
            api_server: target.api_server.clone(),
        };
        let delete_data = options.delete_data;
        Ok(EksStack {
            infrastructure,
            cluster: KubernetesProvider::deferred(Arc::new(connector), options),
            images,
            delete_data,
        })
    }

    /// The profile the cluster's steps deploy: each pushed agent runs its
    /// image from ECR, by digest.
    fn pulled_from_ecr(&self, profile: &Profile) -> Profile {
        let mut profile = profile.clone();
        for pushed in self.images.iter().flatten() {
            if let Some(agent) = profile
                .agents
                .iter_mut()
                .find(|a| a.name == pushed.image.agent)
            {
                agent.image = pushed.reference.clone();
                agent.build = None;
            }
        }
        profile
    }
}

/// The ECR images of the agents with `build: {}` (the static agent binary,
/// packed by taskctl; a Dockerfile build needs a Docker engine, which the
/// `aws` target does not use): each made here from the binary, so its
/// digest, and the reference the cluster pulls, are known before anything
/// is pushed.
async fn agent_images(aws: &Aws, profile: &Profile) -> Result<Vec<Pushed>, String> {
    let wanted: Vec<&taskctl_core::profile::model::Agent> = profile
        .agents
        .iter()
        .filter(|a| a.packs_static_agent())
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let binary = taskctl_docker::image::find_binary().map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&binary)
        .map_err(|e| format!("cannot read the agent binary {}: {e}", binary.display()))?;
    if taskctl_docker::image::is_dynamic_elf(&bytes).map_err(|e| e.to_string())? {
        return Err(format!(
            "{} is linked dynamically, so it cannot be the only file of the agent image; build a static one with `{}`",
            binary.display(),
            taskctl_docker::image::STATIC_BUILD
        ));
    }
    let image = Arc::new(
        taskctl_aws::ecr::OciImage::static_binary(
            "task-executor",
            &bytes,
            &format!("{0}:{0}", taskctl_docker::image::AGENT_USER),
        )
        .map_err(|e| e.to_string())?,
    );
    let environment = taskctl_aws::stack::environment_of(profile);
    let mut out = Vec::new();
    for agent in wanted {
        let repository = taskctl_aws::ecr::repository::RepositorySpec::agent(
            taskctl_aws::Tags::new(&environment, "ecr-repository", ""),
            &agent.name,
            KEEP_IMAGES,
            taskctl_aws::ecr::Retention::Keep,
        );
        let uri = taskctl_aws::ecr::repository::uri(aws, &repository.name)
            .await
            .map_err(|e| {
                format!(
                    "cannot name the ECR repository of agent `{}`: {e}",
                    agent.name
                )
            })?;
        // `task-executor:1.0.0` → tag `1.0.0-<digest>`: the profile's
        // version, and the content's, in a tag that never moves.
        let version = agent
            .image
            .split('@')
            .next()
            .and_then(|n| n.rsplit_once(':'))
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'))
            .unwrap_or("latest");
        out.push(Pushed {
            reference: format!("{uri}@{}", image.digest),
            image: AgentImage {
                agent: agent.name.clone(),
                tag: image.tag(version),
                image: image.clone(),
                keep_images: KEEP_IMAGES,
                fail_on: profile
                    .target
                    .aws
                    .as_ref()
                    .and_then(|a| a.image_scan.as_ref())
                    .map(|s| s.fail_on),
            },
        });
    }
    Ok(out)
}

/// The annotation by which EKS gives a service account's pods the
/// credentials of an IAM role.
pub const IRSA_ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

/// Makes the client of the profile's EKS cluster.
struct EksConnector {
    aws: Arc<Aws>,
    cluster: String,
    api_server: Option<String>,
}

impl EksConnector {
    /// What the cluster step of this run says of the cluster, if it ran.
    fn reported_by_step(&self, ctx: &StepContext) -> Option<ClusterAccess> {
        let step = StepId::new(CLUSTER_STEP);
        // Only the first level depends on the cluster step; the others ask
        // once it has made the client.
        let outputs = ["name", "arn", "endpoint", "certificate_authority"]
            .into_iter()
            .filter_map(|k| Some((k.to_string(), ctx.dep_output(&step, k)?.to_string())))
            .collect();
        ClusterAccess::from_outputs(&outputs, self.aws.region())
    }

    /// What AWS says of the cluster; `None` while it does not exist or has
    /// no endpoint yet.
    async fn described(&self) -> Result<Option<ClusterAccess>, StepError> {
        match describe_access(&self.aws, &self.cluster).await {
            Ok(access) => Ok(Some(access)),
            Err(e) if e.kind == taskctl_aws::ErrorKind::NotFound => Ok(None),
            // Throttling and transient errors keep their kind: retried.
            Err(e) => Err(taskctl_aws::provider::step_error(e)),
        }
    }
}

#[async_trait]
impl Connect for EksConnector {
    async fn connect(&self, ctx: Option<&StepContext>) -> Result<Option<kube::Client>, StepError> {
        let cluster_step = StepId::new(CLUSTER_STEP);
        let known = match ctx {
            // The cluster step ran (or was planned) in this run: it says
            // what exists, and no output means a cluster still to create.
            Some(ctx) if ctx.has_dep(&cluster_step) => self.reported_by_step(ctx),
            _ => self.described().await?,
        };
        let Some(access) = known else {
            return Ok(None);
        };
        let failed = |e: &dyn std::fmt::Display| {
            StepError::new(
                ErrorKind::Other,
                format!("cannot make a client for cluster {}: {e}", access.name),
            )
        };
        let kubeconfig = kubeconfig(&access, self.api_server.as_deref()).map_err(|e| failed(&e))?;
        let client = client_from_built(kubeconfig.build())
            .await
            .map_err(|e| failed(&e))?;
        Ok(Some(client))
    }
}

/// The kubeconfig of an EKS cluster whose credential plugin is this binary
/// (`taskctl eks-token`); with `api_server`, reached at that address (see
/// `target.aws.api_server`).
pub fn kubeconfig(
    access: &ClusterAccess,
    api_server: Option<&str>,
) -> anyhow::Result<ExecKubeconfig> {
    let exe = std::env::current_exe().context("cannot find this taskctl binary's path")?;
    let name = if access.arn.is_empty() {
        access.name.clone()
    } else {
        access.arn.clone()
    };
    let (server, certificate_authority, tls_server_name) = match api_server {
        None => (
            access.endpoint.clone(),
            Some(access.certificate_authority.clone()),
            None,
        ),
        // A plain-http test server (validation allows it on loopback only)
        // has no certificate to check.
        Some(address) if address.starts_with("http://") => (address.to_string(), None, None),
        // A tunnel: the certificate is still the cluster's, for its name.
        Some(address) => {
            let host = url::Url::parse(&access.endpoint)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .with_context(|| {
                    format!("the cluster's endpoint `{}` has no host", access.endpoint)
                })?;
            (
                address.to_string(),
                Some(access.certificate_authority.clone()),
                Some(host),
            )
        }
    };
    Ok(ExecKubeconfig {
        name,
        server,
        certificate_authority_data: certificate_authority,
        tls_server_name,
        command: exe.to_string_lossy().into_owned(),
        args: vec![
            "eks-token".into(),
            "--cluster".into(),
            access.name.clone(),
            "--region".into(),
            access.region.clone(),
        ],
    })
}

#[async_trait]
impl Provider for EksStack {
    fn name(&self) -> &str {
        "aws"
    }

    fn layers(&self) -> Vec<Layer> {
        vec![Layer::Infrastructure, Layer::Services, Layer::Agents]
    }

    async fn preflight(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Finding>, OpsError> {
        let profile = &self.pulled_from_ecr(profile);
        let mut findings = Vec::new();
        if let Err(why) = &self.images
            && scope.includes(Layer::Agents)
        {
            findings.push(Finding {
                severity: taskctl_core::Severity::Error,
                check: "agent_image".into(),
                message: format!("the agent image for ECR cannot be made: {why}"),
            });
        }
        if scope.includes(Layer::Infrastructure) {
            findings.extend(self.infrastructure.preflight(profile, scope).await?);
        }
        if self.cluster.layers().iter().any(|l| scope.includes(*l)) {
            findings.extend(self.cluster.preflight(profile, scope).await?);
        }
        Ok(findings)
    }

    /// The infrastructure's steps, then the cluster's: every in-cluster
    /// step waits for the infrastructure's last steps (node groups
    /// included) and for the cluster step, whose outputs make its client.
    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        let mut steps = self.infrastructure.steps(profile, scope)?;
        // The agents' images are in ECR before anything runs them.
        if scope.includes(Layer::Agents) || scope.includes(Layer::Infrastructure) {
            let images: Vec<AgentImage> = self
                .images
                .iter()
                .flatten()
                .map(|p| p.image.clone())
                .collect();
            // Once the cluster that pulls it is there, when the
            // infrastructure is in this run: pushed while the node groups
            // are made, which the cluster's steps wait for anyway; and on
            // destroy, handled before the cluster goes.
            let root: Vec<StepId> = steps
                .iter()
                .map(|s| s.id().clone())
                .filter(|id| id.as_str() == CLUSTER_STEP)
                .collect();
            steps.extend(image_steps(
                self.infrastructure.aws(),
                &taskctl_aws::stack::environment_of(profile),
                &images,
                self.delete_data,
                &root,
            ));
        }
        let profile = &self.pulled_from_ecr(profile);
        let awaited: BTreeSet<StepId> = steps.iter().flat_map(|s| s.depends_on()).collect();
        let after = steps
            .iter()
            .map(|s| s.id().clone())
            .filter(|id| !awaited.contains(id) || id.0 == CLUSTER_STEP)
            .collect();
        steps.extend(self.cluster.steps_after(profile, scope, after)?);
        Ok(steps)
    }

    /// The releases are the cluster's contents; a rollback leaves the
    /// infrastructure as it is.
    fn release_layers(&self) -> Vec<Layer> {
        self.cluster.layers()
    }

    fn releases(&self, profile: &Profile) -> Option<Arc<dyn ReleaseStore>> {
        self.cluster.releases(profile)
    }

    async fn observe_release(&self, profile: &Profile) -> Result<ReleaseFacts, OpsError> {
        self.cluster.observe_release(profile).await
    }

    async fn verify(
        &self,
        profile: &Profile,
        sink: Arc<dyn EventSink>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Check>, OpsError> {
        self.cluster.verify(profile, sink, cancel).await
    }

    async fn verify_backups(
        &self,
        profile: &Profile,
        target: &Release,
    ) -> Result<Option<String>, OpsError> {
        self.cluster.verify_backups(profile, target).await
    }

    async fn workloads(&self, profile: &Profile) -> Result<Option<Vec<Workload>>, OpsError> {
        self.cluster.workloads(profile).await
    }

    /// The AWS resources come before anything asks Vault (an in-cluster
    /// Vault runs on them); the cluster's steps stand where the kubernetes
    /// target puts them.
    fn secrets_order(&self, step: &StepId) -> SecretsOrder {
        if step.as_str().starts_with("aws/") {
            SecretsOrder::Before
        } else {
            self.cluster.secrets_order(step)
        }
    }

    fn vault_nodes(&self, profile: &Profile) -> Option<Arc<dyn PodPorts>> {
        self.cluster.vault_nodes(profile)
    }

    fn broker_management(&self, profile: &Profile) -> Option<Arc<dyn PodPorts>> {
        self.cluster.broker_management(profile)
    }
}
