//! Agent configuration, read from the environment and validated once at
//! start-up, before any port is bound.
//!
//! Credentials follow the `_FILE` convention of official container images:
//! each variable of [`SECRET_VARIABLES`] may instead be given as `<NAME>_FILE`,
//! the path of a file holding the value (taskctl mounts secrets as files in
//! `/run/secrets`, never as variables). `BROKER_USERNAME` and
//! `BROKER_PASSWORD` are put into the userinfo of `BROKER_URL`.
//!
//! [`Config::from_sources`] is a pure function over a variable lookup and a
//! file reader so every rule can be unit-tested without touching the process
//! environment or the filesystem. Every problem is reported, each naming the
//! variable and what was expected (never a secret value); the binary exits 64
//! when there is any.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    fmt::Write as _,
    io::{self, Read as _},
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use taskctl_protocol as protocol;

use crate::tls::{self, BrokerTls, ClientIdentity, TlsSetupError};

/// Validated configuration of one agent process.
#[derive(Debug, Clone)]
pub struct Config {
    pub broker_url: BrokerUrl,
    /// TLS with a private CA and/or a client certificate; `None` when none
    /// of `BROKER_CA_FILE`, `BROKER_CLIENT_CERT_FILE`, `BROKER_CLIENT_KEY_FILE`
    /// is set (then `amqps://` trusts the public web roots).
    pub broker_tls: Option<BrokerTls>,
    pub log_level: String,
    pub max_concurrent_tasks: u16,
    pub execution_timeout: Duration,
    pub bind_address: IpAddr,
    pub health_port: u16,
    pub metrics_port: u16,
    pub task_queue: String,
    pub gpu_task_queue: String,
    pub result_queue: String,
    pub dead_letter_queue: String,
    pub grace_period: Duration,
    pub max_attempts: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    pub http_allowed_hosts: BTreeSet<String>,
    pub limits: CommandLimits,
    pub output_limit: usize,
    pub dedup_capacity: usize,
    pub gpu_device_dir: PathBuf,
    pub agent_id: String,
    pub admission: Admission,
}

/// Which messages may run at all: checked before anything executes.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Public keys tasks must be signed with; empty only when
    /// `allow_unsigned` is set.
    pub keys: protocol::signing::Verifier,
    /// `ALLOW_UNSIGNED_TASKS=true`: run unsigned tasks (signed ones are still
    /// verified). For a bench or a test bed, never production.
    pub allow_unsigned: bool,
    /// Longest `expires_at_ms - created_at_ms` accepted: bounds how long a
    /// task id must be remembered to refuse its replay.
    pub max_ttl: Duration,
    /// Largest message body accepted, in bytes.
    pub max_message_bytes: usize,
    /// Task kinds this agent runs (`ENABLED_KINDS`).
    pub enabled_kinds: BTreeSet<String>,
    /// Programs `command` tasks may run, by absolute path, each optionally
    /// pinned to the SHA-256 of the file (`COMMAND_ALLOWED`).
    pub commands: BTreeMap<PathBuf, Option<[u8; 32]>>,
}

/// Every kind the wire protocol knows.
pub const KINDS: [&str; 4] = ["command", "http", "noop", "echo"];

/// Resource limits applied to every `command` task (setrlimit in the child).
#[derive(Debug, Clone)]
pub struct CommandLimits {
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub open_files: u64,
    /// RLIMIT_NPROC: processes (and threads) of the task's user.
    pub processes: u64,
    /// RLIMIT_FSIZE: the largest file the task may write.
    pub file_bytes: u64,
    /// uid and gid tasks run as; `None` keeps the agent's (then the agent
    /// makes itself non-dumpable so tasks cannot read its memory or
    /// `/proc/<pid>/environ`).
    pub user: Option<(u32, u32)>,
    /// Where each task gets its private working directory.
    pub work_root: PathBuf,
    /// Directories tasks may write beside their own (Landlock).
    pub writable: Vec<PathBuf>,
}

/// The broker URL; its `Debug`/`Display` hide the password because the URL
/// usually carries credentials and ends up in logs otherwise.
#[derive(Clone)]
pub struct BrokerUrl(String);

impl BrokerUrl {
    /// The full URL, credentials included; pass it to the client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn redacted(&self) -> String {
        // amqp://user:pass@host -> amqp://user:***@host
        match split_url(&self.0) {
            Some(UrlParts {
                prefix,
                userinfo: Some(userinfo),
                rest,
            }) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{prefix}{user}:***@{rest}")
            }
            _ => self.0.clone(),
        }
    }
}

/// `scheme://[userinfo@]host…` cut around the userinfo.
struct UrlParts<'a> {
    /// `scheme://`
    prefix: &'a str,
    /// Between `://` and the last `@` of the authority, still percent-encoded.
    userinfo: Option<&'a str>,
    /// From the host on.
    rest: &'a str,
}

