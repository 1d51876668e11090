//! The Redis engine: every node serves every id, and a notify on any node wakes the clients
//! waiting on every other (docs/cluster.md has the picture).
//!
//! What lives where:
//! - **Redis** holds each id (`ch:i:<id>`: app, origin, seq, info, created, and each node's
//!   count of waiting clients; its TTL's end is its expiry bucket), each app's count of ids
//!   per expiry bucket (`ch:ab:<app>` and `ch:ae:<app>`, for exact quotas), the same for every
//!   id of every app (`ch:gb`, `ch:ge`, for `max_ids` in one read), with nothing per id beside
//!   the id's own key, the per-app rate buckets, the epoch and the live
//!   nodes. Every operation is
//!   one Lua script ([`scripts`]), so `seq` is assigned in one place and a notify's hint is
//!   published in the same atomic step as its value: hints leave Redis in `seq` order.
//! - **This node** holds only its waiting clients, on its own slots (the same [`Slot`] as the
//!   memory engine, so a waiting client costs the same), and learns of notifies from one
//!   channel ([`hints`]), never one subscription per id: each script publishes one message
//!   there with every change it made.
//!
//! Lost hints are found and repaired: the hint messages are numbered, a gap or a
//! reconnect re-reads every local id from Redis, and a liveness probe catches a subscription
//! that died silently. A Redis that may have lost writes gets a new epoch ([`Epoch`]), and a
//! client whose cursor is from another epoch is told to `reset`.

mod batch;
mod hints;
mod link;
mod scripts;
mod trust;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trust::Trust;

use super::{CreateError, Created, Found, Hold, Status, StoreError};
use crate::auth::App;
use crate::config::{RateLimit, Settings};
use crate::id::Id;
use crate::metrics::Backplane;
use crate::origin::Origin;
use crate::slot::{Cursor, Delivery, Epoch, Joined, Latest, Published, Seq, Slot};
use link::{Link, Target};
use scripts::SCRIPTS;

pub use link::ConnectError;

/// The hint channel: every node subscribes to it, and every script that changes ids publishes
/// one message to it (scripts.lua, `publish`).
const HINT_CHANNEL: &str = "ch:h";
/// The number of the last hint message (`INCR`), so that a node sees one it missed.
const HINT_COUNTER_KEY: &str = "ch:hc";
const EPOCH_KEY: &str = "ch:ep";
/// The apps registered at runtime, one document (src/registry.rs), and its version.
const REGISTRY_KEY: &str = "ch:reg";
const REGISTRY_VERSION_KEY: &str = "ch:regv";
/// Id keys looked at per step when a removed app's ids are deleted.
const PURGE_STEP: usize = 1000;
const NODES_KEY: &str = "ch:nodes";

/// How often this node says it is alive, and how long one heartbeat counts: a killed node's
/// waiters stop counting in `waiting` within [`NODE_TTL`].
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const NODE_TTL: Duration = Duration::from_secs(6);
/// How long after a waiter leaves its node writes the counts, gathering other changes.
const COALESCE_LEAVES: Duration = Duration::from_millis(20);
/// How often this node writes its waiter counts that changed.
const WAITERS_EVERY: Duration = Duration::from_millis(250);
/// Local slots nobody waits on are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// Waiter counts written per script call.
const REPORT_BATCH: usize = 512;
/// Notifies sent per script call, at most.
const NOTIFY_BATCH: usize = 128;
/// Notify batches in Redis at once, at most; more notifies wait for one of them to come back.
const NOTIFIES_IN_FLIGHT: usize = 1;
/// Notifies (and, apart, looks) queued on this node, at most (beyond that they go alone).
const NOTIFY_QUEUE: usize = 16_384;
/// Browsers' looks sent per script call, at most.
const TOUCH_BATCH: usize = 256;
/// Batches of looks in Redis at once, at most.
const TOUCHES_IN_FLIGHT: usize = 1;
/// How often a node writes the tallies of notifies that wait for their deliveries
/// (`?wait=`), and how often such a notify reads them: what it waits at most beyond the
/// deliveries themselves.
const TALLIES_EVERY: Duration = Duration::from_millis(25);
/// How often a node writes the newest values it delivered (for the ids' status).
const DELIVERED_EVERY: Duration = Duration::from_secs(1);
/// How long a delivery tally lives in Redis after its last delivery: longer than any
/// `?wait=`.
const TALLY_WINDOW: Duration = Duration::from_secs(60);

fn id_key(id: &str) -> String {
    format!("ch:i:{id}")
}

/// The id's delivery tally: `epoch:seq` -> clients it was delivered to (the `delivered`
/// script).
fn tally_key(id: &str) -> String {
    format!("ch:dc:{id}")
}

/// The app's count of ids per expiry bucket (and `n`, its total).
fn counts_key(app: &str) -> String {
    format!("ch:ab:{app}")
}

/// The ends of the app's expiry buckets (a sorted set).
fn ends_key(app: &str) -> String {
    format!("ch:ae:{app}")
}

/// Every id's count per expiry bucket, kept beside each app's (scripts.lua, `keep`), so a
/// create checks `max_ids` with one read however many apps there are.
const ALL_COUNTS_KEY: &str = "ch:gb";
/// The ends of those buckets.
const ALL_ENDS_KEY: &str = "ch:ge";

/// How finely idle expiry is kept: an id expires between `id_idle_ttl` and `id_idle_ttl`
/// plus this after its last activity, and an id in steady use rewrites its TTL once per
/// granule rather than at every notify or poll.
fn granule(idle_ttl: Duration) -> Duration {
    (idle_ttl / 64).clamp(Duration::from_millis(10), Duration::from_secs(60))
}

