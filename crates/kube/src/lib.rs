//! taskctl's Kubernetes layer: the manifests of the Task Execution Layer,
//! rendered from a profile and checked against the Kubernetes schema, and
//! the readiness of applied objects.
//!
//! Where to start:
//! - [`render()`]: profile + templates directory → [`Manifest`]s in apply
//!   order ([`ApplyLevel`]). The render context is a [`view::View`] built
//!   from the typed profile; templates are Handlebars in strict mode, with
//!   the helpers of [`template_helpers`].
//! - [`check()`]: one manifest against its `k8s-openapi` type, failing on
//!   any field the type does not know.
//! - [`readiness`]: pure functions saying why an object is not ready yet.
//!
//! - [`provider::KubernetesProvider`]: the `kubernetes` target: one engine
//!   step per apply level, server-side apply, readiness waits, prune
//!   ([`provider`]), releases kept as Secrets in the cluster ([`release`]),
//!   one deploy at a time per environment through a Lease ([`lock`]).
//! - [`verify`]: the verification gates and automatic-rollback conditions
//!   after a rollout, reaching the pods through port-forwards
//!   ([`forward`]) over the API server.
//! - [`secrets`]: the Secrets the workloads reference, made from Vault (or
//!   the environment) at deploy time, and the checksum annotation that rolls
//!   a workload when a secret it uses gets a new version.
//!
//! Rendering, checking and readiness do no I/O beyond reading the
//! templates; [`cluster`] is where the `kube` client is used.

pub mod cluster;
pub mod connect;
pub mod diff;
pub mod forward;
pub mod lock;
pub mod manifest;
pub mod provider;
pub mod readiness;
pub mod release;
pub mod render;
pub mod resources;
pub mod schema;
pub mod secrets;
pub mod template_helpers;
pub mod verify;
pub mod view;

pub use connect::{ClientSource, Connect};
/// The `kube` crate this one is built on, so users name the same version.
pub use kube;
pub use manifest::{ApplyLevel, Manifest, to_yaml_stream};
pub use provider::{ExtraAnnotation, KubeOptions, KubernetesProvider};
pub use render::{RenderError, Renderer, Templates, render, render_from};
pub use schema::{SchemaError, check};
