//! Snapshots of the memory store, so a restart loses nothing.
//!
//! Every id (with its app, origin, seq, newest info and timestamps) is written to
//! `snapshot_path` every `snapshot_interval` when something changed, and once more at shutdown
//! after the last request was answered; it is read back at start. A write goes to a temporary
//! file that is fsynced and renamed over the old one, so a crash leaves either the old or the
//! new snapshot, never half of one. A `kill -9` loses at most the changes of the last interval.
//!
//! The file: the 16-byte magic `CALLHOME-SNAPSHT`, a little-endian `u32` format version, a
//! little-endian `u32` CRC-32 of the body, then the body in postcard (a compact, stable serde
//! format). A file that is not a snapshot, of another version, or whose checksum or body does
//! not match stops start-up with a message and is left untouched.
//!
//! The file holds every id, and an id is a bearer capability, so the snapshot, its temporary
//! file and a directory made for them are readable by the daemon's user only. One daemon
//! owns one snapshot: [`Lock`] refuses a second daemon on the same path, which would
//! otherwise overwrite the first one's ids.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::auth::{App, AppLimits, Apps, KeyInfo, Source};
use crate::config::RateLimit;
use crate::id::Id;
use crate::invite::Invite;
use crate::origin::Origin;
use crate::slot::{Saved, Slot};
use crate::state::AppState;
use crate::store::Memory;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 16] = b"CALLHOME-SNAPSHT";
/// Bumped whenever the body's shape changes. Versions 1 (ids only) and 2 (ids and apps
/// without limits of their own or invites) are still read; any other is refused, not
/// guessed at.
pub const VERSION: u32 = 3;
const HEADER: usize = 16 + 4 + 4;

/// The body of a snapshot file: the ids, then the apps registered at runtime, then the
/// invites (version 3).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Body {
    ids: Vec<SavedId>,
    apps: Vec<SavedApp>,
    invites: Vec<SavedInvite>,
}

/// The body of a version 2 file: ids and apps, the apps without limits of their own.
#[derive(Debug, Deserialize)]
struct BodyV2 {
    ids: Vec<SavedId>,
    apps: Vec<SavedAppV2>,
}

/// An app of a version 2 file.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SavedAppV2 {
    name: String,
    origins: Vec<String>,
    max_ids: u64,
    keys: Vec<SavedKey>,
}

/// An invite: its code as a digest only.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SavedInvite {
    digest: [u8; 32],
    used: u32,
    uses: u32,
    created_ms: u64,
    expires_ms: Option<u64>,
}

impl SavedInvite {
    fn of(invite: &Invite) -> Self {
        Self {
            digest: invite.digest,
            used: invite.used,
            uses: invite.uses,
            created_ms: invite.created_ms,
            expires_ms: invite.expires_ms,
        }
    }

    fn into_invite(self) -> Invite {
        Invite {
            digest: self.digest,
            used: self.used,
            uses: self.uses,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
        }
    }
}

/// A rate as saved: `(per_second, burst)`.
type SavedRate = (u32, u32);

fn save_rate(rate: RateLimit) -> SavedRate {
    (rate.per_second, rate.burst)
}

fn load_rate((per_second, burst): SavedRate) -> RateLimit {
    RateLimit { per_second, burst }
}

/// The body of a version 1 file: ids only.
#[derive(Debug, Deserialize)]
struct BodyV1 {
    ids: Vec<SavedId>,
}

/// An app registered at runtime: its keys as digests only.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SavedApp {
    name: String,
    origins: Vec<String>,
    max_ids: u64,
    keys: Vec<SavedKey>,
    create_per_app: Option<SavedRate>,
    notify_per_app: Option<SavedRate>,
    info_max_bytes: Option<u64>,
}

impl From<SavedAppV2> for SavedApp {
    fn from(old: SavedAppV2) -> Self {
        Self {
            name: old.name,
            origins: old.origins,
            max_ids: old.max_ids,
            keys: old.keys,
            create_per_app: None,
            notify_per_app: None,
            info_max_bytes: None,
        }
    }
}

