//! Who may do what: app keys for backends, origins for browsers.
//!
//! Keys are looked up by their SHA-256 digest, so neither the position of the first wrong
//! byte nor the key's length shows in the response time, and the registry keeps no key
//! itself. Nothing here knows about HTTP; the extractor lives in `api`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng as _;
use sha2::{Digest, Sha256};

use crate::config::RateLimit;
use crate::invite::Invites;
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

    /// The secret, for the one answer that shows a new key.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret's length in bytes, to warn about weak keys without showing them.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The SHA-256 of the secret: what the registry keeps.
    pub fn digest(&self) -> [u8; 32] {
        digest(&self.0)
    }
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppKey(***)")
    }
}

/// Where an app comes from: the operator's config file (changed only there), or the admin
/// API at runtime (kept in the snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An `[[apps]]` entry of the config.
    Config,
    /// Registered through the admin API.
    Registered,
}

/// One key of an app, without the key itself: its SHA-256 digest, a short id that names it
/// (the start of the digest, so it says nothing of the key), and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    /// Milliseconds since the Unix epoch when the key was made (0: unknown, a config key).
    pub created_ms: u64,
    /// Milliseconds since the Unix epoch from which the key no longer works; `None`: never.
    pub expires_ms: Option<u64>,
}

impl KeyInfo {
    fn of(key: &AppKey, created_ms: u64) -> Self {
        Self {
            digest: key.digest(),
            created_ms,
            expires_ms: None,
        }
    }

    /// The key's name in listings and in `DELETE .../keys/{id}`.
    pub fn id(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.digest[..6])
    }

    /// True while the key works.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|at| now_ms < at)
    }
}

/// An app's own limits where they differ from the server's; `None` is the server's
/// (`[rate_limits]`, `[limits] info_max_bytes`). Config apps have none of their own; apps
/// registered at runtime get the ones the admin or the registration policy gave them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppLimits {
    /// Id creations, instead of `rate_limits.create_per_app`.
    pub create_per_app: Option<RateLimit>,
    /// Notifies, instead of `rate_limits.notify_per_app`.
    pub notify_per_app: Option<RateLimit>,
    /// The largest info, at most `limits.info_max_bytes`.
    pub info_max_bytes: Option<usize>,
}

/// A registered web application.
#[derive(Debug)]
pub struct App {
    name: Arc<str>,
    /// The keys that authenticate as this app, oldest first.
    keys: Vec<KeyInfo>,
    origins: Vec<Origin>,
    /// Ids the app may hold at once.
    max_ids: usize,
    /// Rates and sizes of its own.
    limits: AppLimits,
    source: Source,
}

impl App {
    /// Builds an app of the config from already validated parts.
    pub fn new(name: &str, key: &AppKey, origins: Vec<Origin>) -> Self {
        Self {
            name: Arc::from(name),
            keys: vec![KeyInfo::of(key, 0)],
            origins,
            max_ids: usize::MAX,
            limits: AppLimits::default(),
            source: Source::Config,
        }
    }

    /// An app registered at runtime, as the snapshot kept it.
    pub fn registered(
        name: &str,
        keys: Vec<KeyInfo>,
        origins: Vec<Origin>,
        max_ids: usize,
    ) -> Self {
        Self {
            name: Arc::from(name),
            keys,
            origins,
            max_ids,
            limits: AppLimits::default(),
            source: Source::Registered,
        }
    }

    /// The same app, allowed to hold at most `max_ids` ids at once (by default, as many as
    /// the store holds).
    #[must_use]
    pub fn with_max_ids(mut self, max_ids: usize) -> Self {
        self.max_ids = max_ids;
        self
    }

    /// The same app with limits of its own.
    #[must_use]
    pub fn with_limits(mut self, limits: AppLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How many ids the app may hold at once.
    pub fn max_ids(&self) -> usize {
        self.max_ids
    }

    /// The limits the app has of its own.
    pub fn limits(&self) -> &AppLimits {
        &self.limits
    }

    /// The app's name, as written in the config.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The origins the app's pages are served from.
    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }

    /// The app's keys (their digests and times), oldest first.
    pub fn keys(&self) -> &[KeyInfo] {
        &self.keys
    }

