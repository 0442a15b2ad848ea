//! Which provider implements a profile's target.

use taskctl_core::ops::Provider;
use taskctl_core::profile::{Profile, TargetKind};

/// Options some targets take from the command line rather than the profile.
#[derive(Debug, Clone, Default)]
pub struct ProviderOptions {
    /// `destroy --purge`: also remove data volumes (docker).
    pub purge: bool,
    /// `deploy --force-conflicts`: take over fields another field manager
    /// owns (kubernetes).
    pub force_conflicts: bool,
    /// `deploy --prune-all`: let prune delete volume claims, CRDs,
    /// namespaces and secrets too (kubernetes).
    pub prune_all: bool,
    /// `destroy`: no managed-secret steps (secrets are kept; a destroy
    /// must not need Vault).
    pub destroying: bool,
    /// `secrets rotate NAME…`: the managed secrets to rotate in this run.
    pub rotate: Vec<String>,
}

/// The provider of the profile's target, or why there is none.
pub async fn for_profile(profile: &Profile) -> anyhow::Result<Box<dyn Provider>> {
    for_profile_with(profile, ProviderOptions::default()).await
}

/// [`for_profile`] with command-line options.
pub async fn for_profile_with(
    profile: &Profile,
    options: ProviderOptions,
) -> anyhow::Result<Box<dyn Provider>> {
    match profile.target.kind {
        TargetKind::Docker => {
            // Secrets reach the containers as files; the managed secrets
            // and the broker user are steps of the same run.
            let (secrets, vault) = crate::secrets::resolver(profile);
            let docker = taskctl_docker::DockerProvider::connect(taskctl_docker::DockerOptions {
                purge: options.purge,
                secrets: secrets.clone(),
            })
            .await?;
            Ok(crate::secrets::wrap(
                Box::new(docker),
                secrets,
                vault,
                options.rotate,
                options.destroying,
            ))
        }
        TargetKind::Aws => Ok(Box::new(
            crate::eks::EksStack::connect(profile, kube_options(profile, &options)).await?,
        )),
        TargetKind::Kubernetes => Ok(Box::new(
            taskctl_kube::KubernetesProvider::connect(profile, kube_options(profile, &options))
                .await?,
        )),
    }
}

/// How the in-cluster layers apply, for the `kubernetes` and `aws` targets.
/// The resolver makes the Secrets the workloads reference (Vault is
/// connected on first use, so a profile without `vault:` references never
/// needs one).
fn kube_options(profile: &Profile, options: &ProviderOptions) -> taskctl_kube::KubeOptions {
    let (secrets, _vault) = crate::secrets::resolver(profile);
    taskctl_kube::KubeOptions {
        templates: std::env::var_os("TASKCTL_TEMPLATES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "templates".into()),
        force_conflicts: options.force_conflicts,
        prune_all: options.prune_all,
        secrets: Some(secrets),
        ..Default::default()
    }
}
