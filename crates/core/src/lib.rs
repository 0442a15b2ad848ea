//! taskctl's core: everything that is not a provider.
//!
//! - [`profile`]: reading, layering, typing and validating profiles; start at
//!   [`profile::load`].
//! - [`diagnostic`]: problems with their file, line and column.
//! - [`engine`]: the step graph and its plan, apply and destroy; providers
//!   implement [`engine::Step`].
//! - [`events`]: what the engine reports while it runs.
//! - [`ops`]: the operations (plan, deploy, destroy, status, lock) over a
//!   target's [`ops::Provider`].
//! - [`journal`] and [`state`]: the append-only record of changes, the
//!   environment lock and the audit log.
//! - [`release`]: numbered records of what each deploy put on a target.
//!
//! This crate must not depend on the AWS SDK, kube or bollard: providers live
//! in their own crates so that this one, and its tests, build fast.

pub mod diagnostic;
pub mod engine;
pub mod events;
pub mod journal;
pub mod ops;
pub mod profile;
pub mod release;
pub mod secrets;
pub mod state;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
