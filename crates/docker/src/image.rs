//! The agent image, made on the engine without pulling anything.
//!
//! Default: the static `task-executor` binary packed on `scratch` (the
//! Dockerfile is generated, the build context is an in-memory tar). The
//! tag is `<repo>:<version>-<first 12 hex of the binary's sha256>`, so a
//! plan knows the image a deploy will run before building it, an unchanged
//! binary is never rebuilt, and a changed one rolls every replica.

use crate::error::DockerError;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptions, TagImageOptions};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use taskctl_core::engine::{ErrorKind, StepError};
use taskctl_core::profile::model::{Agent, ImageBuild};

use crate::engine::{is_not_found, step_error};

/// The user the agent runs as (`nonroot` in distroless images): the agent
/// does not switch users for the commands it runs.
pub const AGENT_USER: &str = "65532";
/// [`AGENT_USER`] as a number (owner of the agent's secret files).
pub const AGENT_UID: u64 = 65532;

/// Where the agent binary comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The static binary on `scratch`.
    Static { binary: PathBuf },
    /// The profile's Dockerfile (and its directory as the context).
    Dockerfile {
        dockerfile: PathBuf,
        base_image: Option<String>,
    },
    /// No build: the profile's image must be on the engine (or in the
    /// registry, when one is configured).
    Existing,
}

/// The static agent binary: `$TASKCTL_AGENT_BINARY`, else `task-executor`
/// next to the running `taskctl`.
pub fn find_binary() -> Result<PathBuf, DockerError> {
    if let Some(path) = std::env::var_os("TASKCTL_AGENT_BINARY") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(DockerError::Image(format!(
                "TASKCTL_AGENT_BINARY is {}, which is not a file",
                path.display()
            )))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("task-executor")));
    match beside {
        Some(path) if path.is_file() => Ok(path),
        _ => Err(DockerError::Image(format!(
            "no task-executor binary to build the agent image from: none beside taskctl ({}) and TASKCTL_AGENT_BINARY is not set; run ./install.sh, or build a static one with `{}` and set TASKCTL_AGENT_BINARY",
            beside.map(|p| p.display().to_string()).unwrap_or_default(),
            STATIC_BUILD
        ))),
    }
}

pub const STATIC_BUILD: &str = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' cargo build -p task-executor --release --target x86_64-unknown-linux-gnu";

/// Whether an ELF executable needs a dynamic loader (has a `PT_INTERP`
/// program header): such a binary cannot run on `scratch`, and the failure
/// there is an opaque "no such file or directory", so it is caught here.
pub fn is_dynamic_elf(bytes: &[u8]) -> Result<bool, DockerError> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(DockerError::Image("not an ELF executable".into()));
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(DockerError::Image(
            "not a 64-bit little-endian ELF executable".into(),
        ));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > bytes.len() {
            return Err(DockerError::Image("truncated ELF program headers".into()));
        }
        let p_type = u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        if p_type == 3 {
            return Ok(true); // PT_INTERP
        }
    }
    Ok(false)
}

/// What the agent's `build`/`image` fields ask for.
pub fn source(agent: &Agent) -> Result<Source, DockerError> {
    match &agent.build {
        None => Ok(Source::Existing),
        Some(ImageBuild {
            dockerfile: Some(dockerfile),
            base_image,
        }) => Ok(Source::Dockerfile {
            dockerfile: PathBuf::from(dockerfile),
            base_image: base_image.clone(),
        }),
        Some(ImageBuild {
            dockerfile: None,
            base_image: Some(base),
        }) => Err(DockerError::Image(format!(
            "agent `{}`: build.base_image `{base}` needs build.dockerfile too; without both, taskctl packs the static agent on scratch",
            agent.name
        ))),
        Some(_) => Ok(Source::Static {
            binary: find_binary()?,
        }),
    }
}

