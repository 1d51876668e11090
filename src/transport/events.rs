//! `GET /v1/events?id=..&since=N`: server-sent events, one per new value.
//!
//! The stream opens with `event: ready`. Each value event carries `id: <seq>`, so a browser's `EventSource` reconnects with
//! `Last-Event-ID` and misses nothing newer than what it saw. An idle stream gets a comment
//! every `sse_keepalive` so proxies keep it open; `X-Accel-Buffering: no` asks nginx not to
//! buffer it. A deleted id ends the stream with `event: gone`; shutdown ends it with a
//! `retry:` hint so clients come back (to this node after a restart, or another); a newer
//! client taking the stream's waiting place ends it with `event: released` and a `retry:` hint,
//! so the client comes back a second later from the `seq` it has seen.

use std::convert::Infallible;
use std::net::IpAddr;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use futures_util::stream;

use super::{Value, WaitParams};
use crate::error::ApiError;
use crate::extract::parse_query;
use crate::metrics::Waiting;
use crate::slot::{Cursor, Epoch, Latest, Seq, WaitOutcome};
use crate::state::AppState;
use crate::store::{Hold, Place};

/// How soon a client told "shutting down" should reconnect.
const RECONNECT_AFTER_SHUTDOWN: Duration = Duration::from_secs(1);

/// A stream's last block at shutdown: come back in a second (elsewhere, or here later).
pub(super) fn shutting_down() -> Event {
    Event::default()
        .retry(RECONNECT_AFTER_SHUTDOWN)
        .comment("shutting down")
}

/// Answers an event-stream request whose query string is `query`, from `client` (charged to
/// its rate limit when known). The response body is the stream, which lasts until the id is
/// deleted, the server shuts down or the client leaves.
pub async fn events(
    state: &AppState,
    query: Option<&str>,
    last_event_id: Option<&HeaderValue>,
    client: Option<IpAddr>,
) -> Response {
    let outcomes = &state.metrics.streams;
    match open(state, query, last_event_id, client).await {
        Ok(response) => {
            outcomes.opened.inc();
            response
        }
        Err(e) => {
            outcomes.refused(&e).inc();
            e.into_response()
        }
    }
}

async fn open(
    state: &AppState,
    query: Option<&str>,
    last_event_id: Option<&HeaderValue>,
    client: Option<IpAddr>,
) -> Result<Response, ApiError> {
    super::admit(state, client)?;
    if let Some(watch) = super::many::watch_param(query)? {
        let watched = super::many::parse_watch(&watch, state.limits.max_ids_per_stream)?;
        let watched = super::many::resume(watched, last_event_id);
        let many = super::many::open(state, watched).await?;
        return Ok(sse(
            state,
            stream::once(async { Ok(ready()) })
                .chain(stream::unfold(Some(many), super::many::next_event)),
        ));
    }
    let params: WaitParams = parse_query(query)?;
    let since = match last_event_id {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| parse_event_id(v.trim()))
            .ok_or_else(|| {
                ApiError::InvalidParameters("Last-Event-ID must be a seq (or seq:epoch)".into())
            })?,
        None => params.cursor(),
    };
    let super::Begun::Waiting(waiter) =
        super::watch(state, &params.id, since, Hold::Always).await?
    else {
        unreachable!("a watch that always holds takes a waiting place");
    };
    let stream = stream::once(async { Ok(ready()) }).chain(stream::unfold(
        Some(Stream {
            waiter,
            since,
            sent: None,
            state: state.clone(),
            _waiting: Waiting::start(&state.metrics.waiting.events),
        }),
        next_event,
    ));
    Ok(sse(state, stream))
}

/// "ready" first: proof for the client that bytes reach it as they are sent (a buffering
/// proxy would hold it back), and the moment it may count the stream as working.
fn ready() -> Event {
    Event::default().event("ready").data("{}")
}

/// The response that carries `events`, with keep-alive comments.
fn sse(
    state: &AppState,
    events: impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let keep_alive = KeepAlive::new()
        .interval(state.limits.sse_keepalive)
        .text("keep-alive");
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// A stream's state between events.
struct Stream {
    waiter: Place,
    since: Cursor,
    /// The epoch of the last value sent, while its delivery is not yet reported: the next
    /// event is asked for only once the connection has taken the last one.
    sent: Option<Epoch>,
    state: AppState,
    _waiting: Waiting,
}

async fn next_event(state: Option<Stream>) -> Option<(Result<Event, Infallible>, Option<Stream>)> {
    let mut state = state?;
    if let Some(epoch) = state.sent.take() {
        let slot = state.waiter.slot();
        let store = &state.state.store;
        store.delivered(slot.id().as_str(), Some(slot), state.since.seq, epoch);
    }
    let event = match state
        .waiter
        .wait_after(state.since, &state.state.shutdown)
        .await
    {
        WaitOutcome::Value { latest, woken } => {
            if woken {
                let elapsed = state.waiter.slot().since_published();
                state.state.metrics.delivered_after(elapsed);
            }
            let value = Value::of(&latest, state.since);
            let with_epoch = state.since.epoch.is_some();
            state.since = Cursor {
                seq: latest.seq,
                epoch: with_epoch.then_some(latest.epoch),
            };
            state.sent = Some(latest.epoch);
            let event = Event::default()
                .id(event_id(&latest, with_epoch))
                .json_data(value)
                .expect("a seq and a string serialise");
            return Some((Ok(event), Some(state)));
        }
        WaitOutcome::Gone => Event::default().event("gone").data("{}"),
        WaitOutcome::Released => Event::default()
            .retry(super::RELEASED_RETRY)
            .event("released")
            .data("{}"),
        WaitOutcome::ShuttingDown => shutting_down(),
    };
    Some((Ok(event), None))
}

/// A value's event id: its `seq`, and in cluster mode to a client that deals in epochs
/// `seq:epoch`, so that a browser's `EventSource` reconnecting with `Last-Event-ID` also says
/// which epoch it saw.
fn event_id(latest: &Latest, with_epoch: bool) -> String {
    if latest.epoch == 0 || !with_epoch {
        latest.seq.to_string()
    } else {
        format!("{}:{}", latest.seq, latest.epoch)
    }
}

/// The cursor in a `Last-Event-ID`: `seq` or `seq:epoch`.
fn parse_event_id(text: &str) -> Option<Cursor> {
    let (seq, epoch) = match text.split_once(':') {
        Some((seq, epoch)) => (seq, Some(epoch.parse::<Epoch>().ok()?)),
        None => (text, None),
    };
    Some(Cursor {
        seq: seq.parse::<Seq>().ok()?,
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_carry_the_epoch_in_cluster_mode_and_parse_back() {
        let mut latest = Latest {
            seq: 7,
            info: None,
            epoch: 0,
        };
        assert_eq!(event_id(&latest, true), "7");
        latest.epoch = 42;
        assert_eq!(event_id(&latest, true), "7:42");
        assert_eq!(event_id(&latest, false), "7");
        assert_eq!(
            parse_event_id("7:42"),
            Some(Cursor {
                seq: 7,
                epoch: Some(42)
            })
        );
        assert_eq!(parse_event_id("7"), Some(Cursor::from(7)));
        for bad in ["", "x", "7:", ":1", "7:x", "-1"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }
}
