//! Restarts of the real binary with a snapshot: graceful (SIGTERM), crash (SIGKILL after a
//! snapshot), and a damaged snapshot that must stop start-up without losing the file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Daemon, client};

/// The shipped config's demo key.
const KEY: &str = "demo-key-change-me-0123456789";

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/callhome.toml")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("callhome-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn of(daemon: &Daemon) -> Self {
        Self {
            http: client(),
            base: format!("http://{}", daemon.addr),
        }
    }

    async fn create(&self, id: &str) {
        let r = self
            .http
            .post(format!("{}/v1/ids", self.base))
            .bearer_auth(KEY)
            .json(&json!({ "id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    async fn notify(&self, id: &str, info: &str) -> Value {
        self.http
            .post(format!("{}/v1/ids/{id}/notify", self.base))
            .bearer_auth(KEY)
            .json(&json!({ "info": info }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn poll(&self, id: &str, since: u64) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/poll?id={id}&since={since}", self.base))
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_loses_nothing_and_releases_waiting_polls() {
    let dir = temp_dir("graceful");
    let snapshot = dir.join("state");
    let mut daemon = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let api = Api::of(&daemon);
    for (i, id) in ["restart-test-id-0001", "restart-test-id-0002"]
        .iter()
        .enumerate()
    {
        api.create(id).await;
        for n in 0..=i {
            api.notify(id, &format!("{id} value {n}")).await;
        }
    }
    let held = tokio::spawn({
        let request = api.http.get(format!(
            "{}/v1/poll?id=restart-test-id-0001&since=1",
            api.base
        ));
        async move { request.send().await.unwrap() }
    });
    // The poll is held (seq is 1, the client has seen 1) until the shutdown releases it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exited_cleanly = tokio::task::block_in_place(|| daemon.terminate());
    assert!(exited_cleanly, "SIGTERM is a clean exit");
    let released = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        released.status(),
        StatusCode::NO_CONTENT,
        "waiting polls are answered 204"
    );
    assert!(snapshot.is_file(), "the final snapshot was written");

    let daemon = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let api = Api::of(&daemon);
    let v: Value = api
        .poll("restart-test-id-0001", 0)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"seq": 1, "info": "restart-test-id-0001 value 0"}));
    let v: Value = api
        .poll("restart-test-id-0002", 0)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"seq": 2, "info": "restart-test-id-0002 value 1"}));
    // A page that was waiting resumes with its cursor and gets what comes next.
    let resumed = tokio::spawn({
        let request = api.http.get(format!(
            "{}/v1/poll?id=restart-test-id-0001&since=1",
            api.base
        ));
        async move { request.send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.notify("restart-test-id-0001", "after").await["seq"], 2);
    let v: Value = resumed.await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"seq": 2, "info": "after"}));
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_snapshot_keeps_the_ids() {
    let dir = temp_dir("crash");
    let snapshot = dir.join("state");
    let daemon = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let api = Api::of(&daemon);
    api.create("crash-test-id-00001").await;
    api.notify("crash-test-id-00001", "before the crash").await;
    // The periodic snapshot (every second in the shipped config) picks the change up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read(&snapshot).is_ok_and(|b| b.windows(16).any(|w| w == b"before the crash")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot was written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(daemon); // SIGKILL: no final snapshot

    let daemon = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let v: Value = Api::of(&daemon)
        .poll("crash-test-id-00001", 0)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"seq": 1, "info": "before the crash"}));
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_stops_start_up_and_is_kept_until_discarded() {
    let dir = temp_dir("damaged");
    let snapshot = dir.join("state");
    std::fs::write(&snapshot, b"CALLHOME-SNAPSHT\x01\x00\x00\x00garbage").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_callhome"))
        .arg("--config")
        .arg(shipped_config())
        .args(["--listen", "127.0.0.1:0"])
        .env("CALLHOME_STORE__SNAPSHOT_PATH", &snapshot)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("checksum") && stderr.contains("--discard-state"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&snapshot).unwrap(),
        b"CALLHOME-SNAPSHT\x01\x00\x00\x00garbage"
    );

    let daemon = Daemon::start_on(
        &shipped_config(),
        "127.0.0.1:0",
        Some(&snapshot),
        &["--discard-state"],
    );
    let r = Api::of(&daemon).poll("anything-at-all-0001", 0).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "started empty");
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("state.discarded-"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the damaged file was moved aside, not deleted"
    );
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_fails_readyz_first_and_keeps_serving_until_it_ends() {
    let dir = temp_dir("grace");
    let config = dir.join("callhome.toml");
    let shipped = std::fs::read_to_string(shipped_config()).unwrap();
    let graceful = shipped.replace("shutdown_grace = \"0s\"", "shutdown_grace = \"2s\"");
    assert_ne!(graceful, shipped, "the shipped config sets shutdown_grace");
    std::fs::write(&config, graceful).unwrap();
    let mut daemon = Daemon::start_on(&config, "127.0.0.1:0", Some(&dir.join("state")), &[]);
    let api = Api::of(&daemon);
    api.create("grace-test-id-00001").await;
    let held = tokio::spawn({
        let (http, base) = (api.http.clone(), api.base.clone());
        async move {
            http.get(format!("{base}/v1/poll?id=grace-test-id-00001&since=0"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // Wait until the poll is held, so the signal finds it waiting.
    for _ in 0..100 {
        let status: Value = api
            .http
            .get(format!("{}/v1/ids/grace-test-id-00001", api.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["waiting"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    daemon.send_sigterm();
    let mut draining = false;
    for _ in 0..100 {
        let r = api
            .http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(draining, "/readyz fails once the signal has arrived");
    // During the grace everything else goes on: new connections are accepted, requests are
    // answered, and the held poll is still held.
    let fresh = client();
    let r = fresh
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        api.notify("grace-test-id-00001", "during the grace").await["seq"],
        1,
        "a notify during the grace is served (and wakes the held poll)"
    );
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    assert!(!daemon.has_exited(), "the grace has not ended yet");
    let again = api.poll("grace-test-id-00001", 1);
    // After the grace this poll is released with 204 and the process exits cleanly.
    let released = tokio::time::timeout(Duration::from_secs(10), again)
        .await
        .expect("the poll held during the grace is released when it ends");
    assert_eq!(released.status(), StatusCode::NO_CONTENT);
    assert!(
        daemon.wait_exit(),
        "a clean exit after the grace and the drain"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
