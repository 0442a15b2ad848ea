//! `taskctl task send`: one task, signed with the agents' key, through the
//! environment's broker, and its result.
//!
//! It is the functional gate's producer (`taskctl_gates::send_task`) with
//! the operator's task: the broker address, the agents' credentials and the
//! signing key come from the profile and Vault exactly as the gate gets
//! them, and nothing secret is printed.

use std::time::Duration;

use crate::cli::{OutputFormat, TaskKindArg, TaskSendArgs};
use crate::context::Context;
use crate::exit;
use crate::ui::{Shell, StatusStyle};
use taskctl_core::profile::TargetKind;
use taskctl_gates::Sent;
use taskctl_protocol::{TaskKind, TaskStatus};

pub fn send(ctx: &Context, shell: &mut Shell, args: TaskSendArgs) -> anyhow::Result<u8> {
    let kind = task_kind(&args)?;
    let profile = ctx.valid_profile(shell)?;
    if profile.target.kind != TargetKind::Docker {
        anyhow::bail!(
            "`task send` reaches the broker on the docker target only: on `{:?}` the broker \
             runs inside the cluster, where taskctl has no route to it yet",
            profile.target.kind
        );
    }
    let rt = ctx.runtime()?;
    let budget: Duration = args.timeout.into();
    let (endpoints, queue) = rt.block_on(async {
        let (secrets, _vault) = crate::secrets::resolver(&profile);
        let docker = taskctl_docker::DockerProvider::connect(taskctl_docker::DockerOptions {
            purge: false,
            secrets: secrets.clone(),
        })
        .await?;
        let endpoints =
            taskctl_docker::verify::endpoints(docker.docker(), &profile, &secrets).await?;
        let queue = args.queue.clone().unwrap_or_else(|| agents_queue(&profile));
        Ok::<_, anyhow::Error>((endpoints, queue))
    })?;
    let Some(amqp_url) = endpoints.amqp_url else {
        anyhow::bail!("the profile names no broker the agents connect to (BROKER_URL)");
    };
    if endpoints.task_signing_key.is_none() {
        shell.status(
            StatusStyle::Warning,
            "warning:",
            "no signing key (the agents' TASK_SIGNING_PUBLIC_KEYS is not a vault: reference and \
             TASKCTL_TASK_SIGNING_KEY is unset): the task goes unsigned and agents refuse it \
             unless ALLOW_UNSIGNED_TASKS=true",
        );
    }
    let id = taskctl_gates::task_id("task");
    let broker = taskctl_gates::Broker {
        url: &amqp_url,
        ca: endpoints.broker_ca.as_deref(),
        via: endpoints.broker_via.as_deref(),
    };
    let sent = rt.block_on(taskctl_gates::send_task(
        broker,
        &queue,
        &id,
        kind,
        endpoints.task_signing_key.as_deref(),
        budget,
        "taskctl-task-send",
    ));
    match sent {
        Sent::Answered(result, round_trip) => {
            let ok = result.status == TaskStatus::Succeeded;
            if ctx.output == OutputFormat::Table {
                let mut line = format!(
                    "task {} {} in {} ms on agent {}",
                    result.task_id,
                    result.status.name(),
                    round_trip.as_millis(),
                    result.agent_id
                );
                if let Some(code) = result.code {
                    line += &format!(" (code {code})");
                }
                if let Some(error) = &result.error {
                    line += &format!(": {error}");
                }
                shell.status(
                    if ok {
                        StatusStyle::Ok
                    } else {
                        StatusStyle::Error
                    },
                    if ok { "ok" } else { "failed" },
                    &line,
                );
                shell.text(&result.output)?;
                if !result.stderr.is_empty() {
                    shell.status(StatusStyle::Warning, "stderr:", result.stderr.trim_end());
                }
            } else {
                shell.data(&result)?;
            }
            Ok(if ok { exit::SUCCESS } else { exit::FAILURE })
        }
        Sent::Unanswered(why) | Sent::Refused(why) => {
            anyhow::bail!("task {id} to `{queue}`: {why}")
        }
    }
}

/// The task the arguments describe, or what is missing.
fn task_kind(args: &TaskSendArgs) -> anyhow::Result<TaskKind> {
    Ok(match args.kind {
        TaskKindArg::Noop => {
            if !args.args.is_empty() {
                anyhow::bail!("a noop task takes no arguments");
            }
            TaskKind::Noop
        }
        TaskKindArg::Echo => TaskKind::Echo {
            message: args.args.join(" "),
            delay_ms: 0,
        },
        TaskKindArg::Command => {
            if args.args.is_empty() {
                anyhow::bail!(
                    "expected the program's absolute path and its arguments, e.g. `task send command -- /usr/bin/env -i`"
                );
            }
            TaskKind::Command {
                argv: args.args.clone(),
                env: Default::default(),
                cwd: None,
            }
        }
        TaskKindArg::Http => match args.args.as_slice() {
            [url] => TaskKind::Http {
                method: "GET".into(),
                url: url.clone(),
                headers: Default::default(),
                body: None,
            },
            _ => anyhow::bail!("expected one URL, e.g. `task send http https://example.com/`"),
        },
    })
}

/// The queue the profile's first agent consumes.
fn agents_queue(profile: &taskctl_core::profile::Profile) -> String {
    profile
        .agents
        .first()
        .and_then(|a| a.env.iter().find(|v| v.name == "TASK_QUEUE"))
        .and_then(|v| v.value.clone())
        .unwrap_or_else(|| taskctl_protocol::TASK_QUEUE.to_owned())
}
