//! OpenPGP public keys that a cluster's recovery keys are encrypted to at
//! initialization (`sys/init`'s `recovery_pgp_keys`): Vault and OpenBao do
//! the encryption themselves, one share per key, in the order given; taskctl
//! only reads the keys, checks them and names them by fingerprint.
//!
//! A key file is what `gpg --export KEY` writes (binary), the same in ASCII
//! armor (`gpg --armor --export KEY`), or the base64 of the binary form that
//! `bao operator init -recovery-pgp-keys` takes. Only the first packet is
//! read: it must be a version 4 public key, whose fingerprint (RFC 4880,
//! 12.2) is what `gpg --fingerprint` prints.

use crate::VaultError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::path::Path;

/// One public key, read from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgpKey {
    /// Where it was read from (named in the keys file beside its share).
    pub file: String,
    /// Upper-case hex of the v4 fingerprint.
    pub fingerprint: String,
    /// Base64 of the binary key, the form `sys/init` takes.
    pub base64: String,
}

impl PgpKey {
    /// Reads and checks one key file; errors name the file and what was
    /// expected.
    pub fn read(path: &Path) -> Result<PgpKey, VaultError> {
        let fail =
            |cause: String| VaultError::Config(format!("PGP key {}: {cause}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let binary = decode(&bytes).map_err(fail)?;
        let fingerprint = fingerprint(&binary).map_err(fail)?;
        Ok(PgpKey {
            file: path.display().to_string(),
            fingerprint,
            base64: STANDARD.encode(&binary),
        })
    }
}

const ARMOR_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const ARMOR_END: &str = "-----END PGP PUBLIC KEY BLOCK-----";

/// The binary key from any of the three forms.
fn decode(bytes: &[u8]) -> Result<Vec<u8>, String> {
    // A packet header has its high bit set; armor and base64 are ASCII.
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        return Ok(bytes.to_vec());
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err("neither an OpenPGP packet nor text".into());
    };
    let text = text.trim();
    if let Some(rest) = text.strip_prefix(ARMOR_BEGIN) {
        let body = rest
            .split(ARMOR_END)
            .next()
            .filter(|_| rest.contains(ARMOR_END))
            .ok_or_else(|| format!("ASCII armor without its `{ARMOR_END}` line"))?;
        // Armor headers ("Comment: …") end at the first empty line; the
        // line starting with `=` is the CRC-24, checked by nothing here:
        // the packet checks below catch a damaged key.
        let mut lines = body.lines().map(str::trim).skip_while(|l| l.is_empty());
        let mut data = String::new();
        let mut headers = true;
        for line in lines.by_ref() {
            if headers {
                if line.is_empty() {
                    headers = false;
                    continue;
                }
                if line.contains(": ") {
                    continue;
                }
                headers = false;
            }
            if line.starts_with('=') {
                break;
            }
            data.push_str(line);
        }
        return STANDARD
            .decode(data.as_bytes())
            .map_err(|_| "the ASCII armor holds no valid base64".to_string());
    }
    if text.starts_with("-----BEGIN") {
        return Err(format!(
            "expected a public key (`{ARMOR_BEGIN}`), found `{}`",
            text.lines().next().unwrap_or_default()
        ));
    }
    let compact: String = text.split_whitespace().collect();
    STANDARD.decode(compact.as_bytes()).map_err(|_| {
        "not an OpenPGP public key: expected the output of `gpg --export KEY` (binary), `gpg --armor --export KEY`, or its base64".to_string()
    })
}

/// The v4 fingerprint of the first packet, which must be a public key.
fn fingerprint(key: &[u8]) -> Result<String, String> {
    let not_a_key = |why: &str| format!("not an OpenPGP public key ({why})");
    let first = *key.first().ok_or_else(|| not_a_key("empty"))?;
    if first & 0x80 == 0 {
        return Err(not_a_key("no packet header"));
    }
    let (tag, body) = if first & 0x40 != 0 {
        // New format: tag in the low 6 bits, then a length of 1, 2 or 5
        // octets.
        let rest = &key[1..];
        let (len, skip) = match rest.first() {
            Some(&o) if o < 192 => (usize::from(o), 1),
            Some(&o) if o < 224 => match rest.get(1) {
                Some(&o2) => (((usize::from(o) - 192) << 8) + usize::from(o2) + 192, 2),
                None => return Err(not_a_key("truncated")),
            },
            Some(255) => match rest.get(1..5) {
                Some(b) => (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize, 5),
                None => return Err(not_a_key("truncated")),
            },
            _ => return Err(not_a_key("unsupported packet length")),
        };
        (first & 0x3f, rest.get(skip..skip + len))
    } else {
        // Old format: tag in bits 5-2, length type in bits 1-0.
        let rest = &key[1..];
        let (len, skip) = match first & 0x03 {
            0 => (rest.first().map(|&o| usize::from(o)), 1),
            1 => (
                rest.get(..2)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))),
                2,
            ),
            2 => (
                rest.get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize),
                4,
            ),
            _ => return Err(not_a_key("indeterminate packet length")),
        };
        let len = len.ok_or_else(|| not_a_key("truncated"))?;
        ((first >> 2) & 0x0f, rest.get(skip..skip + len))
    };
    match tag {
        6 => {}
        5 => {
            return Err(
                "this is a SECRET key: give the public key (`gpg --export KEY`), never the secret one"
                    .into(),
            );
        }
        other => {
            return Err(not_a_key(&format!(
                "its first packet has tag {other}, not 6"
            )));
        }
    }
    let body = body.ok_or_else(|| not_a_key("truncated"))?;
    if body.first() != Some(&4) {
        return Err(not_a_key("only version 4 keys are supported"));
    }
    let len = u16::try_from(body.len()).map_err(|_| not_a_key("key packet too long"))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&[0x99]);
    ctx.update(&len.to_be_bytes());
    ctx.update(body);
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An old-format v4 public key packet (tag 6) with a short fake body.
    fn packet() -> Vec<u8> {
        let body = [4u8, 0x60, 0, 0, 0, 22, 0, 1, 0xff];
        let mut p = vec![0x99, 0, body.len() as u8];
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn the_three_forms_decode_to_the_same_key() {
        let bin = packet();
        let b64 = STANDARD.encode(&bin);
        let armored = format!(
            "{ARMOR_BEGIN}\nComment: test\n\n{}\n{}\n=AbCd\n{ARMOR_END}\n",
            &b64[..8],
            &b64[8..]
        );
        for form in [bin.clone(), b64.clone().into_bytes(), armored.into_bytes()] {
            assert_eq!(decode(&form).unwrap(), bin);
        }
        let f = fingerprint(&bin).unwrap();
        assert_eq!(f.len(), 40);
        // New-format header, same body: same fingerprint.
        let mut new = vec![0xc6, (bin.len() - 3) as u8];
        new.extend_from_slice(&bin[3..]);
        assert_eq!(fingerprint(&new).unwrap(), f);
    }

    #[test]
    fn what_is_not_a_public_key_is_named() {
        let mut secret = packet();
        secret[0] = 0x95; // old format, tag 5
        assert!(fingerprint(&secret).unwrap_err().contains("SECRET key"));
        assert!(
            fingerprint(&[0x41])
                .unwrap_err()
                .contains("no packet header")
        );
        assert!(
            fingerprint(&[0x99, 0, 50, 4])
                .unwrap_err()
                .contains("truncated")
        );
        let mut v3 = packet();
        v3[3] = 3;
        assert!(fingerprint(&v3).unwrap_err().contains("version 4"));
        assert!(
            decode(b"-----BEGIN PGP PRIVATE KEY BLOCK-----\nxx\n")
                .unwrap_err()
                .contains("expected a public key")
        );
        assert!(
            decode(b"not base64 at all!")
                .unwrap_err()
                .contains("gpg --export")
        );
        assert!(
            decode(format!("{ARMOR_BEGIN}\n\nAAAA\n").as_bytes())
                .unwrap_err()
                .contains("without")
        );
    }
}
