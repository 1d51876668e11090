//! `GET /.well-known/callhome`: what this server is and offers, for a web app that is told
//! a user's CallHome server and must learn what it can do there (issue 12's discovery).
//!
//! Public and cacheable: API versions, the public URL, the transports and ways of sharing a
//! connection the browser side offers, how apps come to exist here (`registration`), and the
//! limits an app works within. It names no app, key or id. Beside it, `GET
//! /v1/openapi.json`: the machine-readable description of the whole API.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::config::RateLimit;
use crate::registration::Policy;
use crate::state::AppState;

/// Five minutes: a changed limit reaches the apps that cache it soon enough.
const CACHE_CONTROL: &str = "public, max-age=300";

/// The `OpenAPI` 3.1 document of the whole HTTP API (docs/openapi.json; tests/it/openapi.rs
/// holds it to the routes, the error codes and docs/api.md).
pub const OPENAPI: &str = include_str!("../docs/openapi.json");

/// The discovery routes: the discovery document and the `OpenAPI` document.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/callhome", get(discover))
        .route("/v1/openapi.json", get(openapi))
}

async fn openapi() -> Response {
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response();
    public(&mut response);
    response
}

/// Cacheable, and readable by any page.
fn public(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

fn rate(limit: RateLimit) -> serde_json::Value {
    if limit.per_second == 0 {
        serde_json::Value::Null
    } else {
        json!({"per_second": limit.per_second, "burst": limit.burst})
    }
}

/// How apps come to exist here: the policy and, when one may register, where and on what
/// terms.
fn registration(state: &AppState) -> serde_json::Value {
    let terms = &state.registration;
    if terms.policy == Policy::Closed {
        return json!({"policy": "closed"});
    }
    let limits = terms.limits;
    json!({
        "policy": terms.policy.as_str(),
        "apps_url": format!("{}/v1/apps", state.public_url),
        "challenges_url": format!("{}/v1/apps/challenges", state.public_url),
        "challenge_path": crate::challenge::PATH,
        "token_ttl_seconds": terms.token_ttl.as_secs(),
        "max_origins": terms.max_origins,
        "new_app": {
            "max_ids": terms.max_ids,
            "create_per_app": limits.create_per_app.map_or(serde_json::Value::Null, rate),
            "notify_per_app": limits.notify_per_app.map_or(serde_json::Value::Null, rate),
            "info_max_bytes": limits.info_max_bytes,
        },
    })
}

async fn discover(State(state): State<AppState>) -> Response {
    let limits = &state.limits;
    let body = json!({
        "callhome": 1,
        "api_versions": ["v1"],
        "public_url": state.public_url,
        "engine": if state.store.as_memory().is_some() { "memory" } else { "redis" },
        "browser": {
            "transports": ["sse", "poll"],
            "sharing": ["worker", "locks", "off"],
            "max_ids_per_stream": limits.max_ids_per_stream,
            "callhome_js": format!("{}/callhome.js", state.public_url),
        },
        "registration": registration(&state),
        "limits": {
            "info_max_bytes": limits.info_max_bytes,
            "max_waiters_per_id": limits.max_waiters_per_id,
            "id_idle_ttl_seconds": limits.id_idle_ttl.as_secs(),
            "poll_timeout_seconds": limits.poll_timeout.as_secs(),
            "notify_per_app": rate(state.rates.notify_per_app),
            "create_per_app": rate(state.rates.create_per_app),
            "browser_per_ip": rate(state.rates.browser_per_ip),
        },
    });
    let mut response = axum::Json(body).into_response();
    public(&mut response);
    response
}
