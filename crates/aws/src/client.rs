//! The AWS clients, built once from the environment.
//!
//! [`Aws::from_env`] follows the SDK's standard configuration: the credential
//! chain (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, SSO, IMDS …), and the endpoint
//! variables `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>`, which is how
//! taskctl is pointed at an emulator such as moto: there is no test-only path.
//! Retries use the SDK's standard mode (throttling and 5xx, with backoff).
//!
//! Every client carries the same [`CallLog`] interceptor.

use crate::call_log::CallLog;
use crate::error::{AwsError, ErrorKind, Result};
use aws_config::BehaviorVersion;
use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;

/// Maximum attempts of one call (first try included) in standard retry mode.
const MAX_ATTEMPTS: u32 = 5;

/// The SDK's standard configuration (credential chain, `AWS_ENDPOINT_URL`,
/// standard retries), in `region` if given, else in the one the environment
/// names (`AWS_REGION`, the profile's `region`).
pub(crate) async fn sdk_config(region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    loader.load().await
}

/// The EC2, EKS, IAM, KMS and STS clients of one region.
#[derive(Debug, Clone)]
pub struct Aws {
    pub(crate) ec2: aws_sdk_ec2::Client,
    pub(crate) ecr: aws_sdk_ecr::Client,
    pub(crate) eks: aws_sdk_eks::Client,
    pub(crate) iam: aws_sdk_iam::Client,
    pub(crate) kms: aws_sdk_kms::Client,
    pub(crate) sts: aws_sdk_sts::Client,
    pub(crate) config: SdkConfig,
    region: String,
    calls: CallLog,
}

impl Aws {
    /// Loads the SDK's default configuration for `region`.
    pub async fn from_env(region: &str) -> Result<Aws> {
        if region.trim().is_empty() {
            return Err(AwsError::new(
                ErrorKind::Invalid,
                "configure AWS clients",
                "no region given",
            ));
        }
        Ok(Aws::from_config(sdk_config(Some(region)).await))
    }

    /// Builds the clients from an SDK configuration loaded elsewhere.
    pub fn from_config(config: SdkConfig) -> Aws {
        let calls = CallLog::new();
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&config)
                .interceptor(calls.clone())
                .build(),
        );
        let ecr = aws_sdk_ecr::Client::from_conf(
            aws_sdk_ecr::config::Builder::from(&config)
                .interceptor(calls.clone())
                .build(),
        );
        let eks = aws_sdk_eks::Client::from_conf(
            aws_sdk_eks::config::Builder::from(&config)
                .interceptor(calls.clone())
                .build(),
        );
        let iam = aws_sdk_iam::Client::from_conf(
            aws_sdk_iam::config::Builder::from(&config)
                .interceptor(calls.clone())
                .build(),
        );
        let kms = aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(&config)
                .interceptor(calls.clone())
                .build(),
        );
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(&config)
                .interceptor(calls.clone())
                .build(),
        );
        let region = config
            .region()
            .map(|r| r.as_ref().to_owned())
            .unwrap_or_default();
        Aws {
            ec2,
            ecr,
            eks,
            iam,
            kms,
            sts,
            config,
            region,
            calls,
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The account these credentials act in and its partition (`aws`,
    /// `aws-cn`, …), from one `GetCallerIdentity`.
    pub async fn caller_account(&self) -> Result<(String, String)> {
        let me = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetCallerIdentity", e))?;
        let partition = me
            .arn()
            .and_then(|a| a.split(':').nth(1))
            .filter(|p| !p.is_empty())
            .unwrap_or("aws")
            .to_owned();
        Ok((me.account().unwrap_or_default().to_owned(), partition))
    }

    /// The log of every call made through these clients.
    pub fn call_log(&self) -> &CallLog {
        &self.calls
    }

    pub fn ec2(&self) -> &aws_sdk_ec2::Client {
        &self.ec2
    }

    pub fn eks(&self) -> &aws_sdk_eks::Client {
        &self.eks
    }

    pub fn iam(&self) -> &aws_sdk_iam::Client {
        &self.iam
    }

    pub fn kms(&self) -> &aws_sdk_kms::Client {
        &self.kms
    }

    pub fn sts(&self) -> &aws_sdk_sts::Client {
        &self.sts
    }

    /// The SDK configuration the clients were built from (credentials
    /// provider, region, endpoint).
    pub fn sdk_config(&self) -> &SdkConfig {
        &self.config
    }
}
