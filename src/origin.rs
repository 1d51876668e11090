//! Web origins (`scheme://host[:port]`), the unit browsers use to decide who may talk to whom.
//!
//! An origin appears in three places: the origins an app registers in the config, the origin an
//! id is bound to, and the `origin` parameter of the iframe page. All three are parsed here into
//! the browser's own serialisation, so comparing two origins is comparing two strings.
//! Nothing here knows about HTTP or the store.

use std::fmt;
use std::sync::Arc;

/// A parsed origin, or the wildcard `*` that an app must list explicitly to use.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Origin(Arc<str>);

/// Why a string is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Not a URL at all.
    #[error("{0:?} is not an origin (expected scheme://host[:port])")]
    Malformed(String),
    /// A scheme other than http or https.
    #[error("{0:?} is not an http or https origin")]
    Scheme(String),
    /// Has a path, query, fragment or user info, which an origin never has.
    #[error("{0:?} has more than scheme://host[:port]")]
    NotBare(String),
}

impl Origin {
    /// The wildcard origin, which matches every page.
    pub const WILDCARD: &str = "*";

    /// Parses an origin as a browser would serialise it: lower-case scheme and host, default
    /// ports dropped. A trailing `/` is tolerated because people paste it.
    pub fn parse(text: &str) -> Result<Self, OriginError> {
        if text == Self::WILDCARD {
            return Ok(Self(Arc::from(Self::WILDCARD)));
        }
        let url = url::Url::parse(text).map_err(|_| OriginError::Malformed(text.to_owned()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OriginError::Scheme(text.to_owned()));
        }
        match url.host() {
            None => return Err(OriginError::Malformed(text.to_owned())),
            // WHATWG URLs allow hosts such as `*.example` that no page can be served from.
            Some(url::Host::Domain(domain))
                if !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) =>
            {
                return Err(OriginError::Malformed(text.to_owned()));
            }
            Some(_) => {}
        }
        let bare = url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty()
            && url.password().is_none()
            && !text.ends_with("//");
        if !bare {
            return Err(OriginError::NotBare(text.to_owned()));
        }
        Ok(Self(Arc::from(url.origin().ascii_serialization())))
    }

    /// True for `*`.
    pub fn is_wildcard(&self) -> bool {
        &*self.0 == Self::WILDCARD
    }

    /// The serialised origin, as used for `postMessage` and `frame-ancestors`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_a_browser() {
        let o = Origin::parse("HTTPS://App.Example:443/").unwrap();
        assert_eq!(o.as_str(), "https://app.example");
        let o = Origin::parse("http://localhost:3000").unwrap();
        assert_eq!(o.as_str(), "http://localhost:3000");
        let o = Origin::parse("http://[::1]:8080").unwrap();
        assert_eq!(o.as_str(), "http://[::1]:8080");
    }

    #[test]
    fn wildcard_only_as_itself() {
        assert!(Origin::parse("*").unwrap().is_wildcard());
        assert!(Origin::parse("https://*.example").is_err());
    }

    #[test]
    fn rejects_what_is_not_an_origin() {
        assert!(matches!(
            Origin::parse("app.example"),
            Err(OriginError::Malformed(_))
        ));
        assert!(matches!(
            Origin::parse("ftp://app.example"),
            Err(OriginError::Scheme(_))
        ));
        assert!(matches!(
            Origin::parse("https://app.example/path"),
            Err(OriginError::NotBare(_))
        ));
        assert!(matches!(
            Origin::parse("https://app.example?q"),
            Err(OriginError::NotBare(_))
        ));
        assert!(matches!(
            Origin::parse("https://u:p@app.example"),
            Err(OriginError::NotBare(_))
        ));
        assert!(Origin::parse("").is_err());
        assert!(Origin::parse("null").is_err());
    }
}
