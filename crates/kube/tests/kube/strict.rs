//! Strict mode: a misspelled variable is an error, never an empty string.

use crate::common::*;
use taskctl_kube::{RenderError, Renderer, view};

fn production_view() -> view::View {
    let profile = load_profile(
        &[workspace().join("profiles/production.yaml")],
        "production",
    );
    view::build(&profile, &templates()).expect("view")
}

fn render_one(text: &str) -> Result<Vec<taskctl_kube::Manifest>, RenderError> {
    let r = Renderer::from_sources([("rabbitmq/typo.yaml.hbs".to_string(), text.to_string())])?;
    r.render(&production_view())
}

/// Proves: in a shipped template, a misspelled variable fails the render
/// with the template's name and the variable.
#[test]
fn misspelled_variable_in_a_shipped_template_names_template_and_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&templates(), dir.path());
    let file = dir.path().join("rabbitmq/statefulset.yaml.hbs");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.contains("replicas: {{replicas}}"));
    std::fs::write(
        &file,
        text.replace("replicas: {{replicas}}", "replicas: {{replicsa}}"),
    )
    .expect("write");
    let profile = load_profile(
        &[workspace().join("profiles/production.yaml")],
        "production",
    );
    let err = taskctl_kube::render(&profile, dir.path()).expect_err("strict mode");
    match &err {
        RenderError::MissingVariable {
            template,
            variable,
            line,
        } => {
            assert_eq!(template, "rabbitmq/statefulset.yaml.hbs");
            assert!(variable.contains("replicsa"), "{variable}");
            assert!(line.is_some());
        }
        other => panic!("expected a missing variable, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("rabbitmq/statefulset.yaml.hbs") && message.contains("replicsa"),
        "{message}"
    );
}

/// Proves: strict mode also holds inside `if`, `unless` and the helpers,
/// where Handlebars itself would take the missing value for false or "".
#[test]
fn misspelled_variable_fails_in_blocks_and_helpers() {
    for text in [
        "{{#with rabbitmq}}name: {{namespce}}{{/with}}",
        "{{#if rabbitmq.clusterd}}x: 1{{/if}}",
        "{{#unless rabbitmq.clusterd}}x: 1{{/unless}}",
        "name: {{quote rabbitmq.imag}}",
        "labels: {{labels rabbitmq.nme}}",
        "size: {{quantity rabbitmq.volume.sise}}",
        "{{#each rabbitmq.plugin}}- {{this}}{{/each}}",
    ] {
        match render_one(text) {
            Err(RenderError::MissingVariable { template, .. }) => {
                assert_eq!(template, "rabbitmq/typo.yaml.hbs")
            }
            other => panic!("`{text}`: expected a missing variable, got {other:?}"),
        }
    }
}

/// Proves: the `quantity` helper rejects what is not a Kubernetes quantity.
#[test]
fn quantity_helper_rejects_malformed_quantities() {
    let err = render_one(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: {{quantity \"10 GB\"}}}",
    )
    .expect_err("malformed");
    assert!(matches!(err, RenderError::Template { .. }), "{err:?}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
