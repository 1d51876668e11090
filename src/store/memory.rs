//! The memory engine: every id's slot, found by id, in this process.
//!
//! A sharded [`DashMap`] from id to slot; a waiting client holds an `Arc<Slot>` out of it and
//! waits on that without holding any map guard. It decides ownership (an id belongs to the app
//! that created it, and to another app it simply does not exist) and enforces `max_ids` and
//! each app's quota exactly, even under concurrent creates. It knows nothing of HTTP.
//!
//! Snapshots ([`crate::snapshot`]) and the expiry sweep ([`crate::housekeeping`]) are this
//! engine's chores; the HTTP side reaches it only through [`super::Store`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::auth::App;
use crate::id::Id;
use crate::origin::Origin;
use crate::slot::{Published, Slot, Tally};

use super::{CreateError, UnknownId};

/// All ids and their slots.
#[derive(Debug)]
pub struct Memory {
    slots: DashMap<Id, Arc<Slot>>,
    /// Ids in `slots`, kept beside the map because `DashMap::len` locks every shard.
    count: AtomicUsize,
    max_ids: usize,
    /// How many ids each app holds, by app name; its quota is its [`App::max_ids`] at the
    /// time of each create, so an app registered or changed at runtime needs nothing here.
    held: DashMap<Arc<str>, AtomicUsize>,
    /// Ids idle this long are gone; `None`: ids live until deleted.
    idle_ttl: Option<Duration>,
    /// Bumped by every create, notify and delete, so snapshots are written only after a change.
    changes: AtomicU64,
}

/// Shards of the map. Many small shards keep every lock short: the expiry sweep and snapshots
/// lock one shard at a time, and at a million ids a shard is ~4,000 of them (tens of
/// microseconds to scan) instead of ~60,000 with `DashMap`'s default for two cores.
const SHARDS: usize = 256;

impl Memory {
    /// An empty store that will hold at most `max_ids` ids.
    pub fn new(max_ids: usize) -> Self {
        Self {
            slots: DashMap::with_shard_amount(SHARDS),
            count: AtomicUsize::new(0),
            max_ids,
            held: DashMap::new(),
            idle_ttl: None,
            changes: AtomicU64::new(0),
        }
    }

    /// How many ids `app` holds.
    pub fn held_by(&self, app: &str) -> usize {
        self.held
            .get(app)
            .map_or(0, |held| held.load(Ordering::Acquire))
    }

