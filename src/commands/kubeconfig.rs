//! `taskctl kubeconfig` and `taskctl eks-token`: access to an `aws`
//! target's EKS cluster for people and for kubectl, with no AWS CLI.
//!
//! The kubeconfig names this very binary as its credential plugin
//! (`taskctl eks-token …`), as `aws eks update-kubeconfig` names `aws`: the
//! file holds the endpoint and CA from `DescribeCluster` and no secret; each
//! kubectl call gets a fresh presigned-STS token.

use crate::cli::{EksTokenArgs, KubeconfigArgs};
use crate::context::Context;
use crate::ui::{Shell, StatusStyle};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use taskctl_aws::Aws;
use taskctl_aws::access::{ClusterAccess, cluster_access};
use taskctl_core::engine::RunReport;
use taskctl_core::profile::{Profile, TargetKind};

/// How long an EKS token is accepted (the API server's limit is 15
/// minutes); kubectl asks again after this.
const TOKEN_LIFETIME: Duration = Duration::from_secs(14 * 60);

pub fn kubeconfig(ctx: &Context, shell: &mut Shell, args: KubeconfigArgs) -> anyhow::Result<u8> {
    let profile = ctx.valid_profile(shell)?;
    let region = aws_region(&profile)?;
    let rt = ctx.runtime()?;
    let access = rt.block_on(async {
        let aws = Aws::from_env(&region).await?;
        anyhow::Ok(cluster_access(&aws, &profile).await?)
    })?;
    let yaml = render(&profile, &access)?;
    match &args.out {
        Some(path) => {
            write_private(path, &yaml)?;
            shell.status(
                StatusStyle::Ok,
                "kubeconfig",
                &format!(
                    "{} written for cluster {} at {} (kubectl --kubeconfig {} get nodes)",
                    path.display(),
                    access.name,
                    access.endpoint,
                    path.display()
                ),
            );
        }
        None => shell.text(&yaml)?,
    }
    Ok(crate::exit::SUCCESS)
}

pub fn eks_token(ctx: &Context, shell: &mut Shell, args: EksTokenArgs) -> anyhow::Result<u8> {
    let rt = ctx.runtime()?;
    let token = rt.block_on(async {
        let aws = Aws::from_env(&args.region).await?;
        anyhow::Ok(taskctl_aws::eks_token(&aws, &args.cluster).await?)
    })?;
    let expires = SystemTime::now() + TOKEN_LIFETIME;
    // kubectl's ExecCredential: the token is this command's whole purpose.
    let credential = serde_json::json!({
        "kind": "ExecCredential",
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "spec": {},
        "status": {
            "expirationTimestamp": humantime::format_rfc3339_seconds(expires).to_string(),
            "token": token,
        },
    });
    shell.text(&format!("{credential}\n"))?;
    Ok(crate::exit::SUCCESS)
}

/// Where a deploy of an `aws` target leaves the cluster's kubeconfig:
/// beside the environment's local state.
pub fn default_path(profile: &Profile) -> PathBuf {
    Path::new(&profile.state.path)
        .join(taskctl_core::ops::environment_key(profile))
        .join("kubeconfig")
}

/// After a deploy of an `aws` target: writes the kubeconfig of the cluster
/// it made to [`default_path`] and says where. The cluster step's outputs
/// (`report`) carry what it needs; only when they do not is the cluster
/// described again. Returns the access written.
pub async fn write_after_deploy(
    profile: &Profile,
    report: &RunReport,
) -> anyhow::Result<(PathBuf, ClusterAccess)> {
    let region = aws_region(profile)?;
    let known = report
        .steps
        .iter()
        .find(|s| s.id.0 == "aws/cluster")
        .and_then(|s| ClusterAccess::from_outputs(&s.outputs, &region));
    let access = match known {
        Some(access) => access,
        None => cluster_access(&Aws::from_env(&region).await?, profile).await?,
    };
    let path = default_path(profile);
    write_private(&path, &render(profile, &access)?)?;
    Ok((path, access))
}

fn aws_region(profile: &Profile) -> anyhow::Result<String> {
    match (&profile.target.kind, &profile.target.aws) {
        (TargetKind::Aws, Some(aws)) => Ok(aws.region.clone()),
        (TargetKind::Aws, None) => anyhow::bail!("the profile's target has no `aws.region`"),
        (TargetKind::Kubernetes, _) => anyhow::bail!(
            "the `kubernetes` target already uses your kubeconfig (`target.kubernetes.context`); `taskctl kubeconfig` writes one for an `aws` target's EKS cluster"
        ),
        (TargetKind::Docker, _) => anyhow::bail!(
            "the `docker` target has no Kubernetes cluster; `taskctl kubeconfig` is for an `aws` target's EKS cluster"
        ),
    }
}

fn render(profile: &Profile, access: &ClusterAccess) -> anyhow::Result<String> {
    let api_server = profile
        .target
        .aws
        .as_ref()
        .and_then(|a| a.api_server.as_deref());
    Ok(crate::eks::kubeconfig(access, api_server)?.to_yaml())
}

/// Writes `text` readable by its owner only, as kubectl does.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write `{}`", path.display()))
}