fn split_url(url: &str) -> Option<UrlParts<'_>> {
    let scheme_end = url.find("://")? + 3;
    let (prefix, after) = url.split_at(scheme_end);
    // The authority ends at the path, query or fragment; userinfo cannot
    // contain those characters unencoded, so its last `@` ends the userinfo.
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some(match after[..authority_end].rfind('@') {
        Some(at) => UrlParts {
            prefix,
            userinfo: Some(&after[..at]),
            rest: &after[at + 1..],
        },
        None => UrlParts {
            prefix,
            userinfo: None,
            rest: after,
        },
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any
/// user name or password is safe in the userinfo of a URL.
fn encode_userinfo(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `url` with `username` and `password` (plain text, encoded here) replacing
/// the matching part of its userinfo; a part not given keeps the URL's.
/// A password needs a user name, from `BROKER_USERNAME` or the URL.
fn with_credentials(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<String, String> {
    if username.is_none() && password.is_none() {
        return Ok(url.to_owned());
    }
    let Some(parts) = split_url(url) else {
        return Ok(url.to_owned());
    };
    let (url_user, url_password) = match parts.userinfo {
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (info, None),
        },
        None => ("", None),
    };
    let user = username.map_or_else(|| url_user.to_owned(), encode_userinfo);
    if user.is_empty() && password.is_some() {
        return Err(
            "expected a user name to go with the password: set BROKER_USERNAME \
             (or BROKER_USERNAME_FILE) or put the user in BROKER_URL, \
             e.g. amqp://user@rabbitmq:5672/%2f"
                .to_owned(),
        );
    }
    let password = password.map_or_else(
        || url_password.map(str::to_owned),
        |p| Some(encode_userinfo(p)),
    );
    let mut out = format!("{}{user}", parts.prefix);
    if let Some(password) = password {
        out.push(':');
        out.push_str(&password);
    }
    out.push('@');
    out.push_str(parts.rest);
    Ok(out)
}

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
const SECRET_FILE_LIMIT: u64 = 64 * 1024;

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

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
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

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.variable, p.expected))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects problems while reading variables, so all are reported at once.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    read_file: &'a dyn Fn(&Path) -> io::Result<String>,
    problems: Vec<Problem>,
}

/// A secret variable as read: unset, its value, or a problem already reported.
enum Secret {
    Unset,
    Value(String),
    Invalid,
}

impl Secret {
    fn value(&self) -> Option<&str> {
        match self {
            Secret::Value(v) => Some(v),
            Secret::Unset | Secret::Invalid => None,
        }
    }
}

