//! taskctl's Vault (and OpenBao) client.
//!
//! [`VaultConfig`] reads where the server is and how to authenticate from
//! the environment; [`Vault::connect`] checks the server's health, then the
//! credentials; [`Vault::read`], [`Vault::metadata`] and [`Vault::write`]
//! work on KV version 2 with check-and-set; [`managed`] creates and rotates
//! the secrets taskctl generates itself ([`generate`]); [`sys`] initializes
//! and unseals a raft cluster.
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
pub mod setup;
pub mod sys;

pub use client::{Health, Vault};
pub use config::{Auth, K8S_TOKEN_PATH, VaultConfig, is_loopback};
pub use error::VaultError;
pub use kv::{KvMetadata, KvSecret};
pub use taskctl_secret::Secret;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    fn send<F: std::future::Future + Send>(_: F) {}

    /// The client and its futures can go into `tokio::spawn`.
    #[test]
    fn vault_is_clone_send_sync_and_futures_are_send() {
        clone_send_sync::<Vault>();
        clone_send_sync::<VaultConfig>();
        fn futures(v: &Vault, cfg: VaultConfig, m: &managed::Managed) {
            send(Vault::connect(cfg));
            send(v.read("secret", "p", None));
            send(v.metadata("secret", "p"));
            send(v.write("secret", "p", &Default::default(), Some(0)));
            send(v.health());
            send(managed::ensure(v, m, SystemTime::now(), false));
            send(managed::status(v, m, SystemTime::now()));
        }
        fn sys_futures(http: &reqwest::Client, spec: &sys::ClusterSpec) {
            send(sys::node_status(http, "http://127.0.0.1:8200"));
            send(sys::plan_cluster(http, spec));
            send(sys::ensure_cluster(http, spec));
        }
        let _ = sys_futures;
        let _ = futures;
    }

    #[test]
    fn error_messages_name_what_they_are_about() {
        let cases = [
            (
                VaultError::Sealed {
                    addr: "https://v:8200".into(),
                },
                "https://v:8200",
            ),
            (
                VaultError::Uninitialized {
                    addr: "https://v:8200".into(),
                },
                "https://v:8200",
            ),
            (
                VaultError::BadToken {
                    addr: "https://v:8200".into(),
                },
                "VAULT_TOKEN",
            ),
            (
                VaultError::NotFound {
                    path: "secret/app".into(),
                },
                "secret/app",
            ),
            (
                VaultError::PermissionDenied {
                    path: "secret/app".into(),
                },
                "secret/app",
            ),
            (
                VaultError::CasConflict {
                    path: "secret/app".into(),
                },
                "secret/app",
            ),
            (
                VaultError::KeyMissing {
                    path: "secret/app".into(),
                    key: "pw".into(),
                    keys: vec![],
                },
                "its keys: none",
            ),
        ];
        for (e, want) in cases {
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
