//! Many clients at once: fan-out to many ids, and racing notifies and polls on one id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::support::{KEY, TestServer, unlimited};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiting_ids_each_get_exactly_their_own_value() {
    const N: usize = 1000;
    // One client making a thousand polls at once is what rate limits are for; here it is a
    // load on purpose.
    let s = Arc::new(TestServer::spawn_with(unlimited));
    let mut ids = Vec::with_capacity(N);
    for _ in 0..N {
        ids.push(s.new_id().await);
    }

    let mut polls = JoinSet::new();
    for id in &ids {
        let (client, url, id) = (
            s.client.clone(),
            s.url(&format!("/v1/poll?id={id}&since=0")),
            id.clone(),
        );
        polls.spawn(async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            (id, r.json::<Value>().await.unwrap())
        });
    }
    // Every poll is held before any notify goes out.
    for id in &ids {
        s.wait_for_waiters(id, 1).await;
    }

    let mut notifies = JoinSet::new();
    for id in &ids {
        let (s, id) = (Arc::clone(&s), id.clone());
        notifies.spawn(async move {
            let r = s.notify(KEY, &id, &format!("for {id}")).await;
            r.json::<Value>().await.unwrap()
        });
    }
    while let Some(answer) = notifies.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(
            (answer["seq"].as_u64(), answer["waiting"].as_u64()),
            (Some(1), Some(1)),
            "{answer}"
        );
    }

    let mut seen = HashSet::new();
    while let Some(result) = polls.join_next().await {
        let (id, value) = result.unwrap();
        assert_eq!(value["seq"], 1);
        assert_eq!(
            value["info"],
            format!("for {id}"),
            "each poll gets its own id's value"
        );
        assert!(seen.insert(id));
    }
    assert_eq!(seen.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_notifies_and_polls_on_one_id_lose_no_wake_up() {
    // Polls are held for up to two minutes, so a lost wake-up would leave a poller stuck
    // far beyond the bound below; a correct server keeps every poller moving.
    const NOTIFIES_EACH: u64 = 250;
    const NOTIFIERS: u64 = 2;
    const POLLERS: usize = 6;
    const FINAL: u64 = NOTIFIES_EACH * NOTIFIERS;
    let s = Arc::new(TestServer::spawn_with(|c| {
        unlimited(c);
        c.limits.poll_timeout = Duration::from_secs(120);
    }));
    let id = s.new_id().await;

    let mut pollers = JoinSet::new();
    for _ in 0..POLLERS {
        let (s, id) = (Arc::clone(&s), id.clone());
        pollers.spawn(async move {
            let mut since = 0;
            let mut last_info = None;
            while since < FINAL {
                let r = s.poll(&id, since).await;
                assert_eq!(
                    r.status(),
                    StatusCode::OK,
                    "a held poll timed out: wake-up lost"
                );
                let v: Value = r.json().await.unwrap();
                let seq = v["seq"].as_u64().unwrap();
                assert!(seq > since, "seq went from {since} to {seq}");
                since = seq;
                last_info = v["info"].as_str().map(str::to_owned);
            }
            last_info.unwrap()
        });
    }

    let mut notifiers = JoinSet::new();
    for n in 0..NOTIFIERS {
        let (s, id) = (Arc::clone(&s), id.clone());
        notifiers.spawn(async move {
            let mut final_info = None;
            for i in 0..NOTIFIES_EACH {
                let info = format!("notifier {n} value {i}");
                let v: Value = s.notify(KEY, &id, &info).await.json().await.unwrap();
                if v["seq"] == FINAL {
                    final_info = Some(info);
                }
            }
            final_info
        });
    }

    let bound = Duration::from_secs(90);
    let final_info = tokio::time::timeout(bound, async {
        let mut final_info = None;
        while let Some(f) = notifiers.join_next().await {
            final_info = final_info.or(f.unwrap());
        }
        final_info.expect("one notify got the final seq")
    })
    .await
    .expect("notifiers finish");
    let finished = tokio::time::timeout(bound, async {
        let mut n = 0;
        while let Some(last) = pollers.join_next().await {
            assert_eq!(
                last.unwrap(),
                final_info,
                "every poller ends on the newest value"
            );
            n += 1;
        }
        n
    })
    .await
    .expect("every poller reached the final seq: no wake-up was lost");
    assert_eq!(finished, POLLERS);
}
