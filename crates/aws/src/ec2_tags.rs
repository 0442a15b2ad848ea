//! Bringing an EC2 resource's tags in line with its spec.
//!
//! Only missing or different tags are written (`CreateTags`), never the run
//! tag of an adopted resource: that records the run that created it. So a
//! resource already in sync costs no call at all.

use crate::Aws;
use crate::error::{AwsError, Result};
use crate::tags::{self, Tags};
use std::collections::BTreeMap;

pub(crate) async fn reconcile(
    aws: &Aws,
    resource_id: &str,
    spec: &Tags,
    observed: &mut BTreeMap<String, String>,
) -> Result<()> {
    let missing = tags::missing(&spec.desired_for_diff(), observed);
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(
        provider = "aws",
        resource_id,
        count = missing.len(),
        "tagging"
    );
    aws.ec2
        .create_tags()
        .resources(resource_id)
        .set_tags(Some(tags::ec2_tags(&missing)))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateTags", e))?;
    observed.extend(missing);
    Ok(())
}
