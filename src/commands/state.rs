//! `taskctl status`, `taskctl lock status|break`, `taskctl audit`: reading
//! and repairing an environment's state.

use crate::cli::{LockCommand, OutputFormat, StatusArgs};
use crate::context::Context;
use crate::exit;
use crate::ui::{Shell, StatusStyle};
use taskctl_core::ops;

pub fn status(ctx: &Context, shell: &mut Shell, args: &StatusArgs) -> anyhow::Result<u8> {
    let profile = ctx.valid_profile(shell)?;
    let rt = ctx.runtime()?;
    let store = rt.block_on(ctx.store(&profile))?;
    let env = ops::environment_key(&profile);
    // The provider is made once: a watch asks it again at every refresh.
    let provider = rt.block_on(crate::providers::for_profile(&profile));
    let gather = || {
        rt.block_on(async {
            let mut status = ops::status(store.as_ref(), &env).await?;
            // What runs: the local engine's containers, or the cluster's
            // pods; a status that cannot reach them still tells the lock
            // and the last run.
            match &provider {
                Ok(p) => {
                    match p.workloads(&profile).await {
                        Ok(w) => status.workloads = w,
                        Err(e) => status.workloads_error = Some(format!("{e:#}")),
                    }
                    // The running release and its checks' last values;
                    // unreadable releases leave the rest of the status.
                    if let Some(store) = p.releases(&profile)
                        && let Ok(Some(current)) = store.current().await
                    {
                        status.release = Some(current.into());
                    }
                }
                Err(e) => status.workloads_error = Some(format!("{e:#}")),
            }
            Ok::<_, anyhow::Error>(status)
        })
    };
    use taskctl_core::profile::TargetKind;
    let noun = match profile.target.kind {
        TargetKind::Kubernetes | TargetKind::Aws => "pods",
        _ => "containers",
    };
    if !args.watch {
        let status = gather()?;
        if ctx.output != OutputFormat::Table {
            shell.data(&status)?;
        } else {
            shell.text(&status_table(&status, noun))?;
        }
        return Ok(exit::SUCCESS);
    }
    let interval: std::time::Duration = args.interval.into();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let status = gather()?;
        match ctx.output {
            OutputFormat::Json => shell.text(&format!("{}\n", serde_json::to_string(&status)?))?,
            OutputFormat::Yaml => {
                shell.text("---\n")?;
                shell.data(&status)?;
            }
            OutputFormat::Table => {
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                let header = format!(
                    "every {} (Ctrl-C to stop)   {now}\n\n",
                    humantime::format_duration(interval)
                );
                // Redrawn in place on a terminal; appended otherwise.
                let clear = if terminal { "\x1b[H\x1b[2J" } else { "" };
                shell.text(&format!("{clear}{header}{}\n", status_table(&status, noun)))?;
            }
        }
        let stop = rt.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = tokio::signal::ctrl_c() => true,
            }
        });
        if stop {
            return Ok(exit::SUCCESS);
        }
    }
}

/// The human form of `status`.
fn status_table(status: &ops::EnvironmentStatus, noun: &str) -> String {
    let mut text = format!(
        "environment  {}\nstate        {}\n",
        status.environment, status.state
    );
    match &status.lock {
        Some(l) => {
            text += &format!(
                "lock         held by {} ({} run {}) since {}, expires {}\n",
                l.holder,
                l.operation,
                l.run_id,
                l.started(),
                l.expires()
            )
        }
        None => text += "lock         free\n",
    }
    match &status.last_run {
        Some(r) => {
            text += &format!(
                "last run     {} {}: {} ({} step(s) done)\n",
                r.operation, r.run, r.outcome, r.completed_steps
            );
            for s in &r.in_flight {
                text += &format!("  in flight  {s} (the next run re-observes it)\n");
            }
        }
        None => text += "last run     none\n",
    }
    if let Some(e) = &status.workloads_error {
        text += &format!("{noun:<12} unknown: {e}\n");
    }
    match status.workloads.as_deref() {
        None => {}
        Some([]) => text += &format!("{noun:<12} none\n"),
        Some(workloads) => {
            let width = workloads.iter().map(|w| w.name.len()).max().unwrap_or(0);
            let state_width = workloads
                .iter()
                .map(|w| w.state.len())
                .max()
                .unwrap_or(0)
                .max(10);
            text += &format!(
                "{noun}\n  {:width$}  {:state_width$} {:10} {:12} {:8}  {:8} {:12} NODE\n",
                "NAME", "STATE", "HEALTH", "IMAGE", "RESTARTS", "RELEASE", "LAST EXIT"
            );
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            for w in workloads {
                text += &format!(
                    "  {:width$}  {:state_width$} {:10} {:12} {:8}  {:8} {:12} {}\n",
                    w.name,
                    w.state,
                    w.health,
                    dash(&w.image),
                    w.restarts,
                    dash(&w.release),
                    dash(&w.last_termination),
                    dash(&w.node)
                );
            }
        }
    }
    // After what runs: the running release and its checks' last values.
    if let Some(r) = &status.release {
        text += &format!(
            "release      {} {} ({}), {}\n",
            r.revision,
            r.status,
            r.description,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.created_at)
            )
        );
        for c in &r.checks {
            let verdict = if !c.evaluated {
                "not evaluated"
            } else if c.passed {
                "passed"
            } else {
                "FAILED"
            };
            text += &format!("  {verdict:<13} {} ({}): {}\n", c.name, c.kind, c.observed);
        }
    }
    text
}

