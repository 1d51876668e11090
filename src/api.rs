//! The backend side: what a web app's server calls, authenticated with its app key.
//!
//! `ids` is the v1 API; `seed` keeps the URLs of the original proposal working for apps
//! written against it. Both go through [`create`] and [`notify`], so they cannot drift apart.

mod admin;
mod batch;
mod ids;
mod registration;
mod seed;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::App;
use crate::error::ApiError;
use crate::id::Id;
use crate::origin::Origin;
use crate::slot::Published;
use crate::state::AppState;
use crate::store::{CreateError, StoreError, Tracking};
use crate::telemetry::Redacted;

pub use batch::BATCH_PATH;

/// The backend routes; a batch notify's body may be up to `batch_body_limit` bytes.
pub fn routes(batch_body_limit: usize) -> Router<AppState> {
    ids::routes()
        .merge(batch::routes(batch_body_limit))
        .merge(seed::routes())
        .merge(admin::routes())
        .merge(registration::routes())
}

/// The app whose key is in `Authorization: Bearer <key>`; otherwise `401 unauthorized`.
#[derive(Debug)]
pub struct Authenticated(pub Arc<App>);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, parts.headers.get(header::AUTHORIZATION)).map(Self)
    }
}

/// The app whose key an `Authorization` value carries.
pub fn authenticate(
    state: &AppState,
    authorization: Option<&HeaderValue>,
) -> Result<Arc<App>, ApiError> {
    let key = bearer(authorization).ok_or(ApiError::Unauthorized)?;
    state.apps.authenticate(key).ok_or(ApiError::Unauthorized)
}

