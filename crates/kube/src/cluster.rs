//! The connection to a cluster: a `kube` client from a kubeconfig, and the
//! few calls taskctl makes on rendered objects (GET, server-side apply,
//! LIST by label, DELETE), with errors mapped once to the engine's kinds.

use crate::manifest::Manifest;
use crate::resources::{self, Known};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;
use std::path::Path;
use taskctl_core::engine::{ErrorKind, StepError};

/// The field manager of every apply taskctl makes.
pub const FIELD_MANAGER: &str = "taskctl";

/// Why a cluster could not be reached or configured.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the kubeconfig{}: {source}", path.as_ref().map(|p| format!(" `{p}`")).unwrap_or_default())]
    Kubeconfig {
        path: Option<String>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot make a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from a kubeconfig file (`path`, else `KUBECONFIG`, else
/// `~/.kube/config`) and a context (else the current one), as kubectl
/// chooses them.
pub async fn client_from_kubeconfig(
    path: Option<&Path>,
    context: Option<&str>,
) -> Result<Client, ClusterError> {
    let kubeconfig = match path {
        Some(p) => Kubeconfig::read_from(p),
        None => Kubeconfig::read(),
    }
    .map_err(|source| ClusterError::Kubeconfig {
        path: path.map(|p| p.display().to_string()),
        source,
    })?;
    client_from(kubeconfig, path, context).await
}

/// A client from a kubeconfig taskctl built itself (an EKS cluster's,
/// [`ExecKubeconfig`]), with its current context.
pub async fn client_from_built(kubeconfig: Kubeconfig) -> Result<Client, ClusterError> {
    client_from(kubeconfig, None, None).await
}

async fn client_from(
    kubeconfig: Kubeconfig,
    path: Option<&Path>,
    context: Option<&str>,
) -> Result<Client, ClusterError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        cluster: None,
        user: None,
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|source| ClusterError::Kubeconfig {
            path: path.map(|p| p.display().to_string()),
            source,
        })?;
    // With both of rustls' crypto providers compiled in (the AWS SDK brings
    // aws-lc-rs), rustls will not pick one and the client would panic.
    // Installing fails only when one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(Client::try_from(config)?)
}

/// The engine's view of a client error. Conflicts keep the server's words
/// (they name the conflicting manager and fields).
pub fn step_error(what: &str, e: kube::Error) -> StepError {
    match e {
        kube::Error::Api(status) => {
            let kind = match status.code {
                404 => ErrorKind::NotFound,
                409 if status.reason == "AlreadyExists" => ErrorKind::AlreadyExists,
                409 => ErrorKind::Conflict,
                401 | 403 => ErrorKind::Denied,
                429 => ErrorKind::Throttled,
                400 | 415 | 422 => ErrorKind::Invalid,
                c if c >= 500 => ErrorKind::Transient,
                _ => ErrorKind::Other,
            };
            StepError::new(kind, format!("{what}: {}", status.message))
        }
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
            StepError::new(ErrorKind::Transient, format!("{what}: {e}"))
        }
        e => StepError::new(ErrorKind::Other, format!("{what}: {e}")),
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The API of a known kind, in `namespace` when it is namespaced (all
/// namespaces when `None`).
pub fn api(client: &Client, known: &Known, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = known.api_resource();
    match (known.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (true, None) => Api::all_with(client.clone(), &ar),
        (false, _) => Api::all_with(client.clone(), &ar),
    }
}

/// The API of a rendered object.
pub fn api_of(client: &Client, m: &Manifest) -> Result<Api<DynamicObject>, StepError> {
    let known = resources::lookup(&m.api_version, &m.kind).ok_or_else(|| {
        StepError::new(
            ErrorKind::Invalid,
            format!(
                "{}: taskctl does not know the resource of {} {}",
                m.id(),
                m.api_version,
                m.kind
            ),
        )
    })?;
    Ok(api(client, &known, m.namespace.as_deref()))
}

/// The live object, or `None`.
pub async fn get(client: &Client, m: &Manifest) -> Result<Option<Value>, StepError> {
    let api = api_of(client, m)?;
    match api.get_opt(&m.name).await {
        Ok(o) => Ok(o.map(|o| serde_json::to_value(o).unwrap_or(Value::Null))),
        Err(e) => Err(step_error(&m.id(), e)),
    }
}

/// Server-side apply of a rendered object as `taskctl`; `force` takes over
/// fields another manager owns.
pub async fn apply(client: &Client, m: &Manifest, force: bool) -> Result<Value, StepError> {
    let api = api_of(client, m)?;
    let mut params = PatchParams::apply(FIELD_MANAGER);
    if force {
        params = params.force();
    }
    match api.patch(&m.name, &params, &Patch::Apply(&m.value)).await {
        Ok(o) => Ok(serde_json::to_value(o).unwrap_or(Value::Null)),
        Err(e) => {
            let mut err = step_error(&m.id(), e);
            if err.kind == ErrorKind::Conflict && !force {
                err.message.push_str(
                    " (another field manager owns these fields; `taskctl deploy --force-conflicts` takes them over)",
                );
            }
            Err(err)
        }
    }
}

/// The pods of workload `m` (its live object `live`) that run its current
/// revision (see [`crate::readiness::pod_is_current`]); none when the
/// workload selects no pods by labels.
pub async fn current_pods(
    client: &Client,
    m: &Manifest,
    live: &Value,
) -> Result<Vec<k8s_openapi::api::core::v1::Pod>, StepError> {
    let Some(labels) = live
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
    else {
        return Ok(Vec::new());
    };
    let selector: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), m.namespace.as_deref().unwrap_or_default());
    let pods = pods
        .list(&ListParams::default().labels(&selector.join(",")))
        .await
        .map_err(|e| step_error(&format!("pods of {}", m.id()), e))?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| crate::readiness::pod_is_current(live, p))
        .collect())
}

