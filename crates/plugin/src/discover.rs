//! Where a plugin's executable is, and whether it is safe to run.
//!
//! Lookup, first match wins: the declaration's `path` (relative to the
//! profile file that declares it), `plugins/<name>` beside that file, then
//! `taskctl-<name>` in each directory of `PATH`. Whatever is found must be a
//! regular, executable file owned by the user running taskctl or by root,
//! and neither it nor its directory may be writable by others: anybody who
//! can replace a plugin runs code with the deployer's credentials.

use crate::error::{PluginError, PluginErrorKind};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use taskctl_core::profile::model::Plugin;

/// A plugin's executable and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub path: PathBuf,
    /// `path`, `plugins/`, `PATH`.
    pub source: &'static str,
}

/// Where plugins are looked for besides a declaration's own directory.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// Directories whose `plugins/` subdirectory is searched, in order.
    pub dirs: Vec<PathBuf>,
    /// `PATH`'s directories, searched for `taskctl-<name>`.
    pub path: Vec<PathBuf>,
}

impl Search {
    /// The process's `PATH` and the given profile directories.
    pub fn from_env(dirs: Vec<PathBuf>) -> Self {
        Search {
            dirs,
            path: std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
        }
    }
}

/// The executable of the declared `plugin`, checked safe to run.
pub fn locate(plugin: &Plugin, search: &Search) -> Result<Found, PluginError> {
    let base = plugin.declared_in.clone();
    if let Some(path) = &plugin.path {
        let p = Path::new(path);
        let full = match (p.is_absolute(), &base) {
            (false, Some(base)) => base.join(p),
            _ => p.to_path_buf(),
        };
        if !full.exists() {
            return Err(PluginError::new(
                PluginErrorKind::Unavailable,
                format!(
                    "plugin `{}`: `{}` does not exist (`path` is relative to the profile file that declares it)",
                    plugin.name,
                    full.display()
                ),
            ));
        }
        check_safe(&full)?;
        return Ok(Found {
            name: plugin.name.clone(),
            path: full,
            source: "path",
        });
    }
    let dirs = base.iter().chain(search.dirs.iter());
    let mut looked = Vec::new();
    for dir in dirs {
        let candidate = dir.join("plugins").join(&plugin.name);
        if candidate.exists() {
            check_safe(&candidate)?;
            return Ok(Found {
                name: plugin.name.clone(),
                path: candidate,
                source: "plugins/",
            });
        }
        looked.push(candidate.display().to_string());
    }
    let exe = format!("taskctl-{}", plugin.name);
    for dir in &search.path {
        let candidate = dir.join(&exe);
        if candidate.is_file() {
            check_safe(&candidate)?;
            return Ok(Found {
                name: plugin.name.clone(),
                path: candidate,
                source: "PATH",
            });
        }
    }
    looked.push(format!("{exe} on PATH"));
    Err(PluginError::new(
        PluginErrorKind::Unavailable,
        format!(
            "plugin `{}` not found (looked for {}); set its `path`, or install it as `{exe}`",
            plugin.name,
            looked.join(", ")
        ),
    ))
}

/// Every plugin executable in the search's `plugins/` directories and every
/// `taskctl-*` on `PATH`, by name, first found first; with why it may not
/// run, if so.
pub fn all(search: &Search) -> Vec<(Found, Option<PluginError>)> {
    let mut out: Vec<(Found, Option<PluginError>)> = Vec::new();
    let mut push = |name: String, path: PathBuf, source: &'static str| {
        if out.iter().any(|(f, _)| f.name == name) {
            return;
        }
        let unsafe_why = check_safe(&path).err();
        out.push((Found { name, path, source }, unsafe_why));
    };
    for dir in &search.dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("plugins")) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let executable = std::fs::metadata(&path)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if executable && valid_name(&name) {
                push(name, path, "plugins/");
            }
        }
    }
    for dir in &search.path {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("taskctl-"))
                .map(str::to_owned)
            else {
                continue;
            };
            if valid_name(&name) && path.is_file() {
                push(name, path, "PATH");
            }
        }
    }
    out
}

