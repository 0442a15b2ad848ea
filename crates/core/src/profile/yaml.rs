//! Reads YAML text into a [`Node`] tree with spans.
//!
//! Supports what profiles use: block and flow collections, every scalar style,
//! anchors and aliases, and merge keys (`<<: *base`). Duplicate keys are
//! errors (YAML forbids them; silently keeping one hides mistakes).

use super::node::{Key, Node, NodeKind, Scalar};
use crate::diagnostic::{FileId, Span};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML syntax or structure error at one place.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub message: String,
    pub span: Span,
}

enum Frame {
    Seq(Vec<Node>, Span, usize),
    /// Entries so far, a key waiting for its value, the map's span and
    /// anchor, and the keys that came from merge keys (which the map's own
    /// keys override).
    Map(Vec<(Key, Node)>, Option<Key>, Span, usize, Vec<String>),
}

/// Parses one YAML document. An empty document is an empty map.
pub fn parse(text: &str, file: FileId) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let span = |m: &Marker, len: usize| Span {
        file: Some(file),
        line: m.line() as u32,
        col: m.col() as u32 + 1,
        len: len as u32,
    };
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            message: e.info().to_string(),
            span: span(e.marker(), 1),
        })?;
        let completed = match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                if root.is_some() {
                    return Err(YamlError {
                        message: "a profile file holds one YAML document; found a second `---`"
                            .into(),
                        span: span(&mark, 3),
                    });
                }
                continue;
            }
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => continue,
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => node.clone(),
                None => {
                    return Err(YamlError {
                        message: "alias refers to an unknown anchor".into(),
                        span: span(&mark, 1),
                    });
                }
            },
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let len = if matches!(
                    style,
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted
                ) {
                    text.chars().count() + 2
                } else {
                    text.lines().next().map(|l| l.chars().count()).unwrap_or(0)
                };
                let node = Node {
                    kind: NodeKind::Scalar(Scalar { text, quoted }),
                    span: span(&mark, len),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq(Vec::new(), span(&mark, 1), anchor));
                continue;
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map(
                    Vec::new(),
                    None,
                    span(&mark, 1),
                    anchor,
                    Vec::new(),
                ));
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(items, sp, anchor)) => {
                    let node = Node {
                        kind: NodeKind::Seq(items),
                        span: sp,
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    node
                }
                _ => unreachable_structure(&mark, file)?,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(entries, _, sp, anchor, _)) => {
                    let node = Node {
                        kind: NodeKind::Map(entries),
                        span: sp,
                    };
                    if anchor > 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    node
                }
                _ => unreachable_structure(&mark, file)?,
            },
        };
        match stack.last_mut() {
            None => root = Some(completed),
            Some(Frame::Seq(items, ..)) => items.push(completed),
            Some(Frame::Map(entries, pending, _, _, merged)) => match pending.take() {
                None => match completed.kind {
                    NodeKind::Scalar(s) => {
                        *pending = Some(Key {
                            name: s.text,
                            span: completed.span,
                        })
                    }
                    _ => {
                        return Err(YamlError {
                            message: "map keys must be plain strings, not lists or maps".into(),
                            span: completed.span,
                        });
                    }
                },
                Some(key) if key.name == "<<" => merge_into(entries, merged, completed)?,
                Some(key) if merged.contains(&key.name) => {
                    merged.retain(|k| k != &key.name);
                    entries.retain(|(k, _)| k.name != key.name);
                    entries.push((key, completed));
                }
                Some(key) => {
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                        return Err(YamlError {
                            message: format!(
                                "duplicate key `{}` (first set at line {})",
                                key.name, first.span.line
                            ),
                            span: key.span,
                        });
                    }
                    entries.push((key, completed));
                }
            },
        }
    }
    Ok(root.unwrap_or_else(|| {
        Node::empty_map(Span {
            file: Some(file),
            line: 1,
            col: 1,
            len: 1,
        })
    }))
}

/// `<<: *base` or `<<: [*a, *b]`: keys of the merged maps that the map does
/// not set itself.
fn merge_into(
    entries: &mut Vec<(Key, Node)>,
    merged: &mut Vec<String>,
    source: Node,
) -> Result<(), YamlError> {
    let sources = match source.kind {
        NodeKind::Map(m) => vec![m],
        NodeKind::Seq(items) => {
            let mut maps = Vec::new();
            for item in items {
                match item.kind {
                    NodeKind::Map(m) => maps.push(m),
                    _ => {
                        return Err(YamlError {
                            message: "a merge key (`<<`) takes a map or a list of maps".into(),
                            span: item.span,
                        });
                    }
                }
            }
            maps
        }
        NodeKind::Scalar(_) => {
            return Err(YamlError {
                message: "a merge key (`<<`) takes a map or a list of maps".into(),
                span: source.span,
            });
        }
    };
    for map in sources {
        for (k, v) in map {
            if !entries.iter().any(|(e, _)| e.name == k.name) {
                merged.push(k.name.clone());
                entries.push((k, v));
            }
        }
    }
    Ok(())
}

fn unreachable_structure(mark: &Marker, file: FileId) -> Result<Node, YamlError> {
    Err(YamlError {
        message: "unbalanced YAML structure".into(),
        span: Span {
            file: Some(file),
            line: mark.line() as u32,
            col: mark.col() as u32 + 1,
            len: 1,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_of_values() {
        let node = parse("a:\n  b: \"x\"\n  c: [1, 2]\n", 0).unwrap();
        let b = node.get("a").unwrap().get("b").unwrap();
        assert_eq!((b.span.line, b.span.col, b.span.len), (2, 6, 3));
        assert_eq!(b.as_str(), Some("x"));
    }

    #[test]
    fn rejects_duplicate_keys() {
        let err = parse("a: 1\nb: 2\na: 3\n", 0).unwrap_err();
        assert_eq!(err.span.line, 3);
        assert!(err.message.contains("duplicate key `a`"));
    }

    #[test]
    fn resolves_aliases_and_merge_keys() {
        let node = parse("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n", 0).unwrap();
        let other = node.get("other").unwrap();
        assert_eq!(other.get("x").unwrap().as_str(), Some("1"));
        assert_eq!(other.get("y").unwrap().as_str(), Some("3"));
    }

    #[test]
    fn empty_document_is_an_empty_map() {
        assert_eq!(parse("", 0).unwrap().as_map().map(Vec::len), Some(0));
    }
}
