//! `Idempotency-Key`: a backend that did not get an answer (a timeout, a `503` while Redis
//! fails over) sends the same request again with the same key, and gets the first answer
//! instead of a second notify or a second id.
//!
//! A key belongs to the app that sent it and lives for `[idempotency] window` (5 minutes by
//! default) from its first use. The request it came with is remembered by a fingerprint
//! (SHA-256 of method, path, media type and body): the same key with another request is
//! refused (`422 idempotency_key_reused`) and changes nothing; with the same request while
//! the first is still being answered, `409 idempotency_in_progress`; after it, the first
//! answer again, status and body, with `Idempotent-Replayed: true`.
//!
//! Which answers are kept: every answer that says what happened (2xx and 4xx). Answers that
//! invite a retry (`429`, `5xx`) are not kept: the key is free again and the retry runs. In
//! cluster mode a notify records its key in Redis in the same script that makes it, so a
//! notify that was made but whose answer was lost (the `503` after a timeout) is not made
//! twice: the retry gets the `seq` it got.
//!
//! Where keys live: in this process for the memory engine (at most
//! `[idempotency] max_keys_per_app` per app, swept when they expire), in Redis for cluster
//! mode (`ch:ik:<app>:<key>`, with Redis's own expiry), so a retry sent to another node finds
//! the key too.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::auth::App;
use crate::config::IdempotencyConfig;
use crate::error::ApiError;
use crate::state::AppState;

/// The request header.
pub static HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// The answer header on a replayed answer.
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// How long a key is held for a request still being answered; past it (the node died, say)
/// a retry runs again. Longer than any answer takes.
pub const PENDING_FOR: Duration = Duration::from_secs(30);

/// A key as sent: 1 to [`MAX_KEY_LEN`] visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// The key in `value`; `400 invalid_idempotency_key` when it is not one.
    pub fn parse(value: &HeaderValue) -> Result<Self, ApiError> {
        let bytes = value.as_bytes();
        if (1..=MAX_KEY_LEN).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic) {
            Ok(Self(String::from_utf8_lossy(bytes).into_owned()))
        } else {
            Err(ApiError::InvalidIdempotencyKey)
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a request is, for telling a retry from another request under the same key.
pub fn fingerprint(method: &str, path: &str, media_type: Option<&str>, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        method.as_bytes(),
        path.as_bytes(),
        media_type.unwrap_or("").as_bytes(),
    ] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.update(body);
    hash.finalize().into()
}

/// An answer kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Its status.
    pub status: u16,
    /// Its body (JSON, or empty).
    pub body: Bytes,
}

impl Kept {
    fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut response = (status, self.body.clone()).into_response();
        let headers = response.headers_mut();
        if !self.body.is_empty() {
            headers.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        headers.insert(REPLAYED.clone(), HeaderValue::from_static("true"));
        response
    }
}

/// Where a request with a key stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// First seen: run it, then [`finish`].
    Fresh,
    /// Answered before: this is the answer.
    Replay(Kept),
    /// The same request is being answered now.
    InProgress,
    /// The key came with another request.
    Reused,
    /// The app holds `max_keys_per_app` keys.
    Full,
}

/// The keys of the memory engine.
#[derive(Debug)]
pub struct Keys {
    entries: DashMap<(Arc<str>, Key), Remembered>,
    held: DashMap<Arc<str>, usize>,
    config: IdempotencyConfig,
}

#[derive(Debug)]
struct Remembered {
    fingerprint: [u8; 32],
    until: Instant,
    answer: Option<Kept>,
}

impl Keys {
    /// No keys yet.
    pub fn new(config: IdempotencyConfig) -> Self {
        Self {
            entries: DashMap::new(),
            held: DashMap::new(),
            config,
        }
    }

