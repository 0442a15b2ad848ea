//! Task signatures: producers sign, agents verify.
//!
//! A producer signs the exact bytes of the message body (the JSON
//! [`TaskMessage`](crate::TaskMessage)) with an Ed25519 key and sends the
//! key id and the base64 signature on a line before the body
//! ([`Signer::frame`]: `taskctl-signed-v1 KEY_ID SIGNATURE\n{…}`), which the
//! agent takes off ([`unframe`]) before reading the JSON. Agents also accept
//! the same two values as AMQP headers ([`HEADER_KEY_ID`],
//! [`HEADER_SIGNATURE`]), the format of earlier producers; the frame is
//! cheaper for the broker (see [`Signer::frame`]). The bytes signed are
//! [`SIGNING_DOMAIN`], the key id, a newline and the body, so a signature
//! made for something else with the same key never verifies as a task.
//! Signing the body bytes rather than a re-serialized form means there is no
//! canonical JSON to agree on: whatever the producer sent is what is checked.
//!
//! The body carries the issue time (`created_at_ms`) and the expiry
//! (`expires_at_ms`); both are covered by the signature. An agent holds only
//! public keys and accepts several at once, so a key is rotated by giving the
//! agents the new public key beside the old one, switching producers, then
//! removing the old key.
//!
//! A key id is the first 8 bytes of the SHA-256 of the public key, in hex: it
//! names the key without any registry, and the same key always has the same id.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::VerifyingKey;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Start of a framed message: a signature line, then the body it covers.
pub const FRAME_PREFIX: &[u8] = b"taskctl-signed-v1 ";
/// The content type of a framed message (it is no longer plain JSON).
pub const FRAMED_CONTENT_TYPE: &str = "application/vnd.taskctl.signed-task";
/// The longest signature line a frame may have (prefix, key id, space,
/// base64 signature, newline: 124 bytes with taskctl's own key ids).
pub const MAX_FRAME_LINE: usize = 256;

/// AMQP header: the id of the key that signed the task.
pub const HEADER_KEY_ID: &str = "x-taskctl-key-id";
/// AMQP header: base64 of the Ed25519 signature.
pub const HEADER_SIGNATURE: &str = "x-taskctl-signature";
/// Prefix of the signed bytes (domain separation).
pub const SIGNING_DOMAIN: &[u8] = b"taskctl task signature v1\n";

/// A key that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

/// Why a message's signature was not accepted; [`Unverified::label`] is the
/// metric label and dead-letter reason prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// No signature headers at all.
    Unsigned,
    /// Signed by a key this agent does not hold.
    UnknownKey(String),
    /// A header is there but is not a string, or not base64 of 64 bytes.
    MalformedSignature(String),
    /// The signature does not match the body under the named key.
    BadSignature(String),
}

impl Unverified {
    pub fn label(&self) -> &'static str {
        match self {
            Unverified::Unsigned => "unsigned",
            Unverified::UnknownKey(_) => "unknown_key",
            Unverified::MalformedSignature(_) | Unverified::BadSignature(_) => "bad_signature",
        }
    }
}

impl fmt::Display for Unverified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unverified::Unsigned => write!(
                f,
                "task is not signed (expected a `taskctl-signed-v1` signature line before the body, or headers {HEADER_KEY_ID} and {HEADER_SIGNATURE})"
            ),
            Unverified::UnknownKey(id) => {
                write!(
                    f,
                    "task is signed by key `{id}`, which this agent does not trust"
                )
            }
            Unverified::MalformedSignature(why) => write!(f, "task signature is malformed: {why}"),
            Unverified::BadSignature(id) => {
                write!(f, "task signature does not verify under key `{id}`")
            }
        }
    }
}

/// The id of an Ed25519 public key: hex of the first 8 bytes of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn signed_bytes(key_id: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGNING_DOMAIN.len() + key_id.len() + 1 + body.len());
    bytes.extend_from_slice(SIGNING_DOMAIN);
    bytes.extend_from_slice(key_id.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(body);
    bytes
}

