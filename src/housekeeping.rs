//! Background chores: deleting ids that went idle, and forgetting rate-limit buckets of
//! clients that went quiet and challenge tokens that expired. Each runs off the request threads (`spawn_blocking`) and touches
//! one shard of a map at a time, so requests never wait behind a whole sweep.

use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::rate_limit;
use crate::state::AppState;
use crate::store::Memory;

/// The longest pause between two expiry sweeps. Expired ids are already invisible to
/// requests before the sweep removes them; the sweep only gives their memory back.
const MAX_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How often idle ids are swept for an idle time of `ttl`: a tenth of it, between 1 s and a
/// minute.
pub fn sweep_every(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), MAX_SWEEP_EVERY)
}

/// Runs the chores until the server shuts down.
pub async fn run(state: AppState) {
    let mut sweep = tokio::time::interval(sweep_every(state.limits.id_idle_ttl));
    let mut forget = tokio::time::interval(rate_limit::FORGET_EVERY);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    forget.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sweep.tick() => expire(&state).await,
            _ = forget.tick() => {
                let limiters = state.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    limiters.limiters.forget_idle();
                    limiters.idempotency_keys.sweep();
                    limiters.challenges.forget_expired(std::time::Instant::now());
                })
                .await;
            }
            () = state.shutdown.cancelled() => return,
        }
    }
}

async fn expire(state: &AppState) {
    let started = std::time::Instant::now();
    let store = state.clone();
    let sweep = move || store.store.as_memory().map_or(0, Memory::expire_idle);
    let Ok(expired) = tokio::task::spawn_blocking(sweep).await else {
        return;
    };
    if expired > 0 {
        state.metrics.ids_expired.inc_by(expired as u64);
        tracing::info!(expired, took = ?started.elapsed(), "expired idle ids");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_are_a_tenth_of_the_idle_time_within_bounds() {
        assert_eq!(sweep_every(Duration::from_secs(24 * 3600)), MAX_SWEEP_EVERY);
        assert_eq!(
            sweep_every(Duration::from_secs(100)),
            Duration::from_secs(10)
        );
        assert_eq!(sweep_every(Duration::from_secs(2)), Duration::from_secs(1));
    }
}
