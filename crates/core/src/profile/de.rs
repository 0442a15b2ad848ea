//! Deserializes the typed model from the [`Node`] tree, collecting problems.
//!
//! Unlike a plain serde deserializer this one does not stop at the first
//! problem where it can avoid it: a scalar of the wrong type, an unknown key or
//! an unknown enum value is recorded with its span and a stand-in value is
//! given to serde so the rest of the document is still checked. Only a
//! problem that serde cannot continue past (a required key that is missing, a
//! value no variant of a shorthand form accepts) ends the walk, after being
//! recorded like the others.
//!
//! Unknown keys are found without `deny_unknown_fields`: serde asks for an
//! `IgnoredAny` value exactly when a key matches no field, and at that point
//! we still know the struct's field names, which gives "did you mean".

use super::node::{Key, Node, NodeKind, Path};
use crate::diagnostic::{Span, did_you_mean};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::cell::RefCell;
use std::fmt;

/// A problem found while deserializing, before it is resolved to a location.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub span: Span,
    pub path: Path,
    pub message: String,
    pub help: Option<String>,
}

#[derive(Default)]
pub(crate) struct Collector {
    problems: RefCell<Vec<Problem>>,
}

impl Collector {
    fn push(&self, span: Span, path: &Path, message: String, help: Option<String>) {
        self.problems.borrow_mut().push(Problem {
            span,
            path: path.clone(),
            message,
            help,
        });
    }

    pub fn into_problems(self) -> Vec<Problem> {
        self.problems.into_inner()
    }
}

/// serde's error type for this deserializer. `reported` errors are already
/// in the collector and only unwind.
#[derive(Debug)]
pub(crate) struct Error {
    message: String,
    reported: bool,
}

impl Error {
    fn reported() -> Self {
        Error {
            message: String::new(),
            reported: true,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            message: msg.to_string(),
            reported: false,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Error::custom(format!("missing required key `{field}`"))
    }
}

/// Deserializes `T` from `node`. Problems are in `collector`; the value is
/// returned whenever serde could finish, possibly holding stand-in values
/// where problems were recorded.
pub(crate) fn from_node<T: de::DeserializeOwned>(node: &Node, collector: &Collector) -> Option<T> {
    let de = NodeDe {
        node,
        path: Path::root(),
        col: collector,
        unknown_key: None,
    };
    match T::deserialize(de) {
        Ok(v) => Some(v),
        Err(e) => {
            if !e.reported {
                collector.push(node.span, &Path::root(), e.message, None);
            }
            None
        }
    }
}

#[derive(Clone, Copy)]
struct UnknownKey<'a> {
    key: &'a Key,
    fields: &'static [&'static str],
}

struct NodeDe<'a> {
    node: &'a Node,
    path: Path,
    col: &'a Collector,
    /// Set for values of a struct's keys: if serde ignores the value, the key
    /// was not one of `fields`.
    unknown_key: Option<UnknownKey<'a>>,
}

impl<'a> NodeDe<'a> {
    fn mismatch(&self, expected: &str) -> Error {
        self.col.push(
            self.node.span,
            &self.path,
            format!("expected {expected}, found {}", self.node.describe()),
            None,
        );
        Error::reported()
    }

    /// Records `expected` as a problem and lets serde continue with a
    /// stand-in value.
    fn record_mismatch(&self, expected: &str) {
        let _ = self.mismatch(expected);
    }

    /// Records an error that serde produced here, once.
    fn locate(&self, e: Error) -> Error {
        if !e.reported {
            self.col.push(self.node.span, &self.path, e.message, None);
        }
        Error::reported()
    }

    fn scalar(&self) -> Option<&'a super::node::Scalar> {
        match &self.node.kind {
            NodeKind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    fn integer<V: Visitor<'a>>(self, min: i128, max: i128, visitor: V) -> Result<V::Value, Error> {
        let n = self.scalar().and_then(|s| s.as_i64()).map(i128::from);
        match n {
            Some(n) if n >= min && n <= max => {
                if n < 0 {
                    visitor.visit_i64(n as i64)
                } else {
                    visitor.visit_u64(n as u64)
                }
            }
            _ => {
                let expected = if min == 0 {
                    format!("a whole number from 0 to {max}")
                } else {
                    format!("a whole number from {min} to {max}")
                };
                self.record_mismatch(&expected);
                if min <= 0 {
                    visitor.visit_u64(0)
                } else {
                    visitor.visit_i64(min as i64)
                }
            }
        }
    }
}