/// `task-executor:local` → `task-executor`; `reg:5000/a/b:1` → `reg:5000/a/b`.
pub fn repository(image: &str) -> &str {
    let name = image.split('@').next().unwrap_or(image);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// The generated Dockerfile of the static image. Its HEALTHCHECK (the
/// agent's own probe on the default port) serves `docker run` by hand;
/// taskctl sets each replica's own, on that replica's port.
pub fn scratch_dockerfile() -> String {
    format!(
        "FROM scratch\nCOPY task-executor /task-executor\nUSER {AGENT_USER}:{AGENT_USER}\nHEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD [\"/task-executor\", \"probe\", \"http://127.0.0.1:8080/ready\"]\nENTRYPOINT [\"/task-executor\"]\n"
    )
}

/// A tar of `(path, mode, bytes)` entries.
pub fn tar_of(entries: &[(&str, u32, &[u8])]) -> Result<Vec<u8>, DockerError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, path, *bytes)
            .map_err(|e| {
                DockerError::Image(format!("cannot pack {path} into the build context: {e}"))
            })?;
    }
    builder
        .into_inner()
        .map_err(|e| DockerError::Image(format!("cannot finish the build context: {e}")))
}

/// A build that is ready to run: its context and the tag it produces.
pub struct Prepared {
    pub tag: String,
    pub context: Context,
    pub dockerfile: String,
    pub base_image: Option<String>,
    /// For messages: the binary or the Dockerfile.
    pub from: String,
}

/// A build context.
pub enum Context {
    /// The static agent on scratch: packed only when an image is built,
    /// from the binary whose sha256 is `digest`.
    Static { binary: PathBuf, digest: String },
    /// A tar of the Dockerfile's directory.
    Tar(Vec<u8>),
}

impl Context {
    /// The tar the engine builds from.
    pub fn tar(&self) -> Result<Vec<u8>, DockerError> {
        match self {
            Context::Tar(bytes) => Ok(bytes.clone()),
            Context::Static { binary, digest } => {
                let bytes = std::fs::read(binary).map_err(|e| {
                    DockerError::Image(format!(
                        "cannot read the agent binary {}: {e}",
                        binary.display()
                    ))
                })?;
                if crate::spec::sha256_hex(&bytes) != *digest {
                    return Err(DockerError::Image(format!(
                        "the agent binary {} changed during this run; run it again",
                        binary.display()
                    )));
                }
                tar_of(&[
                    ("Dockerfile", 0o644, scratch_dockerfile().as_bytes()),
                    ("task-executor", 0o755, &bytes),
                ])
            }
        }
    }
}

/// The sha256 of the static agent binary at `binary`, after checking that
/// it can run on scratch. Remembered for the process by path, size and
/// modification time: preflight, plan and apply all need it, and each would
/// otherwise read and hash the whole binary (12 MB) again.
fn static_digest(binary: &Path) -> Result<String, DockerError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (PathBuf, u64, Option<std::time::SystemTime>);
    static DIGESTS: OnceLock<Mutex<HashMap<Key, String>>> = OnceLock::new();
    let meta = std::fs::metadata(binary).map_err(|e| {
        DockerError::Image(format!(
            "cannot read the agent binary {}: {e}",
            binary.display()
        ))
    })?;
    let key = (binary.to_path_buf(), meta.len(), meta.modified().ok());
    let digests = DIGESTS.get_or_init(Mutex::default);
    let mut digests = digests.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(digest) = digests.get(&key) {
        return Ok(digest.clone());
    }
    let bytes = std::fs::read(binary).map_err(|e| {
        DockerError::Image(format!(
            "cannot read the agent binary {}: {e}",
            binary.display()
        ))
    })?;
    match is_dynamic_elf(&bytes) {
        Ok(false) => {}
        Ok(true) => {
            return Err(DockerError::Image(format!(
                "{} is dynamically linked and cannot run on scratch; build a static agent with `{STATIC_BUILD}` and point TASKCTL_AGENT_BINARY at it (or reinstall with ./install.sh)",
                binary.display()
            )));
        }
        Err(e) => return Err(DockerError::Image(format!("{}: {e}", binary.display()))),
    }
    let digest = crate::spec::sha256_hex(&bytes);
    digests.insert(key, digest.clone());
    Ok(digest)
}

