//! The operator's routes: `/healthz` (the process is up and serving HTTP), `/readyz` (it
//! wants new work: not draining for a shutdown and, in cluster mode, connected and subscribed
//! to Redis) and `/metrics` (the scrape). A load balancer
//! takes a node out of rotation on a failing `/readyz` while its open connections finish.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::metrics;
use crate::state::AppState;

/// The operator's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
    } else if let Some(why) = state.store.unready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "backplane_unavailable", "reason": why })),
        )
    } else {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    }
}

async fn scrape(State(state): State<AppState>) -> Response {
    let ids = state.store.count().await;
    let body = state.metrics.encode(ids);
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt as _;

    use super::*;
    use crate::config::Config;

    async fn readyz_status(shutdown: &CancellationToken) -> StatusCode {
        let settings = Config::default().validate(|_| None).unwrap();
        let addr = "127.0.0.1:8080".parse().unwrap();
        let router = crate::routes::router(AppState::new(settings, addr, shutdown.clone()));
        let request = Request::get("/readyz")
            .header("host", "localhost")
            .body(Body::empty())
            .unwrap();
        router.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn readyz_fails_once_the_server_drains() {
        let shutdown = CancellationToken::new();
        assert_eq!(readyz_status(&shutdown).await, StatusCode::OK);
        shutdown.cancel();
        assert_eq!(
            readyz_status(&shutdown).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
