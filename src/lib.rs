//! CallHome: a push relay for web apps. It holds idle browser connections so the app's own
//! servers do not have to, and wakes them when the app says something changed.
//!
//! # The request paths
//! - **Backends** (`api`): `POST /v1/ids` creates an id, `POST /v1/ids/{id}/notify` stores a
//!   short string as the id's newest value and wakes its waiting clients; status and delete
//!   beside them; `/idcreate` and `/notify` keep the original proposal's URLs. Authenticated
//!   with an app key (`auth`). `/v1/admin` is the operator's (apps and invites, with the admin
//!   key); `/v1/apps` lets an app register itself where `registration` allows it, once
//!   `challenge` fetched a token from each of its origins.
//! - **Browsers** (`transport`): the hidden iframe page, the long poll it runs, and
//!   `callhome.js` for the parent page. No key: the id is the capability, and the iframe only
//!   ever posts to the origin the id is bound to.
//!
//! # Where state lives
//! In memory, in `store`: a sharded map from [`id::Id`] to [`slot::Slot`]. A slot keeps only
//! the newest value and its sequence number; waiting clients hold an `Arc` to the slot and
//! sleep on its `Notify`, never on a map guard. `state` holds what every request can reach
//! (store, apps, limits, metrics), `routes` the router and its middleware, `server` the accept
//! loop and the shutdown; the arrows point one way: handlers import `state`, never `server`.
//! `config` loads and validates settings; `error` is the one place errors become HTTP;
//! `connection` frames HTTP/1.1 so a waiting client holds no buffers (docs/performance.md),
//! over plain TCP or over the TLS of `tls` (certificates reloaded as they are renewed).
//!
//! # Running it
//! `snapshot` keeps the store across restarts; `housekeeping` expires idle ids in the
//! background; `rate_limit` (with `client_ip` for who a request comes from behind trusted
//! proxies) and the timeouts and connection cap in `connection` keep one noisy client from
//! hurting the others; `metrics` defines what `/metrics` shows; `request_id` and `telemetry`
//! put a request id on every log line a request causes; `health` (with `/metrics`) and
//! `shutdown` let a load balancer drain a node. docs/operations.md has the operator's view.
//!
//! # What a backplane will add
//! Several nodes behind one name need a notify on node A to wake a client on node B. The
//! store's four calls (`create`, `publish`, `remove`, `get`) are the seam where a Redis
//! backplane fits without the HTTP side changing.

pub mod api;
pub mod auth;
pub mod challenge;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod connection;
pub mod discovery;
pub mod error;
pub mod extract;
pub mod health;
pub mod housekeeping;
pub mod id;
pub mod idempotency;
pub mod invite;
pub mod metrics;
pub mod origin;
pub mod permit;
pub mod rate_limit;
pub mod registration;
pub mod registry;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod slot;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
