//! `GET /v1/poll?id=..&since=N`: a long poll.
//!
//! Answers at once when the id's `seq` differs from `since`, otherwise holds the request until
//! a notify (200), a delete (410), `poll_timeout` (204) or shutdown (204; the client asks again,
//! elsewhere or later).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::extract::Query;
use crate::id::Id;
use crate::server::AppState;
use crate::slot::{Latest, Seq, WaitOutcome};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/poll", get(poll))
}

#[derive(Debug, Deserialize)]
struct PollParams {
    id: String,
    /// The last `seq` the client has seen; 0 (the default) before it has seen any.
    #[serde(default)]
    since: Seq,
}

#[derive(Debug, Serialize)]
struct Value<'a> {
    seq: Seq,
    info: Option<&'a str>,
}

async fn poll(
    State(state): State<AppState>,
    Query(params): Query<PollParams>,
) -> Result<Response, ApiError> {
    let id = Id::parse(&params.id)?;
    let slot = state.store.get(id.as_str()).ok_or(ApiError::UnknownId)?;
    slot.touch();
    if let Some(latest) = slot.newer_than(params.since) {
        return Ok(answer(&latest));
    }
    let waiter = slot.join(state.limits.max_waiters_per_id)?;
    let deadline = Instant::now() + state.limits.poll_timeout;
    match waiter
        .wait_after(params.since, deadline, &state.shutdown)
        .await
    {
        WaitOutcome::Value(latest) => Ok(answer(&latest)),
        WaitOutcome::TimedOut | WaitOutcome::ShuttingDown => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        WaitOutcome::Gone => Err(ApiError::Gone),
    }
}

fn answer(latest: &Latest) -> Response {
    Json(Value {
        seq: latest.seq,
        info: latest.info.as_deref(),
    })
    .into_response()
}
