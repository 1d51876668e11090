//! `GET /v1/events?watch=ID.SEQ[.EPOCH],...`: one event stream for many ids, so that every
//! tab and subscription of a browser can share one connection (a browser opens at most six
//! HTTP/1.1 connections to a host, for all its tabs).
//!
//! Each id is watched as a stream of its own would be: it takes one of the id's waiting
//! places, has its own cursor, and its values come as unnamed events whose data says which
//! id they are for (`{"id": ..., "seq": ..., "info": ...}`). What ends one id ends only that
//! id: unknown at the start (`event: error` with the id and the error), deleted (`event:
//! gone`), or its place taken by a newer client (`event: released`). The stream ends when
//! its last id has ended, at shutdown, or when the client leaves.
//!
//! Every value event's `id:` line is the whole cursor list in the `watch` syntax, so a
//! browser's `EventSource` reconnecting with `Last-Event-ID` resumes every id where it was.
//! The `watch` parameter says which ids; `Last-Event-ID` only moves their cursors.
//!
//! `GET /v1/poll?watch=...` is the long poll of many ids (the fallback where a stream cannot
//! be held): it answers `{"values": [...], "ended": [...]}` as soon as one id has news.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::http::HeaderValue;
use axum::response::sse::Event;
use futures_util::future::{join_all, select_all};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Begun, Delivered, Value};
use crate::error::ApiError;
use crate::extract::parse_query;
use crate::id::Id;
use crate::metrics::Waiting;
use crate::slot::{Cursor, Epoch, Seq, WaitOutcome};
use crate::state::AppState;
use crate::store::{Hold, Place};

/// Which ids a stream or poll is for: `id` (one, with `since` and `epoch`) or `watch`.
#[derive(Debug, Deserialize)]
struct Which {
    id: Option<String>,
    watch: Option<String>,
}

/// The `watch` parameter of `query`, when the request is for many ids; `id` with it is a 400.
pub fn watch_param(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let which: Which = parse_query(query)?;
    if which.watch.is_some() && which.id.is_some() {
        return Err(ApiError::InvalidParameters(
            "give id (one id) or watch (many), not both".into(),
        ));
    }
    Ok(which.watch)
}

/// The ids and cursors of a `watch` list, in its order.
pub type Watched = Vec<(Id, Cursor)>;

/// Parses `ID.SEQ[.EPOCH],...`: at most `max` ids, each once.
pub fn parse_watch(text: &str, max: usize) -> Result<Watched, ApiError> {
    let invalid = |why: String| ApiError::InvalidParameters(format!("watch: {why}"));
    let mut watched = Watched::new();
    for (n, entry) in text.split(',').enumerate() {
        if n == max {
            return Err(invalid(format!("at most {max} ids per stream")));
        }
        let mut parts = entry.split('.');
        let id = parts.next().unwrap_or_default();
        let id = Id::parse(id).map_err(|e| invalid(format!("entry {}: {e}", n + 1)))?;
        let seq = parts
            .next()
            .and_then(|seq| seq.parse::<Seq>().ok())
            .ok_or_else(|| invalid(format!("entry {}: ID.SEQ or ID.SEQ.EPOCH", n + 1)))?;
        let epoch =
            match parts.next() {
                None => None,
                Some(epoch) => Some(epoch.parse::<Epoch>().map_err(|_| {
                    invalid(format!("entry {}: the epoch is a whole number", n + 1))
                })?),
            };
        if parts.next().is_some() {
            return Err(invalid(format!("entry {}: ID.SEQ or ID.SEQ.EPOCH", n + 1)));
        }
        if watched.iter().any(|(seen, _)| *seen == id) {
            return Err(invalid(format!("entry {}: {id} is listed twice", n + 1)));
        }
        watched.push((id, Cursor { seq, epoch }));
    }
    Ok(watched)
}