    /// Where the app comes from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The origin a new id is bound to when the backend names none: the app's only origin,
    /// when it has exactly one.
    pub fn default_origin(&self) -> Option<&Origin> {
        match self.origins.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// A copy to change: the registry never changes an app in place.
    fn edit(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            keys: self.keys.clone(),
            origins: self.origins.clone(),
            max_ids: self.max_ids,
            limits: self.limits,
            source: self.source,
        }
    }
}

/// The registered apps as they are at one moment: never changed, only replaced.
#[derive(Debug, Default)]
pub struct View {
    /// By name, in name order.
    apps: Vec<Arc<App>>,
    /// Every key's digest, to its app and the time it stops working.
    keys: HashMap<[u8; 32], (Arc<App>, Option<u64>)>,
}

impl View {
    fn new(mut apps: Vec<Arc<App>>) -> Self {
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        let keys = apps
            .iter()
            .flat_map(|app| {
                app.keys
                    .iter()
                    .map(|k| (k.digest, (Arc::clone(app), k.expires_ms)))
            })
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

/// Why the registry refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No app of that name.
    #[error("no app called {0:?}")]
    UnknownApp(String),
    /// The name is taken (by a config app or a registered one).
    #[error("an app called {0:?} exists")]
    AppExists(String),
    /// A config app is changed only in the config file.
    #[error("app {0:?} comes from the config file; change it there")]
    ConfigApp(String),
    /// The app has no key of that id.
    #[error("app {app:?} has no key {key:?}")]
    UnknownKey {
        /// The app.
        app: String,
        /// The key id asked for.
        key: String,
    },
    /// A name, origin list or quota the registry does not take.
    #[error("{0}")]
    Invalid(String),
    /// The origin is listed by another app: an origin is bound to one app only.
    #[error("origin {0} is bound to another app")]
    OriginTaken(String),
    /// The system's random number generator failed.
    #[error("no entropy for a key: {0}")]
    Entropy(String),
}

/// What a new app is made of.
#[derive(Debug, Clone)]
pub struct NewApp {
    /// 1 to 64 of `a-z 0-9 - _ .`, starting with a letter or digit.
    pub name: String,
    /// At least one.
    pub origins: Vec<Origin>,
    /// Ids it may hold at once, at least 1.
    pub max_ids: usize,
    /// Rates and sizes of its own.
    pub limits: AppLimits,
}

/// A change to a registered app; `None` keeps what it has.
#[derive(Debug, Clone, Default)]
pub struct AppChange {
    /// The new origins (at least one).
    pub origins: Option<Vec<Origin>>,
    /// The new quota (at least 1).
    pub max_ids: Option<usize>,
    /// The new create rate.
    pub create_per_app: Option<RateLimit>,
    /// The new notify rate.
    pub notify_per_app: Option<RateLimit>,
    /// The new largest info.
    pub info_max_bytes: Option<usize>,
}

/// A key made by the registry: shown once, then only its digest is kept.
#[derive(Debug)]
pub struct NewKey {
    /// The secret, for the one answer that shows it.
    pub key: AppKey,
    /// What the registry keeps of it.
    pub info: KeyInfo,
}

/// The registered apps. Requests read the current [`View`] without a lock; a change builds
/// a new view and swaps it in, so a request sees the registry before or after a change,
/// never half of one.
#[derive(Debug, Default)]
pub struct Apps {
    view: ArcSwap<View>,
    /// Held by a change from its read of the view to its swap, so changes never race.
    writing: Mutex<()>,
    /// The operator's invite codes for self-registration, kept with the apps.
    invites: Invites,
}

impl Apps {
    /// The registry of `apps`; names and keys were checked unique by the config.
    pub fn new(apps: Vec<App>) -> Self {
        Self {
            view: ArcSwap::from_pointee(View::new(apps.into_iter().map(Arc::new).collect())),
            writing: Mutex::new(()),
            invites: Invites::default(),
        }
    }

    /// The invite codes.
    pub fn invites(&self) -> &Invites {
        &self.invites
    }

    /// Checks `new` as [`Apps::register`] would, without registering it: for a caller that
    /// has slow work to do (proving the origins) before it registers, to refuse early.
    pub fn vet(&self, new: &NewApp) -> Result<(), RegistryError> {
        check_new(new)?;
        let view = self.view.load();
        vet_against(&view.apps, new)
    }

    /// The apps as they are now.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The app whose key is `presented` and still works, if any. The key is looked up by
    /// its SHA-256 digest: what the lookup's time depends on is the digest, which nobody can
    /// steer towards a registered key's digest without knowing the key.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<App>> {
        let view = self.view.load();
        let (app, expires) = view.keys.get(&digest(presented))?;
        expires
            .is_none_or(|at| now_ms() < at)
            .then(|| Arc::clone(app))
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

