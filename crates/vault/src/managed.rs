//! Secrets taskctl generates and rotates itself: the broker's, databases'
//! and signing keys' credentials, kept in KV v2.

use crate::{Secret, Vault, VaultError, generate};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// The username written into new rabbitmq/mongodb/postgres secrets.
pub const USERNAME: &str = "taskctl";

/// What a managed secret holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// username, password, erlang_cookie
    Rabbitmq,
    /// username, password, keyfile
    Mongodb,
    /// username, password
    Postgres,
    /// password
    Generic,
    /// private_key (base64 PKCS#8), public_key (base64, 32 bytes) and
    /// public_keys: this public key, then the previous version's, one per
    /// line: what verifiers trust, so a rotation rejects nothing signed
    /// with the key it replaces.
    Ed25519,
    /// A server certificate for the entry's `hosts` and the private CA
    /// that signed it (PEM): `cert`, `key`, `ca_cert`, and `ca_certs`
    /// (this CA, then the previous version's: what clients trust, so a
    /// client given the new bundle still reaches a server on the old
    /// certificate), and `hosts` (the names it was made for: a changed
    /// list makes a new certificate). The CA's private key is never stored.
    Tls,
}

/// How long a `tls` secret lasts when the profile gives no rotation: a
/// certificate always expires, so it is always rotated (every 90 days).
pub const TLS_DEFAULT_ROTATION: Duration = Duration::from_secs(90 * 86_400);

impl Kind {
    /// The keys a secret of this kind holds.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Rabbitmq => &["username", "password", "erlang_cookie"],
            Kind::Mongodb => &["username", "password", "keyfile"],
            Kind::Postgres => &["username", "password"],
            Kind::Generic => &["password"],
            Kind::Ed25519 => &["private_key", "public_key", "public_keys"],
            Kind::Tls => &["ca_cert", "ca_certs", "cert", "hosts", "key"],
        }
    }

    /// The key of the public part a rotation keeps trusted (the previous
    /// version's), for kinds that have one.
    fn kept_public(self) -> Option<&'static str> {
        match self {
            Kind::Ed25519 => Some("public_key"),
            Kind::Tls => Some("ca_cert"),
            _ => None,
        }
    }

    /// The keys a rotation keeps: what a running cluster's members use to
    /// recognize each other (RabbitMQ's Erlang cookie, a MongoDB replica
    /// set's keyfile). A new one would reach the members one restart at a
    /// time, and a restarted member could no longer join the others; they
    /// change only when the whole secret is made anew (deleted first).
    fn kept_on_rotation(self) -> &'static [&'static str] {
        match self {
            Kind::Rabbitmq => &["erlang_cookie"],
            Kind::Mongodb => &["keyfile"],
            _ => &[],
        }
    }

    /// New values for `m`; `username` kept when given; `previous_public`
    /// (an `ed25519` secret's public key or a `tls` secret's CA before this
    /// rotation) stays trusted.
    fn generate(
        self,
        m: &Managed,
        username: Option<Secret>,
        previous_public: Option<Secret>,
    ) -> Result<BTreeMap<String, Secret>, VaultError> {
        let user = || username.clone().unwrap_or_else(|| Secret::new(USERNAME));
        let mut m_out = BTreeMap::new();
        let mut put = |k: &str, v: Secret| {
            m_out.insert(k.to_string(), v);
        };
        // This one first, then the previous one when it differs.
        let bundle = |new: &str, separator: &str| match &previous_public {
            Some(old) if old.expose() != new => format!("{new}{separator}{}", old.expose()),
            _ => new.to_string(),
        };
        match self {
            Kind::Rabbitmq => {
                put("username", user());
                put("password", generate::password(32));
                put("erlang_cookie", generate::erlang_cookie());
            }
            Kind::Mongodb => {
                put("username", user());
                put("password", generate::password(32));
                put("keyfile", generate::mongodb_keyfile());
            }
            Kind::Postgres => {
                put("username", user());
                put("password", generate::password(32));
            }
            Kind::Generic => put("password", generate::password(32)),
            Kind::Ed25519 => {
                let (private, public) = generate::ed25519_keypair();
                let trusted = bundle(&public, "\n");
                put("private_key", private);
                put("public_key", Secret::new(public));
                put("public_keys", Secret::new(trusted));
            }
            Kind::Tls => {
                // Valid for two rotation periods: a deploy that is late by
                // a whole period still finds a valid certificate to replace.
                let valid_for = m
                    .rotation()
                    .unwrap_or(TLS_DEFAULT_ROTATION)
                    .saturating_mul(2);
                let t = generate::tls(&m.hosts, valid_for).map_err(|cause| VaultError::Other {
                    what: format!("the tls secret {}/{}", m.mount, m.path),
                    cause,
                })?;
                let trusted = bundle(&t.ca_cert, "");
                put("ca_cert", Secret::new(t.ca_cert));
                put("ca_certs", Secret::new(trusted));
                put("cert", Secret::new(t.cert));
                put("key", t.key);
                put("hosts", Secret::new(m.hosts.join(",")));
            }
        }
        Ok(m_out)
    }
}