/// The registered apps and the invites of `apps` as bytes, for a registry kept outside the
/// snapshot (Redis, in cluster mode: src/registry.rs): a format byte, then both as the
/// snapshot has them.
///
/// # Panics
/// Never: strings and numbers always serialise.
pub fn encode_registered(apps: &Apps) -> Vec<u8> {
    let view = apps.view();
    let registered: Vec<SavedApp> = view
        .iter()
        .filter(|app| app.source() == Source::Registered)
        .map(|app| SavedApp::of(app))
        .collect();
    let invites: Vec<SavedInvite> = apps.invites().list().iter().map(SavedInvite::of).collect();
    postcard::to_extend(&(registered, invites), vec![REGISTRY_FORMAT])
        .expect("strings and numbers serialise")
}

/// The format byte [`encode_registered`] writes first.
const REGISTRY_FORMAT: u8 = 2;

/// The apps and invites [`encode_registered`] wrote.
pub fn decode_registered(bytes: &[u8]) -> Result<(Vec<App>, Vec<Invite>), String> {
    let Some((&REGISTRY_FORMAT, body)) = bytes.split_first() else {
        return Err(format!(
            "the registry is not of format {REGISTRY_FORMAT} (written by another version?)"
        ));
    };
    let (apps, invites): (Vec<SavedApp>, Vec<SavedInvite>) =
        postcard::from_bytes(body).map_err(|e| format!("the registry does not decode: {e}"))?;
    let apps = apps
        .into_iter()
        .map(SavedApp::into_app)
        .collect::<Result<_, _>>()?;
    Ok((
        apps,
        invites.into_iter().map(SavedInvite::into_invite).collect(),
    ))
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SavedKey {
    digest: [u8; 32],
    created_ms: u64,
    expires_ms: Option<u64>,
}

impl SavedApp {
    fn of(app: &App) -> Self {
        Self {
            name: app.name().to_string(),
            origins: app
                .origins()
                .iter()
                .map(|o| o.as_str().to_owned())
                .collect(),
            max_ids: app.max_ids() as u64,
            keys: app
                .keys()
                .iter()
                .map(|k| SavedKey {
                    digest: k.digest,
                    created_ms: k.created_ms,
                    expires_ms: k.expires_ms,
                })
                .collect(),
            create_per_app: app.limits().create_per_app.map(save_rate),
            notify_per_app: app.limits().notify_per_app.map(save_rate),
            info_max_bytes: app.limits().info_max_bytes.map(|n| n as u64),
        }
    }

    fn into_app(self) -> Result<App, String> {
        let origins = self
            .origins
            .iter()
            .map(|o| Origin::parse(o).map_err(|e| format!("app {:?}: {e}", self.name)))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = self
            .keys
            .into_iter()
            .map(|k| KeyInfo {
                digest: k.digest,
                created_ms: k.created_ms,
                expires_ms: k.expires_ms,
            })
            .collect();
        let max_ids = usize::try_from(self.max_ids).unwrap_or(usize::MAX);
        let limits = AppLimits {
            create_per_app: self.create_per_app.map(load_rate),
            notify_per_app: self.notify_per_app.map(load_rate),
            info_max_bytes: self
                .info_max_bytes
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        Ok(App::registered(&self.name, keys, origins, max_ids).with_limits(limits))
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SavedId {
    id: String,
    app: String,
    origin: Option<String>,
    slot: Saved,
}

/// [`SavedId`] borrowing from the slot, for writing: serialises to the same bytes.
#[derive(Debug, Serialize)]
struct SavedIdRef<'a> {
    id: &'a str,
    app: &'a str,
    origin: Option<&'a str>,
    slot: Saved,
}

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Another daemon holds the snapshot's lock.
    #[error(
        "snapshot {path} is in use by another callhome ({holder}; lock file {lock}): two \
         daemons on one snapshot would overwrite each other's ids. Stop that one first, or \
         give this one a store.snapshot_path of its own"
    )]
    Locked {
        /// The snapshot.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// The other daemon, as its lock file names it: `PID 1234`.
        holder: String,
    },
    /// The file is not a snapshot, is damaged, or is of a format this version cannot read.
    #[error(
        "snapshot {path} cannot be used: {reason}. It was left untouched; start with \
         --discard-state to move it aside and start with no ids"
    )]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The lock on a snapshot path, held by the daemon that uses it from start to exit.
