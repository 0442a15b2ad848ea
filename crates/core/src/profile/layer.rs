//! Putting a profile together from files: includes, layering of several
//! `-p` files, the environment overlay, and `${VAR}` interpolation.
//!
//! All of it works on the [`Node`] tree, so every value keeps the span of the
//! file that last set it.

use super::node::{Key, Node, NodeKind, Path, Scalar};
use super::yaml;
use super::{Problem, Severity};
use crate::diagnostic::{SourceMap, Span, did_you_mean};
use crate::path;
use std::path::{Path as FsPath, PathBuf};

/// Reads one file and the files it includes, merged.
pub(crate) fn read_with_includes(
    file: &FsPath,
    sources: &mut SourceMap,
    stack: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
) -> Option<Node> {
    let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    if stack.contains(&canonical) {
        let chain: Vec<String> = stack
            .iter()
            .chain([&canonical])
            .map(|p| p.display().to_string())
            .collect();
        problems.push(Problem::whole(format!(
            "profiles include each other in a cycle: {}",
            chain.join(" -> ")
        )));
        return None;
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::whole(format!(
                "cannot read profile `{}`: {e}",
                file.display()
            )));
            return None;
        }
    };
    let id = sources.add(file, text);
    let text = sources
        .file(id)
        .map(|f| f.text.as_str())
        .unwrap_or_default();
    let mut node = match yaml::parse(text, id) {
        Ok(n) => n,
        Err(e) => {
            problems.push(Problem {
                severity: Severity::Error,
                span: e.span,
                path: Path::root(),
                message: format!("invalid YAML: {}", e.message),
                help: None,
                redact: false,
            });
            return None;
        }
    };
    if !matches!(node.kind, NodeKind::Map(_)) {
        problems.push(Problem::at(
            node.span,
            Path::root(),
            format!(
                "a profile is a map with `apiVersion`, `kind`, `metadata`, …; found {}",
                node.describe()
            ),
        ));
        return None;
    }
    let includes = node.remove("include");
    let Some(includes) = includes else {
        return Some(node);
    };
    let items: Vec<Node> = match includes.kind {
        NodeKind::Seq(items) => items,
        NodeKind::Scalar(ref s) if !s.is_null() => vec![includes.clone()],
        _ => Vec::new(),
    };
    stack.push(canonical);
    let base_dir = file.parent().unwrap_or(FsPath::new("."));
    let mut merged: Option<Node> = None;
    for (i, item) in items.iter().enumerate() {
        let Some(rel) = item.as_str() else {
            problems.push(Problem::at(
                item.span,
                path!["include", i],
                format!("expected a file path, found {}", item.describe()),
            ));
            continue;
        };
        let included = base_dir.join(rel);
        if !included.exists() {
            problems.push(Problem::at(
                item.span,
                path!["include", i],
                format!("included profile `{}` does not exist", included.display()),
            ));
            continue;
        }
        if let Some(n) = read_with_includes(&included, sources, stack, problems) {
            merged = Some(match merged {
                None => n,
                Some(mut m) => {
                    merge(&mut m, n);
                    m
                }
            });
        }
    }
    stack.pop();
    Some(match merged {
        None => node,
        Some(mut base) => {
            merge(&mut base, node);
            base
        }
    })
}

/// Merges `over` into `base`: maps key by key (a null value removes the
/// key), lists of named maps item by item (by `name` or `job_name`), and
/// anything else is replaced.
pub fn merge(base: &mut Node, over: Node) {
    match (&mut base.kind, over.kind) {
        (NodeKind::Map(_), NodeKind::Map(entries)) => {
            for (key, value) in entries {
                if value.as_scalar().is_some_and(Scalar::is_null) {
                    base.remove(&key.name);
                } else if let Some(existing) = base.get_mut(&key.name) {
                    merge(existing, value);
                } else {
                    base.set(key, value);
                }
            }
        }
        (NodeKind::Seq(items), NodeKind::Seq(new_items))
            if is_named_list(items) && is_named_list(&new_items) && !items.is_empty() =>
        {
            for item in new_items {
                let name = item_name(&item).map(str::to_string);
                match items.iter_mut().find(|i| item_name(i) == name.as_deref()) {
                    Some(existing) => merge(existing, item),
                    None => items.push(item),
                }
            }
        }
        (_, kind) => {
            base.kind = kind;
            base.span = over.span;
        }
    }
}

fn item_name(node: &Node) -> Option<&str> {
    node.get("name")
        .or_else(|| node.get("job_name"))
        .and_then(Node::as_str)
}

fn is_named_list(items: &[Node]) -> bool {
    items.iter().all(|i| item_name(i).is_some())
}

