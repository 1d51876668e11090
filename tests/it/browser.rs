//! End to end in a real browser: a page on one origin (`localhost`) gets CallHome's news
//! through the hidden iframe on another (`127.0.0.1`), through callhome.js and postMessage.
//! See `support::browser` for how Chromium is driven and skipped.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::browser::{Browser, free_port};
use crate::support::{Daemon, KEY, PageServer, TestServer, client};

/// A browser, a page server, and a CallHome whose app "one" serves the page's origin.
async fn setup() -> Option<(Browser, PageServer, TestServer)> {
    let browser = Browser::start().await?;
    let page = PageServer::spawn();
    let origin = page.origin();
    let server = TestServer::spawn_with(|c| c.apps[0].origins = vec![origin]);
    Some((browser, page, server))
}

async fn iframe_url(s: &TestServer, body: Value) -> String {
    let r = s.create(KEY, Some(body)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["iframe_url"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) fn id_of(iframe_url: &str) -> String {
    url::Url::parse(iframe_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "id")
        .unwrap()
        .1
        .into_owned()
}

/// Opens the test page subscribed to `iframes` and waits until callhome.js ran.
pub(crate) async fn open(b: &Browser, page: &PageServer, iframes: &[&str]) {
    b.client.goto(&page.url(iframes)).await.unwrap();
    b.wait_for(
        "callhome.js loaded and connected",
        "return window.ready === true",
    )
    .await;
}

/// The transport the iframe of subscription 0 is using, read inside the frame.
async fn transport_in_frame(b: &Browser) -> String {
    b.client.enter_frame(0).await.unwrap();
    let mode = b
        .wait_for(
            "the iframe to pick a transport",
            "return document.documentElement.getAttribute('data-transport')",
        )
        .await;
    b.client.enter_parent_frame().await.unwrap();
    mode.as_str().unwrap().to_owned()
}

async fn notify_reaches_the_page(transport: Option<&str>, expected_mode: &str) {
    let Some((b, page, s)) = setup().await else {
        return;
    };
    let mut url = iframe_url(&s, json!({})).await;
    if let Some(t) = transport {
        url = format!("{url}&transport={t}");
    }
    let id = id_of(&url);
    open(&b, &page, &[&url]).await;
    s.wait_for_waiters(&id, 1).await;
    assert_eq!(transport_in_frame(&b).await, expected_mode);

    s.notify(KEY, &id, "hello").await;
    b.wait_for("the value", "return window.received[0].length === 1")
        .await;
    assert_eq!(b.received(0).await, [("hello".to_owned(), 1)]);

    // And the next one, on the reconnected wait.
    s.wait_for_waiters(&id, 1).await;
    s.notify(KEY, &id, "again").await;
    b.wait_for("the second value", "return window.received[0].length === 2")
        .await;
    assert_eq!(b.received(0).await[1], ("again".to_owned(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_reaches_the_page_over_sse() {
    notify_reaches_the_page(Some("sse"), "sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_reaches_the_page_over_forced_long_poll() {
    notify_reaches_the_page(Some("poll"), "poll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_iframe_uses_sse() {
    notify_reaches_the_page(None, "sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_notifies_deliver_the_newest_and_never_go_backwards() {
    let Some((b, page, s)) = setup().await else {
        return;
    };
    for transport in ["sse", "poll"] {
        let url = format!("{}&transport={transport}", iframe_url(&s, json!({})).await);
        let id = id_of(&url);
        open(&b, &page, &[&url]).await;
        s.wait_for_waiters(&id, 1).await;
        for n in 1..=3 {
            s.notify(KEY, &id, &n.to_string()).await;
        }
        b.wait_for(
            "seq 3",
            "var r = window.received[0]; return r.length > 0 && r[r.length - 1].seq === 3",
        )
        .await;
        let got = b.received(0).await;
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "{transport}: {got:?}"
        );
        assert_eq!(got.last().unwrap(), &("3".to_owned(), 3), "{transport}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_subscriptions_on_one_page_each_get_their_own() {
    let Some((b, page, s)) = setup().await else {
        return;
    };
    let first = iframe_url(&s, json!({})).await;
    let second = format!("{}&transport=poll", iframe_url(&s, json!({})).await);
    open(&b, &page, &[&first, &second]).await;
    s.wait_for_waiters(&id_of(&first), 1).await;
    s.wait_for_waiters(&id_of(&second), 1).await;
    s.notify(KEY, &id_of(&second), "for the second").await;
    s.notify(KEY, &id_of(&first), "for the first").await;
    b.wait_for(
        "both values",
        "return window.received[0].length === 1 && window.received[1].length === 1",
    )
    .await;
    assert_eq!(b.received(0).await, [("for the first".to_owned(), 1)]);
    assert_eq!(b.received(1).await, [("for the second".to_owned(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_reaches_on_error_as_unknown() {
    let Some((b, page, s)) = setup().await else {
        return;
    };
    let origin = page.origin();
    let url = s.url(&format!(
        "/v1/iframe?id=never-created-00001&origin={origin}"
    ));
    open(&b, &page, &[&url]).await;
    let errors = b
        .wait_for(
            "an error",
            "var e = window.errors[0]; return e.length > 0 && e",
        )
        .await;
    assert_eq!(errors, json!(["unknown"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_id_reaches_on_error_as_gone_once() {
    let Some((b, page, s)) = setup().await else {
        return;
    };
    for transport in ["sse", "poll"] {
        let url = format!("{}&transport={transport}", iframe_url(&s, json!({})).await);
        let id = id_of(&url);
        open(&b, &page, &[&url]).await;
        s.wait_for_waiters(&id, 1).await;
        let r = s
            .client
            .delete(s.url(&format!("/v1/ids/{id}")))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let errors = b
            .wait_for(
                "an error",
                "var e = window.errors[0]; return e.length > 0 && e",
            )
            .await;
        assert_eq!(errors, json!(["gone"]), "{transport}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_receives_nothing() {
    let Some((b, page, s)) = setup().await else {
        return;
    };
    let intruder = PageServer::spawn();
    let url = iframe_url(&s, json!({})).await;
    let id = id_of(&url);
    // (a) The real iframe URL, framed by the wrong origin: frame-ancestors stops it.
    // (b) The iframe asked for the intruder's origin: the server refuses the page.
    let asked_for_intruder = url.replace(
        &url::form_urlencoded::byte_serialize(page.origin().as_bytes()).collect::<String>(),
        &url::form_urlencoded::byte_serialize(intruder.origin().as_bytes()).collect::<String>(),
    );
    assert_ne!(asked_for_intruder, url);
    open(&b, &intruder, &[&url, &asked_for_intruder]).await;
    // Give a working page ample time to have connected (it takes milliseconds).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = s.notify(KEY, &id, "secret").await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["waiting"],
        0,
        "no iframe got to wait"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(b.received(0).await.is_empty() && b.received(1).await.is_empty());
    assert_eq!(
        b.eval("return [window.errors[0], window.errors[1]]").await,
        json!([[], []])
    );
}

/// `callhome_waiters_released_total` now.
async fn releases(s: &TestServer) -> u64 {
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("callhome_waiters_released_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_holding_every_place_cannot_keep_the_page_from_its_news() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let page = PageServer::spawn();
    let s = TestServer::spawn_with(|c| {
        c.apps[0].origins = vec![page.origin()];
        c.limits.max_waiters_per_id = 2;
    });
    for transport in ["sse", "poll"] {
        let url = format!("{}&transport={transport}", iframe_url(&s, json!({})).await);
        let id = id_of(&url);
        // A stranger who knows the id holds both places before the page opens...
        let stranger: Vec<_> = futures_util::future::join_all(
            (0..2).map(|_| s.client.get(s.url(&format!("/v1/events?id={id}"))).send()),
        )
        .await;
        s.wait_for_waiters(&id, 2).await;
        // ...and the page still gets in, and gets its news.
        open(&b, &page, &[&url]).await;
        s.wait_for_waiters(&id, 2).await;
        s.notify(KEY, &id, "for the page").await;
        b.wait_for("the value", "return window.received[0].length === 1")
            .await;
        assert_eq!(
            b.received(0).await,
            [("for the page".to_owned(), 1)],
            "{transport}"
        );
        drop(stranger);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_over_the_cap_take_turns_calmly_and_miss_nothing() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let page = PageServer::spawn();
    let s = TestServer::spawn_with(|c| {
        c.apps[0].origins = vec![page.origin()];
        c.limits.max_waiters_per_id = 1;
    });
    for (transport, share) in [
        ("poll", "off"),
        ("sse", "off"),
        ("poll", "auto"),
        ("sse", "auto"),
    ] {
        let url = format!(
            "{}&transport={transport}&share={share}",
            iframe_url(&s, json!({})).await
        );
        let id = id_of(&url);
        let before = releases(&s).await;
        // Two subscriptions to one id with one place, each frame on its own connection: each
        // release sends one away for about a second, which then releases the other. Coming
        // back at once would be hundreds. Shared, the two frames take the id's place once.
        open(&b, &page, &[&url, &url]).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let turns = releases(&s).await - before;
        let calm = if share == "off" { 1..=10 } else { 0..=0 };
        assert!(
            calm.contains(&turns),
            "{transport}, share={share}: {turns} releases in 3 s"
        );
        s.notify(KEY, &id, "for both").await;
        b.wait_for(
            "the value in both subscriptions",
            "return window.received[0].length === 1 && window.received[1].length === 1",
        )
        .await;
        assert_eq!(
            b.eval("return window.errors").await,
            json!({"0": [], "1": []})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_recovers_after_the_daemon_restarts() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let page = PageServer::spawn();
    let dir = std::env::temp_dir().join(format!("callhome-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("callhome.toml");
    std::fs::write(
        &config,
        format!(
            "[[apps]]\nname = \"one\"\nkey = \"{KEY}\"\norigins = [\"{}\"]\n",
            page.origin()
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let http = client();
    let base = format!("http://{listen}");
    let create = || async {
        let r = http
            .post(format!("{base}/v1/ids"))
            .bearer_auth(KEY)
            .json(&json!({"id": "survives-restarts-01"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["iframe_url"]
            .as_str()
            .unwrap()
            .replace("127.0.0.1:8080", &listen)
    };
    let notify = |info: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http
                .post(format!("{base}/v1/ids/survives-restarts-01/notify"))
                .bearer_auth(KEY)
                .json(&json!({ "info": info }))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let waiting = || async {
        let deadline = tokio::time::Instant::now() + crate::support::browser::PATIENCE;
        loop {
            let r = http
                .get(format!("{base}/v1/ids/survives-restarts-01"))
                .bearer_auth(KEY)
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(v) = r.json::<Value>().await
                && v["waiting"] == 1
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    let daemon = Daemon::start_on(&config, &listen, None, &[]);
    let url = create().await;
    open(&b, &page, &[&url]).await;
    waiting().await;
    notify("before").await;
    b.wait_for(
        "the value before the restart",
        "return window.received[0].length === 1",
    )
    .await;

    drop(daemon);
    let _daemon = Daemon::start_on(&config, &listen, None, &[]);
    // The memory store forgot the id; the app makes it again, as it would after a restart.
    create().await;
    waiting().await;
    notify("after").await;
    b.wait_for(
        "the value after the restart",
        "return window.received[0].length === 2",
    )
    .await;
    assert_eq!(
        b.received(0).await,
        [("before".to_owned(), 1), ("after".to_owned(), 1)],
        "the new life of the id starts its seqs over and the page follows"
    );
    assert_eq!(b.eval("return window.errors[0]").await, json!([]));
    std::fs::remove_dir_all(&dir).unwrap();
}
