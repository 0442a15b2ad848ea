//! The TCP gate: can a connection be opened to the address?
//!
//! The cheapest proof that a service is listening and reachable from where
//! taskctl runs (published ports, firewall, port-forward). It says nothing
//! about the service's health; the HTTP and functional gates do.

use std::io::ErrorKind;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::{Attempt, seconds};

pub(crate) async fn attempt(addr: &str, budget: Duration) -> Attempt {
    match tokio::time::timeout(budget, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| addr.to_owned());
            Attempt::Pass(format!("connected to {peer}"))
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
