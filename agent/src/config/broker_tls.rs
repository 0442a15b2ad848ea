//! `BROKER_CA_FILE` (or `BROKER_CA`, the PEM itself), `BROKER_CLIENT_CERT_FILE`,
//! `BROKER_CLIENT_KEY_FILE`.

use std::path::{Path, PathBuf};

use super::reader::*;

use crate::tls::{self, BrokerTls, ClientIdentity, TlsSetupError};

// ---------------------------------------------------------------- broker TLS
//
// BROKER_CA_FILE, BROKER_CLIENT_CERT_FILE and BROKER_CLIENT_KEY_FILE are
// paths, not secrets (so they have no `_FILE` form of their own); the files
// are read and parsed here, at start-up, so a wrong path or a file that is not
// PEM stops the agent before it binds a port rather than at its first
// connection. The key file's content is secret: no problem quotes any file
// content (see `tls`).

/// The broker TLS variables, each the path of a PEM file.
pub const TLS_VARIABLES: [&str; 3] = [
    "BROKER_CA_FILE",
    "BROKER_CLIENT_CERT_FILE",
    "BROKER_CLIENT_KEY_FILE",
];

impl Reader<'_> {
    /// Reads the PEM file at `path` (the value of `name`) and parses it with
    /// `parse`; a problem naming the variable and the path otherwise.
    pub(super) fn pem_file<T>(
        &mut self,
        name: &'static str,
        path: &str,
        what: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let content = match (self.read_file)(Path::new(path)) {
            Ok(content) => content,
            Err(error) => {
                self.problem(
                    name,
                    format!(
                        "expected a readable PEM file of {what}, cannot read `{path}`: {error}"
                    ),
                );
                return None;
            }
        };
        match parse(&content) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                self.problem(
                    name,
                    format!("expected a PEM file of {what}, but `{path}` is not one: {reason}"),
                );
                None
            }
        }
    }

    /// The TLS set-up the three variables ask for, `None` when none is set
    /// or when there is a problem (reported).
    pub(super) fn broker_tls(&mut self, broker_url: &str) -> Option<BrokerTls> {
        let [ca_path, cert_path, key_path] = TLS_VARIABLES.map(|name| self.env(name));
        // The CA bundle itself rather than its path: what a Kubernetes
        // `secretKeyRef` gives (the docker target delivers it as a file).
        let ca_inline = self.env("BROKER_CA");
        if ca_path.is_none() && ca_inline.is_none() && cert_path.is_none() && key_path.is_none() {
            return None;
        }
        let mut valid = true;
        if ca_inline.is_some() && ca_path.is_some() {
            self.problem(
                "BROKER_CA",
                "expected BROKER_CA (the PEM itself) or BROKER_CA_FILE (its path), not both",
            );
            valid = false;
        }
        if ca_inline.is_some() && broker_url.starts_with("amqp://") {
            self.problem(
                "BROKER_CA",
                "expected an amqps:// BROKER_URL when BROKER_CA is set; \
                 an amqp:// URL does not use TLS",
            );
            valid = false;
        }

        // Only an amqps:// URL uses TLS; with amqp:// these would be ignored
        // and the connection silently unencrypted.
        if broker_url.starts_with("amqp://") {
            for (name, path) in TLS_VARIABLES.iter().zip([&ca_path, &cert_path, &key_path]) {
                if path.is_some() {
                    self.problem(
                        name,
                        format!(
                            "expected an amqps:// BROKER_URL when {name} is set; \
                             an amqp:// URL does not use TLS"
                        ),
                    );
                }
            }
            valid = false;
        }

        // A client certificate needs its key and a key its certificate.
        match (&cert_path, &key_path) {
            (Some(_), None) => {
                self.problem(
                    "BROKER_CLIENT_KEY_FILE",
                    "expected the client certificate's private key too: \
                     BROKER_CLIENT_CERT_FILE is set, and mutual TLS needs both or neither",
                );
                valid = false;
            }
            (None, Some(_)) => {
                self.problem(
                    "BROKER_CLIENT_CERT_FILE",
                    "expected the client certificate too: \
                     BROKER_CLIENT_KEY_FILE is set, and mutual TLS needs both or neither",
                );
                valid = false;
            }
            _ => {}
        }

        let roots = match (&ca_path, &ca_inline) {
            (None, Some(pem)) => match tls::parse_roots(pem) {
                Ok(roots) => Some((PathBuf::from("BROKER_CA"), roots)),
                Err(reason) => {
                    self.problem(
                        "BROKER_CA",
                        format!("expected PEM CA certificates, but it is not: {reason}"),
                    );
                    valid = false;
                    None
                }
            },
            (Some(path), _) => {
                let roots =
                    self.pem_file("BROKER_CA_FILE", path, "CA certificates", tls::parse_roots);
                valid &= roots.is_some();
                roots.map(|roots| (PathBuf::from(path), roots))
            }
            (None, None) => None,
        };
        let chain = cert_path.as_deref().and_then(|path| {
            self.pem_file(
                "BROKER_CLIENT_CERT_FILE",
                path,
                "the client certificate (and its intermediates)",
                tls::parse_certificates,
            )
        });
        let key = key_path.as_deref().and_then(|path| {
            self.pem_file(
                "BROKER_CLIENT_KEY_FILE",
                path,
                "the client certificate's private key",
                tls::parse_private_key,
            )
        });
        valid &= chain.is_some() == cert_path.is_some() && key.is_some() == key_path.is_some();
        if !valid {
            return None;
        }

        let identity = match (chain, key, &cert_path) {
            (Some(chain), Some(key), Some(path)) => {
                Some((PathBuf::from(path), ClientIdentity::new(chain, key)))
            }
            _ => None,
        };
        match BrokerTls::new(roots, identity) {
            Ok(tls) => Some(tls),
            Err(TlsSetupError::ClientKey(reason)) => {
                self.problem(
                    "BROKER_CLIENT_KEY_FILE",
                    format!(
                        "expected the private key of the certificate in BROKER_CLIENT_CERT_FILE \
                         (`{}`), but `{}` is not usable with it: {reason}",
                        cert_path.unwrap_or_default(),
                        key_path.unwrap_or_default()
                    ),
                );
                None
            }
            Err(TlsSetupError::Other(reason)) => {
                let name = if ca_inline.is_some() {
                    "BROKER_CA"
                } else if ca_path.is_some() {
                    "BROKER_CA_FILE"
                } else {
                    "BROKER_CLIENT_CERT_FILE"
                };
                self.problem(name, format!("expected a usable TLS set-up: {reason}"));
                None
            }
        }
    }
}

