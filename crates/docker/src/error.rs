//! The docker target's one error type, by what a caller can do about it.

use taskctl_core::engine::{ErrorKind, StepError};
use taskctl_core::ops::OpsError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    /// The profile asks for something this target cannot run as written:
    /// fix the profile.
    #[error("{0}")]
    Profile(String),
    /// The agent's binary, build context or image cannot be used: build or
    /// name another.
    #[error("{0}")]
    Image(String),
    /// The Docker engine cannot be reached: start it or point
    /// `DOCKER_HOST` at it.
    #[error("{0}")]
    Engine(String),
}

impl From<DockerError> for OpsError {
    fn from(e: DockerError) -> Self {
        OpsError::Provider(e.to_string())
    }
}

impl From<DockerError> for StepError {
    fn from(e: DockerError) -> Self {
        let kind = match e {
            DockerError::Profile(_) | DockerError::Image(_) => ErrorKind::Invalid,
            DockerError::Engine(_) => ErrorKind::Transient,
        };
        StepError::new(kind, e.to_string())
    }
}
