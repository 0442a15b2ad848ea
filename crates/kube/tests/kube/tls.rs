//! The client taskctl makes for an EKS cluster reached through a tunnel
//! (`target.aws.api_server`): the address is the tunnel's, but the
//! certificate must still be the cluster's, signed by the cluster's CA and
//! valid for the cluster endpoint's name (`ExecKubeconfig::tls_server_name`,
//! as `kubectl --tls-server-name`). Against kube-double serving HTTPS with a
//! certificate this test makes; the token comes from an exec credential
//! plugin, as `taskctl eks-token` gives it.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube_double::{Config, KubeDouble, TlsIdentity};
use taskctl_kube::cluster::{ExecKubeconfig, client_from_built};

/// The cluster endpoint's name, as EKS gives it.
const CLUSTER_HOST: &str = "abc123.gr7.us-west-2.eks.amazonaws.com";

/// A CA (PEM) and a server certificate and key for `host` it signed.
fn make_identity(host: &str) -> (String, TlsIdentity) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        ca_pem,
        TlsIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
    )
}

fn kubeconfig(double: &KubeDouble, ca_pem: &str, name: Option<&str>) -> ExecKubeconfig {
    use base64::Engine;
    ExecKubeconfig {
        name: "arn:aws:eks:us-west-2:123456789012:cluster/tls".into(),
        server: double.url(),
        certificate_authority_data: Some(
            base64::engine::general_purpose::STANDARD.encode(ca_pem),
        ),
        tls_server_name: name.map(str::to_string),
        command: "sh".into(),
        args: vec![
            "-c".into(),
            r#"printf '{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{"token":"k8s-aws-v1.test"}}'"#.into(),
        ],
    }
}

async fn list(config: ExecKubeconfig) -> Result<usize, String> {
    let client = client_from_built(config.build())
        .await
        .map_err(|e| format!("{e:#}"))?;
    let api: Api<Namespace> = Api::all(client);
    api.list(&Default::default())
        .await
        .map(|l| l.items.len())
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_checks_the_clusters_ca_and_name() {
    let (ca, identity) = make_identity(CLUSTER_HOST);
    let double = KubeDouble::start(Config {
        tls: Some(identity),
        ..Config::default()
    })
    .await
    .unwrap();
    assert!(double.url().starts_with("https://127.0.0.1:"));

    // The cluster's CA and name, at the tunnel's address: served.
    let namespaces = list(kubeconfig(&double, &ca, Some(CLUSTER_HOST)))
        .await
        .expect("the cluster's certificate is accepted through the tunnel");
    assert!(namespaces >= 4, "{namespaces}");
    let sent = double.requests();
    assert!(
        sent.iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer k8s-aws-v1.test")),
        "the plugin's token on every request: {sent:?}"
    );

    // Another CA: refused, saying why.
    let (other_ca, _) = make_identity(CLUSTER_HOST);
    let err = list(kubeconfig(&double, &other_ca, Some(CLUSTER_HOST)))
        .await
        .expect_err("a certificate of another CA is refused");
    eprintln!("another CA: {err}");
    assert!(
        err.contains("UnknownIssuer") || err.to_lowercase().contains("certificate"),
        "{err}"
    );

    // The right CA, but the certificate is not for the name asked.
    let err = list(kubeconfig(&double, &ca, Some("other.eks.amazonaws.com")))
        .await
        .expect_err("a certificate for another name is refused");
    eprintln!("another name: {err}");
    assert!(
        err.contains("NotValidForName") || err.to_lowercase().contains("name"),
        "{err}"
    );

    // Without the cluster's name the tunnel's address is checked, and the
    // certificate is not for 127.0.0.1: refused too.
    let err = list(kubeconfig(&double, &ca, None))
        .await
        .expect_err("the tunnel's address is not the certificate's name");
    assert!(!err.is_empty());
}

/// An exec plugin that gives a new token each run, valid for `secs` (as
/// `taskctl eks-token` gives one valid for 15 minutes), or forever.
fn plugin(secs: Option<u64>) -> Vec<String> {
    let expiry = match secs {
        Some(s) => format!(
            r#","expirationTimestamp":"'"$(date -u -d '+{s} seconds' +%Y-%m-%dT%H:%M:%SZ)"'""#
        ),
        None => String::new(),
    };
    vec![
        "-c".into(),
        format!(
            r#"printf '%s' '{{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{{"token":"k8s-aws-v1.'"$(date +%s%N)"'"{expiry}}}}}'"#
        ),
    ]
}

/// A token that expires during a long run is renewed: the double refuses
/// any token older than 3 s (as EKS refuses one older than 15 minutes) and
/// the plugin's tokens say they expire 61 s after they are made, so the
/// client (which renews within 60 s of the expiry) must run the plugin
/// again about every second. Over 5 s of requests, none is refused and
/// several tokens reach the server; the same requests with a token that
/// says nothing of its expiry are refused once it is 3 s old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_renewed_during_a_long_run() {
    let (ca, identity) = make_identity(CLUSTER_HOST);
    let double = KubeDouble::start(Config {
        tls: Some(identity),
        token_ttl: Some(std::time::Duration::from_secs(3)),
        ..Config::default()
    })
    .await
    .unwrap();
    let run = |secs: Option<u64>| {
        let mut config = kubeconfig(&double, &ca, Some(CLUSTER_HOST));
        config.args = plugin(secs);
        config
    };

    let client = client_from_built(run(Some(61)).build()).await.unwrap();
    let api: Api<Namespace> = Api::all(client);
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(5) {
        api.list(&Default::default())
            .await
            .expect("a renewed token is accepted");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let tokens: std::collections::BTreeSet<String> = double
        .requests()
        .into_iter()
        .filter_map(|r| r.authorization)
        .collect();
    assert!(tokens.len() >= 3, "the token was renewed: {tokens:?}");

    // Without an expiry the client keeps its token, and the server refuses
    // it once it is too old: the double's expiry is real.
    let client = client_from_built(run(None).build()).await.unwrap();
    let api: Api<Namespace> = Api::all(client);
    api.list(&Default::default()).await.expect("a fresh token");
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let err = api
        .list(&Default::default())
        .await
        .expect_err("a token older than the server allows is refused");
    assert!(err.to_string().contains("Unauthorized"), "{err}");
}
