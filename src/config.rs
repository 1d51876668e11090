//! Configuration: plain serde data, loaded in layers and validated into [`Settings`].
//!
//! Layers, later ones winning: built-in defaults, the TOML file, `CALLHOME_<KEY>` environment
//! variables (`__` for nesting, e.g. `CALLHOME_LIMITS__MAX_IDS`), then command-line flags.
//! Validation turns strings into typed values and names the offending field in every error,
//! because whoever reads it is an operator whose daemon did not start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::{App, AppKey, AppLimits, Apps};
use crate::client_ip::TrustedProxies;
use crate::origin::Origin;
use crate::registration::{Policy, Terms};
use crate::tls::{self, Tls};

/// Keys an app key shorter than this is warned about at start-up.
pub const WEAK_KEY_LEN: usize = 16;

// Upper bounds of the limits, checked at start. Each is far above what one node serves
// (docs/benchmarks.md); they are there to refuse a typo (a few zeros too many) or a value
// that would overflow what is computed from it, with a message, before the daemon runs on it.

/// `limits.max_ids` at most: 100 million ids take about 30 GB at 290 bytes each.
pub const MAX_IDS: usize = 100_000_000;
/// `limits.info_max_bytes` at most, 1 MiB: an info is a hint that something changed, not the
/// data itself, and the body limit is six times it ([`Limits::body_limit`]).
pub const MAX_INFO_BYTES: usize = 1 << 20;
/// `limits.max_waiters_per_id` at most: far more tabs than one user opens; an id is one
/// page's, not a broadcast channel.
pub const MAX_WAITERS_PER_ID: u32 = 10_000;
/// `limits.max_ids_per_stream` at most: every value event of a stream of many ids carries
/// every cursor in its `id:` line (docs/api.md), about 30 bytes an id.
pub const MAX_IDS_PER_STREAM: usize = 256;
/// `limits.max_batch` at most: a batch is one request, answered once every notify in it is.
pub const MAX_BATCH: usize = 10_000;
/// The largest body of a batch notify, whatever `max_batch` and `info_max_bytes` say.
pub const MAX_BATCH_BODY: usize = 16 << 20;
/// `limits.max_connections` at most: 10 million connections need about 26 GB at 2.6 KiB
/// each, and as many file descriptors.
pub const MAX_CONNECTIONS: usize = 10_000_000;
/// `limits.id_idle_ttl` at most: a year.
pub const MAX_ID_IDLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// `rate_limits.*.per_second` at most: 20 times the notify rate one node was measured at.
pub const MAX_RATE_PER_SECOND: u32 = 1_000_000;
/// `rate_limits.*.burst` at most.
pub const MAX_RATE_BURST: u32 = 10_000_000;

/// Bytes of body read beyond the info itself: JSON quoting and the `{"info":...}` wrapper.
pub const BODY_OVERHEAD: usize = 1024;

/// The configuration as written: every field has a default, unknown fields are errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address and port to listen on, e.g. `127.0.0.1:8080` or `[::]:8080`.
    pub listen: String,
    /// The URL browsers reach this daemon at (through any reverse proxy), used to build the
    /// `iframe_url` and `poll_url` handed to backends. Defaults to `http://<listen address>`.
    pub public_url: Option<String>,
    /// A tracing filter such as `info` or `callhome=debug,tower_http=info`.
    pub log: String,
    /// `text` (human-readable) or `json` (one object per line, for log shippers).
    pub log_format: LogFormat,
    /// Threads serving requests; 0 means one per CPU core. On a machine shared with other
    /// busy processes, fewer threads than cores can be faster (docs/performance.md).
    pub workers: usize,
    /// How long a shutdown waits for open connections to finish their current response
    /// before the process exits anyway (held polls are answered at once, so this is mostly
    /// for slow clients and requests in flight).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long `/readyz` answers 503 before a shutdown stops accepting and releases the
    /// held requests, so a load balancer polling it takes this node out of rotation first.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Reverse proxies (IPs or CIDR ranges) whose `X-Forwarded-For` is believed when
    /// deciding a client's IP for rate limits. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Resource limits.
    pub limits: Limits,
    /// Request rates.
    pub rate_limits: RateLimits,
    /// Where state is kept across restarts.
    pub store: StoreConfig,
    /// How connections are served.
    pub http: HttpConfig,
    /// The admin API (apps registered at runtime); off without a key.
    pub admin: AdminConfig,
    /// `Idempotency-Key` on creates and notifies: safe retries.
    pub idempotency: IdempotencyConfig,
    /// TLS served by the daemon itself; off unless both files are given.
    pub tls: TlsConfig,
    /// Self-registration: who may register an app, on which terms.
    pub registration: RegistrationConfig,
    /// The registered web applications.
    pub apps: Vec<AppConfig>,
}

/// How long an `Idempotency-Key` is remembered, and how many each app may have at once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// A retry with the same key within this long gets the first answer; 1s to 24h.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Keys one app may have remembered at once; one more answers `429`.
    pub max_keys_per_app: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            max_keys_per_app: 100_000,
        }
    }
}

/// The longest idempotency window.
pub const MAX_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// `idempotency.max_keys_per_app` at most.
pub const MAX_IDEMPOTENCY_KEYS: usize = 10_000_000;

fn validate_idempotency(idempotency: &IdempotencyConfig) -> Result<(), ConfigError> {
    if idempotency.window < Duration::from_secs(1) || idempotency.window > MAX_IDEMPOTENCY_WINDOW {
        return Err(invalid("idempotency.window", "must be between 1s and 24h"));
    }
    check_count(
        "idempotency.max_keys_per_app",
        idempotency.max_keys_per_app,
        MAX_IDEMPOTENCY_KEYS,
    )
}

/// The admin API: `/v1/admin/...`, authenticated with its own key (never an app's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin key, written in the file. Prefer `key_env`.
    pub key: Option<AppKey>,
    /// The name of an environment variable that holds the admin key.
    pub key_env: Option<String>,
    /// How long an app's old keys keep working after a rotation, unless the rotation says.
    #[serde(with = "humantime_serde")]
    pub rotation_grace: Duration,
    /// The id quota of an app registered without one.
    pub default_max_ids: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            key: None,
            key_env: None,
            rotation_grace: Duration::from_secs(24 * 3600),
            default_max_ids: 10_000,
        }
    }
}

/// The admin API as validated: its key's digest (the key itself is not kept) and defaults.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The admin key; compared by digest in constant time.
    pub key: AppKey,
    /// [`AdminConfig::rotation_grace`].
    pub rotation_grace: Duration,
    /// [`AdminConfig::default_max_ids`].
    pub default_max_ids: usize,
}

/// Self-registration (`POST /v1/apps`), closed by default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// `closed` (nobody), `invite` (with a code from the admin API) or `open` (anyone who
    /// proves their origins).
    pub policy: Policy,
    /// How long fetching one origin's challenge may take, DNS and redirects included.
    #[serde(with = "humantime_serde")]
    pub challenge_timeout: Duration,
    /// The longest challenge answer read, in bytes.
    pub challenge_max_bytes: usize,
    /// Fetch challenges from loopback and private addresses too. Only for tests and
    /// intranets: on a public server it lets anyone make CallHome request internal URLs.
    pub allow_private_origins: bool,
    /// How long a challenge token waits to be used.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Tokens waiting at once, in all.
    pub max_pending: usize,
    /// Tokens waiting at once for one client IP (IPv6: per /64).
    pub max_pending_per_ip: usize,
    /// Origins one app may register with.
    pub max_origins: usize,
    /// Challenges and registrations per client IP (IPv6: per /64).
    pub per_ip: SlowRate,
    /// The id quota of a self-registered app (the smaller of this and `limits.max_ids`).
    pub max_ids: usize,
    /// The create rate of a self-registered app.
    pub create_per_app: RateLimit,
    /// The notify rate of a self-registered app.
    pub notify_per_app: RateLimit,
    /// The largest info a self-registered app may notify (the smaller of this and
    /// `limits.info_max_bytes`).
    pub info_max_bytes: usize,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Closed,
            challenge_timeout: Duration::from_secs(5),
            challenge_max_bytes: 1024,
            allow_private_origins: false,
            token_ttl: Duration::from_secs(15 * 60),
            max_pending: 10_000,
            max_pending_per_ip: 10,
            max_origins: 8,
            per_ip: SlowRate {
                per_minute: 10,
                burst: 20,
            },
            max_ids: 1000,
            create_per_app: RateLimit {
                per_second: 10,
                burst: 100,
            },
            notify_per_app: RateLimit {
                per_second: 100,
                burst: 1000,
            },
            info_max_bytes: 1024,
        }
    }
}

