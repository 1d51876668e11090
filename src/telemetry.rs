//! Logging through `tracing`, human-readable, to standard output.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The `log` filter does not parse.
#[derive(Debug, thiserror::Error)]
#[error("log: {filter:?} is not a valid tracing filter: {reason}")]
pub struct FilterError {
    filter: String,
    reason: String,
}

/// Installs the global subscriber with `filter` (for example `info,callhome=debug`).
pub fn init(filter: &str) -> Result<(), FilterError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| FilterError {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    Ok(())
}
