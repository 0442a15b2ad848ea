//! The engine: a graph of steps across all layers, planned, applied and
//! destroyed with bounded parallelism, journaled, cancellable.
//!
//! Start at [`run`]: [`plan`], [`apply`] and [`destroy`] share one scheduler.
//! Providers implement [`Step`] for each resource they manage.

mod graph;
mod run;
mod step;

pub use graph::{Graph, GraphError};
pub use run::{
    EngineError, RetryPolicy, Run, RunReport, SavedPlan, StepReport, apply, destroy, plan,
};
pub use step::{
    Action, After, Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId,
    StepPlan,
};
