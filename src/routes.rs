//! The router: every route of the backend and browser sides, with the middleware and the
//! fallbacks that turn unknown routes and wrong methods into JSON errors.
//!
//! `connection` serves its lean path through the same functions and hands everything else to
//! this router, so there is one definition of what each path answers.

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderMap, HeaderValue, Request, Version, header};
use axum::middleware::{Next, from_fn, map_response};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::connection::head::{self, Refusal};
use crate::error::ApiError;
use crate::state::AppState;
use crate::{api, discovery, health, transport};

/// The whole application: backend API, browser transports, health, and the fallbacks that
/// turn unknown routes and wrong methods into JSON errors.
pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let router = Router::new()
        .merge(api::routes(state.batch_body_limit))
        .merge(transport::routes())
        .merge(health::routes())
        .merge(discovery::routes())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(from_fn(guard_framing))
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

/// Holds a request that hyper parsed (the lean path off, or a chunked body) to the lean
/// path's framing rules, so both paths refuse the same heads with the same JSON error; the
/// lean path has checked its own heads already and they pass here unchanged. hyper itself
/// has dealt with what it refuses (with a bare status line: it allows no body there) and
/// with `Content-Length` beside `Transfer-Encoding` (it reads the chunks and closes).
async fn guard_framing(request: Request<axum::body::Body>, next: Next) -> Response {
    if request.version() <= Version::HTTP_11 {
        let lines = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        let checked = head::check_headers(request.version(), lines).and_then(|_| {
            // Origin form only, as on the lean path.
            match request.uri().authority() {
                Some(_) => Err(Refusal::Malformed("malformed request target")),
                None => Ok(()),
            }
        });
        if let Err(refusal) = checked {
            let mut response = ApiError::from(refusal).into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    }
    next.run(request).await
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".into()).into_response()
}