/// The cursor list in the `watch` syntax, as an event's `id:`.
fn cursor_list<'a>(cursors: impl Iterator<Item = (&'a Id, Cursor)>) -> String {
    let mut text = String::new();
    for (id, cursor) in cursors {
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(id.as_str());
        text.push('.');
        text.push_str(&cursor.seq.to_string());
        if let Some(epoch) = cursor.epoch {
            text.push('.');
            text.push_str(&epoch.to_string());
        }
    }
    text
}

/// `watch`, with the cursors of a `Last-Event-ID` (a cursor list) for the ids it names.
pub fn resume(mut watched: Watched, last_event_id: Option<&HeaderValue>) -> Watched {
    let Some(last) = last_event_id.and_then(|v| v.to_str().ok()) else {
        return watched;
    };
    // A Last-Event-ID this server did not write (or one cut short) moves no cursor.
    let Ok(seen) = parse_watch(last.trim(), crate::config::MAX_IDS_PER_STREAM) else {
        return watched;
    };
    let seen: HashMap<Id, Cursor> = seen.into_iter().collect();
    for (id, cursor) in &mut watched {
        if let Some(at) = seen.get(id) {
            *cursor = *at;
        }
    }
    watched
}

/// One id of a stream: its waiting place and the cursor of the last value it sent.
struct Entry {
    id: Id,
    place: Place,
    since: Cursor,
}

/// A stream of many ids between events.
pub struct Many {
    entries: Vec<Entry>,
    /// Events owed before waiting again: the ids that could not be watched at the start.
    owed: Vec<Event>,
    /// Where the next wait starts polling the entries (round robin).
    next: usize,
    /// The entry, `seq` and epoch of the last value sent, while its delivery is not yet
    /// reported: the next event is asked for only once the connection has taken the last one.
    sent: Option<(usize, Seq, Epoch)>,
    state: AppState,
    _waiting: Waiting,
}

/// A value event's data: the id, then the value as a stream of one id sends it.
#[derive(Serialize)]
struct IdValue<'a> {
    id: &'a str,
    #[serde(flatten)]
    value: Value<'a>,
}

/// Takes a waiting place on every id of `watched` (the looks go out together, so in cluster
/// mode they share one Redis call). An id that does not exist is owed an `event: error`;
/// any other failure (Redis unreachable) fails the whole request.
pub async fn open(state: &AppState, watched: Watched) -> Result<Many, ApiError> {
    let begun = join_all(
        watched
            .iter()
            .map(|(id, since)| super::watch(state, id.as_str(), *since, Hold::Always)),
    )
    .await;
    let mut entries = Vec::with_capacity(watched.len());
    let mut owed = Vec::new();
    for ((id, since), begun) in watched.into_iter().zip(begun) {
        match begun {
            Ok(Begun::Waiting(place)) => entries.push(Entry { id, place, since }),
            Ok(Begun::Now(_)) => unreachable!("a watch that always holds takes a waiting place"),
            Err(e @ ApiError::UnknownId) => owed.push(
                Event::default().event("error").data(
                    json!({"id": id.as_str(), "error": {"code": e.code(), "message": e.to_string()}})
                        .to_string(),
                ),
            ),
            Err(e) => return Err(e),
        }
    }
    // Sent in the order the ids were listed.
    owed.reverse();
    Ok(Many {
        entries,
        owed,
        next: 0,
        sent: None,
        _waiting: Waiting::start(&state.metrics.waiting.events),
        state: state.clone(),
    })
}

