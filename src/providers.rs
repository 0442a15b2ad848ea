//! Which provider implements a profile's target.

use taskctl_core::ops::Provider;
use taskctl_core::profile::{Profile, TargetKind};

/// Options some targets take from the command line rather than the profile.
#[derive(Debug, Clone, Default)]
pub struct ProviderOptions {
    /// `destroy --purge` / `--delete-data`: also remove data volumes
    /// (docker) or claims, volumes and namespaces (Kubernetes).
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

/// [`for_profile`] with command-line options. The profile's plugins (if
/// any) wrap the target's provider, its secrets' steps included.
pub async fn for_profile_with(
    profile: &Profile,
    options: ProviderOptions,
) -> anyhow::Result<Box<dyn Provider>> {
    let (provider, secrets) = target_provider(profile, options).await?;
    if profile.plugins.is_empty() {
        return Ok(provider);
    }
    let search = taskctl_plugin::Search::from_env(Vec::new());
    Ok(Box::new(taskctl_plugin::WithPlugins {
        inner: provider,
        plugins: std::sync::Arc::new(taskctl_plugin::Plugins::new(profile, &search, secrets)),
    }))
}

async fn target_provider(
    profile: &Profile,
    options: ProviderOptions,
) -> anyhow::Result<(
    Box<dyn Provider>,
    std::sync::Arc<taskctl_core::secrets::Secrets>,
)> {
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
            Ok((
                crate::secrets::wrap(
                    Box::new(docker),
                    secrets.clone(),
                    vault,
                    options.rotate,
                    options.destroying,
                ),
                secrets,
            ))
        }
        TargetKind::Aws | TargetKind::Kubernetes => {
            // One resolver for the Secrets the cluster gets and for the
            // managed secrets' steps, which create what Vault lacks.
            let (secrets, vault) = crate::secrets::resolver(profile);
            let kube = kube_options(&options, secrets.clone());
            let inner: Box<dyn Provider> = if profile.target.kind == TargetKind::Aws {
                Box::new(crate::eks::EksStack::connect(profile, kube).await?)
            } else {
                Box::new(taskctl_kube::KubernetesProvider::connect(profile, kube).await?)
            };
            Ok((
                Box::new(crate::secrets::WithSecrets {
                    inner,
                    vault,
                    secrets: secrets.clone(),
                    rotate: options.rotate,
                    destroying: options.destroying,
                    // The in-cluster broker and databases take their password
                    // at first boot only: taskctl changes the broker's
                    // through its management API (the EKS stack reaches it
                    // as the kubernetes target does); the databases' would
                    // be locked out.
                    rotation: crate::secrets::Rotation::InCluster,
                }),
                secrets,
            ))
        }
    }
}

/// How the in-cluster layers apply, for the `kubernetes` and `aws` targets.
/// The resolver makes the Secrets the workloads reference (Vault is
/// connected on first use, so a profile without `vault:` references never
/// needs one).
fn kube_options(
    options: &ProviderOptions,
    secrets: std::sync::Arc<taskctl_core::secrets::Secrets>,
) -> taskctl_kube::KubeOptions {
    taskctl_kube::KubeOptions {
        templates: taskctl_kube::Templates::from_env(),
        force_conflicts: options.force_conflicts,
        prune_all: options.prune_all,
        // `destroy --purge` (`--delete-data`): on Kubernetes, the claims,
        // volumes and namespaces too; never on deploy or rollback.
        delete_data: options.destroying && options.purge,
        // A destroy makes no Secret and must not need Vault (an in-cluster
        // Vault may be gone already, with the cluster).
        secrets: (!options.destroying).then_some(secrets),
        ..Default::default()
    }
}
