//! The store: the one door the HTTP side goes through to create, notify, read, delete and wait
//! on ids, whichever engine holds them.
//!
//! Every call may wait (an engine may be across the network) and returns plain data, never
//! the engine's own objects. Waiting is the exception that proves the rule: a waiting client
//! holds a [`Waiter`] on this node's own slot for the id, so a held poll costs the same memory
//! whatever the engine, and a wake-up never crosses the network to reach it.
//!
//! Two engines: [`memory`], where every id lives in this process (saved by
//! [`crate::snapshot`], expired by [`crate::housekeeping`]), and [`cluster`], where ids live in
//! Redis and every node serves every id.

pub mod cluster;
pub mod memory;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::auth::App;
use crate::id::{EntropyError, Id};
use crate::origin::Origin;
use crate::slot::{Cursor, Delivery, Epoch, Joined, Latest, Published, Seq, Tally, Waiter};

pub use cluster::Cluster;
pub use memory::Memory;

/// Every id, in whichever engine holds them.
#[derive(Debug)]
pub struct Store {
    engine: Engine,
}

#[derive(Debug)]
enum Engine {
    Memory(Memory),
    Cluster(Arc<Cluster>),
}

/// Why an id could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Some app already uses this id.
    #[error("this id is already in use")]
    Taken,
    /// The store holds `max_ids` ids.
    #[error("the server holds its maximum of {0} ids")]
    Full(usize),
    /// The app holds as many ids as its quota allows.
    #[error("this app holds its quota of {0} ids")]
    AppQuota(usize),
    /// No random id could be made.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The app's create rate (cluster-wide) is used up for now.
    #[error("rate limited")]
    RateLimited(Duration),
    /// The shared state cannot be reached.
    #[error("the backplane is unavailable: {0}")]
    Unavailable(String),
}

/// The id does not exist, or belongs to another app (the two are never told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no such id")]
pub struct UnknownId;

/// Why a call on an existing id failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The id does not exist, or belongs to another app.
    #[error("no such id")]
    UnknownId,
    /// The app's notify rate (cluster-wide) is used up for now.
    #[error("rate limited")]
    RateLimited(Duration),
    /// The shared state cannot be reached.
    #[error("the backplane is unavailable: {0}")]
    Unavailable(String),
}

impl From<UnknownId> for StoreError {
    fn from(_: UnknownId) -> Self {
        Self::UnknownId
    }
}

/// A created id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The id.
    pub id: Id,
    /// The origin it is bound to, if any.
    pub origin: Option<Origin>,
}

/// What an app may read about one of its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The origin it is bound to, if any.
    pub origin: Option<Origin>,
    /// Its newest `seq`.
    pub seq: Seq,
    /// Clients waiting on it now.
    pub waiting: u32,
    /// When it was created.
    pub created_at: SystemTime,
    /// Time since its last poll or notify.
    pub idle: Duration,
    /// The newest value delivered to a client, if any (see [`Store::delivered`]).
    pub delivered: Option<Delivery>,
}

/// How a notify that waits for its deliveries (`?wait=`) counts them.
#[derive(Debug)]
pub enum Tracking {
    /// On this node's slot, as they happen.
    Local(Arc<Tally>),
    /// In Redis, where every node counts its own (see [`Cluster::delivered`]).
    Cluster {
        /// The id.
        id: Id,
        /// The notify's `seq`.
        seq: Seq,
        /// Its epoch.
        epoch: Epoch,
    },
}

/// What the browser side needs to know of an id to serve its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The app that owns it.
    pub app: Arc<str>,
    /// The origin it is bound to, if any.
    pub origin: Option<Origin>,
}

/// When a watch should take a waiting place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Only when there is nothing new to answer at once (a long poll).
    IfNothingNew,
    /// Always (a stream, which also delivers what is new at once through its waiter).
    Always,
}

/// How a watch began.
#[derive(Debug)]
pub enum Watch {
    /// There is a value the client has not seen; it took no waiting place.
    Now(Latest),
    /// The client holds one of the id's waiting places.
    Waiting {
        /// The place.
        held: Place,
        /// Waiters released to make room (see [`Joined`]).
        released: usize,
    },
}

/// A waiting place on this node's slot ([`Waiter`], which it derefs to); with Redis, the
/// engine hears at once when it is given up, so the id's `waiting` is soon right everywhere.
#[derive(Debug)]
pub struct Place {
    waiter: Waiter,
    /// The engine to tell when the place is given up (Redis), if any.
    cluster: Option<Arc<Cluster>>,
}

impl std::ops::Deref for Place {
    type Target = Waiter;