/// The app's rate bucket of `kind` at `rate`: a changed rate starts a bucket of its own, so
/// that it holds from the next request (the old one expires by itself).
fn bucket_key(kind: &str, app: &str, rate: RateLimit) -> String {
    format!(
        "ch:rl:{kind}:{app}:{}/{}",
        rate.per_second,
        rate.burst.max(1)
    )
}

/// The Redis engine of one node.
#[derive(Debug)]
pub struct Cluster {
    link: Arc<Link>,
    /// This node's name in Redis: the configured name and a random suffix per process, so a
    /// restarted node never inherits the waiter counts of its previous life.
    node: String,
    /// The slots of ids this node's clients wait on (or looked at lately).
    local: DashMap<Id, Arc<Slot>>,
    /// Waiter counts last written to Redis, by id.
    reported: DashMap<Id, u32>,
    idle_ttl: Duration,
    /// [`granule`] of `idle_ttl`, in milliseconds.
    granule_ms: u64,
    max_ids: usize,
    create_rate: RateLimit,
    notify_rate: RateLimit,
    /// How long an idempotency record lives, in milliseconds.
    idempotency_window_ms: u64,
    /// True while the hint subscription is live.
    subscribed: AtomicBool,
    /// When this node's copy of an id may stand in for a read of Redis.
    trust: Trust,
    /// Poked when a waiter leaves, so the counts are written without waiting for the tick.
    counts_changed: tokio::sync::Notify,
    /// Ids whose count of local clients changed since the counts were last written (with
    /// repeats): a fan-out's end writes the ids it woke, not a scan of every local slot.
    changed: Mutex<Vec<Id>>,
    /// Notifies on their way to their batch.
    notifies: mpsc::Sender<Notify>,
    /// Browsers' looks on their way to their batch.
    touches: mpsc::Sender<Touch>,
    /// The newest `seq` delivered of each id since they were last written (for the ids'
    /// status).
    delivered: Mutex<HashMap<Id, Seq>>,
    /// Notifies whose deliveries are tallied (a 'w' hint, or this node's own with `?wait=`),
    /// by id: this node counts its deliveries of that `seq` or newer until the window ends.
    tallied: DashMap<Id, Tallied>,
    /// Deliveries of tallied notifies not yet written to Redis, by id, epoch and `seq`.
    tallies: Mutex<HashMap<(Id, Epoch, Seq), u32>>,
    metrics: Backplane,
}

/// A node with no Redis answers like this.
fn unavailable(why: String) -> StoreError {
    StoreError::Unavailable(why)
}

impl Cluster {
    /// Connects to Redis (waiting and retrying while it is down) and starts the node's tasks
    /// on `tasks`: the link's supervisor, the hint subscriber, heartbeats and waiter counts.
    pub async fn start(
        settings: &Settings,
        node: String,
        metrics: Backplane,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Self>, ConnectError> {
        let config = &settings.store;
        let rates = &settings.rate_limits;
        let target = if config.redis_sentinels.is_empty() {
            Target::Url(
                config
                    .redis_url
                    .clone()
                    .ok_or_else(|| ConnectError::Refused("store.redis_url is not set".into()))?,
            )
        } else {
            Target::Sentinel {
                sentinels: config.redis_sentinels.clone(),
                name: config.redis_master_name.clone().unwrap_or_default(),
                auth: config.redis_url.clone(),
            }
        };
        let link = Arc::new(Link::new(
            target,
            config.command_timeout,
            metrics.reconnects.clone(),
        ));
        link.connect_first(shutdown).await?;
        let suffix: u32 = rand::random();
        let (max_ids, idle_ttl) = (settings.limits.max_ids, settings.limits.id_idle_ttl);
        let (notifies, queue) = mpsc::channel(NOTIFY_QUEUE);
        let (touches, looks) = mpsc::channel(NOTIFY_QUEUE);
        let cluster = Arc::new(Self {
            link: Arc::clone(&link),
            node: format!("{node}#{suffix:08x}"),
            local: DashMap::with_shard_amount(64),
            reported: DashMap::new(),
            idle_ttl,
            granule_ms: u64::try_from(granule(idle_ttl).as_millis()).unwrap_or(u64::MAX),
            max_ids,
            idempotency_window_ms: u64::try_from(settings.idempotency.window.as_millis())
                .unwrap_or(u64::MAX),
            create_rate: rates.create_per_app,
            notify_rate: rates.notify_per_app,
            subscribed: AtomicBool::new(false),
            trust: Trust::new(idle_ttl),
            counts_changed: tokio::sync::Notify::new(),
            changed: Mutex::new(Vec::new()),
            notifies,
            touches,
            delivered: Mutex::new(HashMap::new()),
            tallied: DashMap::new(),
            tallies: Mutex::new(HashMap::new()),
            metrics,
        });
        cluster.heartbeat().await;
        tasks.spawn(link.supervise(shutdown.clone()));
        tasks.spawn(hints::subscribe(Arc::clone(&cluster), shutdown.clone()));
        tasks.spawn(Arc::clone(&cluster).chores(shutdown.clone()));
        let for_notifies = Arc::clone(&cluster);
        tasks.spawn(batch::run(
            queue,
            shutdown.clone(),
            NOTIFY_BATCH,
            NOTIFIES_IN_FLIGHT,
            move |jobs| {
                let cluster = Arc::clone(&for_notifies);
                async move { cluster.notify_batch(jobs).await }
            },
        ));
        let for_looks = Arc::clone(&cluster);
        tasks.spawn(batch::run(
            looks,
            shutdown.clone(),
            TOUCH_BATCH,
            TOUCHES_IN_FLIGHT,
            move |jobs| {
                let cluster = Arc::clone(&for_looks);
                async move { cluster.touch_batch(jobs).await }
            },
        ));
        // Serve once hints arrive, so that /readyz is green from the first request (bounded:
        // a node whose subscription fails still starts, and /readyz says why).
        let until = tokio::time::Instant::now() + config.command_timeout * 3;
        while !cluster.subscribed.load(Ordering::Acquire) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(cluster)
    }

    /// This node's name in Redis.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Why this node cannot serve now, if it cannot: no command link, or no hint
    /// subscription.
    pub fn unready(&self) -> Option<&'static str> {
        if self.link.get().is_none() {
            Some("no connection to Redis")
        } else if !self.subscribed.load(Ordering::Acquire) {
            Some("not subscribed to Redis hints")
        } else {
            None
        }
    }