/// Computes the tag (from the binary's digest, or the Dockerfile's
/// directory read whole).
pub fn prepare(agent: &Agent, source: &Source) -> Result<Option<Prepared>, DockerError> {
    let repo = repository(&agent.image);
    let version = env!("CARGO_PKG_VERSION");
    match source {
        Source::Existing => Ok(None),
        Source::Static { binary } => {
            let digest = static_digest(binary)?;
            Ok(Some(Prepared {
                tag: format!("{repo}:{version}-{}", &digest[..12]),
                context: Context::Static {
                    binary: binary.clone(),
                    digest,
                },
                dockerfile: "Dockerfile".into(),
                base_image: None,
                from: binary.display().to_string(),
            }))
        }
        Source::Dockerfile {
            dockerfile,
            base_image,
        } => {
            let dir = dockerfile.parent().unwrap_or(Path::new("."));
            let mut files: Vec<(String, Vec<u8>)> = Vec::new();
            collect(dir, dir, &mut files)?;
            files.sort();
            let entries: Vec<(&str, u32, &[u8])> = files
                .iter()
                .map(|(p, b)| (p.as_str(), 0o755, b.as_slice()))
                .collect();
            let context = tar_of(&entries)?;
            let mut seed = context.clone();
            seed.extend(base_image.clone().unwrap_or_default().bytes());
            let hash = crate::spec::sha256_hex(&seed);
            let name = dockerfile
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "Dockerfile".into());
            Ok(Some(Prepared {
                tag: format!("{repo}:{version}-{}", &hash[..12]),
                context: Context::Tar(context),
                dockerfile: name,
                base_image: base_image.clone(),
                from: dockerfile.display().to_string(),
            }))
        }
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), DockerError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        DockerError::Image(format!(
            "cannot read the build context {}: {e}",
            dir.display()
        ))
    })?;
    for entry in entries {
        let path = entry.map_err(|e| DockerError::Image(e.to_string()))?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else {
            let bytes = std::fs::read(&path)
                .map_err(|e| DockerError::Image(format!("cannot read {}: {e}", path.display())))?;
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push((rel.to_string_lossy().into_owned(), bytes));
        }
    }
    Ok(())
}

/// The image's id when `reference` is on the engine. A reference pinned
/// as `name@sha256:ID` (what releases record for images that never went
/// through a registry) is also looked up by image id.
pub async fn local_id(docker: &Docker, reference: &str) -> Result<Option<String>, StepError> {
    match docker.inspect_image(reference).await {
        Ok(i) => return Ok(i.id),
        Err(e)
            if is_not_found(&e)
                || matches!(
                    e,
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 400,
                        ..
                    }
                ) => {}
        Err(e) => return Err(step_error(&format!("inspecting image {reference}"), e)),
    }
    if let Some((_, digest)) = reference.split_once('@') {
        match docker.inspect_image(digest).await {
            Ok(i) => return Ok(i.id),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(step_error(&format!("inspecting image {digest}"), e)),
        }
    }
    Ok(None)
}

/// The error for an image that is neither on the engine nor pullable.
pub fn missing_image(image: &str, what: &str) -> StepError {
    let how = if image.starts_with("taskctl/") {
        "build it offline from Debian packages with `scripts/images.sh`".to_string()
    } else {
        format!(
            "provide it with `docker load -i FILE.tar`, `docker build -t {image} …`, or set target.docker.registry"
        )
    };
    StepError::new(
        ErrorKind::Invalid,
        format!(
            "{what}: image {image} is not on the Docker engine and no registry is configured to pull it from; {how}"
        ),
    )
}

/// Pulls `image` from `registry` (the profile's `target.docker.registry`).
pub async fn pull(
    docker: &Docker,
    registry: &str,
    image: &str,
    credentials: Option<DockerCredentials>,
) -> Result<String, StepError> {
    let reference = if image.starts_with(registry) {
        image.to_string()
    } else {
        format!("{}/{image}", registry.trim_end_matches('/'))
    };
    let mut stream = docker.create_image(
        Some(bollard::query_parameters::CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        }),
        None,
        credentials,
    );
    while let Some(item) = stream.next().await {
        item.map_err(|e| step_error(&format!("pulling {reference}"), e))?;
    }
    Ok(reference)
}

