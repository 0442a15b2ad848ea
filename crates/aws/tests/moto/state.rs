//! The S3 state backend against moto: the behaviour every backend shares
//! (`taskctl_core::state::conformance`, which the local backend runs too),
//! then what only S3 has: races on a takeover, logs longer than a list
//! page, what the objects hold, errors.
//!
//! Each test works in a bucket of its own.

use crate::common::*;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use futures_util::StreamExt;
use std::time::Duration;
use taskctl_aws::{S3Location, S3Store};
use taskctl_core::journal::{JournalEntry, Record};
use taskctl_core::state::conformance as c;
use taskctl_core::state::{Acquired, Lease, StateStore, unix_now};

/// A store on a fresh bucket, built the way the CLI builds it.
async fn fresh_store() -> S3Store {
    aws().await; // points the environment at moto
    let bucket = format!("taskctl-state-{}", suffix());
    let store = S3Store::from_env(
        S3Location {
            bucket: bucket.clone(),
            prefix: "teams/ops".into(),
            environment: "task/test".into(),
        },
        Some(REGION),
    )
    .await
    .expect("store");
    store
        .client()
        .create_bucket()
        .bucket(&bucket)
        .create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::UsWest2)
                .build(),
        )
        .send()
        .await
        .expect("create bucket");
    store
}

/// Every key under the store's folder, as S3 lists it.
async fn keys(store: &S3Store, under: &str) -> Vec<String> {
    let mut pages = store
        .client()
        .list_objects_v2()
        .bucket(&store.location_of().bucket)
        .prefix(format!("teams/ops/task/test/{under}"))
        .into_paginator()
        .send();
    let mut keys = Vec::new();
    while let Some(page) = pages.next().await {
        for o in page.expect("list").contents() {
            keys.push(o.key().unwrap().to_owned());
        }
    }
    keys
}

#[tokio::test]
async fn second_holder_is_refused_and_named() {
    let store = fresh_store().await;
    c::second_holder_is_refused_and_named(|| store.handle()).await;
}

#[tokio::test]
async fn expired_lease_is_taken_over() {
    let store = fresh_store().await;
    c::expired_lease_is_taken_over(|| store.handle()).await;
}

#[tokio::test]
async fn orphaned_lease_is_taken_over() {
    let store = fresh_store().await;
    c::orphaned_lease_is_taken_over(|| store.handle()).await;
}

#[tokio::test]
async fn renew_and_release_touch_only_the_own_lease() {
    let store = fresh_store().await;
    c::renew_and_release_touch_only_the_own_lease(|| store.handle()).await;
}

#[tokio::test]
async fn break_returns_the_removed_lease() {
    let store = fresh_store().await;
    c::break_returns_the_removed_lease(|| store.handle()).await;
}

#[tokio::test]
async fn logs_keep_append_order() {
    let store = fresh_store().await;
    c::logs_keep_append_order(|| store.handle()).await;
}