/// A rate for rare requests: `burst` at once, refilled at `per_minute`; `per_minute` = 0
/// turns it off.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SlowRate {
    /// Sustained requests per minute; 0 for no limit.
    pub per_minute: u32,
    /// Requests allowed at once after a quiet spell; at least 1 when the limit is on.
    pub burst: u32,
}

fn validate_registration(
    registration: &RegistrationConfig,
    limits: &Limits,
    store: &StoreConfig,
) -> Result<(Terms, Vec<String>), ConfigError> {
    let r = registration;
    let mut warnings = Vec::new();
    let between = |field: &str, value: Duration, low: Duration, high: Duration, words: &str| {
        if value < low || value > high {
            Err(invalid(
                format!("registration.{field}"),
                format!("must be between {words}"),
            ))
        } else {
            Ok(())
        }
    };
    between(
        "challenge_timeout",
        r.challenge_timeout,
        Duration::from_millis(100),
        Duration::from_secs(60),
        "100ms and 1m",
    )?;
    between(
        "token_ttl",
        r.token_ttl,
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
        "1s and 24h",
    )?;
    check_count(
        "registration.challenge_max_bytes",
        r.challenge_max_bytes,
        64 * 1024,
    )?;
    check_count("registration.max_pending", r.max_pending, 1_000_000)?;
    check_count(
        "registration.max_pending_per_ip",
        r.max_pending_per_ip,
        r.max_pending,
    )?;
    check_count("registration.max_origins", r.max_origins, 64)?;
    check_count("registration.max_ids", r.max_ids, MAX_IDS)?;
    check_count(
        "registration.info_max_bytes",
        r.info_max_bytes,
        MAX_INFO_BYTES,
    )?;
    if r.per_ip.per_minute > 0 && r.per_ip.burst == 0 {
        return Err(invalid(
            "registration.per_ip",
            "burst must be at least 1 (or per_minute = 0 to turn the limit off)",
        ));
    }
    if r.per_ip.per_minute > 60 * MAX_RATE_PER_SECOND || r.per_ip.burst > MAX_RATE_BURST {
        return Err(invalid(
            "registration.per_ip",
            "per_minute or burst is too large",
        ));
    }
    check_rate("registration.create_per_app", r.create_per_app)?;
    check_rate("registration.notify_per_app", r.notify_per_app)?;
    if r.policy != Policy::Closed {
        if store.backend == Backend::Memory && store.snapshot_path.is_none() {
            warnings.push(
                "self-registration is on without store.snapshot_path: apps registered here \
                 are forgotten at the next restart"
                    .into(),
            );
        }
        if r.allow_private_origins {
            warnings.push(
                "registration.allow_private_origins = true: anyone may make this server fetch \
                 URLs on loopback and private addresses; for tests and intranets only"
                    .into(),
            );
        }
    }
    let terms = Terms {
        policy: r.policy,
        challenge: crate::challenge::Policy {
            timeout: r.challenge_timeout,
            max_bytes: r.challenge_max_bytes,
            allow_private: r.allow_private_origins,
            ..crate::challenge::Policy::default()
        },
        token_ttl: r.token_ttl,
        max_pending: r.max_pending,
        max_pending_per_ip: r.max_pending_per_ip,
        max_origins: r.max_origins,
        max_ids: r.max_ids.min(limits.max_ids),
        limits: AppLimits {
            create_per_app: Some(r.create_per_app),
            notify_per_app: Some(r.notify_per_app),
            info_max_bytes: Some(r.info_max_bytes.min(limits.info_max_bytes)),
        },
    };
    Ok((terms, warnings))
}

/// The longest rotation grace: a month.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

fn validate_admin(
    admin: &AdminConfig,
    limits: &Limits,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Option<Admin>, Vec<String>), ConfigError> {
    let key = match (&admin.key, &admin.key_env) {
        (Some(_), Some(_)) => {
            return Err(invalid("admin.key", "set either key or key_env, not both"));
        }
        (None, None) => return Ok((None, Vec::new())),
        (Some(key), None) => key.clone(),
        (None, Some(var)) => AppKey::new(env(var).ok_or_else(|| {
            invalid(
                "admin.key_env",
                format!("environment variable {var} is not set"),
            )
        })?),
    };
    if key.len() < WEAK_KEY_LEN {
        return Err(invalid(
            "admin.key",
            format!("must be at least {WEAK_KEY_LEN} bytes: it can make and remove apps"),
        ));
    }
    if admin.rotation_grace > MAX_ROTATION_GRACE {
        return Err(invalid("admin.rotation_grace", "must be at most 30d"));
    }
    if admin.default_max_ids == 0 || admin.default_max_ids > limits.max_ids {
        return Err(invalid(
            "admin.default_max_ids",
            format!("must be between 1 and limits.max_ids ({})", limits.max_ids),
        ));
    }
    Ok((
        Some(Admin {
            key,
            rotation_grace: admin.rotation_grace,
            default_max_ids: admin.default_max_ids,
        }),
        Vec::new(),
    ))
}

/// How connections are served.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve HTTP/1.1 on CallHome's lean path, which frees every buffer while a request
    /// waits (docs/performance.md). `false` serves every connection with hyper instead: the
    /// same answers at about 15 times the memory per waiting client; the test suite runs both
    /// ways to prove they answer the same.
    pub lean_path: bool,
    /// Accept HTTP/2 with prior knowledge (no TLS, no upgrade) on the plain port. Off by
    /// default: browsers never speak it without TLS, and a reverse proxy in front speaks
    /// HTTP/1.1 to CallHome. When on, each waiting stream counts against `max_connections`
    /// like a waiting connection, and `header_timeout` and `idle_timeout` apply to the
    /// connection as a whole.
    pub http2_cleartext: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            lean_path: true,
            http2_cleartext: false,
        }
    }
}

/// TLS served by the daemon itself. With both files given, the `listen` port speaks TLS and
/// nothing else (a public daemon must not also answer in plaintext by mistake), offering
/// HTTP/2 and HTTP/1.1 by ALPN. Without them, plain HTTP, for a proxy in front to secure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The PEM certificate chain, the server's certificate first (certbot's
    /// `fullchain.pem`).
    pub cert_path: Option<PathBuf>,
    /// The PEM private key of that certificate (certbot's `privkey.pem`).
    pub key_path: Option<PathBuf>,
    /// How often both files are looked at; when one changed they are read again and new
    /// connections get the new certificate. A file that does not load keeps the old one.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_path: None,
            key_path: None,
            reload_interval: Duration::from_secs(30),
        }
    }
}

/// `tls.reload_interval` at least: each check is a `stat` of two files, but more often than
/// every second buys nothing a renewal needs.
pub const MIN_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// `tls.reload_interval` at most: a day, so a renewed certificate is in use well before the
/// old one expires.
pub const MAX_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Checks `[tls]` and loads its files: a daemon that cannot serve its certificate does not
/// start.
fn validate_tls(tls: &TlsConfig) -> Result<Option<Arc<Tls>>, ConfigError> {
    let (cert_path, key_path) = match (&tls.cert_path, &tls.key_path) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(invalid(
                "tls.key_path",
                "missing: cert_path needs the key_path of its private key",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "tls.cert_path",
                "missing: key_path needs the cert_path of its certificate chain",
            ));
        }
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
    };
    if tls.reload_interval < MIN_TLS_RELOAD_INTERVAL
        || tls.reload_interval > MAX_TLS_RELOAD_INTERVAL
    {
        return Err(invalid("tls.reload_interval", "must be between 1s and 24h"));
    }
    let files = tls::Files {
        cert_path,
        key_path,
    };
    Tls::load(files, tls.reload_interval)
        .map(|loaded| Some(Arc::new(loaded)))
        .map_err(|e| invalid(e.field(), e.to_string()))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// Request rates, each a token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Id creations per app (`POST /v1/ids`, `/idcreate`).
    pub create_per_app: RateLimit,
    /// Notifies per app.
    pub notify_per_app: RateLimit,
    /// Polls, event streams and iframe pages per client IP (IPv6: per /64).
    pub browser_per_ip: RateLimit,
}

