//! TLS to the broker with a private CA and an optional client certificate
//! (the agent's `BROKER_CA_FILE`, `BROKER_CLIENT_CERT_FILE`,
//! `BROKER_CLIENT_KEY_FILE`; taskctl's gates and `task send` with the CA
//! bundle the agents are given). One crate, so both sides trust a broker
//! in exactly the same way.
//!
//! Without those variables an `amqps://` URL goes through lapin's own TLS
//! set-up, which trusts the public web roots (webpki-roots). lapin's
//! `OwnedTLSConfig::cert_chain` only *adds* certificates to those roots, so it
//! cannot say "trust this CA and nothing else". With `BROKER_CA_FILE` the agent
//! therefore builds its own rustls `ClientConfig` (only the given CAs as
//! roots; with a client certificate alone, lapin's connector configuration
//! with the web roots plus that certificate) once, at start-up, and hands
//! lapin the connector through `Connection::connector`, lapin's entry point
//! for custom transports: lapin opens the TCP connection as for `amqp://`,
//! the handshake runs with that connector, and every reconnect of the
//! supervisor reuses it.
//!
//! Versions: TLS 1.3 and 1.2 only. rustls implements nothing older (no SSLv3,
//! TLS 1.0 or 1.1), so a broker offering only those fails the handshake; the
//! list is spelled out below all the same.
//!
//! Parsing errors never quote file content: the key file is secret, and a
//! base64 error would echo a piece of it.

use std::{fmt, path::PathBuf, sync::Arc};

use lapin::{
    Connection, ConnectionProperties,
    tcp::{AMQPUriTcpExt, RustlsConnector, RustlsConnectorConfig},
    uri::{AMQPScheme, AMQPUri},
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem, pem::PemObject},
};

/// How the agent talks TLS to the broker when the defaults do not do:
/// validated at start-up, cheap to clone (the rustls config is shared).
#[derive(Clone)]
pub struct BrokerTls {
    /// `BROKER_CA_FILE`: when set, its certificates are the only roots.
    pub ca_file: Option<PathBuf>,
    /// Number of CA certificates read from `ca_file`.
    pub ca_certificates: usize,
    /// `BROKER_CLIENT_CERT_FILE`, when a client certificate is presented.
    pub client_cert_file: Option<PathBuf>,
    connector: RustlsConnector,
}

// Paths and counts only: the connector holds the client's private key.
impl fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerTls")
            .field("ca_file", &self.ca_file)
            .field("ca_certificates", &self.ca_certificates)
            .field("client_cert_file", &self.client_cert_file)
            .finish_non_exhaustive()
    }
}

/// The trust anchors of a PEM bundle of CA certificates.
pub struct Roots {
    store: RootCertStore,
}

/// A client certificate chain and its private key.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// What is wrong with a PEM file, without any of its content.
fn pem_problem(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line",
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64",
        pem::Error::SectionTooLarge => "a PEM block is too large",
        _ => "it is not valid PEM",
    }
}

/// Every `CERTIFICATE` block of `pem`; at least one.
pub fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(&e).to_owned())?;
    if certs.is_empty() {
        return Err("no `-----BEGIN CERTIFICATE-----` block found".to_owned());
    }
    Ok(certs)
}

/// The CA certificates of a PEM bundle, each checked to be usable as a trust
/// anchor.
pub fn parse_roots(pem: &str) -> Result<Roots, String> {
    let mut store = RootCertStore::empty();
    for (i, cert) in parse_certificates(pem)?.into_iter().enumerate() {
        store
            .add(cert)
            .map_err(|e| format!("certificate #{} is not usable as a CA: {e}", i + 1))?;
    }
    Ok(Roots { store })
}

impl Roots {
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file. The error
/// says what is wrong, never what the file holds.
pub fn parse_private_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            "no unencrypted private key block found (`-----BEGIN PRIVATE KEY-----`, \
             `RSA PRIVATE KEY` or `EC PRIVATE KEY`; encrypted keys are not supported)"
                .to_owned()
        }
        other => pem_problem(&other).to_owned(),
    })
}

impl ClientIdentity {
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self { chain, key }
    }
}

/// Why [`BrokerTls::new`] failed.
#[derive(Debug)]
pub enum TlsSetupError {
    /// The client key is not usable or does not belong to the certificate.
    ClientKey(String),
    /// Anything else rustls refused.
    Other(String),
}