/// A producer's signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Signer {
    /// From the base64 of a PKCS#8 (v1 or v2) Ed25519 private key, the form
    /// taskctl's managed `ed25519` secrets store as `private_key`.
    pub fn from_pkcs8_base64(text: &str) -> Result<Self, KeyError> {
        let der = STANDARD.decode(text.trim()).map_err(|_| {
            KeyError("the private key is not base64 (expected base64 of a PKCS#8 document)".into())
        })?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| {
            KeyError(format!(
                "the private key is not an Ed25519 PKCS#8 document ({e})"
            ))
        })?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Signer { pair, key_id })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Base64 of the 32-byte public key, what agents are given.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.pair.public_key().as_ref())
    }

    /// The message to send for `body`: a signature line
    /// (`taskctl-signed-v1 KEY_ID SIGNATURE`), a newline, then `body`
    /// unchanged. The signature is the same as [`Self::headers`]' (same
    /// signed bytes); carried in the body, it costs the broker nothing: a
    /// header table is decoded and re-encoded by RabbitMQ on the way
    /// through, and its signature headers cost a raw consumer loop 15 % of
    /// its throughput (`bench/agent/run.sh`, rows `rawsigned` and `raw`).
    pub fn frame(&self, body: &[u8]) -> Vec<u8> {
        let signature = self.sign(body);
        let mut out = Vec::with_capacity(
            FRAME_PREFIX.len() + self.key_id.len() + 1 + signature.len() + 1 + body.len(),
        );
        out.extend_from_slice(FRAME_PREFIX);
        out.extend_from_slice(self.key_id.as_bytes());
        out.push(b' ');
        out.extend_from_slice(signature.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }

    /// The headers of a signed `body`, as (name, value) pairs for any AMQP
    /// client's header table (values are long strings).
    pub fn headers(&self, body: &[u8]) -> [(&'static str, String); 2] {
        [
            (HEADER_KEY_ID, self.key_id.clone()),
            (HEADER_SIGNATURE, self.sign(body)),
        ]
    }

    /// Base64 of the signature of `body`, for [`HEADER_SIGNATURE`].
    pub fn sign(&self, body: &[u8]) -> String {
        STANDARD.encode(self.pair.sign(&signed_bytes(&self.key_id, body)).as_ref())
    }
}

/// A message taken apart: the signature line's key id and signature, when
/// it has one, and the body they cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unframed<'a> {
    pub key_id: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// Splits a message made by [`Signer::frame`]; a message that does not
/// start with [`FRAME_PREFIX`] is all body, unsigned (its signature, if
/// any, is in the headers). A frame that is cut short, too long, or not
/// two words of printable ASCII is malformed: nothing after it is read.
pub fn unframe(message: &[u8]) -> Result<Unframed<'_>, Unverified> {
    let Some(rest) = message.strip_prefix(FRAME_PREFIX) else {
        return Ok(Unframed {
            key_id: None,
            signature: None,
            body: message,
        });
    };
    let limit = rest.len().min(MAX_FRAME_LINE - FRAME_PREFIX.len());
    let end = rest[..limit]
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| {
            Unverified::MalformedSignature(format!(
                "the signature line has no end within {MAX_FRAME_LINE} bytes"
            ))
        })?;
    let line = &rest[..end];
    let words = std::str::from_utf8(line)
        .ok()
        .filter(|l| l.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .map(|l| l.split(' ').collect::<Vec<_>>());
    match words.as_deref() {
        Some([key_id, signature]) if !key_id.is_empty() && !signature.is_empty() => Ok(Unframed {
            key_id: Some(key_id),
            signature: Some(signature),
            body: &rest[end + 1..],
        }),
        _ => Err(Unverified::MalformedSignature(
            "the signature line is not `taskctl-signed-v1 KEY_ID SIGNATURE`".into(),
        )),
    }
}

/// The public keys an agent trusts, by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verifier {
    keys: BTreeMap<String, VerifyingKey>,
}

