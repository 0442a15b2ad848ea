//! taskctl's AWS provider: the VPC, subnets, gateways, route tables,
//! security group, IAM roles, EKS cluster and node groups of an environment.
//!
//! Map of the crate:
//!
//! - [`Aws`] ([`client`]): the EC2, ECR, EKS, IAM, KMS and STS clients, built from the
//!   SDK's standard environment; every client records its calls in a
//!   [`CallLog`] ([`call_log`]).
//! - [`tags`]: the tags every resource carries and is found by.
//! - one module per resource, each with a desired `…Spec`, an observed
//!   `…State`, and `find`, `create`, `update`, `delete` and a pure `diff`:
//!   [`vpc`], [`subnet`], [`internet_gateway`], [`elastic_ip`],
//!   [`nat_gateway`], [`route_table`], [`security_group`], [`iam_role`],
//!   [`cluster`], [`node_group`]; for an in-cluster Vault, its auto-unseal
//!   key [`kms_key`] and the cluster's [`oidc_provider`] its role trusts;
//!   the agent image's repository and the image itself in [`ecr`].
//! - [`stack`]: every spec of a profile ([`StackSpec`]); [`provider`]: the
//!   engine's step graph over them, the one path that plans, applies and
//!   destroys. Start reading here.
//! - [`state`]: [`S3Store`], the S3 state backend (lock, journal, audit log
//!   of an environment in a shared bucket).
//! - [`preflight`](mod@preflight): can this profile be built in this account and region?
//! - [`destroy`](mod@destroy): [`destroy::sweep`], what ends a destroy.
//! - [`wait`]: polling with backoff and progress; [`eks_token`](mod@eks_token): Kubernetes
//!   bearer tokens; [`error`]: the one mapping of SDK errors.
//!
//! Every `create` finds by tags first and tags in the create call itself, so
//! any step may be re-run after a crash without duplicating anything. This
//! crate never prints; it logs through `tracing` with `provider = "aws"`.
//! It depends on `taskctl-core` only for the profile types; the engine in
//! `taskctl-core` must not depend on it (the SDK is large).

pub mod access;
pub mod call_log;
pub mod client;
pub mod cluster;
pub mod destroy;
pub mod diff;
mod ec2_tags;
pub mod ecr;
pub mod eks_token;
pub mod elastic_ip;
pub mod error;
pub mod iam_role;
pub mod internet_gateway;
pub mod kms_key;
pub mod nat_gateway;
pub mod node_group;
pub mod oidc_provider;
pub mod preflight;
pub mod provider;
pub mod route_table;
pub mod security_group;
pub mod stack;
pub mod state;
pub mod subnet;
pub mod tags;
pub mod vpc;
pub mod wait;

pub use call_log::{Call, CallLog};
pub use client::Aws;
pub use destroy::{DestroyOptions, Removed, sweep};
pub use diff::FieldDiff;
pub use eks_token::eks_token;
pub use error::{AwsError, ErrorKind};
pub use preflight::{Finding, preflight};
pub use provider::AwsProvider;
pub use stack::StackSpec;
pub use state::{S3Location, S3Store};
pub use tags::{Environment, Tags};
pub use wait::{Progress, WaitOptions};
