//! The agent image: built from the static agent or pulled, pinned by id.

use super::*;

pub struct AgentImage {
    pub id: StepId,
    pub shared: Arc<Shared>,
    pub agent: Agent,
}

impl AgentImage {
    fn prepared(&self) -> Result<Option<image::Prepared>, StepError> {
        let source = image::source(&self.agent).map_err(invalid)?;
        image::prepare(&self.agent, &source).map_err(invalid)
    }
}

#[async_trait]
impl Step for AgentImage {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "docker-image"
    }
    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let docker = &self.shared.docker;
        let prepared = match self.prepared() {
            Ok(p) => p,
            // No binary to build from. A deploy's preflight has already
            // refused; a destroy or a plan must still see what runs, so
            // the step plans a build that its apply will refuse.
            Err(e) => {
                return Ok(StepPlan {
                    change: Change::create(format!("cannot build: {}", e.message)),
                    outputs: [("image".to_string(), self.agent.image.clone())].into(),
                });
            }
        };
        match prepared {
            Some(prepared) => {
                let outputs: Outputs = [("image".to_string(), prepared.tag.clone())].into();
                let built = image::local_id(docker, &prepared.tag).await?;
                let tagged = image::local_id(docker, &self.agent.image).await?;
                let change = if built.is_none() {
                    Change::create(format!("build {} from {}", prepared.tag, prepared.from))
                } else if tagged != built {
                    Change::update(vec![FieldDiff::new(
                        "tag",
                        format!("{} elsewhere", self.agent.image),
                        &prepared.tag,
                    )])
                } else {
                    Change::none()
                };
                Ok(StepPlan { change, outputs })
            }
            None => {
                let id = image::local_id(docker, &self.agent.image).await?;
                match (id, registry(&self.shared.profile)) {
                    (Some(id), _) => Ok(StepPlan {
                        change: Change::none(),
                        outputs: [(
                            "image".to_string(),
                            pinned_name(docker, &self.agent.image, id).await?,
                        )]
                        .into(),
                    }),
                    (None, Some(reg)) => Ok(StepPlan {
                        change: Change::create(format!("pull {} from {reg}", self.agent.image)),
                        outputs: [("image".to_string(), self.agent.image.clone())].into(),
                    }),
                    (None, None) => Err(image::missing_image(
                        &self.agent.image,
                        &format!("agent `{}`", self.agent.name),
                    )),
                }
            }
        }
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let docker = &self.shared.docker;
        match self.prepared()? {
            Some(prepared) => {
                match image::local_id(docker, &prepared.tag).await? {
                    Some(id) => {
                        // Built before: only the profile's tag may be missing.
                        image::tag(docker, &id, &self.agent.image).await?;
                    }
                    None => {
                        ctx.progress(&format!("building {} (no pull)", prepared.tag));
                        let mut labels = base_labels(&self.shared.profile, "image");
                        labels.insert(label::AGENT.into(), self.agent.name.clone());
                        image::build(docker, &prepared, &self.agent.image, hash_map(labels))
                            .await?;
                    }
                }
                Ok([("image".to_string(), prepared.tag)].into())
            }
            None => {
                let id = ensure_image(
                    &self.shared,
                    &self.agent.image,
                    &format!("agent `{}`", self.agent.name),
                )
                .await?;
                Ok([(
                    "image".to_string(),
                    pinned_name(docker, &self.agent.image, id).await?,
                )]
                .into())
            }
        }
    }

    /// Images stay: they are a content-addressed cache (and a release
    /// record's container keeps the image it ran); `docker image prune`
    /// removes unused ones.
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}

/// What replicas run for an image given by reference: for a pinned
/// `tag@sha256:…` (a release's image) whose tag still names that very
/// content, the tag, so that a rollback to the release that runs already
/// matches its containers and replaces none; otherwise the image id.
pub(super) async fn pinned_name(
    docker: &Docker,
    reference: &str,
    id: String,
) -> Result<String, StepError> {
    if let Some((tag, _)) = reference.split_once('@')
        && image::local_id(docker, tag).await?.as_deref() == Some(id.as_str())
    {
        return Ok(tag.to_string());
    }
    Ok(id)
}
