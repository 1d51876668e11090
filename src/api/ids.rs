//! `/v1/ids`: create, notify, inspect and delete ids.

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::Authenticated;
use crate::auth::App;
use crate::error::ApiError;
use crate::extract::{self, Body, PathId, UnreadBody};
use crate::id::Id;
use crate::idempotency;
use crate::state::AppState;
use crate::telemetry::Redacted;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/ids", post(create))
        .route("/v1/ids/{id}", get(status).delete(delete))
        .route("/v1/ids/{id}/notify", post(notify))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    id: Option<String>,
    origin: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    Authenticated(app): Authenticated,
    headers: HeaderMap,
    Body(body): Body,
) -> Response {
    let key = match idempotency::key_of(&headers) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let media_type = extract::media_type(&headers);
    let fingerprint = idempotency::fingerprint("POST", "/v1/ids", media_type.as_deref(), &body);
    idempotency::once(&state, &app, key, fingerprint, |_| async {
        let request: CreateRequest = match extract::json_or_default(&headers, &body) {
            Ok(request) => request,
            Err(e) => return e.into_response(),
        };
        match super::create(
            &state,
            &app,
            request.id.as_deref(),
            request.origin.as_deref(),
        )
        .await
        {
            Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
            Err(e) => e.into_response(),
        }
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyRequest {
    info: String,
}

/// The routed notify (a percent-encoded id, a chunked body, an `Idempotency-Key`: see
/// `connection`). Refusals by the extractors are taken as results, so they are counted like
/// any other.
async fn notify(
    State(state): State<AppState>,
    app: Result<Authenticated, ApiError>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: UnreadBody,
) -> Response {
    let app = match app {
        Ok(Authenticated(app)) => app,
        Err(e) => return counted(&state, Err(e)),
    };
    let wait = match super::notify_wait(query.as_deref()) {
        Ok(wait) => wait,
        Err(e) => return counted(&state, Err(e)),
    };
    let body = match body.read(&state).await {
        Ok(body) => body,
        Err(e) => return counted(&state, Err(e)),
    };
    let key = match idempotency::key_of(&headers) {
        Ok(key) => key,
        Err(e) => return counted(&state, Err(e)),
    };
    let content_type = headers.get(header::CONTENT_TYPE);
    let media_type = extract::media_type_of(content_type);
    // The wait is not part of the request's fingerprint: a retry that waits longer (or not
    // at all) is the same notify.
    let path = format!("/v1/ids/{id}/notify");
    let fingerprint = idempotency::fingerprint("POST", &path, media_type.as_deref(), &body);
    idempotency::once(&state, &app, key, fingerprint, |key| async {
        let once = key.map(|key| format!("{}:{}", app.name(), key.as_str()));
        let answer = notify_body(
            &state,
            &app,
            &id,
            content_type,
            &body,
            once.as_deref(),
            wait,
        )
        .await;
        counted(&state, answer)
    })
    .await
}

fn counted(state: &AppState, answer: Result<super::Notified, ApiError>) -> Response {
    match super::count_notify(state, answer) {
        Ok(notified) => Json(notified).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Validates `id`, reads the info from a notify body of type `content_type`, and notifies
/// (at most once for the idempotency record `once`, if any), then waits up to `wait` for the
/// woken clients to get the value. Shared by the routed handler and `connection`'s
/// in-place path.
pub(super) async fn notify_body(
    state: &AppState,
    app: &App,
    id: &str,
    content_type: Option<&HeaderValue>,
    body: &[u8],
    once: Option<&str>,
    wait: Option<Duration>,
) -> Result<super::Notified, ApiError> {
    Id::check(id)?;
    let until = wait.map(|wait| tokio::time::Instant::now() + wait);
    let json;
    // An empty body is a notify with empty info, whatever its type (`curl -d ''` says form).
    let info = match extract::media_type_of(content_type).as_deref() {
        _ if body.is_empty() => "",
        Some("text/plain") => std::str::from_utf8(body).map_err(|_| ApiError::InvalidInfo)?,
        Some("application/json") => {
            json = extract::json_of::<NotifyRequest>(content_type, body)?;
            &json.info
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(
                other.unwrap_or("(none)").to_owned(),
                "application/json or text/plain",
            ));
        }
    };
    let (mut notified, tracking) = super::notify_checked(state, app, id, info, once, wait).await?;
    if let Some(until) = until {
        super::await_deliveries(state, &mut notified, tracking.as_ref(), until).await;
    }
    Ok(notified)
}

#[derive(Debug, Serialize)]
struct Status {
    id: String,
    origin: Option<String>,
    seq: u64,
    waiting: u32,
    created_at: String,
    idle_secs: u64,
    delivered_seq: Option<u64>,
    delivered_at: Option<String>,
}

async fn status(
    State(state): State<AppState>,
    Authenticated(app): Authenticated,
    PathId(id): PathId,
) -> Result<Json<Status>, ApiError> {
    let status = state.store.status(&app, id.as_str()).await?;
    Ok(Json(Status {
        id: id.to_string(),
        origin: status.origin.map(|o| o.to_string()),
        seq: status.seq,
        waiting: status.waiting,
        created_at: rfc3339(status.created_at),
        idle_secs: status.idle.as_secs(),
        delivered_seq: status.delivered.map(|d| d.seq),
        delivered_at: status
            .delivered
            .map(|d| humantime::format_rfc3339_millis(d.at).to_string()),
    }))
}

async fn delete(
    State(state): State<AppState>,
    Authenticated(app): Authenticated,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    state.store.remove(&app, id.as_str()).await?;
    state.metrics.ids_deleted.inc();
    tracing::debug!(app = %app.name(), id = %Redacted(id.as_str()), "id deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