///
/// An exclusive `flock` on `<snapshot_path>.lock`, which holds the owner's PID as text. The
/// kernel releases the lock when the process ends however it ends (a `kill -9` included), so a
/// lock file left behind never blocks the next start; the PID in it is only there to name
/// the owner in the refusal. The file is never removed: removing it would let a daemon that
/// opened the old file and one that creates a new one both hold "the" lock.
#[derive(Debug)]
pub struct Lock {
    // Holding the open file is holding the lock.
    _file: File,
}

impl Lock {
    /// Takes the lock for the snapshot at `path`, or says which daemon has it. Makes the
    /// snapshot's directory (0700) if it is missing, and then, owning the snapshot: removes a
    /// temporary file a crash left, makes a snapshot other users can read private (0600),
    /// and warns about a directory other users can read (it may not be ours to change).
    pub fn acquire(path: &Path) -> Result<Self, SnapshotError> {
        let io_error = |at: &Path| {
            let at = at.to_owned();
            move |source| SnapshotError::Io { path: at, source }
        };
        let dir = directory_of(path);
        private::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = with_suffix(path, ".lock");
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        private::file_options(&mut options);
        let mut file = options.open(&lock).map_err(io_error(&lock))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = io::read_to_string(&mut file).unwrap_or_default();
                let holder = match pid.trim() {
                    "" => "its PID is not written yet".to_owned(),
                    pid => format!("PID {pid}"),
                };
                return Err(SnapshotError::Locked {
                    path: path.to_owned(),
                    lock,
                    holder,
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(SnapshotError::Io { path: lock, source });
            }
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io_error(&lock))?;

        let tmp = with_suffix(path, ".tmp");
        match fs::remove_file(&tmp) {
            Ok(()) => tracing::warn!("removed {}, left by an interrupted write", tmp.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SnapshotError::Io { path: tmp, source }),
        }
        match fs::metadata(path) {
            Ok(meta) => {
                if let Some(mode) = private::others_may_read(&meta) {
                    private::restrict(path).map_err(io_error(path))?;
                    tracing::warn!(
                        "{} was readable by other users (mode {mode:04o}); made it 0600: it \
                         holds every id, and an id is a capability",
                        path.display()
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        if let Some(mode) = fs::metadata(dir)
            .ok()
            .and_then(|meta| private::others_may_read(&meta))
        {
            tracing::warn!(
                "the snapshot's directory {} is open to other users (mode {mode:04o}): they \
                 can see the snapshot's name and size, though not read it; chmod 700 it if \
                 nothing else needs it",
                dir.display()
            );
        }
        Ok(Self { _file: file })
    }
}

/// The directory a file at `path` is in (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `path` with `suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut with = path.as_os_str().to_owned();
    with.push(suffix);
    PathBuf::from(with)
}

/// Files and directories readable by the daemon's user only (a no-op where there are no Unix
/// modes).
mod private {
    use std::fs::{self, Metadata, OpenOptions};
    use std::io;
    use std::path::Path;

    /// Makes `dir` and any missing parents, 0700.
    pub fn create_dir_all(dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
        }
        #[cfg(not(unix))]
        fs::create_dir_all(dir)
    }

    /// A file these options create is 0600.
    pub fn file_options(options: &mut OpenOptions) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = options;
    }

    /// Makes the file at `path` 0600.
    pub fn restrict(path: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            Ok(())
        }
    }

    /// The permission bits, when the group or others may read, write or enter.
    pub fn others_may_read(meta: &Metadata) -> Option<u32> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then_some(mode)
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            None
        }
    }
}

/// What a restore did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Ids put back.
    pub ids: usize,
    /// Ids skipped because their app is no longer configured.
    pub unknown_app: usize,
    /// Ids skipped because `max_ids` was reached.
    pub over_limit: usize,
}

