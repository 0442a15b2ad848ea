//! Objects applied per second against `kube-double`, with each level's
//! objects applied in parallel versus one object at a time, in the same run;
//! and the wall time of render + schema check of the production profile.
//! `cargo run --release -p taskctl-kube --example apply_bench -- [RUNS] [LATENCY_MS]`
//! (used by `bench/kube-apply.sh`). LATENCY_MS is added by the double to
//! every answer, standing for the round trip to a remote API server.
//!
//! Each run is a fresh install of production on a fresh double (plan, apply,
//! readiness waits, prune), through the core's deploy operation as the CLI
//! runs it; the double's controllers act 5 ms after a change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskctl_core::engine::RetryPolicy;
use taskctl_core::events::{Discard, RunOutcome};
use taskctl_core::ops::{self, DeployOptions, Scope};
use taskctl_core::profile::{LoadOptions, Profile, load};
use taskctl_core::state::LocalStore;
use taskctl_kube::{KubeOptions, KubernetesProvider};
use tokio_util::sync::CancellationToken;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn install(
    profile: &Profile,
    templates: &Path,
    parallelism: usize,
    latency: Duration,
) -> Result<Duration, String> {
    let double = kube_double::KubeDouble::start(kube_double::Config {
        ready_delay: Duration::from_millis(5),
        latency,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, double.kubeconfig()).map_err(|e| e.to_string())?;
    let client = taskctl_kube::cluster::client_from_kubeconfig(Some(&kubeconfig), None)
        .await
        .map_err(|e| e.to_string())?;
    let provider = KubernetesProvider::with_client(
        client,
        KubeOptions {
            templates: taskctl_kube::Templates::Dir(templates.to_path_buf()),
            parallelism,
            poll_interval: Duration::from_millis(5),
            ..KubeOptions::default()
        },
    );
    let store = Arc::new(LocalStore::new(dir.path(), &ops::environment_key(profile)));
    let start = Instant::now();
    let outcome = ops::deploy(
        profile,
        &provider,
        store,
        Arc::new(Discard),
        DeployOptions {
            scope: Scope::all(),
            parallelism: 10,
            dry_run: false,
            saved_plan: None,
            grace: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            cancel: CancellationToken::new(),
            skip_preflight: true,
        },
        &|_| true,
    )
    .await
    .map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    match outcome.applied {
        Some(r) if r.outcome == RunOutcome::Succeeded => Ok(elapsed),
        Some(r) => Err(format!(
            "the install failed: {:?}",
            r.first_error().map(|s| &s.error)
        )),
        None => Err("nothing was applied".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args
        .first()
        .map_or(Ok(5), |a| a.parse())
        .map_err(|_| "RUNS is a number")?;
    let latency_ms: u64 = args
        .get(1)
        .map_or(Ok(0), |a| a.parse())
        .map_err(|_| "LATENCY_MS is a number")?;
    let latency = Duration::from_millis(latency_ms);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let templates = root.join("templates");
    let loaded = load(&LoadOptions {
        files: vec![root.join("profiles/production.yaml")],
        environment: Some("production".into()),
        vars: &|_| None,
    });
    let profile = loaded
        .valid_profile()
        .ok_or("the production profile is invalid")?
        .clone();

    let mut render = Vec::new();
    let mut objects = 0;
    for _ in 0..runs.max(1) * 4 {
        let t = Instant::now();
        let manifests = taskctl_kube::render(&profile, &templates).map_err(|e| e.to_string())?;
        for m in &manifests {
            taskctl_kube::check(m).map_err(|e| e.to_string())?;
        }
        render.push(t.elapsed());
        objects = manifests.len();
    }
    println!(
        "render + schema check of production ({objects} objects): median {:.2} ms",
        median(render).as_secs_f64() * 1e3
    );

    let mut parallel = Vec::new();
    let mut sequential = Vec::new();
    // Interleaved, so both modes see the same machine load.
    for _ in 0..runs.max(1) {
        parallel.push(install(&profile, &templates, 8, latency).await?);
        sequential.push(install(&profile, &templates, 1, latency).await?);
    }
    let (p, s) = (median(parallel), median(sequential));
    let rate = |d: Duration| objects as f64 / d.as_secs_f64();
    println!("fresh install against kube-double, {latency_ms} ms added latency, median of {runs}:");
    println!(
        "  levels in parallel (8 at once): {:>8.1} ms  {:>7.1} objects/s",
        p.as_secs_f64() * 1e3,
        rate(p)
    );
    println!(
        "  one object at a time:           {:>8.1} ms  {:>7.1} objects/s",
        s.as_secs_f64() * 1e3,
        rate(s)
    );
    println!(
        "  ratio (parallel / one at a time): {:.2}x",
        rate(p) / rate(s)
    );
    Ok(())
}