    /// Registers `new` with a fresh key; returns the app and its key (shown once).
    pub fn register(&self, new: &NewApp) -> Result<(Arc<App>, NewKey), RegistryError> {
        check_new(new)?;
        let key = NewKey::generate()?;
        self.change(|apps| {
            vet_against(apps, new)?;
            let app = Arc::new(
                App::registered(
                    &new.name,
                    vec![key.info.clone()],
                    new.origins.clone(),
                    new.max_ids,
                )
                .with_limits(new.limits),
            );
            apps.push(Arc::clone(&app));
            Ok(app)
        })
        .map(|app| (app, key))
    }

    /// Changes the origins or quota of the registered app `name`.
    pub fn update(&self, name: &str, change: &AppChange) -> Result<Arc<App>, RegistryError> {
        if let Some(origins) = &change.origins {
            check_origins(origins)?;
        }
        if let Some(max_ids) = change.max_ids {
            check_max_ids(max_ids)?;
        }
        self.change(|apps| {
            let at = registered(apps, name)?;
            if let Some(origins) = &change.origins {
                taken(apps, name, origins)?;
            }
            let mut app = apps[at].edit();
            if let Some(origins) = &change.origins {
                app.origins.clone_from(origins);
            }
            if let Some(max_ids) = change.max_ids {
                app.max_ids = max_ids;
            }
            let limits = &mut app.limits;
            limits.create_per_app = change.create_per_app.or(limits.create_per_app);
            limits.notify_per_app = change.notify_per_app.or(limits.notify_per_app);
            limits.info_max_bytes = change.info_max_bytes.or(limits.info_max_bytes);
            let app = Arc::new(app);
            apps[at] = Arc::clone(&app);
            Ok(app)
        })
    }

    /// Gives the registered app `name` a new key; its other live keys stop working `grace`
    /// from now (at once for a zero grace). Returns the new key (shown once).
    pub fn rotate(&self, name: &str, grace: Duration) -> Result<(Arc<App>, NewKey), RegistryError> {
        let key = NewKey::generate()?;
        let now = now_ms();
        let until = now.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
        let app = self.edit(name, |app| {
            for old in &mut app.keys {
                old.expires_ms = Some(old.expires_ms.map_or(until, |at| at.min(until)));
            }
            app.keys.retain(|k| k.is_live(now));
            app.keys.push(key.info.clone());
            Ok(())
        })?;
        Ok((app, key))
    }

    /// Stops the key `key_id` of the registered app `name` at once.
    pub fn revoke(&self, name: &str, key_id: &str) -> Result<Arc<App>, RegistryError> {
        self.edit(name, |app| {
            let before = app.keys.len();
            app.keys.retain(|k| k.id() != key_id);
            if app.keys.len() == before {
                return Err(RegistryError::UnknownKey {
                    app: name.to_owned(),
                    key: key_id.to_owned(),
                });
            }
            Ok(())
        })
    }

    /// Removes the registered app `name`; returns it.
    pub fn remove(&self, name: &str) -> Result<Arc<App>, RegistryError> {
        self.change(|apps| {
            let at = registered(apps, name)?;
            Ok(apps.remove(at))
        })
    }

    /// Puts registered apps read from a snapshot back beside the config's. One whose name a
    /// config app now has is refused: which of the two is meant cannot be guessed.
    pub fn restore(&self, registered: Vec<App>) -> Result<(), RegistryError> {
        self.change(|apps| {
            for app in registered {
                if apps.iter().any(|a| a.name == app.name) {
                    return Err(RegistryError::AppExists(app.name.to_string()));
                }
                apps.push(Arc::new(app));
            }
            Ok(())
        })
    }

    /// Makes `registered` the registered apps, in place of the ones there are (the config's
    /// stay): how a node takes on the registry another node changed. One whose name a config
    /// app has is refused, and nothing changes.
    pub fn replace_registered(&self, registered: Vec<App>) -> Result<(), RegistryError> {
        self.change(|apps| {
            apps.retain(|a| a.source == Source::Config);
            for app in registered {
                if apps.iter().any(|a| a.name == app.name) {
                    return Err(RegistryError::AppExists(app.name.to_string()));
                }
                apps.push(Arc::new(app));
            }
            Ok(())
        })
    }