/// The next event of a stream of many ids, or its end.
pub async fn next_event(many: Option<Many>) -> Option<(Result<Event, Infallible>, Option<Many>)> {
    let mut many = many?;
    if let Some((at, seq, epoch)) = many.sent.take() {
        let slot = many.entries[at].place.slot();
        many.state
            .store
            .delivered(slot.id().as_str(), Some(slot), seq, epoch);
    }
    if let Some(event) = many.owed.pop() {
        return Some((Ok(event), Some(many)));
    }
    if many.entries.is_empty() {
        return None;
    }
    let (outcome, at) = {
        // The ids are polled from the one after the last served: an id notified without
        // pause cannot keep the others' values waiting.
        let count = many.entries.len();
        let first = many.next % count;
        let shutdown = &many.state.shutdown;
        let waits = (0..count).map(|k| {
            let entry = &many.entries[(first + k) % count];
            Box::pin(entry.place.wait_after(entry.since, shutdown))
        });
        let (outcome, k, _) = select_all(waits).await;
        (outcome, (first + k) % count)
    };
    many.next = at + 1;
    let entry = &mut many.entries[at];
    let event = match outcome {
        WaitOutcome::Value { latest, woken } => {
            if woken {
                let elapsed = entry.place.slot().since_published();
                many.state.metrics.delivered_after(elapsed);
            }
            let data = IdValue {
                id: entry.id.as_str(),
                value: Value::of(&latest, entry.since),
            };
            let data = serde_json::to_string(&data).expect("an id, a seq and a string serialise");
            entry.since = Cursor {
                seq: latest.seq,
                epoch: entry.since.epoch.map(|_| latest.epoch),
            };
            many.sent = Some((at, latest.seq, latest.epoch));
            let id = cursor_list(many.entries.iter().map(|e| (&e.id, e.since)));
            Event::default().id(id).data(data)
        }
        WaitOutcome::Gone => {
            let event = Event::default()
                .event("gone")
                .data(json!({ "id": entry.id.as_str() }).to_string());
            many.entries.swap_remove(at);
            event
        }
        WaitOutcome::Released => {
            let event = Event::default()
                .retry(super::RELEASED_RETRY)
                .event("released")
                .data(json!({ "id": entry.id.as_str() }).to_string());
            many.entries.swap_remove(at);
            event
        }
        WaitOutcome::ShuttingDown => return Some((Ok(super::events::shutting_down()), None)),
    };
    Some((Ok(event), Some(many)))
}

/// The answer to a long poll of many ids.
#[derive(Debug, Default, Serialize)]
pub struct Answer {
    /// Values the client has not seen, one per id, as a stream of many ids sends them.
    values: Vec<serde_json::Value>,
    /// Ids that ended: `{"id", "reason"}`, the reason `unknown_id`, `gone` or `released`.
    ended: Vec<serde_json::Value>,
    /// The values, to report delivered once the answer is sent.
    #[serde(skip)]
    delivered: Delivered,
}

impl Answer {
    /// True while there is nothing to answer.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.ended.is_empty()
    }

    fn value(&mut self, id: &Id, latest: &crate::slot::Latest, since: Cursor) {
        let value = IdValue {
            id: id.as_str(),
            value: Value::of(latest, since),
        };
        self.values
            .push(serde_json::to_value(value).expect("an id, a seq and a string serialise"));
        self.delivered.push(id.clone(), latest);
    }

    fn ended(&mut self, id: &Id, reason: &str) {
        self.ended
            .push(json!({"id": id.as_str(), "reason": reason}));
    }

    /// 200 with the JSON; `Retry-After: 1` when an id was released (the client comes back
    /// in a second, from its cursors, as a poll of one id does).
    pub fn into_response(mut self) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let released = self.ended.iter().any(|e| e["reason"] == "released");
        let delivered = std::mem::take(&mut self.delivered);
        let mut response = delivered.attach(axum::Json(self).into_response());
        if released {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(super::RELEASED_RETRY.as_secs()),
            );
        }
        response
    }
}

/// Begins a poll of many ids (their looks go out together): what is new or ended now goes
/// into `answer`, and the waiting places of the others are returned. A caller with something
/// in `answer` answers at once and drops them.
pub async fn begin_poll(
    state: &AppState,
    watched: Watched,
    answer: &mut Answer,
) -> Result<Vec<(Id, Place, Cursor)>, ApiError> {
    let begun = join_all(
        watched
            .iter()
            .map(|(id, since)| super::watch(state, id.as_str(), *since, Hold::IfNothingNew)),
    )
    .await;
    let mut places = Vec::new();
    for ((id, since), begun) in watched.into_iter().zip(begun) {
        match begun {
            Ok(Begun::Now(latest)) => answer.value(&id, &latest, since),
            Ok(Begun::Waiting(place)) => places.push((id, place, since)),
            Err(ApiError::UnknownId) => answer.ended(&id, "unknown_id"),
            Err(e) => return Err(e),
        }
    }
    Ok(places)
}

