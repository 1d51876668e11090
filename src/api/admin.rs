//! `/v1/admin/apps`: the apps registered at runtime (issue 12), for the operator; and
//! `/v1/admin/invites`, the invite codes of the `invite` registration policy.
//!
//! Authenticated with the admin key (`[admin] key` or `key_env`), never an app's; without
//! one configured, every admin path answers `404 not_found` as if it did not exist. A key is
//! shown once, in the answer that makes it; the registry keeps only its SHA-256 digest. Each
//! change is written to the snapshot before it is answered, so a key handed out survives a
//! `kill -9` the moment after. Config apps are listed but changed only in the config file.

use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{App, AppChange, AppLimits, NewApp, NewKey, RegistryError};
use crate::config::{MAX_ROTATION_GRACE, RateLimit};
use crate::error::ApiError;
use crate::extract::{self, Body};
use crate::invite::Invite;
use crate::origin::Origin;
use crate::registry;
use crate::state::AppState;

/// The admin routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/apps", get(list).post(add))
        .route(
            "/v1/admin/apps/{name}",
            get(show).patch(update).delete(remove),
        )
        .route("/v1/admin/apps/{name}/keys", axum::routing::post(rotate))
        .route("/v1/admin/apps/{name}/keys/{key_id}", delete(revoke))
        .route("/v1/admin/invites", get(invites).post(invite))
        .route("/v1/admin/invites/{id}", delete(uninvite))
}

