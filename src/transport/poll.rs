//! `GET /v1/poll?id=..&since=N`: a long poll.
//!
//! Answers at once when the id's `seq` differs from `since`, otherwise holds the request until
//! a notify (200), a delete (410), `poll_timeout` (204) or shutdown (204; the client asks again,
//! elsewhere or later).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use tokio::time::Instant;

use super::{Value, WaitParams};
use crate::error::ApiError;
use crate::extract::parse_query;
use crate::server::AppState;
use crate::slot::WaitOutcome;

/// Answers a poll whose query string is `query`. May wait long.
pub async fn poll(state: AppState, query: Option<String>) -> Response {
    answer(&state, query.as_deref())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn answer(state: &AppState, query: Option<&str>) -> Result<Response, ApiError> {
    let params: WaitParams = parse_query(query)?;
    let slot = super::find(state, &params.id)?;
    if let Some(latest) = slot.newer_than(params.since) {
        return Ok(Json(Value::from(&latest)).into_response());
    }
    let waiter = slot.join(state.limits.max_waiters_per_id)?;
    // Nothing from the request lives across the wait but the cursor.
    let since = params.since;
    drop(params);
    let deadline = Instant::now() + state.limits.poll_timeout;
    let wait = waiter.wait_after(since, &state.shutdown);
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(WaitOutcome::Value(latest)) => Ok(Json(Value::from(&latest)).into_response()),
        Ok(WaitOutcome::Gone) => Err(ApiError::Gone),
        Ok(WaitOutcome::ShuttingDown) | Err(_) => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
