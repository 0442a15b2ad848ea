use crate::harness::{relative, shipped_profiles, stderr, stdout, taskctl};

/// Every malformed profile under `tests/profiles/invalid/` fails with exit 1
/// and exactly the messages pinned in its snapshot.
#[test]
fn invalid_profiles_report_their_problems() {
    insta::glob!("../profiles/invalid", "*.yaml", |path| {
        let file = relative(path);
        let out = taskctl(&["validate", "-p", &file]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{file} must be invalid:\n{}",
            stderr(&out)
        );
        assert!(
            stdout(&out).is_empty(),
            "diagnostics go to stderr, stdout stays clean"
        );
        insta::assert_snapshot!(stderr(&out));
    });
}

#[test]
fn there_are_at_least_thirty_malformed_profiles() {
    let n = std::fs::read_dir(crate::harness::repo_root().join("tests/profiles/invalid"))
        .unwrap()
        .count();
    assert!(n >= 30, "found {n}");
}

#[test]
fn every_shipped_profile_is_valid_under_every_environment() {
    let profiles = shipped_profiles();
    assert!(profiles.len() >= 4, "{profiles:?}");
    for profile in &profiles {
        for env in ["development", "staging", "production"] {
            let out = taskctl(&["validate", "--strict", "-p", profile, "-e", env]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{profile} -e {env}:\n{}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(&format!("(environment {env})")),
                "{}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn several_mistakes_are_all_reported_with_file_line_and_column() {
    let out = taskctl(&[
        "validate",
        "-p",
        "tests/profiles/invalid/many-mistakes.yaml",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    for expected in [
        "tests/profiles/invalid/many-mistakes.yaml:4:9",
        "tests/profiles/invalid/many-mistakes.yaml:11:14",
        "tests/profiles/invalid/many-mistakes.yaml:22:17",
        "tests/profiles/invalid/many-mistakes.yaml:32:5",
        "tests/profiles/invalid/many-mistakes.yaml:42:16",
    ] {
        assert!(err.contains(expected), "missing {expected} in:\n{err}");
    }
    assert!(err.contains("12 errors, 1 warning"), "{err}");
}

#[test]
fn json_output_lists_every_diagnostic_with_its_location() {
    let out = taskctl(&[
        "validate",
        "-p",
        "tests/profiles/invalid/many-mistakes.yaml",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"], 12);
    let diags = report["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 13);
    for d in diags {
        assert_eq!(d["file"], "tests/profiles/invalid/many-mistakes.yaml");
        assert!(
            d["line"].as_u64().unwrap() > 0 && d["column"].as_u64().unwrap() > 0,
            "{d}"
        );
        assert!(d["severity"] == "error" || d["severity"] == "warning");
    }
    let unknown = diags
        .iter()
        .find(|d| d["path"] == "agents[0].replcias")
        .unwrap();
    assert_eq!(unknown["help"], "did you mean `replicas`?");
}

#[test]
fn secrets_never_appear_in_diagnostics() {
    for format in ["table", "json"] {
        let out = taskctl(&[
            "validate",
            "-p",
            "tests/profiles/invalid/literal-secret.yaml",
            "-o",
            format,
        ]);
        let all = format!("{}{}", stdout(&out), stderr(&out));
        for secret in ["correct-horse-battery", "s3cr3t-value"] {
            assert!(
                !all.contains(secret),
                "{secret} leaked in {format} output:\n{all}"
            );
        }
        assert!(all.contains("vault:PATH#KEY"), "{all}");
    }
}

#[test]
fn warnings_pass_unless_strict() {
    let file = "tests/profiles/warnings/open-ssh.yaml";
    let out = taskctl(&["validate", "-p", file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: ingress on port 22 is open to the whole internet"));
    let strict = taskctl(&["validate", "--strict", "-p", file]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(stderr(&strict).contains("warnings fail under --strict"));
}

/// A field the target does not act on is a warning at its location; the
/// shipped profiles have none (`every_shipped_profile_is_valid_under_every_environment`
/// validates them with `--strict`).
#[test]
fn fields_the_target_ignores_are_warnings_with_their_location() {
    let file = "tests/profiles/warnings/ignored-fields.yaml";
    let out = taskctl(&["validate", "-p", file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    insta::assert_snapshot!(stderr(&out));
    let strict = taskctl(&["validate", "--strict", "-p", file]);
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn layered_profiles_merge_in_order() {
    // staging.yaml over production.yaml by hand gives what staging's include gives.
    let layered = taskctl(&[
        "render",
        "profile",
        "-p",
        "profiles/production.yaml",
        "-p",
        "profiles/staging.yaml",
        "-o",
        "json",
    ]);
    let included = taskctl(&[
        "render",
        "profile",
        "-p",
        "profiles/staging.yaml",
        "-o",
        "json",
    ]);
    assert_eq!(layered.status.code(), Some(0), "{}", stderr(&layered));
    assert_eq!(stdout(&layered), stdout(&included));
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let out = taskctl(&["validate", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = taskctl(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(64));
    // A bad flag beside --detailed-exitcode is a usage error, not "changes".
    let out = taskctl(&["plan", "--detailed-exitcode", "--bogus"]);
    assert_eq!(out.status.code(), Some(64));
    let out = taskctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("64 usage error") && help.contains("2 changes pending"),
        "{help}"
    );
    let out = taskctl(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn missing_profile_file_is_a_clear_error() {
    let out = taskctl(&["validate", "-p", "profiles/nope.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read profile `profiles/nope.yaml`"),
        "{}",
        stderr(&out)
    );
    let out = taskctl(&["validate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no profile given"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn push_is_refused_outside_the_docker_target_and_for_a_url() {
    let out = taskctl(&[
        "plan",
        "-p",
        "profiles/production.yaml",
        "--push",
        "127.0.0.1:5005",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--push applies to the docker target"),
        "{}",
        stderr(&out)
    );
    let out = taskctl(&[
        "plan",
        "-p",
        "profiles/local.yaml",
        "--push",
        "https://127.0.0.1:5005",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("expected HOST[:PORT][/PATH] with no scheme"),
        "{}",
        stderr(&out)
    );
}
