//! The KMS key the in-cluster Vault auto-unseals with (its `seal "awskms"`
//! stanza names the key by alias).
//!
//! A key is found by its alias (`alias/taskctl/<name>-<environment>/vault-unseal`)
//! and checked by its tags: an aliased key taskctl does not own is reported
//! as a conflict, never adopted. A key made by a run that died between
//! `CreateKey` and `CreateAlias` is found by its tags on the next create
//! and given the alias, so no second key is made.
//!
//! The key holds no data but is the only way to decrypt Vault's root key:
//! losing it loses every secret in that Vault. So destroy keeps it unless
//! the user asked for the data to go (`destroy --delete-data`), and even
//! then only schedules its deletion, which KMS lets anyone with access
//! cancel for 30 days (a later deploy of the same environment does).

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, ErrorKind, Result};
use crate::tags::Tags;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, Tag};
use std::collections::BTreeMap;

/// Days KMS waits before deleting a key scheduled for deletion: the most
/// it allows, so a mistaken destroy has the longest time to be undone.
pub const DELETION_WINDOW_DAYS: i32 = 30;

/// What destroy does with the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Leave it (the default: Vault's data cannot be unsealed without it).
    Keep,
    /// Schedule its deletion ([`DELETION_WINDOW_DAYS`], cancellable).
    ScheduleDeletion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsKeySpec {
    /// `alias/…`: how the key is found, and what Vault's seal names.
    pub alias: String,
    pub description: String,
    pub retention: Retention,
    pub tags: Tags,
}

