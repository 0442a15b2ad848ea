//! Embeds the repository's `templates/` directory into the crate: every
//! file under it (the `.yaml.hbs` templates and the dashboards they read)
//! becomes an `include_str!` in `$OUT_DIR/embedded_templates.rs`, so an
//! installed `taskctl` renders from any working directory. Cargo reruns
//! this when anything under `templates/` changes.

use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.join("../../templates");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut code = String::from(
        "/// Every file under `templates/`: (path relative to it, content).\npub static FILES: &[(&str, &str)] = &[\n",
    );
    for path in files {
        let rel = path
            .strip_prefix(&root)
            .expect("under the root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let abs = path.canonicalize().expect("an existing file");
        code.push_str(&format!(
            "    ({rel:?}, include_str!({:?})),\n",
            abs.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("embedded_templates.rs"), code).expect("OUT_DIR is writable");
}
