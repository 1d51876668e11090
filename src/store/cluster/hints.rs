//! How this node hears of notifies made on any node: one subscription, to the hint channel,
//! and the repairs that make lost hints harmless.
//!
//! A hint message is what one script changed: `number|epoch|time`, then per change a
//! newline and `kind|seq|id|bytes of info|info` (scripts.lua, `publish`). A batch of notifies
//! is one message, so Redis publishes (and every node reads) one message per batch rather
//! than one per notify. `number` counts the messages, so a gap (or a counter that went
//! backwards: Redis lost its state) shows that some were lost, and every local id is read
//! again; so it is after every (re)subscribe, since hints published while there was no
//! subscription are gone. A probe
//! published to this node's own channel whenever nothing arrived for [`PROBE_IDLE`] must
//! come back within [`PROBE_TIMEOUT`]; otherwise the subscription is taken for dead and made
//! again: a connection that stays open but delivers nothing is caught within seconds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Cluster, EPOCH_KEY, HINT_CHANNEL, id_key, unix_millis};
use crate::id::Id;
use crate::slot::Epoch;

/// Quiet time after which the subscription is probed.
const PROBE_IDLE: Duration = Duration::from_secs(2);
/// How long a probe may take to come back.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Ids read per batch in a resync.
const RESYNC_BATCH: usize = 512;

fn probe_channel(node: &str) -> String {
    format!("ch:probe:{node}")
}

