//! The agent image in Amazon ECR: a repository per agent, and the image
//! pushed into it through ECR's own API (`InitiateLayerUpload`,
//! `UploadLayerPart`, `CompleteLayerUpload`, `PutImage`), so a deploy needs
//! no Docker engine and no registry login.
//!
//! The image is made here, byte for byte ([`OciImage::static_binary`]): the
//! static agent binary as the one layer of an OCI image, the same on every
//! machine for the same binary. Its digest is therefore known before
//! anything is pushed, so the plan can name the exact image the cluster
//! will run, and a deploy whose image ECR already holds pushes nothing.
//!
//! The repository scans on push, keeps tags immutable (a tag never names
//! other content: the tag is the binary's own digest) and expires all but
//! the newest `keep_images`. Destroy keeps it, with its images, unless the
//! user asked for the data to go (`destroy --delete-data`).

use crate::error::{AwsError, ErrorKind, Result};
use std::sync::Arc;

/// An OCI image manifest's media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed: the layer's digest is then a hash of the binary's tar,
/// which costs milliseconds, where gzip of a 12 MB binary costs seconds in
/// a debug build on every command that plans. Nodes pull it either way.
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// One content-addressed piece of an image: its config or a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub bytes: Arc<Vec<u8>>,
}

impl Blob {
    fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.into(),
            digest: sha256(&bytes),
            bytes: Arc::new(bytes),
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }
}

/// `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
    )
}

/// An image ready to push: its blobs and the manifest that names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciImage {
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// The manifest, exactly as pushed (its digest is of these bytes).
    pub manifest: String,
    /// `sha256:<hex>` of `manifest`: what the cluster pulls by.
    pub digest: String,
}

impl OciImage {
    /// A static binary at `/<name>` as the image's one layer, run as
    /// `user` (`UID:GID`) with `args` as the entrypoint's arguments: the
    /// same image the docker target builds on `scratch`, with nothing else
    /// in it. Deterministic: no time stamps anywhere.
    pub fn static_binary(name: &str, binary: &[u8], user: &str) -> Result<OciImage> {
        let failed = |e: std::io::Error| {
            AwsError::new(
                ErrorKind::Invalid,
                "build the agent image",
                format!("cannot pack the agent binary: {e}"),
            )
        };
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(binary.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, binary).map_err(failed)?;
        let layer = Blob::new(LAYER_MEDIA_TYPE, tar.into_inner().map_err(failed)?);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "User": user,
                "Entrypoint": [format!("/{name}")],
            },
            "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
            "history": [{ "created_by": "taskctl: the static agent binary" }],
        });
        let config = Blob::new(
            CONFIG_MEDIA_TYPE,
            serde_json::to_vec(&config).expect("plain JSON"),
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        })
        .to_string();
        Ok(OciImage {
            digest: sha256(manifest.as_bytes()),
            config,
            layers: vec![layer],
            manifest,
        })
    }

    /// The tag it is pushed under: `<version>-<first 12 hex digits of the
    /// manifest digest>`, so a tag never moves.
    pub fn tag(&self, version: &str) -> String {
        let hex = self.digest.trim_start_matches("sha256:");
        format!("{version}-{}", &hex[..12.min(hex.len())])
    }
}

pub use repository::Retention;

/// The repository: scanning, immutable tags, lifecycle, ownership.
pub mod repository {
    use crate::Aws;
    use crate::diff::{self, FieldDiff};
    use crate::error::{AwsError, ErrorKind, Result};
    use crate::tags::Tags;
    use aws_sdk_ecr::types::{ImageScanningConfiguration, ImageTagMutability, Tag};
    use std::collections::BTreeMap;

    /// What destroy does with a repository.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Retention {
        /// Leave it and its images (the default).
        Keep,
        /// Delete it with every image (`destroy --delete-data`).
        Delete,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RepositorySpec {
        /// `taskctl/<name>-<environment>/<agent>`.
        pub name: String,
        /// Images kept; older ones expire by the lifecycle policy.
        pub keep_images: u32,
        pub retention: Retention,
        pub tags: Tags,
    }

