//! `/metrics`: what an operator graphs and alerts on, in the Prometheus (`OpenMetrics`) text
//! format, with `prometheus-client`.
//!
//! Every labelled series is resolved once, here, at start: the request paths bump a plain
//! atomic and never look a label set up. Labels are small closed sets (outcome, transport,
//! limit); ids, apps' keys and client addresses never become labels, so the number of series
//! is fixed whatever the traffic.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::error::{self, ApiError};

/// The content type of the `OpenMetrics` text format, which Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// All of CallHome's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ids: Gauge,
    /// Ids created.
    pub ids_created: Counter,
    /// Creates refused for want of room, by which limit.
    pub creates_refused: CreatesRefused,
    /// Ids deleted by their app.
    pub ids_deleted: Counter,
    /// Ids deleted for being idle longer than `id_idle_ttl`.
    pub ids_expired: Counter,
    /// Clients waiting right now, by transport.
    pub waiting: ByTransport<Gauge>,
    /// Waiting clients released because a newer one took their place on a full id.
    pub waiters_released: Counter,
    /// Notifies by outcome.
    pub notifies: NotifyOutcomes,
    /// Long polls by how they ended.
    pub polls: PollOutcomes,
    /// Event streams by how they opened.
    pub streams: StreamOutcomes,
    /// Seconds from a notify to the answer of a client that was waiting for it.
    pub delivery: Histogram,
    /// Requests refused by a rate limit, by limit.
    pub rate_limited: RateLimited,
    /// Open client connections.
    pub connections_open: Gauge,
    /// Connections accepted, and refused for being over `max_connections`.
    pub connections: ConnectionOutcomes,
    /// Connections closed for being too slow, by what they were slow at.
    pub timeouts: Timeouts,
    /// Seconds a snapshot took to build and write.
    pub snapshot_duration: Histogram,
    /// Bytes of the last snapshot written.
    pub snapshot_bytes: Gauge<u64, AtomicU64>,
    /// Snapshots written, and snapshots that failed.
    pub snapshots: SnapshotOutcomes,
    /// The Redis backplane (cluster mode; all zero with the memory engine).
    pub backplane: Backplane,
    /// TLS in the daemon (all zero without `[tls]`).
    pub tls: TlsMetrics,
}

/// TLS handshakes that failed and certificate reloads.
#[derive(Debug, Clone)]
pub struct TlsMetrics {
    /// `callhome_tls_handshake_failures_total{reason="error"}`: a client that is not TLS, a
    /// protocol or certificate error, or a client that went away.
    pub handshake_failed: Counter,
    /// `{reason="timeout"}`: a handshake not done within `header_timeout`.
    pub handshake_timeout: Counter,
    /// `callhome_tls_reloads_total{outcome="loaded"}`: a changed certificate taken into use.
    pub reloaded: Counter,
    /// `{outcome="failed"}`: changed files that did not load; the old certificate stays.
    pub reload_failed: Counter,
}

/// The Redis backplane's health.
#[derive(Debug, Clone)]
pub struct Backplane {
    /// 1 while the command link and the hint subscription both work.
    pub up: Gauge,
    /// Connections (command link or subscriber) made again after a failure.
    pub reconnects: Counter,
    /// Resyncs: local ids read back from Redis after a reconnect, a gap or a failed probe.
    pub resyncs: Counter,
    /// Hint messages found missing by their number.
    pub hint_gaps: Counter,
    /// Liveness probes of the subscriber that did not come back in time.
    pub probe_timeouts: Counter,
    /// Waits begun on this node's own current copy of an id, with no Redis read.
    pub local_watches: Counter,
    /// Seconds from a notify in Redis to its hint reaching this node.
    pub hint_lag: Histogram,
    /// Registries of apps taken on from Redis (another node changed it, or at start).
    pub registry_loads: Counter,
    /// Registries of apps written back to a Redis that had lost writes.
    pub registry_restores: Counter,
}

/// One label, `outcome` (or another name) with a fixed value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transport {
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limit {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    phase: &'static str,
}

/// A metric per browser transport.
#[derive(Debug)]
pub struct ByTransport<M> {
    /// `GET /v1/poll`.
    pub poll: M,
    /// `GET /v1/events`.
    pub events: M,
}

