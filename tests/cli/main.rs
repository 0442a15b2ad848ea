//! Integration tests of the `taskctl` binary: one test binary, one module per
//! command. Fixtures live in `tests/profiles/`; terminal output is pinned in
//! `tests/cli/snapshots/` (review changes with `cargo insta review`, or set
//! `INSTA_UPDATE=always` to rewrite them).

mod aws;
mod components;
mod docker;
mod harness;
mod install;
mod kubernetes;
mod plugins;
mod probe;
mod releases;
mod render;
mod schema;
mod secrets;
mod stack;
mod state;
mod state_s3;
mod validate;
