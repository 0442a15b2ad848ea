//! Waiting for AWS to finish: polling with backoff, progress, fail fast.
//!
//! The caller sets the timeout ([`WaitOptions`]), as the style asks: a
//! cluster may take 25 minutes, a node group 20, a NAT gateway a few. Each
//! poll reports the observed status through a callback; a terminal failure
//! status (EKS `FAILED`, NAT `failed`) ends the wait at once with AWS's reason.
//!
//! Cancellation: dropping the future stops polling; nothing is left half-done
//! because waiting never mutates.

use crate::error::{AwsError, ErrorKind, Result};
use std::future::Future;
use std::time::{Duration, Instant};

/// How long and how often to poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    pub timeout: Duration,
    /// First pause between polls; it grows by half each time.
    pub initial_interval: Duration,
    pub max_interval: Duration,
}

impl WaitOptions {
    /// `timeout` with AWS-friendly intervals (5 s growing to 30 s).
    pub fn new(timeout: Duration) -> Self {
        WaitOptions {
            timeout,
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
        }
    }

    /// Short intervals, for emulators and tests.
    pub fn fast(timeout: Duration) -> Self {
        WaitOptions {
            timeout,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
        }
    }
}

/// One observation while waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// What is awaited, e.g. `cluster task-system-production`.
    pub resource: String,
    /// AWS's status, e.g. `CREATING`.
    pub status: String,
    pub elapsed: Duration,
}

/// What one poll saw.
#[derive(Debug)]
pub enum Poll<T> {
    Ready(T),
    /// Not yet; the status to report.
    Pending(String),
    /// A terminal failure, with AWS's reason.
    Failed(String),
}

/// How long a new resource may stay invisible to the calls that follow its
/// create call (EC2 and IAM are eventually consistent).
pub const SETTLE: Duration = Duration::from_secs(30);

/// Runs `op`, again while AWS says "not found", for at most [`SETTLE`]: the
/// calls right after a create may not see the new resource yet. Used only
/// on the path right after a create call, where "not found" cannot mean
/// "deleted".
pub(crate) async fn settle<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    let mut interval = Duration::from_millis(250);
    loop {
        match op().await {
            Err(e) if e.is_not_found() && started.elapsed() + interval < SETTLE => {
                tracing::debug!(provider = "aws", operation = %e.operation, "new resource not visible yet");
                tokio::time::sleep(interval).await;
                interval = (interval * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Polls `check` until it is ready, fails, or the timeout passes.
pub(crate) async fn until<T, F, Fut>(
    resource: &str,
    options: WaitOptions,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    let started = Instant::now();
    let mut interval = options.initial_interval;
    loop {
        let outcome = match check().await {
            Ok(outcome) => outcome,
            // A throttle while waiting is no reason to give up the wait.
            Err(e) if e.is_retryable() => Poll::Pending(format!("retrying after {}", e.kind)),
            Err(e) => return Err(e),
        };
        let elapsed = started.elapsed();
        match outcome {
            Poll::Ready(value) => return Ok(value),
            Poll::Failed(reason) => {
                return Err(AwsError::new(
                    ErrorKind::Other,
                    format!("wait for {resource}"),
                    reason,
                ));
            }
            Poll::Pending(status) => {
                tracing::debug!(provider = "aws", resource, status = %status, elapsed_s = elapsed.as_secs(), "waiting");
                on_progress(&Progress {
                    resource: resource.to_owned(),
                    status: status.clone(),
                    elapsed,
                });
                if elapsed + interval > options.timeout {
                    return Err(AwsError::new(
                        ErrorKind::Transient,
                        format!("wait for {resource}"),
                        format!(
                            "timed out after {}s; last status {status}",
                            elapsed.as_secs()
                        ),
                    ));
                }
            }
        }
        tokio::time::sleep(interval).await;
        interval = (interval + interval / 2).min(options.max_interval);
    }
}

/// The message of a terminal EKS status: the status and AWS's reasons.
pub fn failed_status(status: &str, issues: &[String]) -> String {
    let reasons = if issues.is_empty() {
        "no reason given".to_owned()
    } else {
        issues.join("; ")
    };
    format!("status {status}: {reasons}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(timeout_ms: u64) -> WaitOptions {
        WaitOptions {
            timeout: Duration::from_millis(timeout_ms),
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn reports_progress_until_ready() {
        let polls = AtomicU32::new(0);
        let mut seen = Vec::new();
        let value = until(
            "cluster c",
            quick(5_000),
            &mut |p: &Progress| seen.push(p.status.clone()),
            || async {
                Ok(match polls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Poll::Pending("CREATING".to_owned()),
                    _ => Poll::Ready(7),
                })
            },
        )
        .await;
        assert_eq!(value.ok(), Some(7));
        assert_eq!(seen, ["CREATING", "CREATING"]);
    }

    #[tokio::test]
    async fn fails_fast_with_the_reason() {
        let polls = AtomicU32::new(0);
        let result: Result<()> = until(
            "cluster c",
            quick(60_000),
            &mut |_: &Progress| {},
            || async {
                polls.fetch_add(1, Ordering::SeqCst);
                Ok(Poll::Failed(
                    "status FAILED: SubnetNotFound: subnet-1".to_owned(),
                ))
            },
        )
        .await;
        let err = result.expect_err("failed");
        assert_eq!(polls.load(Ordering::SeqCst), 1, "no second poll");
        assert_eq!(err.operation, "wait for cluster c");
        assert!(err.message.contains("SubnetNotFound"), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn times_out_with_the_last_status() {
        let result: Result<()> = until(
            "node group g",
            quick(20),
            &mut |_: &Progress| {},
            || async { Ok(Poll::Pending("UPDATING".to_owned())) },
        )
        .await;
        let err = result.expect_err("timeout");
        assert!(
            err.message.contains("timed out") && err.message.contains("UPDATING"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn settle_retries_only_not_found() {
        let calls = AtomicU32::new(0);
        let value = settle(|| async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(AwsError::new(
                    ErrorKind::NotFound,
                    "ModifyVpcAttribute",
                    "no vpc yet",
                )),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(value.ok(), Some(1));
        let calls = AtomicU32::new(0);
        let denied: Result<()> = settle(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(AwsError::new(ErrorKind::Denied, "CreateTags", "no"))
        })
        .await;
        assert!(denied.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_throttle_while_waiting_is_not_fatal() {
        let polls = AtomicU32::new(0);
        let value = until("nat n", quick(5_000), &mut |_: &Progress| {}, || async {
            if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(AwsError::new(
                    ErrorKind::Throttled,
                    "DescribeNatGateways",
                    "slow down",
                ))
            } else {
                Ok(Poll::Ready(()))
            }
        })
        .await;
        assert!(value.is_ok());
    }
}