impl Reader<'_> {
    /// The variable's value; an empty or blank one counts as unset.
    fn env(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// A variable without a `_FILE` variant; `<name>_FILE` is refused rather
    /// than silently ignored.
    fn raw(&mut self, name: &'static str) -> Option<String> {
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
    fn secret(&mut self, name: &'static str) -> Secret {
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

    fn problem(&mut self, variable: &'static str, expected: impl Into<String>) {
        self.problems.push(Problem {
            variable,
            expected: expected.into(),
        });
    }

    fn string(&mut self, name: &'static str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    /// A number in `min..=max`, or the default when unset.
    fn number<T>(&mut self, name: &'static str, default: T, min: T, max: T, unit: &str) -> T
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

    fn millis(&mut self, name: &'static str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.number(name, default, min, max, "of milliseconds "))
    }
}

// ---------------------------------------------------------------- broker TLS
//
// BROKER_CA_FILE, BROKER_CLIENT_CERT_FILE and BROKER_CLIENT_KEY_FILE are
// paths, not secrets (so they have no `_FILE` form of their own); the files
// are read and parsed here, at start-up, so a wrong path or a file that is not
// PEM stops the agent before it binds a port rather than at its first
// connection. The key file's content is secret: no problem quotes any file
// content (see `tls`).

/// The broker TLS variables, each the path of a PEM file.
pub const TLS_VARIABLES: [&str; 3] = [
    "BROKER_CA_FILE",
    "BROKER_CLIENT_CERT_FILE",
    "BROKER_CLIENT_KEY_FILE",
];

impl Reader<'_> {
    /// Reads the PEM file at `path` (the value of `name`) and parses it with
    /// `parse`; a problem naming the variable and the path otherwise.
    fn pem_file<T>(
        &mut self,
        name: &'static str,
        path: &str,
        what: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let content = match (self.read_file)(Path::new(path)) {
            Ok(content) => content,
            Err(error) => {
                self.problem(
                    name,
                    format!(
                        "expected a readable PEM file of {what}, cannot read `{path}`: {error}"
                    ),
                );
                return None;
            }
        };
        match parse(&content) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                self.problem(
                    name,
                    format!("expected a PEM file of {what}, but `{path}` is not one: {reason}"),
                );
                None
            }
        }
    }

    /// The TLS set-up the three variables ask for, `None` when none is set
    /// or when there is a problem (reported).
    fn broker_tls(&mut self, broker_url: &str) -> Option<BrokerTls> {
        let [ca_path, cert_path, key_path] = TLS_VARIABLES.map(|name| self.env(name));
        if ca_path.is_none() && cert_path.is_none() && key_path.is_none() {
            return None;
        }
        let mut valid = true;

        // Only an amqps:// URL uses TLS; with amqp:// these would be ignored
        // and the connection silently unencrypted.
        if broker_url.starts_with("amqp://") {
            for (name, path) in TLS_VARIABLES.iter().zip([&ca_path, &cert_path, &key_path]) {
                if path.is_some() {
                    self.problem(
                        name,
                        format!(
                            "expected an amqps:// BROKER_URL when {name} is set; \
                             an amqp:// URL does not use TLS"
                        ),
                    );
                }
            }
            valid = false;
        }

        // A client certificate needs its key and a key its certificate.
        match (&cert_path, &key_path) {
            (Some(_), None) => {
                self.problem(
                    "BROKER_CLIENT_KEY_FILE",
                    "expected the client certificate's private key too: \
                     BROKER_CLIENT_CERT_FILE is set, and mutual TLS needs both or neither",
                );
                valid = false;
            }
            (None, Some(_)) => {
                self.problem(
                    "BROKER_CLIENT_CERT_FILE",
                    "expected the client certificate too: \
                     BROKER_CLIENT_KEY_FILE is set, and mutual TLS needs both or neither",
                );
                valid = false;
            }
            _ => {}
        }

        let roots = match &ca_path {
            Some(path) => {
                let roots =
                    self.pem_file("BROKER_CA_FILE", path, "CA certificates", tls::parse_roots);
                valid &= roots.is_some();
                roots.map(|roots| (PathBuf::from(path), roots))
            }
            None => None,
        };
        let chain = cert_path.as_deref().and_then(|path| {
            self.pem_file(
                "BROKER_CLIENT_CERT_FILE",
                path,
                "the client certificate (and its intermediates)",
                tls::parse_certificates,
            )
        });
        let key = key_path.as_deref().and_then(|path| {
            self.pem_file(
                "BROKER_CLIENT_KEY_FILE",
                path,
                "the client certificate's private key",
                tls::parse_private_key,
            )
        });
        valid &= chain.is_some() == cert_path.is_some() && key.is_some() == key_path.is_some();
        if !valid {
            return None;
        }

        let identity = match (chain, key, &cert_path) {
            (Some(chain), Some(key), Some(path)) => {
                Some((PathBuf::from(path), ClientIdentity::new(chain, key)))
            }
            _ => None,
        };
        match BrokerTls::new(roots, identity) {
            Ok(tls) => Some(tls),
            Err(TlsSetupError::ClientKey(reason)) => {
                self.problem(
                    "BROKER_CLIENT_KEY_FILE",
                    format!(
                        "expected the private key of the certificate in BROKER_CLIENT_CERT_FILE \
                         (`{}`), but `{}` is not usable with it: {reason}",
                        cert_path.unwrap_or_default(),
                        key_path.unwrap_or_default()
                    ),
                );
                None
            }
            Err(TlsSetupError::Other(reason)) => {
                let name = if ca_path.is_some() {
                    "BROKER_CA_FILE"
                } else {
                    "BROKER_CLIENT_CERT_FILE"
                };
                self.problem(name, format!("expected a usable TLS set-up: {reason}"));
                None
            }
        }
    }
}

impl Config {
    /// Reads the configuration from the process environment; `_FILE`
    /// variables are read from the filesystem.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable name to its
    /// value); `_FILE` variables are read from the filesystem.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_sources(lookup, &read_secret_file)
    }

    /// Reads the configuration through `lookup` (a variable name to its value)
    /// and `read_file` (the path in a `_FILE` variable to the file's content).
    pub fn from_sources(
        lookup: &dyn Fn(&str) -> Option<String>,
        read_file: &dyn Fn(&Path) -> io::Result<String>,
    ) -> Result<Self, ConfigError> {
        let mut r = Reader {
            lookup,
            read_file,
            problems: Vec::new(),
        };

        let url = r.secret("BROKER_URL");
        let username = r.secret("BROKER_USERNAME");
        let password = r.secret("BROKER_PASSWORD");
        let broker_url = match url {
            Secret::Value(url) if url.starts_with("amqp://") || url.starts_with("amqps://") => {
                match with_credentials(&url, username.value(), password.value()) {
                    Ok(url) => url,
                    Err(expected) => {
                        r.problem("BROKER_PASSWORD", expected);
                        String::new()
                    }
                }
            }
            Secret::Value(url) => {
                // Echo only what is recognisably a URL (its password hidden):
                // anything else may be a secret put in the wrong place.
                let got = if url.contains("://") {
                    format!("got `{}`", BrokerUrl(url).redacted())
                } else {
                    "got a value that is not a URL (not shown)".to_owned()
                };
                r.problem(
                    "BROKER_URL",
                    format!("expected an amqp:// or amqps:// URL, {got}"),
                );
                String::new()
            }
            Secret::Unset => {
                r.problem(
                    "BROKER_URL",
                    "expected an amqp:// or amqps:// URL, e.g. amqp://user:pass@rabbitmq:5672/%2f; it is not set (nor BROKER_URL_FILE)",
                );
                String::new()
            }
            Secret::Invalid => String::new(),
        };
        let broker_tls = r.broker_tls(&broker_url);

        let log_level = r.string("LOG_LEVEL", "info").to_ascii_lowercase();
        if !["trace", "debug", "info", "warn", "error"].contains(&log_level.as_str()) {
            r.problem(
                "LOG_LEVEL",
                format!("expected one of trace, debug, info, warn, error, got `{log_level}`"),
            );
        }

        let max_concurrent_tasks = r.number("MAX_CONCURRENT_TASKS", 50u16, 1, 10_000, "");
        let execution_timeout = r.millis("EXECUTION_TIMEOUT", 300_000, 1, 86_400_000);

        let bind_raw = r.string("BIND_ADDRESS", "0.0.0.0");
        let bind_address = bind_raw.parse::<IpAddr>().unwrap_or_else(|_| {
            r.problem(
                "BIND_ADDRESS",
                format!("expected an IP address, got `{bind_raw}`"),
            );
            IpAddr::from([0, 0, 0, 0])
        });
        let health_port = r.number("HEALTH_PORT", 8080u16, 1, 65_535, "");
        let metrics_port = r.number("METRICS_PORT", 9090u16, 1, 65_535, "");
        if health_port == metrics_port {
            r.problem(
                "METRICS_PORT",
                format!("expected a port different from HEALTH_PORT ({health_port})"),
            );
        }

        let task_queue = r.string("TASK_QUEUE", protocol::TASK_QUEUE);
        let gpu_task_queue = r.string("GPU_TASK_QUEUE", protocol::GPU_TASK_QUEUE);
        let result_queue = r.string("RESULT_QUEUE", protocol::RESULT_QUEUE);
        let dead_letter_queue = r.string("DEAD_LETTER_QUEUE", protocol::DEAD_LETTER_QUEUE);
        for (name, value) in [
            ("TASK_QUEUE", &task_queue),
            ("GPU_TASK_QUEUE", &gpu_task_queue),
            ("RESULT_QUEUE", &result_queue),
            ("DEAD_LETTER_QUEUE", &dead_letter_queue),
        ] {
            // AMQP short strings are at most 255 bytes; keep room for the
            // retry suffix added to task queue names.
            if value.len() > 200 || value.starts_with("amq.") {
                r.problem(
                    name,
                    format!("expected a queue name of at most 200 bytes not starting with `amq.`, got `{value}`"),
                );
            }
        }

        let grace_period = r.millis("SHUTDOWN_GRACE_PERIOD", 30_000, 0, 3_600_000);
        let max_attempts = r.number("MAX_ATTEMPTS", 3u32, 1, 100, "");
        let retry_base_delay = r.millis("RETRY_BASE_DELAY", 1_000, 1, 3_600_000);
        let retry_max_delay = r.millis("RETRY_MAX_DELAY", 60_000, 1, 86_400_000);
        if retry_max_delay < retry_base_delay {
            r.problem(
                "RETRY_MAX_DELAY",
                format!(
                    "expected at least RETRY_BASE_DELAY ({} ms)",
                    retry_base_delay.as_millis()
                ),
            );
        }

        let http_allowed_hosts = r
            .string("HTTP_ALLOWED_HOSTS", "")
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();

        let limits = CommandLimits {
            cpu_seconds: r.number("COMMAND_CPU_SECONDS", 600u64, 1, 1_000_000, "of seconds "),
            memory_bytes: r.number("COMMAND_MEMORY_MB", 1024u64, 16, 1_048_576, "of MiB ")
                * 1024
                * 1024,
            open_files: r.number("COMMAND_MAX_OPEN_FILES", 1024u64, 16, 1_048_576, ""),
            processes: r.number("COMMAND_MAX_PROCESSES", 256u64, 1, 1_000_000, ""),
            file_bytes: r.number("COMMAND_MAX_FILE_MB", 1024u64, 1, 1_048_576, "of MiB ")
                * 1024
                * 1024,
            user: sandbox_user(&mut r),
            work_root: PathBuf::from(r.string("COMMAND_WORK_DIR", "/tmp")),
            writable: r
                .string("COMMAND_WRITABLE_PATHS", "")
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        for dir in &limits.writable {
            if !dir.is_absolute() {
                r.problem(
                    "COMMAND_WRITABLE_PATHS",
                    format!("expected absolute directories, got `{}`", dir.display()),
                );
            }
        }
        if !limits.work_root.is_absolute() {
            r.problem(
                "COMMAND_WORK_DIR",
                format!(
                    "expected an absolute directory, got `{}`",
                    limits.work_root.display()
                ),
            );
        }
        let admission = admission(&mut r);
        let output_limit = r.number(
            "OUTPUT_LIMIT_BYTES",
            protocol::DEFAULT_OUTPUT_LIMIT,
            0,
            16 * 1024 * 1024,
            "of bytes ",
        );
        let dedup_capacity = r.number("DEDUP_CAPACITY", 100_000usize, 1, 10_000_000, "");
        let gpu_device_dir = PathBuf::from(r.string("GPU_DEVICE_DIR", "/dev"));
        let agent_id = r.raw("AGENT_ID").unwrap_or_else(default_agent_id);

        if r.problems.is_empty() {
            Ok(Config {
                broker_url: BrokerUrl(broker_url),
                broker_tls,
                log_level,
                max_concurrent_tasks,
                execution_timeout,
                bind_address,
                health_port,
                metrics_port,
                task_queue,
                gpu_task_queue,
                result_queue,
                dead_letter_queue,
                grace_period,
                max_attempts,
                retry_base_delay,
                retry_max_delay,
                http_allowed_hosts,
                limits,
                output_limit,
                dedup_capacity,
                gpu_device_dir,
                agent_id,
                admission,
            })
        } else {
            Err(ConfigError(r.problems))
        }
    }

    /// Backoff before retry number `attempt` (1 = after the first failure):
    /// base × 2^(attempt-1), capped at the maximum.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(32);
        let ms = (self.retry_base_delay.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.retry_max_delay)
    }

    /// Every distinct retry delay, so the delay queues can be declared up front.
    pub fn retry_delays(&self) -> Vec<Duration> {
        let mut delays = Vec::new();
        for attempt in 1.. {
            let d = self.retry_delay(attempt);
            if delays.last() == Some(&d) {
                break;
            }
            delays.push(d);
        }
        delays
    }
}

