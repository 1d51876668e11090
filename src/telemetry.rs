//! Logging through `tracing`, to standard output: human-readable lines, or one JSON object per
//! line for log shippers (`log_format = "json"`).
//!
//! What is never logged: app keys (not even in part) and whole ids (see [`Redacted`]). Every
//! line a request causes carries its `request_id` (see `request_id`), so everything one request
//! caused can be found together, and matched with the proxy's log through `X-Request-Id`.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;
use crate::request_id;

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
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .map_event_format(|inner| WithRequestId { inner, json: false })
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .map_event_format(|inner| WithRequestId { inner, json: true })
            .init(),
    }
    Ok(())
}

/// Adds the current request's id to a line: `"request_id":"..."` first in a JSON object,
/// ` request_id=...` last on a text line. Lines outside requests are left as they are.
struct WithRequestId<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithRequestId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(id) = request_id::current() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // Request ids are ASCII letters, digits and `-_.:` (see `request_id`): nothing to
        // escape in JSON.
        let id = id.as_str();
        match line.strip_prefix('{') {
            Some(rest) if self.json => write!(writer, "{{\"request_id\":\"{id}\",{rest}"),
            _ => {
                let body = line.strip_suffix('\n').unwrap_or(&line);
                writeln!(writer, "{body} request_id={id}")
            }
        }
    }
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
