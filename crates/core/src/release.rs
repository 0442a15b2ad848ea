//! Releases: what one deploy put on a target, numbered, kept on the target.
//!
//! Every successful deploy records release N: the resolved profile it was
//! made from (secrets are references, never values, so the profile is safe to
//! keep), the images it ran by digest, and a hash of each piece of
//! configuration. Restoring release N is deploying its profile again with
//! its images pinned, which restores configuration and code together.
//!
//! Where releases live is the target's business ([`ReleaseStore`]): labeled
//! objects on the Docker engine, compressed Secrets in a Kubernetes cluster.
//! This module holds what is common: the record, and retention.

use crate::profile::Profile;
use crate::state::StateError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a release came to be, and what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Running now.
    Deployed,
    /// Replaced by a later release.
    Superseded,
    /// Its verification failed; the target was rolled back from it.
    Failed,
}

impl std::fmt::Display for ReleaseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReleaseStatus::Deployed => "deployed",
            ReleaseStatus::Superseded => "superseded",
            ReleaseStatus::Failed => "failed",
        })
    }
}

/// One release of an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// 1, 2, 3 … per environment; never reused.
    pub revision: u32,
    /// `<profile name>/<environment>`.
    pub environment: String,
    /// The run that made it.
    pub run_id: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub status: ReleaseStatus,
    /// `deploy`, `rollback to 3`, `automatic rollback to 3 (gate …)`.
    pub description: String,
    /// Workload name → image reference pinned by digest
    /// (`task-executor@sha256:…` or `task-executor:local@sha256:…`).
    pub images: BTreeMap<String, String>,
    /// Piece of configuration (`agent/<name>/env`, `configmap/agent-config`)
    /// → sha256 of its content, so two releases can be compared at a glance.
    pub config_hashes: BTreeMap<String, String>,
    /// Every secret reference the release uses (`vault:secret/x#y`).
    pub secret_refs: Vec<String>,
    /// Vault path → the KV version the release ran with; restoring the
    /// release reads these versions ([`Release::pinned_profile`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_versions: BTreeMap<String, u64>,
    /// The resolved profile the release was deployed from.
    pub profile: serde_json::Value,
    /// What its verification saw: every gate and condition with its last
    /// value (`taskctl status` shows them). Empty until it was verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::ops::Check>,
}

impl Release {
    /// The profile to deploy to restore this release.
    pub fn profile(&self) -> Result<Profile, serde_json::Error> {
        serde_json::from_value(self.profile.clone())
    }

    /// The profile with every agent's and component's image pinned to the digest this
    /// release ran and no image build: deploying it restores the release
    /// exactly, whatever the registry or the source tree holds now.
    pub fn pinned_profile(&self) -> Result<Profile, serde_json::Error> {
        let mut value = self.profile.clone();
        crate::secrets::pin_versions(&mut value, &self.secret_versions);
        let mut profile: Profile = serde_json::from_value(value)?;
        for agent in profile
            .agents
            .iter_mut()
            .chain(profile.components.iter_mut())
        {
            if let Some(image) = self.images.get(&agent.name) {
                agent.image = image.clone();
                agent.build = None;
            }
        }
        Ok(profile)
    }
}

/// Where a target keeps its releases.
#[async_trait]
pub trait ReleaseStore: Send + Sync {
    /// Every kept release, oldest first.
    async fn list(&self) -> Result<Vec<Release>, StateError>;

    /// Writes (or overwrites) a release.
    async fn put(&self, release: &Release) -> Result<(), StateError>;

    /// Removes a release.
    async fn delete(&self, revision: u32) -> Result<(), StateError>;

    async fn get(&self, revision: u32) -> Result<Option<Release>, StateError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|r| r.revision == revision))
    }

    /// The release running now: the newest with status `deployed`.
    async fn current(&self) -> Result<Option<Release>, StateError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.status == ReleaseStatus::Deployed))
    }
}

/// The revision the next release gets: one more than any kept.
pub fn next_revision(kept: &[Release]) -> u32 {
    kept.iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// The revisions to delete so that only the newest `keep` remain; the
/// release running now is never among them.
pub fn to_prune(kept: &[Release], keep: usize) -> Vec<u32> {
    let mut revisions: Vec<&Release> = kept.iter().collect();
    revisions.sort_by_key(|r| r.revision);
    let excess = revisions.len().saturating_sub(keep.max(1));
    let current = revisions
        .iter()
        .rev()
        .find(|r| r.status == ReleaseStatus::Deployed)
        .map(|r| r.revision);
    revisions
        .into_iter()
        .take(excess)
        .map(|r| r.revision)
        .filter(|r| Some(*r) != current)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(revision: u32, status: ReleaseStatus) -> Release {
        Release {
            revision,
            environment: "task/production".into(),
            run_id: format!("run-{revision}"),
            created_at: 0,
            status,
            description: "deploy".into(),
            images: BTreeMap::new(),
            config_hashes: BTreeMap::new(),
            secret_refs: Vec::new(),
            secret_versions: BTreeMap::new(),
            profile: serde_json::Value::Null,
            checks: Vec::new(),
        }
    }

    #[test]
    fn revisions_are_never_reused() {
        let kept = vec![
            release(4, ReleaseStatus::Superseded),
            release(5, ReleaseStatus::Deployed),
        ];
        assert_eq!(next_revision(&kept), 6);
        assert_eq!(next_revision(&[]), 1);
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_running_one() {
        let mut kept: Vec<Release> = (1..=12)
            .map(|r| release(r, ReleaseStatus::Superseded))
            .collect();
        kept[11].status = ReleaseStatus::Deployed;
        assert_eq!(to_prune(&kept, 10), vec![1, 2]);
        // After a rollback to 1, release 1 runs and must stay.
        kept[11].status = ReleaseStatus::Failed;
        kept[0].status = ReleaseStatus::Deployed;
        assert_eq!(to_prune(&kept, 10), vec![2]);
    }

    #[test]
    fn a_profile_survives_the_round_trip_through_a_release() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../profiles");
        for file in ["production.yaml", "local-external.yaml"] {
            let loaded = crate::profile::load(&crate::profile::LoadOptions {
                files: vec![std::path::Path::new(dir).join(file)],
                environment: None,
                vars: &|_| None,
            });
            let profile = loaded.valid_profile().expect("a valid shipped profile");
            let mut r = release(1, ReleaseStatus::Deployed);
            r.profile = serde_json::to_value(profile).unwrap();
            let text = serde_json::to_string(&r).unwrap();
            let back: Release = serde_json::from_str(&text).unwrap();
            let restored = back.profile().unwrap();
            assert_eq!(
                serde_json::to_value(&restored).unwrap(),
                r.profile,
                "{file}"
            );
        }
    }
}
