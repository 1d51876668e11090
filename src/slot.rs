//! The domain core: one id's latest value, its sequence number, and the clients waiting on it.
//!
//! A slot keeps only the newest info: several notifies before a pickup collapse into the last,
//! and `seq` counts them so a client can tell whether it has seen the newest one. Waiting is
//! built on [`tokio::sync::Notify`]: a waiter registers for the wake-up *before* it looks at
//! `seq`, so a notify can never slip in between the look and the sleep.
//!
//! An id has a fixed number of waiting places, and the newest waiter wins: a client joining a
//! full id takes the place of the one that has waited longest, which is released (told to come
//! back, with its cursor). Anyone who knows an id may wait on it, so a cap that refused
//! newcomers would let a stranger holding every place keep the id's own page out for as long as
//! they liked; this way a page always gets in at once, and a released client loses nothing,
//! since it asks again from the `seq` it has seen.
//!
//! No axum, no I/O. Waiting is tested with tokio's paused time; idleness is counted in
//! wall-clock milliseconds (it survives restarts in snapshots, in whole seconds), delivery
//! time on a monotonic clock.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use compact_str::CompactString;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::id::Id;
use crate::origin::Origin;

/// The number of notifies an id has received. Starts at 0; +1 per notify.
pub type Seq = u64;

/// Which life of the shared state a `seq` belongs to. 0 with the memory engine (a `seq` only
/// ever moves forward there); with Redis a random number that changes whenever Redis may
/// have lost writes (a restart, a failover), so that a `seq` counted again from an older
/// state is never taken for one the client has already seen.
pub type Epoch = u32;

/// What a client has seen: a `seq`, and the epoch it was counted in when the client knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The newest `seq` seen.
    pub seq: Seq,
    /// Its epoch: `None` from a client that does not deal in epochs (it is answered as
    /// before epochs existed), `Some(0)` from one that does but has not learnt one yet.
    pub epoch: Option<Epoch>,
}

impl From<Seq> for Cursor {
    fn from(seq: Seq) -> Self {
        Self { seq, epoch: None }
    }
}

impl Cursor {
    /// True when `latest` is something this client has not seen.
    pub fn is_behind(&self, latest: &Latest) -> bool {
        latest.seq != self.seq || self.other_epoch(latest)
    }

    /// True when `latest` is not a continuation of what this client saw: another epoch, or
    /// a `seq` below its cursor. The client must forget its old `seq`s (`reset`).
    pub fn is_reset_by(&self, latest: &Latest) -> bool {
        latest.seq < self.seq || self.other_epoch(latest)
    }

    fn other_epoch(&self, latest: &Latest) -> bool {
        self.epoch.is_some_and(|e| e != 0 && e != latest.epoch)
    }
}

/// One id and everything known about it.
#[derive(Debug)]
pub struct Slot {
    id: Id,
    /// The name of the app that created the id; only that app may notify, read or delete it.
    app: Arc<str>,
    /// The origin whose pages may receive this id's news, or `None` for any origin of the app.
    origin: Option<Origin>,
    /// Unix seconds; whole seconds are all the API shows, and half the size of a `SystemTime`.
    created_at: u64,
    /// The newest value and the waiting places, under one lock: a waiter looks at both at once.
    state: Mutex<State>,
    /// Unix milliseconds of the last poll or notify, for `idle_secs` and expiry. Whole
    /// seconds would let an id expire up to a second before its idle time is up.
    last_active: AtomicU64,
    /// Clients holding one of the id's waiting places right now: the length of
    /// [`Places::held`], kept beside it so the hot paths read it without the lock.
    waiting: AtomicU32,
    /// When the newest value was published, in [`micros`]: for the delivery-latency metric.
    published_at: AtomicU32,
    deleted: AtomicBool,
    /// Where an engine across the network last knew this slot's value to be current: for the
    /// Redis engine, a mark of its hint stream (`store/cluster/trust.rs`); 0 for never. The
    /// memory engine, which is the truth itself, leaves it alone.
    confirmed: AtomicU64,
    changed: Notify,
}

/// What a slot's lock guards.
#[derive(Debug)]
struct State {
    latest: Latest,
    /// `None` until the first client waits: most stored ids are never waited on, so their
    /// slots stay one pointer larger, not a ticket list larger.
    places: Option<Box<Places>>,
}

