//! Removing what the profile no longer names.

use super::*;

/// Runs after every replica: removes agent and component containers the
/// profile no longer has (scaled down, renamed agents). On destroy it runs first and
/// removes everything labelled with the environment, in scope.
pub struct Sweep {
    pub id: StepId,
    pub shared: Arc<Shared>,
    pub deps: Vec<StepId>,
    /// Every layer is in scope: destroy also removes services, release
    /// records and the network.
    pub everything: bool,
}

impl Sweep {
    fn wanted(&self) -> Vec<String> {
        let p = &self.shared.profile;
        let mut names = Vec::new();
        for (_, a) in p.workloads() {
            for i in 1..=a.replicas {
                let n = replica_name(p, &a.name, i);
                names.push(next_name(&n));
                names.push(n);
            }
        }
        names
    }

    async fn orphans(&self) -> Result<Vec<String>, StepError> {
        let env = spec::environment_label(&self.shared.profile);
        let mut agents = Vec::new();
        for role in ["agent", "component"] {
            agents.extend(
                engine::containers_with(
                    &self.shared.docker,
                    &[(label::ENVIRONMENT, &env), (label::ROLE, role)],
                )
                .await?,
            );
        }
        let wanted = self.wanted();
        Ok(agents
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .map(|n| n.trim_start_matches('/').to_string())
            .filter(|n| !wanted.contains(n))
            .collect())
    }

    fn remove_file_sd(&self, container: &str) {
        if let Some(dir) = self
            .shared
            .profile
            .target
            .docker
            .as_ref()
            .and_then(|d| d.prometheus_file_sd.as_ref())
            .filter(|dir| !dir.is_empty())
        {
            let _ = std::fs::remove_file(PathBuf::from(dir).join(format!("{container}.json")));
        }
    }
}

#[async_trait]
impl Step for Sweep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "docker-sweep"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let orphans = self.orphans().await?;
        let change = if orphans.is_empty() {
            Change::none()
        } else {
            Change::update(
                orphans
                    .iter()
                    .map(|n| {
                        FieldDiff::new(format!("container {n}"), "not in the profile", "removed")
                    })
                    .collect(),
            )
        };
        Ok(StepPlan {
            change,
            outputs: Outputs::new(),
        })
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        for name in self.orphans().await? {
            ctx.progress(&format!("removing {name}"));
            engine::remove(&self.shared.docker, &name, STOP_SECONDS).await?;
            self.remove_file_sd(&name);
        }
        Ok(Outputs::new())
    }

    async fn destroy(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let docker = &self.shared.docker;
        let env = spec::environment_label(&self.shared.profile);
        let mut found = Vec::new();
        if self.everything {
            found = engine::containers_with(docker, &[(label::ENVIRONMENT, env.as_str())]).await?;
        } else {
            for role in ["agent", "component"] {
                found.extend(
                    engine::containers_with(
                        docker,
                        &[(label::ENVIRONMENT, env.as_str()), (label::ROLE, role)],
                    )
                    .await?,
                );
            }
        }
        for c in found {
            for name in c.names.unwrap_or_default() {
                let name = name.trim_start_matches('/');
                ctx.progress(&format!("removing {name}"));
                engine::remove(docker, name, STOP_SECONDS).await?;
                self.remove_file_sd(name);
            }
        }
        if !self.everything {
            return Ok(());
        }
        let filters: HashMap<String, Vec<String>> = [(
            "label".to_string(),
            vec![format!("{}={env}", label::ENVIRONMENT)],
        )]
        .into();
        let networks = docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .map_err(|e| step_error("listing networks", e))?;
        for n in networks {
            if let Some(name) = n.name {
                ctx.progress(&format!("removing network {name}"));
                match docker.remove_network(&name).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(step_error(&format!("removing network {name}"), e)),
                }
            }
        }
        if self.shared.purge {
            let volumes = docker
                .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                    filters: Some(filters),
                }))
                .await
                .map_err(|e| step_error("listing volumes", e))?;
            for v in volumes.volumes.unwrap_or_default() {
                ctx.progress(&format!("removing volume {}", v.name));
                remove_volume(docker, &v.name).await?;
            }
        }
        Ok(())
    }
}
