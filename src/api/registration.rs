//! `/v1/apps`: self-registration (issue 12), when `[registration] policy` lets anyone (`open`)
//! or anyone with an invite code (`invite`) register an app and get its key.
//!
//! No key is needed, so these are the only routes that read a body from anybody (up to the
//! body limit, as every route); both are rate-limited per client IP before anything else. `POST /v1/apps/challenges` hands out a
//! token for one origin; `POST /v1/apps` fetches each origin's token from
//! `<origin>/.well-known/callhome-challenge/<token>` (see `challenge`) and, when every origin
//! answered it, registers the app with the policy's quotas through the same registry as the
//! admin API. The key is shown once; the invite code and the key are never logged.

use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::json;

use super::admin::limits;
use crate::auth::{NewApp, RegistryError};
use crate::challenge;
use crate::error::ApiError;
use crate::extract::{self, Body, ClientIp};
use crate::origin::Origin;
use crate::registration::{PendingError, Policy};
use crate::registry;
use crate::state::AppState;

/// The paths anybody may send a body to (when registration is not closed).
pub const PATHS: [&str; 2] = ["/v1/apps", "/v1/apps/challenges"];

/// The self-registration routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/apps", post(register))
        .route("/v1/apps/challenges", post(challenge))
}

/// True when `path` is a self-registration path and registration is not closed: then a
/// request without a key may have its body read.
pub fn takes_a_body(state: &AppState, path: &str) -> bool {
    state.registration.policy != Policy::Closed && PATHS.contains(&path)
}

/// The checks before any body is read: the policy, the engine, the client's rate.
fn admit(state: &AppState, ip: ClientIp) -> Result<(), ApiError> {
    if state.registration.policy == Policy::Closed {
        return Err(ApiError::RegistrationClosed);
    }
    // A request that came over no socket (a router test) counts as one client.
    let ip = ip.0.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    state.limiters.registration(ip)
}

