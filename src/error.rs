//! `ApiError`: every way a request can fail, mapped to an HTTP status and a stable code in
//! exactly one place each.
//!
//! The body is always `{"error": {"code": "...", "message": "..."}}`. Codes are part of the API
//! (docs/api.md lists them) and never change meaning; messages are for people and may. A 5xx
//! keeps its cause out of the body and logs it once here.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::RegistryError;
use crate::challenge::ChallengeError;
use crate::connection::head::Refusal;
use crate::id::IdError;
use crate::invite::InviteError;
use crate::origin::OriginError;
use crate::registration::PendingError;
use crate::store::{CreateError, StoreError, UnknownId};

/// How long a client told "too many ids" should wait before trying again.
const RETRY_FULL: Duration = Duration::from_secs(30);
/// How long a client refused for too many waiting challenges should wait: tokens expire
/// or get used within minutes.
const RETRY_CHALLENGES: Duration = Duration::from_secs(60);
/// How long a client refused for too many connections should wait.
const RETRY_CONNECTIONS: Duration = Duration::from_secs(1);
/// How long a backend told the backplane is unavailable should wait: about what a Redis
/// restart or a Sentinel failover takes.
const RETRY_BACKPLANE: Duration = Duration::from_secs(2);

/// Whole seconds to wait, rounded up and at least 1: `Retry-After: 0` would invite a retry
/// that is refused again.
fn retry_secs(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or a wrong `Authorization: Bearer` key.
    #[error("a valid app key is required: Authorization: Bearer <key>")]
    Unauthorized,
    /// A malformed id.
    #[error("invalid id: {0}")]
    InvalidId(#[from] IdError),
    /// A malformed origin.
    #[error("invalid origin: {0}")]
    InvalidOrigin(#[from] OriginError),
    /// The origin is not one of the app's (an app's `*` covers no origin another app lists).
    #[error(
        "origin {0} is not registered for this app (an app's \"*\" covers only the origins no \
         other app lists)"
    )]
    OriginNotAllowed(String),
    /// The iframe was asked for an origin the id is not bound to.
    #[error("this id does not serve origin {0}")]
    OriginMismatch(String),
    /// Another id with the same name exists.
    #[error("this id is already in use")]
    IdTaken,
    /// `max_ids` reached.
    #[error("the server holds its maximum of {0} ids; try again later")]
    TooManyIds(usize),
    /// The app holds as many ids as its quota allows.
    #[error("this app holds its quota of {0} ids; delete ids (or let them expire) to create more")]
    AppQuotaExceeded(usize),
    /// The id does not exist (or is another app's).
    #[error("no such id")]
    UnknownId,
    /// The id was deleted while the client waited.
    #[error("this id was deleted")]
    Gone,
    /// The info is longer than `info_max_bytes`.
    #[error("info is {size} bytes; the limit is {limit}")]
    InfoTooLarge {
        /// The info's size in bytes.
        size: usize,
        /// `info_max_bytes`.
        limit: usize,
    },
    /// An `Idempotency-Key` header that is not 1 to 255 visible ASCII characters.
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    /// The request with this `Idempotency-Key` is still being answered.
    #[error("a request with this Idempotency-Key is being answered; retry shortly")]
    IdempotencyInProgress,
    /// The `Idempotency-Key` was used with another request within its window.
    #[error("this Idempotency-Key was used with another request; use a new key")]
    IdempotencyKeyReused,
    /// The app holds `idempotency.max_keys_per_app` keys.
    #[error("this app holds its maximum of {0} idempotency keys; retry once older ones expire")]
    IdempotencyKeysFull(usize),
    /// A batch notify with more notifies than `limits.max_batch`.
    #[error("the batch has {count} notifies; the limit is {limit}")]
    BatchTooLarge {
        /// Notifies in the batch.
        count: usize,
        /// `limits.max_batch`.
        limit: usize,
    },
    /// The request body is longer than the server reads.
    #[error("the request body is larger than the {0} bytes this endpoint accepts")]
    BodyTooLarge(usize),
    /// A text/plain body that is not UTF-8.
    #[error("info must be UTF-8 text")]
    InvalidInfo,
    /// A JSON body that does not parse or has the wrong shape.
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    /// A body of a content type the endpoint does not take.
    #[error("unsupported content type {0:?}; send {1}")]
    UnsupportedMediaType(String, &'static str),
    /// A query parameter is missing or malformed.
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    /// A rate limit was reached; one more request would pass after the duration.
    #[error("too many requests; try again in {}s", retry_secs(*.0))]
    RateLimited(Duration),
    /// `max_connections` connections are open.
    #[error("the server holds its maximum of {0} connections; try again later")]
    TooManyConnections(usize),
    /// A request head that is malformed or could be read two ways; the connection closes.
    #[error(transparent)]
    Framing(#[from] Refusal),
    /// No route for the path.
    #[error("no such endpoint; see docs/api.md")]
    NotFound,
    /// The route exists but not for this method.
    #[error("method not allowed for this endpoint")]
    MethodNotAllowed,
    /// Redis (cluster mode) cannot be reached within `command_timeout`. Nothing was queued:
    /// the request may or may not have taken effect if it timed out after being sent.
    #[error("the backplane (Redis) is unavailable; try again shortly")]
    BackplaneUnavailable(String),
    /// The app registry refused a change (admin API).
    #[error(transparent)]
    Registry(#[from] crate::auth::RegistryError),
    /// Self-registration is closed (`[registration] policy = "closed"`).
    #[error("this server does not take self-registrations; its operator adds apps")]
    RegistrationClosed,
    /// The `invite` policy and no invite code.
    #[error("registration here needs an invite code from the operator: \"invite\": \"chi_...\"")]
    InviteRequired,
    /// An invite code refused, or an invite not found.
    #[error(transparent)]
    Invite(#[from] InviteError),
    /// An origin's challenge failed.
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    /// A registration named no waiting token for an origin, or a token of another origin.
    #[error("{0}")]
    ChallengeUnknown(String),
    /// No token handed out: too many wait.
    #[error(transparent)]
    Pending(#[from] PendingError),
    /// A bug or an environment failure; the cause goes to the log, not to the client.
    #[error("internal error")]
    Internal(String),
}

/// How a refused request is counted in the `outcome` label of its metric family: the one
/// mapping from errors to metrics (each family in `metrics` picks its counter from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `unknown_id`: no such id (or another app's).
    UnknownId,
    /// `gone`: the id was deleted while the request waited.
    Gone,
    /// `rejected`: refused for any other reason (key, size, format, rate, framing).
    Rejected,
}

impl ApiError {
    /// The metric outcome of this refusal.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::UnknownId => Outcome::UnknownId,
            Self::Gone => Outcome::Gone,
            _ => Outcome::Rejected,
        }
    }

    /// The HTTP status of each error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidId(_)
            | Self::InvalidOrigin(_)
            | Self::OriginMismatch(_)
            | Self::InvalidInfo
            | Self::InvalidJson(_)
            | Self::InvalidParameters(_)
            | Self::InvalidIdempotencyKey
            | Self::ChallengeUnknown(_)
            | Self::Framing(Refusal::Malformed(_)) => StatusCode::BAD_REQUEST,
            Self::Framing(Refusal::HeadTooLarge) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Framing(Refusal::Expectation) => StatusCode::EXPECTATION_FAILED,
            Self::Framing(Refusal::TransferCoding) => StatusCode::NOT_IMPLEMENTED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::OriginNotAllowed(_) | Self::RegistrationClosed | Self::InviteRequired => {
                StatusCode::FORBIDDEN
            }
            Self::Invite(e) => match e {
                InviteError::Invalid | InviteError::Used => StatusCode::FORBIDDEN,
                InviteError::Unknown(_) => StatusCode::NOT_FOUND,
                InviteError::Entropy => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Challenge(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Pending(e) => match e {
                PendingError::TooMany => StatusCode::TOO_MANY_REQUESTS,
                PendingError::Entropy => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::UnknownId | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::IdTaken | Self::IdempotencyInProgress => StatusCode::CONFLICT,
            Self::Gone => StatusCode::GONE,
            Self::InfoTooLarge { .. } | Self::BodyTooLarge(_) | Self::BatchTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::UnsupportedMediaType(..) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::AppQuotaExceeded(_) | Self::RateLimited(_) | Self::IdempotencyKeysFull(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::TooManyIds(_) | Self::TooManyConnections(_) | Self::BackplaneUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Registry(e) => match e {
                RegistryError::UnknownApp(_) | RegistryError::UnknownKey { .. } => {
                    StatusCode::NOT_FOUND
                }
                RegistryError::AppExists(_)
                | RegistryError::ConfigApp(_)
                | RegistryError::OriginTaken(_) => StatusCode::CONFLICT,
                RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
                RegistryError::Entropy(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, documented code of each error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::InvalidId(_) => "invalid_id",
            Self::InvalidOrigin(_) => "invalid_origin",
            Self::OriginNotAllowed(_) => "origin_not_allowed",
            Self::OriginMismatch(_) => "origin_mismatch",
            Self::IdTaken => "id_taken",
            Self::TooManyIds(_) => "too_many_ids",
            Self::AppQuotaExceeded(_) => "app_quota_exceeded",
            Self::UnknownId => "unknown_id",
            Self::Gone => "gone",
            Self::InfoTooLarge { .. } => "info_too_large",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::BatchTooLarge { .. } => "batch_too_large",
            Self::InvalidIdempotencyKey => "invalid_idempotency_key",
            Self::IdempotencyInProgress => "idempotency_in_progress",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyKeysFull(_) => "idempotency_keys_full",
            Self::InvalidInfo => "invalid_info",
            Self::InvalidJson(_) => "invalid_json",
            Self::UnsupportedMediaType(..) => "unsupported_media_type",
            Self::InvalidParameters(_) => "invalid_parameters",
            Self::RateLimited(_) => "rate_limited",
            Self::TooManyConnections(_) => "too_many_connections",
            Self::Framing(Refusal::Malformed(_)) => "malformed_request",
            Self::Framing(Refusal::HeadTooLarge) => "head_too_large",
            Self::Framing(Refusal::Expectation) => "expectation_failed",
            Self::Framing(Refusal::TransferCoding) => "unsupported_transfer_coding",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BackplaneUnavailable(_) => "backplane_unavailable",
            Self::Registry(e) => match e {
                RegistryError::UnknownApp(_) => "unknown_app",
                RegistryError::UnknownKey { .. } => "unknown_key",
                RegistryError::AppExists(_) => "app_exists",
                RegistryError::OriginTaken(_) => "origin_taken",
                RegistryError::ConfigApp(_) => "config_app",
                RegistryError::Invalid(_) => "invalid_app",
                RegistryError::Entropy(_) => "internal",
            },
            Self::RegistrationClosed => "registration_closed",
            Self::InviteRequired => "invite_required",
            Self::Invite(e) => match e {
                InviteError::Invalid => "invite_invalid",
                InviteError::Used => "invite_used",
                InviteError::Unknown(_) => "unknown_invite",
                InviteError::Entropy => "internal",
            },
            Self::Challenge(e) => e.code(),
            Self::ChallengeUnknown(_) => "challenge_unknown",
            Self::Pending(e) => match e {
                PendingError::TooMany => "too_many_challenges",
                PendingError::Entropy => "internal",
            },
            Self::Internal(_) => "internal",
        }
    }

    /// The error as one entry of a batch's answer: what a request of its own would have
    /// answered (status, code, message, and `retry_after` in seconds where it says when).
    pub fn as_item(&self) -> serde_json::Value {
        let mut item = json!({
            "status": self.status().as_u16(),
            "code": self.code(),
            "message": self.to_string(),
        });
        if let Some(after) = self.retry_after() {
            item["retry_after"] = json!(retry_secs(after));
        }
        item
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyIds(_) | Self::IdempotencyKeysFull(_) => Some(RETRY_FULL),
            Self::RateLimited(after) => Some(*after),
            Self::TooManyConnections(_) | Self::IdempotencyInProgress => Some(RETRY_CONNECTIONS),
            Self::BackplaneUnavailable(_) => Some(RETRY_BACKPLANE),
            Self::Pending(PendingError::TooMany) => Some(RETRY_CHALLENGES),
            _ => None,
        }
    }
}

impl From<UnknownId> for ApiError {
    fn from(_: UnknownId) -> Self {
        Self::UnknownId
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownId => Self::UnknownId,
            StoreError::RateLimited(after) => Self::RateLimited(after),
            StoreError::Unavailable(why) => Self::BackplaneUnavailable(why),
        }
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Taken => Self::IdTaken,
            CreateError::Full(max) => Self::TooManyIds(max),
            CreateError::AppQuota(max) => Self::AppQuotaExceeded(max),
            CreateError::Entropy(e) => Self::Internal(e.to_string()),
            CreateError::RateLimited(after) => Self::RateLimited(after),
            CreateError::Unavailable(why) => Self::BackplaneUnavailable(why),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        if let Self::BackplaneUnavailable(cause) = &self {
            tracing::warn!(%cause, "backplane unavailable");
        }
        let status = self.status();
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (status, Json(body)).into_response();
        if matches!(self, Self::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(after) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(after)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch and idempotency rows of the documented table (docs/api.md).
    #[test]
    fn batch_and_idempotency_codes() {
        let table: Vec<(ApiError, u16, &str)> = vec![
            (
                ApiError::BatchTooLarge { count: 2, limit: 1 },
                413,
                "batch_too_large",
            ),
            (
                ApiError::InvalidIdempotencyKey,
                400,
                "invalid_idempotency_key",
            ),
            (
                ApiError::IdempotencyInProgress,
                409,
                "idempotency_in_progress",
            ),
            (
                ApiError::IdempotencyKeyReused,
                422,
                "idempotency_key_reused",
            ),
            (
                ApiError::IdempotencyKeysFull(1),
                429,
                "idempotency_keys_full",
            ),
        ];
        for (error, status, code) in table {
            assert_eq!((error.status().as_u16(), error.code()), (status, code));
        }
    }

    /// The documented table (docs/api.md): changing a row here is an API change.
    #[test]
    fn status_and_code_table() {
        let table: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::InvalidId(IdError::Alphabet), 400, "invalid_id"),
            (
                ApiError::InvalidOrigin(OriginError::Malformed("x".into())),
                400,
                "invalid_origin",
            ),
            (
                ApiError::OriginNotAllowed("o".into()),
                403,
                "origin_not_allowed",
            ),
            (ApiError::OriginMismatch("o".into()), 400, "origin_mismatch"),
            (ApiError::IdTaken, 409, "id_taken"),
            (ApiError::TooManyIds(1), 503, "too_many_ids"),
            (ApiError::AppQuotaExceeded(1), 429, "app_quota_exceeded"),
            (ApiError::UnknownId, 404, "unknown_id"),
            (ApiError::Gone, 410, "gone"),
            (
                ApiError::InfoTooLarge { size: 2, limit: 1 },
                413,
                "info_too_large",
            ),
            (ApiError::BodyTooLarge(1), 413, "body_too_large"),
            (ApiError::InvalidInfo, 400, "invalid_info"),
            (ApiError::InvalidJson("x".into()), 400, "invalid_json"),
            (
                ApiError::UnsupportedMediaType("x".into(), "y"),
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::InvalidParameters("x".into()),
                400,
                "invalid_parameters",
            ),
            (
                ApiError::RateLimited(Duration::from_millis(1)),
                429,
                "rate_limited",
            ),
            (ApiError::TooManyConnections(1), 503, "too_many_connections"),
            (
                ApiError::BackplaneUnavailable("x".into()),
                503,
                "backplane_unavailable",
            ),
            (
                ApiError::Framing(Refusal::Malformed("x")),
                400,
                "malformed_request",
            ),
            (
                ApiError::Framing(Refusal::HeadTooLarge),
                431,
                "head_too_large",
            ),
            (
                ApiError::Framing(Refusal::Expectation),
                417,
                "expectation_failed",
            ),
            (
                ApiError::Framing(Refusal::TransferCoding),
                501,
                "unsupported_transfer_coding",
            ),
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (ApiError::Internal("x".into()), 500, "internal"),
        ];

        for (error, status, code) in table {
            assert_eq!(
                (error.status().as_u16(), error.code()),
                (status, code),
                "{error:?}"
            );
        }
    }

    /// Self-registration's rows of the table; every failed challenge is `422` with a code
    /// of its own (docs/api.md).
    #[test]
    fn registration_codes() {
        let table: Vec<(ApiError, u16, &str)> = vec![
            (
                ApiError::Registry(RegistryError::OriginTaken("o".into())),
                409,
                "origin_taken",
            ),
            (ApiError::RegistrationClosed, 403, "registration_closed"),
            (ApiError::InviteRequired, 403, "invite_required"),
            (
                ApiError::Invite(InviteError::Invalid),
                403,
                "invite_invalid",
            ),
            (ApiError::Invite(InviteError::Used), 403, "invite_used"),
            (
                ApiError::Invite(InviteError::Unknown("x".into())),
                404,
                "unknown_invite",
            ),
            (
                ApiError::ChallengeUnknown("x".into()),
                400,
                "challenge_unknown",
            ),
            (
                ApiError::Pending(PendingError::TooMany),
                429,
                "too_many_challenges",
            ),
        ];
        for (error, status, code) in table {
            assert_eq!(
                (error.status().as_u16(), error.code()),
                (status, code),
                "{error:?}"
            );
        }
        let origin = || "https://app.example".to_owned();
        let challenges = [
            (
                ChallengeError::Unreachable {
                    origin: origin(),
                    why: "x".into(),
                },
                "challenge_unreachable",
            ),
            (
                ChallengeError::Missing {
                    origin: origin(),
                    status: 404,
                },
                "challenge_missing",
            ),
            (
                ChallengeError::Mismatch { origin: origin() },
                "challenge_mismatch",
            ),
            (
                ChallengeError::TooLarge {
                    origin: origin(),
                    max_bytes: 1,
                },
                "challenge_too_large",
            ),
            (
                ChallengeError::Timeout {
                    origin: origin(),
                    timeout: Duration::from_secs(1),
                },
                "challenge_timeout",
            ),
            (
                ChallengeError::Redirect {
                    origin: origin(),
                    why: "x".into(),
                },
                "challenge_redirect",
            ),
            (
                ChallengeError::PrivateAddress {
                    origin: origin(),
                    address: std::net::Ipv4Addr::LOCALHOST.into(),
                },
                "challenge_private_address",
            ),
        ];
        for (error, code) in challenges {
            let error = ApiError::Challenge(error);
            assert_eq!(
                (error.status().as_u16(), error.code()),
                (422, code),
                "{error:?}"
            );
        }
    }

    #[test]
    fn internal_errors_keep_their_cause_out_of_the_body() {
        let msg = ApiError::Internal("disk on fire at /secret/path".into()).to_string();
        assert_eq!(msg, "internal error");
    }

    #[test]
    fn retry_after_on_the_retryable_rows() {
        let r = ApiError::TooManyIds(1).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
        // Waiting alone does not bring an app under its quota: no hint to retry.
        let r = ApiError::AppQuotaExceeded(1).into_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        for (wait, header) in [(1, "1"), (999, "1"), (1000, "1"), (1001, "2"), (0, "1")] {
            let r = ApiError::RateLimited(Duration::from_millis(wait)).into_response();
            assert_eq!(r.headers()[header::RETRY_AFTER], header, "{wait} ms");
        }
        assert!(
            ApiError::Gone
                .into_response()
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
    }

    #[test]
    fn unauthorized_names_the_scheme() {
        let r = ApiError::Unauthorized.into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