    impl RepositorySpec {
        /// The repository of one agent of an environment.
        pub fn agent(tags: Tags, agent: &str, keep_images: u32, retention: Retention) -> Self {
            RepositorySpec {
                name: format!("taskctl/{}/{agent}", tags.environment.prefix()),
                keep_images,
                retention,
                tags,
            }
        }

        /// The lifecycle policy: keep the newest `keep_images`.
        pub fn lifecycle_policy(&self) -> serde_json::Value {
            serde_json::json!({
                "rules": [{
                    "rulePriority": 1,
                    "description": format!("keep the newest {} images", self.keep_images),
                    "selection": {
                        "tagStatus": "any",
                        "countType": "imageCountMoreThan",
                        "countNumber": self.keep_images,
                    },
                    "action": { "type": "expire" },
                }]
            })
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RepositoryState {
        pub name: String,
        pub arn: String,
        /// `<account>.dkr.ecr.<region>.amazonaws.com/<name>`.
        pub uri: String,
        pub scan_on_push: bool,
        pub immutable: bool,
        /// The lifecycle policy ECR holds, parsed; `None` without one.
        pub lifecycle: Option<serde_json::Value>,
        pub retention: Retention,
        pub tags: BTreeMap<String, String>,
    }

    fn ecr_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
        tags.iter()
            .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
            .collect()
    }