#[tokio::test]
async fn writers_never_overwrite_each_other() {
    let store = fresh_store().await;
    c::writers_never_overwrite_each_other(|| store.handle()).await;
    // Seven entries, seven objects: nothing was written over.
    assert_eq!(keys(&store, "journal/").await.len(), 5);
    assert_eq!(keys(&store, "audit/").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_takers_one_wins() {
    let store = fresh_store().await;
    c::concurrent_takers_one_wins(|| store.handle(), 16).await;
}

/// Many runs find one expired lease at once: each deletes the version it
/// read (only one delete succeeds) and puts its own lease on the condition
/// that none exists: exactly one wins, and the others are told who.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_takeovers_of_an_expired_lease_leave_one_holder() {
    let store = fresh_store().await;
    for round in 0..5 {
        let mut old = Lease::new(
            &format!("run-old-{round}"),
            "deploy",
            Duration::from_secs(60),
        );
        old.holder = "alice@elsewhere".into();
        old.expires_at = unix_now() - 1;
        store.break_lock().await.unwrap();
        assert!(matches!(
            store.acquire(&old).await.unwrap(),
            Acquired::Yes { .. }
        ));
        let takers: Vec<S3Store> = (0..12).map(|_| store.handle()).collect();
        let leases: Vec<Lease> = (0..12)
            .map(|i| {
                Lease::new(
                    &format!("run-{round}-{i}"),
                    "deploy",
                    Duration::from_secs(600),
                )
            })
            .collect();
        let results =
            futures_util::future::join_all(takers.iter().zip(&leases).map(|(s, l)| s.acquire(l)))
                .await;
        let mut winners = Vec::new();
        let mut refused_by = Vec::new();
        for (result, lease) in results.into_iter().zip(&leases) {
            match result.unwrap() {
                Acquired::Yes { replaced } => {
                    assert_eq!(
                        replaced.as_ref(),
                        Some(&old),
                        "the winner replaced the old lease"
                    );
                    winners.push(lease.clone());
                }
                Acquired::HeldBy(holder) => refused_by.push(holder),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert!(
            refused_by.iter().all(|h| *h == winners[0]),
            "{refused_by:?}"
        );
        assert_eq!(
            store.current_lock().await.unwrap(),
            Some(winners[0].clone())
        );
    }
}

fn entry(run: &str, n: usize) -> JournalEntry {
    JournalEntry::now(
        run,
        Record::RunFinished {
            outcome: format!("entry {n}"),
        },
    )
}

/// Four writers appending to one log at once (four processes): every entry
/// lands, each writer's in its own order, in dense key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_lose_no_entry() {
    let store = fresh_store().await;
    let entries: Vec<JournalEntry> = (0..100).map(|n| entry("run-race", n)).collect();
    let writers: Vec<S3Store> = (0..4).map(|_| store.handle()).collect();
    futures_util::future::join_all(writers.iter().enumerate().map(|(w, s)| {
        let mine: Vec<&JournalEntry> = entries.iter().skip(w).step_by(4).collect();
        async move {
            for e in mine {
                s.append_journal(e).await.unwrap();
            }
        }
    }))
    .await;
    let read = store.handle().journal().await.unwrap();
    assert_eq!(read.len(), entries.len());
    for w in 0..4 {
        let mine: Vec<&JournalEntry> = entries.iter().skip(w).step_by(4).collect();
        let seen: Vec<&JournalEntry> = read.iter().filter(|e| mine.contains(e)).collect();
        assert_eq!(
            seen, mine,
            "writer {w}'s entries in the order it appended them"
        );
    }
    let keys = keys(&store, "journal/").await;
    let expected: Vec<String> = (0..100)
        .map(|n| format!("teams/ops/task/test/journal/{n:020}.json"))
        .collect();
    assert_eq!(keys, expected);
}

/// A journal longer than one list page (1,000 keys) reads back whole and in
/// order, fetched concurrently, and a fresh writer appends after its last
/// entry. The first 1,100 entries are put straight into the bucket under
/// the documented key layout (it is fast, and proves the layout is what
/// the store reads); the rest go through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_longer_than_a_list_page_reads_back_in_order() {
    let store = fresh_store().await;
    let mut entries: Vec<JournalEntry> = (0..1100).map(|n| entry("run-long", n)).collect();
    let bucket = store.location_of().bucket.clone();
    let client = store.client().clone();
    futures_util::stream::iter(entries.iter().enumerate())
        .map(|(n, e)| {
            let (client, bucket) = (client.clone(), bucket.clone());
            let body = serde_json::to_vec(e).unwrap();
            async move {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(format!("teams/ops/task/test/journal/{n:020}.json"))
                    .body(body.into())
                    .send()
                    .await
                    .expect("put entry")
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for n in 1100..1105 {
        let e = entry("run-long", n);
        store.handle().append_journal(&e).await.unwrap();
        entries.push(e);
    }
    store.call_log().clear();
    let read = store.handle().journal().await.unwrap();
    assert_eq!(read, entries);
    let lists = store
        .call_log()
        .calls()
        .iter()
        .filter(|c| c.operation == "ListObjectsV2")
        .count();
    assert_eq!(lists, 2, "1,105 keys are two list pages");
    let keys = keys(&store, "journal/").await;
    assert_eq!(keys.len(), 1105);
    assert_eq!(
        keys.last().map(String::as_str),
        Some("teams/ops/task/test/journal/00000000000000001104.json")
    );
    // Read one at a time: the same entries in the same order.
    let one_by_one = store
        .handle()
        .with_read_concurrency(1)
        .journal()
        .await
        .unwrap();
    assert_eq!(one_by_one, read);
}

/// The lock object holds the lease and nothing else: holder, pid, run,
/// operation, start and expiry.
#[tokio::test]
async fn the_lock_object_is_the_lease() {
    let store = fresh_store().await;
    let lease = Lease::new("run-1", "deploy", Duration::from_secs(900));
    store.acquire(&lease).await.unwrap();
    let object = store
        .client()
        .get_object()
        .bucket(&store.location_of().bucket)
        .key("teams/ops/task/test/lock.json")
        .send()
        .await
        .expect("lock.json where the docs say");
    let body = object.body.collect().await.unwrap().into_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut fields: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "expires_at",
            "holder",
            "operation",
            "pid",
            "pid_start",
            "run_id",
            "started_at"
        ]
    );
    assert_eq!(json["run_id"], "run-1");
    assert_eq!(
        json["expires_at"].as_u64().unwrap() - json["started_at"].as_u64().unwrap(),
        900
    );
    assert_eq!(
        store.location(),
        format!("s3://{}/teams/ops/task/test/", store.location_of().bucket)
    );
}

#[tokio::test]
async fn a_missing_bucket_is_one_clear_line() {
    aws().await;
    let bucket = format!("taskctl-none-{}", suffix());
    let store = S3Store::from_env(
        S3Location {
            bucket: bucket.clone(),
            prefix: String::new(),
            environment: "task/test".into(),
        },
        Some(REGION),
    )
    .await
    .expect("no call is made before the first use");
    for err in [
        store.current_lock().await.map(|_| ()).unwrap_err(),
        store.journal().await.map(|_| ()).unwrap_err(),
        store
            .acquire(&Lease::new("r", "deploy", Duration::from_secs(60)))
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            text.contains(&format!("the state bucket `{bucket}` does not exist"))
                && text.contains("state.s3.bucket")
                && !text.contains('\n'),
            "{text}"
        );
    }
}