    /// Notes `key` of `app` for the request `fingerprint`, unless it is known.
    pub fn begin(&self, app: &Arc<str>, key: &Key, fingerprint: [u8; 32]) -> Begun {
        let now = Instant::now();
        match self.entries.entry((Arc::clone(app), key.clone())) {
            Entry::Occupied(mut seen) => {
                let seen_now = seen.get_mut();
                if seen_now.until <= now {
                    // Expired (a request never answered, or the window ended): start anew.
                    *seen_now = Remembered::pending(fingerprint, now);
                    return Begun::Fresh;
                }
                if seen_now.fingerprint != fingerprint {
                    return Begun::Reused;
                }
                match &seen_now.answer {
                    Some(kept) => Begun::Replay(kept.clone()),
                    None => Begun::InProgress,
                }
            }
            Entry::Vacant(vacant) => {
                let mut held = self.held.entry(Arc::clone(app)).or_insert(0);
                if *held >= self.config.max_keys_per_app {
                    return Begun::Full;
                }
                *held += 1;
                drop(held);
                vacant.insert(Remembered::pending(fingerprint, now));
                Begun::Fresh
            }
        }
    }

    /// The request under `key` was answered: keep `answer` for the window, or (for `None`)
    /// forget the key.
    pub fn finish(&self, app: &Arc<str>, key: &Key, answer: Option<Kept>) {
        let k = (Arc::clone(app), key.clone());
        match answer {
            Some(kept) => {
                if let Some(mut seen) = self.entries.get_mut(&k) {
                    seen.until = Instant::now() + self.config.window;
                    seen.answer = Some(kept);
                }
            }
            None => {
                if self.entries.remove(&k).is_some() {
                    self.forget_one(app);
                }
            }
        }
    }

    /// Forgets the keys whose time ended; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut gone = Vec::new();
        self.entries.retain(|(app, _), seen| {
            let keep = seen.until > now;
            if !keep {
                gone.push(Arc::clone(app));
            }
            keep
        });
        for app in &gone {
            self.forget_one(app);
        }
        gone.len()
    }

    fn forget_one(&self, app: &Arc<str>) {
        if let Some(mut held) = self.held.get_mut(app) {
            *held = held.saturating_sub(1);
        }
    }
}

impl Remembered {
    fn pending(fingerprint: [u8; 32], now: Instant) -> Self {
        Self {
            fingerprint,
            until: now + PENDING_FOR,
            answer: None,
        }
    }
}

/// True for an answer worth keeping: it says what happened. A `429` or `5xx` invites a
/// retry, which must run.
fn keeps(status: StatusCode) -> bool {
    (status.is_success() || status.is_client_error()) && status != StatusCode::TOO_MANY_REQUESTS
}

/// The key of this request, if it has one.
pub fn key_of(headers: &axum::http::HeaderMap) -> Result<Option<Key>, ApiError> {
    headers.get(&HEADER).map(Key::parse).transpose()
}

/// Runs `answer` once per `key` of `app` within the window: the first time for real, then
/// replaying its answer. Without a key, simply runs it. `answer` gets the key, for an
/// engine that records it with the change itself (cluster notifies).
pub async fn once<F>(
    state: &AppState,
    app: &App,
    key: Option<Key>,
    fingerprint: [u8; 32],
    answer: impl FnOnce(Option<Key>) -> F,
) -> Response
where
    F: Future<Output = Response>,
{
    let Some(key) = key else {
        return answer(None).await;
    };
    let begun = match begin(state, app, &key, fingerprint).await {
        Ok(begun) => begun,
        Err(e) => return e.into_response(),
    };
    match begun {
        Begun::Fresh => {}
        Begun::Replay(kept) => return kept.response(),
        Begun::InProgress => return ApiError::IdempotencyInProgress.into_response(),
        Begun::Reused => return ApiError::IdempotencyKeyReused.into_response(),
        Begun::Full => {
            return ApiError::IdempotencyKeysFull(state.idempotency.max_keys_per_app)
                .into_response();
        }
    }
    let response = answer(Some(key.clone())).await;
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        finish(state, app, &key, fingerprint, None).await;
        return ApiError::Internal("an answer's body broke off".into()).into_response();
    };
    let kept = keeps(parts.status).then(|| Kept {
        status: parts.status.as_u16(),
        body: bytes.clone(),
    });
    finish(state, app, &key, fingerprint, kept).await;
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