    fn update_up(&self) {
        let up = self.unready().is_none();
        self.metrics.up.set(i64::from(up));
    }

    /// Ids whose slots this node holds.
    pub fn len(&self) -> usize {
        self.local.len()
    }

    /// The longest a browser's lookup waits for Redis.
    pub fn lookup_timeout(&self) -> Duration {
        self.link.patient_timeout()
    }

    /// Ids that exist in the whole cluster: every app's unexpired ids.
    pub async fn count(&self) -> Option<usize> {
        self.link
            .call(|mut conn| async move {
                SCRIPTS
                    .census
                    .key(ALL_COUNTS_KEY)
                    .key(ALL_ENDS_KEY)
                    .invoke_async::<usize>(&mut conn.redis)
                    .await
            })
            .await
            .ok()
    }

    /// The unexpired ids of `app` in the whole cluster.
    pub async fn held_by(&self, app: &str) -> Option<usize> {
        self.link
            .call(|mut conn| async move {
                SCRIPTS
                    .census
                    .key(counts_key(app))
                    .key(ends_key(app))
                    .invoke_async::<usize>(&mut conn.redis)
                    .await
            })
            .await
            .ok()
    }

    /// Clients waiting on `id` on this node right now.
    fn local_waiters(&self, id: &str) -> u32 {
        self.local.get(id).map_or(0, |slot| slot.waiting())
    }

    /// This node's count of clients on `id` changed: the counts are written soon
    /// (coalesced), for the ids noted since the last write only.
    pub fn waiters_changed(&self, id: &Id) {
        let mut changed = self.changed.lock().unwrap_or_else(PoisonError::into_inner);
        let first = changed.is_empty();
        changed.push(id.clone());
        drop(changed);
        if first {
            self.counts_changed.notify_one();
        }
    }

