//! What may run: every check a delivery passes before anything executes.
//!
//! [`decode`] is a pure function of the body, the few headers it reads and
//! the clock, so it is unit-tested and fuzzed without a broker: whatever the
//! bytes, it returns a task or a [`Rejection`] with a reason, and never
//! panics. Order: size, signature (over the raw bytes, before any parsing),
//! JSON, version, id, expiry, kind, program. [`Replays`] then refuses a
//! signed task id this agent has already accepted.

use std::{num::NonZeroUsize, path::Path, sync::Mutex};

use lru::LruCache;
use taskctl_protocol::{
    MAX_TASK_ID_BYTES, PROTOCOL_VERSION, TaskKind, TaskMessage,
    signing::{self, Claim, Unverified},
};

use crate::config::Admission;

/// Clock skew tolerated on a task's issue time.
const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Why a delivery was not run: `label` is the dead-letter metric label,
/// `reason` goes to the dead-letter header, the result and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub label: &'static str,
    pub reason: String,
    /// Whether the sender is trusted (signed by a held key, or unsigned where
    /// `ALLOW_UNSIGNED_TASKS` is set): only then may the result go to the
    /// sender's `reply_to`.
    pub authenticated: bool,
}

impl Rejection {
    fn new(label: &'static str, reason: impl Into<String>, authenticated: bool) -> Self {
        Rejection {
            label,
            reason: reason.into(),
            authenticated,
        }
    }
}

/// The headers [`decode`] reads, taken out of the AMQP table; a header of
/// the wrong type counts as present but unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub key_id: Option<String>,
    pub signature: Option<String>,
    /// The attempt a retry is (`x-taskctl-attempt`).
    pub attempt: Option<u32>,
}

/// A task that may run.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub task: TaskMessage,
    /// The key id when the task was signed.
    pub signed_by: Option<String>,
}

/// What [`screen`] leaves to check: nothing, or a signature.
#[derive(Debug)]
// Moved once into the batch; boxing would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Screened {
    /// Unsigned, and unsigned tasks are allowed here.
    Unsigned,
    /// Signed by a held key, if the signature holds: check it alone
    /// ([`Claim::check`]) or with others ([`check_all`](taskctl_protocol::signing::check_all)).
    Signed(Claim),
}

/// The signature's refusal as a dead-letter reason.
pub fn unverified(e: Unverified) -> Rejection {
    Rejection::new(e.label(), e.to_string(), false)
}

/// Decodes and checks one delivery: [`unframe`], [`screen`], the
/// signature, then [`admit`]. The agent runs the same steps with its
/// signature checks checked in batches in between
/// (`Worker::check_signatures`).
pub fn decode(
    message: &[u8],
    envelope: &Envelope,
    now_ms: u64,
    rules: &Admission,
) -> Result<Admitted, Rejection> {
    let (envelope, body) = unframe(message, envelope, rules)?;
    let envelope = &envelope;
    let signed_by = match screen(body, envelope, rules)? {
        Screened::Unsigned => None,
        Screened::Signed(claim) => {
            claim.check().map_err(unverified)?;
            Some(claim.key_id().to_owned())
        }
    };
    admit(body, envelope, signed_by, now_ms, rules)
}

/// The size of the whole message, then its signature line (if it has one)
/// taken off: the envelope with the line's key id and signature in place of
/// the headers', and the body they cover. A message signed both ways is
/// refused: which one counts would be a guess.
pub fn unframe<'m>(
    message: &'m [u8],
    envelope: &Envelope,
    rules: &Admission,
) -> Result<(Envelope, &'m [u8]), Rejection> {
    if message.len() > rules.max_message_bytes {
        return Err(Rejection::new(
            "too_large",
            format!(
                "message of {} bytes exceeds MAX_MESSAGE_BYTES ({})",
                message.len(),
                rules.max_message_bytes
            ),
            false,
        ));
    }
    let framed = signing::unframe(message).map_err(unverified)?;
    if framed.key_id.is_none() {
        return Ok((envelope.clone(), message));
    }
    if envelope.key_id.is_some() || envelope.signature.is_some() {
        return Err(unverified(Unverified::MalformedSignature(
            "signed twice: a signature line and signature headers".into(),
        )));
    }
    Ok((
        Envelope {
            key_id: framed.key_id.map(str::to_owned),
            signature: framed.signature.map(str::to_owned),
            attempt: envelope.attempt,
        },
        framed.body,
    ))
}