impl Verifier {
    /// Reads public keys (base64 of 32 bytes each) separated by commas,
    /// whitespace or newlines; `#` starts a comment to the end of the line.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            for word in line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|w| !w.is_empty())
            {
                let not_a_key = || {
                    KeyError(format!(
                        "line {}: `{}` is not a public key (expected base64 of 32 bytes)",
                        n + 1,
                        shorten(word)
                    ))
                };
                let bytes: [u8; 32] = STANDARD
                    .decode(word)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(not_a_key)?;
                let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                    KeyError(format!(
                        "line {}: `{}` is not a point of the Ed25519 curve",
                        n + 1,
                        shorten(word)
                    ))
                })?;
                keys.insert(key_id(&bytes), key);
            }
        }
        Ok(Verifier { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The ids of the keys held, sorted.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks `signature` (base64) over `body` under the key `key_id`.
    pub fn verify(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), Unverified> {
        self.claim(key_id, signature, body)?.check()
    }

    /// Reads the signature headers and finds the key they name, without the
    /// curve arithmetic: every refusal that needs no cryptography happens
    /// here, and the [`Claim`] is checked alone ([`Claim::check`]) or with
    /// others ([`check_all`]).
    pub fn claim(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Claim, Unverified> {
        let (key_id, signature) = match (key_id, signature) {
            (None, None) => return Err(Unverified::Unsigned),
            (Some(k), Some(s)) => (k, s),
            (None, Some(_)) => {
                return Err(Unverified::MalformedSignature(format!(
                    "{HEADER_SIGNATURE} without {HEADER_KEY_ID}"
                )));
            }
            (Some(_), None) => {
                return Err(Unverified::MalformedSignature(format!(
                    "{HEADER_KEY_ID} without {HEADER_SIGNATURE}"
                )));
            }
        };
        let Some(public) = self.keys.get(key_id) else {
            return Err(Unverified::UnknownKey(shorten(key_id)));
        };
        let signature: [u8; 64] = STANDARD
            .decode(signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                Unverified::MalformedSignature("not base64 of a 64-byte Ed25519 signature".into())
            })?;
        Ok(Claim {
            key_id: key_id.to_owned(),
            key: *public,
            signature: ed25519_dalek::Signature::from_bytes(&signature),
            message: signed_bytes(key_id, body),
        })
    }
}

/// A task's claim to be signed by a held key: the key, the signature and
/// the signed bytes, not yet checked. Owned, so that the claims of several
/// deliveries can be gathered and checked together ([`check_all`]).
#[derive(Debug, Clone)]
pub struct Claim {
    key_id: String,
    key: VerifyingKey,
    signature: ed25519_dalek::Signature,
    message: Vec<u8>,
}

impl Claim {
    /// The id of the key the task claims to be signed by.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Checks this one signature.
    pub fn check(&self) -> Result<(), Unverified> {
        // `verify`, not `verify_strict`: the keys are the operator's own (no
        // small-order key to guard against), replays are caught by task id
        // whatever the signature's bytes, and the strict check decompresses
        // R, about a fifth of the cost (perf, bench/agent).
        ed25519_dalek::Verifier::verify(&self.key, &self.message, &self.signature)
            .map_err(|_| Unverified::BadSignature(self.key_id.clone()))
    }
}

/// Checks every claim, in order. Two or more are checked as one batch (one
/// multi-scalar multiplication for all, with random weights derived from
/// every input, so no signature can cancel another's error), about twice as
/// cheap per signature as one by one once a few are waiting; only when the
/// batch fails is each checked alone, to name the bad ones.
///
/// A batch checks the cofactored equation, the single check the cofactorless
/// one: they differ only on signatures built with small-order components,
/// which only the holder of the private key can make, so a batch never
/// accepts a forgery the single check would refuse.
pub fn check_all(claims: &[Claim]) -> Vec<Result<(), Unverified>> {
    if claims.len() > 1 {
        let messages: Vec<&[u8]> = claims.iter().map(|c| c.message.as_slice()).collect();
        let signatures: Vec<_> = claims.iter().map(|c| c.signature).collect();
        let keys: Vec<_> = claims.iter().map(|c| c.key).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return vec![Ok(()); claims.len()];
        }
    }
    claims.iter().map(Claim::check).collect()
}

