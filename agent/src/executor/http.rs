//! `http` tasks: one request to a host the configuration allows.
//!
//! The allow-list is checked on the URL's host (and `host:port` entries match
//! a port too); redirects are not followed, because a redirect could lead to a
//! host outside the list. An empty list rejects every http task.

use std::{collections::BTreeMap, collections::BTreeSet, time::Duration};

use taskctl_protocol::TaskStatus;

use super::{Outcome, timeout_message};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The HTTP client could not be built (TLS roots, resolver).
    #[error("failed to build the HTTP client")]
    Client(#[source] reqwest::Error),
}

pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a BTreeMap<String, String>,
    pub body: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
}

pub struct HttpRunner {
    client: reqwest::Client,
    allowed_hosts: BTreeSet<String>,
    output_limit: usize,
}

/// Why a request was refused before it was sent; a `rejected` result.
pub fn check_allowed(url: &reqwest::Url, allowed: &BTreeSet<String>) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", url.scheme()));
    }
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    let with_port = url
        .port_or_known_default()
        .map(|p| format!("{host}:{p}"))
        .unwrap_or_default();
    if allowed.contains(&host) || allowed.contains(&with_port) {
        Ok(())
    } else {
        Err(format!("host `{host}` is not in HTTP_ALLOWED_HOSTS"))
    }
}

impl HttpRunner {
    pub fn new(allowed_hosts: BTreeSet<String>, output_limit: usize) -> Result<Self, HttpError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(HttpError::Client)?;
        Ok(HttpRunner {
            client,
            allowed_hosts,
            output_limit,
        })
    }

    pub async fn run(&self, req: &HttpRequest<'_>, timeout: Duration) -> Outcome {
        let url = match reqwest::Url::parse(req.url) {
            Ok(url) => url,
            Err(error) => {
                return Outcome::with_error(
                    TaskStatus::Rejected,
                    format!("invalid URL `{}`: {error}", req.url),
                );
            }
        };
        if let Err(reason) = check_allowed(&url, &self.allowed_hosts) {
            return Outcome::with_error(TaskStatus::Rejected, reason);
        }
        let method = match reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                return Outcome::with_error(
                    TaskStatus::Rejected,
                    format!("invalid HTTP method `{}`", req.method),
                );
            }
        };
        let mut builder = self.client.request(method, url).timeout(timeout);
        for (name, value) in req.headers {
            builder = builder.header(name, value);
        }
        if let Some(key) = req.idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        if let Some(body) = req.body {
            builder = builder.body(body.to_owned());
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(error) if error.is_timeout() => {
                return Outcome::with_error(TaskStatus::TimedOut, timeout_message(timeout));
            }
            Err(error) if error.is_builder() => {
                return Outcome::with_error(
                    TaskStatus::Rejected,
                    format!("invalid request: {error}"),
                );
            }
            Err(error) => {
                return Outcome::with_error(TaskStatus::Failed, format!("request failed: {error}"));
            }
        };
        let code = response.status().as_u16();
        let (bytes, truncated) = match read_body(response, self.output_limit).await {
            Ok(b) => b,
            Err(error) if error.is_timeout() => {
                return Outcome::with_error(TaskStatus::TimedOut, timeout_message(timeout));
            }
            Err(error) => {
                return Outcome::with_error(
                    TaskStatus::Failed,
                    format!("failed to read the response: {error}"),
                );
            }
        };
        let ok = (200..300).contains(&code);
        Outcome {
            status: if ok {
                TaskStatus::Succeeded
            } else {
                TaskStatus::Failed
            },
            code: Some(i32::from(code)),
            output: String::from_utf8_lossy(&bytes).into_owned(),
            stderr: String::new(),
            truncated,
            error: (!ok).then(|| format!("HTTP status {code}")),
        }
    }
}

/// Reads at most `limit` bytes of the body and drops the rest unread.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut kept = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            return Ok((kept, true));
        }
    }
    Ok((kept, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(hosts: &[&str]) -> BTreeSet<String> {
        hosts.iter().map(|h| h.to_string()).collect()
    }

    #[test]
    fn allow_list_matches_host_or_host_and_port() {
        let url = |s| reqwest::Url::parse(s).unwrap();
        let list = allowed(&["api.example.com", "127.0.0.1:8000"]);
        assert!(check_allowed(&url("https://API.example.com/x"), &list).is_ok());
        assert!(check_allowed(&url("http://127.0.0.1:8000/"), &list).is_ok());
        assert!(check_allowed(&url("http://127.0.0.1:9000/"), &list).is_err());
        assert!(check_allowed(&url("http://evil.example.com/"), &list).is_err());
        assert!(check_allowed(&url("file:///etc/passwd"), &list).is_err());
        assert!(check_allowed(&url("http://api.example.com/"), &allowed(&[])).is_err());
    }
}
