//! Integration tests of taskctl-aws against a real moto server.
//!
//! Run `scripts/test-env.sh up` (it starts moto on 127.0.0.1:5055), then
//! `eval "$(scripts/test-env.sh env)"`. Without `TASKCTL_TEST_AWS_ENDPOINT`
//! every test fails and says so: they never pass silently.
//!
//! moto's state is shared by everyone's tests on that server, so each test
//! works in its own environment (a random `metadata.name`) and looks only at
//! what carries that environment's tags. Nothing here resets moto.

mod common;
mod errors;
mod iam;
mod network;
mod node_group;
mod preflight;
mod resume;
mod stack;
mod state;
mod sweep;