macro_rules! integer {
    ($method:ident, $ty:ty) => {
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
            self.integer(<$ty>::MIN as i128, <$ty>::MAX as i128, visitor)
        }
    };
}

impl<'a> de::Deserializer<'a> for NodeDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Map(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                pending: None,
                path: self.path.clone(),
                col: self.col,
                fields: None,
            }),
            NodeKind::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
                path: self.path.clone(),
                col: self.col,
            }),
            NodeKind::Scalar(s) if s.is_null() => visitor.visit_unit(),
            NodeKind::Scalar(s) => {
                if let Some(b) = s.as_bool() {
                    visitor.visit_bool(b)
                } else if let Some(i) = s.as_i64() {
                    visitor.visit_i64(i)
                } else if let Some(f) = s.as_f64() {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(&s.text)
                }
            }
        }
        .map_err(|e| self.locate(e))
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar().and_then(|s| s.as_bool()) {
            Some(b) => visitor.visit_bool(b),
            None => {
                self.record_mismatch("`true` or `false`");
                visitor.visit_bool(false)
            }
        }
    }

    integer!(deserialize_i8, i8);
    integer!(deserialize_i16, i16);
    integer!(deserialize_i32, i32);
    integer!(deserialize_i64, i64);
    integer!(deserialize_u8, u8);
    integer!(deserialize_u16, u16);
    integer!(deserialize_u32, u32);
    integer!(deserialize_u64, u64);

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar().and_then(|s| s.as_f64()) {
            Some(f) => visitor.visit_f64(f),
            None => {
                self.record_mismatch("a number");
                visitor.visit_f64(0.0)
            }
        }
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar() {
            Some(s) if !s.is_null() => visitor.visit_str(&s.text).map_err(|e| self.locate(e)),
            _ => {
                self.record_mismatch("a string");
                visitor.visit_str("").map_err(|_: Error| Error::reported())
            }
        }
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar() {
            Some(s) if s.is_null() => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Seq(items) => visitor
                .visit_seq(SeqDe {
                    items: items.iter().enumerate(),
                    path: self.path.clone(),
                    col: self.col,
                })
                .map_err(|e| self.locate(e)),
            NodeKind::Scalar(s) if s.is_null() => {
                // `key:` with nothing under it reads as an empty list.
                visitor
                    .visit_seq(SeqDe {
                        items: [].iter().enumerate(),
                        path: self.path.clone(),
                        col: self.col,
                    })
                    .map_err(|e| self.locate(e))
            }
            _ => {
                self.record_mismatch("a list");
                visitor
                    .visit_seq(SeqDe {
                        items: [].iter().enumerate(),
                        path: self.path.clone(),
                        col: self.col,
                    })
                    .map_err(|_| Error::reported())
            }
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.map_with_fields(None, visitor)
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.map_with_fields(Some(fields), visitor)
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let expected = || {
            let list: Vec<String> = variants.iter().map(|v| format!("`{v}`")).collect();
            list.join(", ")
        };
        let chosen = match self.scalar() {
            Some(s) if variants.contains(&s.text.as_str()) => s.text.as_str(),
            Some(s) if !s.is_null() => {
                let help = did_you_mean(&s.text, variants.iter().copied())
                    .map(|m| format!("did you mean `{m}`?"));
                self.col.push(
                    self.node.span,
                    &self.path,
                    format!("unknown value `{}`: expected one of {}", s.text, expected()),
                    help,
                );
                variants.first().copied().unwrap_or_default()
            }
            _ => {
                self.record_mismatch(&format!("one of {}", expected()));
                variants.first().copied().unwrap_or_default()
            }
        };
        let de: de::value::StrDeserializer<'_, Error> = chosen.into_deserializer();
        visitor.visit_enum(de).map_err(|e| self.locate(e))
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        if let Some(UnknownKey { key, fields }) = self.unknown_key {
            let help = match did_you_mean(&key.name, fields.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => {
                    let list: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
                    format!("expected one of {}", list.join(", "))
                }
            };
            self.col.push(
                key.span,
                &self.path,
                format!("unknown key `{}`", key.name),
                Some(help),
            );
        }
        visitor.visit_unit()
    }
}

