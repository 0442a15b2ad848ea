//! Preflight against moto's EC2 catalog: zones, offerings, GPUs, overlap.

use crate::common::*;
use taskctl_aws::Tags;
use taskctl_aws::preflight;
use taskctl_aws::vpc::{self, VpcSpec};
use taskctl_core::Severity;
use taskctl_core::profile::NodeRole;

#[tokio::test]
async fn production_profile_passes_and_broken_ones_are_reported() {
    let aws = aws().await;
    let profile = production_profile();

    // Another environment's VPC overlapping 10.0.0.0/16.
    let other = environment();
    let overlapping = vpc::create(
        &aws,
        &VpcSpec {
            cidr: "10.0.0.0/16".into(),
            tags: Tags::new(&other, "vpc", "r"),
        },
    )
    .await
    .expect("vpc");

    let findings = preflight(&aws, &profile).await;
    let errors: Vec<_> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(
        findings
            .iter()
            .any(|f| f.check == "credentials" && f.severity == Severity::Note)
    );
    assert!(
        findings
            .iter()
            .any(|f| f.check == "gpu" && f.message.contains("g5.xlarge has 1 GPU")),
        "{findings:#?}"
    );
    assert!(
        findings
            .iter()
            .any(|f| f.check == "kubernetes-version" && f.message.contains("1.34"))
    );
    assert!(
        findings.iter().any(|f| f.check == "vpc-cidr"
            && f.severity == Severity::Warning
            && f.message.contains(&overlapping.vpc_id)),
        "{findings:#?}"
    );

    let mut broken = profile.clone();
    let network = broken.network.as_mut().expect("network");
    network.subnets.private[1].zone = "us-west-2z".into();
    let compute = broken.compute.as_mut().expect("compute");
    for g in &mut compute.node_groups {
        if g.role == NodeRole::Gpu {
            g.instance_type = "c6i.4xlarge".into();
        }
    }
    compute.kubernetes.version = "<1.20".parse().expect("constraint");
    let findings = preflight(&aws, &broken).await;
    let error = |check: &str, text: &str| {
        findings
            .iter()
            .any(|f| f.severity == Severity::Error && f.check == check && f.message.contains(text))
    };
    assert!(error("zones", "us-west-2z"), "{findings:#?}");
    assert!(error("gpu", "c6i.4xlarge has no GPU"), "{findings:#?}");
    assert!(error("kubernetes-version", "<1.20"), "{findings:#?}");

    vpc::delete(&aws, &overlapping.vpc_id)
        .await
        .expect("cleanup");
}
