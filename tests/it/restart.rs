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

    /// Waits (bounded: 2 s) until `id` has one client waiting, so a signal finds it held.
    async fn wait_for_a_waiter(&self, id: &str) {
        for _ in 0..100 {
            let status: Value = self
                .http
                .get(format!("{}/v1/ids/{id}", self.base))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if status["waiting"] == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
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
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
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
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
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
    api.wait_for_a_waiter("grace-test-id-00001").await;

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

/// Runs `command` to its end, bounded: a daemon that should have refused to start but did
/// not is killed, and the test fails saying so.
fn run_to_refusal(mut command: Command) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the callhome binary starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "it did not refuse to start; its log:\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The binary on the shipped config and `snapshot`, with `args`, on port 0.
fn callhome(snapshot: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_callhome"));
    command
        .arg("--config")
        .arg(shipped_config())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("CALLHOME_LISTEN")
        .env("CALLHOME_STORE__SNAPSHOT_PATH", snapshot);
    command
}

/// The lock file beside `snapshot`.
fn lock_file(snapshot: &Path) -> PathBuf {
    let mut path = snapshot.as_os_str().to_owned();
    path.push(".lock");
    PathBuf::from(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_snapshot_refuses_to_start() {
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
    let dir = temp_dir("locked");
    let snapshot = dir.join("state");
    let mut first = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let api = Api::of(&first);
    api.create("lock-test-id-000001").await;

    for args in [&[][..], &["--discard-state"][..]] {
        let output = tokio::task::block_in_place(|| run_to_refusal(callhome(&snapshot, args)));
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&snapshot.display().to_string())
                && stderr.contains(&format!("PID {}", first.pid())),
            "the refusal names the snapshot and the daemon using it ({args:?}): {stderr}"
        );
    }
    let aside = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().contains("discarded")
        })
        .count();
    assert_eq!(aside, 0, "a refused --discard-state moves nothing aside");

    // The first daemon never noticed: it serves, and writes its final snapshot at the end.
    assert_eq!(
        api.notify("lock-test-id-000001", "still mine").await["seq"],
        1
    );
    assert!(tokio::task::block_in_place(|| first.terminate()));

    // The lock went with it: the next daemon starts, with the first's ids.
    let next = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let v: Value = Api::of(&next)
        .poll("lock-test-id-000001", 0)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"seq": 1, "info": "still mine"}));
    drop(next);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_of_a_killed_daemon_does_not_block_the_next() {
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
    let dir = temp_dir("stale-lock");
    let snapshot = dir.join("state");
    let daemon = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let pid = daemon.pid();
    drop(daemon); // SIGKILL: nothing is cleaned up, the kernel drops the lock
    let left = std::fs::read_to_string(lock_file(&snapshot)).expect("the lock file is left");
    assert_eq!(
        left.trim(),
        pid.to_string(),
        "it names the daemon that held it"
    );

    let daemon = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let r = Api::of(&daemon).poll("anything-at-all-0001", 0).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the next daemon serves");
    let now = std::fs::read_to_string(lock_file(&snapshot)).unwrap();
    assert_eq!(now.trim(), daemon.pid().to_string());
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Waits (bounded) until the file at `path` exists and holds `needle`.
async fn wait_for_file_with(path: &Path, needle: &[u8]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never held {:?}",
            path.display(),
            String::from_utf8_lossy(needle)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
    let dir = temp_dir("private");
    // A directory the daemon makes itself is 0700, the snapshot and its lock 0600.
    let snapshot = dir.join("made-by-callhome").join("state");
    let daemon = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let api = Api::of(&daemon);
    api.create("private-test-id-001").await;
    api.notify("private-test-id-001", "a secret").await;
    wait_for_file_with(&snapshot, b"a secret").await;
    assert_eq!(mode(&snapshot), 0o600, "the snapshot");
    assert_eq!(mode(snapshot.parent().unwrap()), 0o700, "its directory");
    assert_eq!(mode(&lock_file(&snapshot)), 0o600, "the lock file");
    drop(daemon);

    // One left readable by an older version (or a careless copy) is tightened at start, and
    // a directory others can read is warned about but left alone: it may not be ours.
    std::fs::set_permissions(&snapshot, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shared = snapshot.parent().unwrap();
    std::fs::set_permissions(shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("callhome.toml");
    let shipped = std::fs::read_to_string(shipped_config()).unwrap();
    let pointed = shipped.replace(
        "snapshot_path = \"data/callhome.snapshot\"",
        &format!("snapshot_path = {:?}", snapshot.display().to_string()),
    );
    assert_ne!(pointed, shipped, "the shipped config sets snapshot_path");
    std::fs::write(&config, pointed).unwrap();
    let (daemon, output) = Daemon::start_recorded(&config, &[]);
    assert_eq!(mode(&snapshot), 0o600, "tightened before the first write");
    output
        .wait_for("warning that the snapshot was readable", |l| {
            l.contains("WARN") && l.contains("0644") && l.contains("state")
        })
        .await;
    output
        .wait_for("warning about the directory", |l| {
            l.contains("WARN") && l.contains("0755") && l.contains("made-by-callhome")
        })
        .await;
    assert_eq!(mode(shared), 0o755, "the directory is left as it is");
    let v: Value = Api::of(&daemon)
        .poll("private-test-id-001", 0)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["info"], "a secret", "and the snapshot was read as usual");
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_drains_like_sigterm_and_a_second_one_does_not_cut_it_short() {
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
    let dir = temp_dir("sighup");
    let snapshot = dir.join("state");
    // A grace long enough to send a second SIGHUP while the first is being handled: a
    // closing terminal can send several (the shell passes its own on, the kernel sends one).
    let config = dir.join("callhome.toml");
    let shipped = std::fs::read_to_string(shipped_config()).unwrap();
    std::fs::write(
        &config,
        shipped.replace("shutdown_grace = \"0s\"", "shutdown_grace = \"2s\""),
    )
    .unwrap();
    let mut daemon = Daemon::start_on(&config, "127.0.0.1:0", Some(&snapshot), &[]);
    let api = Api::of(&daemon);
    api.create("sighup-test-id-0001").await;
    api.notify("sighup-test-id-0001", "kept").await;
    let held = tokio::spawn({
        let request = api.http.get(format!(
            "{}/v1/poll?id=sighup-test-id-0001&since=1",
            api.base
        ));
        async move { request.send().await.unwrap().status() }
    });
    api.wait_for_a_waiter("sighup-test-id-0001").await;

    daemon.send_signal("HUP");
    let mut draining = false;
    for _ in 0..100 {
        let r = api.http.get(format!("{}/readyz", api.base)).send().await;
        if r.is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE) {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(draining, "SIGHUP starts a drain: /readyz fails");
    daemon.send_signal("HUP");
    let released = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held poll is released")
        .unwrap();
    assert_eq!(
        released,
        StatusCode::NO_CONTENT,
        "answered 204 as on SIGTERM"
    );
    assert!(
        tokio::task::block_in_place(|| daemon.wait_exit()),
        "exit 0 after the drain, not 130 for the second SIGHUP"
    );

    let daemon = Daemon::start_on(&shipped_config(), "127.0.0.1:0", Some(&snapshot), &[]);
    let v: Value = Api::of(&daemon)
        .poll("sighup-test-id-0001", 0)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"seq": 1, "info": "kept"}),
        "the final snapshot was written"
    );
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// True when this process may mount a file system in a mount namespace of its own (root,
/// or `CAP_SYS_ADMIN`, and `unshare` from util-linux). Without it the full-disk test is
/// skipped, except under `CI=true`, where that fails.
fn can_mount_privately(dir: &Path) -> bool {
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=4k callhome-probe \"$0\"")
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status();
    let ok = probe.is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but a tmpfs cannot be mounted in a private mount namespace (needs root \
             and util-linux's unshare)"
        );
        eprintln!("skipped: cannot mount a tmpfs in a private mount namespace (needs root)");
    }
    ok
}

