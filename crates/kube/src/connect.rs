//! Where the provider's client comes from.
//!
//! The `kubernetes` target has its cluster before taskctl starts: the client
//! comes from the kubeconfig at once ([`ClientSource::fixed`]). The `aws`
//! target's cluster may not exist until an earlier step of the same run
//! creates it, so its client is made on first use ([`ClientSource::deferred`])
//! by a [`Connect`], from that step's outputs or from the cloud's
//! description of the cluster, and kept for the rest of the run. Until the
//! cluster exists, plans say every object is to be created and destroys
//! have nothing to delete.

use async_trait::async_trait;
use kube::Client;
use std::sync::Arc;
use taskctl_core::engine::{ErrorKind, StepContext, StepError};

/// Makes a client for a cluster that may not exist yet.
#[async_trait]
pub trait Connect: Send + Sync {
    /// A client for the cluster, or `None` while the cluster does not exist.
    /// `ctx` is the calling step's context when a step asks: its
    /// dependencies' outputs may describe the cluster already.
    async fn connect(&self, ctx: Option<&StepContext>) -> Result<Option<Client>, StepError>;
}

/// A client now, or one made when first needed.
#[derive(Clone)]
pub struct ClientSource(Arc<Source>);

enum Source {
    Fixed(Client),
    Deferred {
        connect: Arc<dyn Connect>,
        /// The client once made; a cluster that did not exist is asked
        /// again next time.
        made: tokio::sync::Mutex<Option<Client>>,
    },
}

impl ClientSource {
    pub fn fixed(client: Client) -> ClientSource {
        ClientSource(Arc::new(Source::Fixed(client)))
    }

    pub fn deferred(connect: Arc<dyn Connect>) -> ClientSource {
        ClientSource(Arc::new(Source::Deferred {
            connect,
            made: tokio::sync::Mutex::new(None),
        }))
    }

    /// The client, or `None` while the cluster does not exist.
    pub async fn get(&self, ctx: Option<&StepContext>) -> Result<Option<Client>, StepError> {
        match &*self.0 {
            Source::Fixed(client) => Ok(Some(client.clone())),
            Source::Deferred { connect, made } => {
                let mut made = made.lock().await;
                if made.is_none() {
                    *made = connect.connect(ctx).await?;
                }
                Ok(made.clone())
            }
        }
    }

    /// The client; a cluster that does not exist is an error saying what
    /// needed it.
    pub async fn require(
        &self,
        ctx: Option<&StepContext>,
        what: &str,
    ) -> Result<Client, StepError> {
        self.get(ctx).await?.ok_or_else(|| {
            StepError::new(
                ErrorKind::NotFound,
                format!("{what}: the cluster does not exist yet"),
            )
        })
    }
}

impl From<Client> for ClientSource {
    fn from(client: Client) -> Self {
        ClientSource::fixed(client)
    }
}
