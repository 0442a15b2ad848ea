//! What every command gets: the global options, resolved once, and the
//! shared machinery (profile loading, state store, event sink, runtime,
//! interrupt handling).

use crate::cli::{GlobalArgs, OutputFormat};
use crate::ui::{Shell, StatusStyle, events};
use anyhow::Context as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use taskctl_aws::{S3Location, S3Store};
use taskctl_core::events::EventSink;
use taskctl_core::profile::{LoadOptions, Loaded, Profile, StateBackend};
use taskctl_core::state::{LocalStore, StateStore};
use tokio_util::sync::CancellationToken;

/// Journal and audit entries pass through the redaction registry.
fn redacting(inner: Arc<dyn StateStore>) -> Arc<dyn StateStore> {
    Arc::new(taskctl_core::secrets::RedactingStore {
        inner,
        redactor: crate::redact::registry().clone(),
    })
}

pub struct Context {
    pub profiles: Vec<PathBuf>,
    pub environment: Option<String>,
    pub output: OutputFormat,
    pub assume_yes: bool,
    pub verbose: bool,
    pub quiet: bool,
}

impl Context {
    pub fn new(global: GlobalArgs) -> Self {
        Context {
            profiles: global.profiles,
            environment: global.environment,
            output: global.output,
            assume_yes: global.yes,
            verbose: global.verbose > 0,
            quiet: global.quiet,
        }
    }

    /// Loads and validates the profiles named with `-p`.
    pub fn load_profile(&self) -> Loaded {
        let vars = |name: &str| std::env::var(name).ok();
        taskctl_core::profile::load(&LoadOptions {
            files: self.profiles.clone(),
            environment: self.environment.clone(),
            vars: &vars,
        })
    }

    /// The valid profile, or the diagnostics printed and an error.
    pub fn valid_profile(&self, shell: &mut Shell) -> anyhow::Result<Profile> {
        let loaded = self.load_profile();
        shell.diagnostics(&loaded.diagnostics);
        match loaded.valid_profile() {
            Some(p) => Ok(p.clone()),
            None => {
                shell.status(
                    StatusStyle::Error,
                    "invalid",
                    "the profile has errors; nothing was done",
                );
                anyhow::bail!("the profile is invalid (`taskctl validate` lists the problems)")
            }
        }
    }

    /// The state store of the profile's environment. The S3 backend builds
    /// its client here (credentials are resolved once, so a missing one is
    /// reported before anything starts): call it inside the runtime.
    pub async fn store(&self, profile: &Profile) -> anyhow::Result<Arc<dyn StateStore>> {
        let key = taskctl_core::ops::environment_key(profile);
        match profile.state.backend {
            StateBackend::Local => Ok(redacting(Arc::new(LocalStore::new(
                Path::new(&profile.state.path),
                &key,
            )))),
            StateBackend::S3 => {
                // Validation refuses `backend: s3` without `s3`.
                let Some(s3) = &profile.state.s3 else {
                    anyhow::bail!("`state.backend: s3` needs `state.s3.bucket`");
                };
                // The bucket's region: its own setting, else the aws
                // target's, else the environment's (AWS_REGION).
                let region =
                    s3.region
                        .as_deref()
                        .or(profile.target.aws.as_ref().map(|a| a.region.as_str()));
                let location = S3Location {
                    bucket: s3.bucket.clone(),
                    prefix: s3.prefix.clone(),
                    environment: key,
                };
                Ok(redacting(Arc::new(
                    S3Store::from_env(location, region).await?,
                )))
            }
        }
    }

    /// How events are shown: JSON lines, live progress on a terminal, or
    /// plain lines.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        match self.output {
            OutputFormat::Json => Arc::new(events::JsonLines),
            _ if self.quiet => Arc::new(taskctl_core::events::Discard),
            _ if std::io::stderr().is_terminal() => Arc::new(events::Progress::new()),
            _ => Arc::new(events::Lines {
                verbose: self.verbose,
            }),
        }
    }

    pub fn runtime(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    }

    /// Asks before changing anything: `--yes` answers for the user; without
    /// a terminal nobody can answer, so the answer is no.
    pub fn confirm(&self, question: &str) -> bool {
        if self.assume_yes {
            return true;
        }
        if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
            eprintln!("{question} [refused: no terminal to ask on; pass --yes]");
            return false;
        }
        eprint!("{question} [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok()
            && matches!(answer.trim(), "y" | "Y" | "yes")
    }
}

/// A token cancelled at the first Ctrl-C or SIGTERM; a second one exits at
/// once with 130.
pub fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                eprintln!(
                    "interrupted: finishing the steps in flight, starting no new ones (again to stop at once)"
                );
                t.cancel();
            } else {
                std::process::exit(crate::exit::INTERRUPTED as i32);
            }
        }
    });
    token
}