impl KmsKeySpec {
    /// The Vault auto-unseal key of an environment.
    pub fn vault_unseal(tags: Tags, retention: Retention) -> KmsKeySpec {
        KmsKeySpec {
            alias: taskctl_core::profile::vault_unseal_key_alias(
                &tags.environment.name,
                &tags.environment.environment,
            ),
            description: format!(
                "taskctl {}: auto-unseal of the in-cluster Vault (seal \"awskms\")",
                tags.environment.tag_value()
            ),
            retention,
            tags,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsKeyState {
    pub key_id: String,
    pub arn: String,
    /// `Enabled`, `Disabled`, `PendingDeletion`, …
    pub state: String,
    /// Whether KMS rotates the key material yearly.
    pub rotation: bool,
    /// Whether the alias points at this key (false for a key found by its
    /// tags after a run died before naming it).
    pub aliased: bool,
    pub retention: Retention,
    pub tags: BTreeMap<String, String>,
}

fn kms_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .filter_map(|(k, v)| Tag::builder().tag_key(k).tag_value(v).build().ok())
        .collect()
}

async fn key_tags(aws: &Aws, key_id: &str) -> Result<BTreeMap<String, String>> {
    let mut tags = BTreeMap::new();
    let mut marker = None;
    loop {
        let out = aws
            .kms
            .list_resource_tags()
            .key_id(key_id)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ListResourceTags", e))?;
        tags.extend(
            out.tags()
                .iter()
                .map(|t| (t.tag_key().to_owned(), t.tag_value().to_owned())),
        );
        marker = out.next_marker().map(str::to_owned);
        if !out.truncated() || marker.is_none() {
            return Ok(tags);
        }
    }
}

/// The key's state, rotation and tags, by id, alias or ARN.
async fn describe(aws: &Aws, spec: &KmsKeySpec, key: &str, aliased: bool) -> Result<KmsKeyState> {
    let out = aws
        .kms
        .describe_key()
        .key_id(key)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeKey", e))?;
    let meta = out.key_metadata().ok_or_else(|| {
        AwsError::new(
            ErrorKind::Other,
            "DescribeKey",
            format!("KMS returned no metadata for {key}"),
        )
    })?;
    let key_id = meta.key_id().to_owned();
    let state = meta
        .key_state()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    // KMS refuses rotation queries on a key pending deletion.
    let rotation = if meta.key_state() == Some(&KeyState::PendingDeletion) {
        false
    } else {
        aws.kms
            .get_key_rotation_status()
            .key_id(&key_id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetKeyRotationStatus", e))?
            .key_rotation_enabled()
    };
    Ok(KmsKeyState {
        arn: meta.arn().unwrap_or_default().to_owned(),
        tags: key_tags(aws, &key_id).await?,
        key_id,
        state,
        rotation,
        aliased,
        retention: spec.retention,
    })
}

pub async fn find(aws: &Aws, spec: &KmsKeySpec) -> Result<Option<KmsKeyState>> {
    let state = match describe(aws, spec, &spec.alias, true).await {
        Ok(state) => state,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    if !spec.tags.environment.owns(&state.tags) {
        return Err(AwsError::new(
            ErrorKind::Conflict,
            "DescribeKey",
            format!(
                "KMS alias `{}` names key {} that is not tagged as taskctl's for `{}`; point the alias elsewhere or delete it",
                spec.alias,
                state.key_id,
                spec.tags.environment.tag_value()
            ),
        ));
    }
    Ok(Some(state))
}

/// A key of this resource that a run made but did not name (it died
/// between `CreateKey` and `CreateAlias`). Only the create path looks: it
/// reads every key's tags.
async fn find_unnamed(aws: &Aws, spec: &KmsKeySpec) -> Result<Option<KmsKeyState>> {
    let mut marker = None;
    loop {
        let out = aws
            .kms
            .list_keys()
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ListKeys", e))?;
        for key in out.keys() {
            let Some(id) = key.key_id() else { continue };
            let tags = match key_tags(aws, id).await {
                Ok(tags) => tags,
                // Keys of other principals may not be readable.
                Err(e) if matches!(e.kind, ErrorKind::Denied | ErrorKind::NotFound) => continue,
                Err(e) => return Err(e),
            };
            if spec.tags.identifies(&tags) {
                let state = describe(aws, spec, id, false).await?;
                if state.state != KeyState::PendingDeletion.as_str() {
                    return Ok(Some(state));
                }
            }
        }
        marker = out.next_marker().map(str::to_owned);
        if !out.truncated() || marker.is_none() {
            return Ok(None);
        }
    }
}

pub async fn create(aws: &Aws, spec: &KmsKeySpec) -> Result<KmsKeyState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    if let Some(state) = find_unnamed(aws, spec).await? {
        tracing::info!(provider = "aws", key = %state.key_id, "naming a key an earlier run made");
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", alias = %spec.alias, "creating kms key");
    let out = aws
        .kms
        .create_key()
        .description(&spec.description)
        .key_usage(KeyUsageType::EncryptDecrypt)
        .key_spec(KeySpec::SymmetricDefault)
        .set_tags(Some(kms_tags(&spec.tags.to_map())))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateKey", e))?;
    let meta = out.key_metadata().ok_or_else(|| {
        AwsError::new(
            ErrorKind::Other,
            "CreateKey",
            "KMS returned no key metadata",
        )
    })?;
    let state = KmsKeyState {
        key_id: meta.key_id().to_owned(),
        arn: meta.arn().unwrap_or_default().to_owned(),
        state: KeyState::Enabled.as_str().to_owned(),
        rotation: false,
        aliased: false,
        retention: spec.retention,
        tags: spec.tags.to_map(),
    };
    update(aws, spec, &state).await
}

/// Names the key, brings it back from a scheduled deletion or disabled
/// state, turns rotation on, adds missing tags.
pub async fn update(aws: &Aws, spec: &KmsKeySpec, state: &KmsKeyState) -> Result<KmsKeyState> {
    let mut state = state.clone();
    let id = state.key_id.clone();
    if !state.aliased {
        aws.kms
            .create_alias()
            .alias_name(&spec.alias)
            .target_key_id(&id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateAlias", e))?;
        state.aliased = true;
    }
    if state.state == KeyState::PendingDeletion.as_str() {
        tracing::info!(provider = "aws", key = %id, "cancelling the key's scheduled deletion");
        aws.kms
            .cancel_key_deletion()
            .key_id(&id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CancelKeyDeletion", e))?;
        // A cancelled deletion leaves the key disabled.
        state.state = KeyState::Disabled.as_str().to_owned();
    }
    if state.state == KeyState::Disabled.as_str() {
        aws.kms
            .enable_key()
            .key_id(&id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("EnableKey", e))?;
        state.state = KeyState::Enabled.as_str().to_owned();
    }
    if !state.rotation {
        aws.kms
            .enable_key_rotation()
            .key_id(&id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("EnableKeyRotation", e))?;
        state.rotation = true;
    }
    let missing = crate::tags::missing(&spec.tags.desired_for_diff(), &state.tags);
    if !missing.is_empty() {
        aws.kms
            .tag_resource()
            .key_id(&id)
            .set_tags(Some(kms_tags(&missing)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("TagResource", e))?;
        state.tags.extend(missing);
    }
    Ok(state)
}

pub fn diff(spec: &KmsKeySpec, state: &KmsKeyState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if !state.aliased {
        out.push(FieldDiff::update("alias", "-", &spec.alias));
    }
    let enabled = KeyState::Enabled.as_str();
    if state.state != enabled {
        out.push(FieldDiff::update("key_state", &state.state, enabled));
    }
    diff::field(&mut out, "rotation", &state.rotation, &true);
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}

/// Destroy: keeps the key, or schedules its deletion (see the module
/// documentation). Returns what was done, for the progress line.
pub async fn delete(aws: &Aws, state: &KmsKeyState) -> Result<String> {
    match state.retention {
        Retention::Keep => Ok(format!(
            "kept KMS key {} ({}): the in-cluster Vault's data cannot be unsealed without it; `destroy --delete-data` schedules its deletion",
            state.key_id, state.state
        )),
        Retention::ScheduleDeletion if state.state == KeyState::PendingDeletion.as_str() => Ok(
            format!("KMS key {} is already scheduled for deletion", state.key_id),
        ),
        Retention::ScheduleDeletion => {
            let out = aws
                .kms
                .schedule_key_deletion()
                .key_id(&state.key_id)
                .pending_window_in_days(DELETION_WINDOW_DAYS)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("ScheduleKeyDeletion", e))?;
            let when = out
                .deletion_date()
                .map(|d| d.to_string())
                .unwrap_or_else(|| format!("in {DELETION_WINDOW_DAYS} days"));
            Ok(format!(
                "KMS key {} scheduled for deletion on {when} (`aws kms cancel-key-deletion` or a deploy of this environment before then keeps it)",
                state.key_id
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Environment;

    fn spec() -> KmsKeySpec {
        KmsKeySpec::vault_unseal(
            Tags::new(&Environment::new("ts", "prod"), "kms-key/vault", "r"),
            Retention::Keep,
        )
    }

    #[test]
    fn the_alias_is_the_environments() {
        assert_eq!(spec().alias, "alias/taskctl/ts-prod/vault-unseal");
    }

    #[test]
    fn a_key_pending_deletion_or_without_rotation_is_an_update() {
        let spec = spec();
        let mut state = KmsKeyState {
            key_id: "k".into(),
            arn: "arn".into(),
            state: "Enabled".into(),
            rotation: true,
            aliased: true,
            retention: Retention::Keep,
            tags: spec.tags.to_map(),
        };
        assert_eq!(diff(&spec, &state), []);
        state.state = "PendingDeletion".into();
        state.rotation = false;
        let fields: Vec<String> = diff(&spec, &state).into_iter().map(|d| d.field).collect();
        assert_eq!(fields, ["key_state", "rotation"]);
    }
}