impl BrokerTls {
    /// The TLS set-up for `roots` (only those are trusted) or, without them,
    /// the public web roots lapin uses by default; with `identity`, the
    /// certificate presented when the broker asks for one.
    pub fn new(
        ca_file: Option<(PathBuf, Roots)>,
        client: Option<(PathBuf, ClientIdentity)>,
    ) -> Result<Self, TlsSetupError> {
        let ca_certificates = ca_file.as_ref().map_or(0, |(_, roots)| roots.len());
        let (ca_file, roots) = ca_file.unzip();
        let (client_cert_file, identity) = client.unzip();
        let connector = match roots {
            Some(roots) => {
                // ring, as everywhere in the agent (no aws-lc).
                let builder = ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                // TLS 1.3 and 1.2 only; rustls has nothing older anyway.
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| TlsSetupError::Other(e.to_string()))?
                .with_root_certificates(roots.store);
                let config = match identity {
                    Some(id) => builder
                        .with_client_auth_cert(id.chain, id.key)
                        .map_err(|e| TlsSetupError::ClientKey(e.to_string()))?,
                    None => builder.with_no_client_auth(),
                };
                RustlsConnector::from(Arc::new(config))
            }
            // A client certificate with the default roots: lapin's own
            // connector configuration (webpki roots, TLS 1.2+).
            None => {
                let config = RustlsConnectorConfig::new_with_webpki_root_certs();
                match identity {
                    Some(id) => config
                        .connector_with_single_cert(id.chain, id.key)
                        .map_err(|e| TlsSetupError::ClientKey(e.to_string()))?,
                    None => config
                        .connector_with_no_client_auth()
                        .map_err(|e| TlsSetupError::Other(e.to_string()))?,
                }
            }
        };
        Ok(BrokerTls {
            ca_file,
            ca_certificates,
            client_cert_file,
            connector,
        })
    }

    /// Only the CA certificates in `pem` trusted, no client certificate:
    /// taskctl's own clients, whose CA bundle comes from Vault, not a file.
    pub fn with_ca_pem(pem: &str) -> Result<Self, String> {
        let roots = parse_roots(pem)?;
        let mut tls = Self::new(Some((PathBuf::new(), roots)), None).map_err(|e| match e {
            TlsSetupError::ClientKey(e) | TlsSetupError::Other(e) => e,
        })?;
        tls.ca_file = None;
        Ok(tls)
    }

    /// Connects to `url` (an `amqps://` URL) with this TLS set-up. A failed
    /// handshake is an IO error that names the broker, e.g. "TLS handshake
    /// with the broker at rabbitmq:5671 failed: invalid peer certificate:
    /// UnknownIssuer".
    pub async fn connect(
        &self,
        url: &str,
        properties: ConnectionProperties,
    ) -> lapin::Result<Connection> {
        self.connect_via(url, None, properties).await
    }

    /// [`BrokerTls::connect`], but the TCP connection goes to `via`
    /// (`host:port`, a port-forward to the broker's pod) while the
    /// certificate is still checked against the URL's host name, as the
    /// agents in the cluster check it.
    pub async fn connect_via(
        &self,
        url: &str,
        via: Option<&str>,
        properties: ConnectionProperties,
    ) -> lapin::Result<Connection> {
        let via = match via {
            None => None,
            Some(v) => {
                let parsed = v
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)));
                Some(parsed.ok_or_else(|| {
                    lapin::Error::from(std::io::Error::other(format!(
                        "`{v}` is not a host:port address"
                    )))
                })?)
            }
        };
        let uri: AMQPUri = url.parse().map_err(|e: String| {
            // Some parse errors quote the URL, credentials included.
            let reason = if e.contains("://") { "not shown" } else { &e };
            lapin::Error::from(std::io::Error::other(format!(
                "BROKER_URL is not a valid AMQP URI ({reason})"
            )))
        })?;
        let runtime = lapin::runtime::default_runtime()?;
        let connector = self.connector.clone();
        Connection::connector(
            uri,
            runtime,
            async move |uri, runtime| {
                let host = uri.authority.host.clone();
                let port = uri.authority.port;
                // The TCP part exactly as lapin does it for amqp://.
                let mut tcp = uri;
                tcp.scheme = AMQPScheme::AMQP;
                if let Some((via_host, via_port)) = via.clone() {
                    tcp.authority.host = via_host;
                    tcp.authority.port = via_port;
                }
                let stream = tcp.connect_async(&runtime).await?;
                stream.into_rustls(&connector, &host).await.map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("TLS handshake with the broker at {host}:{port} failed: {e}"),
                    )
                    .into()
                })
            },
            properties,
        )
        .await
    }
}