/// Reads the snapshot at `path` into `store`. A missing file is an empty store.
pub fn restore(path: &Path, store: &Memory, apps: &Apps) -> Result<Restored, SnapshotError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Restored::default()),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let unusable = |reason: String| SnapshotError::Unusable {
        path: path.to_owned(),
        reason,
    };
    let body = decode(&bytes).map_err(unusable)?;
    let registered = body
        .apps
        .into_iter()
        .map(SavedApp::into_app)
        .collect::<Result<Vec<_>, _>>()
        .map_err(unusable)?;
    apps.restore(registered)
        .map_err(|e| unusable(format!("{e}; the config now has an app of that name")))?;
    apps.invites().restore(
        body.invites
            .into_iter()
            .map(SavedInvite::into_invite)
            .collect(),
    );
    let mut restored = Restored::default();
    for saved in body.ids {
        let Some(app) = apps.get(&saved.app) else {
            restored.unknown_app += 1;
            continue;
        };
        let id = Id::parse(&saved.id).map_err(|e| unusable(format!("id {:?}: {e}", saved.id)))?;
        let origin = saved
            .origin
            .as_deref()
            .map(|o| {
                // Share the app's own allocation when the origin is one of its.
                let parsed = Origin::parse(o).map_err(|e| unusable(e.to_string()))?;
                Ok(app
                    .origins()
                    .iter()
                    .find(|a| **a == parsed)
                    .cloned()
                    .unwrap_or(parsed))
            })
            .transpose()?;
        let slot = Slot::restore(id, std::sync::Arc::clone(app.name()), origin, saved.slot);
        match store.restore(slot) {
            Ok(()) => restored.ids += 1,
            Err(_) => restored.over_limit += 1,
        }
    }
    Ok(restored)
}