    /// Applies `f` to a copy of the registered app `name` and swaps the result in.
    fn edit(
        &self,
        name: &str,
        f: impl FnOnce(&mut App) -> Result<(), RegistryError>,
    ) -> Result<Arc<App>, RegistryError> {
        self.change(|apps| {
            let at = registered(apps, name)?;
            let mut app = apps[at].edit();
            f(&mut app)?;
            let app = Arc::new(app);
            apps[at] = Arc::clone(&app);
            Ok(app)
        })
    }

    /// Runs `f` on a copy of the app list and, when it succeeds, swaps in the view of the
    /// result. Changes are serialised; readers never wait.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Vec<Arc<App>>) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut apps = self.view.load().apps.clone();
        let out = f(&mut apps)?;
        self.view.store(Arc::new(View::new(apps)));
        Ok(out)
    }
}

/// The checks of a new app that need no other app.
fn check_new(new: &NewApp) -> Result<(), RegistryError> {
    check_name(&new.name)?;
    check_origins(&new.origins)?;
    check_max_ids(new.max_ids)
}

/// Refuses `new` when its name or one of its origins is another app's.
fn vet_against(apps: &[Arc<App>], new: &NewApp) -> Result<(), RegistryError> {
    if apps.iter().any(|a| *a.name == *new.name) {
        return Err(RegistryError::AppExists(new.name.clone()));
    }
    taken(apps, &new.name, &new.origins)
}

/// Refuses `origins` when an app other than `name` lists one of them (config apps included;
/// a `*` claims nothing). An origin is bound to one app, so one that proved it, or that the
/// operator gave it, cannot be taken by another.
fn taken(apps: &[Arc<App>], name: &str, origins: &[Origin]) -> Result<(), RegistryError> {
    match origins.iter().find(|origin| {
        apps.iter()
            .any(|other| &*other.name != name && other.origins.contains(origin))
    }) {
        Some(origin) => Err(RegistryError::OriginTaken(origin.to_string())),
        None => Ok(()),
    }
}

/// Where the registered app `name` is in `apps`; a config app is not one to change.
fn registered(apps: &[Arc<App>], name: &str) -> Result<usize, RegistryError> {
    let at = apps
        .iter()
        .position(|a| &*a.name == name)
        .ok_or_else(|| RegistryError::UnknownApp(name.to_owned()))?;
    if apps[at].source == Source::Config {
        return Err(RegistryError::ConfigApp(name.to_owned()));
    }
    Ok(at)
}

impl NewKey {
    /// 32 random bytes from the system, as `chk_` and 43 characters of base64url.
    fn generate() -> Result<Self, RegistryError> {
        let mut bytes = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| RegistryError::Entropy(e.to_string()))?;
        let key = AppKey::new(format!("chk_{}", URL_SAFE_NO_PAD.encode(bytes)));
        let info = KeyInfo::of(&key, now_ms());
        Ok(Self { key, info })
    }
}

/// Names are shown in logs, metrics and URLs: short, lower case, no surprises.
fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "app name {name:?}: 1 to 64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        )))
    }
}

fn check_origins(origins: &[Origin]) -> Result<(), RegistryError> {
    if origins.is_empty() {
        return Err(RegistryError::Invalid("list at least one origin".into()));
    }
    if let Some(twice) = origins
        .iter()
        .enumerate()
        .find_map(|(i, o)| origins[..i].contains(o).then_some(o))
    {
        return Err(RegistryError::Invalid(format!(
            "origin {twice} is listed twice"
        )));
    }
    if origins.iter().any(Origin::is_wildcard) {
        // `*` would let the app's ids be framed by any page nobody else claimed: for the
        // config's operator to decide, not for a runtime registration.
        return Err(RegistryError::Invalid(
            "`*` is not an origin a registered app may list (only the config may)".into(),
        ));
    }
    Ok(())
}