/// A secret taskctl owns at `mount/path`, rotated every `rotation` if set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Managed {
    pub mount: String,
    pub path: String,
    pub kind: Kind,
    pub rotation: Option<Duration>,
    /// The username of a new secret ([`USERNAME`] when `None`); a rotation
    /// keeps the one in Vault.
    pub username: Option<String>,
    /// A `tls` secret's server names (DNS names or IP addresses).
    pub hosts: Vec<String>,
}

impl Managed {
    /// The rotation period in force: the profile's, or
    /// [`TLS_DEFAULT_ROTATION`] for a certificate.
    pub fn rotation(&self) -> Option<Duration> {
        match (self.rotation, self.kind) {
            (Some(r), _) => Some(r),
            (None, Kind::Tls) => Some(TLS_DEFAULT_ROTATION),
            (None, _) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Created,
    Rotated,
    Unchanged,
}

/// The state after [`ensure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub version: u64,
    pub created: SystemTime,
    pub action: Action,
}

/// Creates the secret when absent (check-and-set 0), rotates it (new values,
/// check-and-set on the current version, username kept) when `force` or when
/// the current version is older than `rotation` at `now`; else leaves it.
/// A concurrent writer makes this fail with [`VaultError::CasConflict`]
/// rather than overwrite.
pub async fn ensure(
    v: &Vault,
    m: &Managed,
    now: SystemTime,
    force: bool,
) -> Result<Outcome, VaultError> {
    let Some(meta) = live_metadata(v, m).await? else {
        let (version, created) = v
            .write_meta(
                &m.mount,
                &m.path,
                &m.kind
                    .generate(m, m.username.clone().map(Secret::new), None)?,
                Some(0),
            )
            .await?;
        return Ok(Outcome {
            version,
            created,
            action: Action::Created,
        });
    };
    let current = meta.current_version;
    let created = meta.created(current);
    let due = match (created, m.rotation()) {
        (Some(c), Some(r)) => c.checked_add(r).is_none_or(|next| next <= now),
        _ => false,
    };
    // A deleted or destroyed current version has no values to keep using.
    let gone = meta.gone(current) || created.is_none();
    // What the current version holds, when a rotation keeps some of it
    // (the username; an ed25519 key's public half) or when a key the kind
    // now has may be missing (written by an older taskctl).
    let current_data = if gone {
        None
    } else if m.kind.keys().contains(&"username") || m.kind.kept_public().is_some() {
        Some(v.read(&m.mount, &m.path, Some(current)).await?.data)
    } else {
        None
    };
    let incomplete = current_data.as_ref().is_some_and(|d| {
        m.kind.keys().iter().any(|k| !d.contains_key(*k))
            // A certificate for other names than the profile's now.
            || (m.kind == Kind::Tls
                && d.get("hosts").map(|h| h.expose()) != Some(m.hosts.join(",").as_str()))
    });
    if !(force || due || gone || incomplete) {
        return Ok(Outcome {
            version: current,
            created: created.unwrap_or(SystemTime::UNIX_EPOCH),
            action: Action::Unchanged,
        });
    }
    let mut current_data = current_data.unwrap_or_default();
    let username = current_data.remove("username");
    let previous_public = m.kind.kept_public().and_then(|k| current_data.remove(k));
    let mut values = m.kind.generate(m, username, previous_public)?;
    for key in m.kind.kept_on_rotation() {
        if let Some(kept) = current_data.remove(*key) {
            values.insert((*key).to_string(), kept);
        }
    }
    let (version, created) = v
        .write_meta(&m.mount, &m.path, &values, Some(current))
        .await?;
    Ok(Outcome {
        version,
        created,
        action: Action::Rotated,
    })
}

/// The rotation state of a managed secret at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// None when the secret does not exist yet.
    pub version: Option<u64>,
    pub created: Option<SystemTime>,
    /// None without a rotation period (or without a secret).
    pub next_rotation: Option<SystemTime>,
    /// Whether [`ensure`] would write: absent, deleted, or rotation due.
    pub due: bool,
}

