//! Problems found in user input, with where they are.
//!
//! A [`Diagnostic`] is data: the CLI's UI module renders it (with the source
//! line and a caret) or serialises it as JSON. Library code never prints.

use serde::Serialize;
use std::path::{Path, PathBuf};

/// How bad a problem is. Only errors fail a run; warnings fail it under
/// `--strict`; notes never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Note,
    Warning,
    Error,
}

/// Identifies a source file inside a [`SourceMap`].
pub type FileId = u32;

/// A place in a source file: 1-based line and column, and the length of the
/// token there (for the caret underline). Synthetic nodes (made by taskctl,
/// not read from a file) have no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub file: Option<FileId>,
    pub line: u32,
    pub col: u32,
    pub len: u32,
}

impl Span {
    pub const SYNTHETIC: Span = Span {
        file: None,
        line: 0,
        col: 0,
        len: 0,
    };
}

/// The text of every file read, so that diagnostics can quote the line.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceMap {
    pub fn add(&mut self, path: &Path, text: String) -> FileId {
        self.files.push(SourceFile {
            path: path.to_path_buf(),
            text,
        });
        (self.files.len() - 1) as FileId
    }

    pub fn file(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id as usize)
    }

    /// The source line a span points into, without its line ending.
    pub fn line_text(&self, span: &Span) -> Option<&str> {
        let file = self.file(span.file?)?;
        file.text.lines().nth(span.line.checked_sub(1)? as usize)
    }

    /// Resolves a span into a printable location.
    pub fn locate(&self, span: &Span) -> Option<Location> {
        let file = self.file(span.file?)?;
        Some(Location {
            file: file.path.clone(),
            line: span.line,
            column: span.col,
            len: span.len.max(1),
            snippet: self.line_text(span).unwrap_or_default().to_string(),
        })
    }
}

/// A resolved span: the file, line and column a user can jump to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    #[serde(skip)]
    pub len: u32,
    /// The whole source line, as written.
    pub snippet: String,
}

impl Location {
    /// Masks the value under the span in the snippet, for values that may be
    /// secrets.
    pub fn redact(&mut self) {
        let start = self.column.saturating_sub(1) as usize;
        let masked: String = self
            .snippet
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i >= start && i < start + self.len as usize {
                    '*'
                } else {
                    c
                }
            })
            .collect();
        self.snippet = masked;
    }
}

/// One problem, where it is, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// Dotted path of the offending value in the merged profile, e.g.
    /// `network.subnets.public[0].cidr`; empty for whole-document problems.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Diagnostics in the order they were found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn count(&self, severity: Severity) -> usize {
        self.0.iter().filter(|d| d.severity == severity).count()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Sorted by file, line and column so output follows the source; problems
    /// without a location come last.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            let key = |d: &Diagnostic| {
                d.location
                    .as_ref()
                    .map(|l| (0, l.file.clone(), l.line, l.column))
                    .unwrap_or((1, PathBuf::new(), 0, 0))
            };
            key(a).cmp(&key(b))
        });
    }
}

/// Suggests the closest of `candidates` to `got`, for "did you mean" help.
pub fn did_you_mean<'a>(
    got: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let got = got.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&got, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("replcias", ["replicas", "image"]),
            Some("replicas")
        );
        assert_eq!(did_you_mean("zzz", ["replicas", "image"]), None);
    }
}
