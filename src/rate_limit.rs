//! Request rates: per app for creates and notifies, per client IP for the browser side and
//! for self-registration.
//!
//! Each limit is a token bucket (GCRA, from `governor`): `burst` requests at once, refilled at
//! `per_second`. Over it the request is refused with `429 rate_limited` and a `Retry-After`
//! saying when one more would pass, and counted in `callhome_rate_limited_total`. Each app gets
//! its own lock-free bucket, at its own rate when it has one (`AppLimits`), else the server's;
//! client IPs share a keyed map that [`RateLimiters::forget_idle`] empties of addresses that
//! went quiet.

use dashmap::DashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, NotUntil, Quota};
use prometheus_client::metrics::counter::Counter;

use crate::auth::App;
use crate::client_ip::rate_key;
use crate::config::{RateLimit, RateLimits, SlowRate};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// How often the per-IP map forgets clients whose buckets are full again.
pub const FORGET_EVERY: Duration = Duration::from_secs(60);

/// Every configured rate limit.
#[derive(Debug)]
pub struct RateLimiters {
    create: PerApp,
    notify: PerApp,
    browser: Option<DefaultKeyedRateLimiter<IpAddr>>,
    browser_refused: Counter,
    registration: Option<DefaultKeyedRateLimiter<IpAddr>>,
    registration_refused: Counter,
    clock: DefaultClock,
}

/// One bucket per app, made when the app first needs it, so an app registered at runtime
/// is limited like one from the config; made anew when the app's rate changed.
#[derive(Debug)]
struct PerApp {
    /// The rate of an app without one of its own.
    default: RateLimit,
    buckets: DashMap<Arc<str>, (RateLimit, DefaultDirectRateLimiter)>,
    refused: Counter,
}

fn quota(rate: RateLimit) -> Option<Quota> {
    let per_second = NonZeroU32::new(rate.per_second)?;
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_second(per_second).allow_burst(burst))
}

impl PerApp {
    fn new(rate: RateLimit, refused: Counter) -> Self {
        Self {
            default: rate,
            buckets: DashMap::new(),
            refused,
        }
    }

    fn check(
        &self,
        app: &App,
        own: Option<RateLimit>,
        clock: &DefaultClock,
    ) -> Result<(), ApiError> {
        let rate = own.unwrap_or(self.default);
        let Some(quota) = quota(rate) else {
            return Ok(());
        };
        // The read guard is dropped before `entry` locks the same shard for writing.
        let existing = self
            .buckets
            .get(&**app.name())
            .and_then(|bucket| (bucket.0 == rate).then(|| bucket.1.check()));
        let checked = existing.unwrap_or_else(|| {
            let mut bucket = self
                .buckets
                .entry(Arc::clone(app.name()))
                .or_insert_with(|| (rate, DefaultDirectRateLimiter::direct(quota)));
            if bucket.0 != rate {
                *bucket = (rate, DefaultDirectRateLimiter::direct(quota));
            }
            bucket.1.check()
        });
        checked.map_err(|not_until| refuse(&not_until, clock, &self.refused))
    }
}

fn slow_quota(rate: SlowRate) -> Option<Quota> {
    let per_minute = NonZeroU32::new(rate.per_minute)?;
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_minute(per_minute).allow_burst(burst))
}

fn refuse(
    not_until: &NotUntil<<DefaultClock as governor::clock::Clock>::Instant>,
    clock: &DefaultClock,
    refused: &Counter,
) -> ApiError {
    refused.inc();
    ApiError::RateLimited(not_until.wait_time_from(clock.now()))
}

impl RateLimiters {
    /// The limits of `rates`, and `registration` per client IP, counting refusals in
    /// `metrics`.
    pub fn new(rates: &RateLimits, registration: SlowRate, metrics: &Metrics) -> Self {
        Self {
            create: PerApp::new(
                rates.create_per_app,
                metrics.rate_limited.create_per_app.clone(),
            ),
            notify: PerApp::new(
                rates.notify_per_app,
                metrics.rate_limited.notify_per_app.clone(),
            ),
            browser: quota(rates.browser_per_ip).map(DefaultKeyedRateLimiter::keyed),
            browser_refused: metrics.rate_limited.browser_per_ip.clone(),
            registration: slow_quota(registration).map(DefaultKeyedRateLimiter::keyed),
            registration_refused: metrics.rate_limited.registration_per_ip.clone(),
            clock: DefaultClock::default(),
        }
    }

    /// One id creation by `app`.
    pub fn create(&self, app: &App) -> Result<(), ApiError> {
        self.create
            .check(app, app.limits().create_per_app, &self.clock)
    }

    /// One notify by `app`.
    pub fn notify(&self, app: &App) -> Result<(), ApiError> {
        self.notify
            .check(app, app.limits().notify_per_app, &self.clock)
    }

    /// One challenge or self-registration for the client at `ip`.
    pub fn registration(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.registration {
            Some(limiter) => limiter
                .check_key(&rate_key(ip))
                .map_err(|not_until| refuse(&not_until, &self.clock, &self.registration_refused)),
            None => Ok(()),
        }
    }

