//! taskctl's Vault (and OpenBao) client.
//!
//! [`VaultConfig`] reads where the server is and how to authenticate from
//! the environment; [`Vault::connect`] checks the server's health, then the
//! credentials; [`Vault::read`], [`Vault::metadata`] and [`Vault::write`]
//! work on KV version 2 with check-and-set; [`managed`] creates and rotates
//! the secrets taskctl generates itself ([`generate`]).
//!
//! Built on `vaultrs`, with direct HTTP calls where it does not fit OpenBao
//! (`sys/health`, `auth/token/lookup-self`). Values are [`Secret`]s: no
//! `Debug`, `Display`, serialization or error message shows them.

mod client;
mod config;
mod error;
pub mod generate;
mod kv;
pub mod managed;

pub use client::{Health, Vault};
pub use config::{Auth, K8S_TOKEN_PATH, VaultConfig, is_loopback};
pub use error::VaultError;
pub use kv::{KvMetadata, KvSecret};
pub use taskctl_secret::Secret;