/// `callhome_creates_refused_total{reason}`.
#[derive(Debug)]
pub struct CreatesRefused {
    /// The app holds its quota (`429 app_quota_exceeded`).
    pub app_quota: Counter,
    /// The store holds `max_ids` (`503 too_many_ids`).
    pub max_ids: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// `callhome_notifies_total{outcome}`.
#[derive(Debug)]
pub struct NotifyOutcomes {
    /// Stored, and at least one waiting client woken.
    pub delivered: Counter,
    /// Stored; nobody was waiting.
    pub stored: Counter,
    /// No such id (or another app's).
    pub unknown_id: Counter,
    /// Refused for any other reason: key, size, format, rate.
    pub rejected: Counter,
}

/// `callhome_polls_total{outcome}`.
#[derive(Debug)]
pub struct PollOutcomes {
    /// Answered at once with a value the client had not seen.
    pub immediate: Counter,
    /// Answered with a value notified while it waited.
    pub delivered: Counter,
    /// Answered 204 after `poll_timeout`.
    pub timeout: Counter,
    /// The id was deleted while it waited.
    pub gone: Counter,
    /// Released by a shutdown.
    pub shutdown: Counter,
    /// Released (204) because a newer client took its waiting place.
    pub released: Counter,
    /// No such id.
    pub unknown_id: Counter,
    /// Refused: bad parameters, rate limit.
    pub rejected: Counter,
}

/// `callhome_event_streams_total{outcome}`.
#[derive(Debug)]
pub struct StreamOutcomes {
    /// Opened.
    pub opened: Counter,
    /// No such id.
    pub unknown_id: Counter,
    /// Refused: bad parameters, rate limit.
    pub rejected: Counter,
}

impl NotifyOutcomes {
    /// The counter of a refused notify.
    pub fn refused(&self, error: &ApiError) -> &Counter {
        match error.outcome() {
            error::Outcome::UnknownId => &self.unknown_id,
            error::Outcome::Gone | error::Outcome::Rejected => &self.rejected,
        }
    }
}

impl PollOutcomes {
    /// The counter of a refused (or released as gone) poll.
    pub fn refused(&self, error: &ApiError) -> &Counter {
        match error.outcome() {
            error::Outcome::UnknownId => &self.unknown_id,
            error::Outcome::Gone => &self.gone,
            error::Outcome::Rejected => &self.rejected,
        }
    }
}

impl StreamOutcomes {
    /// The counter of a refused event stream.
    pub fn refused(&self, error: &ApiError) -> &Counter {
        match error.outcome() {
            error::Outcome::UnknownId => &self.unknown_id,
            error::Outcome::Gone | error::Outcome::Rejected => &self.rejected,
        }
    }
}

/// `callhome_rate_limited_total{limit}`.
#[derive(Debug)]
pub struct RateLimited {
    /// `rate_limits.create_per_app`.
    pub create_per_app: Counter,
    /// `rate_limits.notify_per_app`.
    pub notify_per_app: Counter,
    /// `rate_limits.browser_per_ip`.
    pub browser_per_ip: Counter,
    /// `registration.per_ip`: challenges and self-registrations per client IP.
    pub registration_per_ip: Counter,
}

/// `callhome_connections_total{outcome}`.
#[derive(Debug)]
pub struct ConnectionOutcomes {
    /// Accepted and served.
    pub accepted: Counter,
    /// Answered 503 and closed: `max_connections` were open.
    pub refused: Counter,
}

/// `callhome_connection_timeouts_total{phase}`.
#[derive(Debug)]
pub struct Timeouts {
    /// `header_timeout`: a request head took too long.
    pub header: Counter,
    /// `idle_timeout`: nothing came between requests.
    pub idle: Counter,
    /// `body_timeout`: a request body took too long.
    pub body: Counter,
    /// `send_timeout`: the client did not read what we sent.
    pub send: Counter,
}

/// `callhome_snapshots_total{outcome}`.
#[derive(Debug)]
pub struct SnapshotOutcomes {
    /// Written.
    pub ok: Counter,
    /// Failed (the error is logged).
    pub error: Counter,
}

/// Registers a counter family and resolves one counter per label value.
fn family<L, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: fn(&'static str) -> L,
    values: [&'static str; N],
) -> [Counter; N]
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    registry.register(name, help, family.clone());
    values.map(|value| family.get_or_create(&label(value)).clone())
}

impl Metrics {
    /// Every metric, registered and at zero.
    #[allow(clippy::too_many_lines)] // one flat list of registrations reads best
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("callhome");
        let ids = Gauge::default();
        registry.register("ids", "Ids that exist", ids.clone());
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let ids_created = counter(&mut registry, "ids_created", "Ids created");
        let ids_deleted = counter(&mut registry, "ids_deleted", "Ids deleted by their app");
        let [app_quota, max_ids] = family(
            &mut registry,
            "creates_refused",
            "Creates refused for want of room: app_quota (the app holds its quota), max_ids \
             (the server holds max_ids)",
            |reason| Reason { reason },
            ["app_quota", "max_ids"],
        );
        let creates_refused = CreatesRefused { app_quota, max_ids };
        let ids_expired = counter(
            &mut registry,
            "ids_expired",
            "Ids deleted for being idle longer than id_idle_ttl",
        );