/// The checks before the signature's arithmetic: the signature (from the
/// envelope [`unframe`] made) and the key it names.
pub fn screen(body: &[u8], envelope: &Envelope, rules: &Admission) -> Result<Screened, Rejection> {
    let signed = envelope.key_id.is_some() || envelope.signature.is_some();
    if !signed && rules.allow_unsigned {
        return Ok(Screened::Unsigned);
    }
    rules
        .keys
        .claim(
            envelope.key_id.as_deref(),
            envelope.signature.as_deref(),
            body,
        )
        .map(Screened::Signed)
        .map_err(unverified)
}

/// The checks after the signature: `signed_by` is the key id whose
/// signature over `body` held, `None` for an unsigned task [`screen`] let
/// through.
pub fn admit(
    body: &[u8],
    envelope: &Envelope,
    signed_by: Option<String>,
    now_ms: u64,
    rules: &Admission,
) -> Result<Admitted, Rejection> {
    let signed = envelope.key_id.is_some() || envelope.signature.is_some();
    // Trusted: signed by a held key, or unsigned where unsigned tasks are
    // allowed. Only a trusted sender's reply_to gets the result.
    let authenticated = signed_by.is_some() || (rules.allow_unsigned && !signed);
    let malformed = |reason: String| Rejection::new("malformed", reason, authenticated);

    if body.is_empty() {
        return Err(malformed("empty message body".into()));
    }
    let mut task: TaskMessage = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("malformed task message: {e}")))?;
    if task.version != PROTOCOL_VERSION {
        return Err(malformed(format!(
            "unsupported protocol version {} (this agent reads {PROTOCOL_VERSION})",
            task.version
        )));
    }
    check_id(&task.id).map_err(malformed)?;
    if let Some(attempt) = envelope.attempt {
        task.attempt = task.attempt.max(attempt);
    }

    if signed_by.is_some() {
        let Some(expires) = task.expires_at_ms else {
            return Err(malformed(
                "a signed task must carry expires_at_ms (its expiry is what bounds a replay)"
                    .into(),
            ));
        };
        if task.created_at_ms > now_ms.saturating_add(CLOCK_SKEW_MS) {
            return Err(malformed(format!(
                "task was issued {} ms in the future (clock skew over {} s)",
                task.created_at_ms - now_ms,
                CLOCK_SKEW_MS / 1000
            )));
        }
        let ttl = expires.saturating_sub(task.created_at_ms);
        if ttl > rules.max_ttl.as_millis() as u64 {
            return Err(malformed(format!(
                "task is valid for {ttl} ms, longer than TASK_MAX_TTL ({} ms)",
                rules.max_ttl.as_millis()
            )));
        }
    }
    if let Some(expires) = task.expires_at_ms
        && now_ms > expires
    {
        return Err(Rejection::new(
            "expired",
            format!("task expired {} ms ago", now_ms - expires),
            authenticated,
        ));
    }

    let kind = task.kind.name();
    if !rules.enabled_kinds.contains(kind) {
        return Err(Rejection::new(
            "unauthorized",
            format!("kind `{kind}` is not in this agent's ENABLED_KINDS"),
            authenticated,
        ));
    }
    if let TaskKind::Command { argv, .. } = &task.kind {
        check_program(argv.first().map(String::as_str), rules)
            .map_err(|reason| Rejection::new("unauthorized", reason, authenticated))?;
    }
    Ok(Admitted { task, signed_by })
}

