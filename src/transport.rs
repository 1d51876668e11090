//! The browser side: how a page learns of news. No app key here; the id is the capability.
//!
//! `poll` holds a request until the id's `seq` moves; `events` streams every new value over
//! server-sent events; `iframe` serves the hidden page that runs one of those on our origin
//! and hands values to the parent with `postMessage`; `script` serves `callhome.js`, which the
//! parent page uses to make that iframe. A new transport is a new file here; the publish side
//! does not change.

mod events;
mod iframe;
mod many;
mod poll;
mod script;

use std::cell::Cell;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::ClientIp;
use crate::id::Id;
use crate::slot::{Cursor, Epoch, Latest, Seq};
use crate::state::AppState;
use crate::store::{Found, Hold, Place, Watch};

/// The browser routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            POLL_PATH,
            get(
                |State(state): State<AppState>, ClientIp(client), RawQuery(query)| async move {
                    let response = poll::poll(state.clone(), query, client).await;
                    report_when_sent(&state, response)
                },
            ),
        )
        .route(
            EVENTS_PATH,
            get(
                |State(state): State<AppState>,
                 ClientIp(client),
                 RawQuery(query),
                 headers: HeaderMap| async move {
                    events::events(&state, query.as_deref(), headers.get(LAST_EVENT_ID), client)
                        .await
                },
            ),
        )
        .merge(iframe::routes())
        .merge(script::routes())
}

/// How soon a client released for a newer one (see [`crate::slot`]) should come back: long
/// enough that clients over an id's cap take turns about once a second instead of releasing
/// each other as fast as the network allows, short enough that a page a stranger keeps
/// releasing still gets every value within about a second (it asks again from its cursor).
const RELEASED_RETRY: Duration = Duration::from_secs(1);

/// The long poll.
pub const POLL_PATH: &str = "/v1/poll";
/// The event stream.
pub const EVENTS_PATH: &str = "/v1/events";
const LAST_EVENT_ID: &str = "last-event-id";

/// The values a poll's answer carries: reported to the store as delivered
/// ([`crate::store::Store::delivered`]) once the answer has been handed to the client's
/// connection. A response extension: the lean path reports after its write, the router
/// path when hyper has taken the whole body ([`report_when_sent`]).
#[derive(Debug, Clone, Default)]
pub struct Delivered(Vec<(Id, Seq, Epoch)>);

impl Delivered {
    /// One value of one id.
    fn of(id: Id, latest: &Latest) -> Self {
        Self(vec![(id, latest.seq, latest.epoch)])
    }

    fn push(&mut self, id: Id, latest: &Latest) {
        self.0.push((id, latest.seq, latest.epoch));
    }

    /// Tells the store.
    pub fn report(self, state: &AppState) {
        for (id, seq, epoch) in self.0 {
            state.store.delivered(id.as_str(), None, seq, epoch);
        }
    }

    /// `response`, carrying these values.
    fn attach(self, mut response: Response) -> Response {
        if !self.0.is_empty() {
            response.extensions_mut().insert(self);
        }
        response
    }
}

/// `response` with its [`Delivered`] values reported once hyper has taken its whole body
/// (the router path; a `HEAD` answer, or one cut short, reports nothing).
fn report_when_sent(state: &AppState, mut response: Response) -> Response {
    let Some(delivered) = response.extensions_mut().remove::<Delivered>() else {
        return response;
    };
    let state = state.clone();
    response.map(|body| {
        axum::body::Body::new(Reporting {
            body,
            report: Some((state, delivered)),
            ended: false,
        })
    })
}

/// A body that reports its values delivered when it is dropped, if it was read to its end.
struct Reporting {
    body: axum::body::Body,
    report: Option<(AppState, Delivered)>,
    ended: bool,
}

impl hyper::body::Body for Reporting {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.body.is_end_stream() {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Reporting {
    fn drop(&mut self) {
        if self.ended
            && let Some((state, delivered)) = self.report.take()
        {
            delivered.report(&state);
        }
    }
}

/// The two requests that wait, as the lean path (`held`) hands them over.
#[derive(Debug)]
pub enum Held {
    /// `GET /v1/poll`.
    Poll,
    /// `GET /v1/events`.
    Events,
}

impl Held {
    /// The held request at `path`, if it is one.
    pub fn at(path: &str) -> Option<Self> {
        match path {
            POLL_PATH => Some(Self::Poll),
            EVENTS_PATH => Some(Self::Events),
            _ => None,
        }
    }