        let waiting = Family::<Transport, Gauge>::default();
        registry.register(
            "waiting",
            "Clients waiting for news right now, by transport",
            waiting.clone(),
        );
        // One statement per series: a family's read guard lives to the end of its statement,
        // and creating the next series needs the write lock.
        let poll = waiting
            .get_or_create(&Transport { transport: "poll" })
            .clone();
        let events = waiting
            .get_or_create(&Transport {
                transport: "events",
            })
            .clone();
        let waiting = ByTransport { poll, events };
        let waiters_released = counter(
            &mut registry,
            "waiters_released",
            "Waiting clients released because a newer one took their place on an id at \
             max_waiters_per_id",
        );

        let [delivered, stored, unknown_id, rejected] = family(
            &mut registry,
            "notifies",
            "Notifies by outcome: delivered (woke a waiting client), stored (nobody waiting), \
             unknown_id, rejected",
            |outcome| Outcome { outcome },
            ["delivered", "stored", "unknown_id", "rejected"],
        );
        let notifies = NotifyOutcomes {
            delivered,
            stored,
            unknown_id,
            rejected,
        };

        let [
            immediate,
            delivered,
            timeout,
            gone,
            shutdown,
            released,
            unknown_id,
            rejected,
        ] = family(
            &mut registry,
            "polls",
            "Long polls by how they ended",
            |outcome| Outcome { outcome },
            [
                "immediate",
                "delivered",
                "timeout",
                "gone",
                "shutdown",
                "released",
                "unknown_id",
                "rejected",
            ],
        );
        let polls = PollOutcomes {
            immediate,
            delivered,
            timeout,
            gone,
            shutdown,
            released,
            unknown_id,
            rejected,
        };

        let [opened, unknown_id, rejected] = family(
            &mut registry,
            "event_streams",
            "Event stream requests by outcome",
            |outcome| Outcome { outcome },
            ["opened", "unknown_id", "rejected"],
        );
        let streams = StreamOutcomes {
            opened,
            unknown_id,
            rejected,
        };

        // 50 us to ~13 s.
        let delivery = Histogram::new(exponential_buckets(0.000_05, 2.0, 19));
        registry.register_with_unit(
            "delivery",
            "Time from a notify to the answer of a client that was waiting for it",
            Unit::Seconds,
            delivery.clone(),
        );

        let [
            create_per_app,
            notify_per_app,
            browser_per_ip,
            registration_per_ip,
        ] = family(
            &mut registry,
            "rate_limited",
            "Requests refused with 429 by a rate limit",
            |limit| Limit { limit },
            [
                "create_per_app",
                "notify_per_app",
                "browser_per_ip",
                "registration_per_ip",
            ],
        );
        let rate_limited = RateLimited {
            create_per_app,
            notify_per_app,
            browser_per_ip,
            registration_per_ip,
        };

        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open right now",
            connections_open.clone(),
        );
        let [accepted, refused] = family(
            &mut registry,
            "connections",
            "Connections accepted, and refused for being over max_connections",
            |outcome| Outcome { outcome },
            ["accepted", "refused"],
        );
        let connections = ConnectionOutcomes { accepted, refused };
        let [header, idle, body, send] = family(
            &mut registry,
            "connection_timeouts",
            "Connections closed for being slow, by what they were slow at",
            |phase| Phase { phase },
            ["header", "idle", "body", "send"],
        );
        let timeouts = Timeouts {
            header,
            idle,
            body,
            send,
        };

        // 1 ms to ~16 s.
        let snapshot_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register_with_unit(
            "snapshot_duration",
            "Time to build and write one snapshot of the store",
            Unit::Seconds,
            snapshot_duration.clone(),
        );
        let snapshot_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register_with_unit(
            "snapshot_size",
            "Size of the last snapshot written",
            Unit::Bytes,
            snapshot_bytes.clone(),
        );
        let [ok, error] = family(
            &mut registry,
            "snapshots",
            "Snapshots written, and snapshots that failed",
            |outcome| Outcome { outcome },
            ["ok", "error"],
        );