pub fn lock(ctx: &Context, shell: &mut Shell, command: LockCommand) -> anyhow::Result<u8> {
    let profile = ctx.valid_profile(shell)?;
    let rt = ctx.runtime()?;
    let store = rt.block_on(ctx.store(&profile))?;
    let env = ops::environment_key(&profile);
    match command {
        LockCommand::Status => {
            let lease = rt.block_on(ops::lock_status(store.as_ref()))?;
            if ctx.output != OutputFormat::Table {
                shell.data(&lease)?;
            } else {
                match lease {
                    Some(l) => shell.text(&format!(
                        "{env} is locked by {} (pid {}, {} run {}) since {}, expires {}\n",
                        l.holder,
                        l.pid,
                        l.operation,
                        l.run_id,
                        l.started(),
                        l.expires()
                    ))?,
                    None => shell.text(&format!("{env} is not locked\n"))?,
                }
            }
            Ok(exit::SUCCESS)
        }
        LockCommand::Break { reason } => {
            if !ctx.confirm(&format!(
                "Break the lock of {env}? A run still holding it would go on unprotected."
            )) {
                anyhow::bail!("lock break not confirmed");
            }
            let removed = rt.block_on(ops::break_lock(store.as_ref(), &env, &reason))?;
            match removed {
                ops::Broken::Lease(l) => shell.status(
                    StatusStyle::Ok,
                    "broken",
                    &format!(
                        "removed the lock of {} (run {}); recorded in the audit log",
                        l.holder, l.run_id
                    ),
                ),
                ops::Broken::Unreadable(why) => shell.status(
                    StatusStyle::Ok,
                    "broken",
                    &format!("removed an unreadable lock file ({why}); recorded in the audit log"),
                ),
                ops::Broken::Free => shell.status(
                    StatusStyle::Ok,
                    "free",
                    &format!("{env} was not locked; recorded in the audit log"),
                ),
            }
            Ok(exit::SUCCESS)
        }
    }
}

pub fn audit(ctx: &Context, shell: &mut Shell) -> anyhow::Result<u8> {
    let profile = ctx.valid_profile(shell)?;
    let rt = ctx.runtime()?;
    let store = rt.block_on(ctx.store(&profile))?;
    let entries = rt.block_on(store.audit())?;
    if ctx.output != OutputFormat::Table {
        shell.data(&entries)?;
        return Ok(exit::SUCCESS);
    }
    let mut text = String::new();
    for e in &entries {
        text += &format!("{}  {:<18} {:<24} {}\n", e.at, e.action, e.actor, e.detail);
    }
    if entries.is_empty() {
        text = "no audit entries yet\n".into();
    }
    shell.text(&text)?;
    Ok(exit::SUCCESS)
}

/// `taskctl checklist`: seed 001's deployment checklist, judged.
pub fn checklist(ctx: &Context, shell: &mut Shell) -> anyhow::Result<u8> {
    use taskctl_core::ops::checklist::{self, Verdict};
    let profile = ctx.valid_profile(shell)?;
    let rt = ctx.runtime()?;
    let store = rt.block_on(ctx.store(&profile))?;
    let audit = rt.block_on(store.audit())?;
    let items = checklist::judge(&profile, &audit, std::time::SystemTime::now());
    // Where the environment runs, what it shows now (a target that cannot
    // be reached is said, and judged from the profile alone).
    let live = rt.block_on(async {
        let provider = crate::providers::for_profile(&profile).await?;
        anyhow::Ok(provider.checklist_probes(&profile).await?)
    });
    let (items, looked) = match live {
        Ok(Some(probes)) => (
            checklist::with_live(items, &probes),
            "the running environment, ",
        ),
        Ok(None) => (items, ""),
        Err(e) => {
            shell.status(
                StatusStyle::Warning,
                "live",
                &format!("the running environment was not looked at: {e:#}"),
            );
            (items, "")
        }
    };
    let failed = items.iter().filter(|i| i.verdict == Verdict::Fail).count();
    if ctx.output != OutputFormat::Table {
        shell.data(&items)?;
    } else {
        let width = items.iter().map(|i| i.id.len()).max().unwrap_or(0);
        let mut text = String::new();
        for i in &items {
            text += &format!("{:7}  {:width$}  {}\n", i.verdict.label(), i.id, i.title);
            text += &format!("{:7}  {:width$}  {}\n", "", "", i.reason);
            for e in &i.evidence {
                text += &format!("{:7}  {:width$}    - {e}\n", "", "");
            }
        }
        let count = |v: Verdict| items.iter().filter(|i| i.verdict == v).count();
        text += &format!(
            "\n{} passed, {failed} failed, {} unknown (judged from {looked}the profile and the audit log of {})\n",
            count(Verdict::Pass),
            count(Verdict::Unknown),
            ops::environment_key(&profile)
        );
        shell.text(&text)?;
    }
    Ok(if failed > 0 {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}