/// Non-empty, at most [`MAX_TASK_ID_BYTES`], no control characters.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("task id is empty".into());
    }
    if id.len() > MAX_TASK_ID_BYTES {
        return Err(format!(
            "task id of {} bytes is longer than {MAX_TASK_ID_BYTES}",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("task id contains control characters".into());
    }
    Ok(())
}

/// The program must be named by an absolute path on `COMMAND_ALLOWED`.
fn check_program(program: Option<&str>, rules: &Admission) -> Result<(), String> {
    let Some(program) = program else {
        return Err("command task has an empty argv".into());
    };
    if rules.commands.contains_key(Path::new(program)) {
        return Ok(());
    }
    let shown = printable(program, 80);
    if rules.commands.is_empty() {
        Err(format!(
            "program `{shown}` is not allowed: COMMAND_ALLOWED is empty, so no command runs"
        ))
    } else if !program.starts_with('/') {
        Err(format!(
            "program `{shown}` is not allowed: commands are named by absolute path"
        ))
    } else {
        Err(format!("program `{shown}` is not in COMMAND_ALLOWED"))
    }
}

/// A task id readable enough to log and send back from an untrusted body:
/// the `id` field if it is a string, cut to [`MAX_TASK_ID_BYTES`], control
/// characters replaced.
pub fn id_for_log(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: String,
    }
    let body = signing::unframe(body).map_or(body, |u| u.body);
    serde_json::from_slice::<IdOnly>(body)
        .map(|t| printable(&t.id, MAX_TASK_ID_BYTES))
        .unwrap_or_default()
}

/// At most `limit` bytes of `text` (on a character boundary), control
/// characters replaced by `?`.
pub fn printable(text: &str, limit: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > limit {
            break;
        }
        out.push(c);
    }
    out
}

/// Task ids of signed tasks this agent accepted, with the highest attempt
/// seen, until they expire.
///
/// Guarantee: while an id is remembered, a delivery of it with an attempt
/// already seen that the broker did not mark `redelivered` is a replay.
/// Caveats: the memory is per process and bounded (oldest first), and an
/// attempt number comes from a header the signature does not cover (a retry
/// keeps the producer's signed body), so a captured task can run at most
/// once per attempt per agent before it expires.
pub struct Replays {
    seen: Mutex<LruCache<String, (u32, u64)>>,
}

