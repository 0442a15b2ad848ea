//! Rendering: every template under the templates directory, against the
//! view of a profile, into ordered manifests.
//!
//! Start at [`render`]. Templates are the files named `*.yaml.hbs` under the
//! directory, at any depth, each producing zero or more YAML documents.
//!
//! Guarantees:
//! - Strict mode: a variable missing from the render context is an error
//!   naming the template, the line and the variable, never an empty string.
//! - No HTML escaping: values reach YAML as written; templates use `quote`
//!   wherever a value could break the YAML.
//! - Output is deterministic: templates render in path order, then objects
//!   are stably sorted by [`ApplyLevel`].
//! - Every document is a Kubernetes object with apiVersion, kind and
//!   metadata.name, and no object is rendered twice. Whether it matches the
//!   Kubernetes schema is [`crate::check`]'s job.

use crate::manifest::{ApplyLevel, Manifest, rank_in_level};
use crate::template_helpers;
use crate::view::{self, View};
use handlebars::{Handlebars, RenderErrorReason};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use taskctl_core::profile::Profile;

/// Why rendering the manifests of a profile failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The templates directory, a template or a dashboard could not be read.
    #[error("failed to read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A template is not valid Handlebars.
    #[error("template `{template}` does not parse")]
    Parse {
        template: String,
        #[source]
        source: Box<handlebars::TemplateError>,
    },
    /// A template reads a variable the render context does not have; in
    /// strict mode this is an error, not an empty string.
    #[error("template `{template}`{}: variable `{variable}` is not in the render context", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    MissingVariable {
        template: String,
        line: Option<usize>,
        variable: String,
    },
    /// A template failed to render for another reason (a helper's error).
    #[error("template `{template}`{} failed to render", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Template {
        template: String,
        line: Option<usize>,
        #[source]
        source: Box<handlebars::RenderError>,
    },
    /// A template rendered text that is not YAML.
    #[error("template `{template}` rendered invalid YAML")]
    Yaml {
        template: String,
        #[source]
        source: serde_norway::Error,
    },
    /// A rendered document is not a Kubernetes object.
    #[error("template `{template}`, document {document}: {problem}")]
    NotAnObject {
        template: String,
        document: usize,
        problem: String,
    },
    /// Two documents render the same object.
    #[error("{object} is rendered twice, by `{first}` and `{second}`")]
    Duplicate {
        object: String,
        first: String,
        second: String,
    },
    /// The profile asks for something that cannot be rendered.
    #[error("{0}")]
    Profile(String),
}

/// The annotation every rendered object carries: `<profile name>/<environment>`.
pub const ENVIRONMENT_ANNOTATION: &str = "taskctl.dev/environment";

/// The suffix of template files.
pub const TEMPLATE_SUFFIX: &str = ".yaml.hbs";

/// Renders every template against `profile` into manifests in apply order.
pub fn render(profile: &Profile, templates: &Path) -> Result<Vec<Manifest>, RenderError> {
    render_from(profile, &Templates::Dir(templates.to_path_buf()))
}

/// [`render`] from the templates built into the binary, or from a directory.
pub fn render_from(profile: &Profile, templates: &Templates) -> Result<Vec<Manifest>, RenderError> {
    let view = view::build_from(profile, templates)?;
    Renderer::from_templates(templates)?.render(&view)
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_templates.rs"));
}

/// Where the templates come from: the copy of the repository's
/// `templates/` compiled into the binary (the default, so an installed
/// `taskctl` renders from any directory), or a directory that overrides it
/// (`--templates DIR`, `TASKCTL_TEMPLATES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Templates {
    #[default]
    Embedded,
    Dir(PathBuf),
}

impl Templates {
    /// The templates or directory from `TASKCTL_TEMPLATES`, else the
    /// embedded ones.
    pub fn from_env() -> Templates {
        match std::env::var_os("TASKCTL_TEMPLATES") {
            Some(dir) if !dir.is_empty() => Templates::Dir(PathBuf::from(dir)),
            _ => Templates::Embedded,
        }
    }

    /// A file under the templates (a dashboard), by its relative path.
    pub fn read(&self, relative: &str) -> Result<String, RenderError> {
        match self {
            Templates::Dir(dir) => {
                let path = dir.join(relative);
                std::fs::read_to_string(&path).map_err(|source| RenderError::Read { path, source })
            }
            Templates::Embedded => embedded::FILES
                .iter()
                .find(|(name, _)| *name == relative)
                .map(|(_, text)| (*text).to_owned())
                .ok_or_else(|| RenderError::Read {
                    path: PathBuf::from(format!("<built-in templates>/{relative}")),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such file among the built-in templates",
                    ),
                }),
        }
    }
}

/// Templates loaded and parsed once, rendered against any number of views.
pub struct Renderer {
    registry: Handlebars<'static>,
    names: Vec<String>,
}