/// `reference` (`[host/]path[:tag][@digest]`) in `registry`: the same path
/// and tag under the registry's host, e.g. `taskctl/task-executor:1-abc` in
/// `127.0.0.1:5000` is `("127.0.0.1:5000/taskctl/task-executor", "1-abc")`.
/// A host already in `reference` is replaced; no tag is `latest`.
pub fn in_registry(reference: &str, registry: &str) -> (String, String) {
    let name = reference.split('@').next().unwrap_or(reference);
    let repo = repository(name);
    let tag = name[repo.len()..].trim_start_matches(':');
    // Docker's rule: a first component with a dot or a port, or
    // `localhost`, is a registry host.
    let path = match repo.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => repo,
    };
    (
        format!("{}/{path}", registry.trim_end_matches('/')),
        if tag.is_empty() { "latest" } else { tag }.to_string(),
    )
}

/// The reference by digest (`registry/path@sha256:…`) under which image
/// `id` was pushed to `registry` as `reference`, when the engine recorded
/// that push and the registry still serves that digest for the tag; `None`
/// means it has to be pushed.
pub async fn pushed(
    docker: &Docker,
    id: &str,
    reference: &str,
    registry: &str,
    credentials: Option<DockerCredentials>,
) -> Result<Option<String>, StepError> {
    let (remote, tag) = in_registry(reference, registry);
    let Some(known) = recorded_digest(docker, id, &remote).await? else {
        return Ok(None);
    };
    let prefix = format!("{remote}@");
    // The engine remembers a push the registry may since have lost (or
    // the tag may name other content now): ask the registry itself.
    match docker
        .inspect_registry_image(&format!("{remote}:{tag}"), credentials)
        .await
    {
        Ok(found) if found.descriptor.digest.as_deref() == Some(&known[prefix.len()..]) => {
            Ok(Some(known))
        }
        Ok(_) => Ok(None),
        Err(e) if is_not_found(&e) || is_registry_miss(&e) => Ok(None),
        Err(e) => Err(step_error(
            &format!("asking {registry} for {remote}:{tag}"),
            e,
        )),
    }
}

/// The engine's record of image `id` pushed as `remote`: its
/// `remote@sha256:…` among the image's repo digests.
async fn recorded_digest(
    docker: &Docker,
    id: &str,
    remote: &str,
) -> Result<Option<String>, StepError> {
    let digests = match docker.inspect_image(id).await {
        Ok(i) => i.repo_digests.unwrap_or_default(),
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(step_error(&format!("inspecting image {id}"), e)),
    };
    Ok(digests.into_iter().find(|d| {
        d.strip_prefix(remote)
            .is_some_and(|rest| rest.starts_with('@'))
    }))
}

/// The engine answers 401/403 (not 404) for a tag a registry does not have.
fn is_registry_miss(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 401 | 403,
            ..
        }
    )
}

/// Pushes image `id` to `registry` under `reference`'s path and tag and
/// returns the reference by the digest the registry stored
/// (`registry/path@sha256:…`), what containers are then made from.
pub async fn push(
    docker: &Docker,
    id: &str,
    reference: &str,
    registry: &str,
    credentials: Option<DockerCredentials>,
) -> Result<String, StepError> {
    let (remote, tag) = in_registry(reference, registry);
    let target = format!("{remote}:{tag}");
    self::tag(docker, id, &target).await?;
    let mut stream = docker.push_image(
        &remote,
        Some(
            bollard::query_parameters::PushImageOptionsBuilder::default()
                .tag(&tag)
                .build(),
        ),
        credentials,
    );
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| step_error(&format!("pushing {target}"), e))?;
        // A refused login arrives as an error message in the stream.
        if let Some(error) = info.error_detail.and_then(|d| d.message).or(info.error) {
            return Err(StepError::new(
                ErrorKind::Denied,
                format!("pushing {target}: {error}"),
            ));
        }
    }
    recorded_digest(docker, id, &remote).await?.ok_or_else(|| {
        StepError::new(
            ErrorKind::Other,
            format!("pushed {target}, but the engine recorded no digest for it in {registry}"),
        )
    })
}

