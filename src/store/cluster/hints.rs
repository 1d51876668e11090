//! How this node hears of notifies made on any node: one subscription to the
//! [`PARTITIONS`](super::PARTITIONS) hint channels, and the repairs that make lost hints
//! harmless.
//!
//! A hint is `hv|kind|seq|epoch|time|id|info`: `hv` numbers the hints of its partition, so a
//! gap (or a counter that went backwards: Redis lost its state) shows that some were lost,
//! and that partition's local ids are read again. After every (re)subscribe every local id is
//! read again, since hints published while there was no subscription are gone. A probe
//! published to this node's own channel whenever nothing arrived for [`PROBE_IDLE`] must
//! come back within [`PROBE_TIMEOUT`]; otherwise the subscription is taken for dead and made
//! again: a connection that stays open but delivers nothing is caught within seconds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::Msg;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Cluster, EPOCH_KEY, PARTITIONS, channel, id_key, partition, unix_millis};
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
        for p in 0..PARTITIONS {
            pubsub.subscribe(channel(p)).await?;
        }
        pubsub.subscribe(&probe).await?;
        redis::RedisResult::Ok(pubsub)
    };
    let pubsub = tokio::time::timeout(timeout * 3, setup)
        .await
        .map_err(|_| "no answer while subscribing".to_owned())?
        .map_err(|e| e.to_string())?;
    cluster.subscribed.store(true, Ordering::Release);
    cluster.update_up();
    if !first {
        tracing::info!("hint subscription back");
    }
    // Whatever was published while nobody listened is read back.
    tokio::spawn(resync(Arc::clone(cluster), None));
    let mut stream = pubsub.into_on_message();
    let mut counters: Vec<Option<u64>> = vec![None; PARTITIONS as usize];
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
                    handle(cluster, &message, &mut counters);
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

/// One hint: applied to the local slot if there is one; a gap in its partition's numbers
/// starts a resync of that partition.
fn handle(cluster: &Arc<Cluster>, message: &Msg, counters: &mut [Option<u64>]) {
    let Some(p) = message
        .get_channel_name()
        .strip_prefix("ch:n:")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p < PARTITIONS)
    else {
        return;
    };
    let payload = String::from_utf8_lossy(message.get_payload_bytes());
    let mut fields = payload.splitn(7, '|');
    let (Some(hv), Some(kind), Some(seq), Some(epoch), Some(time), Some(id), Some(info)) = (
        fields.next().and_then(|v| v.parse::<u64>().ok()),
        fields.next(),
        fields.next().and_then(|v| v.parse::<u64>().ok()),
        fields.next().and_then(|v| v.parse::<Epoch>().ok()),
        fields.next().and_then(|v| v.parse::<u64>().ok()),
        fields.next(),
        fields.next(),
    ) else {
        tracing::warn!("unreadable hint ignored");
        return;
    };
    let counter = &mut counters[p as usize];
    match *counter {
        Some(last) if hv == last + 1 => {}
        None => {}
        Some(last) => {
            if hv > last {
                cluster.metrics.hint_gaps.inc_by(hv - last - 1);
            }
            tracing::debug!(
                partition = p,
                last,
                hv,
                "hints lost; resyncing the partition"
            );
            tokio::spawn(resync(Arc::clone(cluster), Some(p)));
        }
    }
    *counter = Some(hv);
    #[allow(clippy::cast_precision_loss)]
    let lag = unix_millis().saturating_sub(time) as f64 / 1000.0;
    cluster.metrics.hint_lag.observe(lag);
    match kind {
        "n" => {
            if let Some(slot) = cluster.local.get(id) {
                slot.apply(seq, Some(info), epoch);
            }
        }
        "d" => cluster.gone(id),
        _ => {}
    }
}

/// Reads every local id (of `partition` only, when given) back from Redis and applies what
/// changed: a newer value wakes its waiters, a missing id releases them as gone.
pub async fn resync(cluster: Arc<Cluster>, only: Option<u32>) {
    cluster.metrics.resyncs.inc();
    let ids: Vec<Id> = cluster
        .local
        .iter()
        .map(|entry| entry.key().clone())
        .filter(|id| only.is_none_or(|p| partition(id.as_str()) == p))
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
    if only.is_none() {
        // After a reconnect: Redis may have forgotten this node's counts (a restart, or its
        // heartbeat ran out during the outage); write them all again.
        cluster.report_waiters(true).await;
    }
}
