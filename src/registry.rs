//! Where the apps registered at runtime are kept, and how a change reaches every node.
//!
//! - **Memory engine**: the registry is this process's ([`crate::auth::Apps`]) and the
//!   snapshot's; each change is written to the snapshot before it is answered.
//! - **Redis engine**: the registered apps (and the invites of self-registration) are one
//!   document in Redis (`ch:reg`, with its
//!   version `ch:regv`). A change is made on the newest document and written back only if
//!   nobody wrote another meanwhile (compare-and-set on the version, one script), and tried
//!   again on the newer one if somebody did: changes made on several nodes at once never
//!   undo each other. Every node reads the version every [`FOLLOW_EVERY`] and takes on a
//!   newer document, so an app added, a key rotated or revoked on one node works (or stops)
//!   on every node within a second. Apps are few and change seldom: one document read whole
//!   is simpler and safer than a structure per app, and a read of the version is one `GET`.
//!
//! A Redis that lost the registry (restarted without persistence, or failed over to a
//! replica that lagged) shows an older version than a node knows: that node writes its own
//! copy back with the version it had, so the registry comes back as new as the newest node
//! knew it, and a key handed out keeps working. Only when every node restarted too is a lost
//! registry gone: run Redis with persistence (docs/cluster.md).

use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::auth::Apps;
use crate::error::ApiError;
use crate::snapshot;
use crate::state::AppState;
use crate::store::Cluster;

/// How often a node of a cluster looks for a newer registry in Redis.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// How often a change is tried on a registry that others change meanwhile, at most; each
/// retry waits a random while first, growing, so that nodes racing do not race again.
const ATTEMPTS: u32 = 16;
const BACKOFF: Duration = Duration::from_millis(4);

/// This node's hold on the registry: changes (and, in cluster mode, taking on another node's)
/// happen one at a time, under this lock, which keeps the version of the Redis document the
/// node's apps are (0 for the memory engine, and before any document was written).
#[derive(Debug, Default)]
pub struct Registry {
    version: Mutex<u64>,
}

/// Makes the change `f` to the registry of `state` and keeps it (snapshot or Redis) before
/// returning its result. `f` may run more than once (in cluster mode, when another node
/// changed the registry first); only the last run's result is returned and kept.
pub async fn change<T, E: Into<ApiError>>(
    state: &AppState,
    f: impl Fn(&Apps) -> Result<T, E>,
) -> Result<T, ApiError> {
    let mut version = state.registry.version.lock().await;
    let Some(cluster) = state.store.as_cluster() else {
        let out = f(&state.apps).map_err(Into::into)?;
        persist(state).await?;
        return Ok(out);
    };
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(BACKOFF * rand::random_range(1..=attempt)).await;
        }
        let read = converge(state, cluster, &mut version).await?;
        let out = f(&state.apps).map_err(Into::into)?;
        let document = snapshot::encode_registered(&state.apps);
        match cluster.registry_put(read, &document, None).await {
            Ok(Some(written)) => {
                *version = written;
                return Ok(out);
            }
            // Another node's change came first: this one is made again on it.
            Ok(None) => *version = u64::MAX,
            Err(e) => {
                // Not kept, so not made: back to what Redis has, when it answers.
                *version = u64::MAX;
                return Err(e.into());
            }
        }
    }
    Err(ApiError::BackplaneUnavailable(
        "the registry kept changing under this change; try again".into(),
    ))
}

