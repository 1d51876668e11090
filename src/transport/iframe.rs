//! `GET /v1/iframe?id=..&origin=..`: the hidden page that waits on our origin and posts to
//! the parent; `GET /v1/worker.js`: the shared worker through which the frames of a browser
//! share one connection.
//!
//! The page is a fixed script (assets/watch.js, assets/hub.js and assets/iframe.js) plus a
//! JSON data block naming the id, the parent's origin and how to connect. Because the script
//! never changes, the Content-Security-Policy allows it by hash and nothing else runs;
//! `frame-ancestors` lets only the bound origin frame the page, and `worker-src 'self'` lets
//! it start our worker and no other. An unknown id still gets a page (status 404) that tells
//! the parent, since a parent cannot read the status of a cross-origin iframe.
//!
//! The worker's URL names the hash of its script (`?v=`), so a browser never mixes frames of
//! one daemon version with a worker of another (a shared worker is found by its URL), and
//! the script may be cached for good.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::extract::{ClientIp, Query};
use crate::id::Id;
use crate::origin::{Origin, OriginError};
use crate::state::AppState;
use crate::store::Found;

const TEMPLATE: &str = include_str!("../../assets/iframe.html");
/// The frame's script: the connection (watch.js), the relay a frame runs while it holds the
/// connection for the others (hub.js), and the frame itself.
const SCRIPT: &str = concat!(
    include_str!("../../assets/watch.js"),
    include_str!("../../assets/hub.js"),
    include_str!("../../assets/iframe.js"),
);
/// The shared worker's script: the same connection and relay, and the worker's ports.
const WORKER: &str = concat!(
    include_str!("../../assets/watch.js"),
    include_str!("../../assets/hub.js"),
    include_str!("../../assets/worker.js"),
);

/// The page split around its one variable part, with the script's CSP hash.
struct Page {
    head: String,
    tail: String,
    script_hash: String,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let with_script = TEMPLATE.replace("{{script}}", SCRIPT);
    let (head, tail) = with_script
        .split_once("{{config}}")
        .expect("assets/iframe.html has a {{config}} placeholder");
    Page {
        head: head.to_owned(),
        tail: tail.to_owned(),
        script_hash: STANDARD.encode(Sha256::digest(SCRIPT.as_bytes())),
    }
});

/// The worker's version: the start of its script's SHA-256, in URL-safe base64.
static WORKER_VERSION: LazyLock<String> =
    LazyLock::new(|| URL_SAFE_NO_PAD.encode(&Sha256::digest(WORKER.as_bytes())[..12]));

/// The worker's URL, relative to the page's (`/v1/iframe`).
static WORKER_URL: LazyLock<String> = LazyLock::new(|| format!("worker.js?v={}", *WORKER_VERSION));

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/iframe", get(iframe))
        .route("/v1/worker.js", get(worker))
}

#[derive(Debug, Deserialize)]
struct IframeParams {
    id: String,
    origin: String,
    #[serde(default)]
    transport: Transport,
    #[serde(default)]
    share: Share,
}

/// Which transport the page uses: SSE with long-poll fallback, or one of them forced.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Transport {
    #[default]
    Auto,
    Poll,
    Sse,
}

/// How the frames of a browser share a connection: a shared worker, else the frame holding
/// a Web Lock, else none (`auto`); one of them forced (`worker`, `locks`: none where the
/// browser lacks it); or every frame on its own (`off`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Share {
    #[default]
    Auto,
    Worker,
    Locks,
    Off,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PageConfig<'a> {
    id: &'a str,
    origin: &'a str,
    transport: Transport,
    share: Share,
    /// The shared worker's URL.
    worker: &'a str,
    /// Ids one connection may carry (`limits.max_ids_per_stream`).
    max_ids: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

async fn iframe(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    params: Result<Query<IframeParams>, ApiError>,
) -> Result<Response, ApiError> {
    super::admit(&state, client)?;
    let Query(params) = params?;
    let id = Id::parse(&params.id)?;
    let origin = Origin::parse(&params.origin)?;
    if origin.is_wildcard() {
        // postMessage to "*" would hand the value to whoever framed the page.
        return Err(OriginError::Malformed(params.origin).into());
    }
    // The same lookup as a poll's: the page loading counts as activity too.
    let Ok(found) = super::find(&state, id.as_str()).await else {
        let config = PageConfig {
            error: Some("unknown"),
            ..PageConfig::new(&id, &origin, &params, &state)
        };
        return Ok(page(StatusCode::NOT_FOUND, &config, &origin));
    };
    if !serves(&state, &found, &origin) {
        return Err(ApiError::OriginMismatch(origin.to_string()));
    }
    let config = PageConfig::new(&id, &origin, &params, &state);
    Ok(page(StatusCode::OK, &config, &origin))
}

impl<'a> PageConfig<'a> {
    fn new(id: &'a Id, origin: &'a Origin, params: &IframeParams, state: &AppState) -> Self {
        Self {
            id: id.as_str(),
            origin: origin.as_str(),
            transport: params.transport,
            share: params.share,
            worker: &WORKER_URL,
            max_ids: state.limits.max_ids_per_stream,
            error: None,
        }
    }
}

/// Whether `slot`'s news may go to pages of `origin`: the id is bound to it, to `*` or to
/// nothing, and its app may serve it ([`Apps::serves`](crate::auth::Apps::serves): a `*` app
/// never serves another app's origins). The second check also covers ids bound before an
/// app's origins changed, or by an older version that let a `*` app bind any origin.
fn serves(state: &AppState, found: &Found, origin: &Origin) -> bool {
    let bound = found
        .origin
        .as_ref()
        .is_none_or(|bound| bound.is_wildcard() || bound == origin);
    bound
        && state
            .apps
            .get(&found.app)
            .is_some_and(|app| state.apps.serves(&app, origin))
}

fn page(status: StatusCode, config: &PageConfig<'_>, origin: &Origin) -> Response {
    // `<` escaped so no value can close the data block; still valid JSON.
    let config = serde_json::to_string(config)
        .expect("a struct of strings serialises")
        .replace('<', "\\u003c");
    let page = &*PAGE;
    let body = format!("{}{config}{}", page.head, page.tail);
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{}'; connect-src 'self'; worker-src 'self'; \
         frame-ancestors {origin}; base-uri 'none'; form-action 'none'",
        page.script_hash
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::try_from(csp).expect("an origin and a base64 hash are valid header text"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The shared worker's script. Its own policy lets it connect to this origin only. With the
/// current version in the URL it may be cached for good; a page of an older daemon asking
/// for its version gets this one, uncached, and frames of both versions then share it
/// (the messages between frame and worker are the same within a major version).
async fn worker(RawQuery(query): RawQuery) -> Response {
    let current = query.is_some_and(|q| q == format!("v={}", *WORKER_VERSION));
    let cache = if current {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = WORKER.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; connect-src 'self'"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_has_both_placeholders() {
        assert!(TEMPLATE.contains("{{config}}") && TEMPLATE.contains("{{script}}"));
        assert!(PAGE.head.contains(SCRIPT) || PAGE.tail.contains(SCRIPT));
    }

    #[test]
    fn csp_allows_only_the_bound_origin_to_frame_the_page() {
        let origin = Origin::parse("https://a.example").unwrap();
        let config = PageConfig {
            id: "abcdefghijklmnop",
            origin: origin.as_str(),
            transport: Transport::Auto,
            share: Share::Auto,
            worker: &WORKER_URL,
            max_ids: 32,
            error: None,
        };
        let r = page(StatusCode::OK, &config, &origin);
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("frame-ancestors https://a.example;"));
    }
}