    /// The same store, where ids neither polled nor notified for `ttl` no longer exist.
    #[must_use]
    pub fn with_idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = Some(ttl);
        self
    }

    /// How many ids exist.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// True when no id exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Creates `id` (or a fresh random one) for `app`, bound to `origin`.
    pub fn create(
        &self,
        app: &App,
        id: Option<Id>,
        origin: Option<Origin>,
    ) -> Result<Arc<Slot>, CreateError> {
        let id = match id {
            Some(id) => id,
            None => Id::generate()?,
        };
        // The shard stays locked from the vacancy check to the insert, so two creates of one
        // id cannot both succeed; the counters are reserved inside that window, so neither
        // `max_ids` nor an app's quota is ever exceeded, even by creates of different ids
        // racing each other.
        match self.slots.entry(id.clone()) {
            // An expired id the sweep has not reached yet is as good as gone: its place is
            // taken over (the count stays as it is: one id out, one in; the quota moves from
            // the old owner to the new one, if they differ).
            Entry::Occupied(mut occupied)
                if self
                    .idle_ttl
                    .is_some_and(|ttl| occupied.get().is_expired(ttl)) =>
            {
                let previous = Arc::clone(occupied.get());
                let same_app = previous.app() == &**app.name();
                if !same_app {
                    self.reserve_for(app)?;
                }
                let slot = Arc::new(Slot::new(id, Arc::clone(app.name()), origin));
                occupied.insert(Arc::clone(&slot)).close();
                if !same_app {
                    self.release_for(previous.app());
                }
                self.changed();
                Ok(slot)
            }
            Entry::Occupied(_) => Err(CreateError::Taken),
            Entry::Vacant(vacant) => {
                // The app's quota first: an app at its quota is told so, not that the server
                // is full.
                self.reserve_for(app)?;
                if let Err(full) = self.reserve() {
                    self.release_for(app.name());
                    return Err(full);
                }
                let slot = Arc::new(Slot::new(id, Arc::clone(app.name()), origin));
                vacant.insert(Arc::clone(&slot));
                self.changed();
                Ok(slot)
            }
        }
    }

    /// The slot of `id`, whoever owns it (the browser side has no app). An id past its idle
    /// time is not returned even before the sweep has removed it.
    pub fn get(&self, id: &str) -> Option<Arc<Slot>> {
        let slot = self.slots.get(id).map(|slot| Arc::clone(slot.value()))?;
        match self.idle_ttl {
            Some(ttl) if slot.is_expired(ttl) => None,
            _ => Some(slot),
        }
    }

    /// The slot of `id` if `app` owns it.
    pub fn get_owned(&self, app: &App, id: &str) -> Result<Arc<Slot>, UnknownId> {
        self.get(id)
            .filter(|slot| slot.app() == &**app.name())
            .ok_or(UnknownId)
    }

    /// Stores `info` as the newest value of `app`'s `id` and wakes its waiting clients.
    pub fn publish(&self, app: &App, id: &str, info: &str) -> Result<Published, UnknownId> {
        let published = self.get_owned(app, id)?.publish(info);
        self.changed();
        Ok(published)
    }

    /// [`Memory::publish`], with a tally of the value's deliveries (see [`Slot::publish_tallied`]).
    pub fn publish_tallied(
        &self,
        app: &App,
        id: &str,
        info: &str,
    ) -> Result<(Published, Arc<Tally>), UnknownId> {
        let published = self.get_owned(app, id)?.publish_tallied(info);
        self.changed();
        Ok(published)
    }

    /// Deletes `app`'s `id`; its waiting clients are released at once as gone.
    pub fn remove(&self, app: &App, id: &str) -> Result<(), UnknownId> {
        let (_, slot) = self
            .slots
            .remove_if(id, |_, slot| slot.app() == &**app.name())
            .ok_or(UnknownId)?;
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.release_for(slot.app());
        slot.close();
        self.changed();
        Ok(())
    }

    /// Deletes every id idle for longer than the idle time, and returns how many. Expired
    /// ids are found one shard at a time under its read lock, then each is removed on its
    /// own, checked again under its shard's write lock (it may have been polled meanwhile):
    /// no lock is ever held across the whole map or for long.
    pub fn expire_idle(&self) -> usize {
        let Some(ttl) = self.idle_ttl else { return 0 };
        let candidates: Vec<Id> = self
            .slots
            .iter()
            .filter(|entry| entry.value().is_expired(ttl))
            .map(|entry| entry.key().clone())
            .collect();
        let mut expired = 0;
        for id in candidates {
            if let Some((_, slot)) = self.slots.remove_if(&id, |_, slot| slot.is_expired(ttl)) {
                self.count.fetch_sub(1, Ordering::AcqRel);
                self.release_for(slot.app());
                slot.close();
                expired += 1;
            }
        }
        if expired > 0 {
            self.changed();
        }
        expired
    }

    /// Puts a slot read from a snapshot back. Counts towards `max_ids` like a create, and
    /// towards its app's quota, but is not refused for the quota: a quota lowered across a
    /// restart must not delete ids. The app then creates nothing until it is under it again.
    pub fn restore(&self, slot: Slot) -> Result<(), CreateError> {
        match self.slots.entry(slot.id().clone()) {
            Entry::Occupied(_) => Err(CreateError::Taken),
            Entry::Vacant(vacant) => {
                self.reserve()?;
                self.held
                    .entry(Arc::clone(slot.app_name()))
                    .or_default()
                    .fetch_add(1, Ordering::AcqRel);
                vacant.insert(Arc::new(slot));
                Ok(())
            }
        }
    }

    /// A number that moves whenever an id is created, notified or deleted.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Every slot, one shard at a time (each shard is read-locked only while it is copied).
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .iter()
            .map(|entry| Arc::clone(entry.value()))
            .collect()
    }

    /// Takes one of the `max_ids` places, or says the store is full.
    fn reserve(&self) -> Result<(), CreateError> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_ids).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| CreateError::Full(self.max_ids))
    }

    /// Takes one of `app`'s places, or says it holds its quota.
    fn reserve_for(&self, app: &App) -> Result<(), CreateError> {
        let max = app.max_ids();
        let held = match self.held.get(&**app.name()) {
            Some(held) => held,
            None => self
                .held
                .entry(Arc::clone(app.name()))
                .or_default()
                .downgrade(),
        };
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .map(drop)
        .map_err(|_| CreateError::AppQuota(max))
    }

    /// Gives one of `app`'s places back.
    fn release_for(&self, app: &str) {
        if let Some(held) = self.held.get(app) {
            held.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AppKey, Apps};

    fn app(name: &str) -> App {
        App::new(
            name,
            &AppKey::new(format!("{name}-key")),
            vec![Origin::parse("*").unwrap()],
        )
    }

    fn id(text: &str) -> Option<Id> {
        Id::parse(text).ok()
    }

    #[test]
    fn ids_are_unique_across_apps() {
        let store = Memory::new(10);
        store
            .create(&app("a"), id("the-same-id-000001"), None)
            .unwrap();
        assert!(matches!(
            store.create(&app("b"), id("the-same-id-000001"), None),
            Err(CreateError::Taken)
        ));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn another_apps_id_does_not_exist() {
        let store = Memory::new(10);
        store
            .create(&app("a"), id("owned-by-a-0000001"), None)
            .unwrap();
        assert_eq!(
            store.publish(&app("b"), "owned-by-a-0000001", "x"),
            Err(UnknownId)
        );
        assert_eq!(
            store.remove(&app("b"), "owned-by-a-0000001"),
            Err(UnknownId)
        );
        assert!(store.get("owned-by-a-0000001").is_some());
        assert_eq!(
            store
                .publish(&app("a"), "owned-by-a-0000001", "x")
                .unwrap()
                .seq,
            1
        );
    }

    #[test]
    fn remove_closes_the_slot_and_frees_its_place() {
        let store = Memory::new(1);
        let slot = store.create(&app("a"), None, None).unwrap();
        assert!(matches!(
            store.create(&app("a"), None, None),
            Err(CreateError::Full(1))
        ));
        store.remove(&app("a"), slot.id().as_str()).unwrap();
        assert!(slot.is_closed());
        assert!(store.get(slot.id().as_str()).is_none());
        assert!(store.is_empty());
        store.create(&app("a"), None, None).unwrap();
    }

    #[test]
    fn idle_ids_expire_and_busy_ones_stay() {
        // A zero idle time: every id is idle at once, unless a client waits on it.
        let store = Memory::new(10).with_idle_ttl(Duration::ZERO);
        let idle = store.create(&app("a"), None, None).unwrap();
        let watched = store.create(&app("a"), None, None).unwrap();
        let waiter = watched.join(8).waiter;
        assert!(
            store.get(idle.id().as_str()).is_none(),
            "expired ids are unknown"
        );
        assert!(store.get(watched.id().as_str()).is_some());
        let before = store.changes();
        assert_eq!(store.expire_idle(), 1);
        assert!(idle.is_closed());
        assert_eq!(store.len(), 1, "the expired id's place is free again");
        assert!(
            store.changes() > before,
            "the next snapshot will not have it"
        );
        drop(waiter);
        assert_eq!(store.expire_idle(), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn an_expired_id_can_be_created_again_before_the_sweep() {
        let store = Memory::new(1).with_idle_ttl(Duration::ZERO);
        let old = store
            .create(&app("a"), id("comes-back-000001"), None)
            .unwrap();
        old.publish("old life");
        let new = store
            .create(&app("b"), id("comes-back-000001"), None)
            .expect("an expired id is not taken");
        assert!(old.is_closed());
        assert_eq!(new.latest().seq, 0);
        assert_eq!(store.len(), 1, "one out, one in");
    }

    #[test]
    fn without_an_idle_time_ids_live_until_deleted() {
        let store = Memory::new(10);
        let slot = store.create(&app("a"), None, None).unwrap();
        assert_eq!(store.expire_idle(), 0);
        assert!(store.get(slot.id().as_str()).is_some());
    }

    /// A store of at most `max_ids` ids, where app "a" may hold 2 and app "b" 10.
    fn with_quotas(max_ids: usize) -> (Memory, Apps) {
        let apps = Apps::new(vec![
            App::new("a", &AppKey::new("a-key".into()), vec![]).with_max_ids(2),
            App::new("b", &AppKey::new("b-key".into()), vec![]).with_max_ids(10),
        ]);
        (Memory::new(max_ids), apps)
    }

    #[test]
    fn an_app_at_its_quota_is_refused_and_the_others_are_not() {
        let (store, apps) = with_quotas(10);
        let (a, b) = (&apps.get("a").unwrap(), &apps.get("b").unwrap());
        let first = store.create(a, None, None).unwrap();
        store.create(a, None, None).unwrap();
        assert!(matches!(
            store.create(a, id("refused-for-quota-1"), None),
            Err(CreateError::AppQuota(2))
        ));
        assert!(store.get("refused-for-quota-1").is_none());
        store.create(b, id("refused-for-quota-1"), None).unwrap();
        assert_eq!(
            (store.held_by("a"), store.held_by("b"), store.len()),
            (2, 1, 3)
        );

        store.remove(a, first.id().as_str()).unwrap();
        assert_eq!(store.held_by("a"), 1, "a delete gives the place back");
        store.create(a, None, None).unwrap();
    }

    #[test]
    fn the_quota_is_checked_before_max_ids_and_both_are_given_back() {
        let (store, apps) = with_quotas(3);
        let (a, b) = (&apps.get("a").unwrap(), &apps.get("b").unwrap());
        store.create(a, None, None).unwrap();
        store.create(a, None, None).unwrap();
        store.create(b, None, None).unwrap();
        assert!(matches!(
            store.create(a, None, None),
            Err(CreateError::AppQuota(2))
        ));
        assert!(matches!(
            store.create(b, None, None),
            Err(CreateError::Full(3))
        ));
        assert_eq!(
            store.held_by("b"),
            1,
            "a refusal for max_ids takes no quota"
        );
    }

    #[test]
    fn expiry_gives_places_back_and_a_taken_over_id_moves_its_quota() {
        let apps = Apps::new(vec![
            App::new("a", &AppKey::new("a-key".into()), vec![]).with_max_ids(1),
            App::new("b", &AppKey::new("b-key".into()), vec![]).with_max_ids(1),
        ]);
        let store = Memory::new(10).with_idle_ttl(Duration::ZERO);
        let (a, b) = (&apps.get("a").unwrap(), &apps.get("b").unwrap());
        store.create(a, id("expires-and-moves-1"), None).unwrap();
        // Expired, not yet swept: b takes the name over, a gets its place back.
        store.create(b, id("expires-and-moves-1"), None).unwrap();
        assert_eq!((store.held_by("a"), store.held_by("b")), (0, 1));
        // b is at its quota: it cannot take over a's next expired id, which stays a's.
        store.create(a, id("expires-and-moves-2"), None).unwrap();
        assert!(matches!(
            store.create(b, id("expires-and-moves-2"), None),
            Err(CreateError::AppQuota(1))
        ));
        assert_eq!((store.held_by("a"), store.held_by("b")), (1, 1));
        assert_eq!(store.expire_idle(), 2);
        assert_eq!(
            (store.held_by("a"), store.held_by("b"), store.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn restored_ids_count_towards_the_quota_and_are_kept_over_it() {
        let (store, apps) = with_quotas(10);
        for n in 0..3 {
            let slot = Slot::new(
                Id::parse(&format!("restored-over-quota-{n}")).unwrap(),
                Arc::from("a"),
                None,
            );
            store.restore(slot).unwrap();
        }
        assert_eq!((store.held_by("a"), store.len()), (3, 3));
        let a = &apps.get("a").unwrap();
        assert!(matches!(
            store.create(a, None, None),
            Err(CreateError::AppQuota(2))
        ));
        store.remove(a, "restored-over-quota-0").unwrap();
        store.remove(a, "restored-over-quota-1").unwrap();
        store.create(a, None, None).unwrap();
    }

    #[test]
    fn a_quota_holds_under_concurrent_creates() {
        let apps = Apps::new(vec![
            App::new("a", &AppKey::new("a-key".into()), vec![]).with_max_ids(37),
        ]);
        let store = Memory::new(1000);
        let a = &apps.get("a").unwrap();
        let created: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..50)
                            .filter(|_| store.create(a, None, None).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!((created, store.held_by("a"), store.len()), (37, 37, 37));
    }

    #[test]
    fn max_ids_holds_under_concurrent_creates() {
        let store = Arc::new(Memory::new(100));
        let a = Arc::new(app("a"));
        let created: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (store, a) = (Arc::clone(&store), Arc::clone(&a));
                    s.spawn(move || {
                        (0..50)
                            .filter(|_| store.create(&a, None, None).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(created, 100);
        assert_eq!(store.len(), 100);
        assert_eq!(store.slots.len(), 100);
    }
}