/// Who holds a slot's waiting places, by ticket. Each join takes the next ticket, so `held`
/// is in join order, oldest first; a released waiter's ticket is gone from it. Also what
/// was delivered: only ids that clients look at have one.
#[derive(Debug, Default)]
struct Places {
    /// The ticket of the next join. Never reused in the life of the slot, so a released
    /// waiter cannot mistake a newer waiter's ticket for its own.
    next: u64,
    /// The tickets of the waiters holding places, ascending.
    held: VecDeque<u64>,
    /// The newest delivery, if any.
    delivered: Option<Delivery>,
    /// The tallies of notifies that wait for their deliveries (`?wait=`); dead ones (their
    /// notify has answered) are dropped at the next delivery or tallied publish.
    tallies: Vec<Weak<Tally>>,
}

/// The newest value of an id that reached a client: its `seq`, first handed to a client's
/// connection at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The `seq` delivered.
    pub seq: Seq,
    /// When it first was handed to a client's connection.
    pub at: SystemTime,
}

/// The deliveries of one notify's value (or a newer one) so far: what a notify with
/// `?wait=` waits on. Counted by [`Slot::delivered`].
#[derive(Debug)]
pub struct Tally {
    seq: Seq,
    epoch: Epoch,
    count: AtomicU32,
    changed: Notify,
}

impl Tally {
    /// A tally of the deliveries of `seq` (or newer) in `epoch`.
    pub fn new(seq: Seq, epoch: Epoch) -> Self {
        Self {
            seq,
            epoch,
            count: AtomicU32::new(0),
            changed: Notify::new(),
        }
    }

    /// How many clients got the value (or a newer one) so far.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until at least `want` clients got the value; may wait forever (callers bound it).
    pub async fn reached(&self, want: u32) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if self.count() >= want {
                return;
            }
            changed.await;
        }
    }

    fn add(&self, seq: Seq, epoch: Epoch) {
        if epoch == self.epoch && seq >= self.seq {
            self.count.fetch_add(1, Ordering::AcqRel);
            self.changed.notify_waiters();
        }
    }
}

/// The newest value of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    /// How many notifies the id has received.
    pub seq: Seq,
    /// The info of the newest notify; `None` before the first. Stored inline up to 24 bytes
    /// (most infos are sequence numbers), so a typical id is one allocation, not two.
    pub info: Option<CompactString>,
    /// The epoch `seq` was counted in.
    pub epoch: Epoch,
}

/// What a snapshot keeps of a slot besides its id, app and origin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    /// The newest value's sequence number.
    pub seq: Seq,
    /// The newest value.
    pub info: Option<CompactString>,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Unix seconds of the last poll or notify.
    pub last_active: u64,
}

/// What a notify did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The id's new sequence number.
    pub seq: Seq,
    /// How many clients were waiting and have been woken.
    pub waiting: u32,
}

/// How a wait ended. Shutting down is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// There is a value the client has not seen. `woken` when it was published while the
    /// client waited (a delivery), rather than found at once.
    Value {
        /// The value.
        latest: Latest,
        /// Published while the client waited.
        woken: bool,
    },
    /// The id was deleted while the client waited.
    Gone,
    /// A newer client took this one's waiting place (the id had all its places taken). The
    /// client should ask again shortly with the same cursor; it has missed nothing.
    Released,
    /// The server is shutting down; the client should ask again (elsewhere, or later).
    ShuttingDown,
}

/// A client that took one of an id's waiting places.
#[derive(Debug)]
pub struct Joined {
    /// The place.
    pub waiter: Waiter,
    /// How many waiters were released to make room: 1 when the id was full, else 0.
    pub released: usize,
}

