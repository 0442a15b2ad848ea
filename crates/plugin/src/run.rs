//! One call of a plugin: spawn, write the request, read the answer.
//!
//! The plugin runs in its own process group with a clean environment (only
//! `PATH`, `HOME`, `LANG`, `TMPDIR`, `TZ` and `TASKCTL_PLUGIN_PROTOCOL`: no
//! Vault token or broker password of taskctl's reaches it), and dies with
//! taskctl (`PR_SET_PDEATHSIG`). At its timeout, or when the run is
//! cancelled, its whole process group is killed. Whatever it prints is
//! hostile input: lines are bounded, every stdout line must be a protocol
//! message, stderr is kept (its last [`STDERR_KEPT`] bytes) for the error,
//! and every text that leaves this module passes the redactor.

use crate::discover::Found;
use crate::error::{PluginError, PluginErrorKind};
use crate::protocol::{Message, PROTOCOL, Reply, Request};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskctl_secret::Redactor;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Longest stdout line taken from a plugin.
pub const MAX_LINE: usize = 1 << 20;
/// How much of a plugin's stderr is kept for its error.
pub const STDERR_KEPT: usize = 16 << 10;

/// What a call produced: the reply and the progress messages before it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub reply: Reply,
    pub progress: Vec<String>,
    /// The plugin's stderr (redacted, possibly cut to its end).
    pub stderr: String,
}

