//! The integration suite: every test talks to a real server over real sockets.
//!
//! `support` starts servers on 127.0.0.1 port 0 (in-process, or the real binary) and holds the
//! small HTTP helpers; each module covers one side of the API.

mod admin;
mod api;
mod backends;
mod batch;
mod binary;
mod browser;
mod browser_side;
mod cli;
mod cluster;
mod cluster_front;
mod cluster_registry;
mod concurrency;
mod delivery;
mod demo;
mod differential;
mod discovery;
mod events;
mod expiry;
mod framing;
mod http;
mod http2;
mod idempotency;
mod limits;
mod logs;
mod many;
mod metrics;
mod openapi;
mod parser;
mod proxy;
mod redis_support;
mod registration;
mod restart;
mod routing;
mod sharing;
mod support;
mod tenants;
mod tls;
