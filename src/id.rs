//! Ids: the capability a page holds to wait on news, and a backend holds to send it.
//!
//! An id is only ever built by parsing (or by [`Id::generate`]), so every `Id` in the
//! program is known to match `[A-Za-z0-9_-]{16,128}`. Nothing here knows about HTTP.
//!
//! The check is of shape only. Whoever knows an id can read its news and frame its page, so
//! docs/api.md asks backends that choose ids for 128 bits from a secure random source, as
//! [`Id::generate`] makes; but randomness cannot be seen in a string (`user-42-inbox-0001`
//! passes any length or alphabet test), so it is asked for, not checked.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng as _;

use crate::telemetry::Redacted;

/// Shortest id accepted: 16 characters of a 64-symbol alphabet can carry 96 bits. The docs
/// ask for 128 (22 characters), but raising this would make ids that existing backends chose,
/// and snapshots hold, invalid, while a longer guessable id would still pass.
pub const MIN_LEN: usize = 16;
/// Longest id accepted, so an id never dominates the memory of its slot.
pub const MAX_LEN: usize = 128;
/// Random bytes in a generated id: 128 bits, 22 characters of base64url.
const GENERATED_BYTES: usize = 16;

/// A validated id. Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Arc<str>);

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Outside `MIN_LEN..=MAX_LEN`.
    #[error("an id is {MIN_LEN} to {MAX_LEN} characters long, this one is {0} bytes")]
    Length(usize),
    /// A character outside `[A-Za-z0-9_-]`.
    #[error("an id may only contain A-Z, a-z, 0-9, '_' and '-'")]
    Alphabet,
}

/// The operating system's random source failed; no id can be made safely.
#[derive(Debug, thiserror::Error)]
#[error("the OS random source failed: {0}")]
pub struct EntropyError(String);

impl Id {
    /// Parses and validates an id chosen by a client.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        Self::check(text)?;
        Ok(Self(Arc::from(text)))
    }

    /// Checks that `text` is a well-formed id without keeping it (lookups need no copy).
    pub fn check(text: &str) -> Result<(), IdError> {
        if !(MIN_LEN..=MAX_LEN).contains(&text.len()) {
            return Err(IdError::Length(text.len()));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(IdError::Alphabet);
        }
        Ok(())
    }

    /// Makes a fresh id from 128 bits of the OS random source, encoded as base64url.
    pub fn generate() -> Result<Self, EntropyError> {
        let mut bytes = [0u8; GENERATED_BYTES];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| EntropyError(e.to_string()))?;
        Ok(Self(Arc::from(URL_SAFE_NO_PAD.encode(bytes))))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", Redacted(&self.0))
    }
}

impl std::borrow::Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet_and_lengths() {
        assert!(Id::parse("abcdefghijklmnop").is_ok());
        assert!(Id::parse(&"A-_9".repeat(32)).is_ok());
    }

    #[test]
    fn rejects_bad_lengths_and_characters() {
        assert_eq!(Id::parse("short"), Err(IdError::Length(5)));
        assert_eq!(Id::parse(&"a".repeat(129)), Err(IdError::Length(129)));
        assert_eq!(Id::parse("abcdefghijklmno!"), Err(IdError::Alphabet));
        assert_eq!(Id::parse("abcdefghijklmno/"), Err(IdError::Alphabet));
        assert!(Id::parse("ünicodeünicodeüü").is_err());
    }

    #[test]
    fn generated_ids_are_22_chars_of_base64url_and_distinct() {
        let a = Id::generate().unwrap();
        let b = Id::generate().unwrap();
        assert_eq!(a.as_str().len(), 22);
        assert!(Id::parse(a.as_str()).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn debug_output_does_not_reveal_the_id() {
        let id = Id::parse("secretsecretsecret").unwrap();
        assert!(!format!("{id:?}").contains("secretsecretsecret"));
    }
}