/// A `/metrics` counter's value.
async fn counter(api: &Api, series: &str) -> f64 {
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_fit_on_the_disk_leaves_no_partial_file() {
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
    let dir = temp_dir("full-disk");
    let disk = dir.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    if !can_mount_privately(&disk) {
        return;
    }
    // A 64 KiB tmpfs over `disk`, seen only by the daemon (its own mount namespace, gone
    // with it: nothing to unmount, whatever happens to the test).
    let snapshot = disk.join("state");
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs -o size=64k callhome-test \"$0\" && exec \"$@\"",
    ];
    let mut wrapper: Vec<&std::ffi::OsStr> = wrapper.iter().map(std::ffi::OsStr::new).collect();
    wrapper.push(disk.as_os_str());
    let mut daemon = Daemon::start_wrapped(
        &wrapper,
        &shipped_config(),
        "127.0.0.1:0",
        Some(&snapshot),
        &[],
    );
    // The daemon's view of its tmpfs.
    let seen =
        PathBuf::from(format!("/proc/{}/root", daemon.pid())).join(disk.strip_prefix("/").unwrap());
    let api = Api::of(&daemon);
    api.create("full-disk-id-000000").await;
    api.notify("full-disk-id-000000", "small and saved").await;
    wait_for_file_with(&seen.join("state"), b"small and saved").await;

    // 30 ids of 4,000-byte infos: a snapshot of about 120 KB does not fit in 64 KiB.
    let big = "x".repeat(4000);
    for i in 0..30 {
        let id = format!("full-disk-id-{i:06}");
        if i > 0 {
            api.create(&id).await;
        }
        api.notify(&id, &big).await;
    }
    let failures = r#"callhome_snapshots_total{outcome="error"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter(&api, failures).await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no snapshot failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<String> = std::fs::read_dir(&seen)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left == ["state", "state.lock"] || left == ["state.lock", "state"],
        "the partial temporary file was removed: {left:?}"
    );
    let kept = std::fs::read(seen.join("state")).unwrap();
    assert!(
        kept.windows(15).any(|w| w == b"small and saved"),
        "the last good snapshot is still there"
    );
    drop(api);
    assert!(!daemon.has_exited());
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}
