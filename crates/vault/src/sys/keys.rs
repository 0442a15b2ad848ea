//! The keys file: unseal (or recovery) keys and the initial root token,
//! written once (mode 0600, never overwritten) and read back to unseal.

use super::*;
use crate::VaultError;
use serde::Deserialize;
use std::path::Path;
use taskctl_secret::Secret;

/// The seal type of a Shamir-sealed cluster (`sys/seal-status` `type`, and
/// [`KeysFile::seal`] for unseal keys).
pub const SHAMIR: &str = "shamir";

/// The unseal keys (or, for an auto-unsealed cluster, the recovery keys)
/// and the initial root token, as written at initialization. `Debug` shows
/// `[redacted]` for each; the values are written only by
/// [`KeysFile::create_new`]. Reading also accepts the `unseal_keys_b64` and
/// `recovery_keys_b64` names of `bao operator init -format=json`.
#[derive(Clone, Debug)]
pub struct KeysFile {
    /// Unseal keys when `seal` is `"shamir"`, recovery keys otherwise.
    pub keys_base64: Vec<Secret>,
    pub root_token: Secret,
    /// The cluster's seal type at initialization: [`SHAMIR`] (also for files
    /// written before this field existed), or the auto-unseal seal
    /// (`"transit"`, `"awskms"`, …; `"auto"` for a CLI file with recovery
    /// keys only), whose `keys_base64` are recovery keys: they unseal
    /// nothing, they authorize operations such as generating a root token.
    pub seal: String,
    /// When the recovery keys were encrypted to OpenPGP keys at
    /// initialization: `"FINGERPRINT (file)"` of the key each share (same
    /// position) is encrypted to. `keys_base64` then holds ciphertext:
    /// `base64 -d | gpg -d` by the key's holder gives the share.
    pub encrypted_to: Vec<String>,
}

/// The file's layout, with the values exposed: used only to write the file.
#[derive(serde::Serialize)]
pub(super) struct OnDisk<'a> {
    pub(super) seal: &'a str,
    keys_base64: Vec<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    encrypted_to: &'a [String],
    pub(super) root_token: &'a str,
}

#[derive(Deserialize)]
pub(super) struct FromDisk {
    #[serde(default, alias = "unseal_keys_b64")]
    keys_base64: Vec<String>,
    #[serde(default, alias = "recovery_keys_b64")]
    recovery_keys_base64: Vec<String>,
    pub(super) root_token: String,
    #[serde(default)]
    pub(super) seal: Option<String>,
    #[serde(default)]
    encrypted_to: Vec<String>,
}

impl KeysFile {
    /// Reads the file; errors name the path, never a value (a JSON error
    /// gives only its line and column, as serde's message may quote input).
    pub fn read(path: &Path) -> Result<KeysFile, VaultError> {
        let bytes =
            std::fs::read(path).map_err(|e| keys_error(path, format!("cannot read: {e}")))?;
        let raw: FromDisk = serde_json::from_slice(&bytes).map_err(|e| {
            keys_error(
                path,
                format!(
                    "not a keys file (JSON with keys_base64 and root_token): {} at line {} column {}",
                    json_category(&e),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let (keys, default_seal) = if raw.keys_base64.is_empty() {
            (raw.recovery_keys_base64, "auto")
        } else {
            (raw.keys_base64, SHAMIR)
        };
        if keys.is_empty() {
            return Err(keys_error(path, "holds no unseal or recovery keys".into()));
        }
        Ok(KeysFile {
            keys_base64: keys.into_iter().map(Secret::new).collect(),
            root_token: Secret::new(raw.root_token),
            seal: raw
                .seal
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| default_seal.to_string()),
            encrypted_to: raw.encrypted_to,
        })
    }

    /// Whether `keys_base64` are recovery keys (an auto-unsealed cluster).
    pub fn recovery(&self) -> bool {
        self.seal != SHAMIR
    }

    /// Writes a new file, mode 0600; fails if `path` exists (it is never
    /// overwritten).
    pub fn create_new(&self, path: &Path) -> Result<(), VaultError> {
        let file = open_new(path)?;
        self.write_to(file, path)
    }

    pub(super) fn write_to(&self, mut file: std::fs::File, path: &Path) -> Result<(), VaultError> {
        let on_disk = OnDisk {
            seal: &self.seal,
            keys_base64: self.keys_base64.iter().map(Secret::expose).collect(),
            encrypted_to: &self.encrypted_to,
            root_token: self.root_token.expose(),
        };
        let mut text = serde_json::to_vec_pretty(&on_disk)
            .map_err(|e| keys_error(path, format!("cannot encode: {}", json_category(&e))))?;
        text.push(b'\n');
        let written = file.write_all(&text).and_then(|()| file.sync_all());
        text.fill(0);
        written.map_err(|e| keys_error(path, format!("cannot write: {e}")))
    }
}

pub(super) fn json_category(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected content",
        Category::Eof => "unexpected end",
    }
}

pub(super) fn keys_error(path: &Path, cause: String) -> VaultError {
    VaultError::KeysFile {
        path: path.display().to_string(),
        cause,
    }
}

/// Creates `path` for writing, mode 0600 from the start; never an existing
/// file.
pub(crate) fn open_new(path: &Path) -> Result<std::fs::File, VaultError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            keys_error(path, "already exists; it is never overwritten".into())
        } else {
            keys_error(path, format!("cannot create: {e}"))
        }
    })
}
