//! The process's redaction registry: every secret value resolved in this
//! process is registered here (by `crates/core`'s resolver, the managed
//! secrets and the Vault client), and every text on its way to the
//! terminal, stdout or the log passes through [`text`]. A second line of
//! defence: the `Secret` type already prints `[redacted]`, this catches a
//! value that slipped into a library's error message.

use std::borrow::Cow;
use std::sync::OnceLock;
use taskctl_core::secrets::Redactor;

static REGISTRY: OnceLock<Redactor> = OnceLock::new();

/// The registry (one per process; clones share it).
pub fn registry() -> &'static Redactor {
    REGISTRY.get_or_init(Redactor::new)
}

/// `s` with every registered value masked.
pub fn text(s: &str) -> Cow<'_, str> {
    registry().redact(s)
}

/// A writer that masks registered values in what goes through it (each
/// `write` is masked as a whole; the formatting machinery writes a value
/// in one piece, so a value is never split across two writes).
pub struct Writer<W>(pub W);

impl<W: std::io::Write> std::io::Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) => {
                let masked = text(s);
                self.0.write_all(masked.as_bytes())?;
                Ok(buf.len())
            }
            Err(_) => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Standard output, masked.
pub fn stdout() -> Writer<anstream::Stdout> {
    Writer(anstream::stdout())
}

/// Standard error, masked.
pub fn stderr() -> Writer<anstream::Stderr> {
    Writer(anstream::stderr())
}
