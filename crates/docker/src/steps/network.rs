//! The environment's own bridge network.

use super::*;

pub struct Network {
    pub id: StepId,
    pub shared: Arc<Shared>,
}

impl Network {
    fn name(&self) -> String {
        spec::network_name(&self.shared.profile)
    }
}

#[async_trait]
impl Step for Network {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "docker-network"
    }
    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let name = self.name();
        let outputs: Outputs = [("network".to_string(), name.clone())].into();
        match self
            .shared
            .docker
            .inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) => {
                let env = spec::environment_label(&self.shared.profile);
                let labels = n.labels.unwrap_or_default();
                if labels.get(label::ENVIRONMENT) != Some(&env) {
                    return Err(invalid(format!(
                        "network {name} exists but is not this environment's ({env}); pick another target.docker.network or remove it"
                    )));
                }
                Ok(StepPlan {
                    change: Change::none(),
                    outputs,
                })
            }
            Err(e) if is_not_found(&e) => Ok(StepPlan {
                change: Change::create("not found"),
                outputs,
            }),
            Err(e) => Err(step_error(&format!("inspecting network {name}"), e)),
        }
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        if plan.change.action.is_change() {
            let again = self.plan(ctx).await?;
            if again.change.action.is_change() {
                let name = self.name();
                self.shared
                    .docker
                    .create_network(NetworkCreateRequest {
                        name: name.clone(),
                        driver: Some("bridge".into()),
                        labels: Some(hash_map(base_labels(&self.shared.profile, "network"))),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| step_error(&format!("creating network {name}"), e))?;
            }
        }
        Ok(plan.outputs.clone())
    }

    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let name = self.name();
        match self.shared.docker.remove_network(&name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(step_error(&format!("removing network {name}"), e)),
        }
    }
}
