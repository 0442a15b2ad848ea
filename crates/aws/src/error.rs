//! Errors of the AWS provider, mapped once at the provider edge.
//!
//! Every SDK error goes through [`AwsError::from_sdk`], which turns AWS's error
//! code into an [`ErrorKind`] the engine can reason about (retry a throttle,
//! adopt on "already exists", stop on "denied") and keeps AWS's request id for
//! support cases.
//!
//! Guarantees: the cause is carried once, in `message`; there is no
//! `#[source]` repeating it, so printing the chain shows it once.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use std::fmt;

/// What went wrong, in terms the engine acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The resource does not exist (or no longer does).
    NotFound,
    /// A resource with this identity exists already.
    AlreadyExists,
    /// AWS asked us to slow down; retry with backoff.
    Throttled,
    /// Credentials are missing, invalid or lack a permission.
    Denied,
    /// The resource is in a state that forbids the call (in use, dependency,
    /// not attached, wrong state); retrying later may succeed.
    Conflict,
    /// A network failure, timeout or server-side error; retry with backoff.
    Transient,
    /// The request itself is wrong (bad parameter, unsupported value).
    Invalid,
    /// Anything else.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Denied => "denied",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Transient => "transient",
            ErrorKind::Invalid => "invalid request",
            ErrorKind::Other => "error",
        })
    }
}

/// An error of an AWS call or of the provider's own checks.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed ({kind}): {message}{}", request_suffix(.request_id))]
pub struct AwsError {
    pub kind: ErrorKind,
    /// The AWS operation (`CreateVpc`) or provider step that failed.
    pub operation: String,
    /// AWS's error code (`InvalidVpcID.NotFound`), when AWS answered.
    pub code: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
}

fn request_suffix(request_id: &Option<String>) -> String {
    match request_id {
        Some(id) => format!(" (request id {id})"),
        None => String::new(),
    }
}

impl AwsError {
    /// An error raised by the provider itself, not by an AWS response.
    pub fn new(kind: ErrorKind, operation: impl Into<String>, message: impl Into<String>) -> Self {
        AwsError {
            kind,
            operation: operation.into(),
            code: None,
            message: message.into(),
            request_id: None,
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::Transient)
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Maps any SDK error of any of the four clients. The one place that
    /// knows AWS error codes.
    pub fn from_sdk<E>(operation: &str, err: SdkError<E, HttpResponse>) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let header_request_id = err.raw_response().and_then(|r| {
            r.headers()
                .get("x-amzn-requestid")
                .or_else(|| r.headers().get("x-amz-request-id"))
                .map(str::to_owned)
        });
        let (kind, code, message, request_id) = match &err {
            SdkError::ServiceError(service) => {
                let meta = service.err().meta();
                let code = meta.code().map(str::to_owned);
                let message = meta
                    .message()
                    .map(str::to_owned)
                    .unwrap_or_else(|| DisplayErrorContext(service.err()).to_string());
                let request_id = meta.extra("aws_request_id").map(str::to_owned);
                let kind = match classify(operation, code.as_deref(), status) {
                    // A role made seconds ago that EKS cannot assume yet (IAM
                    // is eventually consistent): retrying succeeds.
                    ErrorKind::Invalid if is_new_role_not_visible(&message) => ErrorKind::Transient,
                    kind => kind,
                };
                (kind, code, message, request_id.or(header_request_id))
            }
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => (
                ErrorKind::Transient,
                None,
                DisplayErrorContext(&err).to_string(),
                None,
            ),
            SdkError::ResponseError(_) => (
                classify(operation, None, status),
                None,
                DisplayErrorContext(&err).to_string(),
                header_request_id,
            ),
            _ => (
                ErrorKind::Other,
                None,
                DisplayErrorContext(&err).to_string(),
                None,
            ),
        };
        let error = AwsError {
            kind,
            operation: operation.to_owned(),
            code,
            message,
            request_id,
        };
        tracing::debug!(
            provider = "aws",
            operation = %error.operation,
            kind = %error.kind,
            code = error.code.as_deref().unwrap_or(""),
            request_id = error.request_id.as_deref().unwrap_or(""),
            "aws call failed"
        );
        error
    }
}

/// EKS's words for "this role cannot be assumed (yet)".
pub fn is_new_role_not_visible(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("role") && (m.contains("could not be assumed") || m.contains("cannot be assumed"))
}

