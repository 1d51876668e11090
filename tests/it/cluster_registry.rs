//! Apps registered at runtime in cluster mode: the registry lives in Redis, every node takes
//! on a change within a second, changes made on several nodes at once all land, a Redis that
//! lost the registry gets it back from the nodes, and a removed app's ids go everywhere.
//! Real nodes on a private `redis-server`, as in `cluster`.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::cluster::{WAIT, nodes, within};
use crate::support::redis::{RedisOptions, RedisServer, require_redis};
use crate::support::{KEY, TestServer, error_code};

const ADMIN: &str = "admin-key-of-the-cluster-0123456789";
/// What the issue asks: a change on one node holds on every node within a second.
const A_SECOND: Duration = Duration::from_secs(1);

/// `method path` on `node` with the admin key.
async fn admin(node: &TestServer, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut request = node
        .client
        .request(method.clone(), node.url(path))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    if r.status() == StatusCode::NO_CONTENT {
        return Value::Null;
    }
    r.json().await.unwrap()
}

/// Registers `name` on `node`; returns its key and key id.
async fn register(node: &TestServer, name: &str) -> (String, String) {
    let made = admin(
        node,
        Method::POST,
        "/v1/admin/apps",
        Some(json!({"name": name, "origins": [format!("https://{name}.example")]})),
    )
    .await;
    (
        made["key"].as_str().unwrap().to_owned(),
        made["key_id"].as_str().unwrap().to_owned(),
    )
}

async fn create_status(node: &TestServer, key: &str) -> StatusCode {
    node.create(key, None).await.status()
}

/// Waits until a create with `key` answers `want` on every one of `nodes`, all of them within
/// `patience` of the call (not `patience` each).
async fn everywhere(nodes: &[&TestServer], key: &str, want: StatusCode, patience: Duration) {
    let start = std::time::Instant::now();
    for node in nodes {
        let what = format!("a create with the key answering {want} on {}", node.addr);
        within(
            patience.saturating_sub(start.elapsed()),
            &what,
            async || (create_status(node, key).await == want).then_some(()),
        )
        .await;
    }
}