impl Replays {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Replays {
            seen: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Records `task`'s attempt, or says why it is a replay.
    pub fn admit(
        &self,
        task: &TaskMessage,
        redelivered: bool,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        let expires = task.expires_at_ms.unwrap_or(u64::MAX);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(&task.id) {
            Some(&(attempt, until))
                if until >= now_ms && task.attempt <= attempt && !redelivered =>
            {
                Err(Rejection::new(
                    "replayed",
                    format!(
                        "replay of task `{}` attempt {} (already accepted here)",
                        task.id, task.attempt
                    ),
                    true,
                ))
            }
            Some(&(attempt, _)) if task.attempt <= attempt => Ok(()),
            _ => {
                seen.put(task.id.clone(), (task.attempt, expires));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        path::PathBuf,
        time::Duration,
    };

    use base64::Engine as _;
    use proptest::prelude::*;
    use ring::{rand::SystemRandom, signature::Ed25519KeyPair};
    use taskctl_protocol::signing::{Signer, Verifier};

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn signer() -> Signer {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer::from_pkcs8_base64(&base64::engine::general_purpose::STANDARD.encode(doc.as_ref()))
            .unwrap()
    }

    fn rules(signer: &Signer) -> Admission {
        Admission {
            keys: Verifier::parse(&signer.public_key_base64()).unwrap(),
            allow_unsigned: false,
            max_ttl: Duration::from_secs(3600),
            max_message_bytes: 4096,
            enabled_kinds: ["noop", "echo", "command", "http"]
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>(),
            commands: BTreeMap::from([(PathBuf::from("/bin/true"), None)]),
        }
    }

    fn body(id: &str, kind: TaskKind, expires: Option<u64>) -> Vec<u8> {
        serde_json::to_vec(&TaskMessage {
            expires_at_ms: expires,
            ..TaskMessage::new(id, kind, NOW - 1000)
        })
        .unwrap()
    }

    fn signed(signer: &Signer, body: &[u8]) -> Envelope {
        Envelope {
            key_id: Some(signer.key_id().to_owned()),
            signature: Some(signer.sign(body)),
            attempt: None,
        }
    }

    #[test]
    fn only_signed_unexpired_tasks_pass() {
        let s = signer();
        let rules = rules(&s);
        let good = body("t-1", TaskKind::Noop, Some(NOW + 60_000));
        let admitted = decode(&good, &signed(&s, &good), NOW, &rules).unwrap();
        assert_eq!(admitted.signed_by.as_deref(), Some(s.key_id()));

        let unsigned = decode(&good, &Envelope::default(), NOW, &rules).unwrap_err();
        assert_eq!(unsigned.label, "unsigned");
        let other = signer();
        assert_eq!(
            decode(&good, &signed(&other, &good), NOW, &rules)
                .unwrap_err()
                .label,
            "unknown_key"
        );
        let mut tampered = signed(&s, &good);
        tampered.signature = Some(s.sign(b"something else"));
        assert_eq!(
            decode(&good, &tampered, NOW, &rules).unwrap_err().label,
            "bad_signature"
        );
        let old = body("t-2", TaskKind::Noop, Some(NOW - 1));
        let expired = decode(&old, &signed(&s, &old), NOW, &rules).unwrap_err();
        assert_eq!(expired.label, "expired");
        assert!(expired.authenticated);
        let forever = body("t-3", TaskKind::Noop, None);
        assert!(
            decode(&forever, &signed(&s, &forever), NOW, &rules)
                .unwrap_err()
                .reason
                .contains("expires_at_ms")
        );
        let too_long = body("t-4", TaskKind::Noop, Some(NOW + 2 * 3_600_000));
        assert!(
            decode(&too_long, &signed(&s, &too_long), NOW, &rules)
                .unwrap_err()
                .reason
                .contains("TASK_MAX_TTL")
        );
    }

    #[test]
    fn kinds_programs_sizes_and_ids_are_checked() {
        let s = signer();
        let mut rules = rules(&s);
        let check = |rules: &Admission, b: Vec<u8>| {
            decode(&b, &signed(&s, &b), NOW, rules).map_err(|r| (r.label, r.reason))
        };
        let exp = Some(NOW + 1000);
        let cmd = |argv: &[&str]| TaskKind::Command {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
        };
        assert!(check(&rules, body("a", cmd(&["/bin/true"]), exp)).is_ok());
        let (label, reason) = check(&rules, body("b", cmd(&["true"]), exp)).unwrap_err();
        assert_eq!(label, "unauthorized");
        assert!(reason.contains("absolute path"), "{reason}");
        assert!(check(&rules, body("c", cmd(&["/bin/sh", "-c", "x"]), exp)).is_err());
        assert!(check(&rules, body("d", cmd(&[]), exp)).is_err());
        rules.enabled_kinds.remove("command");
        assert!(
            check(&rules, body("e", cmd(&["/bin/true"]), exp))
                .unwrap_err()
                .1
                .contains("ENABLED_KINDS")
        );
        let long_id = "x".repeat(300);
        let (label, reason) = check(&rules, body(&long_id, TaskKind::Noop, exp)).unwrap_err();
        assert_eq!(label, "malformed");
        assert!(reason.contains("300 bytes"), "{reason}");
        assert!(check(&rules, body("a\u{7}b", TaskKind::Noop, exp)).is_err());
        let big = vec![b' '; 5000];
        assert_eq!(
            decode(&big, &Envelope::default(), NOW, &rules)
                .unwrap_err()
                .label,
            "too_large"
        );
        // An unsigned bench may run unsigned tasks; a signed one is still checked.
        rules.allow_unsigned = true;
        let plain = body("f", TaskKind::Noop, None);
        assert!(decode(&plain, &Envelope::default(), NOW, &rules).is_ok());
        assert_eq!(
            decode(b"", &Envelope::default(), NOW, &rules)
                .unwrap_err()
                .label,
            "malformed"
        );
    }

    #[test]
    fn a_replay_is_refused_and_a_redelivery_or_next_attempt_is_not() {
        let replays = Replays::new(NonZeroUsize::new(10).unwrap());
        let mut task = TaskMessage {
            expires_at_ms: Some(NOW + 1000),
            ..TaskMessage::new("t", TaskKind::Noop, NOW)
        };
        assert!(replays.admit(&task, false, NOW).is_ok());
        assert_eq!(
            replays.admit(&task, false, NOW).unwrap_err().label,
            "replayed"
        );
        assert!(replays.admit(&task, true, NOW).is_ok());
        task.attempt = 2;
        assert!(replays.admit(&task, false, NOW).is_ok());
        assert!(replays.admit(&task, false, NOW).is_err());
    }

    #[test]
    fn id_for_log_is_bounded_and_printable() {
        let body = format!(r#"{{"id":"{}\n"}}"#, "é".repeat(300));
        let id = id_for_log(body.as_bytes());
        assert!(id.len() <= MAX_TASK_ID_BYTES);
        assert!(!id.contains('\n'));
        assert_eq!(id_for_log(b"\xff\xfe"), "");
    }

    #[test]
    fn a_signature_line_is_taken_off_and_checked_like_the_headers() {
        let s = signer();
        let rules = rules(&s);
        let good = body("t-framed", TaskKind::Noop, Some(NOW + 60_000));
        let framed = s.frame(&good);
        let admitted = decode(&framed, &Envelope::default(), NOW, &rules).unwrap();
        assert_eq!(admitted.signed_by.as_deref(), Some(s.key_id()));
        assert_eq!(admitted.task.id, "t-framed");
        assert_eq!(id_for_log(&framed), "t-framed");
        // The attempt header still applies to a framed task.
        let retry = Envelope {
            attempt: Some(3),
            ..Envelope::default()
        };
        assert_eq!(
            decode(&framed, &retry, NOW, &rules).unwrap().task.attempt,
            3
        );

        // A byte changed after the line, another key's line, both ways at once.
        let mut tampered = framed.clone();
        let at = tampered.len() - 2;
        tampered[at] ^= 1;
        let e = decode(&tampered, &Envelope::default(), NOW, &rules).unwrap_err();
        assert_eq!(e.label, "bad_signature", "{}", e.reason);
        let other = signer();
        let e = decode(&other.frame(&good), &Envelope::default(), NOW, &rules).unwrap_err();
        assert_eq!(e.label, "unknown_key");
        let e = decode(&framed, &signed(&s, &good), NOW, &rules).unwrap_err();
        assert!(e.reason.contains("signed twice"), "{}", e.reason);
        // The size limit counts the whole message, line included.
        let mut small = rules.clone();
        small.max_message_bytes = good.len() + 10;
        let e = decode(&framed, &Envelope::default(), NOW, &small).unwrap_err();
        assert_eq!(e.label, "too_large");
    }

    proptest! {
        // Whatever follows the signature line's prefix: a reason, never a
        // panic.
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn decode_never_panics_on_framed_messages(
            line in ".{0,300}",
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let s = signer();
            let rules = rules(&s);
            let message = [signing::FRAME_PREFIX, line.as_bytes(), &rest].concat();
            let _ = decode(&message, &Envelope::default(), NOW, &rules);
            let _ = id_for_log(&message);
        }
    }

    proptest! {
        // The fuzz target: any bytes and any headers, signed or not, give a
        // task or a reason, never a panic. Bounded by proptest's case count.
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decode_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            key_id in proptest::option::of("[a-f0-9]{0,20}"),
            signature in proptest::option::of(".{0,90}"),
            attempt in proptest::option::of(any::<u32>()),
            allow_unsigned in any::<bool>(),
        ) {
            let s = signer();
            let mut rules = rules(&s);
            rules.allow_unsigned = allow_unsigned;
            let envelope = Envelope { key_id, signature, attempt };
            let _ = decode(&bytes, &envelope, NOW, &rules);
            let _ = id_for_log(&bytes);
        }

        #[test]
        fn decode_never_panics_on_task_shaped_json(
            id in ".{0,300}",
            kind in prop_oneof![
                Just(r#"{"type":"noop"}"#.to_owned()),
                ".{0,40}".prop_map(|a| format!(r#"{{"type":"command","argv":[{a:?}]}}"#)),
                ".{0,40}".prop_map(|u| format!(r#"{{"type":"http","url":{u:?}}}"#)),
                ".{0,20}".prop_map(|t| format!(r#"{{"type":{t:?}}}"#)),
            ],
            version in 0u32..3,
            created in any::<u64>(),
            expires in proptest::option::of(any::<u64>()),
            attempt in any::<u32>(),
        ) {
            let s = signer();
            let rules = rules(&s);
            let mut body = format!(
                r#"{{"version":{version},"id":{id:?},"kind":{kind},"created_at_ms":{created},"attempt":{attempt}"#
            );
            if let Some(e) = expires {
                body.push_str(&format!(r#","expires_at_ms":{e}"#));
            }
            body.push('}');
            let _ = decode(body.as_bytes(), &signed(&s, body.as_bytes()), NOW, &rules);
        }
    }
}