    /// One poll, event stream or iframe page for the client at `ip`.
    pub fn browser(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.browser {
            Some(limiter) => limiter
                .check_key(&rate_key(ip))
                .map_err(|not_until| refuse(&not_until, &self.clock, &self.browser_refused)),
            None => Ok(()),
        }
    }

    /// Drops the buckets of clients that have not been limited lately (a full bucket is the
    /// same as no bucket). Returns how many clients are still tracked.
    pub fn forget_idle(&self) -> usize {
        [&self.browser, &self.registration]
            .into_iter()
            .flatten()
            .map(|limiter| {
                limiter.retain_recent();
                limiter.shrink_to_fit();
                limiter.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AppKey, Apps};
    use crate::origin::Origin;

    fn apps() -> Apps {
        Apps::new(vec![
            App::new(
                "a",
                &AppKey::new("a-key".into()),
                vec![Origin::parse("*").unwrap()],
            ),
            App::new(
                "b",
                &AppKey::new("b-key".into()),
                vec![Origin::parse("*").unwrap()],
            ),
        ])
    }

    fn rates(create: RateLimit, browser: RateLimit) -> RateLimits {
        RateLimits {
            create_per_app: create,
            notify_per_app: RateLimit::OFF,
            browser_per_ip: browser,
        }
    }

    const SLOW: RateLimit = RateLimit {
        per_second: 1,
        burst: 2,
    };

    const OFF: SlowRate = SlowRate {
        per_minute: 0,
        burst: 0,
    };

    #[test]
    fn an_app_with_a_rate_of_its_own_is_limited_by_it_and_a_changed_rate_applies_at_once() {
        let metrics = Metrics::new();
        let limits = RateLimiters::new(&rates(SLOW, RateLimit::OFF), OFF, &metrics);
        let own = |rate| {
            App::new("a", &AppKey::new("a-key".into()), vec![]).with_limits(
                crate::auth::AppLimits {
                    create_per_app: Some(rate),
                    ..crate::auth::AppLimits::default()
                },
            )
        };
        let one = own(RateLimit {
            per_second: 1,
            burst: 1,
        });
        assert!(limits.create(&one).is_ok());
        assert!(limits.create(&one).is_err(), "its own burst of 1");
        let more = own(RateLimit {
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(
                limits.create(&more).is_ok(),
                "a fresh bucket at the new rate"
            );
        }
        assert!(limits.create(&more).is_err());
        assert!(
            limits.create(&own(RateLimit::OFF)).is_ok(),
            "off for this app"
        );
    }

    #[test]
    fn registrations_are_limited_per_client_ip() {
        let metrics = Metrics::new();
        let slow = SlowRate {
            per_minute: 1,
            burst: 2,
        };
        let limits = RateLimiters::new(&rates(RateLimit::OFF, RateLimit::OFF), slow, &metrics);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.registration(ip).is_ok());
        assert!(limits.registration(ip).is_ok());
        let Err(ApiError::RateLimited(after)) = limits.registration(ip) else {
            panic!("the third in a row must be refused");
        };
        assert!(after > Duration::from_secs(1), "a minute's rate: {after:?}");
        assert!(limits.registration("192.0.2.2".parse().unwrap()).is_ok());
        assert_eq!(metrics.rate_limited.registration_per_ip.get(), 1);
    }

    #[test]
    fn each_app_has_its_own_bucket() {
        let apps = apps();
        let metrics = Metrics::new();
        let limits = RateLimiters::new(&rates(SLOW, RateLimit::OFF), OFF, &metrics);
        let a = apps.authenticate("a-key").unwrap();
        let b = apps.authenticate("b-key").unwrap();
        assert!(limits.create(&a).is_ok());
        assert!(limits.create(&a).is_ok());
        let Err(ApiError::RateLimited(after)) = limits.create(&a) else {
            panic!("the third create in a row must be refused");
        };
        assert!(
            after > Duration::ZERO && after <= Duration::from_secs(1),
            "{after:?}"
        );
        assert!(limits.create(&b).is_ok(), "b is not limited by a's traffic");
        assert!(limits.notify(&a).is_ok(), "notify_per_app is off");
        assert_eq!(metrics.rate_limited.create_per_app.get(), 1);
    }

    #[test]
    fn each_client_ip_has_its_own_bucket_and_ipv6_counts_per_64() {
        let metrics = Metrics::new();
        let limits = RateLimiters::new(&rates(RateLimit::OFF, SLOW), OFF, &metrics);
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.browser(one).is_ok());
        assert!(limits.browser(same_64).is_ok());
        assert!(limits.browser(one).is_err());
        assert!(limits.browser(other).is_ok());
        assert_eq!(metrics.rate_limited.browser_per_ip.get(), 1);
        assert_eq!(limits.forget_idle(), 2, "both buckets are still refilling");
    }

    #[test]
    fn off_means_off() {
        let metrics = Metrics::new();
        let limits = RateLimiters::new(&rates(RateLimit::OFF, RateLimit::OFF), OFF, &metrics);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10_000 {
            assert!(limits.browser(ip).is_ok());
        }
        assert_eq!(limits.forget_idle(), 0);
    }
}