/// One rate: `per_second` = 0 turns it off.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second; 0 for no limit.
    pub per_second: u32,
    /// Requests allowed at once after a quiet spell; at least 1 when the limit is on.
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const OFF: Self = Self {
        per_second: 0,
        burst: 0,
    };

    /// True when this rate limits anything.
    pub fn is_on(self) -> bool {
        self.per_second > 0
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            create_per_app: RateLimit {
                per_second: 100,
                burst: 1000,
            },
            notify_per_app: RateLimit {
                per_second: 50_000,
                burst: 100_000,
            },
            browser_per_ip: RateLimit {
                per_second: 50,
                burst: 500,
            },
        }
    }
}

/// Where state is kept across restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The snapshot file; `None` keeps state in memory only (a restart forgets every id).
    pub snapshot_path: Option<PathBuf>,
    /// How often the snapshot is written when something changed. A `kill -9` loses at most
    /// this much.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Where ids live: in this process (`memory`) or in Redis, shared by every node
    /// (`redis`; docs/cluster.md).
    pub backend: Backend,
    /// The Redis to use with `backend = "redis"`, e.g. `redis://:password@10.0.0.5:6379/0`.
    /// Its password is never logged.
    pub redis_url: Option<RedisUrl>,
    /// The name of an environment variable holding `redis_url`, to keep the password out
    /// of the file.
    pub redis_url_env: Option<String>,
    /// Sentinels (`host:port`) that know the Redis master; with them, `redis_master_name`
    /// names it, and `redis_url` (if given) only lends its password and database.
    pub redis_sentinels: Vec<String>,
    /// The master's name in Sentinel (`sentinel monitor <name> ...`).
    pub redis_master_name: Option<String>,
    /// This node's name in the cluster; default: the host name and the listen port.
    pub node_name: Option<String>,
    /// How long a create, notify or delete waits for Redis before it answers `503
    /// backplane_unavailable`.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            snapshot_path: None,
            snapshot_interval: Duration::from_secs(1),
            backend: Backend::Memory,
            redis_url: None,
            redis_url_env: None,
            redis_sentinels: Vec::new(),
            redis_master_name: None,
            node_name: None,
            command_timeout: Duration::from_secs(1),
        }
    }
}

/// Where ids live.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process, saved by snapshots.
    #[default]
    Memory,
    /// In Redis, shared by every node.
    Redis,
}

/// A Redis URL, whose password never reaches a log: `Debug` and `Display` show it as `***`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wraps a URL.
    pub fn new(url: String) -> Self {
        Self(url)
    }

    /// The URL itself, password and all: for the Redis client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(_) => "(unparsable redis url)".into(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Resource limits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Ids that may exist at once; creating one more answers 503.
    pub max_ids: usize,
    /// Ids one app may hold at once, unless its `[[apps]]` entry sets `max_ids`; creating one
    /// more answers 429. 0: an equal share of `max_ids` (`max_ids` / the number of apps), so
    /// that no app can use up ids another app needs.
    pub max_ids_per_app: usize,
    /// Largest info a notify may carry, in bytes of UTF-8.
    pub info_max_bytes: usize,
    /// How long a poll is held before it answers 204 and the client asks again. Keep it below
    /// any proxy's read timeout.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// How often an idle event stream gets a comment line, so proxies and browsers do not
    /// take it for dead. Keep it below every proxy's idle timeout.
    #[serde(with = "humantime_serde")]
    pub sse_keepalive: Duration,
    /// Clients that may wait on one id at once (a page open in several tabs); one more
    /// releases the one that has waited longest (`slot`: the newest waiter wins).
    pub max_waiters_per_id: u32,
    /// Ids one event stream or long poll may wait on at once (`watch=`): a browser's tabs
    /// share one connection for all their subscriptions.
    pub max_ids_per_stream: usize,
    /// Notifies one batch (`POST /v1/notify`) may carry; more is refused whole.
    pub max_batch: usize,
    /// Ids neither polled nor notified for this long are deleted. At least 1s, and longer
    /// than `poll_timeout`.
    #[serde(with = "humantime_serde")]
    pub id_idle_ttl: Duration,
    /// Open client connections; one more is answered 503 and closed. 0: the open-file
    /// limit minus a reserve for everything else the process opens.
    pub max_connections: usize,
    /// How long a client may take to send a whole request head once it has started one.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a connection may sit idle between requests.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a request body may take to arrive.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// How long writing one response (or one event of a stream) may take before a client
    /// that does not read is dropped.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
}

impl Limits {
    /// The largest request body read, in bytes: a JSON string may spend six bytes
    /// (`\u00XX`) on each byte of info, and [`BODY_OVERHEAD`] more wrap it. Saturating, so
    /// it cannot wrap even for limits that were never validated.
    pub fn body_limit(&self) -> usize {
        self.info_max_bytes
            .saturating_mul(6)
            .saturating_add(BODY_OVERHEAD)
    }

    /// The largest body of a batch notify: [`Limits::body_limit`] per notify it may carry,
    /// at most [`MAX_BATCH_BODY`].
    pub fn batch_body_limit(&self) -> usize {
        self.body_limit()
            .saturating_mul(self.max_batch)
            .min(MAX_BATCH_BODY)
            .max(self.body_limit())
    }
}

/// One web application as written in the config.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// A unique name, used in logs.
    pub name: String,
    /// The secret key, written in the file. Prefer `key_env` outside development.
    pub key: Option<AppKey>,
    /// The name of an environment variable that holds the key.
    pub key_env: Option<String>,
    /// Origins the app's pages are served from; `*` only when listed explicitly.
    pub origins: Vec<String>,
    /// Ids this app may hold at once; `None`: `limits.max_ids_per_app`.
    pub max_ids: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            log: "info".into(),
            workers: 0,
            drain_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::ZERO,
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Text,
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            store: StoreConfig::default(),
            http: HttpConfig::default(),
            idempotency: IdempotencyConfig::default(),
            admin: AdminConfig::default(),
            tls: TlsConfig::default(),
            registration: RegistrationConfig::default(),
            apps: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ids: 1_000_000,
            max_ids_per_app: 0,
            info_max_bytes: 4096,
            poll_timeout: Duration::from_secs(25),
            sse_keepalive: Duration::from_secs(15),
            max_waiters_per_id: 8,
            max_ids_per_stream: 64,
            max_batch: 1_000,
            id_idle_ttl: Duration::from_secs(24 * 3600),
            max_connections: 0,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--public-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// `--log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// The configuration after validation: typed, and ready to run on.
#[derive(Debug)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The public base URL without a trailing slash, if configured.
    pub public_url: Option<String>,
    /// The tracing filter.
    pub log: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Threads serving requests (0: one per core).
    pub workers: usize,
    /// How long a shutdown waits for connections.
    pub drain_timeout: Duration,
    /// How long `/readyz` fails before a shutdown stops accepting.
    pub shutdown_grace: Duration,
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Resource limits.
    pub limits: Limits,
    /// Request rates.
    pub rate_limits: RateLimits,
    /// Where state is kept across restarts.
    pub store: StoreConfig,
    /// How connections are served.
    pub http: HttpConfig,
    /// The registered apps.
    pub apps: Apps,
    /// The admin API, when it has a key.
    pub admin: Option<Admin>,
    /// `Idempotency-Key` handling.
    pub idempotency: IdempotencyConfig,
    /// TLS on the listener, with its certificate loaded.
    pub tls: Option<Arc<Tls>>,
    /// Self-registration.
    pub registration: Terms,
    /// Challenges and self-registrations per client IP.
    pub registration_rate: SlowRate,
    /// Things worth a warning at start-up (weak keys and the like), already worded.
    pub warnings: Vec<String>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` does not exist.
    #[error("config file {0} not found (pass --config PATH or set CALLHOME_CONFIG)")]
    Missing(PathBuf),
    /// The file or the environment could not be parsed.
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("{field}: {reason}")]
    Invalid {
        /// The path of the field, e.g. `apps[1].origins[0]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Top-level keys that `CALLHOME_*` variables may set. Other `CALLHOME_*` variables (an app's
/// `key_env`, say) are left alone instead of being taken for unknown config keys.
const ENV_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "log",
    "workers",
    "drain_timeout",
    "shutdown_grace",
    "trusted_proxies",
    "log_format",
    "limits",
    "rate_limits",
    "store",
    "http",
    "tls",
    "idempotency",
    "admin",
    "registration",
];