    /// True when this node holds no slot.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty()
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.idle_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Creates an id for `app`, exactly within its quota and `max_ids` across every node.
    pub async fn create(
        &self,
        app: &App,
        id: Option<Id>,
        origin: Option<Origin>,
    ) -> Result<Created, CreateError> {
        let id = match id {
            Some(id) => id,
            None => Id::generate()?,
        };
        let name = app.name();
        let quota = app.max_ids();
        // The app's own rate when it has one (self-registered apps), else the server's.
        let create_rate = app.limits().create_per_app.unwrap_or(self.create_rate);
        let origin_arg = origin.as_ref().map_or("", |o| o.as_str()).to_owned();
        let id_ref = &id;
        let reply: Vec<String> = self
            .link
            .call(|mut conn| async move {
                let id = id_ref;
                let mut invocation = SCRIPTS.create.prepare_invoke();
                invocation
                    .key(id_key(id.as_str()))
                    .key(counts_key(name))
                    .key(ends_key(name))
                    .key(bucket_key("c", name, create_rate))
                    .key(ALL_COUNTS_KEY)
                    .key(ALL_ENDS_KEY);
                invocation
                    .arg(&**name)
                    .arg(origin_arg)
                    .arg(self.ttl_ms())
                    .arg(self.granule_ms)
                    .arg(quota)
                    .arg(self.max_ids)
                    .arg(create_rate.per_second)
                    .arg(create_rate.burst.max(1));
                invocation.invoke_async(&mut conn.redis).await
            })
            .await
            .map_err(CreateError::Unavailable)?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(Created { id, origin }),
            Some("taken") => Err(CreateError::Taken),
            Some("quota") => Err(CreateError::AppQuota(quota)),
            Some("full") => Err(CreateError::Full(self.max_ids)),
            Some("rate") => Err(CreateError::RateLimited(wait_of(&reply))),
            _ => Err(CreateError::Unavailable(format!(
                "unexpected reply {reply:?}"
            ))),
        }
    }

    /// Notifies `app`'s `id`: the value and its `seq` are Redis's, the wake-ups every node's.
    ///
    /// Notifies made while this node's earlier ones are in Redis go together in one script
    /// call ([`batch`]): one round trip and one script run for many, each still answered as
    /// if alone. A notify alone goes at once.
    ///
    /// With `once` (the name of an idempotency record), a notify made before under that
    /// record is answered as it was then, and not made again; a new one writes the record in
    /// the same script.
    pub async fn publish(
        &self,
        app: &App,
        id: &str,
        info: &str,
        once: Option<&str>,
        track: Option<Duration>,
    ) -> Result<(Published, Epoch), StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Notify {
            app: Arc::clone(app.name()),
            id: id.into(),
            info: info.into(),
            waiters: self.local_waiters(id),
            once: once.map(|record| format!("ch:in:{record}").into()),
            rate: app.limits().notify_per_app.unwrap_or(self.notify_rate),
            track,
            reply,
        };
        let outcome = batch::submit(&self.notifies, job, answer, self.link.timeout(), |jobs| {
            self.notify_batch(jobs)
        })
        .await
        .map_err(unavailable)?;
        match outcome {
            Notified::Done {
                seq,
                waiting,
                epoch,
            } => {
                // This node's own waiters need not wait for the hint to come back (and the
                // tally begins before any of them is woken).
                if let Some(slot) = self.local.get(id) {
                    if let Some(wait) = track {
                        self.tally(slot.id(), seq, epoch, wait);
                    }
                    slot.apply(seq, Some(info), epoch);
                }
                Ok((Published { seq, waiting }, epoch))
            }
            Notified::Unknown => Err(StoreError::UnknownId),
            Notified::RateLimited(wait) => Err(StoreError::RateLimited(wait)),
        }
    }

    /// One script call for `batch`; every notify in it gets its own answer.
    async fn notify_batch(&self, batch: Vec<Notify>) {
        let jobs = &batch;
        let reply: Result<Vec<String>, String> = self
            .link
            .call(|mut conn| async move {
                let mut notify = SCRIPTS.notify.prepare_invoke();
                notify.key(HINT_COUNTER_KEY).key(EPOCH_KEY).key(NODES_KEY);
                for job in jobs {
                    notify.key(id_key(&job.id));
                }
                notify
                    .arg(self.ttl_ms())
                    .arg(self.granule_ms)
                    .arg(&self.node)
                    .arg(self.idempotency_window_ms);
                for job in jobs {
                    notify
                        .arg(&*job.app)
                        .arg(&*job.info)
                        .arg(job.waiters)
                        .arg(job.once.as_deref().unwrap_or(""))
                        .arg(job.rate.per_second)
                        .arg(job.rate.burst.max(1))
                        .arg(job.track.map_or(0, |wait| {
                            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)
                        }));
                }
                notify.invoke_async(&mut conn.redis).await
            })
            .await;
        let reply = reply.and_then(|reply| {
            if reply.len() == 1 + 3 * batch.len() {
                Ok(reply)
            } else {
                Err(format!("unexpected reply {reply:?}"))
            }
        });
        match reply {
            Ok(reply) => {
                let epoch: Epoch = reply[0].parse().unwrap_or_default();
                for (job, answer) in batch.into_iter().zip(reply[1..].chunks_exact(3)) {
                    let outcome = match answer[0].as_str() {
                        "ok" => Notified::Done {
                            seq: answer[1].parse().unwrap_or_default(),
                            waiting: answer[2].parse().unwrap_or_default(),
                            epoch,
                        },
                        "unknown" => Notified::Unknown,
                        _ => Notified::RateLimited(Duration::from_millis(
                            answer[1].parse().unwrap_or(1000),
                        )),
                    };
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(why) => {
                for job in batch {
                    let _ = job.reply.send(Err(why.clone()));
                }
            }
        }
    }

    /// Deletes `app`'s `id`; every node's waiters on it are released as gone.
    pub async fn remove(&self, app: &App, id: &str) -> Result<(), StoreError> {
        let reply: Vec<String> = self
            .link
            .call(|mut conn| async move {
                SCRIPTS
                    .delete
                    .key(id_key(id))
                    .key(counts_key(app.name()))
                    .key(ends_key(app.name()))
                    .key(HINT_COUNTER_KEY)
                    .key(EPOCH_KEY)
                    .arg(&**app.name())
                    .arg(id)
                    .invoke_async(&mut conn.redis)
                    .await
            })
            .await
            .map_err(unavailable)?;
        match reply.first().map(String::as_str) {
            Some("ok") => {
                self.gone(id);
                Ok(())
            }
            Some("unknown") => Err(StoreError::UnknownId),
            _ => Err(unavailable(format!("unexpected reply {reply:?}"))),
        }
    }

    /// The version of the registry of apps in Redis (0: none was ever written).
    pub async fn registry_version(&self) -> Result<u64, StoreError> {
        let version: Option<u64> = self
            .link
            .call(|mut conn| async move {
                redis::cmd("GET")
                    .arg(REGISTRY_VERSION_KEY)
                    .query_async(&mut conn.redis)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok(version.unwrap_or(0))
    }

    /// The registry of apps in Redis and its version, read together.
    pub async fn registry_load(&self) -> Result<(u64, Option<Vec<u8>>), StoreError> {
        let (version, document): (Option<u64>, Option<Vec<u8>>) = self
            .link
            .call(|mut conn| async move {
                redis::cmd("MGET")
                    .arg(REGISTRY_VERSION_KEY)
                    .arg(REGISTRY_KEY)
                    .query_async(&mut conn.redis)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok((version.unwrap_or(0), document))
    }

    /// Writes `document` as the registry if its version is still `read` (the one the change
    /// was made on), giving it version `becomes` or, for `None`, the next one. Returns the
    /// version it now has, or `None` when another change came first.
    pub async fn registry_put(
        &self,
        read: u64,
        document: &[u8],
        becomes: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let version: i64 = self
            .link
            .call(|mut conn| async move {
                SCRIPTS
                    .registry_put
                    .key(REGISTRY_KEY)
                    .key(REGISTRY_VERSION_KEY)
                    .arg(read)
                    .arg(document)
                    .arg(becomes.map(|v| v.to_string()).unwrap_or_default())
                    .invoke_async(&mut conn.redis)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(version).ok())
    }

    /// Deletes every id of the removed app `app` made no later than `before` (seconds since
    /// the epoch, so that an app of the same name registered since keeps its own), scanning
    /// every id in Redis a step at a time; their waiters on every node are released as gone,
    /// and the app's counts and rate buckets go too. Returns how many ids were deleted.
    pub async fn purge_app(&self, app: &str, before: u64) -> Result<u64, StoreError> {
        let mut cursor = 0u64;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .link
                .call(|mut conn| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg("ch:i:*")
                        .arg("COUNT")
                        .arg(PURGE_STEP)
                        .query_async(&mut conn.redis)
                        .await
                })
                .await
                .map_err(unavailable)?;
            if !keys.is_empty() {
                let keys = &keys;
                let n: u64 = self
                    .link
                    .call(|mut conn| async move {
                        let mut purge = SCRIPTS.purge.prepare_invoke();
                        purge.key(HINT_COUNTER_KEY).key(EPOCH_KEY);
                        for key in keys {
                            purge.key(key);
                        }
                        purge
                            .arg(app)
                            .arg(before)
                            .invoke_async(&mut conn.redis)
                            .await
                    })
                    .await
                    .map_err(unavailable)?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // What is left of the app: its counts (empty now, or counting ids of a new app of
        // the same name, which keeps them) are left alone; its rate buckets expire by
        // themselves.
        Ok(deleted)
    }

    /// Looks up the `Idempotency-Key` `key` of `app` for the request `fingerprint`, holding
    /// it for this request when it is new (src/idempotency.rs).
    pub async fn idempotency_begin(
        &self,
        app: &str,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<crate::idempotency::Begun, StoreError> {
        use crate::idempotency::{Begun, Kept, PENDING_FOR};
        let record = format!("ch:ik:{app}:{key}");
        let record = &record;
        let reply: Vec<Vec<u8>> = self
            .link
            .call(|mut conn| async move {
                SCRIPTS
                    .idem_begin
                    .key(record)
                    .arg(&fingerprint[..])
                    .arg(u64::try_from(PENDING_FOR.as_millis()).unwrap_or(u64::MAX))
                    .invoke_async(&mut conn.redis)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok(match reply.first().map(Vec::as_slice) {
            Some(b"fresh") => Begun::Fresh,
            Some(b"pending") => Begun::InProgress,
            Some(b"reused") => Begun::Reused,
            Some(b"done") if reply.len() == 3 => Begun::Replay(Kept {
                status: std::str::from_utf8(&reply[1])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(200),
                body: reply[2].clone().into(),
            }),
            _ => return Err(unavailable(format!("unexpected reply {reply:?}"))),
        })
    }

    /// Keeps `kept` as the answer of `key`'s request for `window`, or frees the key.
    pub async fn idempotency_finish(
        &self,
        app: &str,
        key: &str,
        fingerprint: &[u8; 32],
        kept: Option<&crate::idempotency::Kept>,
        window: Duration,
    ) -> Result<(), StoreError> {
        let record = format!("ch:ik:{app}:{key}");
        let record = &record;
        let status = kept.map(|k| format!("{:03}", k.status)).unwrap_or_default();
        let body: &[u8] = kept.map_or(&[], |k| &k.body);
        let _: i64 = self
            .link
            .call(|mut conn| async move {
                SCRIPTS
                    .idem_finish
                    .key(record)
                    .arg(&fingerprint[..])
                    .arg(status)
                    .arg(body)
                    .arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
                    .invoke_async(&mut conn.redis)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Keeps the self-registration `token` for `origin` for `ttl`, unless `client` (its rate
    /// key) has `per_client` tokens waiting or all clients `all` (counted over the last
    /// `ttl`); returns whether it was kept.
    pub async fn challenge_issue(
        &self,
        token: &str,
        origin: &str,
        client: &str,
        ttl: Duration,
        per_client: usize,
        all: usize,
    ) -> Result<bool, StoreError> {
        let keys = (
            format!("ch:ct:{token}"),
            format!("ch:ctc:{client}"),
            "ch:ctn",
        );
        let keys = &keys;
        let kept: i64 = self
            .link
            .call(|mut conn| async move {
                SCRIPTS
                    .challenge_issue
                    .key(&keys.0)
                    .key(&keys.1)
                    .key(keys.2)
                    .arg(origin)
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                    .arg(per_client)
                    .arg(all)
                    .invoke_async(&mut conn.redis)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok(kept == 1)
    }

    /// The origin the self-registration `token` was handed out for, while it waits.
    pub async fn challenge_origin(&self, token: &str) -> Result<Option<String>, StoreError> {
        let key = format!("ch:ct:{token}");
        let key = &key;
        self.link
            .call(|mut conn| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn.redis)
                    .await
            })
            .await
            .map_err(unavailable)
    }

    /// Forgets the self-registration `tokens`: they were used.
    pub async fn challenge_consume(&self, tokens: &[String]) -> Result<(), StoreError> {
        let keys: Vec<String> = tokens.iter().map(|t| format!("ch:ct:{t}")).collect();
        let keys = &keys;
        self.link
            .call(|mut conn| async move {
                redis::cmd("DEL")
                    .arg(keys)
                    .query_async::<i64>(&mut conn.redis)
                    .await
            })
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// What `app` may read about its `id`; `waiting` counts every live node's clients.
    pub async fn status(&self, app: &App, id: &str) -> Result<Status, StoreError> {
        let reply: Vec<String> = self
            .link
            .call(|mut conn| async move {
                SCRIPTS
                    .status
                    .key(id_key(id))
                    .key(NODES_KEY)
                    .arg(&**app.name())
                    .arg(&self.node)
                    .arg(self.local_waiters(id))
                    .invoke_async(&mut conn.redis)
                    .await
            })
            .await
            .map_err(unavailable)?;
        let [origin, seq, created, pttl, waiting, ds, dt] = reply.as_slice() else {
            return Err(StoreError::UnknownId);
        };
        let left = Duration::from_millis(pttl.parse().unwrap_or(0));
        let delivered = match (ds.parse::<Seq>(), dt.parse::<u64>()) {
            (Ok(seq), Ok(at)) => Some(Delivery {
                seq,
                at: UNIX_EPOCH + Duration::from_millis(at),
            }),
            _ => None,
        };
        Ok(Status {
            origin: parse_origin(origin),
            seq: seq.parse().unwrap_or_default(),
            waiting: waiting.parse().unwrap_or_default(),
            created_at: UNIX_EPOCH + Duration::from_secs(created.parse().unwrap_or(0)),
            idle: self.idle_ttl.saturating_sub(left),
            delivered,
        })
    }

    /// Notes a delivery of `seq` (in `epoch`) of `id` by this node: written to the id within
    /// [`DELIVERED_EVERY`], and to its tally within [`TALLIES_EVERY`] when a notify waits for
    /// it.
    pub fn delivered(&self, id: &str, seq: Seq, epoch: Epoch) {
        let Ok(id) = Id::parse(id) else { return };
        let tallied = self
            .tallied
            .get(&id)
            .is_some_and(|t| t.epoch == epoch && seq >= t.seq);
        if tallied {
            *self
                .tallies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((id.clone(), epoch, seq))
                .or_default() += 1;
        }
        let mut delivered = self
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let newest = delivered.entry(id).or_insert(seq);
        *newest = (*newest).max(seq);
    }

    /// Counts this node's deliveries of `id` from `seq` (in `epoch`) on, for `wait` (and a
    /// second more, for clocks and hints on their way), for a notify that waits that long for
    /// them; called before the value is applied to the local slot.
    pub(super) fn tally(&self, id: &Id, seq: Seq, epoch: Epoch, wait: Duration) {
        self.tallied.insert(
            id.clone(),
            Tallied {
                seq,
                epoch,
                until: tokio::time::Instant::now() + wait + Duration::from_secs(1),
            },
        );
    }

    /// Writes the tallied deliveries noted since the last call: one pipeline of `HINCRBY`
    /// and `PEXPIRE` per id and `seq`.
    async fn write_tallies(&self) {
        let noted =
            std::mem::take(&mut *self.tallies.lock().unwrap_or_else(PoisonError::into_inner));
        if noted.is_empty() {
            return;
        }
        let noted = &noted;
        let window = u64::try_from(TALLY_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let written = self
            .link
            .call(|mut conn| async move {
                let mut pipe = redis::pipe();
                for ((id, epoch, seq), count) in noted {
                    let key = tally_key(id.as_str());
                    pipe.hincr(&key, format!("{epoch}:{seq}"), *count)
                        .ignore()
                        .pexpire(&key, i64::try_from(window).unwrap_or(i64::MAX))
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn.redis).await
            })
            .await;
        if let Err(e) = written {
            // Lost, not retried: a notify waiting on them ends at its own deadline.
            tracing::debug!(error = %e, "delivery tallies not written");
        }
    }

    /// Waits until `want` clients on any node got `seq` of `id` (or a newer value of the
    /// same epoch), or `until`; returns how many did. Reads the id's tally every
    /// [`TALLIES_EVERY`].
    pub async fn deliveries(
        &self,
        id: &Id,
        seq: Seq,
        epoch: Epoch,
        want: u32,
        until: tokio::time::Instant,
    ) -> u32 {
        let mut counted = 0;
        loop {
            let read = self
                .link
                .call(|mut conn| async move {
                    redis::cmd("HGETALL")
                        .arg(tally_key(id.as_str()))
                        .query_async::<HashMap<String, u32>>(&mut conn.redis)
                        .await
                })
                .await;
            if let Ok(tally) = read {
                counted = tally
                    .iter()
                    .filter(|(field, _)| {
                        field.split_once(':').is_some_and(|(e, s)| {
                            e.parse() == Ok(epoch) && s.parse::<Seq>().is_ok_and(|s| s >= seq)
                        })
                    })
                    .map(|(_, n)| *n)
                    .sum::<u32>();
            }
            let now = tokio::time::Instant::now();
            if counted >= want || now >= until {
                return counted;
            }
            tokio::time::sleep_until(until.min(now + TALLIES_EVERY)).await;
        }
    }

    /// Who owns `id` and where its news may go; counts as activity.
    pub async fn find(&self, id: &str) -> Result<Found, StoreError> {
        let touched = self.touch(id, None).await?;
        Ok(touched.found)
    }

    /// Begins a wait: the local slot first (so every hint from now on reaches it), then the
    /// id's value from Redis, then the decision. No notify can slip between the read and the
    /// wait: a hint that arrives meanwhile is already applied to the slot the waiter checks.
    pub async fn watch(
        &self,
        id: &str,
        since: Cursor,
        max_waiters: u32,
        hold: Hold,
    ) -> Result<Watched, StoreError> {
        let slot = self.slot(id)?;
        let waiters = slot.waiting() + 1;
        if self.is_current(&slot)
            && slot.newer_than(since).is_none()
            && self.reported.get(slot.id()).is_some_and(|n| *n == waiters)
        {
            // A client back for the next value (or another on an id this node follows): its
            // copy here is current, and Redis already counts this many waiters. Nothing to
            // read or write; the wait's end is written as any other's.
            slot.touch();
            self.metrics.local_watches.inc();
            let joined = slot.join(max_waiters);
            if slot.waiting() != waiters {
                self.waiters_changed(slot.id());
            }
            return Ok(Watched::Waiting(joined));
        }
        let mark = self.mark(Duration::ZERO);
        let touched = self.touch(id, Some(waiters)).await;
        let touched = match touched {
            Ok(touched) => touched,
            Err(e) => {
                if matches!(e, StoreError::UnknownId) {
                    self.gone(id);
                }
                return Err(e);
            }
        };
        slot.apply(touched.seq, touched.info.as_deref(), touched.epoch);
        if let Some(mark) = mark {
            slot.confirm(mark);
        }
        slot.touch();
        // What Redis now believes; the next report puts it right if no wait follows.
        self.reported.insert(slot.id().clone(), waiters);
        if hold == Hold::IfNothingNew
            && let Some(latest) = slot.newer_than(since)
        {
            // The count written above included this client; put it right soon.
            self.waiters_changed(slot.id());
            return Ok(Watched::Now(latest));
        }
        let joined = slot.join(max_waiters);
        if slot.waiting() != waiters {
            // Another client joined (or left) between the count written and this join.
            self.waiters_changed(slot.id());
        }
        Ok(Watched::Waiting(joined))
    }

    /// A mark (see [`trust`]) for a value Redis held `age` ago, or `None` without a live
    /// hint subscription: a value read then is not followed by hints.
    fn mark(&self, age: Duration) -> Option<u64> {
        self.subscribed
            .load(Ordering::Acquire)
            .then(|| self.trust.mark(age))
    }

    /// Whether `slot` holds the id's current value (see [`trust`]). A notify answered
    /// before its hint arrives is no exception: the hint wakes the wait it finds.
    fn is_current(&self, slot: &Slot) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.trust.holds(slot.confirmed())
    }

    /// A hint message's value for `slot` was taken, `age` after Redis made it.
    pub(super) fn confirmed_by_hint(&self, slot: &Slot, age: Duration) {
        if let Some(mark) = self.mark(age) {
            slot.confirm(mark);
        }
    }

    /// This node's slot for `id`, made when missing (or when the one held was closed).
    fn slot(&self, id: &str) -> Result<Arc<Slot>, StoreError> {
        if let Some(slot) = self.local.get(id)
            && !slot.is_closed()
        {
            return Ok(Arc::clone(&slot));
        }
        let id = Id::parse(id).map_err(|_| StoreError::UnknownId)?;
        let fresh = || Arc::new(Slot::new(id.clone(), Arc::from(""), None));
        let mut entry = self.local.entry(id.clone()).or_insert_with(fresh);
        if entry.is_closed() {
            *entry = fresh();
        }
        Ok(Arc::clone(&entry))
    }

    /// The id was deleted or expired: its local waiters are released as gone.
    fn gone(&self, id: &str) {
        if let Some((_, slot)) = self.local.remove(id) {
            slot.close();
        }
        self.reported.remove(id);
    }

    /// A browser's look at `id` (with this node's count of clients on it, when given), in
    /// a batch with the others made meanwhile.
    async fn touch(&self, id: &str, waiters: Option<u32>) -> Result<Touched, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Touch {
            id: id.into(),
            waiters,
            reply,
        };
        let patience = self.link.patient_timeout();
        let outcome = batch::submit(&self.touches, job, answer, patience, |jobs| {
            self.touch_batch(jobs)
        })
        .await
        .map_err(unavailable)?;
        outcome.ok_or(StoreError::UnknownId)
    }

    /// One script call for a batch of looks; each gets its own answer.
    async fn touch_batch(&self, batch: Vec<Touch>) {
        let jobs = &batch;
        let reply: Result<Vec<String>, String> = self
            .link
            .call_patient(|mut conn| async move {
                let mut touch = SCRIPTS.touch.prepare_invoke();
                touch.key(EPOCH_KEY);
                for job in jobs {
                    touch.key(id_key(&job.id));
                }
                touch
                    .arg(self.ttl_ms())
                    .arg(self.granule_ms)
                    .arg(&self.node);
                for job in jobs {
                    touch.arg(job.waiters.map(|n| n.to_string()).unwrap_or_default());
                }
                touch.invoke_async(&mut conn.redis).await
            })
            .await
            .and_then(|reply: Vec<String>| {
                if reply.len() == 1 + 4 * jobs.len() {
                    Ok(reply)
                } else {
                    Err(format!("unexpected reply {reply:?}"))
                }
            });
        let reply = match reply {
            Ok(reply) => reply,
            Err(why) => {
                for job in batch {
                    let _ = job.reply.send(Err(why.clone()));
                }
                return;
            }
        };
        let epoch: Epoch = reply[0].parse().unwrap_or_default();
        for (job, found) in batch.into_iter().zip(reply[1..].chunks_exact(4)) {
            let [app, origin, seq, info] = found else {
                continue;
            };
            let touched = (!app.is_empty()).then(|| {
                let seq = seq.parse().unwrap_or_default();
                Touched {
                    found: Found {
                        app: Arc::from(app.as_str()),
                        origin: parse_origin(origin),
                    },
                    seq,
                    // Before the first notify there is no value (an empty info is a value).
                    info: (seq > 0).then(|| info.clone()),
                    epoch,
                }
            });
            let _ = job.reply.send(Ok(touched));
        }
    }

    async fn heartbeat(&self) {
        let ttl = u64::try_from(NODE_TTL.as_millis()).unwrap_or(u64::MAX);
        let beat = self
            .link
            .call(|mut conn| async move {
                SCRIPTS
                    .heartbeat
                    .key(NODES_KEY)
                    .arg(&self.node)
                    .arg(ttl)
                    .invoke_async::<i64>(&mut conn.redis)
                    .await
            })
            .await;
        if let Err(e) = beat {
            tracing::debug!(error = %e, "heartbeat failed");
        }
    }

    /// The node's periodic work: heartbeats, waiter counts that changed, keeping the ids
    /// it waits on alive, and forgetting slots nobody waits on.
    async fn chores(self: Arc<Self>, shutdown: CancellationToken) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        let mut waiters = tokio::time::interval(WAITERS_EVERY);
        let mut tallies = tokio::time::interval(TALLIES_EVERY);
        tallies.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut delivered = tokio::time::interval(DELIVERED_EVERY);
        delivered.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A quarter of the idle time, so a waited-on id never expires.
        let refresh_every =
            (self.idle_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut refresh = tokio::time::interval(refresh_every);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    self.heartbeat().await;
                    self.update_up();
                }
                _ = waiters.tick() => self.report_waiters(false).await,
                _ = tallies.tick() => self.write_tallies().await,
                _ = delivered.tick() => self.write_delivered().await,
                () = self.counts_changed.notified() => {
                    // Gather what else changes meanwhile (a fan-out ends thousands of waits
                    // at once): one batch, not one write per waiter.
                    tokio::time::sleep(COALESCE_LEAVES).await;
                    self.report_waiters(false).await;
                }
                _ = refresh.tick() => {
                    self.report_waiters(true).await;
                    self.forget_idle();
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Writes the waiter counts that changed since last time: of the ids noted by
    /// [`Cluster::waiters_changed`], or (`all`) of every local id, and every id with waiters
    /// (which also keeps them alive).
    pub(super) async fn report_waiters(&self, all: bool) {
        let noted =
            std::mem::take(&mut *self.changed.lock().unwrap_or_else(PoisonError::into_inner));
        let mut changed = Vec::new();
        let mut consider = |id: &Id, now: u32| {
            let before = self.reported.get(id).map_or(0, |n| *n);
            if now != before || (all && now > 0) {
                changed.push((id.clone(), now));
            }
        };
        if all {
            for entry in &self.local {
                consider(entry.key(), entry.value().waiting());
            }
        } else {
            let mut noted = noted;
            noted.sort_unstable();
            noted.dedup();
            for id in &noted {
                consider(id, self.local_waiters(id.as_str()));
            }
        }
        // One script per batch: the end of a wait is activity too, as with the memory engine,
        // so each id's TTL is kept with its count.
        for chunk in changed.chunks(REPORT_BATCH) {
            let gone = self
                .link
                .call(|mut conn| async move {
                    let mut counts = SCRIPTS.counts.prepare_invoke();
                    for (id, _) in chunk {
                        counts.key(id_key(id.as_str()));
                    }
                    counts
                        .arg(self.ttl_ms())
                        .arg(self.granule_ms)
                        .arg(&self.node);
                    for (_, n) in chunk {
                        counts.arg(*n);
                    }
                    counts.invoke_async::<Vec<usize>>(&mut conn.redis).await
                })
                .await;
            let Ok(gone) = gone else {
                // Written again at the next tick: `reported` still holds the old counts.
                continue;
            };
            for (id, n) in chunk {
                if *n == 0 {
                    self.reported.remove(id);
                } else {
                    self.reported.insert(id.clone(), *n);
                }
                // A client that came or went while this was on its way (a wait begun on the
                // node's copy goes by `reported`, and was not noted): written next time.
                if self.local_waiters(id.as_str()) != *n {
                    self.waiters_changed(id);
                }
            }
            for at in gone {
                if let Some((id, _)) = at.checked_sub(1).and_then(|i| chunk.get(i)) {
                    self.gone(id.as_str());
                }
            }
        }
    }

    /// Writes the newest value delivered of each id since the last call (see the
    /// `delivered` script), in calls of [`REPORT_BATCH`] ids. Once a second at most, so that
    /// during a fan-out each id costs Redis one entry however often it was answered, and a
    /// burst of answers is written after it rather than in its midst.
    async fn write_delivered(&self) {
        let noted = std::mem::take(
            &mut *self
                .delivered
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let noted: Vec<(Id, Seq)> = noted.into_iter().collect();
        for chunk in noted.chunks(REPORT_BATCH) {
            let written = self
                .link
                .call(|mut conn| async move {
                    let mut script = SCRIPTS.delivered.prepare_invoke();
                    for (id, _) in chunk {
                        script.key(id_key(id.as_str()));
                    }
                    for (_, seq) in chunk {
                        script.arg(*seq);
                    }
                    script.invoke_async::<i64>(&mut conn.redis).await
                })
                .await;
            if written.is_err() {
                // Written at the next tick, unless newer deliveries came meanwhile.
                let mut again = self
                    .delivered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for (id, seq) in chunk {
                    let at = again.entry(id.clone()).or_insert(*seq);
                    *at = (*at).max(*seq);
                }
            }
        }
    }

    /// Drops local slots nobody has waited on for a while (a poll brings them back).
    fn forget_idle(&self) {
        self.local
            .retain(|_, slot| slot.waiting() > 0 || slot.idle() < FORGET_AFTER);
        let now = tokio::time::Instant::now();
        self.tallied.retain(|_, t| t.until > now);
    }
}

/// A notify waiting for its batch.
#[derive(Debug)]
struct Notify {
    app: Arc<str>,
    id: Box<str>,
    info: Box<str>,
    /// This node's clients on the id when the notify was made.
    waiters: u32,
    /// The Redis key of its idempotency record, if it has one.
    once: Option<Box<str>>,
    /// The app's notify rate (its own, or the server's).
    rate: RateLimit,
    /// How long its notify waits for its deliveries (`?wait=`), if it does.
    track: Option<Duration>,
    reply: batch::Answer<Notified>,
}

/// A notify whose deliveries a node counts (see [`Cluster::tally`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tallied {
    seq: Seq,
    epoch: Epoch,
    until: tokio::time::Instant,
}

impl batch::Job for Notify {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A browser's look waiting for its batch.
#[derive(Debug)]
struct Touch {
    id: Box<str>,
    /// This node's clients on the id, to be written with the look.
    waiters: Option<u32>,
    reply: batch::Answer<Option<Touched>>,
}

impl batch::Job for Touch {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// What Redis made of one notify.
#[derive(Debug)]
enum Notified {
    Done {
        seq: u64,
        waiting: u32,
        epoch: Epoch,
    },
    Unknown,
    RateLimited(Duration),
}

/// How a watch began on this node.
#[derive(Debug)]
pub enum Watched {
    /// With a value the client has not seen.
    Now(Latest),
    /// With a waiting place.
    Waiting(Joined),
}

/// What a browser's look at an id found.
#[derive(Debug)]
struct Touched {
    found: Found,
    seq: u64,
    info: Option<String>,
    epoch: Epoch,
}

fn parse_origin(text: &str) -> Option<Origin> {
    (!text.is_empty())
        .then(|| Origin::parse(text).ok())
        .flatten()
}

fn wait_of(reply: &[String]) -> Duration {
    let ms = reply.get(1).and_then(|ms| ms.parse().ok()).unwrap_or(1000);
    Duration::from_millis(ms)
}

/// Milliseconds since the Unix epoch, for hint lag.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
