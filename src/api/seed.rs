//! The original proposal's URLs, `/idcreate` and `/notify`, for apps written against it.
//!
//! Parameters come from the query string, or for POST also from a form body
//! (`application/x-www-form-urlencoded`), the two ways such apps send them. Authentication
//! and semantics are those of the v1 API, and so are the answers.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Authenticated;
use crate::error::ApiError;
use crate::extract::{self, Body, Query, UnreadBody};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        // HEAD must be safe: axum would run the GET handler for it, which creates or notifies.
        .route("/idcreate", get(idcreate).post(idcreate).head(unsafe_head))
        .route("/notify", get(notify).post(notify).head(unsafe_head))
}

#[derive(Debug, Default, Deserialize)]
struct IdcreateParams {
    id: Option<String>,
    origin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct NotifyParams {
    id: Option<String>,
    info: Option<String>,
}

async fn idcreate(
    State(state): State<AppState>,
    Authenticated(app): Authenticated,
    method: Method,
    Query(query): Query<IdcreateParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let form: IdcreateParams = form_body(&method, &headers, &body)?;
    let id = query.id.or(form.id);
    let origin = query.origin.or(form.origin);
    let created = super::create(&state, &app, id.as_deref(), origin.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn notify(
    State(state): State<AppState>,
    app: Result<Authenticated, ApiError>,
    method: Method,
    query: Result<Query<NotifyParams>, ApiError>,
    headers: HeaderMap,
    body: UnreadBody,
) -> Result<Json<super::Notified>, ApiError> {
    // The key first: without one the body is never read.
    let read = match (&app, &query) {
        (Ok(_), Ok(_)) => Some(body.read(&state).await),
        _ => None,
    };
    let answer = async {
        let (Authenticated(app), Query(query)) = (app?, query?);
        let body = read.unwrap_or(Ok(Bytes::new()))?;
        let form: NotifyParams = form_body(&method, &headers, &body)?;
        let id = query
            .id
            .or(form.id)
            .ok_or_else(|| ApiError::InvalidParameters("missing parameter `id`".into()))?;
        let info = query.info.or(form.info).unwrap_or_default();
        super::notify(&state, &app, &id, &info).await
    }
    .await;
    super::count_notify(&state, answer).map(Json)
}

/// `HEAD` on a URL whose `GET` changes something: refused, never run.
async fn unsafe_head() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The parameters of a posted form, or the defaults when there is none.
fn form_body<T: DeserializeOwned + Default>(
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    let is_form =
        extract::media_type(headers).as_deref() == Some("application/x-www-form-urlencoded");
    if method != Method::POST || body.is_empty() || !is_form {
        return Ok(T::default());
    }
    serde_urlencoded::from_bytes(body).map_err(|e| ApiError::InvalidParameters(e.to_string()))
}