impl Slot {
    /// A fresh slot at `seq` 0 with no value.
    pub fn new(id: Id, app: Arc<str>, origin: Option<Origin>) -> Self {
        let now = SystemTime::now();
        Self {
            id,
            app,
            origin,
            created_at: unix_secs(now),
            state: Mutex::new(State {
                latest: Latest {
                    seq: 0,
                    info: None,
                    epoch: 0,
                },
                places: None,
            }),
            last_active: AtomicU64::new(unix_millis(now)),
            waiting: AtomicU32::new(0),
            published_at: AtomicU32::new(micros()),
            deleted: AtomicBool::new(false),
            confirmed: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// A slot as a snapshot saved it.
    pub fn restore(id: Id, app: Arc<str>, origin: Option<Origin>, saved: Saved) -> Self {
        Self {
            id,
            app,
            origin,
            created_at: saved.created_at,
            state: Mutex::new(State {
                latest: Latest {
                    seq: saved.seq,
                    info: saved.info,
                    epoch: 0,
                },
                places: None,
            }),
            last_active: AtomicU64::new(saved.last_active.saturating_mul(1000)),
            waiting: AtomicU32::new(0),
            published_at: AtomicU32::new(micros()),
            deleted: AtomicBool::new(false),
            confirmed: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// What a snapshot keeps of this slot.
    pub fn save(&self) -> Saved {
        let latest = self.latest();
        Saved {
            seq: latest.seq,
            info: latest.info,
            created_at: self.created_at,
            last_active: self.last_active.load(Ordering::Relaxed) / 1000,
        }
    }

    /// The slot's id.
    pub fn id(&self) -> &Id {
        &self.id
    }

    /// The name of the app that owns the id.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The name of the app that owns the id, shared.
    pub fn app_name(&self) -> &Arc<str> {
        &self.app
    }

    /// The origin the id is bound to, if any.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// When the id was created.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.created_at)
    }

    /// Whole seconds since the last poll or notify.
    pub fn idle_secs(&self) -> u64 {
        self.idle().as_secs()
    }

    /// Time since the last poll or notify, to the millisecond.
    pub fn idle(&self) -> Duration {
        let last = self.last_active.load(Ordering::Relaxed);
        Duration::from_millis(unix_millis(SystemTime::now()).saturating_sub(last))
    }

    /// True when nobody waits on the id and it has been idle for `ttl`.
    pub fn is_expired(&self, ttl: Duration) -> bool {
        self.waiting() == 0 && self.idle() >= ttl
    }

    /// Time since the newest value was published (meaningful for up to an hour).
    pub fn since_published(&self) -> Duration {
        let then = self.published_at.load(Ordering::Relaxed);
        Duration::from_micros(u64::from(micros().wrapping_sub(then)))
    }

    /// How many clients are waiting right now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    /// The newest value.
    pub fn latest(&self) -> Latest {
        self.lock().latest.clone()
    }

    /// Stores `info` as the newest value, bumps `seq` and wakes every waiting client.
    pub fn publish(&self, info: &str) -> Published {
        self.publish_then(info, |_, _| ()).0
    }

    /// [`Slot::publish`], with a tally of the deliveries of the new value (or a newer one)
    /// that begins before any waiter is woken, so that none is missed.
    pub fn publish_tallied(&self, info: &str) -> (Published, Arc<Tally>) {
        self.publish_then(info, |state, latest| {
            let tally = Arc::new(Tally::new(latest.seq, latest.epoch));
            let places = state.get_or_insert_with(Box::default);
            places.tallies.retain(|t| t.strong_count() > 0);
            places.tallies.push(Arc::downgrade(&tally));
            tally
        })
    }

    /// Publishes `info`, running `stored` on the places and the new value under the same lock,
    /// before anyone is woken.
    fn publish_then<T>(
        &self,
        info: &str,
        stored: impl FnOnce(&mut Option<Box<Places>>, &Latest) -> T,
    ) -> (Published, T) {
        let (seq, then) = {
            let mut state = self.lock();
            let State { latest, places } = &mut *state;
            // Overflow would take 2^64 notifies; unreachable in the life of any deployment.
            latest.seq += 1;
            // A copy, never a slice of a request buffer: a stored value must not pin one.
            latest.info = Some(CompactString::from(info));
            self.published_at.store(micros(), Ordering::Relaxed);
            (latest.seq, stored(places, latest))
        };
        self.touch();
        let waiting = self.waiting();
        self.changed.notify_waiters();
        (Published { seq, waiting }, then)
    }

    /// Records that a client's answer with `seq` (counted in `epoch`) was handed to its
    /// connection: the newest delivery, and a delivery for every notify waiting on one. A
    /// value of another epoch than the slot's is ignored.
    pub fn delivered(&self, seq: Seq, epoch: Epoch) {
        let mut state = self.lock();
        if state.latest.epoch != epoch || seq > state.latest.seq {
            return;
        }
        let places = state.places.get_or_insert_with(Box::default);
        // The first time a `seq` reaches a client: later deliveries of it change nothing.
        if places.delivered.is_none_or(|d| seq > d.seq) {
            places.delivered = Some(Delivery {
                seq,
                at: SystemTime::now(),
            });
        }
        places.tallies.retain(|tally| match tally.upgrade() {
            Some(tally) => {
                tally.add(seq, epoch);
                true
            }
            None => false,
        });
    }

    /// The newest delivery of a value of the slot's current epoch, if any.
    pub fn last_delivery(&self) -> Option<Delivery> {
        self.lock().places.as_ref().and_then(|p| p.delivered)
    }

    /// Marks the slot deleted and releases every waiting client with [`WaitOutcome::Gone`].
    pub fn close(&self) {
        self.deleted.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// True once [`Slot::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The value a client that has seen `since` should get at once, if any.
    ///
    /// Any `seq` other than `since` answers at once: greater means news; smaller means the
    /// client saw an earlier life of this id (say, before a restart without persistence), and
    /// the answer lets it resynchronise its cursor instead of waiting for a `seq` that may
    /// never come.
    pub fn newer_than(&self, since: impl Into<Cursor>) -> Option<Latest> {
        let since = since.into();
        let latest = &self.lock().latest;
        since.is_behind(latest).then(|| latest.clone())
    }

    /// Takes a value counted elsewhere (another node's notify, read from the shared state) if
    /// it is newer than this slot's: another epoch, or the same epoch and a greater `seq`.
    /// Wakes the waiting clients when it is; an older or equal value changes nothing, so hints
    /// and reads may arrive in any order. Returns whether the value was taken.
    pub fn apply(&self, seq: Seq, info: Option<&str>, epoch: Epoch) -> bool {
        {
            let mut state = self.lock();
            if state.latest.epoch != epoch
                && let Some(places) = state.places.as_mut()
            {
                // What was delivered in the old life says nothing of this one.
                places.delivered = None;
            }
            let latest = &mut state.latest;
            if latest.epoch == epoch && seq <= latest.seq {
                return false;
            }
            latest.seq = seq;
            latest.info = info.map(CompactString::from);
            latest.epoch = epoch;
            self.published_at.store(micros(), Ordering::Relaxed);
        }
        self.changed.notify_waiters();
        true
    }

    /// Records where this slot's value was last known to be current (see [`Slot::confirmed`]).
    pub fn confirm(&self, mark: u64) {
        self.confirmed.store(mark, Ordering::Release);
    }

    /// What [`Slot::confirm`] last recorded, or 0.
    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Acquire)
    }

    /// Counts a poll as activity, for idleness.
    pub fn touch(&self) {
        self.last_active
            .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
    }

    /// Takes one of the id's `max` waiting places. When all are taken, the waiter that joined
    /// first is released to make room (newest wins: see the module doc) and woken, to return
    /// [`WaitOutcome::Released`] unless it has a value to deliver first. The place is given
    /// back when the returned waiter is dropped, however the wait ends (including the client
    /// going away).
    pub fn join(self: &Arc<Self>, max: u32) -> Joined {
        let max = usize::try_from(max.max(1)).unwrap_or(usize::MAX);
        let (ticket, released) = {
            let mut state = self.lock();
            let places = state.places.get_or_insert_with(Box::default);
            let ticket = places.next;
            // Overflow would take 2^64 joins on one id.
            places.next += 1;
            let mut released = 0;
            while places.held.len() >= max {
                places.held.pop_front();
                released += 1;
            }
            places.held.push_back(ticket);
            self.set_waiting(places.held.len());
            (ticket, released)
        };
        if released > 0 {
            // Every waiter looks again; only the released one finds its ticket gone.
            self.changed.notify_waiters();
        }
        Joined {
            waiter: Waiter {
                slot: Arc::clone(self),
                ticket,
            },
            released,
        }
    }

    /// What a waiter holding `ticket` with cursor `since` should do now, if anything but
    /// wait: a value wins over a release, so a released client never misses one it was owed.
    fn wake_for(&self, since: Cursor, ticket: u64) -> Option<Wake> {
        let state = self.lock();
        if since.is_behind(&state.latest) {
            return Some(Wake::Value(state.latest.clone()));
        }
        let holds = state
            .places
            .as_ref()
            .is_some_and(|places| places.held.binary_search(&ticket).is_ok());
        (!holds).then_some(Wake::Released)
    }

    /// Gives `ticket`'s place back, unless it was released already.
    fn leave(&self, ticket: u64) {
        let mut state = self.lock();
        if let Some(places) = state.places.as_mut()
            && let Ok(at) = places.held.binary_search(&ticket)
        {
            places.held.remove(at);
            self.set_waiting(places.held.len());
        }
    }

    fn set_waiting(&self, held: usize) {
        self.waiting
            .store(u32::try_from(held).unwrap_or(u32::MAX), Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is only held to copy or replace a value, or to push or pop a ticket; a
        // panic while holding it cannot leave them inconsistent, so a poisoned lock is still
        // good data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A client holding one of a slot's waiting places.
#[derive(Debug)]
pub struct Waiter {
    slot: Arc<Slot>,
    ticket: u64,
}

/// Why a waiter stops waiting, short of a delete or a shutdown.
#[derive(Debug)]
enum Wake {
    /// A value the waiter has not seen.
    Value(Latest),
    /// The waiter's place went to a newer client.
    Released,
}

impl Waiter {
    /// Waits until the slot has a value other than `since`, the slot is deleted, this waiter
    /// is released or `shutdown` is cancelled. May wait forever: callers bound it
    /// (`tokio::time::timeout_at` for a poll; the client going away for a stream).
    pub async fn wait_after(
        &self,
        since: impl Into<Cursor>,
        shutdown: &CancellationToken,
    ) -> WaitOutcome {
        let since = since.into();
        let slot = &self.slot;
        let mut woken = false;
        loop {
            // Register first, then look: a publish between the look and the sleep still
            // wakes this future, because it is already enabled.
            let mut changed = pin!(slot.changed.notified());
            changed.as_mut().enable();
            if slot.is_closed() {
                return WaitOutcome::Gone;
            }
            match slot.wake_for(since, self.ticket) {
                Some(Wake::Value(latest)) => return WaitOutcome::Value { latest, woken },
                Some(Wake::Released) => return WaitOutcome::Released,
                None => {}
            }
            tokio::select! {
                () = &mut changed => {}
                () = shutdown.cancelled() => return WaitOutcome::ShuttingDown,
            }
            woken = true;
        }
    }
}

impl Waiter {
    /// The slot waited on.
    pub fn slot(&self) -> &Slot {
        &self.slot
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // The end of a wait is activity too: an id whose stream just closed is not idle.
        self.slot.touch();
        self.slot.leave(self.ticket);
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Microseconds on a monotonic clock, wrapping every 71 minutes: four bytes per slot are
/// enough to time a delivery, which takes milliseconds.
fn micros() -> u32 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    // Truncation is the point: differences are taken with wrapping arithmetic.
    #[allow(clippy::cast_possible_truncation)]
    let micros = START.elapsed().as_micros() as u32;
    micros
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn slot() -> Arc<Slot> {
        Arc::new(Slot::new(
            Id::parse("test-id-0123456789").unwrap(),
            Arc::from("app"),
            None,
        ))
    }

    #[test]
    fn a_tally_counts_deliveries_of_its_value_or_a_newer_one_in_its_epoch() {
        let s = slot();
        s.publish("a");
        let (published, tally) = s.publish_tallied("b");
        assert_eq!(published.seq, 2);
        s.delivered(1, 0); // an older value: not this notify's
        s.delivered(2, 0);
        s.delivered(2, 7); // another epoch: ignored
        s.publish("c");
        s.delivered(3, 0); // a newer one counts: the client has this notify's news
        assert_eq!(tally.count(), 2);
        assert_eq!(s.last_delivery().map(|d| d.seq), Some(3));
        // A value the slot has not got yet is no delivery.
        s.delivered(9, 0);
        assert_eq!(
            (tally.count(), s.last_delivery().map(|d| d.seq)),
            (2, Some(3))
        );
    }

    #[test]
    fn the_newest_delivery_keeps_the_time_a_seq_first_reached_a_client() {
        let s = slot();
        assert_eq!(s.last_delivery(), None);
        s.publish("a");
        s.delivered(1, 0);
        let first = s.last_delivery().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        s.delivered(1, 0);
        assert_eq!(s.last_delivery(), Some(first));
        // Another epoch (cluster mode, Redis lost writes) forgets it.
        s.apply(1, Some("x"), 5);
        assert_eq!(s.last_delivery(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tally_wakes_its_notify_when_enough_clients_got_the_value() {
        let s = slot();
        let (_, tally) = s.publish_tallied("a");
        let waiting = tokio::spawn({
            let tally = Arc::clone(&tally);
            async move { tally.reached(2).await }
        });
        s.delivered(1, 0);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        s.delivered(1, 0);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .unwrap();
        // Once its notify has answered, a tally is dropped at the next delivery.
        drop(tally);
        s.delivered(1, 0);
        assert!(s.lock().places.as_ref().unwrap().tallies.is_empty());
    }

    #[test]
    fn notifies_collapse_into_the_newest() {
        let s = slot();
        s.publish("a");
        s.publish("b");
        let p = s.publish("c");
        assert_eq!(p, Published { seq: 3, waiting: 0 });
        assert_eq!(
            s.newer_than(0),
            Some(Latest {
                seq: 3,
                info: Some("c".into()),
                epoch: 0,
            })
        );
        assert_eq!(s.newer_than(3), None);
    }

    #[test]
    fn a_cursor_from_an_earlier_life_resynchronises() {
        let s = slot();
        assert_eq!(
            s.newer_than(7),
            Some(Latest {
                seq: 0,
                info: None,
                epoch: 0
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_woken_by_publish() {
        let s = slot();
        let w = s.join(8).waiter;
        let token = CancellationToken::new();
        let wait = tokio::spawn({
            let token = token.clone();
            async move { w.wait_after(0, &token).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(s.waiting(), 1);
        let p = s.publish("x");
        assert_eq!(p.waiting, 1);
        assert_eq!(
            wait.await.unwrap(),
            WaitOutcome::Value {
                latest: Latest {
                    seq: 1,
                    info: Some("x".into()),
                    epoch: 0,
                },
                woken: true
            }
        );
        assert_eq!(s.waiting(), 0, "the place is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_already_there_is_not_a_wake_up() {
        let s = slot();
        s.publish("x");
        let w = s.join(8).waiter;
        let out = w.wait_after(0, &CancellationToken::new()).await;
        assert!(matches!(out, WaitOutcome::Value { woken: false, .. }));
    }

    #[test]
    fn an_id_expires_only_when_idle_and_unwatched() {
        let s = slot();
        assert!(!s.is_expired(Duration::from_secs(60)));
        // Not counted in whole seconds: a second boundary passing is not a second of idleness.
        assert!(!s.is_expired(Duration::from_millis(900)));
        assert!(s.is_expired(Duration::ZERO), "idle for 0 s already");
        let w = s.join(8).waiter;
        assert!(!s.is_expired(Duration::ZERO), "a waiting client keeps it");
        drop(w);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_until_something_happens() {
        let s = slot();
        let w = s.join(8).waiter;
        let token = CancellationToken::new();
        let out = tokio::time::timeout(Duration::from_secs(3600), w.wait_after(0, &token)).await;
        assert!(out.is_err(), "nothing happened, so the wait is still going");
    }

    #[tokio::test(start_paused = true)]
    async fn close_releases_waiters_as_gone() {
        let s = slot();
        let w = s.join(8).waiter;
        let wait = tokio::spawn(async move { w.wait_after(0, &CancellationToken::new()).await });
        tokio::task::yield_now().await;
        s.close();
        assert_eq!(wait.await.unwrap(), WaitOutcome::Gone);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_waiters() {
        let s = slot();
        let w = s.join(8).waiter;
        let token = CancellationToken::new();
        token.cancel();
        assert_eq!(w.wait_after(0, &token).await, WaitOutcome::ShuttingDown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_id_releases_its_oldest_waiter_for_the_newest() {
        let s = slot();
        let token = CancellationToken::new();
        let wait = |w: Waiter| {
            let token = token.clone();
            tokio::spawn(async move { w.wait_after(0, &token).await })
        };
        let first = s.join(2);
        let second = s.join(2);
        assert_eq!((first.released, second.released), (0, 0));
        let (first, second) = (wait(first.waiter), wait(second.waiter));
        tokio::task::yield_now().await;

        let third = s.join(2);
        assert_eq!(third.released, 1);
        assert_eq!(s.waiting(), 2);
        assert_eq!(first.await.unwrap(), WaitOutcome::Released);
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "only the oldest is released");

        let fourth = s.join(2);
        assert_eq!(fourth.released, 1);
        assert_eq!(second.await.unwrap(), WaitOutcome::Released);
        assert_eq!(
            s.waiting(),
            2,
            "released waiters gave their places to the newer ones"
        );
        drop(third);
        assert_eq!(s.waiting(), 1);
        drop(fourth);
        assert_eq!(s.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_waiter_still_gets_the_value_it_is_owed() {
        let s = slot();
        let token = CancellationToken::new();
        let owed = s.join(1).waiter;
        s.publish("x");
        let _newer = s.join(1);
        assert_eq!(
            owed.wait_after(0, &token).await,
            WaitOutcome::Value {
                latest: Latest {
                    seq: 1,
                    info: Some("x".into()),
                    epoch: 0,
                },
                woken: false
            },
            "a value wins over a release"
        );
        assert_eq!(owed.wait_after(1, &token).await, WaitOutcome::Released);
        drop(owed);
        assert_eq!(s.waiting(), 1, "a released waiter gives back no place");
    }

    #[test]
    fn places_are_given_back_in_any_order() {
        let s = slot();
        let first = s.join(3).waiter;
        let second = s.join(3).waiter;
        let third = s.join(3).waiter;
        drop(second);
        assert_eq!(s.waiting(), 2);
        let fourth = s.join(3);
        assert_eq!((fourth.released, s.waiting()), (0, 3), "a free place");
        let fifth = s.join(3);
        assert_eq!(
            (fifth.released, s.waiting()),
            (1, 3),
            "the first is the oldest"
        );
        drop(first);
        assert_eq!(s.waiting(), 3);
        drop((third, fourth, fifth));
        assert_eq!(s.waiting(), 0);
        assert!(s.is_expired(Duration::ZERO), "no place is left held");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_release_is_lost_under_racing_joins_and_publishes() {
        // Each round: a waiter holding the only place races a newcomer that releases it and a
        // publish. It must end at once, with the value or released, never sleep on.
        let s = slot();
        let token = CancellationToken::new();
        for round in 0..1_000u64 {
            let w = s.join(1).waiter;
            let waiter = tokio::spawn({
                let token = token.clone();
                async move { w.wait_after(round, &token).await }
            });
            let newcomer = tokio::spawn({
                let s = Arc::clone(&s);
                async move { s.join(1) }
            });
            let publisher = tokio::spawn({
                let s = Arc::clone(&s);
                async move { s.publish(&round.to_string()) }
            });
            let newcomer = newcomer.await.unwrap();
            publisher.await.unwrap();
            let out = tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("a release or a wake-up was lost")
                .unwrap();
            assert!(
                matches!(&out, WaitOutcome::Released)
                    || matches!(&out, WaitOutcome::Value { latest, .. } if latest.seq == round + 1),
                "{out:?}"
            );
            // (0 when the waiter had its value and left before the newcomer came.)
            assert!(newcomer.released <= 1);
            drop(newcomer);
            assert_eq!(s.waiting(), 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_up_is_lost_under_racing_publishes() {
        // Each round: a waiter at `since` races a publish. Whatever the interleaving, the
        // waiter must return the new value rather than sleep to its (far) deadline.
        let s = slot();
        let token = CancellationToken::new();
        for round in 0..2_000u64 {
            let w = s.join(8).waiter;
            let waiter = tokio::spawn({
                let token = token.clone();
                async move { w.wait_after(round, &token).await }
            });
            let publisher = tokio::spawn({
                let s = Arc::clone(&s);
                async move { s.publish(&round.to_string()) }
            });
            publisher.await.unwrap();
            let out = tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("a wake-up was lost")
                .unwrap();
            assert!(
                matches!(out, WaitOutcome::Value { latest: Latest { seq, .. }, .. } if seq == round + 1)
            );
        }
    }
}
