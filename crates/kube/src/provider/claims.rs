//! The claims a StatefulSet makes from its `volumeClaimTemplates`: no
//! rendered object, and never pruned; `destroy --delete-data` deletes them
//! with their StatefulSet, naming each.

use super::*;
use kube::api::ListParams;

/// Deletes the claims of StatefulSet `m` (`<template>-<name>-<ordinal>`)
/// that carry the environment's label: a claim of the same name owned by
/// someone else is left.
pub(crate) async fn delete_of_statefulset(
    client: &Client,
    m: &Manifest,
    environment: &str,
) -> Result<(), StepError> {
    let Some(namespace) = m.namespace.as_deref() else {
        return Ok(());
    };
    let templates: Vec<&str> = m
        .value
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    if templates.is_empty() {
        return Ok(());
    }
    let Some(known) = resources::lookup("v1", "PersistentVolumeClaim") else {
        return Ok(());
    };
    let api = cluster::api(client, &known, Some(namespace));
    let selector = format!("{ENVIRONMENT_LABEL}={environment},{MANAGED_BY}");
    let claims = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| step_error("listing persistentvolumeclaims", e))?;
    for claim in claims.items {
        let Some(name) = claim.metadata.name.as_deref() else {
            continue;
        };
        if templates.iter().any(|t| is_claim_of(name, t, &m.name)) {
            tracing::warn!(
                object = %format!("PersistentVolumeClaim {namespace}/{name}"),
                "deleting data (destroy --delete-data)"
            );
            cluster::delete(client, &known, Some(namespace), name).await?;
        }
    }
    Ok(())
}

/// Whether `claim` is `<template>-<set>-<ordinal>`.
fn is_claim_of(claim: &str, template: &str, set: &str) -> bool {
    claim
        .strip_prefix(template)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_prefix(set))
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::is_claim_of;

    #[test]
    fn only_template_set_ordinal_names_are_claims_of_the_set() {
        assert!(is_claim_of("data-rabbitmq-0", "data", "rabbitmq"));
        assert!(is_claim_of("data-rabbitmq-12", "data", "rabbitmq"));
        assert!(!is_claim_of("data-rabbitmq-", "data", "rabbitmq"));
        assert!(!is_claim_of("data-rabbitmq-x", "data", "rabbitmq"));
        assert!(!is_claim_of("data-rabbitmq-extra-0", "data", "rabbitmq"));
        assert!(!is_claim_of("data-mongodb-0", "data", "rabbitmq"));
    }
}