/// AWS error code (and HTTP status) to kind. Pure, so the table is tested.
pub fn classify(operation: &str, code: Option<&str>, status: Option<u16>) -> ErrorKind {
    let Some(code) = code else {
        return match status {
            Some(429) => ErrorKind::Throttled,
            Some(403) | Some(401) => ErrorKind::Denied,
            Some(404) => ErrorKind::NotFound,
            Some(409) => ErrorKind::Conflict,
            Some(s) if s >= 500 => ErrorKind::Transient,
            _ => ErrorKind::Other,
        };
    };
    match code {
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "SlowDown"
        | "ProvisionedThroughputExceededException"
        | "EC2ThrottledException" => ErrorKind::Throttled,
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "AuthFailure"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "OptInRequired"
        | "MissingAuthenticationToken"
        | "InvalidAccessKeyId" => ErrorKind::Denied,
        "NoSuchEntity"
        | "ResourceNotFoundException"
        | "NotFoundException"
        | "NatGatewayNotFound" => ErrorKind::NotFound,
        // EKS says "in use" both for a name taken on create and for a
        // resource with dependants on delete.
        "ResourceInUseException" if operation.starts_with("Create") => ErrorKind::AlreadyExists,
        "EntityAlreadyExists"
        | "RouteAlreadyExists"
        | "Resource.AlreadyAssociated"
        | "InvalidGroup.Duplicate"
        | "InvalidPermission.Duplicate"
        | "AlreadyExistsException" => ErrorKind::AlreadyExists,
        "DependencyViolation"
        | "ResourceInUseException"
        | "DeleteConflict"
        | "IncorrectState"
        | "InvalidState"
        | "ConcurrentModification"
        | "ConcurrentModificationException"
        | "Gateway.NotAttached"
        | "InvalidIPAddress.InUse"
        | "InvalidNetworkInterface.InUse"
        | "ResourceLimitExceeded"
        | "InvalidGroup.InUse"
        | "IncorrectInstanceState"
        | "KMSInvalidStateException" => ErrorKind::Conflict,
        "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "ServerException"
        | "Unavailable"
        | "InternalServerError"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "ServiceFailure"
        | "KMSInternalException"
        | "DependencyTimeoutException" => ErrorKind::Transient,
        c if c.ends_with(".NotFound")
            || c.ends_with("NotFound")
            || c.ends_with("NotFoundException") =>
        {
            ErrorKind::NotFound
        }
        c if c.ends_with(".Duplicate") || c.contains("AlreadyExists") => ErrorKind::AlreadyExists,
        c if c.ends_with(".InUse") => ErrorKind::Conflict,
        c if c.starts_with("Invalid")
            || c.starts_with("Malformed")
            || c.starts_with("Missing")
            || c.starts_with("Unsupported")
            || c == "ValidationError"
            || c == "ValidationException"
            || c == "LimitExceeded" =>
        {
            ErrorKind::Invalid
        }
        _ => match status {
            Some(s) if s >= 500 => ErrorKind::Transient,
            _ => ErrorKind::Other,
        },
    }
}

/// Results of this crate.
pub type Result<T, E = AwsError> = std::result::Result<T, E>;

/// Runs a tolerant delete: "not found" means the work is done.
pub(crate) fn ignore_not_found(result: Result<()>) -> Result<()> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_common_codes() {
        let c = |op, code| classify(op, Some(code), Some(400));
        assert_eq!(
            c("DescribeVpcs", "InvalidVpcID.NotFound"),
            ErrorKind::NotFound
        );
        assert_eq!(c("GetRole", "NoSuchEntity"), ErrorKind::NotFound);
        assert_eq!(
            c("DescribeCluster", "ResourceNotFoundException"),
            ErrorKind::NotFound
        );
        assert_eq!(
            c("CreateRole", "EntityAlreadyExists"),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            c("CreateCluster", "ResourceInUseException"),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            c("DeleteCluster", "ResourceInUseException"),
            ErrorKind::Conflict
        );
        assert_eq!(
            c(
                "AuthorizeSecurityGroupIngress",
                "InvalidPermission.Duplicate"
            ),
            ErrorKind::AlreadyExists
        );
        assert_eq!(c("DeleteVpc", "DependencyViolation"), ErrorKind::Conflict);
        assert_eq!(c("CreateVpc", "RequestLimitExceeded"), ErrorKind::Throttled);
        assert_eq!(
            c("ListClusters", "ThrottlingException"),
            ErrorKind::Throttled
        );
        assert_eq!(
            c("GetCallerIdentity", "InvalidClientTokenId"),
            ErrorKind::Denied
        );
        assert_eq!(c("CreateVpc", "UnauthorizedOperation"), ErrorKind::Denied);
        assert_eq!(c("CreateVpc", "InvalidParameterValue"), ErrorKind::Invalid);
        assert_eq!(c("CreateVpc", "InternalError"), ErrorKind::Transient);
        assert_eq!(classify("X", None, Some(503)), ErrorKind::Transient);
        assert_eq!(classify("X", None, Some(429)), ErrorKind::Throttled);
        assert_eq!(
            classify("X", Some("Weird"), Some(502)),
            ErrorKind::Transient
        );
    }

    #[test]
    fn a_role_eks_cannot_assume_yet_is_recognised() {
        assert!(is_new_role_not_visible(
            "Role with arn: arn:aws:iam::1:role/x could not be assumed because it does not exist or the trusted entity is not correct"
        ));
        assert!(!is_new_role_not_visible("Subnet subnet-1 does not exist"));
    }

    #[test]
    fn retryable_only_for_throttle_and_transient() {
        for (kind, retry) in [
            (ErrorKind::Throttled, true),
            (ErrorKind::Transient, true),
            (ErrorKind::NotFound, false),
            (ErrorKind::Conflict, false),
            (ErrorKind::Denied, false),
        ] {
            assert_eq!(AwsError::new(kind, "Op", "m").is_retryable(), retry);
        }
    }

    #[test]
    fn display_names_operation_kind_and_request_id_once() {
        let mut e = AwsError::new(ErrorKind::NotFound, "DescribeVpcs", "no such vpc");
        e.request_id = Some("req-1".into());
        assert_eq!(
            e.to_string(),
            "DescribeVpcs failed (not found): no such vpc (request id req-1)"
        );
        assert!(std::error::Error::source(&e).is_none());
    }
}
