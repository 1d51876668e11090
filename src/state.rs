//! The state every request can reach: the store, the apps, the limits, the metrics and the
//! shutdown signals, behind one [`AppState`] handle.
//!
//! It depends on the domain modules (store, auth, config, metrics, rate limits), never on the
//! HTTP side: handlers import this module, and this module imports no handler, so the request
//! paths can be read bottom-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Apps;
use crate::client_ip::TrustedProxies;
use crate::config::{HttpConfig, Limits, RateLimits, Settings, StoreConfig};
use crate::metrics::Metrics;
use crate::permit::Budget;
use crate::rate_limit::RateLimiters;
use crate::registration::{Challenges, Terms};
use crate::store::{Memory, Store};
use crate::tls::Tls;

/// File descriptors kept back from `max_connections = 0` (automatic) for everything else the
/// process opens: the listener, snapshot files, the runtime's own, a backplane.
const FD_RESERVE: u64 = 64;

/// What every handler can reach: one `Arc`, so cloning it per request is one atomic add
/// (cloning the fields one by one showed up in profiles of the notify path).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// The state behind [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// All ids.
    pub store: Store,
    /// The registered apps.
    pub apps: Apps,
    /// Changes to the registered apps, one at a time (and in cluster mode, their version).
    pub registry: crate::registry::Registry,
    /// The admin API, when it has a key.
    pub admin: Option<crate::config::Admin>,
    /// Self-registration's terms.
    pub registration: Terms,
    /// Challenge tokens handed out and not used yet.
    pub challenges: Challenges,
    /// Resource limits.
    pub limits: Limits,
    /// The base URL browsers reach us at, without a trailing slash.
    pub public_url: String,
    /// Largest request body read, in bytes.
    pub body_limit: usize,
    /// Largest body of a batch notify (`POST /v1/notify`), in bytes.
    pub batch_body_limit: usize,
    /// Cancelled when the server shuts down; held requests answer at once.
    pub shutdown: CancellationToken,
    /// Where the store is saved across restarts.
    pub snapshot: StoreConfig,
    /// How long a shutdown waits for open connections.
    pub drain_timeout: Duration,
    /// How long `/readyz` fails before a shutdown stops accepting.
    pub shutdown_grace: Duration,
    /// Set when a shutdown begins, `shutdown_grace` before `shutdown` is cancelled.
    pub draining: AtomicBool,
    /// Places for client connections (`max_connections`, resolved).
    pub connections: Budget,
    /// How connections are served.
    pub http: HttpConfig,
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Request rates, as configured (`limiters` applies them).
    pub rates: RateLimits,
    /// Request rates.
    pub limiters: RateLimiters,
    /// Everything `/metrics` shows.
    pub metrics: Metrics,
    /// `Idempotency-Key` handling.
    pub idempotency: crate::config::IdempotencyConfig,
    /// The memory engine's idempotency keys (cluster mode keeps them in Redis).
    pub idempotency_keys: crate::idempotency::Keys,
    /// TLS on the listener (`[tls]`), with the certificate new handshakes get.
    pub tls: Option<Arc<Tls>>,
}

impl Shared {
    /// The largest body a request to `path` may have: a batch notify's is larger.
    pub fn body_limit_for(&self, path: &str) -> usize {
        if path == crate::api::BATCH_PATH {
            self.batch_body_limit
        } else {
            self.body_limit
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// State for a server listening on `local_addr`, with the memory engine.
    pub fn new(settings: Settings, local_addr: SocketAddr, shutdown: CancellationToken) -> Self {
        let store = Store::memory(
            Memory::new(settings.limits.max_ids).with_idle_ttl(settings.limits.id_idle_ttl),
        );
        Self::with_store(settings, local_addr, shutdown, store, Metrics::new())
    }

    /// State for a server listening on `local_addr` whose ids are in `store`, counted in
    /// `metrics`. With a shared engine the per-app rate limits are the engine's (they hold
    /// across nodes), so this node keeps none of its own.
    pub fn with_store(
        settings: Settings,
        local_addr: SocketAddr,
        shutdown: CancellationToken,
        store: Store,
        metrics: Metrics,
    ) -> Self {
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let public_url = settings
            .public_url
            .unwrap_or_else(|| format!("{scheme}://{local_addr}"));
        let body_limit = settings.limits.body_limit();
        let batch_body_limit = settings.limits.batch_body_limit();
        let mut rates = settings.rate_limits;
        if store.as_memory().is_none() {
            rates.create_per_app = crate::config::RateLimit::OFF;
            rates.notify_per_app = crate::config::RateLimit::OFF;
        }
        let limiters = RateLimiters::new(&rates, settings.registration_rate, &metrics);
        let configured_rates = settings.rate_limits;
        Self(Arc::new(Shared {
            store,
            apps: settings.apps,
            registry: crate::registry::Registry::default(),
            admin: settings.admin,
            registration: settings.registration,
            challenges: Challenges::default(),
            limits: settings.limits,
            public_url,
            body_limit,
            batch_body_limit,
            shutdown,
            snapshot: settings.store,
            drain_timeout: settings.drain_timeout,
            shutdown_grace: settings.shutdown_grace,
            draining: AtomicBool::new(false),
            connections: Budget::new(
                connection_budget(settings.limits.max_connections),
                metrics.connections_open.clone(),
            ),
            http: settings.http,
            trusted_proxies: settings.trusted_proxies,
            rates: configured_rates,
            limiters,
            metrics,
            idempotency: settings.idempotency,
            idempotency_keys: crate::idempotency::Keys::new(settings.idempotency),
            tls: settings.tls,
        }))
    }

    /// True from the moment a shutdown begins: `/readyz` fails.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire) || self.shutdown.is_cancelled()
    }
}

/// `max_connections`, or when it is 0 the open-file limit less a reserve for everything else.
fn connection_budget(configured: usize) -> usize {
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let fit = usize::try_from(files.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    if configured == 0 {
        return fit.max(1);
    }
    if configured > fit {
        tracing::warn!(
            max_connections = configured,
            open_file_limit = files,
            "max_connections is above what the open-file limit allows; accepts will fail first"
        );
    }
    configured
}