fn origin(text: &str) -> Result<Origin, ApiError> {
    let origin = Origin::parse(text)?;
    if origin.is_wildcard() {
        return Err(RegistryError::Invalid("`*` is not an origin one can prove".into()).into());
    }
    Ok(origin)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeRequest {
    origin: String,
}

async fn challenge(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    admit(&state, ip)?;
    let request: ChallengeRequest = extract::json(&headers, &body)?;
    let origin = origin(&request.origin)?;
    // Refused now rather than after the app went to the trouble of serving the token.
    if state
        .apps
        .view()
        .iter()
        .any(|app| app.origins().contains(&origin))
    {
        return Err(RegistryError::OriginTaken(origin.to_string()).into());
    }
    let terms = &state.registration;
    let client = ip.0.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let token = issue(&state, &origin, client).await?;
    let body = json!({
        "origin": origin.as_str(),
        "token": token,
        "url": challenge::url(&origin, &token),
        "expires_in": terms.token_ttl.as_secs(),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    name: String,
    origins: Vec<String>,
    /// One token from `POST /v1/apps/challenges` for each origin, in any order.
    tokens: Vec<String>,
    invite: Option<String>,
}

async fn register(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    admit(&state, ip)?;
    let request: RegisterRequest = extract::json(&headers, &body)?;
    let terms = &state.registration;
    let origins = request
        .origins
        .iter()
        .map(|o| origin(o))
        .collect::<Result<Vec<_>, _>>()?;
    if origins.len() > terms.max_origins {
        return Err(RegistryError::Invalid(format!(
            "at most {} origins per app",
            terms.max_origins
        ))
        .into());
    }
    let new = NewApp {
        name: request.name,
        origins,
        max_ids: terms.max_ids,
        limits: terms.limits,
    };
    state.apps.vet(&new)?;
    let tokens = tokens_for(&state, &new.origins, &request.tokens).await?;
    // The invite's use is taken before the slow part, so two registrations cannot both
    // spend its last one; it is given back if the registration fails.
    let invite = match (terms.policy, &request.invite) {
        (Policy::Invite, None) => return Err(ApiError::InviteRequired),
        (Policy::Invite, Some(code)) => {
            Some(registry::change(&state, |apps| apps.invites().take(code)).await?)
        }
        _ => None,
    };
    let registered = prove_and_register(&state, &new, &tokens).await;
    let (app, key) = match registered {
        Ok(done) => done,
        Err(e) => {
            if let Some(invite) = invite {
                let given_back = registry::change(&state, |apps| {
                    apps.invites().give_back(invite);
                    Ok::<_, ApiError>(())
                })
                .await;
                if let Err(lost) = given_back {
                    tracing::warn!(error = %lost, "an invite's use was not given back");
                }
            }
            return Err(e);
        }
    };
    consume(&state, &tokens).await;
    tracing::info!(
        app = %app.name(),
        key_id = %key.info.id(),
        origins = ?app.origins().iter().map(Origin::as_str).collect::<Vec<_>>(),
        client = ?ip.0,
        "app self-registered"
    );
    let body = json!({
        "name": &**app.name(),
        "origins": app.origins().iter().map(Origin::as_str).collect::<Vec<_>>(),
        "key": key.key.expose(),
        "key_id": key.info.id(),
        "max_ids": app.max_ids(),
        "limits": limits(&state, &app),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The token for each of `origins`, in their order, from `tokens`: each must wait and have
/// been handed out for one of the origins, one for each.
async fn tokens_for(
    state: &AppState,
    origins: &[Origin],
    tokens: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut by_origin: Vec<Option<String>> = vec![None; origins.len()];
    for token in tokens {
        let Some(of) = origin_of(state, token).await? else {
            return Err(ApiError::ChallengeUnknown(
                "a token is not one handed out here, was used, or expired: ask \
                 POST /v1/apps/challenges for a new one"
                    .into(),
            ));
        };
        let Some(at) = origins.iter().position(|o| *o == of) else {
            return Err(ApiError::ChallengeUnknown(format!(
                "a token is for {of}, which the app does not list"
            )));
        };
        by_origin[at] = Some(token.clone());
    }
    origins
        .iter()
        .zip(by_origin)
        .map(|(origin, token)| {
            token.ok_or_else(|| {
                ApiError::ChallengeUnknown(format!(
                    "no token for {origin}: ask POST /v1/apps/challenges for one and serve it"
                ))
            })
        })
        .collect()
}

async fn prove_and_register(
    state: &AppState,
    new: &NewApp,
    tokens: &[String],
) -> Result<(std::sync::Arc<crate::auth::App>, crate::auth::NewKey), ApiError> {
    let policy = &state.registration.challenge;
    let proofs = join_all(
        new.origins
            .iter()
            .zip(tokens)
            .map(|(origin, token)| challenge::prove(origin, token, policy)),
    )
    .await;
    for proof in proofs {
        proof?;
    }
    // Checked again, atomically: another app may have taken a name or origin meanwhile.
    registry::change(state, |apps| apps.register(new)).await
}

/// A token for `origin`, asked for by `client`: kept in this process (memory engine) or in
/// Redis (cluster mode, so that the registration may reach any node).
async fn issue(
    state: &AppState,
    origin: &Origin,
    client: std::net::IpAddr,
) -> Result<String, ApiError> {
    let terms = &state.registration;
    let Some(cluster) = state.store.as_cluster() else {
        return Ok(state
            .challenges
            .issue(origin, client, terms, Instant::now())?);
    };
    let token = challenge::new_token().ok_or(PendingError::Entropy)?;
    let client = crate::client_ip::rate_key(client).to_string();
    let kept = cluster
        .challenge_issue(
            &token,
            origin.as_str(),
            &client,
            terms.token_ttl,
            terms.max_pending_per_ip,
            terms.max_pending,
        )
        .await?;
    if kept {
        Ok(token)
    } else {
        Err(PendingError::TooMany.into())
    }
}

/// The origin `token` was handed out for, while it waits.
async fn origin_of(state: &AppState, token: &str) -> Result<Option<Origin>, ApiError> {
    let Some(cluster) = state.store.as_cluster() else {
        return Ok(state.challenges.origin_of(token, Instant::now()));
    };
    Ok(cluster
        .challenge_origin(token)
        .await?
        .and_then(|text| Origin::parse(&text).ok()))
}

/// Forgets `tokens`, used by a registration (one left in Redis expires by itself).
async fn consume(state: &AppState, tokens: &[String]) {
    match state.store.as_cluster() {
        None => state.challenges.consume(tokens.iter().map(String::as_str)),
        Some(cluster) => {
            if let Err(e) = cluster.challenge_consume(tokens).await {
                tracing::warn!(error = %e, "used challenge tokens not forgotten; they expire");
            }
        }
    }
}
