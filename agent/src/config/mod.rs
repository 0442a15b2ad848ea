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
//!
//! Where what is: `reader` (variables, `_FILE` secrets, problems),
//! `broker_url` (credentials into `BROKER_URL`, redaction), `broker_tls`
//! (the CA and client certificate files), `admission` (signing keys,
//! kinds, programs, sizes, the sandbox user); this file holds `Config` and
//! reads the rest.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use taskctl_protocol as protocol;

use crate::tls::BrokerTls;

mod admission;
mod broker_tls;
mod broker_url;
mod reader;

use admission::*;
pub use broker_tls::TLS_VARIABLES;
pub use broker_url::BrokerUrl;
use broker_url::*;
use reader::*;
pub use reader::{ConfigError, Problem, SECRET_VARIABLES, read_secret_file};

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
    /// `TASK_SIGNATURE_BATCH`: at most this many deliveries that arrived
    /// together have their signatures checked as one batch before their
    /// tasks start (see `Worker::check_signatures`).
    pub signature_batch: usize,
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
    /// `SANDBOX_UID_COUNT`: with more than 1, each running command task has
    /// a uid of its own, `user`'s uid up to this many (see
    /// `executor::uids`); 1 is one uid shared by all tasks.
    pub user_count: u32,
    /// Where each task gets its private working directory.
    pub work_root: PathBuf,
    /// Directories tasks may write beside their own (Landlock).
    pub writable: Vec<PathBuf>,
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
            user_count: r.number("SANDBOX_UID_COUNT", 1u32, 1, 65_536, ""),
            work_root: PathBuf::from(r.string("COMMAND_WORK_DIR", "/tmp")),
            writable: r
                .string("COMMAND_WRITABLE_PATHS", "")
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        if limits.user_count > 1 {
            match limits.user {
                None => r.problem(
                    "SANDBOX_UID_COUNT",
                    "expected SANDBOX_UID and SANDBOX_GID beside it: the first of the uids tasks take, and their group",
                ),
                Some((uid, _)) if uid.checked_add(limits.user_count - 1).is_none() => r.problem(
                    "SANDBOX_UID_COUNT",
                    format!(
                        "SANDBOX_UID {uid} plus {} uids runs past the largest uid",
                        limits.user_count
                    ),
                ),
                Some(_) => {}
            }
        }
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
        let signature_batch = r.number("TASK_SIGNATURE_BATCH", 16usize, 1, 1024, "");
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
                signature_batch,
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

    #[test]
    fn a_uid_pool_needs_its_first_uid_and_fits_the_uid_range() {
        const URL: (&str, &str) = ("BROKER_URL", "amqp://u:p@rabbitmq:5672/%2f");
        let ok = config(&[
            URL,
            ("SANDBOX_UID", "70000"),
            ("SANDBOX_GID", "70000"),
            ("SANDBOX_UID_COUNT", "8"),
        ])
        .unwrap();
        assert_eq!(
            (ok.limits.user, ok.limits.user_count),
            (Some((70_000, 70_000)), 8)
        );
        assert_eq!(config(&[URL]).unwrap().limits.user_count, 1);
        let e = config(&[URL, ("SANDBOX_UID_COUNT", "4")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SANDBOX_UID_COUNT") && e.contains("SANDBOX_UID and SANDBOX_GID"),
            "{e}"
        );
        let e = config(&[
            URL,
            ("SANDBOX_UID", "4294967290"),
            ("SANDBOX_GID", "1000"),
            ("SANDBOX_UID_COUNT", "100"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("largest uid"), "{e}");
        let e = config(&[URL, ("SANDBOX_UID_COUNT", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SANDBOX_UID_COUNT"), "{e}");
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
        assert_eq!(c.signature_batch, 16);
        let e = config(&[
            ("BROKER_URL", "amqp://guest:guest@localhost:5672/%2f"),
            ("TASK_SIGNATURE_BATCH", "0"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("TASK_SIGNATURE_BATCH"), "{e}");
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
