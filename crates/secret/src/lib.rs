//! Redaction by type, and a second line of defence.
//!
//! [`Secret`] holds every credential taskctl handles: values resolved from
//! Vault or the environment, generated passwords, tokens, broker URLs with a
//! password in them. Its `Debug`, `Display` and `Serialize` print
//! `[redacted]`; the value is read only through [`Secret::expose`], so every
//! place that handles the plain text is one grep away.
//!
//! [`Redactor`] remembers every value resolved during a run and masks it in
//! any text about to leave the process (terminal, NDJSON events, logs,
//! journal, audit, release records): if a value slips into an error message
//! from a library, it is still not written anywhere.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::sync::{Arc, RwLock};

/// What every redacted value prints as.
pub const REDACTED: &str = "[redacted]";

/// A credential. Cloning is cheap-ish (one String); dropping zeroizes it.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The plain value. Call this only where the value leaves for its
    /// consumer (a Vault write, a file in a container, a broker login).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// Equality in constant time (for comparing a credential with the one
    /// in use without leaking where they differ).
    pub fn same_as(&self, other: &Secret) -> bool {
        use subtle::ConstantTimeEq;
        let (a, b) = (self.expose().as_bytes(), other.expose().as_bytes());
        a.len() == b.len() && bool::from(a.ct_eq(b))
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// Values shorter than this are not registered: masking `1` or `yes` in
/// every line would garble output and protect nothing.
pub const MIN_LEN: usize = 6;

/// The values resolved during this run, masked in any text on its way out.
/// Shared (cheap clones of one registry).
#[derive(Clone, Default)]
pub struct Redactor {
    values: Arc<RwLock<Vec<String>>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.values.read().map(|v| v.len()).unwrap_or(0);
        write!(f, "Redactor({n} values)")
    }
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers `secret` and the forms it takes in other texts: as is,
    /// percent-encoded (in a URL) and JSON-escaped.
    pub fn register(&self, secret: &Secret) {
        let raw = secret.expose();
        if raw.chars().count() < MIN_LEN {
            return;
        }
        let mut forms = vec![raw.to_string(), percent_encode(raw), json_escape(raw)];
        // A multi-line value (a key file) is also masked line by line.
        forms.extend(
            raw.lines()
                .map(str::trim)
                .filter(|l| l.chars().count() >= MIN_LEN)
                .map(str::to_string),
        );
        let Ok(mut values) = self.values.write() else {
            return;
        };
        for f in forms {
            if !values.contains(&f) {
                values.push(f);
            }
        }
        // Longest first, so a value that contains another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.values.read().map(|v| v.is_empty()).unwrap_or(true)
    }

    /// `text` with every registered value replaced by `[redacted]`.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let Ok(values) = self.values.read() else {
            return text.into();
        };
        if !values.iter().any(|v| text.contains(v.as_str())) {
            return text.into();
        }
        let mut out = text.to_string();
        for v in values.iter() {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), REDACTED);
            }
        }
        out.into()
    }

    /// True if `text` holds any registered value (for leak scans).
    pub fn leaks(&self, text: &[u8]) -> bool {
        let Ok(values) = self.values.read() else {
            return false;
        };
        values
            .iter()
            .any(|v| text.windows(v.len()).any(|w| w == v.as_bytes()))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let s = Secret::new("hunter2-long-password");
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&s)), format!("Some({REDACTED})"));
        assert_eq!(s.expose(), "hunter2-long-password");
        assert!(s.same_as(&Secret::new("hunter2-long-password")));
        assert!(!s.same_as(&Secret::new("hunter3-long-password")));
    }

    #[test]
    fn the_redactor_masks_every_form_of_a_value() {
        let r = Redactor::new();
        let s = Secret::new("p@ss/w\"rd:42");
        r.register(&s);
        r.register(&Secret::new("short"));
        let line =
            r#"amqp://admin:p%40ss%2Fw%22rd%3A42@h/ {"pw":"p@ss/w\"rd:42"} raw p@ss/w"rd:42 short"#;
        let out = r.redact(line);
        assert!(!out.contains("p@ss"), "{out}");
        assert!(!out.contains("p%40ss"), "{out}");
        assert!(
            out.contains("short"),
            "short values are not registered: {out}"
        );
        assert_eq!(out.matches(REDACTED).count(), 3, "{out}");
        assert!(r.leaks(line.as_bytes()));
        assert!(!r.leaks(out.as_bytes()));
    }

    #[test]
    fn a_multi_line_value_is_masked_line_by_line() {
        let r = Redactor::new();
        r.register(&Secret::new(
            "-----BEGIN-----\nAAAABBBBCCCCDDDD\n-----END-----",
        ));
        assert_eq!(
            r.redact("key line AAAABBBBCCCCDDDD here"),
            format!("key line {REDACTED} here")
        );
    }
}
