//! Deployment steps, rollback conditions and steps, plugins and managed
//! secrets: every name must be a built-in or a declared plugin.

use super::Report;
use crate::diagnostic::did_you_mean;
use crate::path;
use crate::profile::builtins::*;
use crate::profile::model::{Condition, PluginRole, Profile, StepRef};
use crate::profile::node::Path;
use std::collections::BTreeSet;

pub(super) fn check(r: &mut Report, p: &Profile) {
    let mut plugin_names = BTreeSet::new();
    for (i, plugin) in p.plugins.iter().enumerate() {
        if !plugin_names.insert(plugin.name.as_str()) {
            r.error(
                path!["plugins", i, "name"],
                format!("plugin `{}` is declared twice", plugin.name),
            );
        }
        if plugin.name.is_empty()
            || !plugin
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            r.error(
                path!["plugins", i, "name"],
                format!(
                    "invalid plugin name `{}`: letters, digits, `-` and `_` only",
                    plugin.name
                ),
            );
        }
        if plugin.provides.is_empty() {
            r.error(
                path!["plugins", i, "provides"],
                "a plugin must provide at least one of `check`, `step`, `gate`, `prerequisite`",
            );
        }
        for (j, part) in plugin.profile.iter().enumerate() {
            let top = part.split('.').next().unwrap_or_default();
            if part.split('.').any(str::is_empty) || !PROFILE_SECTIONS.contains(&top) {
                r.error_help(
                    path!["plugins", i, "profile", j],
                    format!("`{part}` is not a part of the profile"),
                    format!(
                        "a dotted path under one of: {}",
                        PROFILE_SECTIONS.join(", ")
                    ),
                );
            }
        }
        for (name, reference) in &plugin.secrets {
            r.check(reference, path!["plugins", i, "secrets", name.as_str()]);
        }
        if let Some(t) = &plugin.timeout {
            r.check(t, path!["plugins", i, "timeout"]);
        }
        if plugin.path.as_deref().is_some_and(|p| p.trim().is_empty()) {
            r.error(path!["plugins", i, "path"], "an empty plugin path");
        }
    }

    let d = &p.deployment;
    steps(
        r,
        p,
        &d.preparation,
        PREPARATION_STEPS,
        path!["deployment", "preparation"],
        PluginRole::Check,
    );
    steps(
        r,
        p,
        &d.deployment,
        DEPLOYMENT_STEPS,
        path!["deployment", "deployment"],
        PluginRole::Step,
    );
    if d.strategy == crate::profile::model::Strategy::BlueGreen {
        r.error_help(
            path!["deployment", "strategy"],
            "`blue_green` is not built on any target: taskctl replaces replicas one at a time, each new one healthy before the old one stops",
            "use `rolling` (the default)",
        );
    }
    // The layers are built in one order; a list that names them in
    // another would promise an order taskctl does not follow.
    const LAYERS: [&str; 3] = [
        "deploy_infrastructure",
        "deploy_core_services",
        "deploy_agents",
    ];
    let mut highest: Option<(usize, &str)> = None;
    for (i, step) in d.deployment.iter().enumerate() {
        let Some(rank) = LAYERS.iter().position(|l| *l == step.name()) else {
            continue;
        };
        if let Some((top, name)) = highest
            && rank < top
        {
            r.error_help(
                path!["deployment", "deployment", i],
                format!(
                    "`{}` comes after `{name}` here, but taskctl builds the layers in the order {}",
                    step.name(),
                    LAYERS.join(", ")
                ),
                "list them in that order; plugin steps go between them",
            );
        }
        if highest.is_none_or(|(top, _)| rank > top) {
            highest = Some((rank, LAYERS[rank]));
        }
    }
    steps(
        r,
        p,
        &d.verification,
        VERIFICATION_STEPS,
        path!["deployment", "verification"],
        PluginRole::Gate,
    );

    let rb = &p.rollback;
    // The window the user allows, when they set one: a condition whose
    // `for` does not fit in it could never trip.
    let watch = rb
        .automatic
        .watch
        .as_ref()
        .and_then(|w| r.check(w, path!["rollback", "automatic", "watch"]))
        .map(|w| w.0);
    for (i, cond) in rb.automatic.conditions.iter().enumerate() {
        let at = path!["rollback", "automatic", "conditions", i];
        let name = cond.name();
        if !ROLLBACK_CONDITIONS.contains(&name) && !declared(p, name, PluginRole::Gate) {
            unknown(
                r,
                at.clone(),
                "rollback condition",
                name,
                ROLLBACK_CONDITIONS,
            );
        }
        if let Condition::Detailed(spec) = cond {
            if let Some(d) = &spec.for_
                && let Some(hold) = r.check(d, at.child("for"))
                && let Some(watch) = watch
                && hold.0 + crate::profile::model::WATCH_MARGIN > watch
            {
                r.error_help(
                    at.child("for"),
                    format!(
                        "`for: {}` cannot trip within the {} watch (`rollback.automatic.watch`): the condition must be seen holding for that long, plus {} for the polls",
                        humantime::format_duration(hold.0),
                        humantime::format_duration(watch),
                        humantime::format_duration(
                            crate::profile::model::WATCH_MARGIN
                        )
                    ),
                    format!(
                        "raise `rollback.automatic.watch` to at least {}, shorten `for`, or remove `watch` (it then follows the longest `for`)",
                        humantime::format_duration(
                            hold.0 + crate::profile::model::WATCH_MARGIN
                        )
                    ),
                );
            }
            if spec.threshold.is_some_and(|t| !t.is_finite() || t < 0.0) {
                r.error(
                    at.child("threshold"),
                    "a threshold must be a finite, non-negative number",
                );
            }
            if spec.max_restarts.is_some() && name != "resource_exhaustion" {
                r.error(
                    at.child("max_restarts"),
                    "`max_restarts` applies to `resource_exhaustion` only",
                );
            }
        }
    }
    steps(
        r,
        p,
        &rb.automatic.steps,
        AUTOMATIC_ROLLBACK_STEPS,
        path!["rollback", "automatic", "steps"],
        PluginRole::Step,
    );
    for (list, at) in [
        (&rb.automatic.steps, path!["rollback", "automatic", "steps"]),
        (&rb.manual.steps, path!["rollback", "manual", "steps"]),
    ] {
        for (i, step) in list.iter().enumerate() {
            let plugin = matches!(step, StepRef::Plugin(_))
                || p.plugins.iter().any(|pl| pl.name == step.name());
            if plugin {
                r.warning(
                    at.child(i),
                    format!(
                        "plugin `{}` is not run here: a rollback re-applies the restored release's profile, whose `deployment.deployment` plugin steps run again",
                        step.name()
                    ),
                    Some("move it to `deployment.deployment`, or remove it from this list".into()),
                );
            }
        }
    }
    for (i, pre) in rb.manual.prerequisites.iter().enumerate() {
        if !MANUAL_PREREQUISITES.contains(&pre.as_str())
            && !declared(p, pre, PluginRole::Prerequisite)
            && !lacks_role(
                r,
                p,
                pre,
                PluginRole::Prerequisite,
                path!["rollback", "manual", "prerequisites", i],
            )
        {
            unknown(
                r,
                path!["rollback", "manual", "prerequisites", i],
                "rollback prerequisite",
                pre,
                MANUAL_PREREQUISITES,
            );
        }
    }
    steps(
        r,
        p,
        &rb.manual.steps,
        MANUAL_ROLLBACK_STEPS,
        path!["rollback", "manual", "steps"],
        PluginRole::Step,
    );
    if rb.keep_releases == 0 {
        r.error(
            path!["rollback", "keep_releases"],
            "keep at least one release, or there is nothing to roll back to",
        );
    }

    let mut paths = BTreeSet::new();
    for (name, entry) in &p.secrets.entries {
        let at = path!["secrets", "entries", name.as_str()];
        if entry.path.trim_matches('/').is_empty() {
            r.error(
                at.child("path"),
                "a secret needs a Vault path such as `secret/database`",
            );
        }
        if !paths.insert(entry.path.trim_matches('/')) {
            r.error(
                at.child("path"),
                format!("Vault path `{}` is used by two secrets", entry.path),
            );
        }
        let is_tls = entry.kind == crate::profile::model::SecretKind::Tls;
        if is_tls && entry.hosts.is_empty() {
            r.error_help(
                at.child("type"),
                "a `tls` secret needs the names its certificate is for",
                "add `hosts: [rabbitmq, localhost, 127.0.0.1]` (the names clients connect to)",
            );
        }
        if !is_tls && !entry.hosts.is_empty() {
            r.error(
                at.child("hosts"),
                "`hosts` is only for secrets of type `tls`",
            );
        }
        for (i, host) in entry.hosts.iter().enumerate() {
            if let Err(e) = super::names::host(host) {
                r.error(at.child("hosts").child(i), e);
            }
        }
        if let Some(rotation) = &entry.rotation
            && let Some(d) = r.check(rotation, at.child("rotation"))
            && d.0.as_secs() < 3600
        {
            r.warning(
                at.child("rotation"),
                "rotating more often than hourly restarts consumers constantly",
                None,
            );
        }
    }
}