/// `SANDBOX_UID` and `SANDBOX_GID`: both or neither.
fn sandbox_user(r: &mut Reader<'_>) -> Option<(u32, u32)> {
    let uid = r.raw("SANDBOX_UID");
    let gid = r.raw("SANDBOX_GID");
    let parse = |r: &mut Reader<'_>, name: &'static str, raw: &str| match raw.trim().parse::<u32>()
    {
        Ok(id) if id > 0 => Some(id),
        _ => {
            r.problem(
                name,
                format!("expected a numeric id other than 0 (root), got `{raw}`"),
            );
            None
        }
    };
    match (uid, gid) {
        (None, None) => None,
        (Some(uid), Some(gid)) => Some((
            parse(r, "SANDBOX_UID", &uid)?,
            parse(r, "SANDBOX_GID", &gid)?,
        )),
        (Some(_), None) => {
            r.problem("SANDBOX_GID", "expected SANDBOX_GID beside SANDBOX_UID");
            None
        }
        (None, Some(_)) => {
            r.problem("SANDBOX_UID", "expected SANDBOX_UID beside SANDBOX_GID");
            None
        }
    }
}

/// Signing keys, kinds, programs and sizes: what may run at all.
fn admission(r: &mut Reader<'_>) -> Admission {
    let allow_unsigned = match r.string("ALLOW_UNSIGNED_TASKS", "false").trim() {
        "true" => true,
        "false" => false,
        other => {
            r.problem(
                "ALLOW_UNSIGNED_TASKS",
                format!("expected `true` or `false`, got `{other}`"),
            );
            false
        }
    };
    let keys = match r.secret("TASK_SIGNING_PUBLIC_KEYS") {
        Secret::Value(text) => match protocol::signing::Verifier::parse(&text) {
            Ok(keys) => keys,
            Err(e) => {
                r.problem(
                    "TASK_SIGNING_PUBLIC_KEYS",
                    format!("expected Ed25519 public keys (base64, comma or line separated): {e}"),
                );
                Default::default()
            }
        },
        Secret::Unset if !allow_unsigned => {
            r.problem(
                "TASK_SIGNING_PUBLIC_KEYS",
                "expected the public keys tasks are signed with (or TASK_SIGNING_PUBLIC_KEYS_FILE); \
                 only signed tasks run. ALLOW_UNSIGNED_TASKS=true runs unsigned ones, for a test bed only",
            );
            Default::default()
        }
        Secret::Unset | Secret::Invalid => Default::default(),
    };
    let max_ttl = r.millis("TASK_MAX_TTL", 3_600_000, 1_000, 7 * 86_400_000);
    let max_message_bytes = r.number(
        "MAX_MESSAGE_BYTES",
        1024 * 1024usize,
        1024,
        128 * 1024 * 1024,
        "of bytes ",
    );
    let mut enabled_kinds = BTreeSet::new();
    for kind in r
        .string("ENABLED_KINDS", &KINDS.join(","))
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        if KINDS.contains(&kind) {
            enabled_kinds.insert(kind.to_owned());
        } else {
            r.problem(
                "ENABLED_KINDS",
                format!("expected kinds from {}, got `{kind}`", KINDS.join(", ")),
            );
        }
    }
    let mut commands = BTreeMap::new();
    for entry in r
        .string("COMMAND_ALLOWED", "")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        match parse_allowed_command(entry) {
            Ok((path, digest)) => {
                commands.insert(path, digest);
            }
            Err(expected) => r.problem("COMMAND_ALLOWED", expected),
        }
    }
    Admission {
        keys,
        allow_unsigned,
        max_ttl,
        max_message_bytes,
        enabled_kinds,
        commands,
    }
}