/// Objects of a kind carrying the labels of `selector`.
pub async fn list(
    client: &Client,
    known: &Known,
    selector: &str,
) -> Result<Vec<DynamicObject>, StepError> {
    let api = api(client, known, None);
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .map_err(|e| step_error(&format!("listing {}", known.plural), e))
}

/// Deletes an object; gone already is fine.
pub async fn delete(
    client: &Client,
    known: &Known,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), StepError> {
    let api = api(client, known, namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(step_error(&format!("deleting {} {name}", known.kind), e)),
    }
}

/// A kubeconfig with one cluster, user and context, whose user gets its
/// token from a command (kubectl's `exec` credential plugin, the way
/// `aws eks update-kubeconfig` does it): the file holds no secret, and the
/// token is fresh each time.
pub struct ExecKubeconfig {
    /// Cluster, user and context name (an EKS cluster's ARN, by custom).
    pub name: String,
    pub server: String,
    /// base64 of the CA bundle; `None` for a plain-http test server.
    pub certificate_authority_data: Option<String>,
    /// The name the server's certificate must carry when `server` is a
    /// tunnel to it (`kubectl --tls-server-name`).
    pub tls_server_name: Option<String>,
    pub command: String,
    pub args: Vec<String>,
}

impl ExecKubeconfig {
    /// The kubeconfig, checked by parsing it into kube's own type.
    pub fn build(&self) -> Kubeconfig {
        let mut cluster = serde_json::json!({ "server": self.server });
        if let Some(ca) = &self.certificate_authority_data {
            cluster["certificate-authority-data"] = ca.as_str().into();
        }
        if let Some(name) = &self.tls_server_name {
            cluster["tls-server-name"] = name.as_str().into();
        }
        let value = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": self.name,
                "cluster": cluster,
            }],
            "users": [{
                "name": self.name,
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": self.command,
                        "args": self.args,
                        "interactiveMode": "Never",
                    },
                },
            }],
            "contexts": [{
                "name": self.name,
                "context": {"cluster": self.name, "user": self.name},
            }],
            "current-context": self.name,
        });
        serde_json::from_value(value).expect("a kubeconfig of known fields parses")
    }

    /// The kubeconfig as YAML, as kubectl writes it.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(&self.build()).expect("a kubeconfig serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_kubeconfig_reads_back_as_kube_reads_kubeconfigs() {
        let yaml = ExecKubeconfig {
            name: "arn:aws:eks:us-west-2:123456789012:cluster/demo".into(),
            server: "https://abc.gr7.us-west-2.eks.amazonaws.com".into(),
            certificate_authority_data: Some("TFMwdExTMUNSVWQ=".into()),
            tls_server_name: None,
            command: "/usr/local/bin/taskctl".into(),
            args: vec!["eks-token".into(), "--cluster".into(), "demo".into()],
        }
        .to_yaml();
        let back = Kubeconfig::from_yaml(&yaml).expect("kube reads it");
        assert_eq!(
            back.current_context.as_deref(),
            Some("arn:aws:eks:us-west-2:123456789012:cluster/demo")
        );
        let cluster = back.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://abc.gr7.us-west-2.eks.amazonaws.com")
        );
        let user = back.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_none(), "no secret in the file");
        let exec = user.exec.as_ref().unwrap();
        assert_eq!(exec.command.as_deref(), Some("/usr/local/bin/taskctl"));
        assert_eq!(exec.args.as_ref().unwrap()[0], "eks-token");
    }
}
