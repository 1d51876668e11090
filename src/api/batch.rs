//! `POST /v1/notify`: many notifies in one request, each answered as if alone.
//!
//! A backend that tells a room of 500 pages about one change sends one request instead of
//! 500. Each notify in the batch goes through the same steps as a single one (id check,
//! info size, the app's notify rate, the store) and gets the same answer it would have got
//! alone, in the batch's order: `seq` and `waiting`, or the error a single notify would get.
//! One bad notify fails only itself. Notifies of one id are made in the batch's order (each
//! gets the next `seq`); those of different ids run at once, so that in cluster mode they
//! share Redis round trips. A batch longer than `limits.max_batch` is refused whole
//! (`413 batch_too_large`) before anything is notified.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Authenticated, Notified};
use crate::auth::App;
use crate::error::ApiError;
use crate::extract::{self, UnreadBody};
use crate::idempotency;
use crate::state::AppState;
use crate::store::Tracking;

/// The path of a batch notify (its body may be larger than other requests').
pub const BATCH_PATH: &str = "/v1/notify";

/// The batch route, whose bodies may be up to `body_limit` bytes.
pub fn routes(body_limit: usize) -> Router<AppState> {
    Router::new().route(
        BATCH_PATH,
        post(notify_batch).layer(axum::extract::DefaultBodyLimit::max(body_limit)),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    notifications: Vec<Item>,
}

/// One notify's answer, and how to count its deliveries when asked to.
type Outcome = Result<(Notified, Option<Tracking>), ApiError>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    id: String,
    info: String,
}

/// The key is checked before the body is read, as for a single notify. With an
/// `Idempotency-Key`, the batch is made once: a retry gets the first answer, and in cluster
/// mode each notify of it is recorded with the notify (`<key>#<position>`), so one made
/// before an answer was lost is not made again.
async fn notify_batch(
    State(state): State<AppState>,
    Authenticated(app): Authenticated,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: UnreadBody,
) -> Response {
    let wait = match super::notify_wait(query.as_deref()) {
        Ok(wait) => wait,
        Err(e) => return e.into_response(),
    };
    let body = match body.read(&state).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let key = match idempotency::key_of(&headers) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let media_type = extract::media_type(&headers);
    let fingerprint = idempotency::fingerprint("POST", BATCH_PATH, media_type.as_deref(), &body);
    idempotency::once(&state, &app, key, fingerprint, |key| async {
        let once = key.map(|key| format!("{}:{}", app.name(), key.as_str()));
        match batch(&state, &app, &headers, &body, once.as_deref(), wait).await {
            Ok(answer) => Json(answer).into_response(),
            Err(e) => e.into_response(),
        }
    })
    .await
}

async fn batch(
    state: &AppState,
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    once: Option<&str>,
    wait: Option<Duration>,
) -> Result<Value, ApiError> {
    let until = wait.map(|wait| tokio::time::Instant::now() + wait);
    let request: BatchRequest = extract::json(headers, body)?;
    let limit = state.limits.max_batch;
    if request.notifications.len() > limit {
        return Err(ApiError::BatchTooLarge {
            count: request.notifications.len(),
            limit,
        });
    }
    let mut outcomes = notify_all(state, app, &request.notifications, once, wait).await;
    if let Some(until) = until {
        // Every notify is made before any waits: they wait together, until one deadline.
        join_all(outcomes.iter_mut().filter_map(|o| o.as_mut().ok()).map(
            |(notified, tracking)| {
                super::await_deliveries(state, notified, tracking.as_ref(), until)
            },
        ))
        .await;
    }
    let mut notified = 0;
    let results: Vec<Value> = request
        .notifications
        .iter()
        .zip(outcomes)
        .map(|(item, outcome)| match outcome {
            Ok((n, _)) => {
                notified += 1;
                let mut result = json!({"id": item.id, "seq": n.seq, "waiting": n.waiting,
                    "delivery": n.delivery});
                if let Some(delivered) = n.delivered {
                    result["delivered"] = delivered.into();
                }
                result
            }
            Err(e) => json!({"id": item.id, "error": e.as_item()}),
        })
        .collect();
    Ok(json!({
        "notified": notified,
        "failed": results.len() - notified,
        "results": results,
    }))
}

/// Every notify of `items`, each counted like a single one (with `track`, with how to count
/// its deliveries); the outcomes in `items`' order.
async fn notify_all(
    state: &AppState,
    app: &App,
    items: &[Item],
    once: Option<&str>,
    track: Option<Duration>,
) -> Vec<Outcome> {
    // One chain per id, in the batch's order; chains run at once.
    let mut chains: Vec<Vec<usize>> = Vec::new();
    let mut chain_of: HashMap<&str, usize> = HashMap::new();
    for (at, item) in items.iter().enumerate() {
        let chain = *chain_of.entry(item.id.as_str()).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[chain].push(at);
    }
    let runs = chains.iter().map(|chain| async move {
        let mut done = Vec::with_capacity(chain.len());
        for &at in chain {
            let item = &items[at];
            let record = once.map(|once| format!("{once}#{at}"));
            let answer =
                super::notify_once(state, app, &item.id, &item.info, record.as_deref(), track)
                    .await;
            let (answer, tracking) = match answer {
                Ok((notified, tracking)) => (Ok(notified), tracking),
                Err(e) => (Err(e), None),
            };
            let outcome = super::count_notify(state, answer).map(|n| (n, tracking));
            done.push((at, outcome));
        }
        done
    });
    let mut outcomes: Vec<Option<Outcome>> =
        std::iter::repeat_with(|| None).take(items.len()).collect();
    for (at, outcome) in join_all(runs).await.into_iter().flatten() {
        outcomes[at] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|o| o.expect("every notify was made"))
        .collect()
}
