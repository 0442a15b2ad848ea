//! The release store on this machine's Docker engine: records are
//! created-never-started containers, listed back by label.

use std::collections::BTreeMap;
use taskctl_core::release::{Release, ReleaseStatus, ReleaseStore};
use taskctl_docker::release::DockerReleaseStore;

fn release(revision: u32, status: ReleaseStatus) -> Release {
    Release {
        revision,
        environment: "rel-test/development".into(),
        run_id: format!("r-{revision}"),
        created_at: 1_700_000_000 + u64::from(revision),
        status,
        description: "deploy".into(),
        images: BTreeMap::new(),
        config_hashes: [("agent/a/env".to_string(), "ab".repeat(32))].into(),
        secret_refs: vec!["env:TOKEN".into()],
        secret_versions: Default::default(),
        profile: serde_json::json!({"metadata": {"name": "rel-test"}}),
        checks: Vec::new(),
    }
}

#[tokio::test]
async fn releases_round_trip_through_labelled_containers() {
    let docker = taskctl_docker::engine::connect()
        .await
        .expect("these tests need the Docker engine (DOCKER_HOST or /var/run/docker.sock)");
    let environment = format!("rel-test-{}.development", std::process::id());
    let store = DockerReleaseStore {
        docker: docker.clone(),
        environment: environment.clone(),
    };
    assert!(store.list().await.unwrap().is_empty());
    store
        .put(&release(1, ReleaseStatus::Deployed))
        .await
        .unwrap();
    store
        .put(&release(2, ReleaseStatus::Deployed))
        .await
        .unwrap();
    // Overwrite: release 1 is superseded now.
    store
        .put(&release(1, ReleaseStatus::Superseded))
        .await
        .unwrap();
    let kept = store.list().await.unwrap();
    assert_eq!(
        kept.iter()
            .map(|r| (r.revision, r.status))
            .collect::<Vec<_>>(),
        [(1, ReleaseStatus::Superseded), (2, ReleaseStatus::Deployed)]
    );
    assert_eq!(store.current().await.unwrap().unwrap().revision, 2);
    assert_eq!(
        store.get(1).await.unwrap().unwrap(),
        release(1, ReleaseStatus::Superseded)
    );
    // A record is a container that never ran.
    let c = docker
        .inspect_container(
            &format!("taskctl-release-{environment}-2"),
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    assert_eq!(c.state.unwrap().status.unwrap().to_string(), "created");
    store.delete(1).await.unwrap();
    store.delete(1).await.unwrap(); // idempotent
    assert_eq!(store.list().await.unwrap().len(), 1);
    store.delete(2).await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
}