/// `/abs/path` or `/abs/path@sha256:<64 hex>`.
fn parse_allowed_command(entry: &str) -> Result<(PathBuf, Option<[u8; 32]>), String> {
    let (path, digest) = match entry.split_once("@sha256:") {
        Some((path, hex)) => {
            let bytes: Option<Vec<u8>> = (hex.len() == 64)
                .then(|| {
                    (0..32)
                        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                        .collect()
                })
                .flatten();
            match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                Some(d) => (path, Some(d)),
                None => {
                    return Err(format!(
                        "expected `{path}@sha256:` followed by 64 hex digits"
                    ));
                }
            }
        }
        None => (entry, None),
    };
    let path = PathBuf::from(path);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(format!(
            "expected absolute program paths (optionally `@sha256:<hex>`), got `{}`",
            path.display()
        ));
    }
    Ok((path, digest))
}

/// The pod name in Kubernetes (HOSTNAME), else the host name, plus the pid so
/// two agents on one host differ.
fn default_agent_id() -> String {
    let host = std::env::var("HOSTNAME").ok().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".to_owned())
    });
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A public key for tests that are not about signing.
    const TEST_KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !map.contains_key("TASK_SIGNING_PUBLIC_KEYS")
            && !map.contains_key("ALLOW_UNSIGNED_TASKS")
        {
            map.insert("TASK_SIGNING_PUBLIC_KEYS".into(), TEST_KEY.into());
        }
        Config::from_lookup(&move |name| map.get(name).cloned())
    }

    /// Variables plus an in-memory filesystem of (path, content); a path
    /// not in it is unreadable.
    fn config_with_files(
        vars: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry("TASK_SIGNING_PUBLIC_KEYS".into())
            .or_insert_with(|| TEST_KEY.into());
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        Config::from_sources(&move |name| map.get(name).cloned(), &move |path| {
            files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "permission denied"))
        })
    }

    /// What lapin makes of the URL: user name and password, decoded.
    fn credentials(c: &Config) -> (String, String) {
        let uri: lapin::uri::AMQPUri = c.broker_url.expose().parse().unwrap();
        let info = uri.authority.userinfo;
        (info.username, info.password)
    }

    #[test]
    fn defaults_follow_the_seeds() {
        let c = config(&[("BROKER_URL", "amqp://guest:guest@localhost:5672/%2f")]).unwrap();
        assert_eq!(c.max_concurrent_tasks, 50);
        assert_eq!(c.execution_timeout, Duration::from_millis(300_000));
        assert_eq!((c.health_port, c.metrics_port), (8080, 9090));
        assert_eq!(c.task_queue, protocol::TASK_QUEUE);
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn missing_broker_url_names_the_variable() {
        let err = config(&[]).unwrap_err();
        assert_eq!(err.0[0].variable, "BROKER_URL");
        assert!(err.to_string().contains("BROKER_URL: expected an amqp://"));
    }

    #[test]
    fn every_problem_is_reported() {
        let err = config(&[
            ("BROKER_URL", "http://x"),
            ("MAX_CONCURRENT_TASKS", "lots"),
            ("EXECUTION_TIMEOUT", "0"),
            ("LOG_LEVEL", "LOUD"),
        ])
        .unwrap_err();
        let vars: Vec<_> = err.0.iter().map(|p| p.variable).collect();
        assert_eq!(
            vars,
            [
                "BROKER_URL",
                "LOG_LEVEL",
                "MAX_CONCURRENT_TASKS",
                "EXECUTION_TIMEOUT"
            ]
        );
        assert!(err.to_string().contains("got `lots`"));
    }

    #[test]
    fn seed_log_levels_are_accepted_in_upper_case() {
        let c = config(&[("BROKER_URL", "amqp://h"), ("LOG_LEVEL", "WARN")]).unwrap();
        assert_eq!(c.log_level, "warn");
    }

    #[test]
    fn broker_password_is_redacted() {
        let c = config(&[("BROKER_URL", "amqp://user:secret@h:5672/%2f")]).unwrap();
        assert_eq!(format!("{:?}", c.broker_url), "amqp://user:***@h:5672/%2f");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let c = config(&[
            ("BROKER_URL", "amqp://h"),
            ("RETRY_BASE_DELAY", "100"),
            ("RETRY_MAX_DELAY", "500"),
        ])
        .unwrap();
        let ms: Vec<_> = c.retry_delays().iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500]);
        assert_eq!(c.retry_delay(30).as_millis(), 500);
    }

    #[test]
    fn every_secret_variable_is_read_from_its_file_without_trailing_newlines() {
        let c = config_with_files(
            &[
                ("BROKER_URL_FILE", "/run/secrets/url"),
                ("BROKER_USERNAME_FILE", "/run/secrets/user"),
                ("BROKER_PASSWORD_FILE", "/run/secrets/password"),
            ],
            &[
                ("/run/secrets/url", "amqp://rabbitmq:5672/%2f\n"),
                ("/run/secrets/user", "task-executor\r\n"),
                ("/run/secrets/password", " s3cret \n\n"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.broker_url.expose(),
            "amqp://task-executor:%20s3cret%20@rabbitmq:5672/%2f"
        );
        // Inner and leading/trailing spaces are part of the password.
        assert_eq!(
            credentials(&c),
            ("task-executor".to_owned(), " s3cret ".to_owned())
        );
    }

    #[test]
    fn password_file_with_the_user_in_the_url_as_taskctl_profiles_do() {
        let c = config_with_files(
            &[
                ("BROKER_URL", "amqp://task-executor@rabbitmq:5672/%2f"),
                ("BROKER_PASSWORD_FILE", "/run/secrets/broker_password"),
            ],
            &[("/run/secrets/broker_password", "p@ss:w/rd?#%ü\n")],
        )
        .unwrap();
        assert_eq!(
            credentials(&c),
            ("task-executor".to_owned(), "p@ss:w/rd?#%ü".to_owned())
        );
        assert_eq!(
            c.broker_url.expose(),
            "amqp://task-executor:p%40ss%3Aw%2Frd%3F%23%25%C3%BC@rabbitmq:5672/%2f"
        );
    }

    #[test]
    fn username_and_password_replace_those_in_the_url() {
        let c = config(&[
            ("BROKER_URL", "amqps://old:oldpass@h:5671/vh?heartbeat=10"),
            ("BROKER_USERNAME", "new user"),
            ("BROKER_PASSWORD", "newpass"),
        ])
        .unwrap();
        assert_eq!(
            c.broker_url.expose(),
            "amqps://new%20user:newpass@h:5671/vh?heartbeat=10"
        );
        assert_eq!(
            credentials(&c),
            ("new user".to_owned(), "newpass".to_owned())
        );

        // Each replaces only its own part.
        let c = config(&[
            ("BROKER_URL", "amqp://old:oldpass@h"),
            ("BROKER_PASSWORD", "newpass"),
        ])
        .unwrap();
        assert_eq!(c.broker_url.expose(), "amqp://old:newpass@h");
        let c = config(&[
            ("BROKER_URL", "amqp://old:oldpass@h"),
            ("BROKER_USERNAME", "new"),
        ])
        .unwrap();
        assert_eq!(c.broker_url.expose(), "amqp://new:oldpass@h");
        let c = config(&[("BROKER_URL", "amqp://h/%2f"), ("BROKER_USERNAME", "u")]).unwrap();
        assert_eq!(c.broker_url.expose(), "amqp://u@h/%2f");
    }

    #[test]
    fn url_without_credentials_variables_is_kept_as_given() {
        for url in [
            "amqp://h",
            "amqp://u:p@h:5672/%2f?heartbeat=5",
            "amqps://h/x@y",
        ] {
            let c = config(&[("BROKER_URL", url)]).unwrap();
            assert_eq!(c.broker_url.expose(), url);
        }
    }

    #[test]
    fn an_at_sign_after_the_host_is_not_taken_for_userinfo() {
        let c = config(&[
            ("BROKER_URL", "amqp://h/vh?x=a@b"),
            ("BROKER_USERNAME", "u"),
        ])
        .unwrap();
        assert_eq!(c.broker_url.expose(), "amqp://u@h/vh?x=a@b");
    }

    #[test]
    fn password_without_any_user_name_is_refused() {
        let err = config_with_files(
            &[
                ("BROKER_URL", "amqp://rabbitmq:5672/%2f"),
                ("BROKER_PASSWORD_FILE", "/run/secrets/p"),
            ],
            &[("/run/secrets/p", "hunter2")],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].variable, "BROKER_PASSWORD");
        let text = err.to_string();
        assert!(text.contains("BROKER_USERNAME"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_variable_and_its_file_together_are_refused_naming_both() {
        for (name, file_var) in SECRET_VARIABLES {
            let mut vars = vec![("BROKER_URL", "amqp://u@h"), (name, "amqp://u@h")];
            vars.push((file_var, "/run/secrets/x"));
            let err = config_with_files(&vars, &[("/run/secrets/x", "amqp://u@h")]).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&format!(
                    "{name}: expected either {name} or {file_var}, not both"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn an_unreadable_file_names_the_variable_and_the_path() {
        let err = config_with_files(
            &[
                ("BROKER_URL", "amqp://u@h"),
                ("BROKER_PASSWORD_FILE", "/run/secrets/missing"),
            ],
            &[],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].variable, "BROKER_PASSWORD_FILE");
        let text = err.to_string();
        assert!(text.contains("`/run/secrets/missing`"), "{text}");
        assert!(text.contains("permission denied"), "{text}");

        // An unreadable BROKER_URL_FILE is that problem, not also "not set".
        let err = config_with_files(&[("BROKER_URL_FILE", "/nope")], &[]).unwrap_err();
        let vars: Vec<_> = err.0.iter().map(|p| p.variable).collect();
        assert_eq!(vars, ["BROKER_URL_FILE"]);
    }

    #[test]
    fn an_empty_file_is_refused() {
        let err = config_with_files(
            &[("BROKER_URL", "amqp://u@h"), ("BROKER_PASSWORD_FILE", "/e")],
            &[("/e", "\n")],
        )
        .unwrap_err();
        assert_eq!(err.0[0].variable, "BROKER_PASSWORD_FILE");
        assert!(err.to_string().contains("`/e` is empty"));
    }

    #[test]
    fn file_variant_of_a_plain_variable_is_refused_not_ignored() {
        let err = config(&[
            ("BROKER_URL", "amqp://h"),
            ("MAX_CONCURRENT_TASKS_FILE", "/run/secrets/n"),
        ])
        .unwrap_err();
        assert_eq!(err.0[0].variable, "MAX_CONCURRENT_TASKS");
        assert!(err.to_string().contains("MAX_CONCURRENT_TASKS_FILE is set"));
    }

    #[test]
    fn no_secret_from_a_file_reaches_debug_display_or_errors() {
        let password = "Zq9@xw/y:Secret";
        let files = [
            ("/run/secrets/url", "amqp://rabbitmq:5672/%2f"),
            ("/run/secrets/password", password),
        ];
        let c = config_with_files(
            &[
                ("BROKER_URL_FILE", "/run/secrets/url"),
                ("BROKER_USERNAME", "agent"),
                ("BROKER_PASSWORD_FILE", "/run/secrets/password"),
            ],
            &files,
        )
        .unwrap();
        let encoded = encode_userinfo(password);
        assert!(c.broker_url.expose().contains(&encoded));
        for shown in [
            format!("{c:?}"),
            format!("{c:#?}"),
            format!("{:?}", c.broker_url),
            c.broker_url.to_string(),
        ] {
            assert!(!shown.contains(password), "{shown}");
            assert!(!shown.contains(&encoded), "{shown}");
            assert!(!shown.contains("Secret"), "{shown}");
        }
        assert_eq!(
            c.broker_url.to_string(),
            "amqp://agent:***@rabbitmq:5672/%2f"
        );

        // A password put where the URL belongs is not echoed in the error.
        let err =
            config_with_files(&[("BROKER_URL_FILE", "/run/secrets/password")], &files).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("BROKER_URL: expected an amqp://"), "{text}");
        assert!(!text.contains("Secret"), "{text}");
    }

    #[test]
    fn real_secret_files_are_read_and_bounded() {
        let dir = std::env::temp_dir().join(format!("agent-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("password");
        std::fs::write(&ok, "from-a-file\n").unwrap();
        let huge = dir.join("huge");
        std::fs::write(&huge, vec![b'a'; SECRET_FILE_LIMIT as usize + 1]).unwrap();
        let missing = dir.join("missing");

        let vars = |file: &Path| {
            let file = file.to_str().unwrap().to_owned();
            move |name: &str| match name {
                "BROKER_URL" => Some("amqp://u@h".to_owned()),
                "BROKER_PASSWORD_FILE" => Some(file.clone()),
                "ALLOW_UNSIGNED_TASKS" => Some("true".to_owned()),
                _ => None,
            }
        };
        let c = Config::from_lookup(&vars(&ok)).unwrap();
        assert_eq!(c.broker_url.expose(), "amqp://u:from-a-file@h");

        let err = Config::from_lookup(&vars(&missing))
            .unwrap_err()
            .to_string();
        assert!(err.contains("BROKER_PASSWORD_FILE"), "{err}");
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        assert!(err.contains("No such file"), "{err}");

        let err = Config::from_lookup(&vars(&huge)).unwrap_err().to_string();
        assert!(err.contains("larger than 65536 bytes"), "{err}");
        assert!(!err.contains("aaaa"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_health_and_metrics_port_is_refused() {
        let err = config(&[
            ("BROKER_URL", "amqp://h"),
            ("HEALTH_PORT", "7000"),
            ("METRICS_PORT", "7000"),
        ])
        .unwrap_err();
        assert_eq!(err.0[0].variable, "METRICS_PORT");
    }
}

/// The broker TLS variables (`BROKER_CA_FILE`, `BROKER_CLIENT_CERT_FILE`,
/// `BROKER_CLIENT_KEY_FILE`), with certificates made by rcgen.
#[cfg(test)]
mod broker_tls_tests {
    use std::collections::HashMap;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use super::*;

    /// A CA: its certificate (PEM) and its issuer, to sign leaves.
    fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(params, key))
    }

    /// A client certificate signed by `issuer` and its key (both PEM).
    fn client(issuer: &Issuer<'static, KeyPair>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "agent");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn config_with_files(
        vars: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Not about signing: any valid key.
        map.entry("TASK_SIGNING_PUBLIC_KEYS".into())
            .or_insert_with(|| "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into());
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        Config::from_sources(&move |name| map.get(name).cloned(), &move |path| {
            files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
        })
    }

    fn variables(err: &ConfigError) -> Vec<&'static str> {
        err.0.iter().map(|p| p.variable).collect()
    }

    const AMQPS: (&str, &str) = ("BROKER_URL", "amqps://u:p@rabbitmq:5671/%2f");

    #[test]
    fn without_tls_variables_there_is_no_tls_setup() {
        for url in ["amqp://h", "amqps://h"] {
            let c = config_with_files(&[("BROKER_URL", url)], &[]).unwrap();
            assert!(c.broker_tls.is_none());
        }
    }

    #[test]
    fn tls_ca_file_is_the_only_trust_and_is_read_at_startup() {
        let (ca1, _) = ca("first CA");
        let (ca2, _) = ca("second CA");
        let bundle = format!("{ca1}{ca2}");
        let c = config_with_files(
            &[AMQPS, ("BROKER_CA_FILE", "/etc/tls/ca.pem")],
            &[("/etc/tls/ca.pem", &bundle)],
        )
        .unwrap();
        let tls = c.broker_tls.as_ref().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/tls/ca.pem")));
        assert_eq!(tls.ca_certificates, 2);
        assert!(tls.client_cert_file.is_none());
    }

    #[test]
    fn tls_variables_with_an_amqp_url_are_refused() {
        let (ca_pem, issuer) = ca("CA");
        let (cert, key) = client(&issuer);
        let files = [("/ca", ca_pem.as_str()), ("/cert", &cert), ("/key", &key)];
        let err = config_with_files(
            &[
                ("BROKER_URL", "amqp://u:p@rabbitmq:5672/%2f"),
                ("BROKER_CA_FILE", "/ca"),
            ],
            &files,
        )
        .unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CA_FILE"]);
        assert!(
            err.to_string().contains(
                "BROKER_CA_FILE: expected an amqps:// BROKER_URL when BROKER_CA_FILE is set"
            ),
            "{err}"
        );

        // Each variable set is named.
        let err = config_with_files(
            &[
                ("BROKER_URL", "amqp://h"),
                ("BROKER_CA_FILE", "/ca"),
                ("BROKER_CLIENT_CERT_FILE", "/cert"),
                ("BROKER_CLIENT_KEY_FILE", "/key"),
            ],
            &files,
        )
        .unwrap_err();
        assert_eq!(variables(&err), TLS_VARIABLES);
        assert!(
            err.to_string().contains(
                "BROKER_CLIENT_KEY_FILE: expected an amqps:// BROKER_URL when BROKER_CLIENT_KEY_FILE is set"
            ),
            "{err}"
        );
    }

    #[test]
    fn tls_client_certificate_and_key_go_together() {
        let (ca_pem, issuer) = ca("CA");
        let (cert, key) = client(&issuer);
        let files = [("/ca", ca_pem.as_str()), ("/cert", &cert), ("/key", &key)];

        let err =
            config_with_files(&[AMQPS, ("BROKER_CLIENT_CERT_FILE", "/cert")], &files).unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CLIENT_KEY_FILE"]);
        assert!(err.to_string().contains("both or neither"), "{err}");

        let err =
            config_with_files(&[AMQPS, ("BROKER_CLIENT_KEY_FILE", "/key")], &files).unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CLIENT_CERT_FILE"]);

        // Both, with or without a private CA.
        for ca_var in [None, Some(("BROKER_CA_FILE", "/ca"))] {
            let mut vars = vec![
                AMQPS,
                ("BROKER_CLIENT_CERT_FILE", "/cert"),
                ("BROKER_CLIENT_KEY_FILE", "/key"),
            ];
            vars.extend(ca_var);
            let c = config_with_files(&vars, &files).unwrap();
            let tls = c.broker_tls.as_ref().unwrap();
            assert_eq!(tls.client_cert_file.as_deref(), Some(Path::new("/cert")));
            assert_eq!(tls.ca_file.is_some(), ca_var.is_some());
            // Nothing of the key shows in the configuration's Debug.
            let shown = format!("{c:?}");
            let key_body: String = key.lines().nth(1).unwrap().chars().take(20).collect();
            assert!(!shown.contains(&key_body), "{shown}");
        }
    }

    #[test]
    fn tls_files_unreadable_or_not_pem_name_the_variable_and_the_path() {
        let (ca_pem, issuer) = ca("CA");
        let (cert, key) = client(&issuer);

        let err =
            config_with_files(&[AMQPS, ("BROKER_CA_FILE", "/missing/ca.pem")], &[]).unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CA_FILE"]);
        assert!(
            err.to_string().contains(
                "BROKER_CA_FILE: expected a readable PEM file of CA certificates, \
                 cannot read `/missing/ca.pem`: No such file or directory"
            ),
            "{err}"
        );

        let err = config_with_files(
            &[AMQPS, ("BROKER_CA_FILE", "/ca")],
            &[("/ca", "just some text\n")],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "BROKER_CA_FILE: expected a PEM file of CA certificates, but `/ca` is not one: \
                 no `-----BEGIN CERTIFICATE-----` block found"
            ),
            "{err}"
        );

        // A key where the CA belongs: not a certificate.
        let err =
            config_with_files(&[AMQPS, ("BROKER_CA_FILE", "/ca")], &[("/ca", &key)]).unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CA_FILE"]);

        // A broken key file: the error says so without quoting it.
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA$$$";
        let broken = format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n");
        for content in [broken.as_str(), "", &cert] {
            let err = config_with_files(
                &[
                    AMQPS,
                    ("BROKER_CLIENT_CERT_FILE", "/cert"),
                    ("BROKER_CLIENT_KEY_FILE", "/key"),
                ],
                &[("/cert", &cert), ("/key", content)],
            )
            .unwrap_err();
            assert_eq!(variables(&err), ["BROKER_CLIENT_KEY_FILE"], "{err}");
            let text = err.to_string();
            assert!(text.contains("but `/key` is not one"), "{text}");
            assert!(!text.contains("c2VjcmV0"), "{text}");
            assert!(!text.contains("$$$"), "{text}");
        }

        // Every file problem at once.
        let err = config_with_files(
            &[
                AMQPS,
                ("BROKER_CA_FILE", "/nope1"),
                ("BROKER_CLIENT_CERT_FILE", "/nope2"),
                ("BROKER_CLIENT_KEY_FILE", "/nope3"),
            ],
            &[("/ca", &ca_pem)],
        )
        .unwrap_err();
        assert_eq!(variables(&err), TLS_VARIABLES);
    }

    #[test]
    fn tls_client_key_of_another_certificate_is_refused() {
        let (_, issuer) = ca("CA");
        let (cert, _) = client(&issuer);
        let (_, other_key) = client(&issuer);
        let err = config_with_files(
            &[
                AMQPS,
                ("BROKER_CLIENT_CERT_FILE", "/cert"),
                ("BROKER_CLIENT_KEY_FILE", "/key"),
            ],
            &[("/cert", &cert), ("/key", &other_key)],
        )
        .unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CLIENT_KEY_FILE"]);
        let text = err.to_string();
        assert!(
            text.contains(
                "expected the private key of the certificate in BROKER_CLIENT_CERT_FILE (`/cert`)"
            ),
            "{text}"
        );
    }
}
