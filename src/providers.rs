//! Which provider implements a profile's target.

use taskctl_core::ops::Provider;
use taskctl_core::profile::{Profile, TargetKind};

/// The provider of the profile's target, or why there is none.
pub async fn for_profile(profile: &Profile) -> anyhow::Result<Box<dyn Provider>> {
    match profile.target.kind {
        TargetKind::Aws => {
            let region = profile
                .target
                .aws
                .as_ref()
                .map(|a| a.region.clone())
                .unwrap_or_default();
            Ok(Box::new(taskctl_aws::AwsProvider::from_env(&region).await?))
        }
        TargetKind::Kubernetes => {
            // Options beyond the defaults (force_conflicts, prune_all) are
            // not on the command line yet: the defaults are the safe ones.
            let options = taskctl_kube::KubeOptions {
                templates: std::env::var_os("TASKCTL_TEMPLATES")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| "templates".into()),
                ..Default::default()
            };
            Ok(Box::new(
                taskctl_kube::KubernetesProvider::connect(profile, options).await?,
            ))
        }
        other => anyhow::bail!(
            "the `{}` target cannot be planned or deployed by this build yet; `aws` and `kubernetes` can (see the README's status table)",
            format!("{other:?}").to_lowercase()
        ),
    }
}