/// The key of `Authorization: Bearer <key>`.
fn bearer(authorization: Option<&HeaderValue>) -> Option<&str> {
    let (scheme, key) = authorization?.to_str().ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// True when a request to `path` with this `Authorization` may have its body read: it
/// carries an app's key or the admin key, or it is a self-registration while registration is
/// not closed. Every other route that reads a body needs a key.
pub fn may_send_a_body(state: &AppState, path: &str, authorization: Option<&HeaderValue>) -> bool {
    registration::takes_a_body(state, path)
        || authenticate(state, authorization).is_ok()
        || admin::is_admin(state, authorization)
}

/// `POST /v1/ids/{id}/notify` served in place by `connection` (the busiest backend request),
/// through the same steps, in the same order, as the routed handler.
///
/// `app` is the result of [`authenticate`], decided before the body was read: a request
/// without a valid key never has its body read, and is answered (and counted) here.
pub async fn notify_in_place(
    state: &AppState,
    app: Result<Arc<App>, ApiError>,
    content_type: Option<&HeaderValue>,
    id: &str,
    body: &[u8],
) -> Response {
    let answer = match app {
        Ok(app) => ids::notify_body(state, &app, id, content_type, body, None, None).await,
        Err(e) => Err(e),
    };
    match count_notify(state, answer) {
        Ok(notified) => Json(notified).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The id segment of a `/v1/ids/{id}/notify` path, as sent (possibly percent-encoded).
pub fn notify_segment(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/v1/ids/")?.strip_suffix("/notify")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The id of a notify path this `connection` serves in place. A percent-encoded id goes to the
/// router, which decodes it.
pub fn notify_id(path: &str) -> Option<&str> {
    notify_segment(path).filter(|id| !id.contains('%'))
}

/// True for any `/v1/ids/{id}/notify` path, percent-encoded ids included.
pub fn is_notify(path: &str) -> bool {
    notify_segment(path).is_some()
}

/// The answer to a create.
#[derive(Debug, Serialize)]
pub struct Created {
    id: String,
    origin: Option<String>,
    iframe_url: String,
    poll_url: String,
}

/// The answer to a notify.
#[derive(Debug, Serialize)]
pub struct Notified {
    /// The value's sequence number.
    pub seq: u64,
    /// Clients waiting on the id when it was stored (woken by it).
    pub waiting: u32,
    /// What became of the value: handed to waiting clients, or kept for the next poll.
    pub delivery: Delivery,
    /// With `?wait=`: the clients that got the value (or a newer one) before the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u32>,
}

/// What a notify did with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// At least one client was waiting, and is woken with it now.
    Woken,
    /// Nobody was waiting: it is kept for the next poll or stream of the id.
    Stored,
}

impl From<Published> for Notified {
    fn from(p: Published) -> Self {
        Self {
            seq: p.seq,
            waiting: p.waiting,
            delivery: if p.waiting > 0 {
                Delivery::Woken
            } else {
                Delivery::Stored
            },
            delivered: None,
        }
    }
}

/// The longest `?wait=` a notify may ask for.
pub const MAX_NOTIFY_WAIT: Duration = Duration::from_secs(30);

/// How long a notify waits for its deliveries: the `wait` of its query, if any.
pub fn notify_wait(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NotifyQuery {
        wait: Option<String>,
    }
    let query: NotifyQuery = crate::extract::parse_query(query)?;
    let Some(text) = query.wait else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::InvalidParameters(format!(
            "wait: a duration such as 500ms or 2s, above 0 and at most {}s",
            MAX_NOTIFY_WAIT.as_secs()
        ))
    };
    let wait = humantime::parse_duration(&text).map_err(|_| invalid())?;
    if wait.is_zero() || wait > MAX_NOTIFY_WAIT {
        return Err(invalid());
    }
    Ok(Some(wait))
}

/// Counts a notify by how it ended (`callhome_notifies_total`) and passes the answer on.
/// Every notify path ends here, including those refused before they reached [`notify`].
pub fn count_notify(
    state: &AppState,
    answer: Result<Notified, ApiError>,
) -> Result<Notified, ApiError> {
    let outcomes = &state.metrics.notifies;
    match &answer {
        Ok(notified) if notified.waiting > 0 => outcomes.delivered.inc(),
        Ok(_) => outcomes.stored.inc(),
        Err(e) => outcomes.refused(e).inc(),
    };
    answer
}

/// Creates an id for `app`: the given one or a fresh one, bound to the given origin or the
/// app's only origin.
pub async fn create(
    state: &AppState,
    app: &App,
    id: Option<&str>,
    origin: Option<&str>,
) -> Result<Created, ApiError> {
    state.limiters.create(app)?;
    let id = id.map(Id::parse).transpose()?;
    let origin = match origin {
        Some(text) => {
            let origin = Origin::parse(text)?;
            if !state.apps.serves(app, &origin) {
                return Err(ApiError::OriginNotAllowed(origin.to_string()));
            }
            Some(origin)
        }
        None => app.default_origin().cloned(),
    };
    let created = state.store.create(app, id, origin).await.inspect_err(|e| {
        let refused = &state.metrics.creates_refused;
        let counter = match e {
            CreateError::AppQuota(_) => Some(&refused.app_quota),
            CreateError::Full(_) => Some(&refused.max_ids),
            // The cluster-wide bucket refused it (with Redis, the node keeps none).
            CreateError::RateLimited(_) => Some(&state.metrics.rate_limited.create_per_app),
            CreateError::Taken | CreateError::Entropy(_) | CreateError::Unavailable(_) => None,
        };
        if let Some(counter) = counter {
            counter.inc();
        }
    })?;
    state.metrics.ids_created.inc();
    let id = created.id.as_str();
    tracing::debug!(app = %app.name(), id = %Redacted(id), "id created");
    let mut iframe_query = url::form_urlencoded::Serializer::new(String::new());
    iframe_query.append_pair("id", id);
    // Without a concrete origin the page names its own (callhome.js does this for it).
    if let Some(origin) = created.origin.as_ref().filter(|o| !o.is_wildcard()) {
        iframe_query.append_pair("origin", origin.as_str());
    }
    Ok(Created {
        id: id.to_owned(),
        origin: created.origin.as_ref().map(ToString::to_string),
        iframe_url: format!("{}/v1/iframe?{}", state.public_url, iframe_query.finish()),
        poll_url: format!("{}/v1/poll?id={id}", state.public_url),
    })
}

/// Stores `info` as `app`'s `id`'s newest value and wakes its waiting clients.
pub async fn notify(
    state: &AppState,
    app: &App,
    id: &str,
    info: &str,
) -> Result<Notified, ApiError> {
    Id::check(id)?;
    Ok(notify_checked(state, app, id, info, None, None).await?.0)
}

/// [`notify`] made at most once for the idempotency record `once` (`<app>:<key>`, and a
/// batch's position after it), where the engine needs one to tell (src/idempotency.rs);
/// with `track` (the wait), also how to count its deliveries (see [`await_deliveries`]).
pub async fn notify_once(
    state: &AppState,
    app: &App,
    id: &str,
    info: &str,
    once: Option<&str>,
    track: Option<Duration>,
) -> Result<(Notified, Option<Tracking>), ApiError> {
    Id::check(id)?;
    notify_checked(state, app, id, info, once, track).await
}

/// Waits until the clients a notify woke got its value (or a newer one), or `until`, and
/// says in the answer how many did. Nobody woken: at once, 0.
pub async fn await_deliveries(
    state: &AppState,
    notified: &mut Notified,
    tracking: Option<&Tracking>,
    until: tokio::time::Instant,
) {
    let delivered = match tracking {
        Some(tracking) if notified.waiting > 0 => {
            state
                .store
                .deliveries(tracking, notified.waiting, until)
                .await
        }
        _ => 0,
    };
    notified.delivered = Some(delivered);
}

/// [`notify`] of an id already checked (`ids::notify_body` checks it before reading the
/// body, so every notify checks its id once).
pub(crate) async fn notify_checked(
    state: &AppState,
    app: &App,
    id: &str,
    info: &str,
    once: Option<&str>,
    track: Option<Duration>,
) -> Result<(Notified, Option<Tracking>), ApiError> {
    state.limiters.notify(app)?;
    let limit = app
        .limits()
        .info_max_bytes
        .unwrap_or(state.limits.info_max_bytes);
    if info.len() > limit {
        return Err(ApiError::InfoTooLarge {
            size: info.len(),
            limit,
        });
    }
    let (published, tracking) = state
        .store
        .publish(app, id, info, once, track)
        .await
        .inspect_err(|e| {
            if matches!(e, StoreError::RateLimited(_)) {
                state.metrics.rate_limited.notify_per_app.inc();
            }
        })?;
    tracing::debug!(
        app = %app.name(),
        id = %Redacted(id),
        seq = published.seq,
        woke = published.waiting,
        "notified"
    );
    Ok((published.into(), tracking))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_paths() {
        assert_eq!(
            notify_id("/v1/ids/abcdefghijklmnop/notify"),
            Some("abcdefghijklmnop")
        );
        assert_eq!(notify_id("/v1/ids//notify"), None);
        assert_eq!(notify_id("/v1/ids/a/b/notify"), None);
        assert_eq!(notify_id("/v1/ids/%61bc/notify"), None);
        assert_eq!(notify_id("/v1/ids/abc"), None);
        assert!(is_notify("/v1/ids/%61bc/notify"));
        assert!(!is_notify("/v1/ids/a/b/notify"));
        assert!(!is_notify("/v1/ids//notify"));
    }
}