    async fn lifecycle(aws: &Aws, name: &str) -> Result<Option<serde_json::Value>> {
        match aws
            .ecr
            .get_lifecycle_policy()
            .repository_name(name)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .lifecycle_policy_text()
                .and_then(|t| serde_json::from_str(t).ok())),
            Err(e) => {
                let e = AwsError::from_sdk("GetLifecyclePolicy", e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// The URI a repository of this account and region has (or will have):
    /// `<account>.dkr.ecr.<region>.amazonaws.com/<name>`, from one
    /// `GetCallerIdentity`, so a plan can name it before it exists.
    pub async fn uri(aws: &Aws, name: &str) -> Result<String> {
        let (account, partition) = aws.caller_account().await?;
        let domain = if partition == "aws-cn" {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        Ok(format!(
            "{account}.dkr.ecr.{}.{domain}/{name}",
            aws.region()
        ))
    }

    pub async fn find(aws: &Aws, spec: &RepositorySpec) -> Result<Option<RepositoryState>> {
        let out = match aws
            .ecr
            .describe_repositories()
            .repository_names(&spec.name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = AwsError::from_sdk("DescribeRepositories", e);
                return if e.is_not_found() { Ok(None) } else { Err(e) };
            }
        };
        let Some(repo) = out.repositories().first() else {
            return Ok(None);
        };
        let arn = repo.repository_arn().unwrap_or_default().to_owned();
        let tags: BTreeMap<String, String> = aws
            .ecr
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ListTagsForResource", e))?
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect();
        if !spec.tags.environment.owns(&tags) {
            return Err(AwsError::new(
                ErrorKind::Conflict,
                "DescribeRepositories",
                format!(
                    "ECR repository `{}` exists but is not tagged as taskctl's for `{}`; taskctl does not push into a repository it does not own",
                    spec.name,
                    spec.tags.environment.tag_value()
                ),
            ));
        }
        Ok(Some(RepositoryState {
            name: spec.name.clone(),
            uri: repo.repository_uri().unwrap_or_default().to_owned(),
            scan_on_push: repo
                .image_scanning_configuration()
                .is_some_and(|c| c.scan_on_push()),
            immutable: repo.image_tag_mutability() == Some(&ImageTagMutability::Immutable),
            lifecycle: lifecycle(aws, &spec.name).await?,
            retention: spec.retention,
            tags,
            arn,
        }))
    }

    pub async fn create(aws: &Aws, spec: &RepositorySpec) -> Result<RepositoryState> {
        if let Some(state) = find(aws, spec).await? {
            return update(aws, spec, &state).await;
        }
        tracing::info!(provider = "aws", repository = %spec.name, "creating ecr repository");
        let out = aws
            .ecr
            .create_repository()
            .repository_name(&spec.name)
            .image_tag_mutability(ImageTagMutability::Immutable)
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(true)
                    .build(),
            )
            .set_tags(Some(ecr_tags(&spec.tags.to_map())))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateRepository", e))?;
        let repo = out.repository().ok_or_else(|| {
            AwsError::new(
                ErrorKind::Other,
                "CreateRepository",
                "ECR returned no repository",
            )
        })?;
        let state = RepositoryState {
            name: spec.name.clone(),
            arn: repo.repository_arn().unwrap_or_default().to_owned(),
            uri: repo.repository_uri().unwrap_or_default().to_owned(),
            scan_on_push: true,
            immutable: true,
            lifecycle: None,
            retention: spec.retention,
            tags: spec.tags.to_map(),
        };
        update(aws, spec, &state).await
    }

    /// Scanning on push, immutable tags, the lifecycle policy, missing tags.
    pub async fn update(
        aws: &Aws,
        spec: &RepositorySpec,
        state: &RepositoryState,
    ) -> Result<RepositoryState> {
        let mut state = state.clone();
        if !state.scan_on_push {
            aws.ecr
                .put_image_scanning_configuration()
                .repository_name(&spec.name)
                .image_scanning_configuration(
                    ImageScanningConfiguration::builder()
                        .scan_on_push(true)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("PutImageScanningConfiguration", e))?;
            state.scan_on_push = true;
        }
        if !state.immutable {
            aws.ecr
                .put_image_tag_mutability()
                .repository_name(&spec.name)
                .image_tag_mutability(ImageTagMutability::Immutable)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("PutImageTagMutability", e))?;
            state.immutable = true;
        }
        let policy = spec.lifecycle_policy();
        if state.lifecycle.as_ref() != Some(&policy) {
            aws.ecr
                .put_lifecycle_policy()
                .repository_name(&spec.name)
                .lifecycle_policy_text(policy.to_string())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("PutLifecyclePolicy", e))?;
            state.lifecycle = Some(policy);
        }
        let missing = crate::tags::missing(&spec.tags.desired_for_diff(), &state.tags);
        if !missing.is_empty() {
            aws.ecr
                .tag_resource()
                .resource_arn(&state.arn)
                .set_tags(Some(ecr_tags(&missing)))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("TagResource", e))?;
            state.tags.extend(missing);
        }
        Ok(state)
    }

    pub fn diff(spec: &RepositorySpec, state: &RepositoryState) -> Vec<FieldDiff> {
        let mut out = Vec::new();
        diff::field(&mut out, "scan_on_push", &state.scan_on_push, &true);
        diff::field(&mut out, "immutable_tags", &state.immutable, &true);
        if state.lifecycle.as_ref() != Some(&spec.lifecycle_policy()) {
            out.push(FieldDiff::update(
                "lifecycle_policy",
                if state.lifecycle.is_some() {
                    "other"
                } else {
                    "-"
                },
                format!("keep the newest {} images", spec.keep_images),
            ));
        }
        diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
        out
    }

    /// Destroy: keeps the repository (its images are what releases name), or
    /// deletes it with them. Returns what was done, for the progress line.
    pub async fn delete(aws: &Aws, state: &RepositoryState) -> Result<String> {
        match state.retention {
            Retention::Keep => Ok(format!(
                "kept ECR repository {} and its images (releases name them); `destroy --delete-data` deletes it",
                state.name
            )),
            Retention::Delete => {
                aws.ecr
                    .delete_repository()
                    .repository_name(&state.name)
                    .force(true)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("DeleteRepository", e))?;
                Ok(format!(
                    "deleted ECR repository {} and its images",
                    state.name
                ))
            }
        }
    }
}

/// The image in a repository, pushed through ECR's layer API.
pub mod image {
    use super::{Blob, MANIFEST_MEDIA_TYPE, OciImage, sha256};
    use crate::Aws;
    use crate::diff::FieldDiff;
    use crate::error::{AwsError, ErrorKind, Result};
    use crate::tags::Tags;
    use aws_sdk_ecr::primitives::Blob as SdkBlob;
    use aws_sdk_ecr::types::ImageIdentifier;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use taskctl_core::profile::model::ScanSeverity;