fn check_max_ids(max_ids: usize) -> Result<(), RegistryError> {
    if max_ids == 0 {
        return Err(RegistryError::Invalid("max_ids must be at least 1".into()));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

    fn new_app(name: &str) -> NewApp {
        NewApp {
            name: name.into(),
            origins: vec![Origin::parse("https://new.example").unwrap()],
            max_ids: 10,
            limits: AppLimits::default(),
        }
    }

    #[test]
    fn a_registered_app_authenticates_with_its_key_only_and_keeps_no_key() {
        let apps = apps();
        let (app, key) = apps.register(&new_app("new")).unwrap();
        assert!(key.key.expose().starts_with("chk_") && key.key.len() == 47);
        assert_eq!(app.source(), Source::Registered);
        assert!(!format!("{app:?}").contains(key.key.expose()));
        assert_eq!(
            &**apps.authenticate(key.key.expose()).unwrap().name(),
            "new"
        );
        assert_eq!(&**apps.authenticate("key-one").unwrap().name(), "one");
        assert_eq!(
            apps.register(&new_app("new")).unwrap_err(),
            RegistryError::AppExists("new".into())
        );
        assert_eq!(
            apps.register(&new_app("one")).unwrap_err(),
            RegistryError::AppExists("one".into())
        );
        for bad in ["", "Upper", "-dash", "sp ace", &"x".repeat(65)] {
            assert!(
                matches!(apps.register(&new_app(bad)), Err(RegistryError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_origin_is_bound_to_one_app() {
        let apps = apps();
        let origin = |text: &str| Origin::parse(text).unwrap();
        let taken = |o: &str| Err(RegistryError::OriginTaken(o.into()));
        let mut new = new_app("new");
        new.origins = vec![
            origin("https://other.example"),
            origin("https://one.example"),
        ];
        assert_eq!(
            apps.vet(&new),
            taken("https://one.example"),
            "a config app's"
        );
        assert_eq!(apps.register(&new).map(drop), taken("https://one.example"));
        new.origins = vec![origin("https://new.example"), origin("https://new.example")];
        assert!(
            matches!(apps.vet(&new), Err(RegistryError::Invalid(_))),
            "twice"
        );
        apps.register(&new_app("new")).unwrap();
        assert_eq!(
            apps.register(&NewApp {
                name: "newer".into(),
                ..new_app("x")
            })
            .map(drop),
            taken("https://new.example"),
            "a registered app's"
        );
        apps.register(&NewApp {
            name: "other".into(),
            origins: vec![origin("https://other.example")],
            ..new_app("x")
        })
        .unwrap();
        let change = |origins: &[&str]| AppChange {
            origins: Some(origins.iter().map(|o| origin(o)).collect()),
            ..AppChange::default()
        };
        assert_eq!(
            apps.update("other", &change(&["https://new.example"]))
                .map(drop),
            taken("https://new.example")
        );
        // Its own origins it keeps, of course.
        apps.update(
            "new",
            &change(&["https://new.example", "https://more.example"]),
        )
        .unwrap();
    }

    #[test]
    fn rotation_keeps_the_old_key_for_the_grace_and_revocation_stops_it_at_once() {
        let apps = apps();
        let (_, first) = apps.register(&new_app("new")).unwrap();
        let (_, second) = apps.rotate("new", Duration::from_secs(3600)).unwrap();
        assert!(
            apps.authenticate(first.key.expose()).is_some(),
            "in its grace"
        );
        assert!(apps.authenticate(second.key.expose()).is_some());
        let (app, third) = apps.rotate("new", Duration::ZERO).unwrap();
        assert!(
            apps.authenticate(first.key.expose()).is_none(),
            "grace cut to now"
        );
        assert!(apps.authenticate(second.key.expose()).is_none());
        assert_eq!(
            app.keys().len(),
            1,
            "expired keys are dropped: {:?}",
            app.keys()
        );
        apps.revoke("new", &third.info.id()).unwrap();
        assert!(apps.authenticate(third.key.expose()).is_none());
        assert!(matches!(
            apps.revoke("new", &third.info.id()),
            Err(RegistryError::UnknownKey { .. })
        ));
    }

    #[test]
    fn config_apps_are_changed_only_in_the_config() {
        let apps = apps();
        let change = AppChange {
            max_ids: Some(5),
            ..AppChange::default()
        };
        for refused in [
            apps.update("one", &change).map(drop),
            apps.rotate("one", Duration::ZERO).map(drop),
            apps.remove("one").map(drop),
        ] {
            assert_eq!(refused, Err(RegistryError::ConfigApp("one".into())));
        }
        assert_eq!(
            apps.remove("nobody").map(drop),
            Err(RegistryError::UnknownApp("nobody".into()))
        );
        assert!(apps.authenticate("key-one").is_some());
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(
            format!("{:?}", AppKey::new("hunter2".into())),
            "AppKey(***)"
        );
    }
}
