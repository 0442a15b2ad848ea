//! Releases kept on the engine itself.
//!
//! Release N of an environment is a container that is created and never
//! started, `taskctl-release-<name>.<env>-<N>`, labelled with the
//! environment and holding the release JSON (gzip + base64) in a label.
//! Why a container: the record lives with what it describes (another
//! machine pointing at the same engine sees the same history, and
//! `docker ps -a --filter label=taskctl.dev/role=release` shows it), and a
//! container pins its image, so the image a release ran cannot be pruned
//! while the release is kept, which is what a rollback needs. Releases
//! without an image (no agents) use a tiny empty image imported from an
//! empty tarball: nothing is pulled.

use async_trait::async_trait;
use base64::Engine as _;
use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, CreateImageOptions};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::{Read, Write};
use taskctl_core::release::{Release, ReleaseStore};
use taskctl_core::state::StateError;

use crate::engine::{containers_with, force_remove};
use crate::image::local_id;
use crate::spec::{label, release_name};

/// The image of release records that have no agent image to pin.
pub const EMPTY_IMAGE: &str = "taskctl-release:empty";

pub struct DockerReleaseStore {
    pub docker: Docker,
    /// `<profile name>.<environment>`.
    pub environment: String,
}

fn backend(e: impl std::fmt::Display) -> StateError {
    StateError::Backend(format!("docker release store: {e}"))
}

pub fn encode(release: &Release) -> Result<String, StateError> {
    let json = serde_json::to_vec(release).map_err(backend)?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&json).map_err(backend)?;
    let bytes = gz.finish().map_err(backend)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub fn decode(text: &str, location: &str) -> Result<Release, StateError> {
    let corrupt = |m: String| StateError::Corrupt {
        location: location.to_string(),
        message: m,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| corrupt(format!("not base64: {e}")))?;
    let mut json = Vec::new();
    GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut json)
        .map_err(|e| corrupt(format!("not gzip: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| corrupt(format!("not a release: {e}")))
}

impl DockerReleaseStore {
    /// The image the record container is made from: the release's first
    /// image when the engine has it, else the empty image.
    async fn image_for(&self, release: &Release) -> Result<String, StateError> {
        for reference in release.images.values() {
            if let Some(id) = local_id(&self.docker, reference)
                .await
                .map_err(|e| backend(e.message))?
            {
                return Ok(id);
            }
        }
        if local_id(&self.docker, EMPTY_IMAGE)
            .await
            .map_err(|e| backend(e.message))?
            .is_none()
        {
            let empty = crate::image::tar_of(&[]).map_err(backend)?;
            let mut stream = self.docker.create_image(
                Some(CreateImageOptions {
                    from_src: Some("-".into()),
                    repo: Some("taskctl-release".into()),
                    tag: Some("empty".into()),
                    ..Default::default()
                }),
                Some(bollard::body_full(empty.into())),
                None,
            );
            while let Some(item) = stream.next().await {
                item.map_err(|e| backend(format!("importing {EMPTY_IMAGE}: {e}")))?;
            }
        }
        Ok(EMPTY_IMAGE.to_string())
    }
}

#[async_trait]
impl ReleaseStore for DockerReleaseStore {
    async fn list(&self) -> Result<Vec<Release>, StateError> {
        let found = containers_with(
            &self.docker,
            &[
                (label::ENVIRONMENT, &self.environment),
                (label::ROLE, "release"),
            ],
        )
        .await
        .map_err(|e| backend(e.message))?;
        let mut releases = Vec::new();
        for c in found {
            let labels = c.labels.unwrap_or_default();
            let name = c.names.and_then(|n| n.first().cloned()).unwrap_or_default();
            if let Some(record) = labels.get(label::RECORD) {
                releases.push(decode(record, &format!("container {name}"))?);
            }
        }
        releases.sort_by_key(|r| r.revision);
        Ok(releases)
    }

    async fn put(&self, release: &Release) -> Result<(), StateError> {
        let name = release_name(&self.environment, release.revision);
        let image = self.image_for(release).await?;
        let labels: HashMap<String, String> = [
            (
                label::MANAGED_BY.to_string(),
                label::MANAGED_BY_VALUE.to_string(),
            ),
            (label::ENVIRONMENT.to_string(), self.environment.clone()),
            (label::ROLE.to_string(), "release".to_string()),
            (label::RELEASE.to_string(), release.revision.to_string()),
            (label::RECORD.to_string(), encode(release)?),
        ]
        .into();
        // Overwrite = replace: labels cannot change on an existing container.
        force_remove(&self.docker, &name)
            .await
            .map_err(|e| backend(e.message))?;
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(image),
                    // Never started; a command makes images without an
                    // entrypoint acceptable to `create`.
                    cmd: Some(vec!["taskctl-release-record".into()]),
                    labels: Some(labels),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| backend(format!("creating {name}: {e}")))?;
        Ok(())
    }

    async fn delete(&self, revision: u32) -> Result<(), StateError> {
        force_remove(&self.docker, &release_name(&self.environment, revision))
            .await
            .map_err(|e| backend(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskctl_core::release::ReleaseStatus;

    #[test]
    fn records_round_trip_through_the_label_encoding() {
        let r = Release {
            revision: 7,
            environment: "task-local/development".into(),
            run_id: "run-7".into(),
            created_at: 1,
            status: ReleaseStatus::Deployed,
            description: "deploy".into(),
            images: [("a".to_string(), "task-executor:local@sha256:ab".to_string())].into(),
            config_hashes: Default::default(),
            secret_refs: vec!["env:X".into()],
            secret_versions: Default::default(),
            profile: serde_json::json!({"big": "x".repeat(10_000)}),
            checks: Vec::new(),
        };
        let text = encode(&r).unwrap();
        assert!(text.len() < 1_000, "compressed: {}", text.len());
        assert_eq!(decode(&text, "t").unwrap(), r);
        assert!(matches!(decode("!!", "t"), Err(StateError::Corrupt { .. })));
    }
}
