//! Request extractors whose rejections are [`ApiError`]s, so a malformed query, path or body
//! gets the same JSON error shape as everything else instead of axum's plain-text default.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::id::Id;
use crate::state::AppState;

/// Query parameters; a parse failure is `400 invalid_parameters` naming the parameter.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query()).map(Self)
    }
}

/// Parses a query string (absent counts as empty). Shared by the [`Query`] extractor and the
/// lean path for held requests, so both reject bad input with the same words.
pub fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| ApiError::InvalidParameters(format!("query string: {e}")))
}

/// The `{id}` path segment, parsed into an [`Id`].
#[derive(Debug)]
pub struct PathId(pub Id);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(text) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| ApiError::InvalidParameters(rejection.body_text()))?;
        Ok(Self(Id::parse(&text)?))
    }
}

/// The whole request body, at most the configured body limit; more is `413 body_too_large`.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.body_limit_for(req.uri().path());
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::BodyTooLarge(limit)
                } else {
                    ApiError::InvalidParameters(rejection.body_text())
                }
            })
    }
}

/// The request body, not read yet: handlers that check a key take this and read it with
/// [`UnreadBody::read`] only once the key checked out, so a request without one never has its
/// body read (nor, with `Expect: 100-continue`, asked for).
#[derive(Debug)]
pub struct UnreadBody(Request);

impl FromRequest<AppState> for UnreadBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self(req))
    }
}

impl UnreadBody {
    /// Reads the body, as [`Body`] does.
    pub async fn read(self, state: &AppState) -> Result<Bytes, ApiError> {
        Body::from_request(self.0, state)
            .await
            .map(|Body(body)| body)
    }
}

/// The media type of the body (`text/plain` for `text/plain; charset=utf-8`), lower-cased.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    media_type_of(headers.get(header::CONTENT_TYPE))
}

/// [`media_type`] of a `Content-Type` value.
pub fn media_type_of(content_type: Option<&HeaderValue>) -> Option<String> {
    let value = content_type?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

/// Parses a JSON body, insisting on `Content-Type: application/json`.
pub fn json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    json_of(headers.get(header::CONTENT_TYPE), body)
}

/// [`json`], or the default for an empty body (an optional body whose fields all have
/// defaults).
pub fn json_or_default<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        json(headers, body)
    }
}

/// [`json`] given the `Content-Type` value. Every body of this API is a JSON object: an
/// array is refused even where serde would read a struct from it (`[null, null]` as
/// `{"id": null, "origin": null}`), so a body means one thing only.
pub fn json_of<T: DeserializeOwned>(
    content_type: Option<&HeaderValue>,
    body: &[u8],
) -> Result<T, ApiError> {
    match media_type_of(content_type).as_deref() {
        Some("application/json") => {
            if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(ApiError::InvalidJson(
                    "the body must be a JSON object".into(),
                ));
            }
            serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))
        }
        other => Err(ApiError::UnsupportedMediaType(
            other.unwrap_or("(none)").to_owned(),
            "application/json",
        )),
    }
}

/// The TCP peer of the connection a request came on, put in the request's extensions by
/// `connection`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The client's IP: the peer, or who a trusted proxy says it forwards (see `client_ip`).
/// `None` for a request that did not come over a socket (a test calling the router directly).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ip = parts.extensions.get::<PeerAddr>().map(|peer| {
            let forwarded_for = parts
                .headers
                .get_all(crate::client_ip::X_FORWARDED_FOR)
                .iter();
            state.trusted_proxies.client_ip(peer.0.ip(), forwarded_for)
        });
        Ok(Self(ip))
    }
}
