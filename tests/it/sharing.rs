//! One connection per browser, in a real Chromium: the CallHome frames of every tab share
//! one connection (a shared worker, or the frame holding a Web Lock), each frame still gets
//! only its own id's news, and when the tab holding the connection closes or freezes the
//! others go on. See `support::browser` for how Chromium is driven and skipped.

use std::time::{Duration, Instant};

use fantoccini::wd::WindowHandle;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::browser::{Browser, Options, PATIENCE};
use crate::support::{KEY, KEY_TWO, PageServer, TestServer};

const EVENTS: &str = "callhome_waiting{transport=\"events\"}";
const POLLS: &str = "callhome_waiting{transport=\"poll\"}";

/// One tab of the test page, subscribed to `ids` in order.
struct Tab {
    handle: WindowHandle,
    ids: Vec<String>,
}

async fn iframe_url(s: &TestServer, key: &str, extra: &str) -> (String, String) {
    let r = s.create(key, Some(json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    let url = format!("{}{extra}", body["iframe_url"].as_str().unwrap());
    (body["id"].as_str().unwrap().to_owned(), url)
}

/// Opens `tabs` tabs of `page`, each subscribed to `per_tab` new ids of `key`'s app, with
/// `extra` added to every iframe URL; waits until callhome.js ran in each (unless `wait` is
/// false: a page whose script cannot load).
async fn open_tabs(
    b: &Browser,
    page: &PageServer,
    s: &TestServer,
    key: &str,
    (tabs, per_tab): (usize, usize),
    extra: &str,
    wait: bool,
) -> Vec<Tab> {
    let mut opened = Vec::with_capacity(tabs);
    for _ in 0..tabs {
        let mut ids = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..per_tab {
            let (id, url) = iframe_url(s, key, extra).await;
            ids.push(id);
            urls.push(url);
        }
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let handle = b.open_tab(&page.url(&urls)).await;
        if wait {
            b.wait_for("callhome.js loaded", "return window.ready === true")
                .await;
        }
        opened.push(Tab { handle, ids });
    }
    opened
}

/// Every tab of `tabs` but the `n`th.
fn all_but(tabs: &[Tab], n: usize) -> Vec<Tab> {
    tabs.iter()
        .enumerate()
        .filter(|&(k, _)| k != n)
        .map(|(_, t)| Tab {
            handle: t.handle.clone(),
            ids: t.ids.clone(),
        })
        .collect()
}

/// Closes `tabs`, then makes the browser's first tab (never closed) the current one.
async fn close_tabs(b: &Browser, tabs: Vec<Tab>) {
    for tab in tabs {
        b.switch_to(&tab.handle).await;
        b.client.close_window().await.unwrap();
    }
    let first = b.client.windows().await.unwrap().remove(0);
    b.switch_to(&first).await;
}

/// How many clients wait on `id` (from its status).
async fn waiting(s: &TestServer, key: &str, id: &str) -> u64 {
    s.id_status(key, id).await["waiting"].as_u64().unwrap()
}

/// Waits until `id` has `n` waiting clients.
async fn wait_for_waiting(s: &TestServer, key: &str, id: &str, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    while waiting(s, key, id).await != n {
        assert!(Instant::now() < deadline, "{id} never had {n} waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the newest value of subscription `i` of the current tab is `info`.
async fn wait_for_info(b: &Browser, i: usize, info: &str) {
    b.wait_for(
        &format!("subscription {i} to receive {info}"),
        &format!(
            "var r = window.received[{i}]; return r.length > 0 && r[r.length - 1].info === {}",
            json!(info)
        ),
    )
    .await;
}

/// The newest status of subscription 0 of the current tab (callhome.js `onStatus`).
async fn status(b: &Browser) -> Value {
    b.wait_for("a status", "return window.statuses[0] || null")
        .await
}

/// Notifies every id of `tabs` with `<prefix>-<id>`, then checks in every tab that each
/// subscription got that value last, and never an older seq after a newer one.
async fn notify_and_check_all(b: &Browser, s: &TestServer, key: &str, tabs: &[Tab], prefix: &str) {
    for tab in tabs {
        for id in &tab.ids {
            let r = s.notify(key, id, &format!("{prefix}-{id}")).await;
            assert_eq!(r.status(), StatusCode::OK);
        }
    }
    for tab in tabs {
        b.switch_to(&tab.handle).await;
        for (i, id) in tab.ids.iter().enumerate() {
            wait_for_info(b, i, &format!("{prefix}-{id}")).await;
            let got = b.received(i).await;
            assert!(
                got.windows(2).all(|w| w[0].1 < w[1].1),
                "{id}: seqs out of order: {got:?}"
            );
            assert!(
                got.iter().all(|(info, _)| info.ends_with(id.as_str())),
                "{id} got another id's news: {got:?}"
            );
        }
    }
}

/// A server whose app "one" serves `page`, with `adjust` applied.
fn server_for(page: &PageServer, adjust: impl FnOnce(&mut callhome::config::Config)) -> TestServer {
    TestServer::spawn_with(for_page(page, adjust))
}

/// The config changes of [`server_for`].
fn for_page(
    page: &PageServer,
    adjust: impl FnOnce(&mut callhome::config::Config),
) -> impl FnOnce(&mut callhome::config::Config) {
    let origin = page.origin();
    move |c| {
        c.apps[0].origins = vec![origin];
        // 60 subscriptions of one browser on one address.
        crate::support::unlimited(c);
        adjust(c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tabs_with_three_subscriptions_each_share_one_connection() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let page = PageServer::spawn();
    let s = server_for(&page, |_| {});
    let tabs = open_tabs(&b, &page, &s, KEY, (20, 3), "", true).await;
    // Every subscription waits, all of them on one stream.
    for tab in &tabs {
        for id in &tab.ids {
            wait_for_waiting(&s, KEY, id, 1).await;
        }
    }
    s.wait_for_metric(EVENTS, 1).await;
    assert_eq!(s.metric(POLLS).await, 0);
    b.switch_to(&tabs[7].handle).await;
    let shown = status(&b).await;
    assert_eq!(shown["share"], "worker", "{shown}");
    assert_eq!(shown["frames"], 60, "{shown}");
    eprintln!(
        "20 tabs x 3 subscriptions: waiting streams {}, open connections {}",
        s.metric(EVENTS).await,
        s.metric("callhome_connections_open").await
    );

    notify_and_check_all(&b, &s, KEY, &tabs, "first").await;
    notify_and_check_all(&b, &s, KEY, &tabs, "second").await;
    assert_eq!(s.metric(EVENTS).await, 1, "still one stream");
}

/// Before: each frame with a connection of its own. Over HTTP/1.1 Chromium opens at most six
/// connections to one host, so six subscriptions wait and the other 54 never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sharing_http1_lets_six_of_sixty_subscriptions_wait() {
    let Some(b) = Browser::start_with(Options {
        page_load: Some("none"),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let page = PageServer::spawn();
    let s = server_for(&page, |_| {});
    let tabs = open_tabs(&b, &page, &s, KEY, (20, 3), "&share=off", false).await;
    s.wait_for_metric(EVENTS, 6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut waiting_ids = 0;
    for id in tabs.iter().flat_map(|t| &t.ids) {
        waiting_ids += waiting(&s, KEY, id).await;
    }
    assert_eq!(
        (s.metric(EVENTS).await, waiting_ids),
        (6, 6),
        "six connections per host"
    );
}

/// More subscriptions than one connection may carry: one more connection per
/// `max_ids_per_stream` ids, and every subscription still gets its news.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_subscriptions_than_a_stream_carries_take_one_more_stream() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let page = PageServer::spawn();
    let s = server_for(&page, |c| c.limits.max_ids_per_stream = 2);
    let tabs = open_tabs(&b, &page, &s, KEY, (1, 3), "", true).await;
    for id in &tabs[0].ids {
        wait_for_waiting(&s, KEY, id, 1).await;
    }
    s.wait_for_metric(EVENTS, 2).await;
    notify_and_check_all(&b, &s, KEY, &tabs, "split").await;
}

/// The tab that holds the connection: with Web Locks the one whose frame says so; with a
/// shared worker the worker does, and the first tab started it.
async fn holder(b: &Browser, tabs: &[Tab], share: &str) -> usize {
    if share != "locks" {
        return 0;
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        for (n, tab) in tabs.iter().enumerate() {
            b.switch_to(&tab.handle).await;
            let shown = status(b).await;
            assert_eq!(shown["share"], "locks", "{shown}");
            if shown["holder"] == "this-tab" {
                return n;
            }
        }
        assert!(Instant::now() < deadline, "no tab holds the lock");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_tab_holding_the_connection_closes_the_others_keep_receiving() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let page = PageServer::spawn();
    let s = server_for(&page, |_| {});
    for share in ["auto", "locks"] {
        let mut tabs =
            open_tabs(&b, &page, &s, KEY, (4, 1), &format!("&share={share}"), true).await;
        for tab in &tabs {
            wait_for_waiting(&s, KEY, &tab.ids[0], 1).await;
        }
        s.wait_for_metric(EVENTS, 1).await;
        let n = holder(&b, &tabs, share).await;
        let closed = tabs.remove(n);
        b.switch_to(&closed.handle).await;
        b.client.close_window().await.unwrap();
        // Notified at once: the value must reach every other tab, whether it was sent before
        // the connection moved or after.
        let start = Instant::now();
        notify_and_check_all(&b, &s, KEY, &tabs, "after-close").await;
        eprintln!(
            "share={share}: holder tab closed, every other tab had the next value after {:?}",
            start.elapsed()
        );
        // The closed tab's id is no longer watched, and the others on one stream again.
        wait_for_waiting(&s, KEY, &closed.ids[0], 0).await;
        s.wait_for_metric(EVENTS, 1).await;
        notify_and_check_all(&b, &s, KEY, &tabs, "later").await;
        close_tabs(&b, tabs).await;
        s.wait_for_metric(EVENTS, 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_tab_lets_the_others_receive_and_catches_up_when_it_resumes() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let page = PageServer::spawn();
    let s = server_for(&page, |_| {});
    for share in ["auto", "locks"] {
        let tabs = open_tabs(&b, &page, &s, KEY, (3, 1), &format!("&share={share}"), true).await;
        for tab in &tabs {
            wait_for_waiting(&s, KEY, &tab.ids[0], 1).await;
        }
        let n = holder(&b, &tabs, share).await;
        let frozen = &tabs[n];
        b.switch_to(&frozen.handle).await;
        b.cdp("Page.setWebLifecycleState", json!({"state": "frozen"}))
            .await;
        // A frozen frame gives up its place (and, holding the lock, the connection).
        wait_for_waiting(&s, KEY, &frozen.ids[0], 0).await;
        let others = all_but(&tabs, n);
        let start = Instant::now();
        notify_and_check_all(&b, &s, KEY, &others, "while-frozen").await;
        eprintln!(
            "share={share}: a tab frozen, the others had the next value after {:?}",
            start.elapsed()
        );
        let r = s.notify(KEY, &frozen.ids[0], "for the frozen tab").await;
        assert_eq!(r.status(), StatusCode::OK);
        b.switch_to(&frozen.handle).await;
        b.cdp("Page.setWebLifecycleState", json!({"state": "active"}))
            .await;
        wait_for_info(&b, 0, "for the frozen tab").await;
        wait_for_waiting(&s, KEY, &frozen.ids[0], 1).await;
        close_tabs(&b, tabs).await;
        s.wait_for_metric(EVENTS, 0).await;
    }
}

/// Runs `script` in the CallHome frame of the current tab.
async fn in_frame(b: &Browser, script: &str) {
    b.client.enter_frame(0).await.unwrap();
    b.eval(script).await;
    b.client.enter_parent_frame().await.unwrap();
}

/// A frame that said goodbye on `freeze` stays out until `resume`, even if its script still
/// runs: Chromium may hand a frozen frame a message, and one that answered the next holder's
/// `hello` was watched again, with nobody left to say goodbye for it (the flaky failure of
/// the test above: "never had 0 waiting"). Here only the events are sent, so the frame's
/// script goes on running and would answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_froze_stays_out_until_it_resumes_even_if_it_still_runs() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let page = PageServer::spawn();
    let s = server_for(&page, |_| {});
    for share in ["auto", "locks"] {
        frozen_frame_stays_out(&b, &page, &s, share).await;
    }
}

async fn frozen_frame_stays_out(b: &Browser, page: &PageServer, s: &TestServer, share: &str) {
    let tabs = open_tabs(b, page, s, KEY, (3, 1), &format!("&share={share}"), true).await;
    for tab in &tabs {
        wait_for_waiting(s, KEY, &tab.ids[0], 1).await;
    }
    let n = holder(b, &tabs, share).await;
    let frozen = &tabs[n];
    b.switch_to(&frozen.handle).await;
    in_frame(b, "document.dispatchEvent(new Event('freeze'))").await;
    wait_for_waiting(s, KEY, &frozen.ids[0], 0).await;
    let others = all_but(&tabs, n);
    // A new holder (locks) has said hello and heard the others by the time they have their
    // values; then a frame's heartbeat (every 5 s) is the other way back in.
    notify_and_check_all(b, s, KEY, &others, "after-freeze").await;
    let until = Instant::now() + Duration::from_millis(5_500);
    while Instant::now() < until {
        assert_eq!(
            waiting(s, KEY, &frozen.ids[0]).await,
            0,
            "share={share}: the frozen frame's id is watched again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.switch_to(&frozen.handle).await;
    in_frame(b, "document.dispatchEvent(new Event('resume'))").await;
    wait_for_waiting(s, KEY, &frozen.ids[0], 1).await;
    let r = s.notify(KEY, &frozen.ids[0], "after-resume").await;
    assert_eq!(r.status(), StatusCode::OK);
    wait_for_info(b, 0, "after-resume").await;
    close_tabs(b, tabs).await;
    s.wait_for_metric(EVENTS, 0).await;
}

/// Two apps in one browser: on two origins of one site (they share one worker: browsers
/// partition by top-level site, not origin) and on another site. Each page gets its own
/// app's news and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_on_other_origins_do_not_see_each_others_news() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let one = PageServer::spawn();
    let two = PageServer::spawn();
    let elsewhere = PageServer::spawn_on("127.0.0.2", "127.0.0.2");
    let (o1, o2, o3) = (one.origin(), two.origin(), elsewhere.origin());
    let s = TestServer::spawn_with(|c| {
        crate::support::unlimited(c);
        c.apps[0].origins = vec![o1];
        c.apps[1].origins = vec![o2, o3];
    });
    let mut tabs = Vec::new();
    for (page, key) in [(&one, KEY), (&two, KEY_TWO), (&elsewhere, KEY_TWO)] {
        // App two's ids are bound to none of its two origins: callhome.js names the page's.
        let mut opened = open_tabs(&b, page, &s, key, (1, 1), "", true).await;
        wait_for_waiting(&s, key, &opened[0].ids[0], 1).await;
        tabs.push((opened.remove(0), key));
    }
    // One connection per site: localhost's two apps share one, 127.0.0.2 has its own.
    s.wait_for_metric(EVENTS, 2).await;
    for (n, (tab, key)) in tabs.iter().enumerate() {
        let r = s
            .notify(key, &tab.ids[0], &format!("only for tab {n}"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        b.switch_to(&tab.handle).await;
        wait_for_info(&b, 0, &format!("only for tab {n}")).await;
    }
    // Time for anything misrouted to arrive, then each tab has exactly its own value.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (n, (tab, _)) in tabs.iter().enumerate() {
        b.switch_to(&tab.handle).await;
        assert_eq!(
            b.received(0).await,
            [(format!("only for tab {n}"), 1)],
            "tab {n}"
        );
        assert_eq!(
            b.eval("return Object.keys(window.received).length").await,
            1
        );
    }
}

/// The daemon serving TLS itself: Chromium speaks HTTP/2 to it, and one connection carries
/// every frame's stream, so even without sharing all 60 subscriptions wait (compare the six
/// of [`without_sharing_http1_lets_six_of_sixty_subscriptions_wait`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_http2_alone_carries_twenty_tabs_without_sharing() {
    let Some(b) = Browser::start_with(Options {
        // The test's own certificate authority, which this browser does not know.
        args: vec!["--ignore-certificate-errors".into()],
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let page = PageServer::spawn();
    let s = TestServer::spawn_tls_with(for_page(&page, |_| {}));
    let tabs = open_tabs(&b, &page, &s, KEY, (20, 3), "&share=off", true).await;
    for tab in &tabs {
        for id in &tab.ids {
            wait_for_waiting(&s, KEY, id, 1).await;
        }
    }
    s.wait_for_metric(EVENTS, 60).await;
    assert_eq!(s.metric(POLLS).await, 0);
    b.switch_to(&tabs[7].handle).await;
    let shown = status(&b).await;
    assert_eq!(shown["share"], "off", "{shown}");
    eprintln!(
        "20 tabs x 3 subscriptions over TLS without sharing: waiting streams {}, open \
         connections and streams {}",
        s.metric(EVENTS).await,
        s.metric("callhome_connections_open").await
    );
    notify_and_check_all(&b, &s, KEY, &tabs, "over-h2").await;
    assert_eq!(s.metric(EVENTS).await, 60, "every frame still waits");
}
