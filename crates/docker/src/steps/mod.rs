//! One engine step per engine object: the network, service volumes,
//! managed services, each agent's image, each agent replica, and a final
//! step that removes what the profile no longer has (and, on destroy,
//! everything labelled with the environment).

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, Mount, MountTypeEnum,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy as DockerRestart,
    RestartPolicyNameEnum, VolumeCreateOptions,
};
use bollard::query_parameters::{CreateContainerOptions, RenameContainerOptions};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use taskctl_core::engine::{
    Action, Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::profile::Profile;
use taskctl_core::profile::model::{Agent, WorkloadKind};

use crate::engine::{self, force_remove, inspect, is_not_found, step_error};
use crate::image;
use crate::rollout::Rollout;
use crate::secret_files;
use crate::spec::{
    self, EnvSource, ReplicaSpec, SpecSummary, base_labels, label, next_name, replica_name,
};

/// What every step shares.
pub struct Shared {
    pub docker: Docker,
    pub profile: Profile,
    /// `--purge`: destroy removes volumes too.
    pub purge: bool,
    /// Resolves the profile's secret references (Vault, environment).
    pub secrets: Arc<taskctl_core::secrets::Secrets>,
}

pub(super) fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(ErrorKind::Invalid, message)
}

pub(super) fn hash_map(m: BTreeMap<String, String>) -> HashMap<String, String> {
    m.into_iter().collect()
}

pub(super) fn registry(profile: &Profile) -> Option<String> {
    profile
        .target
        .docker
        .as_ref()
        .and_then(|d| d.registry.clone())
}

/// The login for `registry` from `target.docker.registry_auth`, resolved
/// now (values registered with the redactor, passed to the engine per
/// request, never written anywhere); `None` without one.
pub(super) async fn registry_credentials(
    shared: &Shared,
    registry: &str,
) -> Result<Option<bollard::auth::DockerCredentials>, StepError> {
    let Some(auth) = shared
        .profile
        .target
        .docker
        .as_ref()
        .and_then(|d| d.registry_auth.as_ref())
    else {
        return Ok(None);
    };
    let mut values = Vec::new();
    for (field, reference) in [("username", &auth.username), ("password", &auth.password)] {
        let reference = reference.get().ok_or_else(|| {
            invalid(format!(
                "target.docker.registry_auth.{field} is not a secret reference"
            ))
        })?;
        let resolved = shared
            .secrets
            .resolve(reference)
            .await
            .map_err(|e| invalid(format!("target.docker.registry_auth.{field}: {e}")))?;
        values.push(resolved.value.expose().to_owned());
    }
    let password = values.pop();
    let username = values.pop();
    Ok(Some(bollard::auth::DockerCredentials {
        username,
        password,
        serveraddress: Some(registry.to_owned()),
        ..Default::default()
    }))
}

/// The image's id on the engine, pulling it only when a registry is
/// configured; missing otherwise is a clear error naming the image.
pub(super) async fn ensure_image(
    shared: &Shared,
    image: &str,
    what: &str,
) -> Result<String, StepError> {
    if let Some(id) = image::local_id(&shared.docker, image).await? {
        return Ok(id);
    }
    match registry(&shared.profile) {
        Some(registry) => {
            let credentials = registry_credentials(shared, &registry).await?;
            let reference = image::pull(&shared.docker, &registry, image, credentials).await?;
            image::local_id(&shared.docker, &reference)
                .await?
                .ok_or_else(|| image::missing_image(image, what))
        }
        None => Err(image::missing_image(image, what)),
    }
}

mod agent_image;
mod network;
mod replica;
mod services;
mod sweep;
pub use agent_image::*;
pub use network::*;
pub use replica::*;
pub use services::*;
pub use sweep::*;
