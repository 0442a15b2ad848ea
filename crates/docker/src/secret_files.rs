//! Secrets reach containers as files, never as environment variables.
//!
//! `docker inspect` shows a container's environment to anyone who can
//! talk to the engine, so a secret env entry `NAME` becomes the file
//! `/run/secrets/name` (mode 0400, owned by the container's user) and the
//! variable `NAME_FILE=/run/secrets/name`, the convention of the official
//! images and of the task-executor agent. The files are uploaded between
//! create and start into an anonymous volume mounted at `/run/secrets`
//! (removed with the container), so they are on no image layer and in no
//! container configuration. The spec records the reference and its KV
//! version, which rolls the container when a secret is rotated.

use crate::spec::EnvSource;
use bollard::Docker;
use bollard::models::{Mount, MountTypeEnum};
use std::collections::BTreeMap;
use taskctl_core::engine::{ErrorKind, StepError};
use taskctl_core::profile::value::SecretRef;
use taskctl_core::secrets::{Secret, Secrets};

/// Where secret files are mounted in every container taskctl runs.
pub const DIR: &str = "/run/secrets";

/// The environment of a container with its secrets resolved.
#[derive(Debug, Default)]
pub struct Delivery {
    /// `NAME=value` for literals, `NAME_FILE=/run/secrets/name` for secrets.
    pub env: Vec<String>,
    /// File name (under [`DIR`]) → content.
    pub files: BTreeMap<String, Secret>,
}

/// Env name → the KV version of the Vault secret it comes from: what a
/// spec summary shows beside the reference, so a rotation is a change.
/// [`NEXT`] stands for a version a step of this run is about to write.
pub type Versions = BTreeMap<String, u64>;

/// The version of a secret that is being created or rotated in this run.
pub const NEXT: u64 = 0;

/// The file an env entry `NAME` is delivered in.
pub fn file_name(env: &str) -> String {
    env.to_ascii_lowercase()
}

/// Resolves every secret of `env` (the KV versions only: for plans).
pub async fn versions(
    secrets: &Secrets,
    env: &[(String, EnvSource)],
) -> Result<Versions, StepError> {
    let mut out = Versions::new();
    for (name, source) in env {
        // Only Vault secrets have versions; an `env:` one is read at apply.
        if let EnvSource::Secret(r @ SecretRef::Vault { .. }) = source {
            if secrets.is_pending(r) {
                out.insert(name.clone(), NEXT);
                continue;
            }
            let resolved = secrets.resolve(r).await.map_err(invalid)?;
            if let Some(v) = resolved.version {
                out.insert(name.clone(), v);
            }
        }
    }
    Ok(out)
}

/// Resolves `env` for a container: literals as variables, secrets as files.
pub async fn resolve(
    secrets: &Secrets,
    env: &[(String, EnvSource)],
) -> Result<Delivery, StepError> {
    let mut d = Delivery::default();
    for (name, source) in env {
        match source {
            EnvSource::Literal(v) => d.env.push(format!("{name}={v}")),
            EnvSource::Secret(r) => {
                let resolved = secrets.resolve(r).await.map_err(invalid)?;
                let file = file_name(name);
                d.env.push(format!("{name}_FILE={DIR}/{file}"));
                d.files.insert(file, resolved.value);
            }
        }
    }
    Ok(d)
}

fn invalid(e: impl std::fmt::Display) -> StepError {
    StepError::new(ErrorKind::Invalid, e.to_string())
}

/// The anonymous volume the files go into (none without files).
pub fn mount(d: &Delivery) -> Option<Mount> {
    (!d.files.is_empty()).then(|| Mount {
        target: Some(DIR.into()),
        typ: Some(MountTypeEnum::VOLUME),
        ..Default::default()
    })
}

/// A tar of the files: the directory 0500 and each file 0400, all owned by
/// `uid` (the container's user), so no other user in it can read them.
pub fn archive(files: &BTreeMap<String, Secret>, uid: u64) -> Vec<u8> {
    tar_of(
        files
            .iter()
            .map(|(n, v)| (n.as_str(), v.expose().as_bytes())),
        uid,
        0o500,
        0o400,
    )
}

