//! Agent configuration, read from the environment and validated once at
//! start-up, before any port is bound.
//!
//! [`Config::from_lookup`] is a pure function over a variable lookup so every
//! rule can be unit-tested without touching the process environment. Every
//! problem is reported, each naming the variable and what was expected; the
//! binary exits 64 when there is any.

use std::{collections::BTreeSet, fmt, net::IpAddr, path::PathBuf, str::FromStr, time::Duration};

use taskctl_protocol as protocol;

/// Validated configuration of one agent process.
#[derive(Debug, Clone)]
pub struct Config {
    pub broker_url: BrokerUrl,
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
}

/// Resource limits applied to every `command` task (setrlimit in the child).
#[derive(Debug, Clone, Copy)]
pub struct CommandLimits {
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub open_files: u64,
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
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let userinfo = &self.0[scheme_end + 3..at];
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{}{}:***{}", &self.0[..scheme_end + 3], user, &self.0[at..])
            }
            _ => self.0.clone(),
        }
    }
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
    problems: Vec<Problem>,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
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

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable name to its value).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
        };

        let broker_url = match r.raw("BROKER_URL") {
            Some(url) if url.starts_with("amqp://") || url.starts_with("amqps://") => url,
            Some(url) => {
                let shown = BrokerUrl(url).redacted();
                r.problem(
                    "BROKER_URL",
                    format!("expected an amqp:// or amqps:// URL, got `{shown}`"),
                );
                String::new()
            }
            None => {
                r.problem(
                    "BROKER_URL",
                    "expected an amqp:// or amqps:// URL, e.g. amqp://user:pass@rabbitmq:5672/%2f; it is not set",
                );
                String::new()
            }
        };

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
        };
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

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&move |name| map.get(name).cloned())
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
