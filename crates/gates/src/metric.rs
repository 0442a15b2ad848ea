//! The metric gate: a Prometheus instant query whose every series must
//! satisfy a comparison.
//!
//! Prometheus answers `GET /api/v1/query?query=…` with a JSON vector (or a
//! scalar); each series is compared with the threshold. Query errors that the
//! server reports as the query's fault (`bad_data`, `execution`) end the gate
//! at once: asking again returns the same error. An empty result is decided
//! by the gate's [`NoData`] policy.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::http::{describe, request_error};
use crate::{Attempt, Comparison, NoData, quoted};

/// Series quoted in one observation; the rest are counted.
const SHOWN: usize = 3;

/// One series of an instant query's answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// `up{instance="127.0.0.1:9091",job="task-executor"}`, or the query
    /// itself for a series without labels (`vector(1)`).
    pub series: String,
    pub value: f64,
}

impl Sample {
    fn shown(&self) -> String {
        format!("{} = {}", self.series, self.value)
    }
}

/// Why a query gave no samples.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum QueryError {
    /// The query itself is wrong; asking again will not help.
    Fatal(String),
    /// Prometheus did not answer (yet).
    Retry(String),
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<VectorSample>),
    Scalar((f64, String)),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Runs an instant query and returns its series.
pub(crate) async fn query(
    client: &reqwest::Client,
    prometheus_url: &str,
    promql: &str,
    budget: Duration,
) -> Result<Vec<Sample>, QueryError> {
    let endpoint = format!("{}/api/v1/query", prometheus_url.trim_end_matches('/'));
    let url = url::Url::parse_with_params(&endpoint, [("query", promql)]).map_err(|e| {
        QueryError::Fatal(format!(
            "`{}` is not a URL: {e}",
            crate::redact::url(prometheus_url)
        ))
    })?;
    let response =
        client.get(url).timeout(budget).send().await.map_err(|e| {
            match request_error(&e, budget) {
                Attempt::Fatal(why) => QueryError::Fatal(format!("Prometheus: {why}")),
                Attempt::Retry(why) | Attempt::Pass(why) => {
                    QueryError::Retry(format!("Prometheus: {why}"))
                }
            }
        })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| QueryError::Retry(format!("Prometheus: {}", describe(&e, budget))))?;
    let envelope: Envelope = serde_json::from_slice(&body).map_err(|_| {
        QueryError::Retry(format!(
            "Prometheus answered HTTP {} with no query result: {}",
            status.as_u16(),
            quoted(&String::from_utf8_lossy(&body), 120)
        ))
    })?;
    if envelope.status != "success" {
        let kind = envelope.error_type.unwrap_or_default();
        let why = format!(
            "Prometheus rejected `{promql}`: {} ({kind})",
            envelope.error.unwrap_or_default()
        );
        // bad_data: syntax or type errors; execution: e.g. many-to-many
        // matching. Both are the query's fault. timeout/unavailable are not.
        return Err(match kind.as_str() {
            "bad_data" | "execution" => QueryError::Fatal(why),
            _ => QueryError::Retry(why),
        });
    }
    match envelope.data {
        Some(Data::Vector(series)) => Ok(series
            .into_iter()
            .map(|s| Sample {
                series: series_name(&s.metric, promql),
                value: parse_value(&s.value.1),
            })
            .collect()),
        Some(Data::Scalar((_, value))) => Ok(vec![Sample {
            series: promql.to_owned(),
            value: parse_value(&value),
        }]),
        Some(Data::Matrix(_)) => Err(QueryError::Fatal(format!(
            "`{promql}` returns a range vector; a gate needs an instant vector or scalar"
        ))),
        Some(Data::String(_)) => Err(QueryError::Fatal(format!(
            "`{promql}` returns a string; a gate needs an instant vector or scalar"
        ))),
        None => Ok(Vec::new()),
    }
}

/// Prometheus writes special values as `NaN`, `+Inf`, `-Inf`, which Rust
/// parses; anything unreadable is NaN, which fails every comparison but `!=`.
fn parse_value(raw: &str) -> f64 {
    raw.parse().unwrap_or(f64::NAN)
}

fn series_name(labels: &BTreeMap<String, String>, promql: &str) -> String {
    let name = labels.get("__name__").map(String::as_str).unwrap_or("");
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    match (name, rest.is_empty()) {
        ("", true) => promql.to_owned(),
        (name, true) => name.to_owned(),
        (name, false) => format!("{name}{{{}}}", rest.join(",")),
    }
}

/// `a = 1, b = 2 and 3 more`.
pub(crate) fn list(samples: &[&Sample]) -> String {
    let mut shown: Vec<String> = samples.iter().take(SHOWN).map(|s| s.shown()).collect();
    if samples.len() > SHOWN {
        shown.push(format!("and {} more", samples.len() - SHOWN));
    }
    shown.join(", ")
}

pub(crate) async fn attempt(
    client: &reqwest::Client,
    prometheus_url: &str,
    promql: &str,
    cmp: Comparison,
    threshold: f64,
    no_data: NoData,
    budget: Duration,
) -> Attempt {
    let samples = match query(client, prometheus_url, promql, budget).await {
        Ok(samples) => samples,
        Err(QueryError::Fatal(why)) => return Attempt::Fatal(why),
        Err(QueryError::Retry(why)) => return Attempt::Retry(why),
    };
    if samples.is_empty() {
        let seen = format!("no series for `{promql}`");
        return match no_data {
            NoData::Fail => Attempt::Fatal(format!("{seen} (no data fails this gate)")),
            NoData::Pass => Attempt::Pass(format!("{seen} (no data passes this gate)")),
            NoData::Wait => Attempt::Retry(format!("{seen} yet")),
        };
    }
    let failing: Vec<&Sample> = samples
        .iter()
        .filter(|s| !cmp.holds(s.value, threshold))
        .collect();
    if failing.is_empty() {
        let all: Vec<&Sample> = samples.iter().collect();
        Attempt::Pass(list(&all))
    } else {
        Attempt::Retry(format!("{} (expected {cmp} {threshold})", list(&failing)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_values_parse() {
        assert!(parse_value("NaN").is_nan());
        assert_eq!(parse_value("+Inf"), f64::INFINITY);
        assert_eq!(parse_value("-Inf"), f64::NEG_INFINITY);
        assert_eq!(parse_value("0.25"), 0.25);
    }

    #[test]
    fn series_are_named_like_promql() {
        let mut labels = BTreeMap::new();
        labels.insert("__name__".to_owned(), "up".to_owned());
        labels.insert("instance".to_owned(), "127.0.0.1:9091".to_owned());
        assert_eq!(
            series_name(&labels, "q"),
            r#"up{instance="127.0.0.1:9091"}"#
        );
        assert_eq!(series_name(&BTreeMap::new(), "vector(1)"), "vector(1)");
    }

    #[test]
    fn long_lists_are_counted() {
        let s: Vec<Sample> = (0..5)
            .map(|i| Sample {
                series: format!("s{i}"),
                value: 0.0,
            })
            .collect();
        let refs: Vec<&Sample> = s.iter().collect();
        assert_eq!(list(&refs), "s0 = 0, s1 = 0, s2 = 0, and 2 more");
    }
}