        let up = Gauge::default();
        registry.register(
            "backplane_up",
            "1 while the Redis command link and hint subscription both work",
            up.clone(),
        );
        let backplane = Backplane {
            up,
            reconnects: counter(
                &mut registry,
                "backplane_reconnects",
                "Redis connections made again after a failure",
            ),
            resyncs: counter(
                &mut registry,
                "backplane_resyncs",
                "Times this node read its ids back from Redis (after a reconnect, a gap or a \
                 failed probe)",
            ),
            hint_gaps: counter(
                &mut registry,
                "backplane_hint_gaps",
                "Hint messages found missing by their number",
            ),
            probe_timeouts: counter(
                &mut registry,
                "backplane_probe_timeouts",
                "Subscriber liveness probes that did not come back in time",
            ),
            local_watches: counter(
                &mut registry,
                "backplane_local_watches",
                "Waits begun on this node's own current copy of an id, with no Redis read \
                 (a client back for the next value)",
            ),
            registry_loads: counter(
                &mut registry,
                "backplane_registry_loads",
                "Registries of apps taken on from Redis (changed by another node, or at start)",
            ),
            registry_restores: counter(
                &mut registry,
                "backplane_registry_restores",
                "Registries of apps this node wrote back to a Redis that had lost writes",
            ),
            hint_lag: {
                // 100 us to ~26 s.
                let hint_lag = Histogram::new(exponential_buckets(0.000_1, 2.0, 19));
                registry.register_with_unit(
                    "backplane_hint_lag",
                    "Time from a notify in Redis to its hint reaching this node",
                    Unit::Seconds,
                    hint_lag.clone(),
                );
                hint_lag
            },
        };

        let [handshake_failed, handshake_timeout] = family(
            &mut registry,
            "tls_handshake_failures",
            "TLS handshakes that failed: error (not TLS, a protocol error, the client left) or \
             timeout (not done within header_timeout)",
            |reason| Reason { reason },
            ["error", "timeout"],
        );
        let [reloaded, reload_failed] = family(
            &mut registry,
            "tls_reloads",
            "Certificate files found changed: loaded (in use for new connections) or failed \
             (the old certificate stays)",
            |outcome| Outcome { outcome },
            ["loaded", "failed"],
        );
        let tls = TlsMetrics {
            handshake_failed,
            handshake_timeout,
            reloaded,
            reload_failed,
        };

        Self {
            backplane,
            tls,
            registry,
            ids,
            ids_created,
            creates_refused,
            ids_deleted,
            ids_expired,
            waiting,
            waiters_released,
            notifies,
            polls,
            streams,
            delivery,
            rate_limited,
            connections_open,
            connections,
            timeouts,
            snapshot_duration,
            snapshot_bytes,
            snapshots: SnapshotOutcomes { ok, error },
        }
    }

    /// Records a delivery that took `elapsed`.
    pub fn delivered_after(&self, elapsed: Duration) {
        self.delivery.observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with `ids` read at this moment (`None`: the last value stands).
    ///
    /// # Panics
    /// Never: writing to a `String` cannot fail.
    pub fn encode(&self, ids: Option<usize>) -> String {
        if let Some(ids) = ids {
            self.ids.set(i64::try_from(ids).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts one waiting client for as long as it lives.
#[derive(Debug)]
pub struct Waiting(Gauge);

impl Waiting {
    /// One more client waiting on `gauge`.
    pub fn start(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exposed_from_the_start() {
        let m = Metrics::new();
        m.notifies.delivered.inc();
        m.delivered_after(Duration::from_millis(2));
        let text = m.encode(Some(7));
        for line in [
            "callhome_ids 7",
            "callhome_notifies_total{outcome=\"delivered\"} 1",
            "callhome_notifies_total{outcome=\"stored\"} 0",
            "callhome_polls_total{outcome=\"timeout\"} 0",
            "callhome_polls_total{outcome=\"released\"} 0",
            "callhome_waiters_released_total 0",
            "callhome_creates_refused_total{reason=\"app_quota\"} 0",
            "callhome_waiting{transport=\"events\"} 0",
            "callhome_rate_limited_total{limit=\"browser_per_ip\"} 0",
            "callhome_delivery_seconds_count 1",
            "callhome_connections_total{outcome=\"refused\"} 0",
            "callhome_snapshot_size_bytes 0",
            "callhome_tls_handshake_failures_total{reason=\"timeout\"} 0",
            "callhome_tls_reloads_total{outcome=\"failed\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_waiting_guard_counts_while_it_lives() {
        let m = Metrics::new();
        let w = Waiting::start(&m.waiting.poll);
        assert_eq!(m.waiting.poll.get(), 1);
        drop(w);
        assert_eq!(m.waiting.poll.get(), 0);
    }
}