impl Config {
    /// Loads the layers: defaults, the file at `path`, the environment, then `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(path))
            .merge(Env::prefixed("CALLHOME_").split("__").filter(|key| {
                // Compare without case: keys may keep the variable's.
                let top = key.as_str().split('.').next().unwrap_or_default();
                ENV_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
            }))
            .merge(Serialized::globals(overrides))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    /// Checks every field and builds the typed [`Settings`]. `env` looks up `key_env`
    /// variables (a parameter so tests need not touch the process environment).
    pub fn validate(self, env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!(
                    "{:?} is not an address:port such as 127.0.0.1:8080",
                    self.listen
                ),
            )
        })?;
        let public_url = self
            .public_url
            .as_deref()
            .map(parse_public_url)
            .transpose()?;
        if self.log.trim().is_empty() {
            return Err(invalid("log", "must not be empty (try \"info\")"));
        }
        if self.workers > 1024 {
            return Err(invalid(
                "workers",
                "must be at most 1024 (0 means one per core)",
            ));
        }
        if self.drain_timeout > Duration::from_secs(3600) {
            return Err(invalid("drain_timeout", "must be at most 1h"));
        }
        if self.shutdown_grace > Duration::from_secs(600) {
            return Err(invalid("shutdown_grace", "must be at most 10m"));
        }
        let (trusted_proxies, proxy_warnings) = validate_trusted_proxies(&self.trusted_proxies)?;
        validate_limits(&self.limits)?;
        validate_rate_limits(&self.rate_limits)?;
        let (store, store_warnings) = validate_store(self.store, &env)?;
        let tls = validate_tls(&self.tls)?;
        let (registration, registration_warnings) =
            validate_registration(&self.registration, &self.limits, &store)?;

        let (admin, admin_warnings) = validate_admin(&self.admin, &self.limits, &env)?;
        let (apps, app_warnings) = validate_apps(&self.apps, &self.limits, env)?;
        if admin
            .as_ref()
            .is_some_and(|a| apps.authenticate(a.key.expose()).is_some())
        {
            return Err(invalid("admin.key", "the same key is used by an app"));
        }
        validate_idempotency(&self.idempotency)?;
        let warnings = proxy_warnings
            .into_iter()
            .chain(store_warnings)
            .chain(admin_warnings)
            .chain(registration_warnings)
            .chain(app_warnings)
            .collect();

        Ok(Settings {
            listen,
            public_url,
            log: self.log,
            log_format: self.log_format,
            workers: self.workers,
            drain_timeout: self.drain_timeout,
            shutdown_grace: self.shutdown_grace,
            trusted_proxies,
            limits: self.limits,
            rate_limits: self.rate_limits,
            store,
            http: self.http,
            apps,
            admin,
            idempotency: self.idempotency,
            tls,
            registration,
            registration_rate: self.registration.per_ip,
            warnings,
        })
    }
}

/// Parses `trusted_proxies`; returns them and a warning for each entry that trusts every
/// address of its family (a `/0`): every client could then write its own `X-Forwarded-For`,
/// choosing the IP its `browser_per_ip` bucket and the logs see, and its own `X-Request-Id`.
fn validate_trusted_proxies(
    entries: &[String],
) -> Result<(TrustedProxies, Vec<String>), ConfigError> {
    let mut ranges = Vec::with_capacity(entries.len());
    let mut warnings = Vec::new();
    for (i, text) in entries.iter().enumerate() {
        let field = format!("trusted_proxies[{i}]");
        let range = TrustedProxies::parse_one(text)
            .map_err(|reason| invalid(&field, format!("{text:?} {reason}")))?;
        if range.prefix_len() == 0 {
            let family = if range.addr().is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            };
            warnings.push(format!(
                "{field} = {text:?} trusts every {family} address as a proxy: any such client \
                 can set its own X-Forwarded-For (and so its IP for rate limits and logs) and \
                 X-Request-Id; list only your proxies' addresses"
            ));
        }
        ranges.push(range);
    }
    Ok((TrustedProxies::new(ranges), warnings))
}