pub async fn status(v: &Vault, m: &Managed, now: SystemTime) -> Result<Status, VaultError> {
    let Some(meta) = live_metadata(v, m).await? else {
        return Ok(Status {
            version: None,
            created: None,
            next_rotation: None,
            due: true,
        });
    };
    let current = meta.current_version;
    let created = meta.created(current);
    let next_rotation = match (created, m.rotation()) {
        (Some(c), Some(r)) => c.checked_add(r),
        _ => None,
    };
    let due = meta.gone(current) || created.is_none() || next_rotation.is_some_and(|n| n <= now);
    Ok(Status {
        version: Some(current),
        created,
        next_rotation,
        due,
    })
}

/// Metadata, None when absent (also when all of it was deleted: version 0).
async fn live_metadata(v: &Vault, m: &Managed) -> Result<Option<crate::KvMetadata>, VaultError> {
    Ok(v.metadata(&m.mount, &m.path)
        .await?
        .filter(|meta| meta.current_version > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed(kind: Kind) -> Managed {
        Managed {
            mount: "secret".into(),
            path: "t".into(),
            kind,
            rotation: None,
            username: None,
            hosts: vec!["rabbitmq".into(), "127.0.0.1".into()],
        }
    }

    #[test]
    fn a_rotated_certificate_keeps_the_previous_ca_trusted() {
        let m = managed(Kind::Tls);
        assert_eq!(
            m.rotation(),
            Some(TLS_DEFAULT_ROTATION),
            "certificates always rotate"
        );
        let first = Kind::Tls.generate(&m, None, None).unwrap();
        assert_eq!(first["ca_certs"].expose(), first["ca_cert"].expose());
        assert_eq!(first["hosts"].expose(), "rabbitmq,127.0.0.1");
        let second = Kind::Tls
            .generate(&m, None, Some(first["ca_cert"].clone()))
            .unwrap();
        assert_eq!(
            second["ca_certs"].expose(),
            format!(
                "{}{}",
                second["ca_cert"].expose(),
                first["ca_cert"].expose()
            )
        );
        let no_hosts = Managed {
            hosts: Vec::new(),
            ..m
        };
        assert!(Kind::Tls.generate(&no_hosts, None, None).is_err());
    }

    #[test]
    fn generated_keys_match_kind() {
        for kind in [
            Kind::Rabbitmq,
            Kind::Mongodb,
            Kind::Postgres,
            Kind::Generic,
            Kind::Ed25519,
            Kind::Tls,
        ] {
            let data = kind.generate(&managed(kind), None, None).unwrap();
            let keys: Vec<&str> = data.keys().map(String::as_str).collect();
            let mut want = kind.keys().to_vec();
            want.sort_unstable();
            assert_eq!(keys, want, "{kind:?}");
            if let Some(u) = data.get("username") {
                assert_eq!(u.expose(), USERNAME);
            }
        }
        let kept = Kind::Postgres
            .generate(&managed(Kind::Postgres), Some(Secret::new("app")), None)
            .unwrap();
        assert_eq!(kept["username"].expose(), "app");
    }

    #[test]
    fn a_rotated_signing_key_keeps_the_previous_public_key_trusted() {
        let m = managed(Kind::Ed25519);
        let first = Kind::Ed25519.generate(&m, None, None).unwrap();
        assert_eq!(
            first["public_keys"].expose(),
            first["public_key"].expose(),
            "a new key trusts only itself"
        );
        let second = Kind::Ed25519
            .generate(&m, None, Some(first["public_key"].clone()))
            .unwrap();
        assert_eq!(
            second["public_keys"].expose(),
            format!(
                "{}\n{}",
                second["public_key"].expose(),
                first["public_key"].expose()
            )
        );
        // Only one generation back: the key before the previous one is gone.
        let third = Kind::Ed25519
            .generate(&m, None, Some(second["public_key"].clone()))
            .unwrap();
        assert!(
            !third["public_keys"]
                .expose()
                .contains(first["public_key"].expose())
        );
    }
}