/// Takes on the registry in Redis when it is newer than this node's, or writes this node's
/// back when Redis has an older one (it lost writes); returns the version both now have.
/// A `version` of `u64::MAX` stands for "this node's apps may differ from every document":
/// they are replaced by Redis's, whatever its version.
async fn converge(state: &AppState, cluster: &Cluster, version: &mut u64) -> Result<u64, ApiError> {
    loop {
        let (remote, document) = cluster.registry_load().await?;
        if remote == *version {
            return Ok(remote);
        }
        if remote < *version && *version != u64::MAX {
            let mine = snapshot::encode_registered(&state.apps);
            if let Some(written) = cluster.registry_put(remote, &mine, Some(*version)).await? {
                tracing::warn!(
                    redis = remote,
                    node = written,
                    "Redis had an older registry of apps than this node (it lost writes); \
                     wrote this node's back"
                );
                state.metrics.backplane.registry_restores.inc();
                return Ok(written);
            }
            // Another node wrote first: take on whatever is there now.
            *version = u64::MAX;
            continue;
        }
        let unusable = |e: String| {
            ApiError::Internal(format!("the registry of apps in Redis is unusable: {e}"))
        };
        let (registered, invites) = match document.as_deref() {
            None => (Vec::new(), Vec::new()),
            Some(bytes) => snapshot::decode_registered(bytes).map_err(unusable)?,
        };
        state
            .apps
            .replace_registered(registered)
            .map_err(|e| unusable(e.to_string()))?;
        state.apps.invites().replace(invites);
        state.metrics.backplane.registry_loads.inc();
        *version = remote;
        return Ok(remote);
    }
}

/// In cluster mode, until `stop`: takes on every change another node makes to the registry
/// (and writes this node's back to a Redis that lost it), looking every [`FOLLOW_EVERY`].
pub async fn follow(state: AppState, stop: CancellationToken) {
    let Some(cluster) = state.store.as_cluster() else {
        return;
    };
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match look(&state, cluster).await {
            Ok(()) => failing = false,
            Err(e) => {
                // Said once per outage: the backplane's own metrics and /readyz say the rest.
                if !failing {
                    tracing::warn!(error = %e, "cannot read the registry of apps from Redis");
                }
                failing = true;
            }
        }
    }
}

/// One look: the version alone (one `GET`), and the document only when it moved.
async fn look(state: &AppState, cluster: &Cluster) -> Result<(), String> {
    let remote = cluster
        .registry_version()
        .await
        .map_err(|e| e.to_string())?;
    let mut version = state.registry.version.lock().await;
    if remote == *version {
        return Ok(());
    }
    converge(state, cluster, &mut version)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// In cluster mode, the registry as Redis has it, before this node serves (a node that
/// cannot read it now starts anyway and takes it on within [`FOLLOW_EVERY`] of Redis
/// answering).
pub async fn load(state: &AppState) {
    if let Some(cluster) = state.store.as_cluster()
        && let Err(e) = look(state, cluster).await
    {
        tracing::warn!(error = %e, "cannot read the registry of apps from Redis yet");
    }
}

/// Deletes the ids of the removed `app` and returns how many: in cluster mode by a scan of
/// every id in Redis (a step of a thousand keys at a time), in the memory engine here. Their
/// pages get `gone` on every node.
pub async fn forget_ids(state: &AppState, app: &crate::auth::App) -> Result<u64, ApiError> {
    if let Some(cluster) = state.store.as_cluster() {
        let before = crate::auth::now_ms() / 1000;
        return Ok(cluster.purge_app(app.name(), before).await?);
    }
    let ids: Vec<String> = state
        .store
        .as_memory()
        .map(|m| {
            m.slots()
                .iter()
                .filter(|slot| slot.app() == &**app.name())
                .map(|slot| slot.id().as_str().to_owned())
                .collect()
        })
        .unwrap_or_default();
    for id in &ids {
        // One already gone is what we want anyway.
        let _ = state.store.remove(app, id).await;
    }
    Ok(ids.len() as u64)
}

/// Writes the snapshot now, when there is one, so a change answered is a change kept.
async fn persist(state: &AppState) -> Result<(), ApiError> {
    let Some(path) = state.snapshot.snapshot_path.clone() else {
        return Ok(());
    };
    snapshot::save_measured(path, state)
        .await
        .map(drop)
        .map_err(|e| ApiError::Internal(format!("the registry change was not saved: {e}")))
}
