//! Profiles: reading, layering, typing and validating.
//!
//! Start at [`load`]. A profile goes through these stages, each on the
//! span-keeping [`Node`] tree until typing:
//!
//! 1. [`yaml`]: each file is parsed; `include`d files are merged under it.
//! 2. [`layer`]: the `-p` files merge in order, the environment overlay
//!    applies, `${VAR}` references expand.
//! 3. [`de`]: the tree becomes a typed [`Profile`], collecting every shape
//!    problem (wrong type, unknown key, unknown value) instead of stopping.
//! 4. [`validate`]: the typed profile is checked as a whole (CIDRs, sizes,
//!    quantities, step names, secrets …).
//!
//! Every problem found by any stage is reported together, with the file,
//! line and column it comes from.

pub mod builtins;
mod de;
mod layer;
pub mod model;
mod node;
mod validate;
pub mod value;
mod yaml;

pub use layer::merge;
pub use model::*;
pub use node::{Key, Node, NodeKind, Path, Scalar, Seg};
pub use validate::check_registry;

use crate::diagnostic::{Diagnostic, Diagnostics, Severity, SourceMap, Span};
use std::path::PathBuf;

/// What to load.
pub struct LoadOptions<'a> {
    /// Profile files, merged in order (later files override earlier ones).
    pub files: Vec<PathBuf>,
    /// The environment overlay to apply; `metadata.environment` when `None`.
    pub environment: Option<String>,
    /// Looks up `${VAR}` references; normally the process environment.
    pub vars: &'a dyn Fn(&str) -> Option<String>,
}

/// The result of loading: the profile when it could be typed, and every
/// problem found on the way.
pub struct Loaded {
    pub profile: Option<Profile>,
    /// The merged document, for locating values.
    pub document: Option<Node>,
    pub sources: SourceMap,
    pub diagnostics: Diagnostics,
}

impl Loaded {
    /// The profile, if there are no errors (warnings are allowed).
    pub fn valid_profile(&self) -> Option<&Profile> {
        if self.diagnostics.has_errors() {
            None
        } else {
            self.profile.as_ref()
        }
    }
}

/// A problem before it is resolved to a file location.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub severity: Severity,
    pub span: Span,
    pub path: Path,
    pub message: String,
    pub help: Option<String>,
    /// The value at `span` may be a secret: mask it in the quoted source line.
    pub redact: bool,
}

impl Problem {
    pub fn at(span: Span, path: Path, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Error,
            span,
            path,
            message: message.into(),
            help: None,
            redact: false,
        }
    }

    pub fn whole(message: impl Into<String>) -> Problem {
        Problem::at(Span::SYNTHETIC, Path::root(), message)
    }
}

/// Loads, merges, types and validates a profile.
pub fn load(options: &LoadOptions<'_>) -> Loaded {
    let mut sources = SourceMap::default();
    let mut problems = Vec::new();
    if options.files.is_empty() {
        problems.push(Problem {
            help: Some("pass a profile with `-p FILE`, e.g. `-p profiles/local.yaml`".into()),
            ..Problem::whole("no profile given")
        });
    }
    let mut document: Option<Node> = None;
    for file in &options.files {
        let mut stack = Vec::new();
        if let Some(node) = layer::read_with_includes(file, &mut sources, &mut stack, &mut problems)
        {
            document = Some(match document {
                None => node,
                Some(mut base) => {
                    layer::merge(&mut base, node);
                    base
                }
            });
        }
    }
    let mut profile = None;
    if let Some(doc) = document.as_mut().filter(|_| problems.is_empty()) {
        layer::apply_environment(doc, options.environment.as_deref(), &mut problems);
        let before = problems.len();
        layer::interpolate(doc, &Path::root(), options.vars, &mut problems);
        // An unexpanded `${VAR}` would make every check that reads it
        // complain again; report the variable alone.
        let expanded = problems.len() == before;
        let collector = de::Collector::default();
        profile = de::from_node::<Profile>(doc, &collector);
        let shape: Vec<Problem> = collector
            .into_problems()
            .into_iter()
            .map(|p| Problem {
                severity: Severity::Error,
                span: p.span,
                path: p.path,
                message: p.message,
                help: p.help,
                redact: false,
            })
            .collect();
        if let Some(p) = profile.as_ref().filter(|_| expanded) {
            // Values with shape problems were replaced by stand-ins; what
            // validation says about them would only echo the first problem.
            let semantic = validate::validate(p, doc)
                .into_iter()
                .filter(|v| !shape.iter().any(|s| v.path.0.starts_with(&s.path.0)));
            problems.extend(semantic);
        }
        if !shape.is_empty() {
            profile = None;
        }
        // A plugin's `path` and its `plugins/` directory are looked up
        // from the profile file that declares it, as includes are.
        if let Some(p) = profile.as_mut() {
            for (i, plugin) in p.plugins.iter_mut().enumerate() {
                let span = doc.span_of(&crate::path!["plugins", i, "name"]);
                plugin.declared_in = span
                    .file
                    .and_then(|f| sources.file(f))
                    .and_then(|f| f.path.parent())
                    .map(|d| match d.as_os_str().is_empty() {
                        true => std::path::PathBuf::from("."),
                        false => d.to_path_buf(),
                    });
            }
        }
        problems.extend(shape);
    }
    let mut diagnostics = Diagnostics(
        problems
            .into_iter()
            .map(|p| Diagnostic {
                severity: p.severity,
                message: p.message,
                path: p.path.to_string(),
                location: sources.locate(&p.span).map(|mut l| {
                    if p.redact {
                        l.redact();
                    }
                    l
                }),
                help: p.help,
            })
            .collect(),
    );
    diagnostics.sort();
    Loaded {
        profile,
        document,
        sources,
        diagnostics,
    }
}

/// The JSON Schema of a profile document.
pub fn json_schema() -> schemars::Schema {
    schemars::schema_for!(Profile)
}
