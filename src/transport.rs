//! The browser side: how a page learns of news. No app key here; the id is the capability.
//!
//! `poll` holds a request until the id's `seq` moves; `events` streams every new value over
//! server-sent events; `iframe` serves the hidden page that runs one of those on our origin
//! and hands values to the parent with `postMessage`; `script` serves `callhome.js`, which the
//! parent page uses to make that iframe. A new transport is a new file here; the publish side
//! does not change.

mod events;
mod iframe;
mod poll;
mod script;

use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::id::Id;
use crate::server::AppState;
use crate::slot::{Latest, Seq, Slot};

/// The browser routes.
pub fn routes() -> Router<AppState> {
    poll::routes()
        .merge(events::routes())
        .merge(iframe::routes())
        .merge(script::routes())
}

/// The query of a waiting request: which id, and the last `seq` the client has seen.
#[derive(Debug, Deserialize)]
struct WaitParams {
    id: String,
    /// 0 (the default) before the client has seen any value.
    #[serde(default)]
    since: Seq,
}

/// A value as the browser side sends it: `{"seq": 3, "info": "..."}`.
#[derive(Debug, Serialize)]
struct Value<'a> {
    seq: Seq,
    info: Option<&'a str>,
}

impl<'a> From<&'a Latest> for Value<'a> {
    fn from(latest: &'a Latest) -> Self {
        Self {
            seq: latest.seq,
            info: latest.info.as_deref(),
        }
    }
}

/// The slot a browser asks about, counted as activity.
fn find(state: &AppState, id: &str) -> Result<Arc<Slot>, ApiError> {
    let id = Id::parse(id)?;
    let slot = state.store.get(id.as_str()).ok_or(ApiError::UnknownId)?;
    slot.touch();
    Ok(slot)
}
