//! JSON log lines on stdout, one object per event, event fields at the top
//! level (so `task_id` is a field a log pipeline can index).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber at `level` (already validated).
pub fn init(level: &str) {
    // The AMQP client logs every connection error at error level; the agent
    // reports those itself with context, so keep the client to warnings.
    let filter = EnvFilter::new(format!("{level},lapin=warn,amq_protocol=warn"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();
}
