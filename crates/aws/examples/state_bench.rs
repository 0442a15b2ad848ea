//! Figures of the S3 state backend (run by `bench/state-s3.sh`, which
//! points `AWS_ENDPOINT_URL` at moto, directly or through a latency proxy,
//! and makes the bucket).
//!
//! Usage: state_bench BUCKET [entries] [rounds]
//!
//! Prints: lock acquire + release latency (median and p90 of `rounds`
//! pairs), append latency, and the wall time of reading an `entries`-long
//! journal one object at a time vs. with bounded concurrency (median of
//! `rounds` reads each, interleaved in the same run), and their ratio.

use std::time::{Duration, Instant};
use taskctl_aws::{S3Location, S3Store};
use taskctl_core::journal::{JournalEntry, Record};
use taskctl_core::state::{Acquired, Lease, StateStore};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bucket = args
        .next()
        .expect("usage: state_bench BUCKET [entries] [rounds]");
    let entries: usize = args.next().map_or(500, |a| a.parse().expect("entries"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("rounds"));
    let store = S3Store::from_env(
        S3Location {
            bucket,
            prefix: "bench".into(),
            environment: format!("run-{}/bench", std::process::id()),
        },
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let mut lock = Vec::new();
    for i in 0..rounds.max(10) * 4 {
        let lease = Lease::new(&format!("run-{i}"), "deploy", Duration::from_secs(60));
        let t = Instant::now();
        match store
            .acquire(&lease)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
        {
            Acquired::Yes { .. } => {}
            Acquired::HeldBy(l) => panic!("held by {}", l.run_id),
        }
        store
            .release(&lease)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        lock.push(t.elapsed());
    }

    let mut appends = Vec::new();
    for n in 0..entries {
        let entry = JournalEntry::now(
            "run-bench",
            Record::RunFinished {
                outcome: format!("entry {n}"),
            },
        );
        let t = Instant::now();
        store
            .append_journal(&entry)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        appends.push(t.elapsed());
    }

    let concurrency = taskctl_aws::state::DEFAULT_READ_CONCURRENCY;
    let (mut serial, mut concurrent) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (n, times) in [(1, &mut serial), (concurrency, &mut concurrent)] {
            let reader = store.handle().with_read_concurrency(n);
            let t = Instant::now();
            let read = reader.journal().await.unwrap_or_else(|e| panic!("{e}"));
            times.push(t.elapsed());
            assert_eq!(read.len(), entries);
        }
    }
    let (s, c) = (median(serial), median(concurrent));
    println!(
        "lock acquire + release   {} median, {} p90 ({} pairs)",
        ms(median(lock.clone())),
        ms(p90(lock.clone())),
        lock.len()
    );
    println!(
        "journal append           {} median, {} p90 ({entries} entries)",
        ms(median(appends.clone())),
        ms(p90(appends))
    );
    println!(
        "read {entries} entries, 1 at a time      {} (median of {rounds})",
        ms(s)
    );
    println!(
        "read {entries} entries, {concurrency} at a time     {} (median of {rounds})",
        ms(c)
    );
    println!(
        "concurrent speed-up      {:.1}x",
        s.as_secs_f64() / c.as_secs_f64()
    );
}
