//! The profile document as a tree that remembers where every value came from.
//!
//! Layers are merged and overlays applied on this tree, before any typing, so
//! that a value keeps the span of the file that last set it.

use crate::diagnostic::Span;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar as written. Its type (null, bool, number, string) is decided
    /// by what the model expects there, as YAML's core schema would for plain
    /// scalars; quoted scalars are always strings.
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub quoted: bool,
}

impl Scalar {
    pub fn is_null(&self) -> bool {
        !self.quoted && matches!(self.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }

    pub fn as_bool(&self) -> Option<bool> {
        if self.quoted {
            return None;
        }
        match self.text.as_str() {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        if self.quoted {
            return None;
        }
        let t = self.text.as_str();
        if let Some(hex) = t.strip_prefix("0x") {
            return i64::from_str_radix(hex, 16).ok();
        }
        if let Some(oct) = t.strip_prefix("0o") {
            return i64::from_str_radix(oct, 8).ok();
        }
        t.parse().ok()
    }

    pub fn as_f64(&self) -> Option<f64> {
        if self.quoted {
            return None;
        }
        match self.text.as_str() {
            ".inf" | ".Inf" | ".INF" | "+.inf" => Some(f64::INFINITY),
            "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
            t if t.chars().any(|c| c.is_ascii_digit()) => t.parse().ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}

impl From<String> for Seg {
    fn from(s: String) -> Self {
        Seg::Key(s)
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// A path into the document, printed as `network.subnets.public[0].cidr`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(pub Vec<Seg>);

impl Path {
    pub fn root() -> Self {
        Path(Vec::new())
    }

    pub fn child(&self, seg: impl Into<Seg>) -> Path {
        let mut segs = self.0.clone();
        segs.push(seg.into());
        Path(segs)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Builds a [`Path`] from keys and indexes: `path!["network", "subnets", i]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {
        $crate::profile::Path(vec![$($crate::profile::Seg::from($seg)),*])
    };
}

impl Node {
    pub fn synthetic(kind: NodeKind) -> Node {
        Node {
            kind,
            span: Span::SYNTHETIC,
        }
    }

    pub fn string(text: impl Into<String>, span: Span) -> Node {
        Node {
            kind: NodeKind::Scalar(Scalar {
                text: text.into(),
                quoted: true,
            }),
            span,
        }
    }

    pub fn empty_map(span: Span) -> Node {
        Node {
            kind: NodeKind::Map(Vec::new()),
            span,
        }
    }

    pub fn as_map(&self) -> Option<&Vec<(Key, Node)>> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            NodeKind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_scalar().map(|s| s.text.as_str())
    }

    /// The value under `key` of a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.kind {
            NodeKind::Map(m) => m.iter_mut().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` in a map node, replacing any value it had.
    pub fn set(&mut self, key: Key, value: Node) {
        if let NodeKind::Map(m) = &mut self.kind {
            match m.iter_mut().find(|(k, _)| k.name == key.name) {
                Some(slot) => slot.1 = value,
                None => m.push((key, value)),
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Node> {
        match &mut self.kind {
            NodeKind::Map(m) => {
                let i = m.iter().position(|(k, _)| k.name == key)?;
                Some(m.remove(i).1)
            }
            _ => None,
        }
    }

    /// Follows a path; `None` where it leaves the document.
    pub fn lookup(&self, path: &Path) -> Option<&Node> {
        let mut node = self;
        for seg in &path.0 {
            node = match (seg, &node.kind) {
                (Seg::Key(k), NodeKind::Map(_)) => node.get(k)?,
                (Seg::Index(i), NodeKind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The span of the deepest node on `path` that exists, so a diagnostic
    /// about a missing key points at the map that should hold it. A map or
    /// list is pointed at by the key that holds it, which reads better than
    /// its first entry.
    pub fn span_of(&self, path: &Path) -> Span {
        let mut node = self;
        let mut key_span = None;
        for seg in &path.0 {
            let next = match (seg, &node.kind) {
                (Seg::Key(k), NodeKind::Map(entries)) => entries
                    .iter()
                    .find(|(key, _)| &key.name == k)
                    .map(|(key, v)| (Some(key.span), v)),
                (Seg::Index(i), NodeKind::Seq(items)) => items.get(*i).map(|v| (None, v)),
                _ => None,
            };
            match next {
                Some((k, n)) => {
                    key_span = k;
                    node = n;
                }
                None => break,
            }
        }
        match (&node.kind, key_span) {
            (NodeKind::Map(_) | NodeKind::Seq(_), Some(k)) => k,
            _ => node.span,
        }
    }

    /// A short human description of the node's type, for "found …" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Map(_) => "a map".into(),
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Scalar(s) if s.is_null() => "nothing (null)".into(),
            NodeKind::Scalar(s) => format!("`{}`", s.text),
        }
    }
}
