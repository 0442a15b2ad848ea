//! A record of every AWS call the provider's clients make.
//!
//! [`CallLog`] is an SDK interceptor attached to every client built by
//! [`Aws`](crate::Aws). It records `(service, operation)` once per operation
//! (retries of one operation count once), so tests and the engine can prove
//! that a plan, or a second apply of an unchanged profile, made **zero**
//! mutating calls.
//!
//! Guarantees: recording never fails a request; the log is shared by clones.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use std::sync::{Arc, Mutex, PoisonError};

/// One AWS call: the service (`EC2`, `EKS`, `IAM`, `STS`) and operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Call {
    pub service: String,
    pub operation: String,
}

impl Call {
    /// Read-only calls: `Describe*`, `List*`, `Get*`, and ECR's two batch
    /// reads (`BatchGetImage`, `BatchCheckLayerAvailability`). Everything
    /// else changes something (or might).
    pub fn is_mutating(&self) -> bool {
        !(["Describe", "List", "Get"]
            .iter()
            .any(|prefix| self.operation.starts_with(prefix))
            || ["BatchGetImage", "BatchCheckLayerAvailability"].contains(&self.operation.as_str()))
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.service, self.operation)
    }
}

/// The shared log; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl CallLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The calls that are not `Describe*`, `List*` or `Get*`.
    pub fn mutating_calls(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::is_mutating).collect()
    }

    /// Forgets every call so far (between two passes of a test).
    pub fn clear(&self) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn push(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "taskctl-call-log"
    }

    // Not `read_before_execution`: client interceptors run that hook before
    // the operation's configuration (and its `Metadata`) is in the bag.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(meta) = cfg.load::<Metadata>() {
            let call = Call {
                service: meta.service().to_owned(),
                operation: meta.name().to_owned(),
            };
            // `RUST_LOG=taskctl_aws::call_log=trace` shows every call a
            // command makes: how the CLI tests count mutating calls.
            tracing::trace!(
                provider = "aws",
                service = meta.service(),
                operation = meta.name(),
                mutating = call.is_mutating(),
                "aws call"
            );
            self.push(call);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_calls_are_not_mutating() {
        let call = |op: &str| Call {
            service: "EC2".into(),
            operation: op.into(),
        };
        assert!(!call("DescribeVpcs").is_mutating());
        assert!(!call("ListClusters").is_mutating());
        assert!(!call("GetRole").is_mutating());
        assert!(call("CreateVpc").is_mutating());
        assert!(call("AuthorizeSecurityGroupIngress").is_mutating());
        assert!(call("UpdateNodegroupConfig").is_mutating());
    }
}