fn declared(p: &Profile, name: &str, role: PluginRole) -> bool {
    p.plugins
        .iter()
        .any(|pl| pl.name == name && pl.provides.contains(&role))
}

fn steps(
    r: &mut Report,
    p: &Profile,
    list: &[StepRef],
    builtins: &[&str],
    at: Path,
    role: PluginRole,
) {
    for (i, step) in list.iter().enumerate() {
        match step {
            StepRef::Builtin(name) => {
                if !builtins.contains(&name.as_str())
                    && !declared(p, name, role)
                    && !lacks_role(r, p, name, role, at.child(i))
                {
                    unknown(r, at.child(i), "step", name, builtins);
                }
            }
            StepRef::Plugin(ps) => {
                match p.plugins.iter().find(|pl| pl.name == ps.plugin) {
                    None => r.error_help(
                        at.child(i).child("plugin"),
                        format!("plugin `{}` is not declared", ps.plugin),
                        "declare it under `plugins` with its name and what it provides",
                    ),
                    Some(pl) if !pl.provides.contains(&role) => r.error(
                        at.child(i).child("plugin"),
                        format!(
                            "plugin `{}` does not provide `{}`, which this phase needs",
                            ps.plugin,
                            role_name(role)
                        ),
                    ),
                    Some(_) => {}
                }
                if let Some(t) = &ps.timeout
                    && crate::profile::value::Duration::parse_str(t).is_err()
                {
                    r.error(
                        at.child(i).child("timeout"),
                        format!("malformed timeout `{t}`: expected a duration such as `5m`"),
                    );
                }
            }
        }
    }
}

