//! The demo web app (examples/demo) with the real daemon, in two browser windows: a note added
//! in one appears in the other through CallHome. Takes the README's screenshot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::Locator;
use fantoccini::wd::WindowHandle;

use crate::support::browser::{Browser, PATIENCE, free_port};
use crate::support::{Daemon, KEY, client, metric_at};

/// The demo binary, built beside `callhome` by `cargo test --all-targets`.
fn demo_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_callhome"))
        .parent()
        .unwrap()
        .join("examples/demo");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --examples`",
        path.display()
    );
    path
}

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_demo(port: u16, callhome: &str) -> Demo {
    start_demo_with(port, callhome, &["--key", KEY]).await
}

/// The demo on `port` with CallHome at `callhome` and `args` (its key, or how to register).
async fn start_demo_with(port: u16, callhome: &str, args: &[&str]) -> Demo {
    let demo = Demo(
        Command::new(demo_binary())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--callhome",
                callhome,
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the demo starts"),
    );
    let http = client();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while http
        .get(format!("http://127.0.0.1:{port}/notes?after=0"))
        .send()
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the demo never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    demo
}

async fn add_note(b: &Browser, text: &str) {
    b.client
        .find(Locator::Id("note-text"))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
    b.client
        .find(Locator::Id("note-add"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The demo at `origin` in the browser's window and a new one, both connected; the second is
/// the current one.
async fn two_windows(b: &Browser, origin: &str) -> (WindowHandle, WindowHandle) {
    let first = b.client.window().await.unwrap();
    b.client.goto(origin).await.unwrap();
    b.wait_for(
        "the first window connected",
        "return window.demoReady === true",
    )
    .await;
    let second = b.client.new_window(false).await.unwrap().handle;
    b.client.switch_to_window(second.clone()).await.unwrap();
    b.client.goto(origin).await.unwrap();
    b.wait_for(
        "the second window connected",
        "return window.demoReady === true",
    )
    .await;
    (first, second)
}

async fn wait_for_note(b: &Browser, text: &str) {
    let script = format!(
        "return Array.from(document.querySelectorAll('#notes .note')).some(function (li) {{ return li.textContent.indexOf({text:?}) >= 0; }})"
    );
    b.wait_for(&format!("note {text:?}"), &script).await;
}

/// The real daemon with the demo's app, and the demo beside it; the demo's origin.
async fn daemon_and_demo(name: &str) -> (Daemon, Demo, String, PathBuf) {
    let demo_port = free_port();
    let origin = format!("http://localhost:{demo_port}");
    let dir = std::env::temp_dir().join(format!("callhome-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("callhome.toml");
    std::fs::write(
        &config,
        format!("[[apps]]\nname = \"demo\"\nkey = \"{KEY}\"\norigins = [\"{origin}\"]\n"),
    )
    .unwrap();
    let daemon = Daemon::start(&config);
    let demo = start_demo(demo_port, &format!("http://{}", daemon.addr)).await;
    (daemon, demo, origin, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_windows_see_each_others_notes() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let (_daemon, _demo, origin, dir) = daemon_and_demo("demo").await;

    let (first, second) = two_windows(&b, &origin).await;

    add_note(&b, "Hello from the second window").await;
    b.client.switch_to_window(first).await.unwrap();
    wait_for_note(&b, "Hello from the second window").await;
    add_note(&b, "And hello back from the first").await;
    b.client.switch_to_window(second).await.unwrap();
    wait_for_note(&b, "And hello back from the first").await;

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e/demo.png");
    b.screenshot(&shot).await;
    if std::env::var_os("CALLHOME_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images/demo.png");
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::copy(&shot, docs).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The demo in three tabs sharing one connection held by one of them (Web Locks): every tab
/// shows how many share it and whether it holds it; when the holder closes, another holds
/// it and the notes still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_its_tabs_sharing_one_connection() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let (daemon, _demo, origin, dir) = daemon_and_demo("demo-sharing").await;
    let url = format!("{origin}/?share=locks");
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(b.open_tab(&url).await);
        b.wait_for("the tab connected", "return window.demoReady === true")
            .await;
    }
    let holder = holding_tab(&b, &tabs, 3).await;
    let streams = metric_at(daemon.addr, "callhome_waiting{transport=\"events\"}").await;
    assert_eq!(streams, 1, "three tabs, one stream");

    b.switch_to(&tabs[holder]).await;
    b.client.close_window().await.unwrap();
    tabs.remove(holder);
    let holder = holding_tab(&b, &tabs, 2).await;
    let other = tabs[1 - holder].clone();
    b.switch_to(&other).await;
    add_note(&b, "Written after the holder left").await;
    b.switch_to(&tabs[holder]).await;
    wait_for_note(&b, "Written after the holder left").await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Waits until every one of `tabs` says `frames` tabs share the connection and exactly one
/// holds it; returns which.
async fn holding_tab(b: &Browser, tabs: &[WindowHandle], frames: u64) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut holders = Vec::new();
        let mut agreed = true;
        for (n, tab) in tabs.iter().enumerate() {
            b.switch_to(tab).await;
            let text = b
                .eval("return document.getElementById('sharing').textContent")
                .await;
            let text = text.as_str().unwrap_or_default().to_owned();
            agreed &= text.starts_with(&format!("{frames} tabs of this browser share one"));
            if text.contains("held by this tab") {
                holders.push(n);
            }
        }
        if agreed && holders.len() == 1 {
            return holders[0];
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tabs never agreed on {frames} tabs and one holder ({holders:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The demo with no key: it registers itself with a CallHome whose policy is `open` (with
/// loopback origins allowed, as a local trial needs), proving its origin by serving the
/// challenge, and then works as with a configured key, in two real windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_that_registers_itself_works_without_a_configured_key() {
    if !crate::support::engine::memory_engine_feature("self-registration") {
        return;
    }
    let Some(b) = Browser::start().await else {
        return;
    };
    let demo_port = free_port();
    let origin = format!("http://127.0.0.1:{demo_port}");
    let dir = std::env::temp_dir().join(format!("callhome-demo-reg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("callhome.toml");
    std::fs::write(
        &config,
        "[registration]\npolicy = \"open\"\nallow_private_origins = true\n",
    )
    .unwrap();
    let daemon = Daemon::start(&config);
    let callhome = format!("http://{}", daemon.addr);
    let _demo = start_demo_with(
        demo_port,
        &callhome,
        &["--register", "notes-demo", "--origin", &origin],
    )
    .await;
    // Registered once its page gets an id (before, live updates are off).
    let http = client();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let page = http
            .get(&origin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if page.contains("/v1/iframe?") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the demo never registered: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The app exists on CallHome with the demo's origin, bound to it.
    let discovery: serde_json::Value = http
        .get(format!("{callhome}/.well-known/callhome"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["registration"]["policy"], "open");
    let taken = http
        .post(format!("{callhome}/v1/apps/challenges"))
        .json(&serde_json::json!({ "origin": origin }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        taken.status(),
        reqwest::StatusCode::CONFLICT,
        "origin bound"
    );

    let (first, _) = two_windows(&b, &origin).await;
    add_note(&b, "Registered by itself").await;
    b.client.switch_to_window(first).await.unwrap();
    wait_for_note(&b, "Registered by itself").await;
    let _ = std::fs::remove_dir_all(&dir);
}
