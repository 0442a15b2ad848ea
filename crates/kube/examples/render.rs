//! Renders the manifests of a profile and checks each against the schema:
//! `cargo run -p taskctl-kube --example render -- PROFILE [ENV] [TEMPLATES] [--quiet]`.
//! Used by `bench/render.sh`; prints the YAML stream unless `--quiet`;
//! `--load-only` stops after loading the profile (the benchmark's baseline);
//! `--timings` prints the time of each phase to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use taskctl_core::Severity;
use taskctl_core::profile::{LoadOptions, load};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quiet = args.iter().any(|a| a == "--quiet");
    let load_only = args.iter().any(|a| a == "--load-only");
    let timings = args.iter().any(|a| a == "--timings");
    let start = std::time::Instant::now();
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(profile) = positional.first() else {
        eprintln!("usage: render PROFILE [ENV] [TEMPLATES] [--quiet]");
        return ExitCode::from(64);
    };
    let env = positional.get(1).map(|s| s.to_string());
    let templates = PathBuf::from(positional.get(2).map_or("templates", |s| s.as_str()));
    let loaded = load(&LoadOptions {
        files: vec![PathBuf::from(profile)],
        environment: env,
        vars: &|name| std::env::var(name).ok(),
    });
    let Some(profile) = loaded.valid_profile() else {
        for d in loaded
            .diagnostics
            .0
            .iter()
            .filter(|d| d.severity == Severity::Error)
        {
            eprintln!("error: {}: {}", d.path, d.message);
        }
        return ExitCode::FAILURE;
    };
    if load_only {
        return ExitCode::SUCCESS;
    }
    let loaded_at = start.elapsed();
    // The steps of `taskctl_kube::render`, one by one, to time each.
    let rendered = taskctl_kube::view::build(profile, &templates).and_then(|view| {
        let viewed_at = start.elapsed();
        let renderer = taskctl_kube::Renderer::load(&templates)?;
        let parsed_at = start.elapsed();
        Ok((renderer.render(&view)?, viewed_at, parsed_at))
    });
    let (manifests, viewed_at, parsed_at) = match rendered {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            return ExitCode::FAILURE;
        }
    };
    let rendered_at = start.elapsed();
    let mut failed = false;
    for m in &manifests {
        if let Err(e) = taskctl_kube::check(m) {
            eprintln!("error: {e}");
            failed = true;
        }
    }
    if timings {
        let checked_at = start.elapsed();
        eprintln!(
            "load profile {:?}, build view {:?}, parse templates {:?}, render {:?}, schema check {:?} ({} objects)",
            loaded_at,
            viewed_at - loaded_at,
            parsed_at - viewed_at,
            rendered_at - parsed_at,
            checked_at - rendered_at,
            manifests.len()
        );
    }
    if !quiet {
        print!("{}", taskctl_kube::to_yaml_stream(&manifests));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