/// Keeps this node subscribed until shutdown.
pub async fn subscribe(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut link = cluster.link.watch();
    let mut first = true;
    loop {
        let conn = link.borrow_and_update().clone();
        let Some(conn) = conn else {
            tokio::select! {
                changed = link.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            continue;
        };
        match listen(&cluster, &conn.url, &mut link, &shutdown, first).await {
            Ok(()) => return,
            Err(why) => {
                cluster.subscribed.store(false, Ordering::Release);
                cluster.trust.break_off();
                cluster.update_up();
                tracing::warn!(error = %why, "hint subscription lost; subscribing again");
                cluster.metrics.reconnects.inc();
            }
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100 + rand::random::<u64>() % 200)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Subscribes on a connection of its own to the master at `url` and handles hints until the
/// subscription fails (an error), the command link moves to another connection, or shutdown
/// (`Ok`).
async fn listen(
    cluster: &Arc<Cluster>,
    url: &crate::config::RedisUrl,
    link: &mut tokio::sync::watch::Receiver<Option<super::link::Conn>>,
    shutdown: &CancellationToken,
    first: bool,
) -> Result<(), String> {
    let timeout = cluster.link.timeout();
    let client = redis::Client::open(url.expose()).map_err(|e| e.to_string())?;
    let probe = probe_channel(&cluster.node);
    let setup = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(HINT_CHANNEL).await?;
        pubsub.subscribe(&probe).await?;
        redis::RedisResult::Ok(pubsub)
    };
    let pubsub = tokio::time::timeout(timeout * 3, setup)
        .await
        .map_err(|_| "no answer while subscribing".to_owned())?
        .map_err(|e| e.to_string())?;
    // Slots confirmed on an earlier subscription are read again before they are trusted.
    cluster.trust.break_off();
    cluster.subscribed.store(true, Ordering::Release);
    cluster.update_up();
    if !first {
        tracing::info!("hint subscription back");
    }
    // Whatever was published while nobody listened is read back.
    tokio::spawn(resync(Arc::clone(cluster), Resync::Resubscribed));
    let mut stream = pubsub.into_on_message();
    let mut counter: Option<u64> = None;
    let mut last_seen = Instant::now();
    let mut probe_sent: Option<Instant> = None;
    loop {
        let deadline = match probe_sent {
            Some(sent) => sent + PROBE_TIMEOUT,
            None => last_seen + PROBE_IDLE,
        };
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return Err("the subscription's connection closed".into());
                };
                last_seen = Instant::now();
                probe_sent = None;
                if message.get_channel_name() != probe {
                    handle(cluster, message.get_payload_bytes(), &mut counter);
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if probe_sent.is_some() {
                    cluster.metrics.probe_timeouts.inc();
                    return Err(format!("a probe did not come back within {PROBE_TIMEOUT:?}"));
                }
                probe_sent = Some(Instant::now());
                let cluster = Arc::clone(cluster);
                let probe = probe.clone();
                tokio::spawn(async move {
                    let _ = cluster
                        .link
                        .call(|mut conn| async move {
                            redis::cmd("PUBLISH")
                                .arg(&probe)
                                .arg("probe")
                                .query_async::<i64>(&mut conn.redis)
                                .await
                        })
                        .await;
                });
            }
            changed = link.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                return Err("the command link moved; following it".into());
            }
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// One hint message: each change is applied to its local slot if there is one; a gap in the
/// messages' numbers starts a resync.
fn handle(cluster: &Arc<Cluster>, message: &[u8], counter: &mut Option<u64>) {
    let Some((number, epoch, time, mut changes)) = read_header(message) else {
        tracing::warn!("unreadable hint ignored");
        cluster.trust.break_off();
        return;
    };
    match *counter {
        Some(last) if number == last + 1 => {}
        None => {}
        Some(last) => {
            if number > last {
                cluster.metrics.hint_gaps.inc_by(number - last - 1);
            }
            tracing::debug!(last, number, "hints lost; resyncing");
            cluster.trust.break_off();
            tokio::spawn(resync(Arc::clone(cluster), Resync::Gap));
        }
    }
    *counter = Some(number);
    // A clock of Redis's ahead of this node's counts as no lag (for the trust in a slot,
    // `Cluster::is_current`, half an idle TTL absorbs it).
    let age = Duration::from_millis(unix_millis().saturating_sub(time));
    cluster.metrics.hint_lag.observe(age.as_secs_f64());
    while !changes.is_empty() {
        let Some((change, rest)) = read_change(changes) else {
            tracing::warn!("unreadable hint ignored");
            cluster.trust.break_off();
            return;
        };
        changes = rest;
        match change.kind {
            b"n" => {
                if let Some(slot) = cluster.local.get(change.id) {
                    slot.apply(change.seq, Some(change.info), epoch);
                    cluster.confirmed_by_hint(&slot, age);
                }
            }
            // A notify that waits `w<ms>` for its deliveries: they are counted from before the
            // value reaches any waiter here.
            [b'w', wait @ ..] => {
                if let Some(slot) = cluster.local.get(change.id) {
                    let wait = std::str::from_utf8(wait)
                        .ok()
                        .and_then(|ms| ms.parse().ok());
                    let wait = Duration::from_millis(wait.unwrap_or(0));
                    cluster.tally(slot.id(), change.seq, epoch, wait);
                    slot.apply(change.seq, Some(change.info), epoch);
                    cluster.confirmed_by_hint(&slot, age);
                }
            }
            b"d" => cluster.gone(change.id),
            _ => {}
        }
    }
}

/// One change in a hint message.
#[derive(Debug, PartialEq, Eq)]
struct Change<'a> {
    kind: &'a [u8],
    seq: u64,
    id: &'a str,
    info: &'a str,
}

/// `number|epoch|time`, and the changes after it (each starting with a newline).
fn read_header(message: &[u8]) -> Option<(u64, Epoch, u64, &[u8])> {
    let end = message
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(message.len());
    let mut fields = std::str::from_utf8(&message[..end]).ok()?.split('|');
    let number = fields.next()?.parse().ok()?;
    let epoch = fields.next()?.parse().ok()?;
    let time = fields.next()?.parse().ok()?;
    fields
        .next()
        .is_none()
        .then_some((number, epoch, time, &message[end..]))
}

/// The first change of `changes` (`\nkind|seq|id|bytes|info`) and what follows it.
fn read_change(changes: &[u8]) -> Option<(Change<'_>, &[u8])> {
    let rest = changes.strip_prefix(b"\n")?;
    let mut parts = rest.splitn(5, |&b| b == b'|');
    let kind = parts.next()?;
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let id = std::str::from_utf8(parts.next()?).ok()?;
    let bytes: usize = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let tail = parts.next()?;
    let info = std::str::from_utf8(tail.get(..bytes)?).ok()?;
    let rest = &tail[bytes..];
    (rest.is_empty() || rest[0] == b'\n').then_some((
        Change {
            kind,
            seq,
            id,
            info,
        },
        rest,
    ))
}

/// Why local ids are read back from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// The subscription is new: hints published while there was none are gone, and Redis may
    /// have forgotten this node's waiter counts.
    Resubscribed,
    /// A hint message was lost.
    Gap,
}

