//! The API resources taskctl applies, known from the `k8s-openapi` types
//! instead of asked of the server: no discovery round trips, and a kind the
//! renderer produces but the table lacks is an error before anything is
//! applied.

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};
use kube::core::{ApiResource, GroupVersionKind};
use std::any::TypeId;

/// A kind taskctl may apply or prune.
#[derive(Debug, Clone)]
pub struct Known {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl Known {
    fn of<K: Resource>() -> Known
    where
        K::Scope: 'static,
    {
        let scope = TypeId::of::<K::Scope>();
        debug_assert!(
            scope == TypeId::of::<NamespaceResourceScope>()
                || scope == TypeId::of::<ClusterResourceScope>()
        );
        Known {
            api_version: K::API_VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced: scope == TypeId::of::<NamespaceResourceScope>(),
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        let (group, version) = match self.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", self.api_version),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.kind),
            self.plural,
        )
    }

    /// Kinds whose deletion deletes data: claims, volumes, and namespaces
    /// (which take their claims with them). Prune never deletes them, not
    /// even with `prune_all`; only `destroy --delete-data` does.
    pub fn holds_data(&self) -> bool {
        matches!(
            self.kind,
            "PersistentVolumeClaim" | "PersistentVolume" | "Namespace"
        )
    }

    /// Kinds prune leaves alone unless `prune_all` is set: their loss is
    /// data loss (volumes, custom resources, everything in a namespace,
    /// secret values taskctl cannot render again).
    pub fn is_protected(&self) -> bool {
        matches!(
            self.kind,
            "PersistentVolumeClaim"
                | "PersistentVolume"
                | "CustomResourceDefinition"
                | "Namespace"
                | "Secret"
        )
    }
}

/// Every kind the renderer may produce, in no particular order.
pub fn known() -> Vec<Known> {
    use k8s_openapi::api::{
        apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch, core::v1 as core,
        networking::v1 as networking, policy::v1 as policy, rbac::v1 as rbac,
        scheduling::v1 as scheduling, storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    vec![
        Known::of::<core::Namespace>(),
        Known::of::<CustomResourceDefinition>(),
        Known::of::<core::ServiceAccount>(),
        Known::of::<rbac::Role>(),
        Known::of::<rbac::RoleBinding>(),
        Known::of::<rbac::ClusterRole>(),
        Known::of::<rbac::ClusterRoleBinding>(),
        Known::of::<core::ConfigMap>(),
        Known::of::<core::Secret>(),
        Known::of::<core::ResourceQuota>(),
        Known::of::<core::LimitRange>(),
        Known::of::<networking::NetworkPolicy>(),
        Known::of::<scheduling::PriorityClass>(),
        Known::of::<storage::StorageClass>(),
        Known::of::<core::PersistentVolume>(),
        Known::of::<core::PersistentVolumeClaim>(),
        Known::of::<core::Service>(),
        Known::of::<apps::Deployment>(),
        Known::of::<apps::StatefulSet>(),
        Known::of::<apps::DaemonSet>(),
        Known::of::<batch::Job>(),
        Known::of::<batch::CronJob>(),
        Known::of::<policy::PodDisruptionBudget>(),
        Known::of::<autoscaling::HorizontalPodAutoscaler>(),
        Known::of::<networking::Ingress>(),
    ]
}

/// The resource of `apiVersion`/`kind`, if taskctl knows it.
pub fn lookup(api_version: &str, kind: &str) -> Option<Known> {
    known()
        .into_iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_plurals_come_from_the_types() {
        let d = lookup("apps/v1", "Deployment").expect("known");
        assert!(d.namespaced);
        assert_eq!(d.plural, "deployments");
        let ns = lookup("v1", "Namespace").expect("known");
        assert!(!ns.namespaced && ns.is_protected());
        let crb = lookup("rbac.authorization.k8s.io/v1", "ClusterRoleBinding").expect("known");
        assert!(!crb.namespaced);
        assert_eq!(crb.api_resource().group, "rbac.authorization.k8s.io");
        assert!(lookup("example.com/v1", "Widget").is_none());
    }
}
