use std::path::{Path, PathBuf};
use taskctl_core::profile::{LoadOptions, Profile, load};
use taskctl_kube::Manifest;

pub const ENVIRONMENTS: &[&str] = &["development", "staging", "production"];

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn templates() -> PathBuf {
    workspace().join("templates")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every shipped profile, by path.
pub fn shipped_profiles() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(workspace().join("profiles"))
        .expect("profiles directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 4, "expected the shipped profiles, found {v:?}");
    v
}

/// Loads `files` under `env`, failing the test with every diagnostic.
pub fn load_profile(files: &[PathBuf], env: &str) -> Profile {
    let loaded = load(&LoadOptions {
        files: files.to_vec(),
        environment: Some(env.to_string()),
        // Variables keep their defaults (`${VAR:-default}`).
        vars: &|_| None,
    });
    match loaded.valid_profile() {
        Some(p) => p.clone(),
        None => panic!(
            "{files:?} under {env} does not validate: {:#?}",
            loaded.diagnostics.0
        ),
    }
}

pub fn render(files: &[PathBuf], env: &str) -> Vec<Manifest> {
    let profile = load_profile(files, env);
    taskctl_kube::render(&profile, &templates())
        .unwrap_or_else(|e| panic!("{files:?} under {env}: {}", chain(&e)))
}

pub fn production() -> Vec<Manifest> {
    render(
        &[workspace().join("profiles/production.yaml")],
        "production",
    )
}

pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(&format!(": {c}"));
        source = c.source();
    }
    s
}

pub fn find<'a>(
    manifests: &'a [Manifest],
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> &'a Manifest {
    manifests
        .iter()
        .find(|m| m.kind == kind && m.name == name && m.namespace.as_deref() == ns)
        .unwrap_or_else(|| {
            let have: Vec<String> = manifests.iter().map(|m| m.id()).collect();
            panic!("no {kind} {ns:?}/{name}; rendered: {have:#?}")
        })
}

/// A value at a JSON pointer, as a string for comparisons.
pub fn at(m: &Manifest, pointer: &str) -> serde_json::Value {
    m.value
        .pointer(pointer)
        .cloned()
        .unwrap_or_else(|| panic!("{}: nothing at {pointer}", m.id()))
}

pub fn text(m: &Manifest, pointer: &str) -> String {
    match at(m, pointer) {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}