/// A request with the admin key. Without an admin key configured, `404 not_found`.
struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.admin.is_none() {
            return Err(ApiError::NotFound);
        }
        if is_admin(state, parts.headers.get(header::AUTHORIZATION)) {
            Ok(Self)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// True when `authorization` carries the admin key (and there is one).
pub fn is_admin(state: &AppState, authorization: Option<&HeaderValue>) -> bool {
    let Some(admin) = &state.admin else {
        return false;
    };
    let Some(presented) = super::bearer(authorization) else {
        return false;
    };
    // Digests compared: their equal prefix says nothing of the key.
    crate::auth::AppKey::new(presented.to_owned()).digest() == admin.key.digest()
}

pub(super) fn ms_to_rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn rate(limit: RateLimit) -> Value {
    if limit.is_on() {
        json!({"per_second": limit.per_second, "burst": limit.burst})
    } else {
        Value::Null
    }
}

/// The rates and sizes `app` works within: its own, else the server's (`null`: no limit).
pub(super) fn limits(state: &AppState, app: &App) -> Value {
    let own = app.limits();
    json!({
        "create_per_app": rate(own.create_per_app.unwrap_or(state.rates.create_per_app)),
        "notify_per_app": rate(own.notify_per_app.unwrap_or(state.rates.notify_per_app)),
        "info_max_bytes": own.info_max_bytes.unwrap_or(state.limits.info_max_bytes),
    })
}

/// What the admin API shows of an app: never a key, only key ids and times.
async fn info(state: &AppState, app: &App) -> Value {
    let now = crate::auth::now_ms();
    let keys: Vec<Value> = app
        .keys()
        .iter()
        .filter(|k| k.is_live(now))
        .map(|k| {
            json!({
                "id": k.id(),
                "created_at": (k.created_ms > 0).then(|| ms_to_rfc3339(k.created_ms)),
                "expires_at": k.expires_ms.map(ms_to_rfc3339),
            })
        })
        .collect();
    let max_ids = (app.max_ids() != usize::MAX).then_some(app.max_ids());
    json!({
        "name": &**app.name(),
        "source": app.source(),
        "origins": app.origins().iter().map(Origin::as_str).collect::<Vec<_>>(),
        "max_ids": max_ids,
        "limits": limits(state, app),
        "ids": state.store.held_by(app.name()).await,
        "keys": keys,
    })
}

async fn created(state: &AppState, app: &App, key: &NewKey) -> Response {
    let body = json!({
        "app": info(state, app).await,
        "key": key.key.expose(),
        "key_id": key.info.id(),
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

/// An app's quota, refused over `limits.max_ids` (the store's own bound).
fn within_max_ids(state: &AppState, max_ids: usize) -> Result<usize, ApiError> {
    if max_ids > state.limits.max_ids {
        return Err(RegistryError::Invalid(format!(
            "max_ids must be at most limits.max_ids ({})",
            state.limits.max_ids
        ))
        .into());
    }
    Ok(max_ids)
}

/// An app's own rates and size, checked: rates within the config's bounds, the info size at
/// most `limits.info_max_bytes` (the body limit is made for it).
fn own_limits(state: &AppState, limits: &LimitsRequest) -> Result<AppLimits, ApiError> {
    let invalid = |e: crate::config::ConfigError| RegistryError::Invalid(e.to_string());
    for (field, rate) in [
        ("create_per_app", limits.create_per_app),
        ("notify_per_app", limits.notify_per_app),
    ] {
        if let Some(rate) = rate {
            crate::config::check_rate(field, rate).map_err(invalid)?;
        }
    }
    if let Some(size) = limits.info_max_bytes
        && (size == 0 || size > state.limits.info_max_bytes)
    {
        return Err(RegistryError::Invalid(format!(
            "info_max_bytes must be between 1 and limits.info_max_bytes ({})",
            state.limits.info_max_bytes
        ))
        .into());
    }
    Ok(AppLimits {
        create_per_app: limits.create_per_app,
        notify_per_app: limits.notify_per_app,
        info_max_bytes: limits.info_max_bytes,
    })
}

/// An app's own rates and size, as the admin API takes them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsRequest {
    create_per_app: Option<RateLimit>,
    notify_per_app: Option<RateLimit>,
    info_max_bytes: Option<usize>,
}

fn origins(texts: &[String]) -> Result<Vec<Origin>, ApiError> {
    texts
        .iter()
        .map(|o| Origin::parse(o).map_err(ApiError::from))
        .collect()
}

async fn list(_: Admin, State(state): State<AppState>) -> Json<Value> {
    let view = state.apps.view();
    let mut apps = Vec::with_capacity(view.len());
    for app in view.iter() {
        apps.push(info(&state, app).await);
    }
    Json(json!({ "apps": apps }))
}

async fn show(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = state
        .apps
        .get(&name)
        .ok_or(RegistryError::UnknownApp(name))?;
    Ok(Json(info(&state, &app).await))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    name: String,
    origins: Vec<String>,
    max_ids: Option<usize>,
    #[serde(default)]
    limits: LimitsRequest,
}

async fn add(
    _: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let request: AddRequest = extract::json(&headers, &body)?;
    let defaults = state.admin.as_ref().expect("Admin checked it");
    let max_ids = within_max_ids(&state, request.max_ids.unwrap_or(defaults.default_max_ids))?;
    let new = NewApp {
        name: request.name,
        origins: origins(&request.origins)?,
        max_ids,
        limits: own_limits(&state, &request.limits)?,
    };
    let (app, key) = registry::change(&state, |apps| apps.register(&new)).await?;
    tracing::info!(app = %app.name(), key_id = %key.info.id(), "app registered");
    Ok(created(&state, &app, &key).await)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    origins: Option<Vec<String>>,
    max_ids: Option<usize>,
    #[serde(default)]
    limits: LimitsRequest,
}

async fn update(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let request: UpdateRequest = extract::json(&headers, &body)?;
    let limits = own_limits(&state, &request.limits)?;
    let change = AppChange {
        origins: request.origins.as_deref().map(origins).transpose()?,
        max_ids: request
            .max_ids
            .map(|n| within_max_ids(&state, n))
            .transpose()?,
        create_per_app: limits.create_per_app,
        notify_per_app: limits.notify_per_app,
        info_max_bytes: limits.info_max_bytes,
    };
    let app = registry::change(&state, |apps| apps.update(&name, &change)).await?;
    tracing::info!(app = %app.name(), "app changed");
    Ok(Json(info(&state, &app).await))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the old keys keep working, e.g. "10m"; default `[admin] rotation_grace`.
    #[serde(default, with = "humantime_serde")]
    grace: Option<Duration>,
}

async fn rotate(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let request: RotateRequest = extract::json_or_default(&headers, &body)?;
    let defaults = state.admin.as_ref().expect("Admin checked it");
    let grace = request.grace.unwrap_or(defaults.rotation_grace);
    if grace > MAX_ROTATION_GRACE {
        return Err(ApiError::InvalidParameters(
            "grace must be at most 30d".into(),
        ));
    }
    let (app, key) = registry::change(&state, |apps| apps.rotate(&name, grace)).await?;
    tracing::info!(app = %app.name(), key_id = %key.info.id(), grace = ?grace, "app key rotated");
    Ok(created(&state, &app, &key).await)
}

async fn revoke(
    _: Admin,
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let app = registry::change(&state, |apps| apps.revoke(&name, &key)).await?;
    tracing::info!(app = %app.name(), key_id = %key, "app key revoked");
    Ok(Json(info(&state, &app).await))
}

async fn remove(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app = registry::change(&state, |apps| apps.remove(&name)).await?;
    // Its ids go with it: nobody could notify them any more, and their pages would wait.
    let ids = registry::forget_ids(&state, &app).await?;
    tracing::info!(app = %app.name(), ids, "app removed");
    Ok(StatusCode::NO_CONTENT)
}

/// The longest an invite may be valid: a year.
const MAX_INVITE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most registrations one invite may allow.
const MAX_INVITE_USES: u32 = 10_000;

/// What the admin API shows of an invite: never its code.
fn invite_info(invite: &Invite) -> Value {
    let now = crate::auth::now_ms();
    json!({
        "id": invite.id(),
        "uses": invite.uses,
        "used": invite.used,
        "created_at": ms_to_rfc3339(invite.created_ms),
        "expires_at": invite.expires_ms.map(ms_to_rfc3339),
        "expired": invite.is_expired(now),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteRequest {
    /// Registrations it allows; default 1.
    uses: Option<u32>,
    /// How long it is valid, e.g. "7d"; default 7 days.
    #[serde(default, with = "humantime_serde")]
    expires_in: Option<Duration>,
}

async fn invite(
    _: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let request: InviteRequest = extract::json_or_default(&headers, &body)?;
    let uses = request.uses.unwrap_or(1);
    if uses == 0 || uses > MAX_INVITE_USES {
        return Err(ApiError::InvalidParameters(format!(
            "uses must be between 1 and {MAX_INVITE_USES}"
        )));
    }
    let ttl = request
        .expires_in
        .unwrap_or(Duration::from_secs(7 * 24 * 3600));
    if ttl.is_zero() || ttl > MAX_INVITE_TTL {
        return Err(ApiError::InvalidParameters(
            "expires_in must be between 1s and 365d".into(),
        ));
    }
    let (invite, code) =
        registry::change(&state, |apps| apps.invites().issue(uses, Some(ttl))).await?;
    tracing::info!(invite = %invite.id(), uses, "invite made");
    let mut body = invite_info(&invite);
    body["code"] = json!(code);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn invites(_: Admin, State(state): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = state
        .apps
        .invites()
        .list()
        .iter()
        .map(invite_info)
        .collect();
    Json(json!({ "invites": list }))
}

async fn uninvite(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    registry::change(&state, |apps| apps.invites().remove(&id)).await?;
    tracing::info!(invite = %id, "invite removed");
    Ok(StatusCode::NO_CONTENT)
}
