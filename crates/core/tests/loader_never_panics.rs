//! The loader must answer every input with diagnostics, never a panic:
//! arbitrary text, and the shipped production profile mutated at random
//! (cut, spliced, characters inserted), which reaches far deeper than random
//! text does.

use proptest::prelude::*;
use std::path::PathBuf;
use taskctl_core::profile::{LoadOptions, load};

fn load_text(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, text).unwrap();
    let vars = |name: &str| (name == "SET").then(|| "value".to_string());
    let loaded = load(&LoadOptions {
        files: vec![path],
        environment: None,
        vars: &vars,
    });
    // Whatever happened, it is reported: a profile, or at least one error.
    assert!(loaded.valid_profile().is_some() || loaded.diagnostics.has_errors());
}

fn production() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../profiles/production.yaml");
    std::fs::read_to_string(path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(text in "\\PC{0,200}") {
        load_text(&text);
    }

    #[test]
    fn yaml_like_text(text in "([a-z_]{1,8}: ?(\\[|\\{|-|\\$\\{|[0-9a-z./%]{0,6}|\"|&a|\\*a|<<)?\n {0,4}){0,30}") {
        load_text(&text);
    }

    #[test]
    fn mutated_production_profile(
        cut_at in 0usize..10_000,
        cut_len in 0usize..200,
        insert_at in 0usize..10_000,
        insert in "[\\[\\]{}:,\\-'\"&*!%@ \n\ta-z0-9]{0,8}",
    ) {
        let mut text = production();
        let boundary = |s: &str, i: usize| {
            let mut i = i % (s.len() + 1);
            while !s.is_char_boundary(i) { i -= 1; }
            i
        };
        let start = boundary(&text, cut_at);
        let end = boundary(&text, (start + cut_len).min(text.len()));
        text.replace_range(start..end, "");
        let at = boundary(&text, insert_at);
        text.insert_str(at, &insert);
        load_text(&text);
    }
}