/// Reads every local id back from Redis and applies what changed: a newer value wakes its
/// waiters, a missing id releases them as gone.
pub async fn resync(cluster: Arc<Cluster>, why: Resync) {
    cluster.metrics.resyncs.inc();
    let ids: Vec<Id> = cluster
        .local
        .iter()
        .map(|entry| entry.key().clone())
        .collect();
    for chunk in ids.chunks(RESYNC_BATCH) {
        let read = cluster
            .link
            .call(|mut conn| async move {
                let mut pipe = redis::pipe();
                pipe.cmd("HGET").arg(EPOCH_KEY).arg("ep");
                for id in chunk {
                    pipe.cmd("HMGET")
                        .arg(id_key(id.as_str()))
                        .arg(&["a", "s", "v"]);
                }
                // One reply per command: the epoch, then one (app, seq, info) per id.
                let mut replies = pipe
                    .query_async::<Vec<redis::Value>>(&mut conn.redis)
                    .await?
                    .into_iter();
                let epoch: Option<String> =
                    redis::from_redis_value(replies.next().unwrap_or(redis::Value::Nil))?;
                let values = replies
                    .map(redis::from_redis_value::<(Option<String>, Option<u64>, Option<String>)>)
                    .collect::<Result<Vec<_>, _>>()?;
                redis::RedisResult::Ok((epoch, values))
            })
            .await;
        let (epoch, values) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "resync failed; the next reconnect or gap retries it");
                return;
            }
        };
        let epoch: Epoch = epoch.and_then(|e| e.parse().ok()).unwrap_or_default();
        for (id, (app, seq, info)) in chunk.iter().zip(values) {
            if app.is_none() {
                cluster.gone(id.as_str());
            } else if let Some(slot) = cluster.local.get(id.as_str()) {
                let seq = seq.unwrap_or_default();
                let info = info.filter(|_| seq > 0);
                slot.apply(seq, info.as_deref(), epoch);
            }
        }
    }
    if why == Resync::Resubscribed {
        // After a reconnect: Redis may have forgotten this node's counts (a restart, or its
        // heartbeat ran out during the outage); write them all again.
        cluster.report_waiters(true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(mut rest: &[u8]) -> Vec<Change<'_>> {
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (change, next) = read_change(rest).expect("readable");
            out.push(change);
            rest = next;
        }
        out
    }

    #[test]
    fn a_message_with_many_changes_is_read_whatever_their_infos_hold() {
        let message = "7|3|1796238107620\nn|12|a-1|5|x|y\nz\nd|0|b-2|0|\nn|1|c-3|0|".as_bytes();
        let (number, epoch, time, rest) = read_header(message).unwrap();
        assert_eq!((number, epoch, time), (7, 3, 1_796_238_107_620));
        assert_eq!(
            changes(rest),
            [
                Change {
                    kind: b"n",
                    seq: 12,
                    id: "a-1",
                    info: "x|y\nz"
                },
                Change {
                    kind: b"d",
                    seq: 0,
                    id: "b-2",
                    info: ""
                },
                Change {
                    kind: b"n",
                    seq: 1,
                    id: "c-3",
                    info: ""
                },
            ]
        );
    }

    #[test]
    fn infos_are_counted_in_bytes_not_characters() {
        let info = "é✓";
        let message = format!("1|0|5\nn|2|id|{}|{info}", info.len());
        let (.., rest) = read_header(message.as_bytes()).unwrap();
        assert_eq!(changes(rest)[0].info, info);
    }

    #[test]
    fn a_torn_or_malformed_message_is_refused_not_misread() {
        assert!(read_header(b"1|0").is_none());
        assert!(read_header(b"1|0|5|9").is_none());
        assert!(read_header(b"x|0|5").is_none());
        for bad in [
            &b"n|1|id|5|abc"[..],
            b"\nn|1|id|5|abc",
            b"\nn|1|id|2|abc",
            b"\nn|x|id|1|a",
            b"\nn|1|id|-1|a",
            b"\nn|1|id",
        ] {
            assert!(
                read_change(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
