use super::ResourceList;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings of one environment (development, staging, production).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Environment {
    pub log_level: LogLevel,
    #[serde(default = "yes")]
    pub metrics_enabled: bool,
    #[serde(default)]
    pub tracing_enabled: bool,
    /// Ceiling of any one container's limits in this environment.
    pub resource_limits: ResourceList,
    /// A partial profile merged over the whole profile when this environment
    /// applies (maps merge key by key; lists of named items merge by `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub overrides: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        }
    }
}
