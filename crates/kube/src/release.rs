//! Releases kept in the cluster, as helm keeps them: one Secret per
//! revision, `taskctl-release-<environment>-v<N>` in `taskctl-system`,
//! labelled `taskctl.dev/release-of=<environment>` and
//! `taskctl.dev/revision=<N>`, of type `taskctl.dev/release.v1`, holding
//! the gzipped Release JSON under `release`.
//!
//! Why a Secret: a release holds the resolved profile, which is safe to
//! keep (secrets are references) but is nobody's business who cannot read
//! Secrets in that namespace; and gzip, because an object is limited to
//! 1 MiB and the profile with its rendered pieces compresses tenfold.
//!
//! The release Secrets carry no `taskctl.dev/environment` label, so prune
//! never sees them.

use crate::cluster::{FIELD_MANAGER, is_not_found};
use crate::connect::ClientSource;
use crate::lock::{SYSTEM_NAMESPACE, ensure_system_namespace};
use async_trait::async_trait;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use taskctl_core::release::{Release, ReleaseStore};
use taskctl_core::state::StateError;

/// The Secret type of a release record.
pub const RELEASE_TYPE: &str = "taskctl.dev/release.v1";
pub const RELEASE_OF: &str = "taskctl.dev/release-of";
pub const REVISION: &str = "taskctl.dev/revision";
const DATA_KEY: &str = "release";

/// The releases of one environment in one cluster.
pub struct KubeReleaseStore {
    client: ClientSource,
    /// The label form, `<name>.<env>`.
    environment: String,
}

impl KubeReleaseStore {
    pub fn new(client: Client, environment: &str) -> KubeReleaseStore {
        Self::with_source(ClientSource::fixed(client), environment)
    }

    /// The releases in a cluster that may not exist yet: it has none.
    pub fn with_source(client: ClientSource, environment: &str) -> KubeReleaseStore {
        KubeReleaseStore {
            client,
            environment: environment.to_string(),
        }
    }

    async fn client(&self) -> Result<Option<Client>, StateError> {
        self.client
            .get(None)
            .await
            .map_err(|e| backend("reaching the cluster", e))
    }

    async fn require(&self) -> Result<Client, StateError> {
        self.client().await?.ok_or_else(|| {
            StateError::Backend("the cluster that keeps the releases does not exist".into())
        })
    }

    /// `taskctl-release-<environment>-v<N>`.
    pub fn secret_name(&self, revision: u32) -> String {
        format!("taskctl-release-{}-v{revision}", self.environment)
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Backend(format!("{what}: {e}"))
}

/// The gzipped JSON of a release.
pub fn encode(release: &Release) -> Result<Vec<u8>, StateError> {
    let json = serde_json::to_vec(release).map_err(|e| backend("encoding a release", e))?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&json)
        .and_then(|_| gz.finish())
        .map_err(|e| backend("compressing a release", e))
}

pub fn decode(location: &str, bytes: &[u8]) -> Result<Release, StateError> {
    let corrupt = |message: String| StateError::Corrupt {
        location: location.to_string(),
        message,
    };
    let mut json = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut json)
        .map_err(|e| corrupt(format!("not gzip: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| corrupt(format!("not a release: {e}")))
}

#[async_trait]
impl ReleaseStore for KubeReleaseStore {
    async fn list(&self) -> Result<Vec<Release>, StateError> {
        let selector = format!("{RELEASE_OF}={}", self.environment);
        // No cluster, no releases.
        let Some(client) = self.client().await? else {
            return Ok(Vec::new());
        };
        let secrets = match Api::<Secret>::namespaced(client, SYSTEM_NAMESPACE)
            .list(&ListParams::default().labels(&selector))
            .await
        {
            Ok(l) => l.items,
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(backend("listing release Secrets", e)),
        };
        let mut releases = Vec::new();
        for s in secrets {
            let name = s.metadata.name.clone().unwrap_or_default();
            if s.type_.as_deref() != Some(RELEASE_TYPE) {
                continue;
            }
            let location = format!("Secret {SYSTEM_NAMESPACE}/{name}");
            let data = s
                .data
                .as_ref()
                .and_then(|d| d.get(DATA_KEY))
                .ok_or_else(|| StateError::Corrupt {
                    location: location.clone(),
                    message: format!("no `{DATA_KEY}` key"),
                })?;
            releases.push(decode(&location, &data.0)?);
        }
        releases.sort_by_key(|r| r.revision);
        Ok(releases)
    }

    async fn put(&self, release: &Release) -> Result<(), StateError> {
        let client = self.require().await?;
        ensure_system_namespace(&client)
            .await
            .map_err(|e| backend("the taskctl-system namespace", e))?;
        let name = self.secret_name(release.revision);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(SYSTEM_NAMESPACE.into()),
                labels: Some(BTreeMap::from([
                    (RELEASE_OF.to_string(), self.environment.clone()),
                    (REVISION.to_string(), release.revision.to_string()),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "taskctl".to_string(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([(
                    "taskctl.dev/release-status".to_string(),
                    release.status.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some(RELEASE_TYPE.into()),
            data: Some(BTreeMap::from([(
                DATA_KEY.to_string(),
                ByteString(encode(release)?),
            )])),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(client, SYSTEM_NAMESPACE)
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map(|_| ())
            .map_err(|e| backend(&format!("writing Secret {SYSTEM_NAMESPACE}/{name}"), e))
    }

    async fn delete(&self, revision: u32) -> Result<(), StateError> {
        let name = self.secret_name(revision);
        let api = Api::<Secret>::namespaced(self.require().await?, SYSTEM_NAMESPACE);
        match api.delete(&name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(backend(
                &format!("deleting Secret {SYSTEM_NAMESPACE}/{name}"),
                e,
            )),
        }
    }
}