/// Calls `found` with `request`; `progress` sees each progress message
/// (redacted) as it arrives.
pub async fn call(
    found: &Found,
    request: &Request,
    timeout: Duration,
    redactor: &Redactor,
    cancel: &CancellationToken,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Answer, PluginError> {
    let name = &found.name;
    let action = request.action;
    let fail = |kind, message: String| PluginError {
        kind,
        message: redactor.redact(&message).into_owned(),
    };
    let body = serde_json::to_vec(request).map_err(|e| {
        fail(
            PluginErrorKind::Unavailable,
            format!("plugin `{name}`: the request cannot be encoded: {e}"),
        )
    })?;

    // Absolute: the plugin runs in its own directory.
    let program = std::fs::canonicalize(&found.path).unwrap_or_else(|_| found.path.clone());
    let mut command = tokio::process::Command::new(&program);
    command
        .env_clear()
        .env("TASKCTL_PLUGIN_PROTOCOL", PROTOCOL.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for var in ["PATH", "HOME", "LANG", "TMPDIR", "TZ"] {
        if let Some(v) = std::env::var_os(var) {
            command.env(var, v);
        }
    }
    if let Some(dir) = program.parent() {
        command.current_dir(dir);
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec here.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| {
        fail(
            PluginErrorKind::Unavailable,
            format!(
                "plugin `{name}` ({}) cannot be started: {e}",
                found.path.display()
            ),
        )
    })?;
    let pgid = child.id().map(|p| p as i32);
    let kill_group = || {
        if let Some(pgid) = pgid {
            // SAFETY: plain syscall on the group this call created.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    };

    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");

    let write = async move {
        // A plugin that exits without reading its request is judged by its
        // output, not by the broken pipe.
        let _ = stdin.write_all(&body).await;
        let _ = stdin.write_all(b"\n").await;
        let _ = stdin.shutdown().await;
    };
    // Kept outside the readers so that a call killed at its timeout still
    // reports what the plugin had said.
    let kept_err: Arc<Mutex<Vec<u8>>> = Arc::default();
    let kept_progress: Arc<Mutex<Vec<String>>> = Arc::default();
    let err_sink = kept_err.clone();
    let read_err = async move {
        let mut buf = [0u8; 8192];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut kept = err_sink.lock().unwrap_or_else(|p| p.into_inner());
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > STDERR_KEPT * 2 {
                        let cut = kept.len() - STDERR_KEPT;
                        kept.drain(..cut);
                    }
                }
            }
        }
    };
    let progress_sink = kept_progress.clone();
    let read_out = async move {
        let mut reader = BufReader::new(stdout);
        let mut reply: Option<Reply> = None;
        let mut line = Vec::new();
        let mut number = 0usize;
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| {
                    (
                        PluginErrorKind::Malformed,
                        format!("its output cannot be read: {e}"),
                    )
                })?;
            if n == 0 {
                break;
            }
            number += 1;
            if line.len() > MAX_LINE {
                return Err((
                    PluginErrorKind::Malformed,
                    format!("line {number} of its output is longer than {MAX_LINE} bytes"),
                ));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            if reply.is_some() {
                return Err((
                    PluginErrorKind::Malformed,
                    format!(
                        "it printed line {number} after its result: `{}`",
                        clip(text)
                    ),
                ));
            }
            let message: Message = serde_json::from_str(text).map_err(|e| {
                (
                    PluginErrorKind::Malformed,
                    format!(
                        "line {number} of its output is not a protocol message ({e}): `{}`",
                        clip(text)
                    ),
                )
            })?;
            let version = match &message {
                Message::Progress { protocol, .. } => *protocol,
                Message::Result(r) => r.protocol,
            };
            if version != PROTOCOL {
                return Err((
                    PluginErrorKind::Malformed,
                    format!("it speaks protocol {version}; this taskctl speaks {PROTOCOL}"),
                ));
            }
            match message {
                Message::Progress { message, .. } => {
                    let shown = redactor.redact(&message).into_owned();
                    progress(&shown);
                    progress_sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(shown);
                }
                Message::Result(r) => reply = Some(*r),
            }
        }
        Ok::<_, (PluginErrorKind, String)>(reply)
    };

    let work = async {
        let (_, _, out) = tokio::join!(write, read_err, read_out);
        let status = child.wait().await;
        (out, status)
    };
    let stderr_text = || {
        let mut kept = kept_err.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if kept.len() > STDERR_KEPT {
            kept.drain(..kept.len() - STDERR_KEPT);
        }
        redactor
            .redact(&String::from_utf8_lossy(&kept))
            .into_owned()
    };
    let said = || {
        kept_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    };
    let outcome = tokio::select! {
        done = tokio::time::timeout(timeout, work) => done.ok(),
        _ = cancel.cancelled() => None,
    };
    let Some((out, status)) = outcome else {
        kill_group();
        let mut output = String::new();
        if let Some(last) = said().last() {
            output += &format!("; its last progress: {}", clip(last));
        }
        match stderr_text().trim() {
            "" => {}
            tail => output += &format!("; its stderr: {}", clip(tail)),
        }
        let why = if cancel.is_cancelled() {
            "the run was cancelled"
        } else {
            "it did not finish"
        };
        return Err(fail(
            PluginErrorKind::Timeout,
            format!(
                "plugin `{name}` {}: {why} within {} and was killed{output}",
                action.as_str(),
                humantime_secs(timeout)
            ),
        ));
    };
    // Whatever it left behind in its group goes with it.
    kill_group();
    let stderr = stderr_text();
    let with_stderr = |message: String| match stderr.trim() {
        "" => message,
        tail => format!("{message}; its stderr: {}", clip(tail)),
    };
    let status = status.map_err(|e| {
        fail(
            PluginErrorKind::Crashed,
            format!("plugin `{name}`: waiting for it failed: {e}"),
        )
    })?;
    let reply = match out {
        Ok(r) => r,
        Err((kind, why)) => {
            return Err(fail(
                kind,
                with_stderr(format!("plugin `{name}` {}: {why}", action.as_str())),
            ));
        }
    };
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended abnormally".to_string(),
        };
        let said = reply
            .as_ref()
            .and_then(|r| r.error.clone())
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(fail(
            PluginErrorKind::Crashed,
            with_stderr(format!("plugin `{name}` {} {how}{said}", action.as_str())),
        ));
    }
    let Some(reply) = reply else {
        return Err(fail(
            PluginErrorKind::Malformed,
            with_stderr(format!(
                "plugin `{name}` {} exited without a result message",
                action.as_str()
            )),
        ));
    };
    if !reply.ok {
        let why = reply
            .error
            .clone()
            .unwrap_or_else(|| "no reason given".into());
        return Err(fail(
            PluginErrorKind::Failed,
            with_stderr(format!("plugin `{name}` {} failed: {why}", action.as_str())),
        ));
    }
    if let Some(why) = reply.problem(action) {
        return Err(fail(
            PluginErrorKind::Malformed,
            format!("plugin `{name}` {}: {why}", action.as_str()),
        ));
    }
    Ok(Answer {
        reply,
        progress: said(),
        stderr,
    })
}

/// A line shown in an error: at most 200 characters.
fn clip(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn humantime_secs(d: Duration) -> String {
    match d.subsec_millis() {
        0 => format!("{}s", d.as_secs()),
        _ => format!("{:.1}s", d.as_secs_f64()),
    }
}
