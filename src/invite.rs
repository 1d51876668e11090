//! Invite codes: under the `invite` registration policy, a self-registration needs one.
//!
//! The operator makes them through the admin API; a code is shown once and kept as its
//! SHA-256 digest, named by a short id (the start of the digest), like app keys. Each has a
//! number of uses (one by default) and may expire. A registration takes a use before it
//! fetches its challenges and gives it back if it fails, so two registrations racing for the
//! last use cannot both have it. Nothing here knows about HTTP.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng as _;
use sha2::{Digest, Sha256};

use crate::auth::now_ms;

/// One invite, without its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// SHA-256 of the code.
    pub digest: [u8; 32],
    /// Registrations it allowed so far.
    pub used: u32,
    /// Registrations it allows in all.
    pub uses: u32,
    /// Milliseconds since the Unix epoch when it was made.
    pub created_ms: u64,
    /// Milliseconds since the Unix epoch from which it no longer works; `None`: never.
    pub expires_ms: Option<u64>,
}

impl Invite {
    /// The invite's name in listings and in `DELETE /v1/admin/invites/{id}`.
    pub fn id(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.digest[..6])
    }

    /// True once it expired.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|at| now_ms >= at)
    }
}

/// Why an invite code was refused, or an invite not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// No invite has this code, or it expired.
    #[error("this invite code is not valid (unknown or expired)")]
    Invalid,
    /// Its uses are spent.
    #[error("this invite code has been used")]
    Used,
    /// No invite of that id (admin API).
    #[error("no invite {0:?}")]
    Unknown(String),
    /// The system's random number generator failed.
    #[error("no entropy for an invite code")]
    Entropy,
}

/// The invites, in the order they were made.
#[derive(Debug, Default)]
pub struct Invites {
    list: Mutex<Vec<Invite>>,
}

impl Invites {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Invite>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new invite for `uses` registrations, expiring `ttl` from now (never, for `None`);
    /// returns it and its code (`chi_` and 32 characters of base64url: 24 random bytes),
    /// shown once.
    pub fn issue(&self, uses: u32, ttl: Option<Duration>) -> Result<(Invite, String), InviteError> {
        let mut bytes = [0u8; 24];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|_| InviteError::Entropy)?;
        let code = format!("chi_{}", URL_SAFE_NO_PAD.encode(bytes));
        let now = now_ms();
        let invite = Invite {
            digest: digest(&code),
            used: 0,
            uses,
            created_ms: now,
            expires_ms: ttl
                .map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
        };
        self.lock().push(invite.clone());
        Ok((invite, code))
    }

    /// Every invite, oldest first.
    pub fn list(&self) -> Vec<Invite> {
        self.lock().clone()
    }

    /// Removes the invite `id`.
    pub fn remove(&self, id: &str) -> Result<Invite, InviteError> {
        let mut list = self.lock();
        let at = list
            .iter()
            .position(|i| i.id() == id)
            .ok_or_else(|| InviteError::Unknown(id.to_owned()))?;
        Ok(list.remove(at))
    }

    /// Takes one use of the invite whose code is `code`; returns its digest, to give the use
    /// back with [`Invites::give_back`] if the registration fails.
    pub fn take(&self, code: &str) -> Result<[u8; 32], InviteError> {
        let presented = digest(code);
        let now = now_ms();
        let mut list = self.lock();
        let invite = list
            .iter_mut()
            .find(|i| i.digest == presented)
            .ok_or(InviteError::Invalid)?;
        if invite.is_expired(now) {
            return Err(InviteError::Invalid);
        }
        if invite.used >= invite.uses {
            return Err(InviteError::Used);
        }
        invite.used += 1;
        Ok(presented)
    }

    /// Gives back a use taken by [`Invites::take`] for a registration that failed.
    pub fn give_back(&self, digest: [u8; 32]) {
        if let Some(invite) = self.lock().iter_mut().find(|i| i.digest == digest) {
            invite.used = invite.used.saturating_sub(1);
        }
    }

    /// Makes `invites` the invites, in place of the ones there are: how a node takes on
    /// the registry another node changed (cluster mode).
    pub fn replace(&self, invites: Vec<Invite>) {
        *self.lock() = invites;
    }

    /// Puts invites read from a snapshot back.
    pub fn restore(&self, invites: Vec<Invite>) {
        self.lock().extend(invites);
    }
}

fn digest(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invite_allows_its_uses_then_says_it_was_used() {
        let invites = Invites::default();
        let (invite, code) = invites.issue(2, None).unwrap();
        assert!(code.starts_with("chi_") && code.len() == 36, "{code}");
        assert!(!format!("{:?}", invites.list()).contains(&code));
        let first = invites.take(&code).unwrap();
        invites.take(&code).unwrap();
        assert_eq!(invites.take(&code), Err(InviteError::Used));
        invites.give_back(first);
        invites.take(&code).unwrap();
        assert_eq!(invites.take("chi_nope"), Err(InviteError::Invalid));
        assert_eq!(invites.list()[0].used, 2);
        invites.remove(&invite.id()).unwrap();
        assert_eq!(invites.take(&code), Err(InviteError::Invalid));
        assert!(matches!(
            invites.remove(&invite.id()),
            Err(InviteError::Unknown(_))
        ));
    }

    #[test]
    fn an_expired_invite_is_invalid() {
        let invites = Invites::default();
        let (_, code) = invites.issue(1, Some(Duration::ZERO)).unwrap();
        assert_eq!(invites.take(&code), Err(InviteError::Invalid));
    }
}
