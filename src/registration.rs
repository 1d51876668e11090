//! Self-registration (issue 12): who may register an app without the operator, on which
//! terms, and the challenges handed out and not yet answered.
//!
//! A registration proves each of its origins first (`challenge`): `POST /v1/apps/challenges`
//! hands out a token for one origin, kept here in memory until it is used or its `token_ttl`
//! passes; `POST /v1/apps` names the tokens, and CallHome fetches each from its origin. The
//! number of tokens waiting is bounded in all and per client IP, so handing them out cannot
//! fill the memory. Tokens are not kept across restarts: a restart asks for new ones.
//! Nothing here knows about HTTP; `api` has the routes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::auth::AppLimits;
use crate::challenge;
use crate::client_ip::rate_key;
use crate::origin::Origin;

/// How apps come to exist here besides the config and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Nobody registers: apps come from the config and the admin API.
    #[default]
    Closed,
    /// Whoever has an invite code from the operator.
    Invite,
    /// Anyone who proves their origins.
    Open,
}

impl Policy {
    /// The policy's name, as in the config and in discovery.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Invite => "invite",
            Self::Open => "open",
        }
    }
}

/// The terms of self-registration, validated (`[registration]`).
#[derive(Debug, Clone)]
pub struct Terms {
    /// Who may register.
    pub policy: Policy,
    /// How challenges are fetched.
    pub challenge: challenge::Policy,
    /// How long a challenge token waits to be used.
    pub token_ttl: Duration,
    /// Tokens waiting at once, in all.
    pub max_pending: usize,
    /// Tokens waiting at once for one client IP (IPv6: per /64).
    pub max_pending_per_ip: usize,
    /// Origins one app may register with.
    pub max_origins: usize,
    /// The id quota of a new app.
    pub max_ids: usize,
    /// The rates and sizes of a new app.
    pub limits: AppLimits,
}

/// One token handed out and not used yet.
#[derive(Debug)]
struct Pending {
    origin: Origin,
    /// Whose: the client's rate key, for the per-IP bound.
    client: IpAddr,
    expires: Instant,
}

/// Why no token was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PendingError {
    /// As many tokens as allowed wait (for this client, or in all).
    #[error("too many challenges are waiting; use or let expire the ones you have")]
    TooMany,
    /// The system's random number generator failed.
    #[error("no entropy for a challenge token")]
    Entropy,
}

/// The tokens handed out and not yet used, by token.
#[derive(Debug, Default)]
pub struct Challenges {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Challenges {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new token for `origin`, asked for by `client`, waiting until `terms.token_ttl` from
    /// `now`.
    pub fn issue(
        &self,
        origin: &Origin,
        client: IpAddr,
        terms: &Terms,
        now: Instant,
    ) -> Result<String, PendingError> {
        let client = rate_key(client);
        let mut pending = self.lock();
        pending.retain(|_, p| p.expires > now);
        let mine = pending.values().filter(|p| p.client == client).count();
        if pending.len() >= terms.max_pending || mine >= terms.max_pending_per_ip {
            return Err(PendingError::TooMany);
        }
        let token = challenge::new_token().ok_or(PendingError::Entropy)?;
        pending.insert(
            token.clone(),
            Pending {
                origin: origin.clone(),
                client,
                expires: now + terms.token_ttl,
            },
        );
        Ok(token)
    }

    /// The origin `token` was handed out for, while it waits.
    pub fn origin_of(&self, token: &str, now: Instant) -> Option<Origin> {
        self.lock()
            .get(token)
            .filter(|p| p.expires > now)
            .map(|p| p.origin.clone())
    }

    /// Forgets `tokens`: they were used.
    pub fn consume<'a>(&self, tokens: impl IntoIterator<Item = &'a str>) {
        let mut pending = self.lock();
        for token in tokens {
            pending.remove(token);
        }
    }

    /// Forgets expired tokens; returns how many wait.
    pub fn forget_expired(&self, now: Instant) -> usize {
        let mut pending = self.lock();
        pending.retain(|_, p| p.expires > now);
        pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> Terms {
        Terms {
            policy: Policy::Open,
            challenge: challenge::Policy::default(),
            token_ttl: Duration::from_secs(60),
            max_pending: 3,
            max_pending_per_ip: 2,
            max_origins: 4,
            max_ids: 10,
            limits: AppLimits::default(),
        }
    }

    #[test]
    fn tokens_wait_their_ttl_within_bounds_per_client_and_in_all() {
        let challenges = Challenges::default();
        let terms = terms();
        let origin = Origin::parse("https://app.example").unwrap();
        let now = Instant::now();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "2001:db8::1".parse().unwrap();
        let two_same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let a = challenges.issue(&origin, one, &terms, now).unwrap();
        challenges.issue(&origin, one, &terms, now).unwrap();
        assert_eq!(
            challenges.issue(&origin, one, &terms, now),
            Err(PendingError::TooMany),
            "two per client"
        );
        challenges.issue(&origin, two, &terms, now).unwrap();
        assert_eq!(
            challenges.issue(&origin, two_same_64, &terms, now),
            Err(PendingError::TooMany),
            "three in all"
        );
        assert_eq!(challenges.origin_of(&a, now), Some(origin.clone()));
        challenges.consume([a.as_str()]);
        assert_eq!(challenges.origin_of(&a, now), None);
        challenges.issue(&origin, two, &terms, now).unwrap();

        let later = now + Duration::from_secs(61);
        assert_eq!(challenges.forget_expired(later), 0);
        challenges.issue(&origin, one, &terms, later).unwrap();
        assert_eq!(challenges.origin_of("nope", later), None);
    }

    #[test]
    fn policies_are_named_as_in_the_config() {
        for (policy, name) in [
            (Policy::Closed, "closed"),
            (Policy::Invite, "invite"),
            (Policy::Open, "open"),
        ] {
            assert_eq!(policy.as_str(), name);
            assert_eq!(serde_json::to_value(policy).unwrap(), name);
        }
    }
}