impl<'a> NodeDe<'a> {
    fn map_with_fields<V: Visitor<'a>>(
        self,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Map(entries) => visitor
                .visit_map(MapDe {
                    entries: entries.iter(),
                    pending: None,
                    path: self.path.clone(),
                    col: self.col,
                    fields,
                })
                .map_err(|e| self.locate(e)),
            NodeKind::Scalar(s) if s.is_null() && fields.is_none() => visitor
                .visit_map(MapDe {
                    entries: [].iter(),
                    pending: None,
                    path: self.path.clone(),
                    col: self.col,
                    fields,
                })
                .map_err(|e| self.locate(e)),
            _ => {
                self.record_mismatch("a map");
                // Continue with an empty map; whatever serde then says about
                // missing keys would only repeat this problem.
                visitor
                    .visit_map(MapDe {
                        entries: [].iter(),
                        pending: None,
                        path: self.path.clone(),
                        col: self.col,
                        fields: None,
                    })
                    .map_err(|_| Error::reported())
            }
        }
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, (Key, Node)>,
    pending: Option<&'a (Key, Node)>,
    path: Path,
    col: &'a Collector,
    fields: Option<&'static [&'static str]>,
}

impl<'a> de::MapAccess<'a> for MapDe<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some(entry);
        let key = &entry.0;
        seed.deserialize(KeyDe(&key.name)).map(Some).map_err(|e| {
            if !e.reported {
                self.col.push(key.span, &self.path, e.message, None);
            }
            Error::reported()
        })
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((key, value)) = self.pending.take() else {
            return Err(<Error as de::Error>::custom(
                "value asked for before its key",
            ));
        };
        let de = NodeDe {
            node: value,
            path: self.path.child(key.name.as_str()),
            col: self.col,
            unknown_key: self.fields.map(|fields| UnknownKey { key, fields }),
        };
        let path = de.path.clone();
        seed.deserialize(de).map_err(|e| {
            if !e.reported {
                self.col.push(value.span, &path, e.message, None);
            }
            Error::reported()
        })
    }
}

struct SeqDe<'a, I: Iterator<Item = (usize, &'a Node)>> {
    items: I,
    path: Path,
    col: &'a Collector,
}

impl<'a, I: Iterator<Item = (usize, &'a Node)>> de::SeqAccess<'a> for SeqDe<'a, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        let path = self.path.child(i);
        let de = NodeDe {
            node,
            path: path.clone(),
            col: self.col,
            unknown_key: None,
        };
        seed.deserialize(de).map(Some).map_err(|e| {
            if !e.reported {
                self.col.push(node.span, &path, e.message, None);
            }
            Error::reported()
        })
    }
}

/// A map key: always a string.
struct KeyDe<'a>(&'a str);

impl<'de> de::Deserializer<'de> for KeyDe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.0)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::yaml;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        port: u16,
        #[serde(default)]
        mode: Option<Mode>,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        replicas: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Single,
        PerZone,
    }

    fn problems(text: &str) -> Vec<String> {
        let node = yaml::parse(text, 0).unwrap();
        let col = Collector::default();
        let _ = from_node::<Doc>(&node, &col);
        col.into_problems()
            .into_iter()
            .map(|p| {
                format!(
                    "{}:{} {} {}{}",
                    p.span.line,
                    p.span.col,
                    p.path,
                    p.message,
                    p.help.map(|h| format!(" ({h})")).unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn reports_every_problem_not_only_the_first() {
        let got = problems(
            "name: x\nport: 70000\nmode: per_zon\ninner:\n  replcias: 3\n  replicas: two\n",
        );
        assert_eq!(
            got,
            vec![
                "2:7 port expected a whole number from 0 to 65535, found `70000`",
                "3:7 mode unknown value `per_zon`: expected one of `single`, `per_zone` (did you mean `per_zone`?)",
                "5:3 inner.replcias unknown key `replcias` (did you mean `replicas`?)",
                "6:13 inner.replicas expected a whole number from 0 to 4294967295, found `two`",
            ]
        );
    }

    #[test]
    fn missing_key_points_at_its_map() {
        let got = problems("name: x\nport: 1\ninner: {}\n");
        assert_eq!(got, vec!["3:8 inner missing required key `replicas`"]);
    }

    #[test]
    fn wrong_shape_is_one_problem() {
        let got = problems("name: x\nport: 1\ninner: 3\n");
        assert_eq!(got, vec!["3:8 inner expected a map, found `3`"]);
    }
}
