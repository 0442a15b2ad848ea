//! The TCP gate: can a connection be opened to the address?
//!
//! The cheapest proof that a service is listening and reachable from where
//! taskctl runs (published ports, firewall, port-forward). It says nothing
//! about the service's health; the HTTP and functional gates do. A
//! connection closed by the other side within 200 ms does not count: that
//! is how a port-forward reports a pod port nobody listens on.

use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a new connection must stay open to count.
const HOLD: Duration = Duration::from_millis(200);

use crate::{Attempt, seconds};

pub(crate) async fn attempt(addr: &str, budget: Duration) -> Attempt {
    match tokio::time::timeout(budget, TcpStream::connect(addr)).await {
        Ok(Ok(mut stream)) => {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| addr.to_owned());
            // Through a port-forward the local end always accepts; it is
            // the pod's side that refuses, by closing at once. A listening
            // server keeps the connection open (or speaks first).
            let mut byte = [0u8; 1];
            match tokio::time::timeout(HOLD, stream.read(&mut byte)).await {
                Ok(Ok(0)) => Attempt::Retry(format!(
                    "connected to {peer}, but it closed the connection at once (through a port-forward: nothing listens on the pod's port)"
                )),
                Ok(Err(e)) => Attempt::Retry(format!("connected to {peer}, then: {e}")),
                Ok(Ok(_)) | Err(_) => Attempt::Pass(format!("connected to {peer}")),
            }
        }
        // A malformed address will not become valid by waiting.
        Ok(Err(e)) if e.kind() == ErrorKind::InvalidInput => {
            Attempt::Fatal(format!("`{addr}` is not a host:port address ({e})"))
        }
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
            Attempt::Retry("connection refused".to_owned())
        }
        Ok(Err(e)) => Attempt::Retry(format!("cannot connect to {addr}: {e}")),
        Err(_) => Attempt::Retry(format!("no answer from {addr} within {}", seconds(budget))),
    }
}
