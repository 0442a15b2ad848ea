//! Whole-profile checks on the typed model.
//!
//! Each check reports through [`Report`] with the path of the offending
//! value; the report resolves paths to spans in the merged document, so
//! problems point at the file and line that set the value.

mod compute;
mod ignored;
mod names;

/// Whether a text names an image registry (`HOST[:PORT][/PATH]`), for
/// `deploy --push REGISTRY`.
pub use names::registry as check_registry;
mod network;
mod procedures;
mod workloads;

use super::model::{API_VERSION, Profile, StateBackend, TargetKind};
use super::node::{Node, Path};
use super::value::{Checked, Syntax};
use super::{Problem, Severity};
use crate::path;

pub(crate) struct Report<'a> {
    doc: &'a Node,
    problems: Vec<Problem>,
}

impl<'a> Report<'a> {
    fn push(&mut self, severity: Severity, path: Path, message: String, help: Option<String>) {
        let span = self.doc.span_of(&path);
        self.problems.push(Problem {
            severity,
            span,
            path,
            message,
            help,
            redact: false,
        });
    }

    pub fn error(&mut self, path: Path, message: impl Into<String>) {
        self.push(Severity::Error, path, message.into(), None);
    }

    pub fn error_help(&mut self, path: Path, message: impl Into<String>, help: impl Into<String>) {
        self.push(Severity::Error, path, message.into(), Some(help.into()));
    }

    pub fn warning(&mut self, path: Path, message: impl Into<String>, help: Option<String>) {
        self.push(Severity::Warning, path, message.into(), help);
    }

    pub fn note(&mut self, path: Path, message: impl Into<String>) {
        self.push(Severity::Note, path, message.into(), None);
    }

    /// Reports a problem about a secret: the source line is masked.
    pub fn secret_error(
        &mut self,
        path: Path,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(Severity::Error, path, message.into(), Some(help.into()));
        if let Some(p) = self.problems.last_mut() {
            p.redact = true;
        }
    }

    /// Reports a malformed checked value; returns the parsed one.
    pub fn check<'v, T: Syntax>(&mut self, value: &'v Checked<T>, path: Path) -> Option<&'v T> {
        if let Some(message) = value.error() {
            if T::ECHO {
                self.error(path, message);
            } else {
                self.secret_error(
                    path,
                    message,
                    "store the value in Vault and write `vault:PATH#KEY`, or pass it in the environment and write `env:NAME`",
                );
            }
        }
        value.get()
    }
}

/// Checks the whole profile.
pub(crate) fn validate(profile: &Profile, doc: &Node) -> Vec<Problem> {
    let mut r = Report {
        doc,
        problems: Vec::new(),
    };
    if profile.api_version != API_VERSION {
        r.error_help(
            path!["apiVersion"],
            format!("unsupported apiVersion `{}`", profile.api_version),
            format!("this taskctl reads `{API_VERSION}`"),
        );
    }
    check_name(&mut r, &profile.metadata.name);
    check_target(&mut r, profile);
    check_state(&mut r, profile);
    network::check(&mut r, profile);
    compute::check(&mut r, profile);
    workloads::check(&mut r, profile);
    procedures::check(&mut r, profile);
    ignored::check(&mut r, profile);
    r.problems
}

/// The name goes into AWS and Kubernetes resource names: a DNS label short
/// enough to leave room for suffixes.
fn check_name(r: &mut Report, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        r.error(
            path!["metadata", "name"],
            format!("invalid name `{name}`: expected 1 to 40 lowercase letters, digits and `-`, not starting or ending with `-`"),
        );
    }
}

/// `target.aws.api_server`: an https URL, or http on loopback only (the
/// bearer token would otherwise cross a network in the clear).
fn check_api_server(address: &str) -> Result<(), String> {
    let url = url::Url::parse(address)
        .map_err(|e| format!("expected a URL such as `https://127.0.0.1:8443` ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => return Err("expected a host".into()),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(
            "plain `http` is accepted on loopback only; the cluster's token would cross the network in the clear"
                .into(),
        ),
        other => Err(format!("expected `https://` (or `http://` on loopback), not `{other}://`")),
    }
}

fn check_target(r: &mut Report, p: &Profile) {
    match p.target.kind {
        TargetKind::Aws => {
            match &p.target.aws {
                None => r.error_help(
                    path!["target"],
                    "the `aws` target needs `target.aws.region`",
                    "add `aws: {region: us-west-2}` under `target`",
                ),
                Some(aws) => {
                    if let Some(address) = &aws.api_server
                        && let Err(why) = check_api_server(address)
                    {
                        r.error(
                            path!["target", "aws", "api_server"],
                            format!("invalid `api_server` `{address}`: {why}"),
                        );
                    }
                }
            }
            if p.network.is_none() {
                r.error(
                    path!["network"],
                    "the `aws` target needs a `network` section (VPC and subnets)",
                );
            }
            if p.compute.is_none() {
                r.error(path!["compute"], "the `aws` target needs a `compute` section (Kubernetes version and node groups)");
            }
        }
        TargetKind::Kubernetes => {
            if p.network.is_some() {
                r.note(path!["network"], "the `kubernetes` target uses an existing cluster: `network` is not provisioned");
            }
        }
        TargetKind::Docker => {
            if let Some(docker) = &p.target.docker {
                if let Some(auth) = &docker.registry_auth {
                    let at = path!["target", "docker", "registry_auth"];
                    r.check(&auth.username, at.child("username"));
                    r.check(&auth.password, at.child("password"));
                    if docker.registry.is_none() && docker.push.is_none() {
                        r.warning(
                            at,
                            "`registry_auth` is ignored: neither `registry` nor `push` names a registry",
                            Some("name the registry it logs in to in `registry` or `push`".into()),
                        );
                    }
                }
                for (field, value) in [("registry", &docker.registry), ("push", &docker.push)] {
                    if let Some(value) = value
                        && let Err(e) = names::registry(value)
                    {
                        r.error(path!["target", "docker", field], e);
                    }
                }
            }
        }
    }
}

/// The S3 backend needs a bucket, named as S3 allows.
fn check_state(r: &mut Report, p: &Profile) {
    match (&p.state.backend, &p.state.s3) {
        (StateBackend::S3, None) => r.error_help(
            path!["state", "backend"],
            "the `s3` state backend needs `state.s3.bucket`",
            "add `s3: {bucket: NAME, prefix: taskctl}` under `state`",
        ),
        (StateBackend::S3, Some(s3)) => {
            if !is_bucket_name(&s3.bucket) {
                r.error(
                    path!["state", "s3", "bucket"],
                    format!("invalid bucket name `{}`: expected 3 to 63 lowercase letters, digits, `.` and `-`, starting and ending with a letter or digit", s3.bucket),
                );
            }
            if s3.prefix.split('/').any(|part| part == "." || part == "..") {
                r.error(
                    path!["state", "s3", "prefix"],
                    format!(
                        "invalid prefix `{}`: `.` and `..` are not folders in S3",
                        s3.prefix
                    ),
                );
            }
        }
        (StateBackend::Local, Some(_)) => r.note(
            path!["state", "s3"],
            "`state.s3` is used only with `backend: s3`; the state stays in the local directory",
        ),
        (StateBackend::Local, None) => {}
    }
}

fn is_bucket_name(name: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && !name.contains("..")
}