    /// Answers it exactly as the router would: same code, same responses.
    pub async fn respond(
        self,
        state: AppState,
        query: Option<String>,
        last_event_id: Option<HeaderValue>,
        client: IpAddr,
    ) -> Response {
        match self {
            Self::Poll => poll::poll(state, query, Some(client)).await,
            Self::Events => {
                events::events(
                    &state,
                    query.as_deref(),
                    last_event_id.as_ref(),
                    Some(client),
                )
                .await
            }
        }
    }
}

/// The query of a waiting request: which id, and the last `seq` the client has seen.
#[derive(Debug, Deserialize)]
struct WaitParams {
    id: String,
    /// 0 (the default) before the client has seen any value.
    #[serde(default)]
    since: Seq,
    /// The epoch of `since`, as the last value the client got said (cluster mode); 0 asks
    /// for epochs in the answers before the client knows one.
    epoch: Option<Epoch>,
}

impl WaitParams {
    fn cursor(&self) -> Cursor {
        Cursor {
            seq: self.since,
            epoch: self.epoch,
        }
    }
}

/// A value as the browser side sends it: `{"seq": 3, "info": "..."}`, with `"epoch"` in
/// cluster mode to a client that sent one, and `"reset": true` when the client must forget
/// the `seq`s it saw (the id's count started again: another epoch, or a `seq` below the
/// client's cursor).
#[derive(Debug, Serialize)]
struct Value<'a> {
    seq: Seq,
    info: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<Epoch>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reset: bool,
}

impl<'a> Value<'a> {
    /// `latest` as an answer to a client whose cursor is `since`.
    fn of(latest: &'a Latest, since: Cursor) -> Self {
        Self {
            seq: latest.seq,
            info: latest.info.as_deref(),
            epoch: (since.epoch.is_some() && latest.epoch != 0).then_some(latest.epoch),
            // Only to clients that deal in epochs: the others see `seq` go down and know.
            reset: since.epoch.is_some() && since.is_reset_by(latest),
        }
    }
}

thread_local! {
    /// Set when a browser's wait takes its place on a slot, read by [`poll_noting_wait`].
    static BEGAN_WAITING: Cell<bool> = const { Cell::new(false) };
}

/// Polls `respond` (a [`Held::respond`]) once; `began` becomes true when it has taken a
/// waiting place, now or before. So the lean path tells a lookup still in flight (worth
/// finishing for a client that half-closed its side) from a wait nobody will see the end of,
/// with nothing stored per request: the flag is set and read within this one poll, on this
/// thread.
pub fn poll_noting_wait<F: Future>(
    respond: Pin<&mut F>,
    cx: &mut Context<'_>,
    began: &mut bool,
) -> Poll<F::Output> {
    BEGAN_WAITING.set(false);
    let poll = respond.poll(cx);
    *began |= BEGAN_WAITING.get();
    poll
}

/// Charges one request to the client's rate limit, when the client is known.
fn admit(state: &AppState, client: Option<IpAddr>) -> Result<(), ApiError> {
    client.map_or(Ok(()), |ip| state.limiters.browser(ip))
}

/// Begins a browser's wait on `id` from `since` (counted as activity): the value it has not
/// seen, or one of the id's waiting places, counting the waiter released when the id is full.
async fn watch(state: &AppState, id: &str, since: Cursor, hold: Hold) -> Result<Begun, ApiError> {
    Id::check(id)?;
    let watch = state
        .store
        .watch(id, since, state.limits.max_waiters_per_id, hold)
        .await?;
    Ok(match watch {
        Watch::Now(latest) => Begun::Now(latest),
        Watch::Waiting { held, released } => {
            state.metrics.waiters_released.inc_by(released as u64);
            BEGAN_WAITING.set(true);
            Begun::Waiting(held)
        }
    })
}

/// How a browser's wait began.
enum Begun {
    Now(Latest),
    Waiting(Place),
}

/// The id a browser asks about, counted as activity.
async fn find(state: &AppState, id: &str) -> Result<Found, ApiError> {
    Id::check(id)?;
    Ok(state.store.find(id).await?)
}
