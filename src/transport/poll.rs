//! `GET /v1/poll?id=..&since=N`: a long poll.
//!
//! Answers at once when the id's `seq` differs from `since`, otherwise holds the request until
//! a notify (200), a delete (410), `poll_timeout` (204), a newer client taking its waiting place
//! (204 with `Retry-After: 1`; the client asks again with the same `since`) or shutdown (204;
//! the client asks again, elsewhere or later).

use std::net::IpAddr;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::{Begun, Delivered, Value, WaitParams};
use crate::error::ApiError;
use crate::extract::parse_query;
use crate::id::Id;
use crate::metrics::Waiting;
use crate::slot::WaitOutcome;
use crate::state::AppState;
use crate::store::Hold;

/// Answers a poll whose query string is `query`, from `client` (charged to its rate limit
/// when known). May wait long.
pub async fn poll(state: AppState, query: Option<String>, client: Option<IpAddr>) -> Response {
    let (outcome, response) = match answer(&state, query.as_deref(), client).await {
        Ok(answered) => answered,
        Err(e) => {
            state.metrics.polls.refused(&e).inc();
            return e.into_response();
        }
    };
    outcome.inc();
    response
}

async fn answer<'s>(
    state: &'s AppState,
    query: Option<&str>,
    client: Option<IpAddr>,
) -> Result<(&'s Counter, Response), ApiError> {
    let outcomes = &state.metrics.polls;
    super::admit(state, client)?;
    if let Some(watch) = super::many::watch_param(query)? {
        return many(state, &watch).await;
    }
    let params: WaitParams = parse_query(query)?;
    let since = params.cursor();
    let waiter = match super::watch(state, &params.id, since, Hold::IfNothingNew).await? {
        Begun::Now(latest) => {
            let response = Json(Value::of(&latest, since)).into_response();
            // `watch` checked the id.
            let delivered = Id::parse(&params.id).map(|id| Delivered::of(id, &latest));
            let response = match delivered {
                Ok(delivered) => delivered.attach(response),
                Err(_) => response,
            };
            return Ok((&outcomes.immediate, response));
        }
        Begun::Waiting(waiter) => waiter,
    };
    let _waiting = Waiting::start(&state.metrics.waiting.poll);
    // Nothing from the request lives across the wait but the cursor.
    drop(params);
    let deadline = Instant::now() + state.limits.poll_timeout;
    let wait = waiter.wait_after(since, &state.shutdown);
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(WaitOutcome::Value { latest, woken }) => {
            let response = Json(Value::of(&latest, since)).into_response();
            let response = Delivered::of(waiter.slot().id().clone(), &latest).attach(response);
            if woken {
                state
                    .metrics
                    .delivered_after(waiter.slot().since_published());
                Ok((&outcomes.delivered, response))
            } else {
                Ok((&outcomes.immediate, response))
            }
        }
        Ok(WaitOutcome::Gone) => Err(ApiError::Gone),
        Ok(WaitOutcome::Released) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(super::RELEASED_RETRY.as_secs()),
            );
            Ok((&outcomes.released, response))
        }
        Ok(WaitOutcome::ShuttingDown) => {
            Ok((&outcomes.shutdown, StatusCode::NO_CONTENT.into_response()))
        }
        Err(_) => Ok((&outcomes.timeout, StatusCode::NO_CONTENT.into_response())),
    }
}

/// A long poll of many ids (`watch=ID.SEQ,...`): at once when any id has a value the client
/// has not seen or has ended, otherwise when the first does; 204 at `poll_timeout`.
async fn many<'s>(state: &'s AppState, watch: &str) -> Result<(&'s Counter, Response), ApiError> {
    let outcomes = &state.metrics.polls;
    let watched = super::many::parse_watch(watch, state.limits.max_ids_per_stream)?;
    let mut answer = super::many::Answer::default();
    let places = super::many::begin_poll(state, watched, &mut answer).await?;
    if !answer.is_empty() || places.is_empty() {
        return Ok((&outcomes.immediate, answer.into_response()));
    }
    let _waiting = Waiting::start(&state.metrics.waiting.poll);
    let deadline = Instant::now() + state.limits.poll_timeout;
    match tokio::time::timeout_at(deadline, super::many::wait_any(state, &places, &mut answer))
        .await
    {
        Ok(true) => Ok((&outcomes.delivered, answer.into_response())),
        Ok(false) => Ok((&outcomes.shutdown, StatusCode::NO_CONTENT.into_response())),
        Err(_) => Ok((&outcomes.timeout, StatusCode::NO_CONTENT.into_response())),
    }
}
