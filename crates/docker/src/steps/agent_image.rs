//! The agent image: built from the static agent or pulled, pinned by id.

use super::*;

pub struct AgentImage {
    pub id: StepId,
    pub shared: Arc<Shared>,
    pub agent: Agent,
}

impl AgentImage {
    fn prepared(&self) -> Result<Option<image::Prepared>, StepError> {
        let source = image::source(&self.agent).map_err(StepError::from)?;
        image::prepare(&self.agent, &source).map_err(StepError::from)
    }

    /// The name an image is pushed under: the reference the local step
    /// gave, or the profile's image when that is a bare image id (an
    /// existing image whose tag names other content).
    fn push_name<'a>(&'a self, local: &'a str) -> &'a str {
        if local.starts_with("sha256:") {
            &self.agent.image
        } else {
            local
        }
    }

    /// The image on the engine: built, tagged or pulled.
    async fn plan_local(&self) -> Result<StepPlan, StepError> {
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

    async fn apply_local(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
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
        let plan = self.plan_local().await?;
        let Some(registry) = push_registry(&self.shared.profile) else {
            return Ok(plan);
        };
        let local = plan.outputs.get("image").cloned().unwrap_or_default();
        let docker = &self.shared.docker;
        // An image that is not built yet has not been pushed either.
        let pushed = match image::local_id(docker, &local).await? {
            Some(id) if plan.change.action == Action::NoOp => {
                let credentials = registry_credentials(&self.shared, &registry).await?;
                image::pushed(docker, &id, self.push_name(&local), &registry, credentials).await?
            }
            _ => None,
        };
        let (remote, tag) = image::in_registry(self.push_name(&local), &registry);
        Ok(match pushed {
            Some(digest) => StepPlan {
                change: Change::none(),
                outputs: [("image".to_string(), digest)].into(),
            },
            None => StepPlan {
                change: if plan.change.action == Action::NoOp {
                    Change::create(format!("push {local} to {remote}:{tag}"))
                } else {
                    Change::create(format!(
                        "{}, then push it to {remote}:{tag}",
                        plan.change.reason
                    ))
                },
                outputs: [("image".to_string(), format!("{remote}:{tag}"))].into(),
            },
        })
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        let local = self.apply_local(ctx, plan).await?;
        let Some(registry) = push_registry(&self.shared.profile) else {
            return Ok(local);
        };
        let docker = &self.shared.docker;
        let reference = local.get("image").cloned().unwrap_or_default();
        let id = image::local_id(docker, &reference).await?.ok_or_else(|| {
            StepError::new(
                ErrorKind::Other,
                format!("image {reference} vanished before its push"),
            )
        })?;
        let name = self.push_name(&reference);
        let credentials = registry_credentials(&self.shared, &registry).await?;
        if let Some(digest) =
            image::pushed(docker, &id, name, &registry, credentials.clone()).await?
        {
            return Ok([("image".to_string(), digest)].into());
        }
        ctx.progress(&format!("pushing {reference} to {registry}"));
        let digest = image::push(docker, &id, name, &registry, credentials).await?;
        Ok([("image".to_string(), digest)].into())
    }

    /// Images stay: they are a content-addressed cache (and a release
    /// record's container keeps the image it ran); `docker image prune`
    /// removes unused ones.
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}

/// The registry the agent image is pushed to (`target.docker.push`).
fn push_registry(profile: &Profile) -> Option<String> {
    profile.target.docker.as_ref().and_then(|d| d.push.clone())
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