async fn three_nodes(redis: &RedisServer) -> [TestServer; 3] {
    nodes(&redis.url(), ["a", "b", "c"], |c| {
        c.admin.key = Some(callhome::auth::AppKey::new(ADMIN.into()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_added_rotated_or_revoked_on_one_node_holds_on_every_node_within_a_second() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = three_nodes(&redis).await;
    let all = [&a, &b, &c];

    let (first, first_id) = register(&a, "shared").await;
    everywhere(&all, &first, StatusCode::CREATED, A_SECOND).await;

    // Rotated on B with a grace: both keys work on every node.
    let rotated = admin(
        &b,
        Method::POST,
        "/v1/admin/apps/shared/keys",
        Some(json!({"grace": "1h"})),
    )
    .await;
    let second = rotated["key"].as_str().unwrap().to_owned();
    everywhere(&all, &second, StatusCode::CREATED, A_SECOND).await;
    everywhere(&all, &first, StatusCode::CREATED, A_SECOND).await;

    // Revoked on C: refused on every node within a second.
    admin(
        &c,
        Method::DELETE,
        &format!("/v1/admin/apps/shared/keys/{first_id}"),
        None,
    )
    .await;
    everywhere(&all, &first, StatusCode::UNAUTHORIZED, A_SECOND).await;
    everywhere(&all, &second, StatusCode::CREATED, A_SECOND).await;

    // Redis holds the registry with digests only: it names the app and no key it was shown.
    let stored = redis.cmd(&["GET", "ch:reg"]).await;
    assert!(stored.contains("shared"), "{stored}");
    for key in [&first, &second] {
        assert!(!stored.contains(key.as_str()), "Redis holds a key");
    }

    // Every node lists the same app, with the ids it holds counted over the whole cluster.
    let held = redis.cmd(&["HGET", "ch:ab:shared", "n"]).await;
    assert!(held.parse::<u64>().unwrap() >= 12, "{held}");
    for node in all {
        let shown = admin(node, Method::GET, "/v1/admin/apps/shared", None).await;
        assert_eq!(shown["ids"].to_string(), held, "{shown}");
        assert_eq!(shown["keys"].as_array().unwrap().len(), 1, "{shown}");
    }
}

/// A grace that runs out stops the old key on every node at once: each node reads the same
/// end from the registry, so once one refuses it the others do too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_that_runs_out_stops_the_old_key_on_every_node() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = three_nodes(&redis).await;
    let all = [&a, &b, &c];
    let (old, _) = register(&a, "graced").await;
    everywhere(&all, &old, StatusCode::CREATED, A_SECOND).await;
    let rotated = admin(
        &b,
        Method::POST,
        "/v1/admin/apps/graced/keys",
        Some(json!({"grace": "2s"})),
    )
    .await;
    let new = rotated["key"].as_str().unwrap().to_owned();
    everywhere(&all, &new, StatusCode::CREATED, A_SECOND).await;

    // Nobody touches the app again: the grace ends on C's clock, and A and B agree at once.
    within(
        Duration::from_secs(10),
        "the old key refused on C",
        async || (create_status(&c, &old).await == StatusCode::UNAUTHORIZED).then_some(()),
    )
    .await;
    for node in [&a, &b, &c] {
        assert_eq!(
            create_status(node, &old).await,
            StatusCode::UNAUTHORIZED,
            "{}",
            node.addr
        );
        assert_eq!(
            create_status(node, &new).await,
            StatusCode::CREATED,
            "{}",
            node.addr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_on_several_nodes_at_once_all_land() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = three_nodes(&redis).await;
    let all = [&a, &b, &c];
    let names: Vec<String> = (0..24).map(|i| format!("app-{i}")).collect();
    let made = join_all(
        names
            .iter()
            .enumerate()
            .map(|(i, name)| register(all[i % 3], name)),
    )
    .await;
    for (key, _) in &made {
        everywhere(&all, key, StatusCode::CREATED, A_SECOND).await;
    }
    for node in all {
        let listed = admin(node, Method::GET, "/v1/admin/apps", None).await;
        let mut registered: Vec<&str> = listed["apps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|app| app["source"] == "registered")
            .map(|app| app["name"].as_str().unwrap())
            .collect();
        registered.sort_unstable();
        let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(registered, want, "on {}", node.addr);
    }
    // One version per change: none was lost to another.
    assert_eq!(redis.cmd(&["GET", "ch:regv"]).await, "24");
}

/// Redis restarted without persistence (here: `FLUSHALL`, which is what it amounts to):
/// the nodes write their registry back, so a key handed out keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_the_registry_gets_it_back_from_the_nodes() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = three_nodes(&redis).await;
    let all = [&a, &b, &c];
    let (key, _) = register(&a, "kept").await;
    register(&b, "also-kept").await;
    everywhere(&all, &key, StatusCode::CREATED, A_SECOND).await;

    assert_eq!(redis.cmd(&["FLUSHALL"]).await, "OK");
    within(WAIT, "the registry back in Redis", async || {
        (redis.cmd(&["GET", "ch:regv"]).await == "2").then_some(())
    })
    .await;
    everywhere(&all, &key, StatusCode::CREATED, A_SECOND).await;
    let restores: u64 =
        join_all(all.map(|n| n.metric("callhome_backplane_registry_restores_total")))
            .await
            .iter()
            .sum();
    assert!(restores >= 1, "some node wrote it back");
    // And a change after it builds on it: nothing of the old registry is lost.
    register(&c, "after").await;
    let listed = admin(&a, Method::GET, "/v1/admin/apps", None).await;
    let names: Vec<&str> = listed["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|app| app["name"].as_str().unwrap())
        .collect();
    for name in ["kept", "also-kept"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    within(A_SECOND * 2, "the new app on a", async || {
        let listed = admin(&a, Method::GET, "/v1/admin/apps", None).await;
        listed["apps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|app| app["name"] == "after")
            .then_some(())
    })
    .await;
}

/// Removed on A: its ids are deleted in Redis, and a page waiting on B is told `gone`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_removed_on_one_node_takes_its_ids_from_every_node() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = three_nodes(&redis).await;
    let (key, _) = register(&a, "leaving").await;
    everywhere(&[&a, &b, &c], &key, StatusCode::CREATED, A_SECOND).await;
    let ids = join_all((0..5).map(|_| c.new_id_for(&key))).await;
    let other = a.new_id_for(KEY).await;
    let held = b
        .client
        .get(b.url(&format!("/v1/poll?id={}&since=0", ids[0])))
        .send();
    let held = tokio::spawn(held);
    within(WAIT, "the poll held on b", async || {
        (b.metric("callhome_waiting{transport=\"poll\"}").await == 1).then_some(())
    })
    .await;
    admin(&a, Method::DELETE, "/v1/admin/apps/leaving", None).await;
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::GONE);
    for id in &ids {
        assert_eq!(
            redis.cmd(&["EXISTS", &format!("ch:i:{id}")]).await,
            "0",
            "{id}"
        );
    }
    assert_eq!(redis.cmd(&["HGET", "ch:ab:leaving", "n"]).await, "0");
    // Another app's ids are untouched.
    assert_eq!(redis.cmd(&["EXISTS", &format!("ch:i:{other}")]).await, "1");
    everywhere(&[&a, &b, &c], &key, StatusCode::UNAUTHORIZED, A_SECOND).await;
    let r = b.create(&key, None).await;
    assert_eq!(error_code(r).await, "unauthorized");
}

/// `max_ids` counts every app's ids, registered ones included, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ids_counts_the_ids_of_apps_registered_at_runtime() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |c| {
        c.admin.key = Some(callhome::auth::AppKey::new(ADMIN.into()));
        c.limits.max_ids = 5;
        c.admin.default_max_ids = 5;
        c.apps[0].max_ids = Some(5);
    })
    .await;
    let (key, _) = register(&a, "late").await;
    everywhere(&[&b], &key, StatusCode::CREATED, A_SECOND).await;
    // One id of "late" so far; three of app one and one more of "late" fill the five.
    for node in [&a, &b, &a] {
        let r = node.create(KEY, None).await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }
    assert_eq!(create_status(&b, &key).await, StatusCode::CREATED);
    for (node, key) in [(&a, KEY), (&b, key.as_str())] {
        let r = node.create(key, None).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(r).await, "too_many_ids");
    }
}

/// An app's own rates (set through the admin API) hold across nodes, as the server's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_own_rates_hold_across_nodes() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |c| {
        c.admin.key = Some(callhome::auth::AppKey::new(ADMIN.into()));
    })
    .await;
    let made = admin(
        &a,
        Method::POST,
        "/v1/admin/apps",
        Some(json!({
            "name": "slow",
            "origins": ["https://slow.example"],
            "limits": {
                "create_per_app": {"per_second": 1, "burst": 2},
                "notify_per_app": {"per_second": 1, "burst": 3},
            },
        })),
    )
    .await;
    let key = made["key"].as_str().unwrap().to_owned();
    // Known on b once a status of a missing id answers 404 (not 401).
    within(A_SECOND, "the app on b", async || {
        let r = b
            .client
            .get(b.url("/v1/ids/abcdefghijklmnopqrstuv"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        (r.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let first = a.create(&key, None).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let id = first.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The create bucket had 2: one left, on either node; then refused.
    assert_eq!(create_status(&b, &key).await, StatusCode::CREATED);
    let r = a.create(&key, None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "rate_limited");
    // Notifies: 3 across both nodes, then refused; app one keeps the server's (none here).
    let statuses = join_all(
        [&a, &b, &a, &b].map(|n| async { n.notify(&key, &id, "x").await.status().as_u16() }),
    )
    .await;
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200, 200, 200, 429], "{statuses:?}");
    let one = a.new_id().await;
    for _ in 0..5 {
        assert_eq!(b.notify(KEY, &one, "y").await.status(), StatusCode::OK);
    }
}

/// A self-registration token for `origin`, handed out by `node`.
async fn challenge_token(node: &TestServer, origin: &str) -> String {
    let r = node
        .client
        .post(node.url("/v1/apps/challenges"))
        .json(&json!({ "origin": origin }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Self-registration behind a load balancer: the token is handed out by one node and the
/// registration reaches another; an invite made on one node is used on a second and is
/// spent for the third; the new app's key works on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_registration_works_whichever_node_each_call_reaches() {
    use crate::support::{Answer, PageServer};
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |c| {
        c.admin.key = Some(callhome::auth::AppKey::new(ADMIN.into()));
        c.registration.policy = callhome::registration::Policy::Invite;
        c.registration.allow_private_origins = true;
    })
    .await;
    let invite = admin(&a, Method::POST, "/v1/admin/invites", Some(json!({}))).await;
    let code = invite["code"].as_str().unwrap().to_owned();
    let page = PageServer::spawn();
    let origin = page.origin();
    let token = challenge_token(&a, &origin).await;
    page.serve(
        &format!("/.well-known/callhome-challenge/{token}"),
        Answer::Text(token.clone()),
    );
    // The invite reaches b within a second of being made on a.
    let register = |node: &TestServer, name: &str| {
        node.client
            .post(node.url("/v1/apps"))
            .json(&json!({"name": name, "origins": [origin], "tokens": [token], "invite": code}))
            .send()
    };
    let (made, _) = within(A_SECOND, "the registration on b", async || {
        let r = register(&b, "balanced").await.unwrap();
        (r.status() == StatusCode::CREATED).then_some(r)
    })
    .await;
    let made: Value = made.json().await.unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    everywhere(&[&a, &b, &c], &key, StatusCode::CREATED, A_SECOND).await;
    // The invite is spent on every node: c refuses it for another app.
    within(A_SECOND, "the spent invite on c", async || {
        let token = challenge_token(&c, "https://other.example").await;
        let r = c
            .client
            .post(c.url("/v1/apps"))
            .json(&json!({
                "name": "other",
                "origins": ["https://other.example"],
                "tokens": [token],
                "invite": code,
            }))
            .send()
            .await
            .unwrap();
        (r.status() == StatusCode::FORBIDDEN && error_code(r).await == "invite_used").then_some(())
    })
    .await;
    let listed = admin(&c, Method::GET, "/v1/admin/invites", None).await;
    assert_eq!(listed["invites"][0]["used"], 1, "{listed}");
}