/// Waits until one of `places` has news, then puts that and whatever else is new by then
/// into `answer`: true, or false at shutdown. May wait forever: the caller bounds it.
pub async fn wait_any(
    state: &AppState,
    places: &[(Id, Place, Cursor)],
    answer: &mut Answer,
) -> bool {
    let waits = places
        .iter()
        .map(|(_, place, since)| Box::pin(place.wait_after(*since, &state.shutdown)));
    let (first, at, _) = select_all(waits).await;
    let mut first = Some(first);
    for (n, (id, place, since)) in places.iter().enumerate() {
        let outcome = if n == at {
            first.take().expect("one place woke first")
        } else if place.slot().is_closed() {
            WaitOutcome::Gone
        } else if let Some(latest) = place.slot().newer_than(*since) {
            WaitOutcome::Value {
                latest,
                woken: false,
            }
        } else {
            continue;
        };
        match outcome {
            WaitOutcome::Value { latest, woken } => {
                if woken {
                    state
                        .metrics
                        .delivered_after(place.slot().since_published());
                }
                answer.value(id, &latest, *since);
            }
            WaitOutcome::Gone => answer.ended(id, "gone"),
            WaitOutcome::Released => answer.ended(id, "released"),
            WaitOutcome::ShuttingDown => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id::parse(&format!("id-{n:0>14}")).unwrap()
    }

    #[test]
    fn a_watch_list_parses_and_prints_back_the_same() {
        let text = format!("{}.0,{}.7.42,{}.3", id(1), id(2), id(3));
        let watched = parse_watch(&text, 32).unwrap();
        assert_eq!(
            watched,
            vec![
                (id(1), Cursor::from(0)),
                (
                    id(2),
                    Cursor {
                        seq: 7,
                        epoch: Some(42)
                    }
                ),
                (id(3), Cursor::from(3)),
            ]
        );
        assert_eq!(cursor_list(watched.iter().map(|(i, c)| (i, *c))), text);
    }

    #[test]
    fn a_bad_watch_list_is_refused_with_the_entry_named() {
        let a = id(1);
        for (text, says) in [
            (String::new(), "entry 1"),
            (format!("{a}"), "entry 1: ID.SEQ"),
            (format!("{a}.x"), "entry 1: ID.SEQ"),
            (format!("{a}.-1"), "entry 1: ID.SEQ"),
            (format!("{a}.1.x"), "entry 1: the epoch"),
            (format!("{a}.1.2.3"), "entry 1: ID.SEQ"),
            (format!("{a}.1,short.1"), "entry 2: an id is"),
            (format!("{a}.1,{a}.2"), "entry 2: "),
            (format!("{a}.1,"), "entry 2"),
        ] {
            let e = parse_watch(&text, 32).unwrap_err();
            assert!(matches!(e, ApiError::InvalidParameters(_)), "{text:?}");
            assert!(e.to_string().contains(says), "{text:?}: {e}");
        }
        let many: Vec<String> = (0..3).map(|n| format!("{}.0", id(n))).collect();
        let e = parse_watch(&many.join(","), 2).unwrap_err();
        assert!(e.to_string().contains("at most 2 ids"), "{e}");
    }

    #[test]
    fn last_event_id_moves_only_the_cursors_of_ids_the_watch_names() {
        let watched = vec![(id(1), Cursor::from(0)), (id(2), Cursor::from(5))];
        let last = HeaderValue::from_str(&format!("{}.9.4,{}.3", id(2), id(3))).unwrap();
        let resumed = resume(watched.clone(), Some(&last));
        assert_eq!(
            resumed,
            vec![
                (id(1), Cursor::from(0)),
                (
                    id(2),
                    Cursor {
                        seq: 9,
                        epoch: Some(4)
                    }
                )
            ]
        );
        let junk = HeaderValue::from_static("7");
        assert_eq!(resume(watched.clone(), Some(&junk)), watched);
    }
}