/// Reports a declared plugin that lacks `role`; true when it did.
fn lacks_role(r: &mut Report, p: &Profile, name: &str, role: PluginRole, at: Path) -> bool {
    let Some(plugin) = p.plugins.iter().find(|pl| pl.name == name) else {
        return false;
    };
    r.error_help(
        at,
        format!(
            "plugin `{name}` does not provide `{}`, which this list needs",
            role.as_str()
        ),
        format!(
            "it provides {}; add `{}` to its `provides` if it implements it",
            plugin
                .provides
                .iter()
                .map(|r| format!("`{}`", r.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            role.as_str()
        ),
    );
    true
}

fn role_name(role: PluginRole) -> &'static str {
    role.as_str()
}

/// The top-level sections of a profile a plugin may receive.
const PROFILE_SECTIONS: &[&str] = &[
    "metadata",
    "target",
    "state",
    "network",
    "compute",
    "storage",
    "services",
    "agents",
    "components",
    "secrets",
    "deployment",
    "rollback",
];

fn unknown(r: &mut Report, at: Path, what: &str, name: &str, builtins: &[&str]) {
    let mut help = format!(
        "built-in {what}s here: {}; or declare a plugin of that name",
        builtins.join(", ")
    );
    if let Some(m) = did_you_mean(name, builtins.iter().copied()) {
        help = format!("did you mean `{m}`? {help}");
    }
    r.error_help(at, format!("unknown {what} `{name}`"), help);
}
