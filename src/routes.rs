//! The router: every route of the backend and browser sides, with the middleware and the
//! fallbacks that turn unknown routes and wrong methods into JSON errors.
//!
//! `connection` serves its lean path through the same functions and hands everything else to
//! this router, so there is one definition of what each path answers.

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderMap, HeaderValue, Request, header};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{api, health, transport};

/// The whole application: backend API, browser transports, health, and the fallbacks that
/// turn unknown routes and wrong methods into JSON errors.
pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let router = Router::new()
        .merge(api::routes())
        .merge(transport::routes())
        .merge(health::routes())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(map_response(|mut response: Response| async move {
            common_headers(response.headers_mut());
            response
        }))
        .layer(CatchPanicLayer::custom(panic_response));
    // Request logs are debug-level; at the default level their spans and timings would cost
    // a measurable share of each notify for lines nobody sees, so they are left out.
    if tracing::enabled!(tracing::Level::DEBUG) {
        router.layer(
            // Spans name the method and the route only: paths and query strings carry ids.
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("(no route)", MatchedPath::as_str);
                tracing::debug_span!("request", method = %req.method(), route)
            }),
        )
    } else {
        router
    }
}

/// Headers every response carries unless its handler set them: nothing is cached unless a
/// route says so, and no content is sniffed.
pub fn common_headers(headers: &mut HeaderMap) {
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".into()).into_response()
}