/// Builds `prepared` with no pull, then tags it with `also` (the profile's
/// own tag). Returns the image id.
pub async fn build(
    docker: &Docker,
    prepared: &Prepared,
    also: &str,
    labels: std::collections::HashMap<String, String>,
) -> Result<String, StepError> {
    if let Some(base) = &prepared.base_image
        && local_id(docker, base).await?.is_none()
    {
        return Err(missing_image(base, "the agent image's base"));
    }
    let options = BuildImageOptions {
        dockerfile: prepared.dockerfile.clone(),
        t: Some(prepared.tag.clone()),
        rm: true,
        forcerm: true,
        // Never pull: the engine has no registry access, and a base image
        // that is missing must be a clear error, not a hang.
        pull: None,
        labels: Some(labels),
        buildargs: prepared
            .base_image
            .as_ref()
            .map(|b| [("BASE_IMAGE".to_string(), b.clone())].into()),
        ..Default::default()
    };
    let context = prepared.context.tar().map_err(StepError::from)?;
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut last = String::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| step_error(&format!("building {}", prepared.tag), e))?;
        if let Some(error) = info.error {
            return Err(StepError::new(
                ErrorKind::Other,
                format!("building {} from {}: {error}", prepared.tag, prepared.from),
            ));
        }
        if let Some(s) = info.stream {
            last = s;
        }
    }
    let id = local_id(docker, &prepared.tag).await?.ok_or_else(|| {
        StepError::new(
            ErrorKind::Other,
            format!(
                "building {}: the engine reported no image ({})",
                prepared.tag,
                last.trim()
            ),
        )
    })?;
    tag(docker, &id, also).await?;
    Ok(id)
}

/// Tags image `id` as `reference` (`repo:tag`).
pub async fn tag(docker: &Docker, id: &str, reference: &str) -> Result<(), StepError> {
    let repo = repository(reference);
    let tag = reference[repo.len()..].trim_start_matches(':');
    docker
        .tag_image(
            id,
            Some(TagImageOptions {
                repo: Some(repo.to_string()),
                tag: Some(if tag.is_empty() { "latest" } else { tag }.to_string()),
            }),
        )
        .await
        .map_err(|e| step_error(&format!("tagging {reference}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_move_into_a_registry_with_their_path_and_tag() {
        let r = "127.0.0.1:5000";
        let cases = [
            (
                "taskctl/task-executor:0.1.0-abc",
                "127.0.0.1:5000/taskctl/task-executor",
                "0.1.0-abc",
            ),
            ("task-executor", "127.0.0.1:5000/task-executor", "latest"),
            ("reg.example.com/a/b:2", "127.0.0.1:5000/a/b", "2"),
            ("localhost:5001/a:3@sha256:00", "127.0.0.1:5000/a", "3"),
            ("team/agent:1", "127.0.0.1:5000/team/agent", "1"),
        ];
        for (reference, remote, tag) in cases {
            assert_eq!(
                in_registry(reference, &format!("{r}/")),
                (remote.to_string(), tag.to_string()),
                "{reference}"
            );
        }
    }

    #[test]
    fn repositories_keep_registry_ports() {
        assert_eq!(repository("task-executor:local"), "task-executor");
        assert_eq!(repository("reg:5000/a/b:1"), "reg:5000/a/b");
        assert_eq!(repository("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(repository("task-executor:local@sha256:ab"), "task-executor");
    }

    #[test]
    fn elf_interpreter_is_detected() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are built dynamically linked on the host target.
        assert_eq!(is_dynamic_elf(&me), Ok(true));
        assert!(is_dynamic_elf(b"#!/bin/sh\necho").is_err());
    }

    #[test]
    fn the_context_holds_the_dockerfile_and_the_binary() {
        let tar = tar_of(&[
            ("Dockerfile", 0o644, scratch_dockerfile().as_bytes()),
            ("task-executor", 0o755, b"\x7fELF"),
        ])
        .unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Dockerfile", "task-executor"]);
        assert!(scratch_dockerfile().contains("USER 65532"));
    }
}
