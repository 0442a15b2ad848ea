//! New credentials from the operating system's random source (ring's
//! `SystemRandom`). Letters and digits only, so values need no escaping in
//! URLs, YAML, shell or config files.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use taskctl_secret::Secret;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn fill(buf: &mut [u8]) {
    // SystemRandom reads getrandom(2); it fails only if the kernel has no
    // entropy source at all, which leaves nothing safe to fall back to.
    SystemRandom::new()
        .fill(buf)
        .expect("the operating system's random source failed");
}

/// `len` characters uniformly from `alphabet` (rejection sampling: no modulo bias).
fn from_alphabet(len: usize, alphabet: &[u8]) -> String {
    let n = alphabet.len();
    let limit = 256 - (256 % n); // bytes >= limit would bias the result
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        fill(&mut buf);
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % n] as char);
            }
        }
    }
    out
}

/// A password of `len` letters and digits (32 gives about 190 bits).
pub fn password(len: usize) -> Secret {
    Secret::new(from_alphabet(len, ALNUM))
}

/// An Erlang distribution cookie: 32 uppercase letters (what RabbitMQ generates).
pub fn erlang_cookie() -> Secret {
    Secret::new(from_alphabet(32, UPPER))
}

/// A MongoDB replica set key file: 756 random bytes, base64 (1008 characters,
/// within MongoDB's 6..1024 limit, base64 set only).
pub fn mongodb_keyfile() -> Secret {
    let mut buf = [0u8; 756];
    fill(&mut buf);
    Secret::new(STANDARD.encode(buf))
}

/// A new Ed25519 key pair: (private key, base64 of its PKCS#8 v2 document;
/// public key, base64 of its 32 raw bytes).
pub fn ed25519_keypair() -> (Secret, String) {
    let rng = SystemRandom::new();
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&rng).expect("the operating system's random source failed");
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ring parses the key it generated");
    (
        Secret::new(STANDARD.encode(pkcs8.as_ref())),
        STANDARD.encode(pair.public_key().as_ref()),
    )
}

/// A server certificate and the private CA that signed it, in PEM.
pub struct Tls {
    /// The CA's certificate: what clients trust.
    pub ca_cert: String,
    /// The server's certificate (signed by the CA).
    pub cert: String,
    /// The server's private key (PKCS#8, P-256).
    pub key: Secret,
}

/// A new private CA and a server certificate for `hosts` (DNS names or IP
/// addresses), both valid for `valid_for` from an hour ago (clock skew).
/// The CA's private key is dropped once the certificate is signed: it is
/// never stored, so nobody can issue another certificate under this CA;
/// a rotation makes a new CA (see `managed::Kind::Tls`).
pub fn tls(hosts: &[String], valid_for: std::time::Duration) -> Result<Tls, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    if hosts.is_empty() {
        return Err("a tls secret needs at least one host name or address (`hosts`)".into());
    }
    let not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let not_after = time::OffsetDateTime::now_utc()
        + time::Duration::try_from(valid_for).map_err(|e| format!("validity: {e}"))?;
    let failed = |what: &str, e: rcgen::Error| format!("{what}: {e}");

    let ca_key = KeyPair::generate().map_err(|e| failed("the CA's key", e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| failed("the CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "taskctl private CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| failed("the CA", e))?
        .pem();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(|e| failed("the server's key", e))?;
    let mut server = CertificateParams::new(hosts.to_vec())
        .map_err(|e| failed("the server certificate's names", e))?;
    server
        .distinguished_name
        .push(DnType::CommonName, hosts[0].clone());
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = not_after;
    let cert = server
        .signed_by(&key, &issuer)
        .map_err(|e| failed("the server certificate", e))?
        .pem();
    Ok(Tls {
        ca_cert,
        cert,
        key: Secret::new(key.serialize_pem()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ED25519, UnparsedPublicKey};

    #[test]
    fn a_tls_certificate_names_its_hosts_and_chains_to_its_ca() {
        let hosts = vec!["rabbitmq".to_string(), "127.0.0.1".to_string()];
        let t = tls(&hosts, std::time::Duration::from_secs(86_400)).unwrap();
        assert!(t.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(t.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(t.key.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(t.ca_cert, t.cert);
        // Two calls, two CAs: nothing is shared between generations.
        let again = tls(&hosts, std::time::Duration::from_secs(86_400)).unwrap();
        assert_ne!(again.ca_cert, t.ca_cert);
        assert!(tls(&[], std::time::Duration::from_secs(60)).is_err());
    }

    #[test]
    fn passwords_are_alphanumeric_and_distinct() {
        let a = password(32);
        let b = password(32);
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(!a.same_as(&b));
        assert_eq!(password(0).expose(), "");
        assert_eq!(password(200).expose().len(), 200);
        // All 62 characters turn up in a long enough value (the alphabet is used whole).
        let long = password(5000);
        for c in ALNUM {
            assert!(long.expose().as_bytes().contains(c), "{}", *c as char);
        }
    }

    #[test]
    fn cookie() {
        let c = erlang_cookie();
        assert_eq!(c.expose().len(), 32);
        assert!(c.expose().chars().all(|c| c.is_ascii_uppercase()));
    }

    #[test]
    fn keyfile() {
        let k = mongodb_keyfile();
        assert_eq!(k.expose().len(), 1008);
        assert_eq!(STANDARD.decode(k.expose()).unwrap().len(), 756);
    }

    #[test]
    fn ed25519_signs_and_verifies() {
        let (private, public) = ed25519_keypair();
        let pkcs8 = STANDARD.decode(private.expose()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
        let sig = pair.sign(b"task");
        let pk = STANDARD.decode(&public).unwrap();
        assert_eq!(pk.len(), 32);
        UnparsedPublicKey::new(&ED25519, &pk)
            .verify(b"task", sig.as_ref())
            .unwrap();
        let (other, _) = ed25519_keypair();
        assert!(!other.same_as(&private));
    }
}