/// At most 40 characters of untrusted text, for error messages.
fn shorten(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > 40 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn signer() -> Signer {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer::from_pkcs8_base64(&STANDARD.encode(doc.as_ref())).unwrap()
    }

    #[test]
    fn a_frame_carries_the_same_signature_as_the_headers() {
        let a = signer();
        let verifier = Verifier::parse(&a.public_key_base64()).unwrap();
        let body = br#"{"id":"t"}"#;
        let framed = a.frame(body);
        assert!(framed.ends_with(body) && framed.len() < MAX_FRAME_LINE + body.len());
        let u = unframe(&framed).unwrap();
        assert_eq!(u.body, body);
        assert_eq!(u.key_id, Some(a.key_id()));
        let [(_, _), (_, header_sig)] = a.headers(body);
        assert_eq!(u.signature, Some(header_sig.as_str()));
        assert_eq!(verifier.verify(u.key_id, u.signature, u.body), Ok(()));
        // A plain body is all body, unsigned.
        assert_eq!(
            unframe(body).unwrap(),
            Unframed {
                key_id: None,
                signature: None,
                body
            }
        );
        // A changed body after the line no longer verifies.
        let mut tampered = framed.clone();
        *tampered.last_mut().unwrap() = b']';
        let t = unframe(&tampered).unwrap();
        assert!(verifier.verify(t.key_id, t.signature, t.body).is_err());
        // Broken lines are malformed, never read further.
        for bad in [
            b"taskctl-signed-v1 only-one-word\n{}".to_vec(),
            b"taskctl-signed-v1 a b c\n{}".to_vec(),
            b"taskctl-signed-v1 a \tb\n{}".to_vec(),
            b"taskctl-signed-v1  b\n{}".to_vec(),
            [b"taskctl-signed-v1 k ".as_slice(), &[b'x'; 300], b"\n{}"].concat(),
            b"taskctl-signed-v1 k s".to_vec(),
            [b"taskctl-signed-v1 k \xff\xfe".as_slice(), b"\n{}"].concat(),
        ] {
            assert!(
                matches!(unframe(&bad), Err(Unverified::MalformedSignature(_))),
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn a_signature_verifies_only_for_its_body_and_key() {
        let a = signer();
        let b = signer();
        let verifier = Verifier::parse(&format!(
            "# current\n{}\n{}",
            a.public_key_base64(),
            b.public_key_base64()
        ))
        .unwrap();
        assert_eq!(verifier.key_ids().count(), 2);
        let body = br#"{"id":"t"}"#;
        let sig = a.sign(body);
        assert_eq!(verifier.verify(Some(a.key_id()), Some(&sig), body), Ok(()));
        // Another body, or the same signature claimed under another key.
        assert_eq!(
            verifier.verify(Some(a.key_id()), Some(&sig), br#"{"id":"u"}"#),
            Err(Unverified::BadSignature(a.key_id().to_owned()))
        );
        assert!(matches!(
            verifier.verify(Some(b.key_id()), Some(&sig), body),
            Err(Unverified::BadSignature(_))
        ));
        assert_eq!(verifier.verify(None, None, body), Err(Unverified::Unsigned));
        let only_a = Verifier::parse(&a.public_key_base64()).unwrap();
        assert_eq!(
            only_a.verify(Some(b.key_id()), Some(&b.sign(body)), body),
            Err(Unverified::UnknownKey(b.key_id().to_owned()))
        );
        assert_eq!(
            only_a
                .verify(Some(a.key_id()), Some("not base64!"), body)
                .unwrap_err()
                .label(),
            "bad_signature"
        );
    }

    #[test]
    fn a_batch_accepts_good_signatures_and_names_each_bad_one() {
        let a = signer();
        let b = signer();
        let verifier = Verifier::parse(&format!(
            "{}\n{}",
            a.public_key_base64(),
            b.public_key_base64()
        ))
        .unwrap();
        let bodies: Vec<Vec<u8>> = (0..9)
            .map(|i| format!("{{\"id\":\"{i}\"}}").into_bytes())
            .collect();
        let claim = |s: &Signer, body: &[u8], signed: &[u8]| {
            verifier
                .claim(Some(s.key_id()), Some(&s.sign(signed)), body)
                .unwrap()
        };
        // Two keys in one batch, all good.
        let good: Vec<Claim> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| claim(if i % 2 == 0 { &a } else { &b }, body, body))
            .collect();
        assert!(check_all(&good).iter().all(Result::is_ok));
        assert_eq!(check_all(&good[..1]), vec![Ok(())]);
        assert!(check_all(&[]).is_empty());
        // One signature over other bytes, one claimed under the wrong key:
        // exactly those two fail, with their key ids.
        let mut mixed = good.clone();
        mixed[3] = claim(&b, &bodies[3], b"something else");
        let mut wrong_key = claim(&a, &bodies[5], &bodies[5]);
        wrong_key.key = mixed[1].key; // b's key, a's key id and signature
        mixed[5] = wrong_key;
        let results = check_all(&mixed);
        for (i, result) in results.iter().enumerate() {
            match i {
                3 => assert_eq!(
                    result,
                    &Err(Unverified::BadSignature(b.key_id().to_owned()))
                ),
                5 => assert_eq!(
                    result,
                    &Err(Unverified::BadSignature(a.key_id().to_owned()))
                ),
                _ => assert_eq!(result, &Ok(()), "claim {i}"),
            }
        }
    }

    #[test]
    fn key_ids_are_stable_and_keys_are_checked() {
        let a = signer();
        let id = key_id(&STANDARD.decode(a.public_key_base64()).unwrap());
        assert_eq!(id, a.key_id());
        assert_eq!(id.len(), 16);
        let err = Verifier::parse("AAAA, bm90IGEga2V5").unwrap_err();
        assert!(err.0.contains("line 1"), "{err}");
        assert!(Signer::from_pkcs8_base64("bm9wZQ==").is_err());
        assert!(format!("{a:?}").contains("key_id"));
    }
}