/// A plugin name as validation accepts it.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Refuses what others could have replaced, and what cannot run.
fn unsafe_(message: String) -> PluginError {
    PluginError::new(PluginErrorKind::Unsafe, message)
}

pub fn check_safe(path: &Path) -> Result<(), PluginError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| unsafe_(format!("plugin `{shown}`: {e}")))?;
    if !meta.is_file() {
        return Err(unsafe_(format!("plugin `{shown}` is not a regular file")));
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(unsafe_(format!(
            "plugin `{shown}` is not executable (chmod +x it)"
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_(format!(
            "plugin `{shown}` belongs to uid {}, neither you (uid {me}) nor root: refusing to run it",
            meta.uid()
        )));
    }
    if mode & 0o002 != 0 {
        return Err(unsafe_(format!(
            "plugin `{shown}` is writable by every user (mode {:o}): refusing to run it; chmod o-w it",
            mode & 0o7777
        )));
    }
    let canonical =
        std::fs::canonicalize(path).map_err(|e| unsafe_(format!("plugin `{shown}`: {e}")))?;
    if let Some(dir) = canonical.parent() {
        let dmode = std::fs::metadata(dir)
            .map_err(|e| unsafe_(format!("plugin directory `{}`: {e}", dir.display())))?
            .permissions()
            .mode();
        if dmode & 0o002 != 0 {
            return Err(unsafe_(format!(
                "plugin `{shown}` is in `{}`, a directory every user can write to (mode {:o}): refusing to run it",
                dir.display(),
                dmode & 0o7777
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(name: &str, dir: &Path, path: Option<&str>) -> Plugin {
        Plugin {
            name: name.into(),
            path: path.map(str::to_owned),
            provides: vec![],
            profile: vec![],
            secrets: Default::default(),
            resolve_secrets: false,
            args: None,
            timeout: None,
            declared_in: Some(dir.to_path_buf()),
        }
    }

    fn exe(path: &Path, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn plugins_dir_beside_the_profile_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        exe(&dir.path().join("plugins/notify"), 0o755);
        exe(&bin.path().join("taskctl-gate"), 0o755);
        let search = Search {
            dirs: vec![],
            path: vec![bin.path().to_path_buf()],
        };
        let found = locate(&plugin("notify", dir.path(), None), &search).unwrap();
        assert_eq!(found.source, "plugins/");
        let found = locate(&plugin("gate", dir.path(), None), &search).unwrap();
        assert_eq!(found.source, "PATH");
        let err = locate(&plugin("nope", dir.path(), None), &search).unwrap_err();
        assert!(err.message.contains("taskctl-nope on PATH"), "{err}");
        let listed: Vec<String> = all(&Search {
            dirs: vec![dir.path().to_path_buf()],
            path: vec![bin.path().to_path_buf()],
        })
        .into_iter()
        .map(|(f, _)| f.name)
        .collect();
        assert_eq!(listed, ["notify", "gate"]);
    }

    #[test]
    fn world_writable_plugins_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        exe(&dir.path().join("open"), 0o777);
        let err = locate(
            &plugin("open", dir.path(), Some("open")),
            &Search::default(),
        )
        .unwrap_err();
        assert!(err.message.contains("writable by every user"), "{err}");
        let shared = dir.path().join("shared");
        exe(&shared.join("p"), 0o755);
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = locate(
            &plugin("p", dir.path(), Some("shared/p")),
            &Search::default(),
        )
        .unwrap_err();
        assert!(
            err.message.contains("a directory every user can write to"),
            "{err}"
        );
        exe(&dir.path().join("plain"), 0o644);
        let err = locate(
            &plugin("plain", dir.path(), Some("plain")),
            &Search::default(),
        )
        .unwrap_err();
        assert!(err.message.contains("not executable"), "{err}");
    }
}
