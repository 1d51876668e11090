//! `GET /callhome.js`: the parent page's client library, served from here so pages always
//! get the version that matches the daemon.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

const SCRIPT: &str = include_str!("../../assets/callhome.js");

/// Short enough that a daemon upgrade reaches pages within minutes.
const CACHE_CONTROL: &str = "public, max-age=300";

pub fn routes() -> Router<AppState> {
    Router::new().route("/callhome.js", get(script))
}

async fn script() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(CACHE_CONTROL),
            ),
        ],
        SCRIPT,
    )
}