/// A tar of `files` in one directory, with these modes and owner.
fn tar_of<'a>(
    files: impl Iterator<Item = (&'a str, &'a [u8])>,
    uid: u64,
    dir_mode: u32,
    file_mode: u32,
) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(dir_mode);
    dir.set_uid(uid);
    dir.set_gid(uid);
    dir.set_size(0);
    dir.set_mtime(0);
    dir.set_cksum();
    b.append_data(&mut dir, "./", std::io::empty())
        .expect("in-memory tar");
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(file_mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, bytes).expect("in-memory tar");
    }
    b.into_inner().expect("in-memory tar")
}

async fn put(
    docker: &Docker,
    name: &str,
    dir: &str,
    tar: Vec<u8>,
    what: &str,
) -> Result<(), StepError> {
    docker
        .upload_to_container(
            name,
            Some(bollard::query_parameters::UploadToContainerOptions {
                path: dir.into(),
                ..Default::default()
            }),
            bollard::body_full(tar.into()),
        )
        .await
        .map_err(|e| {
            StepError::new(
                ErrorKind::Other,
                format!("copying the {what} into {name}: {e}"),
            )
        })
}

/// Uploads the files into the created (not yet started) container `name`.
pub async fn upload(docker: &Docker, name: &str, d: &Delivery, uid: u64) -> Result<(), StepError> {
    if d.files.is_empty() {
        return Ok(());
    }
    put(docker, name, DIR, archive(&d.files, uid), "secret files").await
}

/// An anonymous volume at `dir` for configuration files.
pub fn config_mount(dir: &str) -> Mount {
    Mount {
        target: Some(dir.into()),
        typ: Some(MountTypeEnum::VOLUME),
        ..Default::default()
    }
}

/// Uploads configuration files (not secret: readable by everyone in the
/// container, writable by none but root) into `dir` of the created
/// container `name`; `dir` must be a volume ([`config_mount`]), since the
/// root file system is read-only.
pub async fn upload_config(
    docker: &Docker,
    name: &str,
    dir: &str,
    files: &BTreeMap<String, String>,
) -> Result<(), StepError> {
    if files.is_empty() {
        return Ok(());
    }
    let tar = tar_of(
        files.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        0,
        0o555,
        0o444,
    );
    put(docker, name, dir, tar, "configuration files").await
}

/// Uploads an executable `probe` (root's, runnable by everyone, writable by
/// none) into `dir` of the created container `name`; `dir` must be a
/// volume ([`config_mount`]).
pub async fn upload_probe(
    docker: &Docker,
    name: &str,
    dir: &str,
    bytes: &[u8],
) -> Result<(), StepError> {
    let tar = tar_of(std::iter::once(("probe", bytes)), 0, 0o555, 0o555);
    put(docker, name, dir, tar, "probe").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskctl_core::profile::value::Syntax;

    #[tokio::test]
    async fn secrets_become_files_and_literals_stay_variables() {
        let secrets = Secrets::default().with_env(|n| (n == "PW").then(|| "s3cret-value".into()));
        let env = vec![
            ("LOG_LEVEL".to_string(), EnvSource::Literal("INFO".into())),
            (
                "BROKER_PASSWORD".to_string(),
                EnvSource::Secret(SecretRef::parse("env:PW").unwrap()),
            ),
        ];
        let d = resolve(&secrets, &env).await.unwrap();
        assert_eq!(
            d.env,
            vec![
                "LOG_LEVEL=INFO".to_string(),
                "BROKER_PASSWORD_FILE=/run/secrets/broker_password".to_string()
            ]
        );
        assert!(!d.env.iter().any(|e| e.contains("s3cret")));
        assert_eq!(d.files["broker_password"].expose(), "s3cret-value");
        let tar = archive(&d.files, 65532);
        let mut a = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u32, u64)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("./".to_string(), 0o500, 65532),
                ("broker_password".to_string(), 0o400, 65532)
            ]
        );
    }
}
