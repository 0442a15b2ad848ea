//! Reading variables and `_FILE` secrets, collecting every problem.

use std::{
    fmt,
    io::{self, Read as _},
    path::Path,
    str::FromStr,
    time::Duration,
};

/// Variables that carry credentials, each with its `_FILE` variant: the
/// path of a file whose content (trailing newlines removed) is the value.
/// Setting both is an error; other variables have no `_FILE` variant.
pub const SECRET_VARIABLES: [(&str, &str); 4] = [
    ("BROKER_URL", "BROKER_URL_FILE"),
    ("BROKER_USERNAME", "BROKER_USERNAME_FILE"),
    ("BROKER_PASSWORD", "BROKER_PASSWORD_FILE"),
    // Public keys are not secret, but taskctl delivers them the same way
    // (a file from Vault), and a file is how a key set is rotated in place.
    ("TASK_SIGNING_PUBLIC_KEYS", "TASK_SIGNING_PUBLIC_KEYS_FILE"),
];

/// Largest secret file read; a secret is small, and a path to something
/// endless (`/dev/zero`) must not hang the start-up.
pub(super) const SECRET_FILE_LIMIT: u64 = 64 * 1024;

/// Reads a secret file from the filesystem, at most [`SECRET_FILE_LIMIT`]
/// bytes of UTF-8. Errors never contain the content.
pub fn read_secret_file(path: &Path) -> io::Result<String> {
    let mut content = String::new();
    std::fs::File::open(path)?
        .take(SECRET_FILE_LIMIT + 1)
        .read_to_string(&mut content)?;
    if content.len() as u64 > SECRET_FILE_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {SECRET_FILE_LIMIT} bytes"),
        ));
    }
    Ok(content)
}

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub variable: &'static str,
    pub expected: String,
}

/// Every problem found in the environment.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", render(.0))]
pub struct ConfigError(pub Vec<Problem>);

pub(super) fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.variable, p.expected))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects problems while reading variables, so all are reported at once.
pub(super) struct Reader<'a> {
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
    pub(super) read_file: &'a dyn Fn(&Path) -> io::Result<String>,
    pub(super) problems: Vec<Problem>,
}

/// A secret variable as read: unset, its value, or a problem already reported.
pub(super) enum Secret {
    Unset,
    Value(String),
    Invalid,
}

impl Secret {
    pub(super) fn value(&self) -> Option<&str> {
        match self {
            Secret::Value(v) => Some(v),
            Secret::Unset | Secret::Invalid => None,
        }
    }
}

impl Reader<'_> {
    /// The variable's value; an empty or blank one counts as unset.
    pub(super) fn env(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// A variable without a `_FILE` variant; `<name>_FILE` is refused rather
    /// than silently ignored.
    pub(super) fn raw(&mut self, name: &'static str) -> Option<String> {
        if self.env(&format!("{name}_FILE")).is_some() {
            let secrets: Vec<_> = SECRET_VARIABLES.iter().map(|(n, _)| *n).collect();
            self.problem(
                name,
                format!(
                    "expected {name} itself: {name}_FILE is set, but only {} can be read from a file",
                    secrets.join(", ")
                ),
            );
        }
        self.env(name)
    }

    /// A secret variable, from `name` or from the file `file_var` names.
    pub(super) fn secret(&mut self, name: &'static str) -> Secret {
        let file_var = SECRET_VARIABLES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .expect("a secret variable");
        match (self.env(name), self.env(file_var)) {
            (None, None) => Secret::Unset,
            (Some(value), None) => Secret::Value(value),
            (Some(_), Some(_)) => {
                self.problem(
                    name,
                    format!("expected either {name} or {file_var}, not both"),
                );
                Secret::Invalid
            }
            (None, Some(path)) => {
                match (self.read_file)(Path::new(&path)) {
                    Ok(content) => {
                        let value = content.trim_end_matches(['\n', '\r']);
                        if value.trim().is_empty() {
                            self.problem(
                                file_var,
                                format!("expected a file holding {name}, but `{path}` is empty"),
                            );
                            Secret::Invalid
                        } else {
                            Secret::Value(value.to_owned())
                        }
                    }
                    Err(error) => {
                        self.problem(
                        file_var,
                        format!("expected a readable file holding {name}, cannot read `{path}`: {error}"),
                    );
                        Secret::Invalid
                    }
                }
            }
        }
    }

    pub(super) fn problem(&mut self, variable: &'static str, expected: impl Into<String>) {
        self.problems.push(Problem {
            variable,
            expected: expected.into(),
        });
    }

    pub(super) fn string(&mut self, name: &'static str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    /// A number in `min..=max`, or the default when unset.
    pub(super) fn number<T>(
        &mut self,
        name: &'static str,
        default: T,
        min: T,
        max: T,
        unit: &str,
    ) -> T
    where
        T: FromStr + PartialOrd + Copy + fmt::Display,
    {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        match raw.trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            _ => {
                self.problem(
                    name,
                    format!("expected an integer {unit}from {min} to {max}, got `{raw}`"),
                );
                default
            }
        }
    }

    pub(super) fn millis(
        &mut self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Duration {
        Duration::from_millis(self.number(name, default, min, max, "of milliseconds "))
    }
}
