//! The one error type of plugin calls, by what a caller can do about it.

/// Why a call did not produce a successful reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    pub kind: PluginErrorKind,
    /// One paragraph: what happened, then the plugin's own output.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginErrorKind {
    /// Not found, not declared, a secret it asks for not readable, or it
    /// could not be started.
    Unavailable,
    /// Found, but others could replace it (world-writable, not owned by
    /// the user or root) or it is not an executable file: not run.
    Unsafe,
    /// Did not finish within its timeout, or the run was cancelled.
    Timeout,
    /// Killed by a signal, or exited non-zero.
    Crashed,
    /// Printed something that is not the protocol.
    Malformed,
    /// Answered `ok: false`.
    Failed,
}

impl PluginError {
    pub(crate) fn new(kind: PluginErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: message.into(),
        }
    }
}