impl Renderer {
    /// Reads and parses every template under `templates`.
    pub fn load(templates: &Path) -> Result<Renderer, RenderError> {
        let mut files = Vec::new();
        walk(templates, &mut files)?;
        files.sort();
        let mut sources = Vec::new();
        for path in files {
            let name = path
                .strip_prefix(templates)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&path)
                .map_err(|source| RenderError::Read { path, source })?;
            sources.push((name, text));
        }
        Renderer::from_sources(sources)
    }

    /// Reads and parses every template of `templates`.
    pub fn from_templates(templates: &Templates) -> Result<Renderer, RenderError> {
        match templates {
            Templates::Dir(dir) => Renderer::load(dir),
            Templates::Embedded => Renderer::from_sources(
                embedded::FILES
                    .iter()
                    .filter(|(name, _)| name.ends_with(TEMPLATE_SUFFIX))
                    .map(|(name, text)| ((*name).to_owned(), (*text).to_owned())),
            ),
        }
    }

    /// Parses templates given as `(name, text)` pairs.
    pub fn from_sources(
        sources: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Renderer, RenderError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        template_helpers::register(&mut registry);
        let mut names = Vec::new();
        for (name, text) in sources {
            registry
                .register_template_string(&name, text)
                .map_err(|source| RenderError::Parse {
                    template: name.clone(),
                    source: Box::new(source),
                })?;
            names.push(name);
        }
        Ok(Renderer { registry, names })
    }

    /// Names of the templates, in render order.
    pub fn templates(&self) -> &[String] {
        &self.names
    }

    /// Renders every template against `view`.
    pub fn render(&self, view: &View) -> Result<Vec<Manifest>, RenderError> {
        let mut manifests: Vec<Manifest> = Vec::new();
        for name in &self.names {
            let text = self
                .registry
                .render(name, view)
                .map_err(|e| render_error(name, e))?;
            for m in parse_documents(name, &text, &view.release.environment_annotation)? {
                if let Some(first) = manifests.iter().find(|o| {
                    o.kind == m.kind
                        && o.api_version == m.api_version
                        && o.name == m.name
                        && o.namespace == m.namespace
                }) {
                    return Err(RenderError::Duplicate {
                        object: m.id(),
                        first: first.template.clone(),
                        second: m.template.clone(),
                    });
                }
                manifests.push(m);
            }
        }
        manifests.sort_by_key(|m| (m.level, rank_in_level(&m.kind)));
        Ok(manifests)
    }
}

fn render_error(name: &str, e: handlebars::RenderError) -> RenderError {
    let template = e.template_name.clone().unwrap_or_else(|| name.to_string());
    match e.reason() {
        RenderErrorReason::MissingVariable(variable) => RenderError::MissingVariable {
            template,
            line: e.line_no,
            variable: variable.clone().unwrap_or_else(|| "?".into()),
        },
        _ => RenderError::Template {
            template,
            line: e.line_no,
            source: Box::new(e),
        },
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), RenderError> {
    let read = |source| RenderError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(read)?;
        if file_type.is_dir() {
            walk(&path, out)?;
        } else if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(TEMPLATE_SUFFIX))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits rendered text into objects; empty documents are skipped. Every
/// object gets the `taskctl.dev/environment` annotation (`<name>/<env>`,
/// which a label value cannot hold), here rather than in each template.
fn parse_documents(
    template: &str,
    text: &str,
    environment: &str,
) -> Result<Vec<Manifest>, RenderError> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let mut value =
            serde_json::Value::deserialize(doc).map_err(|source| RenderError::Yaml {
                template: template.to_string(),
                source,
            })?;
        if value.is_null() {
            continue;
        }
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(
                    ENVIRONMENT_ANNOTATION.to_string(),
                    serde_json::Value::String(environment.to_string()),
                );
            }
        }
        let problem = |problem: &str| RenderError::NotAnObject {
            template: template.to_string(),
            document,
            problem: problem.to_string(),
        };
        let field = |pointer: &str| value.pointer(pointer).and_then(|v| v.as_str());
        let api_version = field("/apiVersion").ok_or_else(|| problem("no `apiVersion`"))?;
        let kind = field("/kind").ok_or_else(|| problem("no `kind`"))?;
        let name = field("/metadata/name").ok_or_else(|| problem("no `metadata.name`"))?;
        let namespace = field("/metadata/namespace").map(str::to_string);
        let yaml = serde_norway::to_string(&value).map_err(|source| RenderError::Yaml {
            template: template.to_string(),
            source,
        })?;
        out.push(Manifest {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            namespace,
            level: ApplyLevel::of(kind),
            template: template.to_string(),
            yaml,
            value: value.clone(),
        });
    }
    Ok(out)
}
