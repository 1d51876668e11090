//! The browser side: how a page learns of news. No app key here; the id is the capability.
//!
//! `poll` holds a request until the id's `seq` moves; `iframe` serves the hidden page that
//! runs the poll loop on our origin and hands values to the parent with `postMessage`;
//! `script` serves `callhome.js`, which the parent page uses to make that iframe. A new
//! transport is a new file here; the publish side does not change.

mod iframe;
mod poll;
mod script;

use axum::Router;

use crate::server::AppState;

/// The browser routes.
pub fn routes() -> Router<AppState> {
    poll::routes()
        .merge(iframe::routes())
        .merge(script::routes())
}
