//! The tags taskctl puts on everything it creates, and finds it by.
//!
//! Every resource carries:
//!
//! | key                     | value                                   | identity |
//! |-------------------------|-----------------------------------------|----------|
//! | `managed-by`            | `taskctl`                               | yes      |
//! | `taskctl:environment`   | `<metadata.name>/<environment>`         | yes      |
//! | `taskctl:resource`      | logical id, e.g. `subnet/public/us-west-2a` | yes  |
//! | `taskctl:profile`       | `<metadata.name>`                       | no       |
//! | `taskctl:run`           | the run that created it                 | no       |
//! | `Name`                  | `<name>-<environment>-<logical id>`     | no       |
//!
//! plus the profile's `metadata.labels`. The environment is one tag (rather
//! than name and environment apart) so one filter finds all of it.
//!
//! Guarantees: [`Tags::identity_filters`] exclude the run tag, so a re-run finds what
//! an earlier run made; diffs ignore the run tag for the same reason.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use std::collections::BTreeMap;

pub const MANAGED_BY: &str = "managed-by";
pub const MANAGED_BY_VALUE: &str = "taskctl";
pub const ENVIRONMENT: &str = "taskctl:environment";
pub const PROFILE: &str = "taskctl:profile";
pub const RUN: &str = "taskctl:run";
pub const RESOURCE: &str = "taskctl:resource";
pub const NAME: &str = "Name";

/// One deployed environment: the profile's `metadata.name` and the
/// environment (`production`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Environment {
    pub name: String,
    pub environment: String,
}

impl Environment {
    pub fn new(name: impl Into<String>, environment: impl Into<String>) -> Self {
        Environment {
            name: name.into(),
            environment: environment.into(),
        }
    }

    /// The value of the `taskctl:environment` tag.
    pub fn tag_value(&self) -> String {
        format!("{}/{}", self.name, self.environment)
    }

    /// A prefix for AWS names (`task-system-production`).
    pub fn prefix(&self) -> String {
        format!("{}-{}", self.name, self.environment)
    }

    /// EC2 filters matching everything of this environment.
    pub fn filters(&self) -> Vec<Filter> {
        vec![
            tag_filter(MANAGED_BY, MANAGED_BY_VALUE),
            tag_filter(ENVIRONMENT, &self.tag_value()),
        ]
    }

    /// Whether a tag map marks a resource of this environment.
    pub fn owns(&self, tags: &BTreeMap<String, String>) -> bool {
        tags.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE)
            && tags.get(ENVIRONMENT) == Some(&self.tag_value())
    }
}

/// The full tag set of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    pub environment: Environment,
    /// Logical id, e.g. `vpc`, `subnet/private/us-west-2b`.
    pub resource: String,
    pub run: String,
    /// `metadata.labels` and resource-specific tags (EKS subnet roles).
    pub extra: BTreeMap<String, String>,
}

impl Tags {
    pub fn new(environment: &Environment, resource: impl Into<String>, run: &str) -> Tags {
        Tags {
            environment: environment.clone(),
            resource: resource.into(),
            run: run.to_owned(),
            extra: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Tags {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub fn with_all(mut self, extra: &BTreeMap<String, String>) -> Tags {
        for (k, v) in extra {
            self.extra.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self
    }

    /// `<name>-<environment>-<logical id with '/' as '-'>`.
    pub fn name(&self) -> String {
        format!(
            "{}-{}",
            self.environment.prefix(),
            self.resource.replace('/', "-")
        )
    }

    /// Every tag, the run tag included.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = self.extra.clone();
        map.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
        map.insert(ENVIRONMENT.into(), self.environment.tag_value());
        map.insert(PROFILE.into(), self.environment.name.clone());
        map.insert(RUN.into(), self.run.clone());
        map.insert(RESOURCE.into(), self.resource.clone());
        map.insert(NAME.into(), self.name());
        map
    }

    /// The tags that must match for an observed resource to be in sync: all
    /// but the run tag.
    pub fn desired_for_diff(&self) -> BTreeMap<String, String> {
        let mut map = self.to_map();
        map.remove(RUN);
        map
    }

    /// EC2 filters that find this resource: managed-by, environment, logical id.
    pub fn identity_filters(&self) -> Vec<Filter> {
        let mut filters = self.environment.filters();
        filters.push(tag_filter(RESOURCE, &self.resource));
        filters
    }

    /// Whether an observed tag map is this resource (identity tags match).
    pub fn identifies(&self, tags: &BTreeMap<String, String>) -> bool {
        self.environment.owns(tags) && tags.get(RESOURCE) == Some(&self.resource)
    }

    pub fn to_ec2(&self) -> Vec<Tag> {
        ec2_tags(&self.to_map())
    }

    /// Tags applied by the create call itself, so there is no untagged window.
    pub fn ec2_spec(&self, resource_type: ResourceType) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(resource_type)
            .set_tags(Some(self.to_ec2()))
            .build()
    }
}

/// An EC2 filter on one tag's value.
pub fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// An EC2 filter on any attribute (`vpc-id`, `instance-type` …).
pub fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

pub(crate) fn ec2_tags(map: &BTreeMap<String, String>) -> Vec<Tag> {
    map.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

pub(crate) fn from_ec2(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

/// Tags of `desired` that `observed` lacks or holds with another value.
/// A tag map as IAM takes it (roles, OIDC providers).
pub(crate) fn to_iam(tags: &BTreeMap<String, String>) -> Vec<aws_sdk_iam::types::Tag> {
    tags.iter()
        .filter_map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .ok()
        })
        .collect()
}

pub(crate) fn missing(
    desired: &BTreeMap<String, String>,
    observed: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    desired
        .iter()
        .filter(|(k, v)| observed.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Tags {
        Tags::new(
            &Environment::new("task-system", "production"),
            "subnet/public/us-west-2a",
            "run-1",
        )
        .with("kubernetes.io/role/elb", "1")
    }

    #[test]
    fn standard_set() {
        let map = tags().to_map();
        assert_eq!(map["managed-by"], "taskctl");
        assert_eq!(map["taskctl:environment"], "task-system/production");
        assert_eq!(map["taskctl:profile"], "task-system");
        assert_eq!(map["taskctl:run"], "run-1");
        assert_eq!(map["taskctl:resource"], "subnet/public/us-west-2a");
        assert_eq!(
            map["Name"],
            "task-system-production-subnet-public-us-west-2a"
        );
        assert_eq!(map["kubernetes.io/role/elb"], "1");
    }

    #[test]
    fn run_tag_is_not_identity() {
        let a = tags();
        let mut b = tags();
        b.run = "run-2".into();
        assert!(a.identifies(&b.to_map()));
        assert_eq!(a.desired_for_diff(), b.desired_for_diff());
        assert!(!a.desired_for_diff().contains_key(RUN));
        let names: Vec<_> = a
            .identity_filters()
            .iter()
            .filter_map(|f| f.name().map(str::to_owned))
            .collect();
        assert_eq!(
            names,
            [
                "tag:managed-by",
                "tag:taskctl:environment",
                "tag:taskctl:resource"
            ]
        );
    }

    #[test]
    fn other_environment_is_not_owned() {
        let other = Environment::new("task-system", "staging");
        assert!(!other.owns(&tags().to_map()));
    }
}
