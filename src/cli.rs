//! Command-line arguments: raw values only. Commands turn them into domain
//! options and call the core.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "taskctl",
    version,
    about = "Validate, plan, deploy and roll back the Task Execution Layer from one profile",
    long_about = None,
    propagate_version = true,
    after_help = "Exit codes: 0 success, 1 failure, 2 changes pending (plan --detailed-exitcode), 64 usage error, 130 interrupted.\nDocs: README.md and profiles/README.md."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Profile file; repeat to layer several (later ones override earlier)
    #[arg(
        short = 'p',
        long = "profile",
        global = true,
        value_name = "FILE",
        env = "TASKCTL_PROFILE",
        value_delimiter = ','
    )]
    pub profiles: Vec<PathBuf>,
    /// Environment overlay to apply (default: the profile's `metadata.environment`)
    #[arg(
        short = 'e',
        long = "env",
        global = true,
        value_name = "NAME",
        env = "TASKCTL_ENV"
    )]
    pub environment: Option<String>,
    /// Output format
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// More detail (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors and requested data
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// No colors (also when NO_COLOR is set)
    #[arg(long, global = true)]
    pub no_color: bool,
    /// Answer yes to confirmations (required where there is no terminal)
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable
    Table,
    /// JSON (one object; streams: one object per line)
    Json,
    /// YAML
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check profiles and report every problem with file:line:column
    Validate(ValidateArgs),
    /// Show what taskctl would use, fully resolved
    #[command(subcommand)]
    Render(RenderCommand),
    /// Show what a deploy would change, per resource, with reasons
    Plan(PlanArgs),
    /// Make the target match the profile
    Deploy(DeployArgs),
    /// Remove everything the profile manages
    Destroy(DestroyArgs),
    /// Who holds the lock, what the last run did, and every container or pod
    Status(StatusArgs),
    /// Judge seed 001's deployment checklist from the profile, the
    /// environment's audit log and (docker) the running stack: pass, FAIL or
    /// unknown per item, with the evidence (exit 1 on any FAIL, for a CI
    /// gate before production)
    Checklist,
    /// The environment's releases: revision, status, when, images, why
    History,
    /// Restore a kept release (the one before the running one by default)
    Rollback(RollbackArgs),
    /// Inspect or break the environment's lock
    #[command(subcommand)]
    Lock(LockCommand),
    /// The profile's managed secrets in Vault: status and rotation (never a value)
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Send one signed task to the deployed agents and wait for its result
    #[command(subcommand)]
    Task(TaskCommand),
    /// The audit log: deploys, destroys, rollbacks and lock breaks
    Audit,
    /// Plugins: the profile's and those installed (plugins/ beside the profile, taskctl-* on PATH)
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Write a kubeconfig for the `aws` target's EKS cluster (stdout, or --out FILE)
    Kubeconfig(KubeconfigArgs),
    /// Print an EKS bearer token as a kubectl ExecCredential (the kubeconfig's credential plugin)
    EksToken(EksTokenArgs),
    /// Print the profile's JSON Schema
    Schema,
    /// Print shell completions
    Completions(CompletionsArgs),
    /// Print version information
    Version,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Fail on warnings too
    #[arg(long)]
    pub strict: bool,
    /// Also check against the real target: credentials, zones, instance types, GPUs, overlapping VPCs (aws); the engine and images (docker)
    #[arg(long)]
    pub online: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayerArg {
    /// Network, cluster and node groups
    Infrastructure,
    /// Platform services
    Services,
    /// The agents
    Agents,
}

#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// Only these layers (repeatable); all by default
    #[arg(long, value_enum, value_name = "LAYER")]
    pub only: Vec<LayerArg>,
    /// Steps run at once where dependencies allow
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: u16,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Exit 0 when nothing would change, 2 when changes are pending, 1 on error
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Save the plan; `deploy --plan FILE` applies exactly it
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Push the agent image to REGISTRY and run it from the pushed digest (target.docker.push for this run; docker)
    #[arg(long, value_name = "REGISTRY")]
    pub push: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Apply a plan saved with `plan --out`, refusing if the world changed since
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Plan only: the same path as a deploy, stopping before the first change
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds steps in flight may take to finish after Ctrl-C or SIGTERM
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub grace: u64,
    /// Skip the checks against the real target before deploying
    #[arg(long)]
    pub skip_preflight: bool,
    /// Take over fields another field manager owns instead of failing on the conflict (kubernetes)
    #[arg(long)]
    pub force_conflicts: bool,
    /// Let prune delete volume claims, volumes, CRDs, namespaces and secrets too (kubernetes)
    #[arg(long)]
    pub prune_all: bool,
    /// Push the agent image to REGISTRY and run it from the pushed digest (target.docker.push for this run; docker)
    #[arg(long, value_name = "REGISTRY")]
    pub push: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Each managed secret's version, age, next rotation and consumers
    Status,
    /// Rotate now: new values in Vault, then a deploy that rolls every consumer onto them
    Rotate(RotateArgs),
}

