//! Logging through `tracing`, to standard output: human-readable lines, or one JSON object per
//! line for log shippers (`log_format = "json"`).
//!
//! What is never logged: app keys (not even in part) and whole ids (see [`Redacted`]). Request
//! lines carry a request id (see `connection`), so everything one request caused can be found
//! together, and matched with the proxy's log through `X-Request-Id`.

use std::fmt;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The `log` filter does not parse.
#[derive(Debug, thiserror::Error)]
#[error("log: {filter:?} is not a valid tracing filter: {reason}")]
pub struct FilterError {
    filter: String,
    reason: String,
}

/// Installs the global subscriber with `filter` (for example `info,callhome=debug`).
pub fn init(filter: &str, format: LogFormat) -> Result<(), FilterError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| FilterError {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
    Ok(())
}

/// An id (or any secret-ish token) as logs show it: its first 6 characters and its length,
/// enough to tell ids apart in one incident, useless to anyone reading the logs to poll them.
#[derive(Debug, Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(6).collect();
        write!(f, "{shown}…({} chars)", self.0.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_ids_show_a_prefix_and_the_length() {
        let id = "a1b2c3d4e5f6g7h8i9j0";
        assert_eq!(Redacted(id).to_string(), "a1b2c3…(20 chars)");
        assert!(!Redacted(id).to_string().contains("d4e5"));
    }
}
