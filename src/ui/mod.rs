//! All user-facing output goes through [`Shell`]: human text to a terminal
//! (colored when it is one and `NO_COLOR` is unset), or JSON/YAML for
//! machines. Diagnostics go to stderr in text mode so stdout stays data.

pub mod events;
pub mod plan;

use crate::cli::{GlobalArgs, OutputFormat};
use anstyle::{AnsiColor, Style};
use serde::Serialize;
use std::io::Write;
use taskctl_core::{Diagnostic, Diagnostics, Severity};

const ERROR: Style = AnsiColor::Red.on_default().bold();
const WARNING: Style = AnsiColor::Yellow.on_default().bold();
const NOTE: Style = AnsiColor::Cyan.on_default().bold();
const GUTTER: Style = AnsiColor::Blue.on_default().bold();
const HELP: Style = AnsiColor::Green.on_default().bold();
const BOLD: Style = Style::new().bold();

pub struct Shell {
    format: OutputFormat,
    verbosity: i8,
}

impl Shell {
    pub fn new(global: &GlobalArgs) -> Self {
        let no_color_env = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        if global.no_color || no_color_env {
            anstream::ColorChoice::Never.write_global();
        }
        // Library logs (fields through `tracing`) go to stderr: warnings by
        // default, more with -v, or as RUST_LOG says.
        let level = match (global.quiet, global.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, 2) => "debug",
            _ => "trace",
        };
        // vaultrs logs every non-2xx answer at ERROR, including the 404 of
        // a secret taskctl is about to create; taskctl reports Vault's
        // errors itself, with the path.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{level},vaultrs=off,rustify=off"))
        });
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(crate::redact::stderr)
            .with_ansi(!(global.no_color || no_color_env))
            .with_target(false)
            .try_init();
        Shell {
            format: global.output,
            verbosity: if global.quiet {
                -1
            } else {
                global.verbose as i8
            },
        }
    }

    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// A human status line on stderr, unless `--quiet`.
    pub fn status(&mut self, style: StatusStyle, label: &str, message: &str) {
        if self.verbosity < 0 {
            return;
        }
        let style = match style {
            StatusStyle::Ok => HELP,
            StatusStyle::Error => ERROR,
            StatusStyle::Warning => WARNING,
        };
        let mut err = crate::redact::stderr();
        let _ = writeln!(err, "{style}{label}{style:#} {message}");
    }

    /// Writes data to stdout in the chosen format (`table` falls back to YAML
    /// for documents, which is what a person reads best).
    pub fn data<T: Serialize>(&mut self, value: &T) -> anyhow::Result<()> {
        let mut out = crate::redact::stdout();
        match self.format {
            OutputFormat::Json => {
                serde_json::to_writer_pretty(&mut out, value)?;
                writeln!(out)?;
            }
            OutputFormat::Yaml | OutputFormat::Table => {
                let text = serde_norway::to_string(value)?;
                out.write_all(text.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Writes plain text to stdout.
    pub fn text(&mut self, text: &str) -> anyhow::Result<()> {
        let mut out = crate::redact::stdout();
        out.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Renders diagnostics like a compiler: message, location, the source
    /// line with a caret under the value, and help. Notes show with `-v`.
    pub fn diagnostics(&mut self, diags: &Diagnostics) {
        let mut err = crate::redact::stderr();
        for d in diags.iter() {
            if d.severity == Severity::Note && self.verbosity < 1 {
                continue;
            }
            if d.severity == Severity::Warning && self.verbosity < 0 {
                continue;
            }
            let _ = write_diagnostic(&mut err, d);
        }
    }

    /// Prints an error and its causes, once each.
    pub fn error_chain(&mut self, err: &anyhow::Error) {
        let mut out = crate::redact::stderr();
        let _ = writeln!(out, "{ERROR}error:{ERROR:#} {err}");
        for cause in err.chain().skip(1) {
            let _ = writeln!(out, "  {BOLD}caused by:{BOLD:#} {cause}");
        }
    }
}

/// Plain aligned columns, two spaces apart, header first, as `helm` and
/// `kubectl` print them (no trailing spaces).
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text += &line(row.iter().map(String::as_str).collect());
    }
    text
}

pub enum StatusStyle {
    Ok,
    Error,
    Warning,
}

fn write_diagnostic(w: &mut impl Write, d: &Diagnostic) -> std::io::Result<()> {
    let (label, style) = match d.severity {
        Severity::Error => ("error", ERROR),
        Severity::Warning => ("warning", WARNING),
        Severity::Note => ("note", NOTE),
    };
    writeln!(w, "{style}{label}:{style:#} {BOLD}{}{BOLD:#}", d.message)?;
    if let Some(loc) = &d.location {
        let line_no = loc.line.to_string();
        let pad = " ".repeat(line_no.len());
        writeln!(
            w,
            "{pad}{GUTTER}-->{GUTTER:#} {}:{}:{}",
            loc.file.display(),
            loc.line,
            loc.column
        )?;
        writeln!(w, "{pad} {GUTTER}|{GUTTER:#}")?;
        writeln!(w, "{GUTTER}{line_no} |{GUTTER:#} {}", loc.snippet)?;
        let indent: String = loc
            .snippet
            .chars()
            .take(loc.column.saturating_sub(1) as usize)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let carets = "^".repeat(loc.len.max(1) as usize);
        writeln!(
            w,
            "{pad} {GUTTER}|{GUTTER:#} {indent}{style}{carets}{style:#}"
        )?;
    } else if !d.path.is_empty() {
        writeln!(w, "  {GUTTER}-->{GUTTER:#} {}", d.path)?;
    }
    if let Some(help) = &d.help {
        let pad = d
            .location
            .as_ref()
            .map(|l| " ".repeat(l.line.to_string().len()))
            .unwrap_or_default();
        writeln!(w, "{pad} {GUTTER}={GUTTER:#} {HELP}help:{HELP:#} {help}")?;
    }
    writeln!(w)
}