/// Applies the overlay of the environment chosen by `--env` (or else
/// `metadata.environment`) and records the choice in `metadata.environment`.
pub(crate) fn apply_environment(
    root: &mut Node,
    requested: Option<&str>,
    problems: &mut Vec<Problem>,
) {
    let from_profile = root
        .get("metadata")
        .and_then(|m| m.get("environment"))
        .and_then(Node::as_str)
        .map(str::to_string);
    let Some(name) = requested.map(str::to_string).or(from_profile) else {
        // Typing reports the missing `metadata.environment`.
        return;
    };
    let (env_span, env_path) = match requested {
        Some(_) => (Span::SYNTHETIC, Path::root()),
        None => (
            root.span_of(&path!["metadata", "environment"]),
            path!["metadata", "environment"],
        ),
    };
    let environments = root.get("environments");
    let known: Vec<String> = environments
        .and_then(Node::as_map)
        .map(|m| m.iter().map(|(k, _)| k.name.clone()).collect())
        .unwrap_or_default();
    let Some(env) = environments.and_then(|e| e.get(&name)) else {
        let mut help = if known.is_empty() {
            "the profile defines no `environments`".to_string()
        } else {
            format!("the profile defines: {}", known.join(", "))
        };
        if let Some(m) = did_you_mean(&name, known.iter().map(String::as_str)) {
            help = format!("did you mean `{m}`? {help}");
        }
        let origin = if requested.is_some() {
            " (from --env)"
        } else {
            ""
        };
        problems.push(Problem {
            severity: Severity::Error,
            span: env_span,
            path: env_path,
            message: format!("unknown environment `{name}`{origin}"),
            help: Some(help),
            redact: false,
        });
        return;
    };
    if let Some(overrides) = env.get("overrides").cloned() {
        let overrides_path = path!["environments", name.as_str(), "overrides"];
        match &overrides.kind {
            NodeKind::Map(entries) => {
                for (k, _) in entries {
                    if matches!(
                        k.name.as_str(),
                        "apiVersion" | "kind" | "environments" | "include"
                    ) {
                        problems.push(Problem::at(
                            k.span,
                            overrides_path.child(k.name.as_str()),
                            format!("an environment cannot override `{}`", k.name),
                        ));
                    }
                }
                if !problems.iter().any(|p| p.severity == Severity::Error) {
                    merge(root, overrides);
                }
            }
            NodeKind::Scalar(s) if s.is_null() => {}
            _ => problems.push(Problem::at(
                overrides.span,
                overrides_path,
                format!(
                    "expected a map (a partial profile), found {}",
                    overrides.describe()
                ),
            )),
        }
    }
    if requested.is_some()
        && let Some(meta) = root.get_mut("metadata")
    {
        let key = Key {
            name: "environment".into(),
            span: Span::SYNTHETIC,
        };
        meta.set(key, Node::string(name, Span::SYNTHETIC));
    }
}

/// Replaces `${NAME}` and `${NAME:-default}` in every scalar with the value
/// `lookup` gives; `$$` is a literal `$`.
pub(crate) fn interpolate(
    node: &mut Node,
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match &mut node.kind {
        NodeKind::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                interpolate(v, &path.child(k.name.as_str()), lookup, problems);
            }
        }
        NodeKind::Seq(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                interpolate(v, &path.child(i), lookup, problems);
            }
        }
        NodeKind::Scalar(s) => {
            if !s.text.contains('$') {
                return;
            }
            match expand(&s.text, lookup) {
                Ok(text) => s.text = text,
                Err(message) => problems.push(Problem::at(node.span, path.clone(), message)),
            }
        }
    }
}

fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                "unclosed `${`: write `${NAME}`, or `$$` for a literal `$`".to_string()
            })?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "malformed variable reference `${{{inner}}}`: expected `${{NAME}}` or `${{NAME:-default}}`"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Node {
        yaml::parse(text, 0).unwrap()
    }

    #[test]
    fn maps_merge_and_null_removes() {
        let mut base = doc("a: {x: 1, y: 2}\nb: [1, 2]\nc: 1\n");
        merge(&mut base, doc("a: {y: 3}\nb: [9]\nc: null\n"));
        assert_eq!(base.lookup(&path!["a", "x"]).unwrap().as_str(), Some("1"));
        assert_eq!(base.lookup(&path!["a", "y"]).unwrap().as_str(), Some("3"));
        assert_eq!(base.lookup(&path!["b", 0]).unwrap().as_str(), Some("9"));
        assert!(base.get("c").is_none());
    }

    #[test]
    fn named_lists_merge_by_name() {
        let mut base = doc("g: [{name: w, n: 1}, {name: gpu, n: 2}]\n");
        merge(
            &mut base,
            doc("g: [{name: gpu, n: 5}, {name: extra, n: 1}]\n"),
        );
        let names: Vec<_> = (0..3)
            .map(|i| {
                base.lookup(&path!["g", i, "name"])
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["w", "gpu", "extra"]);
        assert_eq!(
            base.lookup(&path!["g", 1, "n"]).unwrap().as_str(),
            Some("5")
        );
    }

    #[test]
    fn expands_variables() {
        let lookup = |n: &str| (n == "REGION").then(|| "us-west-2".to_string());
        assert_eq!(expand("${REGION}a", &lookup).unwrap(), "us-west-2a");
        assert_eq!(expand("${ZONE:-b}", &lookup).unwrap(), "b");
        assert_eq!(expand("cost: $$5", &lookup).unwrap(), "cost: $5");
        assert!(
            expand("${MISSING}", &lookup)
                .unwrap_err()
                .contains("`MISSING` is not set")
        );
        assert!(expand("${OPEN", &lookup).is_err());
    }
}
