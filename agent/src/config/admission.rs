//! What may run: signing keys, kinds, programs, sizes, the sandbox user.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use taskctl_protocol as protocol;

use super::{Admission, KINDS, reader::*};

/// `SANDBOX_UID` and `SANDBOX_GID`: both or neither.
pub(super) fn sandbox_user(r: &mut Reader<'_>) -> Option<(u32, u32)> {
    let uid = r.raw("SANDBOX_UID");
    let gid = r.raw("SANDBOX_GID");
    let parse = |r: &mut Reader<'_>, name: &'static str, raw: &str| match raw.trim().parse::<u32>()
    {
        Ok(id) if id > 0 => Some(id),
        _ => {
            r.problem(
                name,
                format!("expected a numeric id other than 0 (root), got `{raw}`"),
            );
            None
        }
    };
    match (uid, gid) {
        (None, None) => None,
        (Some(uid), Some(gid)) => Some((
            parse(r, "SANDBOX_UID", &uid)?,
            parse(r, "SANDBOX_GID", &gid)?,
        )),
        (Some(_), None) => {
            r.problem("SANDBOX_GID", "expected SANDBOX_GID beside SANDBOX_UID");
            None
        }
        (None, Some(_)) => {
            r.problem("SANDBOX_UID", "expected SANDBOX_UID beside SANDBOX_GID");
            None
        }
    }
}

/// Signing keys, kinds, programs and sizes: what may run at all.
pub(super) fn admission(r: &mut Reader<'_>) -> Admission {
    let allow_unsigned = match r.string("ALLOW_UNSIGNED_TASKS", "false").trim() {
        "true" => true,
        "false" => false,
        other => {
            r.problem(
                "ALLOW_UNSIGNED_TASKS",
                format!("expected `true` or `false`, got `{other}`"),
            );
            false
        }
    };
    let keys = match r.secret("TASK_SIGNING_PUBLIC_KEYS") {
        Secret::Value(text) => match protocol::signing::Verifier::parse(&text) {
            Ok(keys) => keys,
            Err(e) => {
                r.problem(
                    "TASK_SIGNING_PUBLIC_KEYS",
                    format!("expected Ed25519 public keys (base64, comma or line separated): {e}"),
                );
                Default::default()
            }
        },
        Secret::Unset if !allow_unsigned => {
            r.problem(
                "TASK_SIGNING_PUBLIC_KEYS",
                "expected the public keys tasks are signed with (or TASK_SIGNING_PUBLIC_KEYS_FILE); \
                 only signed tasks run. ALLOW_UNSIGNED_TASKS=true runs unsigned ones, for a test bed only",
            );
            Default::default()
        }
        Secret::Unset | Secret::Invalid => Default::default(),
    };
    let max_ttl = r.millis("TASK_MAX_TTL", 3_600_000, 1_000, 7 * 86_400_000);
    let max_message_bytes = r.number(
        "MAX_MESSAGE_BYTES",
        1024 * 1024usize,
        1024,
        128 * 1024 * 1024,
        "of bytes ",
    );
    let mut enabled_kinds = BTreeSet::new();
    for kind in r
        .string("ENABLED_KINDS", &KINDS.join(","))
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        if KINDS.contains(&kind) {
            enabled_kinds.insert(kind.to_owned());
        } else {
            r.problem(
                "ENABLED_KINDS",
                format!("expected kinds from {}, got `{kind}`", KINDS.join(", ")),
            );
        }
    }
    let mut commands = BTreeMap::new();
    for entry in r
        .string("COMMAND_ALLOWED", "")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        match parse_allowed_command(entry) {
            Ok((path, digest)) => {
                commands.insert(path, digest);
            }
            Err(expected) => r.problem("COMMAND_ALLOWED", expected),
        }
    }
    Admission {
        keys,
        allow_unsigned,
        max_ttl,
        max_message_bytes,
        enabled_kinds,
        commands,
    }
}

/// `/abs/path` or `/abs/path@sha256:<64 hex>`.
pub(super) fn parse_allowed_command(entry: &str) -> Result<(PathBuf, Option<[u8; 32]>), String> {
    let (path, digest) = match entry.split_once("@sha256:") {
        Some((path, hex)) => {
            let bytes: Option<Vec<u8>> = (hex.len() == 64)
                .then(|| {
                    (0..32)
                        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                        .collect()
                })
                .flatten();
            match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                Some(d) => (path, Some(d)),
                None => {
                    return Err(format!(
                        "expected `{path}@sha256:` followed by 64 hex digits"
                    ));
                }
            }
        }
        None => (entry, None),
    };
    let path = PathBuf::from(path);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(format!(
            "expected absolute program paths (optionally `@sha256:<hex>`), got `{}`",
            path.display()
        ));
    }
    Ok((path, digest))
}