    /// An image to push into a repository under a tag.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ImageSpec {
        /// Filled from the repository step's outputs.
        pub repository: String,
        pub tag: String,
        pub image: Arc<OciImage>,
        /// Not put on anything (ECR images carry no tags); the engine's kinds
        /// all have them.
        pub tags: Tags,
        /// The lowest scan finding severity that stops the image
        /// (`target.aws.image_scan.fail_on`); `None`: findings are not read.
        pub fail_on: Option<ScanSeverity>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ImageState {
        pub repository: String,
        pub tag: String,
        /// The digest ECR holds under the tag.
        pub digest: String,
        /// What ECR's scan found, when findings are read.
        pub scan: Option<Scan>,
    }

    /// An image scan as ECR reports it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Scan {
        /// No scan of this image exists (scan on push did not run).
        None,
        /// `IN_PROGRESS`, `PENDING`, `FAILED`, … with ECR's description.
        Unfinished { status: String, description: String },
        /// `COMPLETE`: findings per severity (ECR's names), and the names
        /// of the findings (CVE ids) with their severity.
        Complete {
            counts: BTreeMap<String, i32>,
            findings: Vec<(String, String)>,
        },
    }

    impl Scan {
        /// Findings at or above `fail_on`, as "1 HIGH (CVE-…)".
        pub fn over(&self, fail_on: ScanSeverity) -> Option<String> {
            let Scan::Complete { counts, findings } = self else {
                return None;
            };
            let names = fail_on.and_above();
            let mut parts = Vec::new();
            for severity in names.iter().rev() {
                if let Some(n) = counts.get(*severity).filter(|n| **n > 0) {
                    let ids: Vec<&str> = findings
                        .iter()
                        .filter(|(_, s)| s == severity)
                        .map(|(id, _)| id.as_str())
                        .take(3)
                        .collect();
                    parts.push(if ids.is_empty() {
                        format!("{n} {severity}")
                    } else {
                        format!("{n} {severity} ({})", ids.join(", "))
                    });
                }
            }
            (!parts.is_empty()).then(|| parts.join(", "))
        }

        /// For the plan and the step's outputs: `HIGH 1, LOW 2`, `none`.
        pub fn summary(&self) -> String {
            match self {
                Scan::None => "not scanned".into(),
                Scan::Unfinished { status, .. } => status.to_ascii_lowercase(),
                Scan::Complete { counts, .. } if counts.values().all(|n| *n == 0) => {
                    "no findings".into()
                }
                Scan::Complete { counts, .. } => counts
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        }
    }

    /// ECR's scan of the image `digest`.
    async fn scan_of(aws: &Aws, repository: &str, digest: &str) -> Result<Scan> {
        let out = match aws
            .ecr
            .describe_image_scan_findings()
            .repository_name(repository)
            .image_id(ImageIdentifier::builder().image_digest(digest).build())
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = AwsError::from_sdk("DescribeImageScanFindings", e);
                return if e.is_not_found() {
                    Ok(Scan::None)
                } else {
                    Err(e)
                };
            }
        };
        let status = out
            .image_scan_status()
            .and_then(|s| s.status())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        if status != "COMPLETE" {
            return Ok(Scan::Unfinished {
                description: out
                    .image_scan_status()
                    .and_then(|s| s.description())
                    .unwrap_or_default()
                    .to_owned(),
                status,
            });
        }
        let findings = out.image_scan_findings();
        Ok(Scan::Complete {
            counts: findings
                .and_then(|f| f.finding_severity_counts())
                .map(|c| c.iter().map(|(k, v)| (k.as_str().to_owned(), *v)).collect())
                .unwrap_or_default(),
            findings: findings
                .map(|f| {
                    f.findings()
                        .iter()
                        .map(|x| {
                            (
                                x.name().unwrap_or_default().to_owned(),
                                x.severity()
                                    .map(|s| s.as_str().to_owned())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Waits for the image's scan to complete, starting one where none
    /// exists (real ECR starts it on push; ECR allows one basic scan a day,
    /// so "limit exceeded" means one is there or running).
    async fn scanned(aws: &Aws, repository: &str, digest: &str) -> Result<Scan> {
        let deadline = std::time::Instant::now() + SCAN_TIMEOUT;
        let mut started = false;
        loop {
            let scan = scan_of(aws, repository, digest).await?;
            match &scan {
                Scan::Complete { .. } => return Ok(scan),
                Scan::Unfinished {
                    status,
                    description,
                } if status == "FAILED" => {
                    return Err(AwsError::new(
                        ErrorKind::Other,
                        "DescribeImageScanFindings",
                        format!("ECR's scan of {digest} failed: {description}"),
                    ));
                }
                Scan::None if !started => {
                    started = true;
                    if let Err(e) = aws
                        .ecr
                        .start_image_scan()
                        .repository_name(repository)
                        .image_id(ImageIdentifier::builder().image_digest(digest).build())
                        .send()
                        .await
                    {
                        let e = AwsError::from_sdk("StartImageScan", e);
                        if !e
                            .code
                            .as_deref()
                            .is_some_and(|c| c.contains("LimitExceeded"))
                        {
                            return Err(e);
                        }
                    }
                    continue;
                }
                _ => {}
            }
            if std::time::Instant::now() > deadline {
                return Err(AwsError::new(
                    ErrorKind::Other,
                    "DescribeImageScanFindings",
                    format!(
                        "ECR's scan of {digest} did not complete within {}s ({})",
                        SCAN_TIMEOUT.as_secs(),
                        scan.summary()
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }

    /// How long a deploy waits for ECR's scan of a pushed image.
    pub const SCAN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10 * 60);

    /// The error that stops an image with findings at or above `fail_on`.
    fn refused(spec: &ImageSpec, fail_on: ScanSeverity, over: &str) -> AwsError {
        AwsError::new(
            ErrorKind::Invalid,
            "DescribeImageScanFindings",
            format!(
                "ECR's scan of the agent image {}:{} found {over}, at or above `target.aws.image_scan.fail_on: {}`; the cluster does not get it",
                spec.repository,
                spec.tag,
                fail_on.ecr_name().to_ascii_lowercase()
            ),
        )
    }

    /// The image ECR holds under the spec's tag.
    pub async fn find(aws: &Aws, spec: &ImageSpec) -> Result<Option<ImageState>> {
        if spec.repository.is_empty() {
            return Ok(None);
        }
        let out = match aws
            .ecr
            .batch_get_image()
            .repository_name(&spec.repository)
            .image_ids(ImageIdentifier::builder().image_tag(&spec.tag).build())
            .accepted_media_types(MANIFEST_MEDIA_TYPE)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = AwsError::from_sdk("BatchGetImage", e);
                return if e.is_not_found() { Ok(None) } else { Err(e) };
            }
        };
        let Some(i) = out.images().first() else {
            return Ok(None);
        };
        let digest = i
            .image_id()
            .and_then(|id| id.image_digest())
            .map(str::to_owned)
            .unwrap_or_else(|| sha256(i.image_manifest().unwrap_or_default().as_bytes()));
        let scan = match spec.fail_on {
            Some(_) => Some(scan_of(aws, &spec.repository, &digest).await?),
            None => None,
        };
        Ok(Some(ImageState {
            repository: spec.repository.clone(),
            tag: spec.tag.clone(),
            digest,
            scan,
        }))
    }

    /// Pushes the image: each blob ECR does not have yet, in parts of the
    /// size it asks for, then the manifest under the tag.
    pub async fn push(aws: &Aws, spec: &ImageSpec) -> Result<ImageState> {
        let image = &spec.image;
        let blobs: Vec<&Blob> = std::iter::once(&image.config)
            .chain(image.layers.iter())
            .collect();
        let checked = aws
            .ecr
            .batch_check_layer_availability()
            .repository_name(&spec.repository)
            .set_layer_digests(Some(blobs.iter().map(|b| b.digest.clone()).collect()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("BatchCheckLayerAvailability", e))?;
        let available: Vec<&str> = checked
            .layers()
            .iter()
            .filter(|l| {
                l.layer_availability() == Some(&aws_sdk_ecr::types::LayerAvailability::Available)
            })
            .filter_map(|l| l.layer_digest())
            .collect();
        for blob in blobs {
            if available.contains(&blob.digest.as_str()) {
                continue;
            }
            upload(aws, &spec.repository, blob).await?;
        }
        tracing::info!(provider = "aws", repository = %spec.repository, tag = %spec.tag, "putting image manifest");
        let out = aws
            .ecr
            .put_image()
            .repository_name(&spec.repository)
            .image_manifest(&image.manifest)
            .image_manifest_media_type(MANIFEST_MEDIA_TYPE)
            .image_tag(&spec.tag)
            .image_digest(&image.digest)
            .send()
            .await;
        let digest = match out {
            Ok(out) => out
                .image()
                .and_then(|i| i.image_id())
                .and_then(|id| id.image_digest())
                .map(str::to_owned)
                .unwrap_or_else(|| image.digest.clone()),
            Err(e) => {
                let e = AwsError::from_sdk("PutImage", e);
                // A run that died after PutImage: the tag is there already.
                match find(aws, spec).await? {
                    Some(state) if state.digest == image.digest => return Ok(state),
                    _ => return Err(e),
                }
            }
        };
        if digest != image.digest {
            return Err(AwsError::new(
                ErrorKind::Other,
                "PutImage",
                format!(
                    "ECR stored the manifest as {digest}, not {}: the cluster would pull something else",
                    image.digest
                ),
            ));
        }
        let mut state = ImageState {
            repository: spec.repository.clone(),
            tag: spec.tag.clone(),
            digest,
            scan: None,
        };
        gate(aws, spec, &mut state).await?;
        Ok(state)
    }

    /// With `fail_on`, waits for the image's scan and refuses findings at
    /// or above it.
    async fn gate(aws: &Aws, spec: &ImageSpec, state: &mut ImageState) -> Result<()> {
        let Some(fail_on) = spec.fail_on else {
            return Ok(());
        };
        let scan = match &state.scan {
            Some(scan @ Scan::Complete { .. }) => scan.clone(),
            _ => scanned(aws, &spec.repository, &state.digest).await?,
        };
        let over = scan.over(fail_on);
        state.scan = Some(scan);
        match over {
            Some(over) => Err(refused(spec, fail_on, &over)),
            None => Ok(()),
        }
    }

    /// One blob through `InitiateLayerUpload`, `UploadLayerPart` (in order, of
    /// the part size ECR gives) and `CompleteLayerUpload`, which must agree on
    /// the digest.
    async fn upload(aws: &Aws, repository: &str, blob: &Blob) -> Result<()> {
        let started = aws
            .ecr
            .initiate_layer_upload()
            .repository_name(repository)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("InitiateLayerUpload", e))?;
        let upload_id = started.upload_id().unwrap_or_default().to_owned();
        let part = started
            .part_size()
            .filter(|p| *p > 0)
            .unwrap_or(10 * 1024 * 1024) as usize;
        let bytes = blob.bytes.as_slice();
        let mut first = 0usize;
        while first < bytes.len() {
            let last = (first + part).min(bytes.len());
            aws.ecr
                .upload_layer_part()
                .repository_name(repository)
                .upload_id(&upload_id)
                .part_first_byte(first as i64)
                .part_last_byte((last - 1) as i64)
                .layer_part_blob(SdkBlob::new(bytes[first..last].to_vec()))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("UploadLayerPart", e))?;
            first = last;
        }
        let done = aws
            .ecr
            .complete_layer_upload()
            .repository_name(repository)
            .upload_id(&upload_id)
            .layer_digests(&blob.digest)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CompleteLayerUpload", e))?;
        match done.layer_digest() {
            Some(d) if d == blob.digest => Ok(()),
            other => Err(AwsError::new(
                ErrorKind::Other,
                "CompleteLayerUpload",
                format!(
                    "ECR computed {} for a blob of digest {}",
                    other.unwrap_or("no digest"),
                    blob.digest
                ),
            )),
        }
    }

    pub async fn create(aws: &Aws, spec: &ImageSpec) -> Result<ImageState> {
        push(aws, spec).await
    }

    /// The tag names the content (it is the digest's start, and tags are
    /// immutable), so an image found under it is the one wanted, unless
    /// someone pushed other content under it by hand. With `fail_on`, a scan
    /// that is missing or unfinished, or found too much, is a change too:
    /// applying it waits for the scan, and refuses the image.
    pub fn diff(spec: &ImageSpec, state: &ImageState) -> Vec<FieldDiff> {
        let mut out = Vec::new();
        if state.digest != spec.image.digest {
            out.push(FieldDiff::update(
                "digest",
                &state.digest,
                &spec.image.digest,
            ));
        }
        if let (Some(fail_on), Some(scan)) = (spec.fail_on, &state.scan) {
            let wanted = format!(
                "nothing at or above {}",
                fail_on.ecr_name().to_ascii_lowercase()
            );
            match scan.over(fail_on) {
                Some(over) => out.push(FieldDiff::update("scan findings", over, wanted)),
                None if !matches!(scan, Scan::Complete { .. }) => {
                    out.push(FieldDiff::update("scan", scan.summary(), "complete"))
                }
                None => {}
            }
        }
        out
    }

    pub async fn update(aws: &Aws, spec: &ImageSpec, state: &ImageState) -> Result<ImageState> {
        if state.digest != spec.image.digest {
            return Err(AwsError::new(
                ErrorKind::Conflict,
                "PutImage",
                format!(
                    "tag {} of ECR repository {} names {}, not the agent image {}; tags there are immutable: delete that image, or change the agent binary",
                    state.tag, state.repository, state.digest, spec.image.digest
                ),
            ));
        }
        let mut state = state.clone();
        gate(aws, spec, &mut state).await?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::repository::*;
    use super::*;
    use crate::tags::{Environment, Tags};

    #[test]
    fn the_same_binary_is_the_same_image_and_another_is_not() {
        let a = OciImage::static_binary("task-executor", b"\x7fELF one", "65532:65532").unwrap();
        let b = OciImage::static_binary("task-executor", b"\x7fELF one", "65532:65532").unwrap();
        let c = OciImage::static_binary("task-executor", b"\x7fELF two", "65532:65532").unwrap();
        assert_eq!(a, b);
        assert_ne!(a.digest, c.digest);
        assert_eq!(a.digest, sha256(a.manifest.as_bytes()));
        let manifest: serde_json::Value = serde_json::from_str(&a.manifest).unwrap();
        assert_eq!(manifest["config"]["digest"], a.config.digest.as_str());
        assert_eq!(manifest["layers"][0]["digest"], a.layers[0].digest.as_str());
        assert_eq!(
            manifest["layers"][0]["size"],
            a.layers[0].bytes.len() as u64
        );
        let config: serde_json::Value = serde_json::from_slice(&a.config.bytes).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], a.layers[0].digest.as_str());
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Entrypoint"][0], "/task-executor");
        // The layer is a tar holding the binary at its path.
        let mut archive = tar::Archive::new(a.layers[0].bytes.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(entries, [("task-executor".to_string(), 0o755)]);
        assert!(a.tag("0.1.0").starts_with("0.1.0-"));
        assert_eq!(a.tag("0.1.0").len(), "0.1.0-".len() + 12);
    }

    #[test]
    fn a_repository_without_its_policy_or_scanning_is_an_update() {
        let spec = RepositorySpec::agent(
            Tags::new(&Environment::new("ts", "prod"), "ecr-repository/agent", "r"),
            "agent",
            10,
            Retention::Keep,
        );
        assert_eq!(spec.name, "taskctl/ts-prod/agent");
        let mut state = RepositoryState {
            name: spec.name.clone(),
            arn: "arn".into(),
            uri: "uri".into(),
            scan_on_push: true,
            immutable: true,
            lifecycle: Some(spec.lifecycle_policy()),
            retention: Retention::Keep,
            tags: spec.tags.to_map(),
        };
        assert_eq!(diff(&spec, &state), []);
        state.scan_on_push = false;
        state.lifecycle = None;
        let fields: Vec<String> = diff(&spec, &state).into_iter().map(|d| d.field).collect();
        assert_eq!(fields, ["scan_on_push", "lifecycle_policy"]);
    }
}