async fn begin(
    state: &AppState,
    app: &App,
    key: &Key,
    fingerprint: [u8; 32],
) -> Result<Begun, ApiError> {
    match state.store.as_cluster() {
        Some(cluster) => Ok(cluster
            .idempotency_begin(app.name(), key.as_str(), &fingerprint)
            .await?),
        None => Ok(state.idempotency_keys.begin(app.name(), key, fingerprint)),
    }
}

async fn finish(state: &AppState, app: &App, key: &Key, fingerprint: [u8; 32], kept: Option<Kept>) {
    match state.store.as_cluster() {
        Some(cluster) => {
            let window = state.idempotency.window;
            if let Err(e) = cluster
                .idempotency_finish(
                    app.name(),
                    key.as_str(),
                    &fingerprint,
                    kept.as_ref(),
                    window,
                )
                .await
            {
                // The key stays pending until PENDING_FOR ends; a retry then runs again (and
                // a cluster notify finds its own record, so it is not made twice).
                tracing::warn!(error = %e, "an idempotency key's answer was not kept");
            }
        }
        None => state.idempotency_keys.finish(app.name(), key, kept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(max: usize) -> Keys {
        Keys::new(IdempotencyConfig {
            window: Duration::from_secs(60),
            max_keys_per_app: max,
        })
    }

    #[test]
    fn a_key_replays_its_answer_refuses_another_request_and_frees_on_no_answer() {
        let keys = keys(10);
        let (app, key) = (Arc::from("a"), Key("k".into()));
        let fp = fingerprint("POST", "/v1/notify", Some("application/json"), b"{}");
        assert_eq!(keys.begin(&app, &key, fp), Begun::Fresh);
        assert_eq!(keys.begin(&app, &key, fp), Begun::InProgress);
        let other = fingerprint("POST", "/v1/notify", Some("application/json"), b"{ }");
        assert_eq!(keys.begin(&app, &key, other), Begun::Reused);
        let kept = Kept {
            status: 200,
            body: Bytes::from_static(b"{}"),
        };
        keys.finish(&app, &key, Some(kept.clone()));
        assert_eq!(keys.begin(&app, &key, fp), Begun::Replay(kept));
        // Another app's key of the same name is its own.
        assert_eq!(keys.begin(&Arc::from("b"), &key, other), Begun::Fresh);
        // An answer not kept frees the key.
        let free = Key("free".into());
        assert_eq!(keys.begin(&app, &free, fp), Begun::Fresh);
        keys.finish(&app, &free, None);
        assert_eq!(keys.begin(&app, &free, other), Begun::Fresh);
    }

    #[test]
    fn an_app_holds_at_most_its_share_of_keys() {
        let keys = keys(2);
        let app = Arc::from("a");
        let fp = [0; 32];
        assert_eq!(keys.begin(&app, &Key("1".into()), fp), Begun::Fresh);
        assert_eq!(keys.begin(&app, &Key("2".into()), fp), Begun::Fresh);
        assert_eq!(keys.begin(&app, &Key("3".into()), fp), Begun::Full);
        keys.finish(&app, &Key("1".into()), None);
        assert_eq!(keys.begin(&app, &Key("3".into()), fp), Begun::Fresh);
    }

    #[test]
    fn keys_are_visible_ascii_of_at_most_255_bytes() {
        let ok = |s: &str| Key::parse(&HeaderValue::from_str(s).unwrap()).is_ok();
        assert!(ok("a"));
        assert!(ok("550e8400-e29b-41d4-a716-446655440000"));
        assert!(ok(&"x".repeat(255)));
        assert!(!ok(&"x".repeat(256)));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(Key::parse(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_err());
    }

    #[test]
    fn the_fingerprint_tells_every_part_apart() {
        let base = fingerprint("POST", "/a", Some("x"), b"b");
        for other in [
            fingerprint("PUT", "/a", Some("x"), b"b"),
            fingerprint("POST", "/a/", Some("x"), b"b"),
            fingerprint("POST", "/a", None, b"b"),
            fingerprint("POST", "/a", Some("x"), b"c"),
            fingerprint("POST", "/ax", Some(""), b"b"),
        ] {
            assert_ne!(base, other);
        }
    }
}