/// Checks every `[[apps]]` entry; returns the apps and the warnings worth logging.
fn validate_apps(
    configs: &[AppConfig],
    limits: &Limits,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Apps, Vec<String>), ConfigError> {
    let (quotas, mut warnings) = validate_quotas(configs, limits)?;
    let mut apps = Vec::with_capacity(configs.len());
    let mut seen_keys: Vec<AppKey> = Vec::new();
    for (i, app) in configs.iter().enumerate() {
        let field = |name: &str| format!("apps[{i}].{name}");
        if app.name.trim().is_empty() {
            return Err(invalid(field("name"), "must not be empty"));
        }
        if configs[..i].iter().any(|a| a.name == app.name) {
            return Err(invalid(
                field("name"),
                format!("duplicate app name {:?}", app.name),
            ));
        }
        let key = match (&app.key, &app.key_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(field("key"), "set either key or key_env, not both"));
            }
            (None, None) => return Err(invalid(field("key"), "missing (set key or key_env)")),
            (Some(key), None) => key.clone(),
            (None, Some(var)) => AppKey::new(env(var).ok_or_else(|| {
                invalid(
                    field("key_env"),
                    format!("environment variable {var} is not set"),
                )
            })?),
        };
        if key.is_empty() {
            return Err(invalid(field("key"), "must not be empty"));
        }
        if seen_keys.contains(&key) {
            return Err(invalid(field("key"), "the same key is used by another app"));
        }
        if key.len() < WEAK_KEY_LEN {
            warnings.push(format!(
                "app {:?} has a key of only {} bytes; use {WEAK_KEY_LEN} or more random bytes",
                app.name,
                key.len()
            ));
        }
        if app.origins.is_empty() {
            return Err(invalid(field("origins"), "list at least one origin"));
        }
        let origins = app
            .origins
            .iter()
            .enumerate()
            .map(|(j, o)| {
                Origin::parse(o)
                    .map_err(|e| invalid(format!("apps[{i}].origins[{j}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        apps.push(App::new(&app.name, &key, origins).with_max_ids(quotas[i]));
        seen_keys.push(key);
    }
    if apps.is_empty() {
        warnings.push("no [[apps]] configured: no backend can create ids".into());
    }

    Ok((Apps::new(apps), warnings))
}

/// Each app's id quota (its `max_ids`, else `limits.max_ids_per_app`, else an equal share of
/// `limits.max_ids`), and a warning when the quotas add up to more than `max_ids`: then an
/// app under its quota can still be refused because the others hold the rest.
fn validate_quotas(
    configs: &[AppConfig],
    limits: &Limits,
) -> Result<(Vec<usize>, Vec<String>), ConfigError> {
    let max_ids = limits.max_ids;
    if limits.max_ids_per_app > max_ids {
        return Err(invalid(
            "limits.max_ids_per_app",
            format!("must be at most limits.max_ids ({max_ids}); 0 means an equal share of it"),
        ));
    }
    let default = match limits.max_ids_per_app {
        0 => (max_ids / configs.len().max(1)).max(1),
        n => n,
    };
    let mut quotas = Vec::with_capacity(configs.len());
    for (i, app) in configs.iter().enumerate() {
        let quota = match app.max_ids {
            None => default,
            Some(0) => {
                return Err(invalid(
                    format!("apps[{i}].max_ids"),
                    "must be at least 1 (remove the app to stop it creating ids)",
                ));
            }
            Some(n) if n > max_ids => {
                return Err(invalid(
                    format!("apps[{i}].max_ids"),
                    format!("must be at most limits.max_ids ({max_ids})"),
                ));
            }
            Some(n) => n,
        };
        quotas.push(quota);
    }
    let mut warnings = Vec::new();
    let total = quotas.iter().fold(0usize, |sum, q| sum.saturating_add(*q));
    if total > max_ids {
        warnings.push(format!(
            "the apps' id quotas add up to {total}, more than limits.max_ids ({max_ids}): an app \
             under its quota can be refused with 503 too_many_ids while the others hold the rest"
        ));
    }
    Ok((quotas, warnings))
}

fn parse_public_url(text: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(text)
        .map_err(|e| invalid("public_url", format!("{text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            "public_url",
            format!("{text:?} is not an http(s) URL with a host"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("public_url", "must not have a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn validate_store(
    mut store: StoreConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(StoreConfig, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    if store.command_timeout < Duration::from_millis(10)
        || store.command_timeout > Duration::from_secs(60)
    {
        return Err(invalid(
            "store.command_timeout",
            "must be between 10ms and 1m",
        ));
    }
    if let Some(var) = &store.redis_url_env {
        if store.redis_url.is_some() {
            return Err(invalid(
                "store.redis_url_env",
                "give redis_url or redis_url_env, not both",
            ));
        }
        let url = env(var).ok_or_else(|| {
            invalid(
                "store.redis_url_env",
                format!("environment variable {var} is not set"),
            )
        })?;
        store.redis_url = Some(RedisUrl::new(url));
    }
    if let Some(url) = &store.redis_url {
        let parsed = url::Url::parse(url.expose());
        if !parsed
            .as_ref()
            .is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss") && u.host().is_some())
        {
            return Err(invalid(
                "store.redis_url",
                format!("{url} is not a redis://host:port/ URL"),
            ));
        }
    }
    if store.backend == Backend::Redis {
        // Ignored rather than refused, so that the shipped file (which has one) runs in
        // cluster mode with nothing but CALLHOME_STORE__BACKEND=redis and a URL.
        if let Some(path) = store.snapshot_path.take() {
            warnings.push(format!(
                "store.snapshot_path ({}) is ignored with backend = \"redis\": Redis is the state",
                path.display()
            ));
        }
        if store.redis_sentinels.is_empty() && store.redis_url.is_none() {
            return Err(invalid(
                "store.redis_url",
                "backend = \"redis\" needs redis_url, redis_url_env or redis_sentinels",
            ));
        }
        if !store.redis_sentinels.is_empty() && store.redis_master_name.is_none() {
            return Err(invalid(
                "store.redis_master_name",
                "redis_sentinels need the master's name",
            ));
        }
    }
    if let Some(name) = &store.node_name
        && (name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    {
        return Err(invalid(
            "store.node_name",
            "must be 1 to 64 letters, digits, '-', '_', '.' or ':'",
        ));
    }
    validate_snapshot(&store)?;
    Ok((store, warnings))
}

fn validate_snapshot(store: &StoreConfig) -> Result<(), ConfigError> {
    let interval = store.snapshot_interval;
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
        return Err(invalid(
            "store.snapshot_interval",
            "must be between 100ms and 1h",
        ));
    }
    if store
        .snapshot_path
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(invalid(
            "store.snapshot_path",
            "must not be empty (leave it out instead)",
        ));
    }
    Ok(())
}

/// Checks that a count is between 1 and `max`.
fn check_count<T>(field: &str, value: T, max: T) -> Result<(), ConfigError>
where
    T: Copy + PartialOrd + From<u8> + std::fmt::Display,
{
    if value < T::from(1) || value > max {
        return Err(invalid(field, format!("must be between 1 and {max}")));
    }
    Ok(())
}

fn validate_limits(limits: &Limits) -> Result<(), ConfigError> {
    check_count("limits.max_ids", limits.max_ids, MAX_IDS)?;
    check_count(
        "limits.info_max_bytes",
        limits.info_max_bytes,
        MAX_INFO_BYTES,
    )?;
    check_count(
        "limits.max_waiters_per_id",
        limits.max_waiters_per_id,
        MAX_WAITERS_PER_ID,
    )?;
    check_count(
        "limits.max_ids_per_stream",
        limits.max_ids_per_stream,
        MAX_IDS_PER_STREAM,
    )?;
    check_count("limits.max_batch", limits.max_batch, MAX_BATCH)?;
    if limits.max_connections > MAX_CONNECTIONS {
        return Err(invalid(
            "limits.max_connections",
            format!("must be at most {MAX_CONNECTIONS} (0: from the open-file limit)"),
        ));
    }
    if limits.poll_timeout < Duration::from_secs(1)
        || limits.poll_timeout > Duration::from_secs(3600)
    {
        return Err(invalid("limits.poll_timeout", "must be between 1s and 1h"));
    }
    if limits.sse_keepalive < Duration::from_secs(1)
        || limits.sse_keepalive > Duration::from_secs(600)
    {
        return Err(invalid(
            "limits.sse_keepalive",
            "must be between 1s and 10m",
        ));
    }
    if limits.id_idle_ttl < Duration::from_secs(1) || limits.id_idle_ttl > MAX_ID_IDLE_TTL {
        return Err(invalid("limits.id_idle_ttl", "must be between 1s and 365d"));
    }
    if limits.id_idle_ttl <= limits.poll_timeout {
        return Err(invalid(
            "limits.id_idle_ttl",
            "must be longer than limits.poll_timeout",
        ));
    }
    for (field, value) in [
        ("limits.header_timeout", limits.header_timeout),
        ("limits.idle_timeout", limits.idle_timeout),
        ("limits.body_timeout", limits.body_timeout),
        ("limits.send_timeout", limits.send_timeout),
    ] {
        if value < Duration::from_millis(100) || value > Duration::from_secs(3600) {
            return Err(invalid(field, "must be between 100ms and 1h"));
        }
    }
    Ok(())
}

fn validate_rate_limits(rates: &RateLimits) -> Result<(), ConfigError> {
    for (field, rate) in [
        ("rate_limits.create_per_app", rates.create_per_app),
        ("rate_limits.notify_per_app", rates.notify_per_app),
        ("rate_limits.browser_per_ip", rates.browser_per_ip),
    ] {
        check_rate(field, rate)?;
    }
    Ok(())
}

/// Checks one rate; the error names `field`. Also the admin API's check of an app's rates.
pub fn check_rate(field: &str, rate: RateLimit) -> Result<(), ConfigError> {
    if rate.is_on() && rate.burst == 0 {
        return Err(invalid(
            field,
            "burst must be at least 1 (or per_second = 0 to turn the limit off)",
        ));
    }
    if rate.per_second > MAX_RATE_PER_SECOND {
        return Err(invalid(
            field,
            format!("per_second must be at most {MAX_RATE_PER_SECOND} (0 turns the limit off)"),
        ));
    }
    if rate.burst > MAX_RATE_BURST {
        return Err(invalid(
            field,
            format!("burst must be at most {MAX_RATE_BURST}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, key: &str, origins: &[&str]) -> AppConfig {
        AppConfig {
            name: name.into(),
            key: Some(AppKey::new(key.into())),
            key_env: None,
            origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            max_ids: None,
        }
    }

    fn config(apps: Vec<AppConfig>) -> Config {
        Config {
            apps,
            ..Config::default()
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn field_of(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn a_good_config_validates() {
        let s = config(vec![app(
            "demo",
            "0123456789abcdef",
            &["http://localhost:3000"],
        )])
        .validate(no_env)
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert!(s.warnings.is_empty());
        assert!(s.apps.authenticate("0123456789abcdef").is_some());
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut c = config(vec![]);
        c.listen = "localhost".into();
        assert_eq!(field_of(c.validate(no_env).unwrap_err()), "listen");

        let c = config(vec![app("a", "k1", &["x"]), app("a", "k2", &["x"])]);
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "apps[0].origins[0]"
        );

        let c = config(vec![
            app("a", "k1", &["http://a"]),
            app("a", "k2", &["http://b"]),
        ]);
        assert_eq!(field_of(c.validate(no_env).unwrap_err()), "apps[1].name");

        let c = config(vec![app("a", "", &["http://a"])]);
        assert_eq!(field_of(c.validate(no_env).unwrap_err()), "apps[0].key");

        let c = config(vec![
            app("a", "k", &["http://a"]),
            app("b", "k", &["http://b"]),
        ]);
        assert_eq!(field_of(c.validate(no_env).unwrap_err()), "apps[1].key");

        let c = config(vec![app("a", "k", &["http://a", "https://b/path"])]);
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "apps[0].origins[1]"
        );

        let mut c = config(vec![]);
        c.limits.poll_timeout = Duration::ZERO;
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "limits.poll_timeout"
        );

        let mut c = config(vec![]);
        c.public_url = Some("example.com".into());
        assert_eq!(field_of(c.validate(no_env).unwrap_err()), "public_url");

        let mut c = config(vec![]);
        c.trusted_proxies = vec!["127.0.0.1".into(), "proxy.local".into()];
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "trusted_proxies[1]"
        );

        let mut c = config(vec![]);
        c.rate_limits.notify_per_app = RateLimit {
            per_second: 10,
            burst: 0,
        };
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "rate_limits.notify_per_app"
        );

        let mut c = config(vec![]);
        c.limits.header_timeout = Duration::ZERO;
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "limits.header_timeout"
        );
    }

    #[test]
    fn the_admin_key_is_long_of_its_own_and_from_the_file_or_the_environment() {
        let with_admin = |key: Option<&str>, key_env: Option<&str>| {
            let mut c = config(vec![app(
                "demo",
                "0123456789abcdef",
                &["http://localhost:3000"],
            )]);
            c.admin.key = key.map(|k| AppKey::new(k.into()));
            c.admin.key_env = key_env.map(String::from);
            c
        };
        assert!(
            with_admin(None, None)
                .validate(no_env)
                .unwrap()
                .admin
                .is_none()
        );
        let env = |var: &str| (var == "ADMIN").then(|| "from-the-environment-0123".to_owned());
        let s = with_admin(None, Some("ADMIN")).validate(env).unwrap();
        assert_eq!(s.admin.unwrap().key.expose(), "from-the-environment-0123");
        for (key, key_env) in [
            (Some("short"), None),
            (Some("0123456789abcdef"), None),
            (Some("admin-key-0123456789"), Some("ADMIN")),
            (None, Some("UNSET")),
        ] {
            let err = with_admin(key, key_env).validate(env).unwrap_err();
            assert!(
                field_of(err).starts_with("admin.key"),
                "{key:?} {key_env:?}"
            );
        }
    }

    #[test]
    fn registration_terms_are_checked_and_name_their_field() {
        type Set = fn(&mut RegistrationConfig);
        let cases: [(&str, Set); 10] = [
            ("registration.challenge_timeout", |r| {
                r.challenge_timeout = Duration::from_millis(99);
            }),
            ("registration.challenge_timeout", |r| {
                r.challenge_timeout = Duration::from_secs(61);
            }),
            ("registration.token_ttl", |r| r.token_ttl = Duration::ZERO),
            ("registration.challenge_max_bytes", |r| {
                r.challenge_max_bytes = 64 * 1024 + 1;
            }),
            ("registration.max_pending_per_ip", |r| {
                r.max_pending = 5;
                r.max_pending_per_ip = 6;
            }),
            ("registration.max_origins", |r| r.max_origins = 0),
            ("registration.max_ids", |r| r.max_ids = 0),
            ("registration.per_ip", |r| {
                r.per_ip = SlowRate {
                    per_minute: 1,
                    burst: 0,
                };
            }),
            ("registration.notify_per_app", |r| {
                r.notify_per_app.per_second = MAX_RATE_PER_SECOND + 1;
            }),
            ("registration.info_max_bytes", |r| r.info_max_bytes = 0),
        ];
        for (field, set) in cases {
            let mut c = config(vec![]);
            set(&mut c.registration);
            assert_eq!(field_of(c.validate(no_env).expect_err(field)), field);
        }
        // A new app's info size is at most the server's.
        let mut c = config(vec![]);
        c.registration.policy = Policy::Open;
        c.limits.info_max_bytes = 100;
        let s = c.validate(no_env).unwrap();
        assert_eq!(s.registration.limits.info_max_bytes, Some(100));
        assert_eq!(s.registration.policy, Policy::Open);
        assert!(
            s.warnings.iter().any(|w| w.contains("snapshot_path")),
            "{:?}",
            s.warnings
        );
        let mut c = config(vec![]);
        c.registration.policy = Policy::Invite;
        c.registration.allow_private_origins = true;
        c.store.snapshot_path = Some("data/x".into());
        let warnings = c.validate(no_env).unwrap().warnings;
        assert!(
            warnings.iter().any(|w| w.contains("allow_private_origins"))
                && !warnings.iter().any(|w| w.contains("snapshot_path")),
            "{warnings:?}"
        );
    }

    #[test]
    // figment's Jail API returns its own large error type; not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn the_registration_policy_is_set_from_the_file_or_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[registration]\npolicy = \"invite\"\nper_ip = { per_minute = 2, burst = 3 }\n",
            )?;
            let c = Config::load(Path::new("c.toml"), &Overrides::default()).unwrap();
            assert_eq!(c.registration.policy, Policy::Invite);
            assert_eq!(c.registration.per_ip.burst, 3);
            jail.set_env("CALLHOME_REGISTRATION__POLICY", "open");
            jail.set_env("CALLHOME_REGISTRATION__MAX_IDS", "5");
            let c = Config::load(Path::new("c.toml"), &Overrides::default()).unwrap();
            assert_eq!(c.registration.policy, Policy::Open);
            assert_eq!(c.registration.max_ids, 5);
            jail.set_env("CALLHOME_REGISTRATION__POLICY", "sometimes");
            let err = Config::load(Path::new("c.toml"), &Overrides::default()).unwrap_err();
            assert!(err.to_string().to_lowercase().contains("policy"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn app_quotas_default_to_an_equal_share_and_are_bounded_by_max_ids() {
        let quotas = |c: Config| {
            let s = c.validate(no_env).unwrap();
            let quotas: Vec<usize> = s.apps.view().iter().map(|a| a.max_ids()).collect();
            (quotas, s.warnings)
        };
        let apps = || {
            vec![
                app("a", "0123456789abcdef", &["http://a"]),
                app("b", "fedcba9876543210", &["http://b"]),
                app("c", "0123456789fedcba", &["http://c"]),
            ]
        };
        let mut c = config(apps());
        c.limits.max_ids = 10;
        assert_eq!(quotas(c), (vec![3, 3, 3], vec![]), "an equal share");

        let mut c = config(apps());
        c.limits.max_ids = 10;
        c.limits.max_ids_per_app = 4;
        c.apps[1].max_ids = Some(2);
        assert_eq!(quotas(c), (vec![4, 2, 4], vec![]), "10: not oversubscribed");

        let mut c = config(apps());
        c.limits.max_ids = 10;
        c.limits.max_ids_per_app = 5;
        c.apps[1].max_ids = Some(1);
        let (q, warnings) = quotas(c);
        assert_eq!(q, [5, 1, 5]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("add up to 11"), "{warnings:?}");

        let mut c = config(apps());
        c.limits.max_ids = 2;
        let (q, warnings) = quotas(c);
        assert_eq!(q, [1, 1, 1], "at least one each");
        assert!(
            warnings[0].contains("more than limits.max_ids (2)"),
            "{warnings:?}"
        );

        let mut c = config(apps());
        c.limits.max_ids = 10;
        c.limits.max_ids_per_app = 11;
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "limits.max_ids_per_app"
        );
        for bad in [0, 11] {
            let mut c = config(apps());
            c.limits.max_ids = 10;
            c.apps[2].max_ids = Some(bad);
            assert_eq!(
                field_of(c.validate(no_env).unwrap_err()),
                "apps[2].max_ids",
                "{bad}"
            );
        }
    }

    #[test]
    fn every_size_count_and_time_limit_has_an_upper_bound() {
        // Each case sets one field to its documented bound (`over` false), which validates,
        // or one past it (`over` true), which is refused naming the field.
        type Set = fn(&mut Config, bool);
        // The documented values (config/callhome.toml, docs/operations.md), written out.
        let cases: [(&str, Set); 19] = [
            ("limits.max_batch", |c, over| {
                c.limits.max_batch = 10_000 + usize::from(over);
            }),
            ("limits.max_ids", |c, over| {
                c.limits.max_ids = 100_000_000 + usize::from(over);
            }),
            ("limits.info_max_bytes", |c, over| {
                c.limits.info_max_bytes = (1 << 20) + usize::from(over);
            }),
            ("limits.max_waiters_per_id", |c, over| {
                c.limits.max_waiters_per_id = 10_000 + u32::from(over);
            }),
            ("limits.max_ids_per_stream", |c, over| {
                c.limits.max_ids_per_stream = 256 + usize::from(over);
            }),
            ("limits.max_connections", |c, over| {
                c.limits.max_connections = 10_000_000 + usize::from(over);
            }),
            ("limits.id_idle_ttl", |c, over| {
                c.limits.id_idle_ttl =
                    Duration::from_secs(365 * 24 * 3600) + Duration::from_millis(u64::from(over));
            }),
            ("limits.poll_timeout", |c, over| {
                c.limits.poll_timeout =
                    Duration::from_secs(3600) + Duration::from_millis(u64::from(over));
            }),
            ("limits.sse_keepalive", |c, over| {
                c.limits.sse_keepalive =
                    Duration::from_secs(600) + Duration::from_millis(u64::from(over));
            }),
            ("limits.header_timeout", |c, over| {
                c.limits.header_timeout =
                    Duration::from_secs(3600) + Duration::from_millis(u64::from(over));
            }),
            ("limits.idle_timeout", |c, over| {
                c.limits.idle_timeout =
                    Duration::from_secs(3600) + Duration::from_millis(u64::from(over));
            }),
            ("limits.body_timeout", |c, over| {
                c.limits.body_timeout =
                    Duration::from_secs(3600) + Duration::from_millis(u64::from(over));
            }),
            ("limits.send_timeout", |c, over| {
                c.limits.send_timeout =
                    Duration::from_secs(3600) + Duration::from_millis(u64::from(over));
            }),
            ("rate_limits.create_per_app", |c, over| {
                c.rate_limits.create_per_app.per_second = 1_000_000 + u32::from(over);
            }),
            ("rate_limits.notify_per_app", |c, over| {
                c.rate_limits.notify_per_app.burst = 10_000_000 + u32::from(over);
            }),
            ("rate_limits.browser_per_ip", |c, over| {
                c.rate_limits.browser_per_ip.burst = 10_000_000 + u32::from(over);
            }),
            ("store.snapshot_interval", |c, over| {
                c.store.snapshot_interval =
                    Duration::from_secs(3600) + Duration::from_millis(u64::from(over));
            }),
            ("drain_timeout", |c, over| {
                c.drain_timeout =
                    Duration::from_secs(3600) + Duration::from_millis(u64::from(over));
            }),
            ("shutdown_grace", |c, over| {
                c.shutdown_grace =
                    Duration::from_secs(600) + Duration::from_millis(u64::from(over));
            }),
        ];
        for (field, set) in cases {
            let mut c = config(vec![]);
            set(&mut c, false);
            if let Err(e) = c.validate(no_env) {
                panic!("{field} at its bound is refused: {e}");
            }
            let mut c = config(vec![]);
            set(&mut c, true);
            assert_eq!(field_of(c.validate(no_env).expect_err(field)), field);
        }
        // The largest values a field's type holds are refused too, never wrapped.
        let mut c = config(vec![]);
        c.limits.info_max_bytes = usize::MAX;
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "limits.info_max_bytes"
        );
        let mut c = config(vec![]);
        c.rate_limits.browser_per_ip = RateLimit {
            per_second: u32::MAX,
            burst: u32::MAX,
        };
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "rate_limits.browser_per_ip"
        );
    }

    #[test]
    fn redis_settings_are_checked_and_the_password_never_shows() {
        let redis = |adjust: fn(&mut StoreConfig)| {
            let mut c = config(vec![app("a", "0123456789abcdef", &["http://a.example"])]);
            c.store.backend = Backend::Redis;
            adjust(&mut c.store);
            c
        };
        let err = redis(|_| {}).validate(no_env).unwrap_err();
        assert_eq!(field_of(err), "store.redis_url");
        let err = redis(|s| s.redis_url = Some(RedisUrl::new("http://x/".into())))
            .validate(no_env)
            .unwrap_err();
        assert_eq!(field_of(err), "store.redis_url");
        let err = redis(|s| s.redis_sentinels = vec!["127.0.0.1:26379".into()])
            .validate(no_env)
            .unwrap_err();
        assert_eq!(field_of(err), "store.redis_master_name");
        let err = redis(|s| {
            s.redis_url = Some(RedisUrl::new("redis://127.0.0.1:1/".into()));
            s.node_name = Some("a b".into());
        })
        .validate(no_env)
        .unwrap_err();
        assert_eq!(field_of(err), "store.node_name");

        // From the environment; a snapshot path is ignored with a warning.
        let s = redis(|s| {
            s.redis_url_env = Some("CH_TEST_REDIS".into());
            s.snapshot_path = Some("data/x".into());
        })
        .validate(|var| (var == "CH_TEST_REDIS").then(|| "redis://:s3cret@127.0.0.1:1/0".into()))
        .unwrap();
        assert_eq!(s.store.snapshot_path, None);
        assert!(s.warnings.iter().any(|w| w.contains("snapshot_path")));
        let url = s.store.redis_url.unwrap();
        assert_eq!(url.expose(), "redis://:s3cret@127.0.0.1:1/0");
        for shown in [format!("{url}"), format!("{url:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn the_body_limit_cannot_wrap() {
        let limits = |info_max_bytes| Limits {
            info_max_bytes,
            ..Limits::default()
        };
        assert_eq!(limits(4096).body_limit(), 4096 * 6 + 1024);
        assert_eq!(limits(MAX_INFO_BYTES).body_limit(), 6 * (1 << 20) + 1024);
        assert_eq!(limits(usize::MAX).body_limit(), usize::MAX);
        assert_eq!(limits(usize::MAX / 6).body_limit(), usize::MAX);
    }

    #[test]
    fn id_idle_ttl_may_be_short_but_must_outlast_a_poll() {
        let with = |ttl_ms: u64, poll_secs: u64| {
            let mut c = config(vec![]);
            c.limits.id_idle_ttl = Duration::from_millis(ttl_ms);
            c.limits.poll_timeout = Duration::from_secs(poll_secs);
            c.validate(no_env)
        };
        with(2_000, 1).unwrap();
        with(1_500, 1).unwrap();
        for (ttl_ms, poll_secs) in [(0, 1), (999, 1), (1_000, 1), (25_000, 25), (24_000, 25)] {
            let err = with(ttl_ms, poll_secs).unwrap_err();
            assert_eq!(
                field_of(err),
                "limits.id_idle_ttl",
                "{ttl_ms} ms, {poll_secs} s"
            );
        }
    }

    #[test]
    fn key_env_is_read_and_required() {
        let mut a = app("a", "", &["http://a"]);
        a.key = None;
        a.key_env = Some("A_KEY".into());
        let s = config(vec![a.clone()])
            .validate(|v| (v == "A_KEY").then(|| "from-the-environment".into()))
            .unwrap();
        assert!(s.apps.authenticate("from-the-environment").is_some());
        assert_eq!(
            field_of(config(vec![a]).validate(no_env).unwrap_err()),
            "apps[0].key_env"
        );
    }

    #[test]
    fn weak_keys_warn() {
        let s = config(vec![app("a", "short", &["http://a"])])
            .validate(no_env)
            .unwrap();
        assert_eq!(s.warnings.len(), 1);
        assert!(
            !s.warnings[0].contains("short"),
            "a warning must not show the key"
        );
    }

    #[test]
    fn trusting_every_address_warns() {
        let with = |proxies: &[&str]| {
            let mut c = config(vec![app("a", "0123456789abcdef", &["http://a"])]);
            c.trusted_proxies = proxies.iter().map(|p| (*p).to_owned()).collect();
            c.validate(no_env).unwrap().warnings
        };
        assert!(with(&["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]).is_empty());
        for everything in ["0.0.0.0/0", "::/0", " 10.1.2.3/0", "::ffff:1.2.3.4/0"] {
            let warnings = with(&["127.0.0.1", everything]);
            assert_eq!(warnings.len(), 1, "{everything}: {warnings:?}");
            assert!(
                warnings[0].starts_with("trusted_proxies[1]")
                    && warnings[0].contains("X-Forwarded-For"),
                "{warnings:?}"
            );
        }
        assert_eq!(with(&["0.0.0.0/0", "::/0"]).len(), 2);
    }

    #[test]
    fn public_url_loses_its_trailing_slash() {
        let mut c = config(vec![]);
        c.public_url = Some("https://push.example/callhome/".into());
        assert_eq!(
            c.validate(no_env).unwrap().public_url.unwrap(),
            "https://push.example/callhome"
        );
    }

    #[test]
    fn the_shipped_config_equals_the_defaults_where_it_sets_them() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/callhome.toml");
        let shipped: Config = Figment::from(Toml::file(&path)).extract().unwrap();
        assert_eq!(shipped.limits, Limits::default());
        assert_eq!(shipped.rate_limits, RateLimits::default());
        assert_eq!(shipped.log, Config::default().log);
        assert_eq!(shipped.log_format, Config::default().log_format);
        assert_eq!(shipped.shutdown_grace, Config::default().shutdown_grace);
        assert_eq!(shipped.trusted_proxies, Config::default().trusted_proxies);
        assert_eq!(shipped.workers, Config::default().workers);
        assert_eq!(shipped.drain_timeout, Config::default().drain_timeout);
        assert_eq!(shipped.http, HttpConfig::default());
        assert_eq!(shipped.tls, TlsConfig::default());
        assert_eq!(shipped.registration, RegistrationConfig::default());
        assert_eq!(
            shipped.store.snapshot_interval,
            StoreConfig::default().snapshot_interval
        );
        shipped.validate(no_env).unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        let dir = std::env::temp_dir().join(format!("callhome-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap();
        let err = Config::load(&path, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
        std::fs::write(&path, "[limits]\npoll_timeout = \"soon\"\n").unwrap();
        let err = Config::load(&path, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_timeout"), "{err}");
        let missing = dir.join("nope.toml");
        assert!(matches!(
            Config::load(&missing, &Overrides::default()),
            Err(ConfigError::Missing(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    // figment's Jail API returns its own large error type; not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn environment_variables_override_the_file_and_flags_override_them() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CALLHOME_LIMITS__MAX_IDS", "77");
            jail.set_env("CALLHOME_STORE__SNAPSHOT_PATH", "/tmp/elsewhere");
            jail.set_env("CALLHOME_LISTEN", "127.0.0.1:1111");
            jail.set_env("CALLHOME_SOME_APP_KEY", "not a config key, left alone");
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/callhome.toml");
            let overrides = Overrides {
                listen: Some("127.0.0.1:2222".into()),
                ..Overrides::default()
            };
            let c = Config::load(&path, &overrides).unwrap();
            assert_eq!(c.limits.max_ids, 77);
            assert_eq!(
                c.store.snapshot_path.as_deref(),
                Some(Path::new("/tmp/elsewhere"))
            );
            assert_eq!(c.listen, "127.0.0.1:2222");
            Ok(())
        });
    }

    #[test]
    fn tls_needs_both_files_readable_and_a_key_that_fits_the_certificate() {
        let dir = std::env::temp_dir().join(format!("callhome-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write("cert.pem", &one.cert.pem());
        let key = write("key.pem", &one.signing_key.serialize_pem());
        let other_key = write("other-key.pem", &other.signing_key.serialize_pem());
        let garbage = write("garbage.pem", "not a certificate\n");
        let with = |cert: Option<&Path>, key: Option<&Path>| {
            let mut c = config(vec![]);
            c.tls.cert_path = cert.map(Path::to_owned);
            c.tls.key_path = key.map(Path::to_owned);
            c.validate(no_env)
        };
        let reason = |err: ConfigError| match err {
            ConfigError::Invalid { field, reason } => (field, reason),
            other => panic!("expected Invalid, got {other}"),
        };

        assert!(with(None, None).unwrap().tls.is_none());
        assert!(with(Some(&cert), Some(&key)).unwrap().tls.is_some());
        let cases: [(Option<&Path>, Option<&Path>, &str, &str); 6] = [
            (Some(&cert), None, "tls.key_path", "missing"),
            (None, Some(&key), "tls.cert_path", "missing"),
            (
                Some(&dir.join("nope.pem")),
                Some(&key),
                "tls.cert_path",
                "cannot read",
            ),
            (
                Some(&cert),
                Some(&dir.join("nope.pem")),
                "tls.key_path",
                "cannot read",
            ),
            (
                Some(&garbage),
                Some(&key),
                "tls.cert_path",
                "no usable PEM certificate",
            ),
            (
                Some(&cert),
                Some(&other_key),
                "tls.key_path",
                "does not fit",
            ),
        ];
        for (cert, key, field, says) in cases {
            let (got, why) = reason(with(cert, key).unwrap_err());
            assert_eq!(got, field, "{cert:?} {key:?}: {why}");
            assert!(why.contains(says), "{cert:?} {key:?}: {why}");
        }
        // A key file that is not a key says so without quoting it.
        let (got, why) = reason(with(Some(&cert), Some(&garbage)).unwrap_err());
        assert_eq!(got, "tls.key_path");
        assert!(why.contains("no usable PEM private key"), "{why}");
        assert!(!why.contains("not a certificate"), "{why}");

        let mut c = config(vec![]);
        c.tls.cert_path = Some(cert.clone());
        c.tls.key_path = Some(key.clone());
        c.tls.reload_interval = Duration::from_millis(10);
        assert_eq!(
            field_of(c.validate(no_env).unwrap_err()),
            "tls.reload_interval"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    // figment's Jail API returns its own large error type; not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn tls_is_set_from_the_environment_like_every_other_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CALLHOME_TLS__CERT_PATH", "/etc/callhome/fullchain.pem");
            jail.set_env("CALLHOME_TLS__KEY_PATH", "/etc/callhome/privkey.pem");
            jail.set_env("CALLHOME_TLS__RELOAD_INTERVAL", "5m");
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/callhome.toml");
            let c = Config::load(&path, &Overrides::default()).unwrap();
            assert_eq!(
                c.tls,
                TlsConfig {
                    cert_path: Some("/etc/callhome/fullchain.pem".into()),
                    key_path: Some("/etc/callhome/privkey.pem".into()),
                    reload_interval: Duration::from_secs(300),
                }
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn every_section_is_set_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CALLHOME_HTTP__LEAN_PATH", "false");
            jail.set_env("CALLHOME_IDEMPOTENCY__WINDOW", "1m");
            jail.set_env("CALLHOME_ADMIN__ROTATION_GRACE", "1h");
            jail.set_env("CALLHOME_REGISTRATION__POLICY", "open");
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/callhome.toml");
            let c = Config::load(&path, &Overrides::default()).unwrap();
            assert!(!c.http.lean_path);
            assert_eq!(c.idempotency.window, Duration::from_secs(60));
            assert_eq!(c.admin.rotation_grace, Duration::from_secs(3600));
            assert_eq!(c.registration.policy, crate::registration::Policy::Open);
            Ok(())
        });
    }

    #[test]
    fn flags_override_the_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/callhome.toml");
        let o = Overrides {
            listen: Some("127.0.0.1:9999".into()),
            ..Overrides::default()
        };
        assert_eq!(Config::load(&path, &o).unwrap().listen, "127.0.0.1:9999");
    }
}
