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
