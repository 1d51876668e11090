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
use tokio::time::Instant;

use super::{Value, WaitParams};
use crate::error::ApiError;
use crate::extract::Query;
use crate::server::AppState;
use crate::slot::WaitOutcome;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/poll", get(poll))
}

async fn poll(
    State(state): State<AppState>,
    Query(params): Query<WaitParams>,
) -> Result<Response, ApiError> {
    let slot = super::find(&state, &params.id)?;
    if let Some(latest) = slot.newer_than(params.since) {
        return Ok(Json(Value::from(&latest)).into_response());
    }
    let waiter = slot.join(state.limits.max_waiters_per_id)?;
    let deadline = Instant::now() + state.limits.poll_timeout;
    let wait = waiter.wait_after(params.since, &state.shutdown);
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(WaitOutcome::Value(latest)) => Ok(Json(Value::from(&latest)).into_response()),
        Ok(WaitOutcome::Gone) => Err(ApiError::Gone),
        Ok(WaitOutcome::ShuttingDown) | Err(_) => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