/// The broker TLS variables (`BROKER_CA_FILE`, `BROKER_CLIENT_CERT_FILE`,
/// `BROKER_CLIENT_KEY_FILE`), with certificates made by rcgen.
#[cfg(test)]
mod tests {
    use std::{collections::HashMap, io};

    use crate::config::Config;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use super::*;

    /// A CA: its certificate (PEM) and its issuer, to sign leaves.
    pub(super) fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(params, key))
    }

    /// A client certificate signed by `issuer` and its key (both PEM).
    pub(super) fn client(issuer: &Issuer<'static, KeyPair>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "agent");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub(super) fn config_with_files(
        vars: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Not about signing: any valid key.
        map.entry("TASK_SIGNING_PUBLIC_KEYS".into())
            .or_insert_with(|| "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into());
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        Config::from_sources(&move |name| map.get(name).cloned(), &move |path| {
            files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
        })
    }

    pub(super) fn variables(err: &ConfigError) -> Vec<&'static str> {
        err.0.iter().map(|p| p.variable).collect()
    }

    const AMQPS: (&str, &str) = ("BROKER_URL", "amqps://u:p@rabbitmq:5671/%2f");

    #[test]
    pub(super) fn without_tls_variables_there_is_no_tls_setup() {
        for url in ["amqp://h", "amqps://h"] {
            let c = config_with_files(&[("BROKER_URL", url)], &[]).unwrap();
            assert!(c.broker_tls.is_none());
        }
    }

    #[test]
    pub(super) fn tls_ca_file_is_the_only_trust_and_is_read_at_startup() {
        let (ca1, _) = ca("first CA");
        let (ca2, _) = ca("second CA");
        let bundle = format!("{ca1}{ca2}");
        let c = config_with_files(
            &[AMQPS, ("BROKER_CA_FILE", "/etc/tls/ca.pem")],
            &[("/etc/tls/ca.pem", &bundle)],
        )
        .unwrap();
        let tls = c.broker_tls.as_ref().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/tls/ca.pem")));
        assert_eq!(tls.ca_certificates, 2);
        assert!(tls.client_cert_file.is_none());
    }

    /// `BROKER_CA` is the bundle itself (a Kubernetes `secretKeyRef`);
    /// never together with `BROKER_CA_FILE`, never with amqp://, and a
    /// bundle that is not PEM is named without being quoted.
    #[test]
    pub(super) fn an_inline_ca_bundle_is_the_only_trust_too() {
        let (ca1, _) = ca("first CA");
        let (ca2, _) = ca("second CA");
        let bundle = format!("{ca1}{ca2}");
        let c = config_with_files(&[AMQPS, ("BROKER_CA", &bundle)], &[]).unwrap();
        let tls = c.broker_tls.as_ref().unwrap();
        assert_eq!(tls.ca_certificates, 2);

        let err = config_with_files(
            &[AMQPS, ("BROKER_CA", &bundle), ("BROKER_CA_FILE", "/ca")],
            &[("/ca", &ca1)],
        )
        .unwrap_err();
        assert!(variables(&err).contains(&"BROKER_CA"), "{err}");
        let err = config_with_files(
            &[
                ("BROKER_URL", "amqp://u:p@rabbitmq:5672/%2f"),
                ("BROKER_CA", &bundle),
            ],
            &[],
        )
        .unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CA"]);
        let err =
            config_with_files(&[AMQPS, ("BROKER_CA", "secret-looking text")], &[]).unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CA"]);
        assert!(!err.to_string().contains("secret-looking"), "{err}");
    }

    #[test]
    pub(super) fn tls_variables_with_an_amqp_url_are_refused() {
        let (ca_pem, issuer) = ca("CA");
        let (cert, key) = client(&issuer);
        let files = [("/ca", ca_pem.as_str()), ("/cert", &cert), ("/key", &key)];
        let err = config_with_files(
            &[
                ("BROKER_URL", "amqp://u:p@rabbitmq:5672/%2f"),
                ("BROKER_CA_FILE", "/ca"),
            ],
            &files,
        )
        .unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CA_FILE"]);
        assert!(
            err.to_string().contains(
                "BROKER_CA_FILE: expected an amqps:// BROKER_URL when BROKER_CA_FILE is set"
            ),
            "{err}"
        );

        // Each variable set is named.
        let err = config_with_files(
            &[
                ("BROKER_URL", "amqp://h"),
                ("BROKER_CA_FILE", "/ca"),
                ("BROKER_CLIENT_CERT_FILE", "/cert"),
                ("BROKER_CLIENT_KEY_FILE", "/key"),
            ],
            &files,
        )
        .unwrap_err();
        assert_eq!(variables(&err), TLS_VARIABLES);
        assert!(
            err.to_string().contains(
                "BROKER_CLIENT_KEY_FILE: expected an amqps:// BROKER_URL when BROKER_CLIENT_KEY_FILE is set"
            ),
            "{err}"
        );
    }

    #[test]
    pub(super) fn tls_client_certificate_and_key_go_together() {
        let (ca_pem, issuer) = ca("CA");
        let (cert, key) = client(&issuer);
        let files = [("/ca", ca_pem.as_str()), ("/cert", &cert), ("/key", &key)];

        let err =
            config_with_files(&[AMQPS, ("BROKER_CLIENT_CERT_FILE", "/cert")], &files).unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CLIENT_KEY_FILE"]);
        assert!(err.to_string().contains("both or neither"), "{err}");

        let err =
            config_with_files(&[AMQPS, ("BROKER_CLIENT_KEY_FILE", "/key")], &files).unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CLIENT_CERT_FILE"]);

        // Both, with or without a private CA.
        for ca_var in [None, Some(("BROKER_CA_FILE", "/ca"))] {
            let mut vars = vec![
                AMQPS,
                ("BROKER_CLIENT_CERT_FILE", "/cert"),
                ("BROKER_CLIENT_KEY_FILE", "/key"),
            ];
            vars.extend(ca_var);
            let c = config_with_files(&vars, &files).unwrap();
            let tls = c.broker_tls.as_ref().unwrap();
            assert_eq!(tls.client_cert_file.as_deref(), Some(Path::new("/cert")));
            assert_eq!(tls.ca_file.is_some(), ca_var.is_some());
            // Nothing of the key shows in the configuration's Debug.
            let shown = format!("{c:?}");
            let key_body: String = key.lines().nth(1).unwrap().chars().take(20).collect();
            assert!(!shown.contains(&key_body), "{shown}");
        }
    }

    #[test]
    pub(super) fn tls_files_unreadable_or_not_pem_name_the_variable_and_the_path() {
        let (ca_pem, issuer) = ca("CA");
        let (cert, key) = client(&issuer);

        let err =
            config_with_files(&[AMQPS, ("BROKER_CA_FILE", "/missing/ca.pem")], &[]).unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CA_FILE"]);
        assert!(
            err.to_string().contains(
                "BROKER_CA_FILE: expected a readable PEM file of CA certificates, \
                 cannot read `/missing/ca.pem`: No such file or directory"
            ),
            "{err}"
        );

        let err = config_with_files(
            &[AMQPS, ("BROKER_CA_FILE", "/ca")],
            &[("/ca", "just some text\n")],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "BROKER_CA_FILE: expected a PEM file of CA certificates, but `/ca` is not one: \
                 no `-----BEGIN CERTIFICATE-----` block found"
            ),
            "{err}"
        );

        // A key where the CA belongs: not a certificate.
        let err =
            config_with_files(&[AMQPS, ("BROKER_CA_FILE", "/ca")], &[("/ca", &key)]).unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CA_FILE"]);

        // A broken key file: the error says so without quoting it.
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA$$$";
        let broken = format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n");
        for content in [broken.as_str(), "", &cert] {
            let err = config_with_files(
                &[
                    AMQPS,
                    ("BROKER_CLIENT_CERT_FILE", "/cert"),
                    ("BROKER_CLIENT_KEY_FILE", "/key"),
                ],
                &[("/cert", &cert), ("/key", content)],
            )
            .unwrap_err();
            assert_eq!(variables(&err), ["BROKER_CLIENT_KEY_FILE"], "{err}");
            let text = err.to_string();
            assert!(text.contains("but `/key` is not one"), "{text}");
            assert!(!text.contains("c2VjcmV0"), "{text}");
            assert!(!text.contains("$$$"), "{text}");
        }

        // Every file problem at once.
        let err = config_with_files(
            &[
                AMQPS,
                ("BROKER_CA_FILE", "/nope1"),
                ("BROKER_CLIENT_CERT_FILE", "/nope2"),
                ("BROKER_CLIENT_KEY_FILE", "/nope3"),
            ],
            &[("/ca", &ca_pem)],
        )
        .unwrap_err();
        assert_eq!(variables(&err), TLS_VARIABLES);
    }

    #[test]
    pub(super) fn tls_client_key_of_another_certificate_is_refused() {
        let (_, issuer) = ca("CA");
        let (cert, _) = client(&issuer);
        let (_, other_key) = client(&issuer);
        let err = config_with_files(
            &[
                AMQPS,
                ("BROKER_CLIENT_CERT_FILE", "/cert"),
                ("BROKER_CLIENT_KEY_FILE", "/key"),
            ],
            &[("/cert", &cert), ("/key", &other_key)],
        )
        .unwrap_err();
        assert_eq!(variables(&err), ["BROKER_CLIENT_KEY_FILE"]);
        let text = err.to_string();
        assert!(
            text.contains(
                "expected the private key of the certificate in BROKER_CLIENT_CERT_FILE (`/cert`)"
            ),
            "{text}"
        );
    }
}
