//! Who may do what: app keys for backends, origins for browsers.
//!
//! Keys are looked up by their SHA-256 digest, so neither the position of the first wrong
//! byte nor the key's length shows in the response time, and the registry keeps no key
//! itself. Nothing here knows about HTTP; the extractor lives in `api`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::origin::Origin;

/// An app's secret key. Its `Debug` never shows the secret.
#[derive(Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct AppKey(String);

impl AppKey {
    /// Wraps a secret read from the config or the environment.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// True when the secret is empty, which the config refuses.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret's length in bytes, to warn about weak keys without showing them.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn digest(&self) -> [u8; 32] {
        digest(&self.0)
    }
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppKey(***)")
    }
}

/// A registered web application.
#[derive(Debug)]
pub struct App {
    name: Arc<str>,
    /// The digests of the keys that authenticate as this app.
    key_digests: Vec<[u8; 32]>,
    origins: Vec<Origin>,
    /// Ids the app may hold at once.
    max_ids: usize,
}

impl App {
    /// Builds an app from already validated parts.
    pub fn new(name: &str, key: &AppKey, origins: Vec<Origin>) -> Self {
        Self {
            name: Arc::from(name),
            key_digests: vec![key.digest()],
            origins,
            max_ids: usize::MAX,
        }
    }

    /// The same app, allowed to hold at most `max_ids` ids at once (by default, as many as
    /// the store holds).
    #[must_use]
    pub fn with_max_ids(mut self, max_ids: usize) -> Self {
        self.max_ids = max_ids;
        self
    }

    /// How many ids the app may hold at once.
    pub fn max_ids(&self) -> usize {
        self.max_ids
    }

    /// The app's name, as written in the config.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The origins the app's pages are served from.
    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }

    /// The origin a new id is bound to when the backend names none: the app's only origin,
    /// when it has exactly one.
    pub fn default_origin(&self) -> Option<&Origin> {
        match self.origins.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

/// The registered apps as they are at one moment: never changed, only replaced.
#[derive(Debug, Default)]
pub struct View {
    /// By name, in name order.
    apps: Vec<Arc<App>>,
    /// Every key's digest, to its app.
    keys: HashMap<[u8; 32], Arc<App>>,
}

impl View {
    fn new(mut apps: Vec<Arc<App>>) -> Self {
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        let keys = apps
            .iter()
            .flat_map(|app| app.key_digests.iter().map(|d| (*d, Arc::clone(app))))
            .collect();
        Self { apps, keys }
    }

    /// The app called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<App>> {
        self.apps
            .binary_search_by(|a| (*a.name).cmp(name))
            .ok()
            .map(|at| &self.apps[at])
    }

    /// Every app, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.iter()
    }

    /// How many apps there are.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// True when there is no app.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

/// The registered apps. Requests read the current [`View`] without a lock; a change builds
/// a new view and swaps it in, so a request sees the registry before or after a change,
/// never half of one.
#[derive(Debug, Default)]
pub struct Apps {
    view: ArcSwap<View>,
}

impl Apps {
    /// The registry of `apps`; names and keys were checked unique by the config.
    pub fn new(apps: Vec<App>) -> Self {
        Self {
            view: ArcSwap::from_pointee(View::new(apps.into_iter().map(Arc::new).collect())),
        }
    }

    /// The apps as they are now.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The app whose key is `presented`, if any. The key is looked up by its SHA-256
    /// digest: what the lookup's time depends on is the digest, which nobody can steer
    /// towards a registered key's digest without knowing the key.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<App>> {
        self.view.load().keys.get(&digest(presented)).cloned()
    }

    /// True when `app` may bind ids to `origin` and have their iframe page served to it:
    /// `origin` is one the app lists (`*` included), or the app lists `*` and no other app
    /// lists `origin`. A wildcard covers the origins nobody has claimed, never another app's:
    /// otherwise an app listing `*` could take another app's id first (ids are one namespace,
    /// and an app-chosen one may be guessable) and have it served framed on that app's pages.
    pub fn serves(&self, app: &App, origin: &Origin) -> bool {
        if app.origins.contains(origin) {
            return true;
        }
        let wildcard = app.origins.iter().any(Origin::is_wildcard);
        wildcard
            && !origin.is_wildcard()
            && !self
                .view
                .load()
                .apps
                .iter()
                .any(|other| other.name != app.name && other.origins.contains(origin))
    }

    /// The app called `name`, as it is now.
    pub fn get(&self, name: &str) -> Option<Arc<App>> {
        self.view.load().get(name).cloned()
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps() -> Apps {
        Apps::new(vec![
            App::new(
                "one",
                &AppKey::new("key-one".into()),
                vec![Origin::parse("https://one.example").unwrap()],
            ),
            App::new(
                "two",
                &AppKey::new("key-two".into()),
                vec![
                    Origin::parse("https://two.example").unwrap(),
                    Origin::parse("https://www.two.example").unwrap(),
                ],
            ),
        ])
    }

    #[test]
    fn finds_the_app_by_key() {
        let apps = apps();
        assert_eq!(&**apps.authenticate("key-two").unwrap().name(), "two");
        assert!(apps.authenticate("key-three").is_none());
        assert!(apps.authenticate("").is_none());
        assert!(apps.authenticate("key-one ").is_none());
    }

    #[test]
    fn origin_rules() {
        let apps = apps();
        let one = apps.get("one").unwrap();
        let two = &apps.get("two").unwrap();
        assert_eq!(
            one.default_origin().unwrap().as_str(),
            "https://one.example"
        );
        assert!(two.default_origin().is_none());
        let origin = |text: &str| Origin::parse(text).unwrap();
        assert!(apps.serves(two, &origin("https://www.two.example")));
        assert!(!apps.serves(two, &origin("https://one.example")));
        assert!(!apps.serves(two, &origin("*")), "`*` only when listed");
    }

    #[test]
    fn a_wildcard_covers_only_the_origins_no_other_app_lists() {
        let wildcard = |name: &str, key: &str, extra: &[&str]| {
            let mut origins = vec![Origin::parse("*").unwrap()];
            origins.extend(extra.iter().map(|o| Origin::parse(o).unwrap()));
            App::new(name, &AppKey::new(key.into()), origins)
        };
        let one = Origin::parse("https://one.example").unwrap();
        let two =
            ["https://two.example", "https://www.two.example"].map(|o| Origin::parse(o).unwrap());
        let apps = Apps::new(vec![
            App::new("one", &AppKey::new("key-one".into()), vec![one]),
            App::new("two", &AppKey::new("key-two".into()), two.into()),
            wildcard("any", "key-any", &["https://shared.example"]),
            wildcard("other", "key-other", &["https://shared.example"]),
        ]);
        let any = &apps.get("any").unwrap();
        let origin = |text: &str| Origin::parse(text).unwrap();
        assert!(apps.serves(any, &origin("https://whoever.example")));
        assert!(apps.serves(any, &origin("*")));
        assert!(
            !apps.serves(any, &origin("https://one.example")),
            "app one's"
        );
        assert!(
            !apps.serves(any, &origin("https://www.two.example")),
            "app two's"
        );
        // Listed by two apps explicitly: each lists it, so each may serve it.
        assert!(apps.serves(any, &origin("https://shared.example")));
        // Another app's `*` claims nothing.
        let one = &apps.get("one").unwrap();
        assert!(apps.serves(one, &origin("https://one.example")));
        assert!(!apps.serves(one, &origin("https://whoever.example")));
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(
            format!("{:?}", AppKey::new("hunter2".into())),
            "AppKey(***)"
        );
    }
}