    fn deref(&self) -> &Waiter {
        &self.waiter
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // Before the waiter gives its place back (its fields drop after this): the engine
        // only notes the id now and reads its count when it writes the counts, later.
        if let Some(cluster) = &self.cluster {
            cluster.waiters_changed(self.waiter.slot().id());
        }
    }
}

impl Place {
    fn watch(joined: Joined, cluster: Option<Arc<Cluster>>) -> Watch {
        Watch::Waiting {
            held: Self {
                waiter: joined.waiter,
                cluster,
            },
            released: joined.released,
        }
    }
}

impl Store {
    /// A store whose ids live in this process.
    pub fn memory(memory: Memory) -> Self {
        Self {
            engine: Engine::Memory(memory),
        }
    }

    /// A store whose ids live in Redis.
    pub fn cluster(cluster: Arc<Cluster>) -> Self {
        Self {
            engine: Engine::Cluster(cluster),
        }
    }

    /// The Redis engine, for what lives in Redis besides ids (the registry of apps); `None`
    /// for other engines.
    pub fn as_cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.engine {
            Engine::Cluster(cluster) => Some(cluster),
            Engine::Memory(_) => None,
        }
    }

    /// The memory engine, for its snapshots and expiry sweep; `None` for other engines.
    pub fn as_memory(&self) -> Option<&Memory> {
        match &self.engine {
            Engine::Memory(memory) => Some(memory),
            Engine::Cluster(_) => None,
        }
    }

    /// Why this node cannot serve now, if it cannot (`/readyz`).
    pub fn unready(&self) -> Option<&'static str> {
        match &self.engine {
            Engine::Memory(_) => None,
            Engine::Cluster(cluster) => cluster.unready(),
        }
    }

    /// The longest a browser's lookup may take: zero in memory, a few command timeouts
    /// with Redis.
    pub fn lookup_bound(&self) -> Duration {
        match &self.engine {
            Engine::Memory(_) => Duration::ZERO,
            Engine::Cluster(cluster) => cluster.lookup_timeout(),
        }
    }

    /// How many ids exist (with Redis: in the whole cluster, `None` when it cannot say).
    pub async fn count(&self) -> Option<usize> {
        match &self.engine {
            Engine::Memory(memory) => Some(memory.len()),
            Engine::Cluster(cluster) => Box::pin(cluster.count()).await,
        }
    }

    /// How many ids `app` holds (with Redis: in the whole cluster, `None` when it cannot say).
    pub async fn held_by(&self, app: &str) -> Option<usize> {
        match &self.engine {
            Engine::Memory(memory) => Some(memory.held_by(app)),
            Engine::Cluster(cluster) => Box::pin(cluster.held_by(app)).await,
        }
    }

    /// How many ids this node holds (with Redis: ids it holds slots for).
    pub fn len(&self) -> usize {
        match &self.engine {
            Engine::Memory(memory) => memory.len(),
            Engine::Cluster(cluster) => cluster.len(),
        }
    }

    /// True when this node holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Creates `id` (or a fresh random one) for `app`, bound to `origin`.
    pub async fn create(
        &self,
        app: &App,
        id: Option<Id>,
        origin: Option<Origin>,
    ) -> Result<Created, CreateError> {
        match &self.engine {
            Engine::Memory(memory) => memory.create(app, id, origin).map(|slot| Created {
                id: slot.id().clone(),
                origin: slot.origin().cloned(),
            }),
            // Boxed: a Redis round trip's future is large, and it would otherwise be part of
            // every connection's future, waiting ones included.
            Engine::Cluster(cluster) => Box::pin(cluster.create(app, id, origin)).await,
        }
    }

    /// Stores `info` as the newest value of `app`'s `id` and wakes its waiting clients.
    ///
    /// `once` names the notify's idempotency record (src/idempotency.rs): with Redis, a
    /// notify whose record exists was made already and is answered as it was then; the
    /// memory engine, which always knows whether it made a notify, needs none.
    ///
    /// With `track` (how long the caller will wait for them), also how to count the
    /// deliveries of the value (or a newer one) from the moment it was stored, for
    /// [`Store::deliveries`].
    pub async fn publish(
        &self,
        app: &App,
        id: &str,
        info: &str,
        once: Option<&str>,
        track: Option<Duration>,
    ) -> Result<(Published, Option<Tracking>), StoreError> {
        match &self.engine {
            Engine::Memory(memory) if track.is_some() => {
                let (published, tally) = memory.publish_tallied(app, id, info)?;
                Ok((published, Some(Tracking::Local(tally))))
            }
            Engine::Memory(memory) => Ok((memory.publish(app, id, info)?, None)),
            Engine::Cluster(cluster) => {
                let (published, epoch) =
                    Box::pin(cluster.publish(app, id, info, once, track)).await?;
                let tracking = track
                    .and_then(|_| Id::parse(id).ok())
                    .map(|id| Tracking::Cluster {
                        id,
                        seq: published.seq,
                        epoch,
                    });
                Ok((published, tracking))
            }
        }
    }

    /// Waits until `want` clients got the tracked value (or a newer one), or `until`;
    /// returns how many did.
    pub async fn deliveries(
        &self,
        tracking: &Tracking,
        want: u32,
        until: tokio::time::Instant,
    ) -> u32 {
        match (tracking, &self.engine) {
            (Tracking::Local(tally), _) => {
                let _ = tokio::time::timeout_at(until, tally.reached(want)).await;
                tally.count()
            }
            (Tracking::Cluster { id, seq, epoch }, Engine::Cluster(cluster)) => {
                Box::pin(cluster.deliveries(id, *seq, *epoch, want, until)).await
            }
            (Tracking::Cluster { .. }, Engine::Memory(_)) => 0,
        }
    }

    /// Records that a client's answer carrying `seq` of `id` (counted in `epoch`) was handed
    /// to its connection: for the id's status (the newest value delivered) and the notifies
    /// that wait for their deliveries. `slot` is this node's slot for the id, when the caller
    /// holds it.
    pub fn delivered(&self, id: &str, slot: Option<&crate::slot::Slot>, seq: Seq, epoch: Epoch) {
        match &self.engine {
            Engine::Memory(memory) => match slot {
                Some(slot) => slot.delivered(seq, epoch),
                None => {
                    if let Some(slot) = memory.get(id) {
                        slot.delivered(seq, epoch);
                    }
                }
            },
            Engine::Cluster(cluster) => cluster.delivered(id, seq, epoch),
        }
    }

    /// Deletes `app`'s `id`; its waiting clients are released at once as gone.
    pub async fn remove(&self, app: &App, id: &str) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Memory(memory) => Ok(memory.remove(app, id)?),
            Engine::Cluster(cluster) => Box::pin(cluster.remove(app, id)).await,
        }
    }

    /// What `app` may read about its `id`.
    pub async fn status(&self, app: &App, id: &str) -> Result<Status, StoreError> {
        match &self.engine {
            Engine::Memory(memory) => {
                let slot = memory.get_owned(app, id)?;
                Ok(Status {
                    origin: slot.origin().cloned(),
                    seq: slot.latest().seq,
                    waiting: slot.waiting(),
                    created_at: slot.created_at(),
                    idle: slot.idle(),
                    delivered: slot.last_delivery(),
                })
            }
            Engine::Cluster(cluster) => Box::pin(cluster.status(app, id)).await,
        }
    }

    /// Who owns `id` and where its news may go, whoever asks (the browser side has no app);
    /// the lookup counts as activity.
    pub async fn find(&self, id: &str) -> Result<Found, StoreError> {
        match &self.engine {
            Engine::Memory(memory) => {
                let slot = memory.get(id).ok_or(UnknownId)?;
                slot.touch();
                Ok(Found {
                    app: Arc::clone(slot.app_name()),
                    origin: slot.origin().cloned(),
                })
            }
            Engine::Cluster(cluster) => Box::pin(cluster.find(id)).await,
        }
    }

    /// Begins a wait on `id` by a client that has seen `since`: a value it has not seen at
    /// once, or one of the id's `max_waiters` waiting places (see [`crate::slot`]), as `hold`
    /// says. Counts as activity.
    pub async fn watch(
        &self,
        id: &str,
        since: Cursor,
        max_waiters: u32,
        hold: Hold,
    ) -> Result<Watch, StoreError> {
        match &self.engine {
            Engine::Memory(memory) => {
                let slot = memory.get(id).ok_or(UnknownId)?;
                slot.touch();
                if hold == Hold::IfNothingNew
                    && let Some(latest) = slot.newer_than(since)
                {
                    return Ok(Watch::Now(latest));
                }
                Ok(Place::watch(slot.join(max_waiters), None))
            }
            Engine::Cluster(cluster) => {
                let watch = Box::pin(cluster.watch(id, since, max_waiters, hold)).await?;
                Ok(match watch {
                    cluster::Watched::Now(latest) => Watch::Now(latest),
                    cluster::Watched::Waiting(joined) => {
                        Place::watch(joined, Some(Arc::clone(cluster)))
                    }
                })
            }
        }
    }
}
