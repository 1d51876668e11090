//! The admin API (`/v1/admin/apps`): apps registered at runtime, with keys shown once and
//! kept as digests, rotated with a grace period, revoked at once, and kept across restarts.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{KEY, Kept, TestServer, client, error_code};

const ADMIN: &str = "admin-key-0123456789-abcdefghij";
const ORIGIN: &str = "https://new.example";

fn server() -> TestServer {
    TestServer::spawn_with(|c| c.admin.key = Some(callhome::auth::AppKey::new(ADMIN.into())))
}

/// `method path` with the admin key and `body` (JSON, if any).
async fn admin(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = s.client.request(method, s.url(path)).bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// Registers `name` on `origins`; returns the answer's JSON.
async fn register(s: &TestServer, name: &str, extra: Value) -> Value {
    let mut body = json!({"name": name, "origins": [ORIGIN]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = admin(s, reqwest::Method::POST, "/v1/admin/apps", Some(body)).await;
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer
}

async fn create_with(s: &TestServer, key: &str) -> StatusCode {
    s.create(key, Some(json!({}))).await.status()
}

#[tokio::test]
async fn without_an_admin_key_the_admin_api_does_not_exist() {
    let s = TestServer::spawn();
    let r = s
        .client
        .get(s.url("/v1/admin/apps"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "not_found");
}

#[tokio::test]
async fn only_the_admin_key_opens_the_admin_api() {
    let s = server();
    for key in [
        None,
        Some(KEY),
        Some("admin-key-0123456789-abcdefghi"),
        Some(""),
    ] {
        let mut request = s.client.get(s.url("/v1/admin/apps"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(error_code(r).await, "unauthorized");
    }
}

#[tokio::test]
async fn a_registered_app_works_like_a_configured_one_and_its_key_is_shown_once() {
    let s = server();
    let made = register(&s, "new", json!({"max_ids": 2})).await;
    let key = made["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("chk_"), "{made}");
    assert_eq!(made["app"]["name"], "new");
    assert_eq!(made["app"]["source"], "registered");
    assert_eq!(made["app"]["origins"], json!([ORIGIN]));
    assert_eq!(made["app"]["keys"][0]["id"], made["key_id"]);

    // The key creates ids bound to the app's origin, notifies them, within its quota.
    let r = s.create(&key, Some(json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["origin"], ORIGIN);
    let id = created["id"].as_str().unwrap();
    assert_eq!(s.notify(&key, id, "hello").await.status(), StatusCode::OK);
    assert_eq!(create_with(&s, &key).await, StatusCode::CREATED);
    let r = s.create(&key, Some(json!({}))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "app_quota_exceeded");
    // Another app's key does not reach it.
    let r = s
        .client
        .get(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Listed beside the config's apps, never with a key.
    let r = admin(&s, reqwest::Method::GET, "/v1/admin/apps", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&key) && !text.contains(KEY), "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["new", "one", "two"]);
    assert_eq!(list["apps"][1]["source"], "config");
    let shown: Value = admin(&s, reqwest::Method::GET, "/v1/admin/apps/new", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (shown["ids"].clone(), shown["max_ids"].clone()),
        (json!(2), json!(2))
    );
}

#[tokio::test]
async fn bad_registrations_are_refused_with_a_clear_error_and_change_nothing() {
    let s = server();
    register(&s, "taken", json!({})).await;
    let cases = [
        (
            json!({"name": "Bad Name", "origins": [ORIGIN]}),
            400,
            "invalid_app",
        ),
        (json!({"name": "", "origins": [ORIGIN]}), 400, "invalid_app"),
        (json!({"name": "empty", "origins": []}), 400, "invalid_app"),
        (
            json!({"name": "wild", "origins": ["*"]}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "path", "origins": ["https://x.example/path"]}),
            400,
            "invalid_origin",
        ),
        (
            json!({"name": "zero", "origins": [ORIGIN], "max_ids": 0}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "huge", "origins": [ORIGIN], "max_ids": 1_000_000_000_000u64}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "taken", "origins": [ORIGIN]}),
            409,
            "app_exists",
        ),
        (
            json!({"name": "one", "origins": [ORIGIN]}),
            409,
            "app_exists",
        ),
        (
            json!({"name": "extra", "origins": [ORIGIN], "key": "mine"}),
            400,
            "invalid_json",
        ),
        (json!({"origins": [ORIGIN]}), 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let r = admin(
            &s,
            reqwest::Method::POST,
            "/v1/admin/apps",
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert_eq!(error_code(r).await, code, "{body}");
    }
    let list: Value = admin(&s, reqwest::Method::GET, "/v1/admin/apps", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["apps"].as_array().unwrap().len(),
        3,
        "one, two, taken: {list}"
    );
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_its_grace_and_revocation_stops_a_key_at_once() {
    let s = server();
    let first = register(&s, "rotating", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = "/v1/admin/apps/rotating/keys";
    let r = admin(
        &s,
        reqwest::Method::POST,
        path,
        Some(json!({"grace": "1h"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let rotated: Value = r.json().await.unwrap();
    let second = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    // Both work during the grace; the listing says when the old one stops.
    assert_eq!(create_with(&s, &first).await, StatusCode::CREATED);
    assert_eq!(create_with(&s, &second).await, StatusCode::CREATED);
    let keys = rotated["app"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys[0]["expires_at"].is_string() && keys[1]["expires_at"].is_null());

    // A rotation with no grace: only the newest key works, from now on.
    let r = admin(
        &s,
        reqwest::Method::POST,
        path,
        Some(json!({"grace": "0s"})),
    )
    .await;
    let third: Value = r.json().await.unwrap();
    let third_key = third["key"].as_str().unwrap();
    for old in [&first, &second] {
        assert_eq!(create_with(&s, old).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(create_with(&s, third_key).await, StatusCode::CREATED);

    // Revoked: refused at once.
    let key_id = third["key_id"].as_str().unwrap();
    let r = admin(
        &s,
        reqwest::Method::DELETE,
        &format!("{path}/{key_id}"),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(create_with(&s, third_key).await, StatusCode::UNAUTHORIZED);
    let r = admin(
        &s,
        reqwest::Method::DELETE,
        &format!("{path}/{key_id}"),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "unknown_key");
    let r = admin(
        &s,
        reqwest::Method::POST,
        path,
        Some(json!({"grace": "31d"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "invalid_parameters");
}

/// A grace runs out by itself: the old key works until its `expires_at`, and is refused from
/// then on without anyone touching the app again, while the new key goes on working.
#[tokio::test]
async fn a_rotated_keys_grace_runs_out_by_itself() {
    let s = server();
    let old = register(&s, "expiring", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = admin(
        &s,
        reqwest::Method::POST,
        "/v1/admin/apps/expiring/keys",
        Some(json!({"grace": "2s"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let rotated: Value = r.json().await.unwrap();
    let new = rotated["key"].as_str().unwrap().to_owned();
    let ends: String = rotated["app"]["keys"][0]["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        create_with(&s, &old).await,
        StatusCode::CREATED,
        "in its grace"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while create_with(&s, &old).await != StatusCode::UNAUTHORIZED {
        assert!(
            std::time::Instant::now() < deadline,
            "the old key still works 10 s after a grace of 2 s (ends {ends})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Refused for good, not by a hiccup; the listing no longer shows it.
    assert_eq!(create_with(&s, &old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(create_with(&s, &new).await, StatusCode::CREATED);
    let shown: Value = admin(&s, reqwest::Method::GET, "/v1/admin/apps/expiring", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["keys"].as_array().unwrap().len(), 1, "{shown}");
}

#[tokio::test]
async fn config_apps_are_listed_but_changed_only_in_the_config() {
    let s = server();
    for (method, path, body) in [
        (
            reqwest::Method::PATCH,
            "/v1/admin/apps/one",
            Some(json!({"max_ids": 1})),
        ),
        (reqwest::Method::POST, "/v1/admin/apps/one/keys", None),
        (reqwest::Method::DELETE, "/v1/admin/apps/one", None),
    ] {
        let r = admin(&s, method.clone(), path, body).await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{method} {path}");
        assert_eq!(error_code(r).await, "config_app");
    }
    assert_eq!(create_with(&s, KEY).await, StatusCode::CREATED);
    for (method, path) in [
        (reqwest::Method::GET, "/v1/admin/apps/nobody"),
        (reqwest::Method::DELETE, "/v1/admin/apps/nobody"),
        (reqwest::Method::POST, "/v1/admin/apps/nobody/keys"),
    ] {
        let r = admin(&s, method.clone(), path, None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(error_code(r).await, "unknown_app");
    }
}

#[tokio::test]
async fn an_app_changed_or_removed_at_runtime_takes_effect_at_once() {
    let s = server();
    let key = register(&s, "moving", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = s.new_id_for(&key).await;
    let iframe = |origin: &str| s.url(&format!("/v1/iframe?id={id}&origin={origin}"));
    let get = |url: String| async { s.client.get(url).send().await.unwrap().status() };
    assert_eq!(get(iframe(ORIGIN)).await, StatusCode::OK);
    // Its origin moves: the ids bound to the old one are no longer served there.
    let r = admin(
        &s,
        reqwest::Method::PATCH,
        "/v1/admin/apps/moving",
        Some(json!({"origins": ["https://moved.example"]})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(get(iframe(ORIGIN)).await, StatusCode::BAD_REQUEST);
    let r = s.create(&key, Some(json!({}))).await;
    let moved: Value = r.json().await.unwrap();
    assert_eq!(moved["origin"], "https://moved.example");

    // Removed: its key stops, its ids are gone.
    let r = admin(&s, reqwest::Method::DELETE, "/v1/admin/apps/moving", None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(create_with(&s, &key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(s.poll(&id, 0).await.status(), StatusCode::NOT_FOUND);
}

/// The real binary, with a snapshot: a registered app and its rotated keys survive a
/// `kill -9` right after the answer (the change was written before it), and a graceful
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_survives_kill_9_and_a_graceful_restart() {
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
    let kept = Kept::new("admin", &format!("[admin]\nkey = \"{ADMIN}\"\n"));
    let http = client();
    let keys = std::sync::Mutex::new(Vec::new());
    kept.then_kill_9(|base| {
        let (http, keys) = (&http, &keys);
        async move {
            let made: Value = http
                .post(format!("{base}/v1/admin/apps"))
                .bearer_auth(ADMIN)
                .json(&json!({"name": "kept", "origins": [ORIGIN]}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let rotated: Value = http
                .post(format!("{base}/v1/admin/apps/kept/keys"))
                .bearer_auth(ADMIN)
                .json(&json!({"grace": "1h"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for answer in [made, rotated] {
                keys.lock()
                    .unwrap()
                    .push(answer["key"].as_str().unwrap().to_owned());
            }
        }
    })
    .await;
    let keys = keys.into_inner().unwrap();
    // Stored as digests only: the file names the app, and holds no key it was shown.
    let stored = kept.snapshot_bytes();
    assert!(contains(&stored, b"kept"), "the snapshot names the app");
    for key in &keys {
        assert!(
            !contains(&stored, key.as_bytes()),
            "the snapshot holds a key"
        );
    }
    kept.check_restarts(|base, round| {
        let (http, keys) = (&http, &keys);
        async move {
            for key in keys {
                let status = http
                    .post(format!("{base}/v1/ids"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, StatusCode::CREATED, "{round}");
            }
        }
    })
    .await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
