//! Differences between a desired spec and an observed state.
//!
//! Each resource module has a pure `diff(spec, state) -> Vec<FieldDiff>`;
//! the engine prints them (`update: scaling.desired 5 → 7`) and decides
//! between update and replacement from [`FieldDiff::replace`]. The run tag
//! never appears: it changes every run and is not part of a resource's shape.

use std::collections::BTreeMap;
use std::fmt;

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// Dotted path, e.g. `scaling.desired`, `tags.Name`, `ingress`.
    pub field: String,
    /// Observed value (`-` when absent).
    pub from: String,
    /// Desired value (`-` when it should be absent).
    pub to: String,
    /// AWS cannot change this in place: the resource must be replaced.
    pub replace: bool,
}

impl FieldDiff {
    pub fn update(field: impl Into<String>, from: impl ToString, to: impl ToString) -> Self {
        FieldDiff {
            field: field.into(),
            from: from.to_string(),
            to: to.to_string(),
            replace: false,
        }
    }

    pub fn replace(field: impl Into<String>, from: impl ToString, to: impl ToString) -> Self {
        FieldDiff {
            replace: true,
            ..FieldDiff::update(field, from, to)
        }
    }
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} → {}", self.field, self.from, self.to)?;
        if self.replace {
            f.write_str(" (forces replacement)")?;
        }
        Ok(())
    }
}

/// Whether any difference forces a replacement.
pub fn needs_replacement(diffs: &[FieldDiff]) -> bool {
    diffs.iter().any(|d| d.replace)
}

/// Pushes an in-place diff when the values differ.
pub(crate) fn field<T: PartialEq + fmt::Display>(
    out: &mut Vec<FieldDiff>,
    name: &str,
    from: &T,
    to: &T,
) {
    if from != to {
        out.push(FieldDiff::update(name, from, to));
    }
}

/// Pushes a replacing diff when the values differ.
pub(crate) fn immutable<T: PartialEq + fmt::Display>(
    out: &mut Vec<FieldDiff>,
    name: &str,
    from: &T,
    to: &T,
) {
    if from != to {
        out.push(FieldDiff::replace(name, from, to));
    }
}

/// `tags.<key>` diffs for desired tags that are missing or different.
/// Extra observed tags are left alone: AWS and other tools add their own.
pub(crate) fn tags(
    out: &mut Vec<FieldDiff>,
    desired: &BTreeMap<String, String>,
    observed: &BTreeMap<String, String>,
) {
    for (key, value) in desired {
        let have = observed.get(key);
        if have != Some(value) {
            out.push(FieldDiff::update(
                format!("tags.{key}"),
                have.map(String::as_str).unwrap_or("-"),
                value,
            ));
        }
    }
}

/// Renders a set for display: `{a, b}`.
pub(crate) fn set<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{{}}}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_arrow_and_replacement() {
        assert_eq!(
            FieldDiff::update("scaling.desired", 5, 7).to_string(),
            "scaling.desired 5 → 7"
        );
        assert_eq!(
            FieldDiff::replace("cidr", "10.0.0.0/16", "10.1.0.0/16").to_string(),
            "cidr 10.0.0.0/16 → 10.1.0.0/16 (forces replacement)"
        );
    }

    #[test]
    fn tag_diff_ignores_extra_observed_tags() {
        let desired = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let observed = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("aws:x".to_string(), "y".to_string()),
        ]);
        let mut out = Vec::new();
        tags(&mut out, &desired, &observed);
        assert!(out.is_empty());
        tags(&mut out, &desired, &BTreeMap::new());
        assert_eq!(out, [FieldDiff::update("tags.a", "-", "1")]);
    }
}