/// Writes every id in `store` to `path`, atomically. Returns the file's size in bytes.
///
/// Ids are encoded one at a time straight into the file's bytes (the same encoding as
/// `Body`), so a snapshot costs the file's size in memory, not a second copy of every id.
/// Saves are serialised: a periodic snapshot still writing when the final one starts would
/// otherwise share its temporary file.
///
/// # Panics
/// Never: strings and numbers always serialise.
pub fn save(path: &Path, store: &Memory, apps: &Apps) -> Result<u64, SnapshotError> {
    static WRITING: Mutex<()> = Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(PoisonError::into_inner);
    let slots: Vec<_> = store
        .slots()
        .into_iter()
        .filter(|slot| !slot.is_closed())
        .collect();
    let mut payload = Vec::with_capacity(slots.len() * 80);
    // A postcard sequence: its length as a varint, then the elements.
    payload = postcard::to_extend(&slots.len(), payload).expect("a length serialises");
    for slot in slots {
        let saved = SavedIdRef {
            id: slot.id().as_str(),
            app: slot.app(),
            origin: slot.origin().map(Origin::as_str),
            slot: slot.save(),
        };
        payload = postcard::to_extend(&saved, payload).expect("strings and numbers serialise");
    }
    let view = apps.view();
    let registered: Vec<SavedApp> = view
        .iter()
        .filter(|app| app.source() == Source::Registered)
        .map(|app| SavedApp::of(app))
        .collect();
    payload = postcard::to_extend(&registered, payload).expect("strings and numbers serialise");
    let invites: Vec<SavedInvite> = apps.invites().list().iter().map(SavedInvite::of).collect();
    payload = postcard::to_extend(&invites, payload).expect("strings and numbers serialise");
    let bytes = frame(&payload);
    write_atomically(path, &bytes).map_err(|source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(bytes.len() as u64)
}

/// Moves the snapshot at `path` aside (to `<path>.discarded-<unix seconds>`), if there is one.
pub fn discard(path: &Path) -> Result<Option<PathBuf>, SnapshotError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = with_suffix(path, &format!(".discarded-{secs}"));
    match fs::rename(path, &aside) {
        Ok(()) => Ok(Some(aside)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SnapshotError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Saves the store every `interval` when it changed, until shutdown. The final snapshot at
/// shutdown is the server's job, after the last request was answered.
pub async fn run_periodic(path: PathBuf, interval: Duration, state: AppState) {
    let Some(memory) = state.store.as_memory() else {
        return;
    };
    let mut saved_at = memory.changes();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = state.shutdown.cancelled() => return,
        }
        let changes = memory.changes();
        if changes == saved_at {
            continue;
        }
        match save_measured(path.clone(), &state).await {
            Ok((bytes, took)) => {
                saved_at = changes;
                tracing::debug!(bytes, took = ?took, "snapshot written");
            }
            Err(e) => tracing::error!(error = %e, "snapshot failed; will retry"),
        }
    }
}

/// [`save`] off the request threads, timed and counted in the metrics: bytes written and
/// the time it took.
pub async fn save_measured(
    path: PathBuf,
    state: &AppState,
) -> Result<(u64, Duration), SnapshotError> {
    let started = Instant::now();
    let store = state.clone();
    let file = path.clone();
    let saved = tokio::task::spawn_blocking(move || match store.store.as_memory() {
        Some(memory) => save(&file, memory, &store.apps),
        None => Ok(0),
    })
    .await
    .unwrap_or_else(|e| {
        Err(SnapshotError::Io {
            path,
            source: io::Error::other(e),
        })
    });
    let took = started.elapsed();
    let metrics = &state.metrics;
    match saved {
        Ok(bytes) => {
            metrics.snapshots.ok.inc();
            metrics.snapshot_duration.observe(took.as_secs_f64());
            metrics.snapshot_bytes.set(bytes);
            Ok((bytes, took))
        }
        Err(e) => {
            metrics.snapshots.error.inc();
            Err(e)
        }
    }
}

/// The header (magic, version, checksum) and `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn decode(bytes: &[u8]) -> Result<Body, String> {
    if bytes.len() < HEADER || &bytes[..16] != MAGIC {
        return Err("it is not a CallHome snapshot".into());
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(16);
    if !(1..=VERSION).contains(&version) {
        return Err(format!(
            "it is format version {version}; this CallHome reads versions 1 to {VERSION}"
        ));
    }
    let payload = &bytes[HEADER..];
    if crc32fast::hash(payload) != word(20) {
        return Err("its checksum does not match (the file is damaged or truncated)".into());
    }
    let undecodable = |e: postcard::Error| format!("its body does not decode: {e}");
    if version == 1 {
        let old: BodyV1 = postcard::from_bytes(payload).map_err(undecodable)?;
        return Ok(Body {
            ids: old.ids,
            apps: Vec::new(),
            invites: Vec::new(),
        });
    }
    if version == 2 {
        let old: BodyV2 = postcard::from_bytes(payload).map_err(undecodable)?;
        return Ok(Body {
            ids: old.ids,
            apps: old.apps.into_iter().map(SavedApp::from).collect(),
            invites: Vec::new(),
        });
    }
    postcard::from_bytes(payload).map_err(undecodable)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = directory_of(path);
    private::create_dir_all(dir)?;
    let tmp = with_suffix(path, ".tmp");
    if let Err(e) = write_file(&tmp, bytes).and_then(|()| fs::rename(&tmp, path)) {
        // Half a snapshot is of no use, and on a full disk it would keep the disk full.
        if let Err(removing) = fs::remove_file(&tmp)
            && removing.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %removing, "cannot remove {}", tmp.display());
        }
        return Err(e);
    }
    // The rename itself is durable only once the directory is synced.
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to a new file at `path`, readable by its owner only, and syncs it.
fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    private::file_options(&mut options);
    let mut file = options.open(path)?;
    // A file left by an older version keeps its mode through `open`.
    private::restrict(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{App, AppKey};

    fn apps() -> Apps {
        Apps::new(vec![App::new(
            "one",
            &AppKey::new("k".into()),
            vec![Origin::parse("https://one.example").unwrap()],
        )])
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("callhome-snapshot-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir.join("state.snapshot")
    }

    #[test]
    fn what_is_saved_comes_back() {
        let apps = apps();
        let app = &apps.get("one").unwrap();
        let store = Memory::new(10);
        let a = store
            .create(app, None, app.default_origin().cloned())
            .unwrap();
        a.publish("first");
        a.publish("second");
        let b = store
            .create(app, Some(Id::parse("chosen-id-0000001").unwrap()), None)
            .unwrap();
        let path = temp("roundtrip");
        save(&path, &store, &apps).unwrap();

        let again = Memory::new(10);
        let restored = restore(&path, &again, &apps).unwrap();
        assert_eq!(
            restored,
            Restored {
                ids: 2,
                ..Restored::default()
            }
        );
        let a2 = again.get(a.id().as_str()).unwrap();
        assert_eq!(a2.latest(), a.latest());
        assert_eq!(a2.origin(), a.origin());
        assert_eq!(a2.save(), a.save());
        assert_eq!(again.get(b.id().as_str()).unwrap().latest().seq, 0);
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn the_streamed_encoding_is_the_body_format() {
        // `save` writes ids one by one; the file must still decode as one `Body`, exactly.
        let apps = apps();
        let app = &apps.get("one").unwrap();
        let store = Memory::new(10);
        let slot = store
            .create(app, None, app.default_origin().cloned())
            .unwrap();
        slot.publish("héllo");
        let path = temp("streamed");
        save(&path, &store, &apps).unwrap();
        let bytes = fs::read(&path).unwrap();
        let body = decode(&bytes).unwrap();
        let expected = Body {
            ids: vec![SavedId {
                id: slot.id().to_string(),
                app: "one".into(),
                origin: Some("https://one.example".into()),
                slot: slot.save(),
            }],
            apps: Vec::new(),
            invites: Vec::new(),
        };
        assert_eq!(body, expected);
        assert_eq!(&bytes[HEADER..], postcard::to_allocvec(&expected).unwrap());
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_version_1_file_is_still_read_and_registered_apps_round_trip() {
        let old = vec![SavedId {
            id: "chosen-id-0000001".into(),
            app: "one".into(),
            origin: None,
            slot: Slot::new(
                Id::parse("chosen-id-0000001").unwrap(),
                std::sync::Arc::from("one"),
                None,
            )
            .save(),
        }];
        let payload = postcard::to_allocvec(&old).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let body = decode(&bytes).unwrap();
        assert_eq!((body.ids, body.apps), (old, Vec::new()));

        let apps = apps();
        let (_, key) = apps
            .register(&crate::auth::NewApp {
                name: "later".into(),
                origins: vec![Origin::parse("https://later.example").unwrap()],
                max_ids: 7,
                limits: AppLimits {
                    notify_per_app: Some(RateLimit {
                        per_second: 3,
                        burst: 4,
                    }),
                    info_max_bytes: Some(99),
                    ..AppLimits::default()
                },
            })
            .unwrap();
        let store = Memory::new(10);
        let path = temp("registered");
        save(&path, &store, &apps).unwrap();
        let fresh = self::apps();
        restore(&path, &Memory::new(10), &fresh).unwrap();
        let later = fresh
            .authenticate(key.key.expose())
            .expect("the key works again");
        assert_eq!(
            (&**later.name(), later.max_ids(), later.source()),
            ("later", 7, Source::Registered)
        );
        assert_eq!(
            (later.limits().notify_per_app, later.limits().info_max_bytes),
            (
                Some(RateLimit {
                    per_second: 3,
                    burst: 4
                }),
                Some(99)
            )
        );
        // Restored beside a config that now has an app of that name: refused, not guessed.
        let clash = Apps::new(vec![App::new(
            "later",
            &crate::auth::AppKey::new("k".into()),
            vec![],
        )]);
        assert!(matches!(
            restore(&path, &Memory::new(10), &clash),
            Err(SnapshotError::Unusable { .. })
        ));
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_version_2_file_is_still_read_and_invites_round_trip() {
        let key = AppKey::new("old-registered-key".into());
        let old = (
            Vec::<SavedId>::new(),
            vec![SavedAppV2 {
                name: "older".into(),
                origins: vec!["https://older.example".into()],
                max_ids: 5,
                keys: vec![SavedKey {
                    digest: key.digest(),
                    created_ms: 1,
                    expires_ms: None,
                }],
            }],
        );
        let payload = postcard::to_allocvec(&old).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let path = temp("version-2");
        fs::write(&path, &bytes).unwrap();
        let apps = apps();
        restore(&path, &Memory::new(10), &apps).unwrap();
        let older = apps.authenticate(key.expose()).expect("its key works");
        assert_eq!(
            (older.max_ids(), *older.limits()),
            (5, AppLimits::default()),
            "no limits of its own: the server's"
        );

        let (invite, code) = apps.invites().issue(2, None).unwrap();
        apps.invites().take(&code).unwrap();
        save(&path, &Memory::new(10), &apps).unwrap();
        let fresh = self::apps();
        restore(&path, &Memory::new(10), &fresh).unwrap();
        assert_eq!(fresh.invites().list(), [Invite { used: 1, ..invite }]);
        fresh.invites().take(&code).unwrap();
        assert!(fresh.invites().take(&code).is_err(), "both uses spent");
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_missing_file_is_an_empty_store() {
        let path = temp("missing").with_file_name("nothing-here");
        assert_eq!(
            restore(&path, &Memory::new(1), &apps()).unwrap(),
            Restored::default()
        );
    }

    #[test]
    fn damaged_files_are_refused_and_left_alone() {
        let apps = apps();
        let store = Memory::new(10);
        store.create(&apps.get("one").unwrap(), None, None).unwrap();
        let path = temp("damaged");
        save(&path, &store, &apps).unwrap();
        let good = fs::read(&path).unwrap();

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0xff;
        let mut other_version = good.clone();
        other_version[16] = 9;
        for (bytes, expected) in [
            (b"hello".to_vec(), "not a CallHome snapshot"),
            (flipped, "checksum"),
            (good[..good.len() - 3].to_vec(), "checksum"),
            (other_version, "version 9"),
        ] {
            fs::write(&path, &bytes).unwrap();
            let err = restore(&path, &Memory::new(10), &apps)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected) && err.contains("--discard-state"),
                "{err}"
            );
            assert_eq!(
                fs::read(&path).unwrap(),
                bytes,
                "the file is left untouched"
            );
        }
        let aside = discard(&path).unwrap().unwrap();
        assert!(!path.exists() && aside.exists());
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let apps = apps();
        let store = Memory::new(10);
        store.create(&apps.get("one").unwrap(), None, None).unwrap();
        let path = temp("failed-write");
        // The rename fails: a non-empty directory is where the snapshot should go.
        fs::create_dir_all(path.join("in-the-way")).unwrap();
        let err = save(&path, &store, &apps).unwrap_err();
        assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
        assert!(!with_suffix(&path, ".tmp").exists());
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn one_lock_per_snapshot() {
        let path = temp("lock").join("deeper").join("state");
        let held = Lock::acquire(&path).unwrap();
        let lock = with_suffix(&path, ".lock");
        let pid = std::process::id().to_string();
        assert_eq!(fs::read_to_string(&lock).unwrap().trim(), pid);
        let err = Lock::acquire(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains(&format!("PID {pid}")),
            "{err}"
        );
        drop(held);
        let _again = Lock::acquire(&path).unwrap();
        fs::remove_dir_all(path.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn ids_of_apps_no_longer_configured_are_skipped() {
        let other = Apps::new(vec![App::new("gone", &AppKey::new("g".into()), vec![])]);
        let store = Memory::new(10);
        store
            .create(&other.get("gone").unwrap(), None, None)
            .unwrap();
        let path = temp("unknown-app");
        save(&path, &store, &apps()).unwrap();
        let restored = restore(&path, &Memory::new(10), &apps()).unwrap();
        assert_eq!(
            restored,
            Restored {
                unknown_app: 1,
                ..Restored::default()
            }
        );
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
