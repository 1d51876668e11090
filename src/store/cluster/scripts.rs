//! The Lua scripts every cluster operation is, one atomic step each in Redis.
//!
//! They live in `scripts.lua`, cut here into one script per `--@ name` section with the
//! `common` section's functions in front. `redis::Script` sends each by its SHA-1
//! (`EVALSHA`) and loads it again by itself when Redis answers `NOSCRIPT` (after a restart or
//! a `SCRIPT FLUSH`).

use std::sync::LazyLock;

use redis::Script;

const SOURCE: &str = include_str!("scripts.lua");

/// Every script, compiled once.
pub struct Scripts {
    /// Creates an id: rate limit, vacancy, quota and `max_ids`, then the hash and its TTL.
    pub create: Script,
    /// The live ids of all apps (or of one), forgetting the expiry buckets that ended.
    pub census: Script,
    /// Stores a value, bumps `seq` and publishes the hint, in that order, atomically.
    pub notify: Script,
    /// Deletes an id and publishes the hint that releases its waiters everywhere.
    pub delete: Script,
    /// A browser's look at an id: owner, origin, value and epoch; refreshes its TTL.
    pub touch: Script,
    /// This node's waiter counts on many ids, each counted as activity.
    pub counts: Script,
    /// What an app may read about its id.
    pub status: Script,
    /// This node is alive for a while longer.
    pub heartbeat: Script,
    /// The epoch of this Redis's life: a new one when Redis is not the one that minted it.
    pub ensure_epoch: Script,
    /// Writes the registry of apps if nobody changed it since it was read.
    pub registry_put: Script,
    /// Deletes the ids of a removed app among one step of a scan.
    pub purge: Script,
    /// Looks up or holds an `Idempotency-Key`.
    pub idem_begin: Script,
    /// Records the newest value a node delivered of each of many ids.
    pub delivered: Script,
    /// Keeps the answer of an `Idempotency-Key`'s request, or frees the key.
    pub idem_finish: Script,
    /// Hands out a self-registration token within its bounds.
    pub challenge_issue: Script,
}

/// The scripts.
pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let common = section("common");
    let script = |name: &str| Script::new(&format!("{common}\n{}", section(name)));
    Scripts {
        create: script("create"),
        census: script("census"),
        notify: script("notify"),
        delete: script("delete"),
        touch: script("touch"),
        counts: script("counts"),
        status: script("status"),
        heartbeat: script("heartbeat"),
        ensure_epoch: script("ensure_epoch"),
        registry_put: script("registry_put"),
        purge: script("purge"),
        idem_begin: script("idem_begin"),
        idem_finish: script("idem_finish"),
        challenge_issue: script("challenge_issue"),
        delivered: script("delivered"),
    }
});

impl Scripts {
    /// Every script, for loading them all on a new connection.
    pub fn all(&self) -> [&Script; 15] {
        [
            &self.create,
            &self.census,
            &self.notify,
            &self.delete,
            &self.touch,
            &self.counts,
            &self.status,
            &self.heartbeat,
            &self.ensure_epoch,
            &self.registry_put,
            &self.purge,
            &self.idem_begin,
            &self.idem_finish,
            &self.challenge_issue,
            &self.delivered,
        ]
    }
}

/// The text of section `name`, up to the next section.
fn section(name: &str) -> &'static str {
    let marker = format!("--@ {name}\n");
    let start = SOURCE
        .find(&marker)
        .unwrap_or_else(|| panic!("scripts.lua has no section {name}"))
        + marker.len();
    let end = SOURCE[start..]
        .find("--@ ")
        .map_or(SOURCE.len(), |at| start + at);
    &SOURCE[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_is_found_and_none_runs_into_the_next() {
        for name in [
            "common",
            "create",
            "notify",
            "delete",
            "touch",
            "counts",
            "census",
            "status",
            "heartbeat",
            "ensure_epoch",
            "registry_put",
            "purge",
            "idem_begin",
            "idem_finish",
            "challenge_issue",
            "delivered",
        ] {
            let text = section(name);
            assert!(!text.trim().is_empty(), "{name}");
            assert!(!text.contains("--@"), "{name}");
        }
        assert!(section("notify").contains("publish(KEYS[1]"));
        assert!(section("common").contains("PUBLISH"));
        LazyLock::force(&SCRIPTS);
    }
}
