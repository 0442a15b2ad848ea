//! The step graph: steps and their dependencies, checked to be a DAG.

use super::step::{Step, StepId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    /// Two steps claim the same id.
    #[error("step `{0}` is defined twice")]
    Duplicate(StepId),
    /// A step depends on a step that is not in the graph.
    #[error("step `{step}` depends on `{missing}`, which is not in the plan")]
    MissingDependency { step: StepId, missing: StepId },
    /// The dependencies loop.
    #[error("steps depend on each other in a cycle: {}", .0.iter().map(|s| s.0.as_str()).collect::<Vec<_>>().join(" -> "))]
    Cycle(Vec<StepId>),
}

/// Steps in a dependency order (every step after its dependencies).
pub struct Graph {
    steps: Vec<Arc<dyn Step>>,
    index: BTreeMap<StepId, usize>,
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
}

impl Graph {
    pub fn new(steps: Vec<Arc<dyn Step>>) -> Result<Graph, GraphError> {
        let mut index = BTreeMap::new();
        for (i, s) in steps.iter().enumerate() {
            if index.insert(s.id().clone(), i).is_some() {
                return Err(GraphError::Duplicate(s.id().clone()));
            }
        }
        let mut deps = vec![Vec::new(); steps.len()];
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, s) in steps.iter().enumerate() {
            for d in s.depends_on() {
                let &j = index.get(&d).ok_or_else(|| GraphError::MissingDependency {
                    step: s.id().clone(),
                    missing: d.clone(),
                })?;
                deps[i].push(j);
                dependents[j].push(i);
            }
        }
        let graph = Graph {
            steps,
            index,
            deps,
            dependents,
        };
        let order = graph.topological();
        if order.len() != graph.steps.len() {
            return Err(GraphError::Cycle(graph.find_cycle()));
        }
        let ordered: Vec<Arc<dyn Step>> = order.iter().map(|&i| graph.steps[i].clone()).collect();
        // Rebuild in dependency order so iteration is always a valid order.
        Graph::rebuild(ordered)
    }

    fn rebuild(steps: Vec<Arc<dyn Step>>) -> Result<Graph, GraphError> {
        let index: BTreeMap<StepId, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id().clone(), i))
            .collect();
        let mut deps = vec![Vec::new(); steps.len()];
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, s) in steps.iter().enumerate() {
            for d in s.depends_on() {
                let j = index[&d];
                deps[i].push(j);
                dependents[j].push(i);
            }
        }
        Ok(Graph {
            steps,
            index,
            deps,
            dependents,
        })
    }

    /// Kahn's algorithm; shorter than `steps` when there is a cycle.
    fn topological(&self) -> Vec<usize> {
        let mut remaining: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut ready: VecDeque<usize> = (0..self.steps.len())
            .filter(|&i| remaining[i] == 0)
            .collect();
        let mut order = Vec::with_capacity(self.steps.len());
        while let Some(i) = ready.pop_front() {
            order.push(i);
            for &j in &self.dependents[i] {
                remaining[j] -= 1;
                if remaining[j] == 0 {
                    ready.push_back(j);
                }
            }
        }
        order
    }

    fn find_cycle(&self) -> Vec<StepId> {
        // Walk dependencies from a step still on a cycle until one repeats.
        let in_order: BTreeSet<usize> = self.topological().into_iter().collect();
        let Some(start) = (0..self.steps.len()).find(|i| !in_order.contains(i)) else {
            return Vec::new();
        };
        let mut path = vec![start];
        let mut current = start;
        while let Some(&next) = self.deps[current].iter().find(|d| !in_order.contains(d)) {
            if let Some(pos) = path.iter().position(|&p| p == next) {
                let mut cycle: Vec<StepId> = path[pos..]
                    .iter()
                    .map(|&i| self.steps[i].id().clone())
                    .collect();
                cycle.push(self.steps[next].id().clone());
                return cycle;
            }
            path.push(next);
            current = next;
        }
        path.iter().map(|&i| self.steps[i].id().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Steps in dependency order.
    pub fn steps(&self) -> &[Arc<dyn Step>] {
        &self.steps
    }

    pub(crate) fn deps_of(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    pub(crate) fn dependents_of(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    pub fn position(&self, id: &StepId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The longest chain of `durations` through the graph: the least wall
    /// time any schedule can take. Steps without a duration count as zero.
    pub fn critical_path(&self, durations: &BTreeMap<StepId, Duration>) -> Duration {
        let mut finish = vec![Duration::ZERO; self.steps.len()];
        for i in 0..self.steps.len() {
            let start = self.deps[i]
                .iter()
                .map(|&d| finish[d])
                .max()
                .unwrap_or_default();
            finish[i] = start
                + durations
                    .get(self.steps[i].id())
                    .copied()
                    .unwrap_or_default();
        }
        finish.into_iter().max().unwrap_or_default()
    }
}