/// `status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Refresh until Ctrl-C (exit 0): the table is redrawn in place on a
    /// terminal; `-o json` prints one compact document per line per
    /// refresh, `-o yaml` one document each, separated by `---`
    #[arg(long)]
    pub watch: bool,
    /// Time between refreshes with --watch
    #[arg(
        long,
        default_value = "2s",
        requires = "watch",
        value_name = "DURATION"
    )]
    pub interval: humantime::Duration,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Sign a task with the agents' key, publish it and wait for its result
    #[command(
        after_help = "Examples:\n  taskctl -p profiles/local.yaml task send echo hello\n  taskctl -p profiles/local.yaml task send command -- /usr/bin/env -i\n  taskctl -p profiles/local.yaml task send http https://example.com/health\n\nExit codes: 0 the task succeeded, 1 it failed, was rejected or got no answer."
    )]
    Send(TaskSendArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskKindArg {
    /// Succeeds at once
    Noop,
    /// Echoes its arguments back
    Echo,
    /// Runs a program the agents allow (COMMAND_ALLOWED), with the arguments
    Command,
    /// GETs a URL an agent allows (HTTP_ALLOWED_HOSTS)
    Http,
}

#[derive(Debug, Args)]
pub struct TaskSendArgs {
    /// What to run
    #[arg(value_enum)]
    pub kind: TaskKindArg,
    /// The message (echo), program and arguments (command) or URL (http);
    /// arguments that start with `-` go after `--`
    #[arg(value_name = "ARGS")]
    pub args: Vec<String>,
    /// Queue to publish to (default: the agents' TASK_QUEUE)
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// How long to wait for the result, e.g. 30s
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub timeout: humantime::Duration,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Names from the profile's `secrets.entries`
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Only write the new versions to Vault; consumers move at the next deploy
    #[arg(long)]
    pub vault_only: bool,
    /// Seconds steps in flight may take to finish after Ctrl-C or SIGTERM
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Also delete the data: volumes (docker), persistent volume claims, volumes and namespaces (kubernetes, each named); without it they are kept
    #[arg(long, visible_alias = "delete-data")]
    pub purge: bool,
    /// Seconds steps in flight may take to finish after Ctrl-C or SIGTERM
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The revision to restore (see `taskctl history`); default: the newest
    /// release before the running one that did not fail
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub to: Option<u32>,
    /// The lead who approved the rollback, for the audit log; required when
    /// the profile asks for `approval_from_lead` and nobody can be asked
    /// (CI, no terminal); also answers the confirmation
    #[arg(long, value_name = "NAME")]
    pub approve: Option<String>,
    /// Steps run at once where dependencies allow
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: u16,
    /// Seconds steps in flight may take to finish after Ctrl-C or SIGTERM
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// Write to FILE (mode 0600) instead of stdout
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EksTokenArgs {
    /// The EKS cluster's name
    #[arg(long, value_name = "NAME")]
    pub cluster: String,
    /// The cluster's AWS region
    #[arg(long, value_name = "REGION", env = "AWS_REGION")]
    pub region: String,
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Name, version, capabilities and where each plugin was found; exit 1
    /// when a plugin the profile declares cannot be used
    List,
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the lock, since when, until when
    Status,
    /// Remove the lock whoever holds it (audited)
    Break {
        /// Why, for the audit log
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RenderCommand {
    /// The merged profile after includes, layers, the environment overlay and ${VAR} expansion (secrets stay references)
    Profile,
    /// Every Kubernetes object of the profile, schema-checked, in apply order (like `helm template`)
    Manifests(ManifestsArgs),
}

#[derive(Debug, Args)]
pub struct ManifestsArgs {
    /// Templates directory overriding the ones built into taskctl
    #[arg(long, env = "TASKCTL_TEMPLATES", value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Write one file per object into DIR instead of a YAML stream on stdout
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to generate completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_send(args: &[&str]) -> Result<(GlobalArgs, TaskSendArgs), clap::Error> {
        let cli = Cli::try_parse_from(args)?;
        match cli.command {
            Command::Task(TaskCommand::Send(send)) => Ok((cli.global, send)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn task_send_takes_global_options_anywhere_and_hyphen_arguments_after_a_double_dash() {
        let (global, send) = task_send(&[
            "taskctl", "task", "send", "echo", "hi", "there", "-p", "a.yaml",
        ])
        .unwrap();
        assert_eq!(global.profiles, [PathBuf::from("a.yaml")]);
        assert_eq!(send.args, ["hi", "there"]);
        let (_, send) = task_send(&[
            "taskctl", "-p", "a.yaml", "task", "send", "command", "--", "/bin/sh", "-c", "id",
        ])
        .unwrap();
        assert_eq!(send.kind, TaskKindArg::Command);
        assert_eq!(send.args, ["/bin/sh", "-c", "id"]);
        let err = task_send(&["taskctl", "task", "send", "command", "/bin/sh", "-c", "id"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("'-c'"), "{err}");
    }
}
