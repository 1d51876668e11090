//! Self-registration (`/v1/apps`): an app proves each origin by serving the token CallHome
//! gave it, and gets its key. The app's pages are a `PageServer` on 127.0.0.1, so the test
//! servers allow private origins, except where that refusal is the point.

use std::time::Duration;

use callhome::auth::AppKey;
use callhome::config::{Config, RateLimit, SlowRate};
use callhome::registration::Policy;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::support::browser::Browser;
use crate::support::engine::memory_engine_feature;
use crate::support::{Answer, KEY, Kept, ORIGIN, PageServer, TestServer, client, error_code};

const ADMIN: &str = "admin-key-0123456789-abcdefghij";

/// A server under `policy` that fetches challenges from loopback, with no practical rate
/// limit, changed by `adjust`.
fn server(policy: Policy, adjust: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::spawn_with(|c| {
        c.admin.key = Some(AppKey::new(ADMIN.into()));
        c.registration.policy = policy;
        c.registration.allow_private_origins = true;
        c.registration.per_ip = SlowRate {
            per_minute: 10_000,
            burst: 10_000,
        };
        adjust(c);
    })
}

async fn post(s: &TestServer, path: &str, body: Value) -> Response {
    s.client.post(s.url(path)).json(&body).send().await.unwrap()
}

async fn admin(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Response {
    let mut request = s.client.request(method, s.url(path)).bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

fn challenge_path(token: &str) -> String {
    format!("/.well-known/callhome-challenge/{token}")
}

/// A token for `origin`.
async fn challenge(s: &TestServer, origin: &str) -> String {
    let r = post(s, "/v1/apps/challenges", json!({ "origin": origin })).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// A token for `page`'s origin, served there as it should be.
async fn proven(s: &TestServer, page: &PageServer) -> String {
    let token = challenge(s, &page.origin()).await;
    page.serve(&challenge_path(&token), Answer::Text(format!("{token}\n")));
    token
}

/// `POST /v1/apps` for `name` on `page`'s origin with `token`, and `extra` fields.
async fn register(s: &TestServer, name: &str, origin: &str, token: &str, extra: Value) -> Response {
    let mut body = json!({"name": name, "origins": [origin], "tokens": [token]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    post(s, "/v1/apps", body).await
}

/// Registers `name` on `page`'s origin; returns the answer.
async fn registered(s: &TestServer, page: &PageServer, name: &str, extra: Value) -> Value {
    let token = proven(s, page).await;
    let r = register(s, name, &page.origin(), &token, extra).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn refused(r: Response, status: u16, code: &str, what: &str) {
    assert_eq!(r.status().as_u16(), status, "{what}");
    assert_eq!(error_code(r).await, code, "{what}");
}

#[tokio::test]
async fn a_self_registered_app_proves_its_origin_and_works_like_any_other() {
    let s = server(Policy::Open, |c| c.registration.max_ids = 2);
    let page = PageServer::spawn();
    let r = post(&s, "/v1/apps/challenges", json!({"origin": page.origin()})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let issued: Value = r.json().await.unwrap();
    let token = issued["token"].as_str().unwrap();
    assert_eq!(issued["origin"], page.origin());
    assert_eq!(
        issued["url"],
        format!("{}{}", page.origin(), challenge_path(token))
    );
    assert_eq!(issued["expires_in"], 900);
    page.serve(&challenge_path(token), Answer::Text(token.to_owned()));

    let r = register(&s, "selfmade", &page.origin(), token, json!({})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let made: Value = r.json().await.unwrap();
    let key = made["key"].as_str().unwrap();
    assert!(key.starts_with("chk_"), "{made}");
    assert_eq!(made["name"], "selfmade");
    assert_eq!(made["origins"], json!([page.origin()]));
    assert_eq!(made["max_ids"], 2);
    assert_eq!(page.requests(), 1, "one fetch");

    // The key creates ids bound to the proven origin; they are notified and polled.
    let r = s.create(key, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["origin"], page.origin());
    let id = created["id"].as_str().unwrap();
    assert_eq!(s.notify(key, id, "hello").await.status(), StatusCode::OK);
    let polled: Value = s.poll(id, 0).await.json().await.unwrap();
    assert_eq!(polled["info"], "hello");
    // Within the policy's id quota.
    assert_eq!(s.create(key, None).await.status(), StatusCode::CREATED);
    refused(
        s.create(key, None).await,
        429,
        "app_quota_exceeded",
        "quota",
    )
    .await;

    // The operator sees it as registered, never with its key.
    let r = admin(&s, reqwest::Method::GET, "/v1/admin/apps/selfmade", None).await;
    let text = r.text().await.unwrap();
    assert!(!text.contains(key), "{text}");
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["source"], "registered");
    // While it has the origin, nobody else registers it; once it is gone, a new token
    // must be proven: a token is used once.
    let again = register(&s, "again", &page.origin(), token, json!({})).await;
    refused(again, 409, "origin_taken", "the origin is the app's").await;
    let r = admin(&s, reqwest::Method::DELETE, "/v1/admin/apps/selfmade", None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let again = register(&s, "again", &page.origin(), token, json!({})).await;
    refused(again, 400, "challenge_unknown", "a used token").await;
}

#[tokio::test]
async fn bad_names_origins_and_tokens_are_refused_before_anything_is_fetched() {
    let s = server(Policy::Open, |c| c.registration.max_origins = 2);
    let page = PageServer::spawn();
    let origin = page.origin();
    let token = challenge(&s, &origin).await;
    let other = challenge(&s, "https://other.example").await;
    let cases = [
        (
            json!({"name": "Bad Name", "origins": [origin], "tokens": [token]}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "", "origins": [origin], "tokens": [token]}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "-dash", "origins": [origin], "tokens": [token]}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "none", "origins": [], "tokens": []}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "wild", "origins": ["*"], "tokens": [token]}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "twice", "origins": [origin, origin], "tokens": [token]}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "many", "origins": [origin, "https://a.example", "https://b.example"], "tokens": [token]}),
            400,
            "invalid_app",
        ),
        (
            json!({"name": "path", "origins": ["https://x.example/path"], "tokens": [token]}),
            400,
            "invalid_origin",
        ),
        (
            json!({"name": "one", "origins": [origin], "tokens": [token]}),
            409,
            "app_exists",
        ),
        (
            json!({"name": "notokens", "origins": [origin]}),
            400,
            "invalid_json",
        ),
        (
            json!({"name": "extra", "origins": [origin], "tokens": [token], "max_ids": 5}),
            400,
            "invalid_json",
        ),
        (
            json!({"name": "unknown", "origins": [origin], "tokens": ["nope"]}),
            400,
            "challenge_unknown",
        ),
        (
            json!({"name": "elsewhere", "origins": [origin], "tokens": [other]}),
            400,
            "challenge_unknown",
        ),
        (
            json!({"name": "notoken", "origins": [origin], "tokens": []}),
            400,
            "challenge_unknown",
        ),
    ];
    for (body, status, code) in cases {
        refused(
            post(&s, "/v1/apps", body.clone()).await,
            status,
            code,
            &body.to_string(),
        )
        .await;
    }
    assert_eq!(page.requests(), 0, "nothing was fetched");
}

#[tokio::test]
async fn a_challenge_is_handed_out_for_a_real_origin_only() {
    let s = server(Policy::Open, |_| {});
    for (body, code) in [
        (json!({"origin": "*"}), "invalid_app"),
        (json!({"origin": "ftp://x.example"}), "invalid_origin"),
        (
            json!({"origin": "https://x.example", "name": "x"}),
            "invalid_json",
        ),
    ] {
        let r = post(&s, "/v1/apps/challenges", body.clone()).await;
        refused(r, 400, code, &body.to_string()).await;
    }
}

#[tokio::test]
async fn an_origin_is_bound_to_one_app_whoever_proved_or_configured_it() {
    let s = server(Policy::Open, |_| {});
    // App one's, from the config.
    let r = post(&s, "/v1/apps/challenges", json!({"origin": ORIGIN})).await;
    refused(r, 409, "origin_taken", "a config app's origin").await;

    // Two registrations prove the same origin: the first to register has it.
    let page = PageServer::spawn();
    let first = proven(&s, &page).await;
    let second = proven(&s, &page).await;
    let r = register(&s, "first", &page.origin(), &first, json!({})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = register(&s, "second", &page.origin(), &second, json!({})).await;
    refused(r, 409, "origin_taken", "proven, but taken meanwhile").await;
    let r = post(&s, "/v1/apps/challenges", json!({"origin": page.origin()})).await;
    refused(r, 409, "origin_taken", "a registered app's origin").await;

    // Nor can the admin API give it to another app.
    let r = admin(
        &s,
        reqwest::Method::POST,
        "/v1/admin/apps",
        Some(json!({"name": "byadmin", "origins": [page.origin()]})),
    )
    .await;
    refused(r, 409, "origin_taken", "admin create").await;
    let r = admin(
        &s,
        reqwest::Method::POST,
        "/v1/admin/apps",
        Some(json!({"name": "byadmin", "origins": ["https://admin.example"]})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = admin(
        &s,
        reqwest::Method::PATCH,
        "/v1/admin/apps/byadmin",
        Some(json!({"origins": ["https://admin.example", ORIGIN]})),
    )
    .await;
    refused(r, 409, "origin_taken", "admin update").await;
}

#[tokio::test]
async fn each_way_a_challenge_fails_has_its_code_and_a_fixed_page_passes() {
    let s = server(Policy::Open, |c| {
        c.registration.challenge_timeout = Duration::from_millis(300);
        c.registration.max_pending_per_ip = 50;
    });
    let page = PageServer::spawn();
    let origin = page.origin();
    let elsewhere = PageServer::spawn();
    let big = "x".repeat(1025);
    let cases: [(Option<Answer>, &str); 8] = [
        (None, "challenge_missing"),
        (Some(Answer::Status(500)), "challenge_missing"),
        (
            Some(Answer::Text("not the token".into())),
            "challenge_mismatch",
        ),
        (Some(Answer::Text(big)), "challenge_too_large"),
        // No Content-Length, and more than anybody reads: the fetch stops at the limit.
        (Some(Answer::Endless), "challenge_too_large"),
        (
            Some(Answer::Redirect(format!(
                "{}/.well-known/callhome-challenge/x",
                elsewhere.origin()
            ))),
            "challenge_redirect",
        ),
        (
            Some(Answer::Redirect("/hop-1".into())),
            "challenge_redirect",
        ),
        (
            Some(Answer::Slow(Duration::from_secs(3), "late".into())),
            "challenge_timeout",
        ),
    ];
    // Three hops within the origin: one more than followed.
    page.serve("/hop-1", Answer::Redirect("/hop-2".into()));
    page.serve("/hop-2", Answer::Redirect("/hop-3".into()));
    page.serve("/hop-3", Answer::Text("x".into()));
    let mut last = String::new();
    for (answer, code) in cases {
        let token = challenge(&s, &origin).await;
        if let Some(answer) = answer {
            page.serve(&challenge_path(&token), answer);
        }
        let r = register(&s, "failing", &origin, &token, json!({})).await;
        refused(r, 422, code, code).await;
        last = token;
    }
    assert_eq!(
        elsewhere.requests(),
        0,
        "a redirect to another origin is not followed"
    );

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nowhere = format!("http://localhost:{port}");
    let token = challenge(&s, &nowhere).await;
    let r = register(&s, "failing", &nowhere, &token, json!({})).await;
    refused(r, 422, "challenge_unreachable", "nothing listens").await;

    // A failed attempt keeps its token: the app fixes its page (here with a redirect within
    // its origin, which is followed) and tries again.
    page.serve(&challenge_path(&last), Answer::Redirect("/moved".into()));
    page.serve("/moved", Answer::Text(last.clone()));
    let r = register(&s, "fixed", &origin, &last, json!({})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn private_and_loopback_addresses_are_refused_unless_the_operator_allows_them() {
    let s = server(Policy::Open, |c| {
        c.registration.allow_private_origins = false;
    });
    let page = PageServer::spawn();
    let port = page.addr().port();
    let by_ip = format!("http://127.0.0.1:{port}");
    let by_v6 = format!("http://[::1]:{port}");
    let mapped = format!("http://[::ffff:127.0.0.1]:{port}");
    for origin in [by_ip, by_v6, mapped, page.origin()] {
        let token = challenge(&s, &origin).await;
        page.serve(&challenge_path(&token), Answer::Text(token.clone()));
        let r = register(&s, "private", &origin, &token, json!({})).await;
        refused(r, 422, "challenge_private_address", &origin).await;
    }
    assert_eq!(page.requests(), 0, "nothing was fetched");
}

#[tokio::test]
async fn under_the_invite_policy_each_code_is_used_once_and_a_failed_try_gives_it_back() {
    let s = server(Policy::Invite, |_| {});
    let invite = |body: Value| admin(&s, reqwest::Method::POST, "/v1/admin/invites", Some(body));
    let r = invite(json!({})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let made: Value = r.json().await.unwrap();
    let code = made["code"].as_str().unwrap().to_owned();
    assert!(code.starts_with("chi_"), "{made}");
    assert_eq!(
        (made["uses"].clone(), made["used"].clone()),
        (json!(1), json!(0))
    );

    let page = PageServer::spawn();
    let origin = page.origin();
    let token = proven(&s, &page).await;
    refused(
        register(&s, "invited", &origin, &token, json!({})).await,
        403,
        "invite_required",
        "none",
    )
    .await;
    let bogus = json!({"invite": "chi_not-a-code"});
    refused(
        register(&s, "invited", &origin, &token, bogus).await,
        403,
        "invite_invalid",
        "bogus",
    )
    .await;
    // A failed challenge gives the use back.
    let failing = challenge(&s, &origin).await;
    let with_code = json!({ "invite": code });
    let r = register(&s, "invited", &origin, &failing, with_code.clone()).await;
    refused(r, 422, "challenge_missing", "no page").await;
    let r = register(&s, "invited", &origin, &token, with_code.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let other = PageServer::spawn();
    let token = proven(&s, &other).await;
    let r = register(&s, "reused", &other.origin(), &token, with_code).await;
    refused(r, 403, "invite_used", "reused").await;

    // An expired invite, and a removed one.
    let short: Value = invite(json!({"expires_in": "1s"}))
        .await
        .json()
        .await
        .unwrap();
    let removed: Value = invite(json!({"uses": 3})).await.json().await.unwrap();
    let r = admin(
        &s,
        reqwest::Method::DELETE,
        &format!("/v1/admin/invites/{}", removed["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for gone in [&short, &removed] {
        let r = register(
            &s,
            "late",
            &other.origin(),
            &token,
            json!({"invite": gone["code"]}),
        )
        .await;
        refused(r, 403, "invite_invalid", "expired or removed").await;
    }

    // The listing shows ids and counts, never a code.
    let r = admin(&s, reqwest::Method::GET, "/v1/admin/invites", None).await;
    let text = r.text().await.unwrap();
    assert!(!text.contains("chi_"), "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let invites = list["invites"].as_array().unwrap();
    assert_eq!(invites.len(), 2, "{list}");
    assert_eq!(
        (invites[0]["used"].clone(), invites[1]["expired"].clone()),
        (json!(1), json!(true))
    );
    let r = admin(&s, reqwest::Method::DELETE, "/v1/admin/invites/nope", None).await;
    refused(r, 404, "unknown_invite", "unknown id").await;
    for bad in [
        json!({"uses": 0}),
        json!({"expires_in": "400d"}),
        json!({"code": "mine"}),
    ] {
        let r = invite(bad.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = s
        .client
        .post(s.url("/v1/admin/invites"))
        .send()
        .await
        .unwrap();
    refused(r, 401, "unauthorized", "invites need the admin key").await;
}

#[tokio::test]
async fn when_closed_nobody_registers() {
    let s = TestServer::spawn();
    for (path, body) in [
        (
            "/v1/apps/challenges",
            json!({"origin": "https://x.example"}),
        ),
        (
            "/v1/apps",
            json!({"name": "x", "origins": ["https://x.example"], "tokens": []}),
        ),
    ] {
        refused(post(&s, path, body).await, 403, "registration_closed", path).await;
    }
}

#[tokio::test]
async fn challenges_and_registrations_are_limited_per_client_ip() {
    let s = server(Policy::Open, |c| {
        c.registration.per_ip = SlowRate {
            per_minute: 1,
            burst: 3,
        };
        c.registration.max_pending_per_ip = 2;
    });
    challenge(&s, "https://a.example").await;
    challenge(&s, "https://b.example").await;
    let r = post(
        &s,
        "/v1/apps/challenges",
        json!({"origin": "https://c.example"}),
    )
    .await;
    assert_eq!(r.headers()["retry-after"], "60");
    refused(r, 429, "too_many_challenges", "two wait already").await;
    for path in ["/v1/apps/challenges", "/v1/apps"] {
        let r = post(&s, path, json!({})).await;
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        refused(r, 429, "rate_limited", path).await;
    }
    assert_eq!(
        s.metric(r#"callhome_rate_limited_total{limit="registration_per_ip"}"#)
            .await,
        2
    );
}

#[tokio::test]
async fn a_self_registered_app_gets_the_policys_quotas_and_the_operator_may_change_them() {
    let s = server(Policy::Open, |c| {
        c.registration.max_ids = 1;
        c.registration.info_max_bytes = 8;
        c.registration.notify_per_app = RateLimit {
            per_second: 1,
            burst: 2,
        };
    });
    let page = PageServer::spawn();
    let made = registered(&s, &page, "limited", json!({})).await;
    assert_eq!(
        made["limits"],
        json!({
            "create_per_app": {"per_second": 10, "burst": 100},
            "notify_per_app": {"per_second": 1, "burst": 2},
            "info_max_bytes": 8,
        })
    );
    let key = made["key"].as_str().unwrap();
    let id = s.new_id_for(key).await;
    refused(
        s.create(key, None).await,
        429,
        "app_quota_exceeded",
        "max_ids",
    )
    .await;
    refused(
        s.notify(key, &id, "123456789").await,
        413,
        "info_too_large",
        "info",
    )
    .await;
    assert_eq!(s.notify(key, &id, "1").await.status(), StatusCode::OK);
    refused(
        s.notify(key, &id, "2").await,
        429,
        "rate_limited",
        "notify rate",
    )
    .await;
    // Config apps keep the server's limits.
    let config_id = s.new_id().await;
    assert_eq!(
        s.notify(KEY, &config_id, &"x".repeat(100)).await.status(),
        StatusCode::OK
    );

    let r = admin(
        &s,
        reqwest::Method::PATCH,
        "/v1/admin/apps/limited",
        Some(json!({"max_ids": 2, "limits": {"info_max_bytes": 16, "notify_per_app": {"per_second": 100, "burst": 100}}})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let changed: Value = r.json().await.unwrap();
    assert_eq!(changed["limits"]["info_max_bytes"], 16);
    assert_eq!(
        s.notify(key, &id, "123456789").await.status(),
        StatusCode::OK
    );
    assert_eq!(s.create(key, None).await.status(), StatusCode::CREATED);
    for bad in [
        json!({"limits": {"info_max_bytes": 5000}}),
        json!({"limits": {"notify_per_app": {"per_second": 1, "burst": 0}}}),
    ] {
        let r = admin(
            &s,
            reqwest::Method::PATCH,
            "/v1/admin/apps/limited",
            Some(bad.clone()),
        )
        .await;
        refused(r, 400, "invalid_app", &bad.to_string()).await;
    }
}

#[tokio::test]
async fn discovery_says_how_to_register_and_what_a_new_app_gets() {
    let s = server(Policy::Invite, |c| c.registration.max_ids = 7);
    let body: Value = s
        .client
        .get(s.url("/.well-known/callhome"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let base = s.url("");
    let base = base.trim_end_matches('/');
    assert_eq!(
        body["registration"],
        json!({
            "policy": "invite",
            "apps_url": format!("{base}/v1/apps"),
            "challenges_url": format!("{base}/v1/apps/challenges"),
            "challenge_path": "/.well-known/callhome-challenge/",
            "token_ttl_seconds": 900,
            "max_origins": 8,
            "new_app": {
                "max_ids": 7,
                "create_per_app": {"per_second": 10, "burst": 100},
                "notify_per_app": {"per_second": 100, "burst": 1000},
                "info_max_bytes": 1024,
            },
        })
    );
}

/// The real binary: a self-registered app and the invites (with what was used of them)
/// survive a `kill -9` right after the answer, and a graceful restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_registered_apps_and_invites_survive_kill_9_and_a_graceful_restart() {
    if !memory_engine_feature("snapshots") {
        return;
    }
    let kept = Kept::new(
        "registration",
        &format!(
            "[admin]\nkey = \"{ADMIN}\"\n[registration]\npolicy = \"invite\"\nallow_private_origins = true\n"
        ),
    );
    let http = client();
    let page = PageServer::spawn();
    let key = std::sync::Mutex::new(String::new());
    kept.then_kill_9(|base| {
        let (http, key) = (&http, &key);
        async move {
        let post = |path: &str, body: Value, admin: bool| {
            let mut request = http.post(format!("{base}{path}")).json(&body);
            if admin {
                request = request.bearer_auth(ADMIN);
            }
            async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let used = post("/v1/admin/invites", json!({}), true).await;
        post("/v1/admin/invites", json!({"uses": 2}), true).await;
        let issued = post("/v1/apps/challenges", json!({"origin": page.origin()}), false).await;
        let token = issued["token"].as_str().unwrap();
        page.serve(&challenge_path(token), Answer::Text(token.to_owned()));
        let body = json!({"name": "kept", "origins": [page.origin()], "tokens": [token], "invite": used["code"]});
        let made = post("/v1/apps", body, false).await;
        *key.lock().unwrap() = made["key"].as_str().expect("registered").to_owned();
        }
    })
    .await;
    let key = key.into_inner().unwrap();
    kept.check_restarts(|base, round| {
        let (http, key) = (&http, &key);
        async move {
            let r = http
                .post(format!("{base}/v1/ids"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED, "{round}");
            let list: Value = http
                .get(format!("{base}/v1/admin/invites"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let used: Vec<(u64, u64)> = list["invites"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| (i["used"].as_u64().unwrap(), i["uses"].as_u64().unwrap()))
                .collect();
            assert_eq!(used, [(1, 1), (0, 2)], "{round}");
        }
    })
    .await;
}

/// In a real Chromium: the page of an app that registered itself, served from the origin
/// it proved, gets its notifies through callhome.js.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_registered_apps_page_receives_its_notifies_in_a_browser() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let s = server(Policy::Open, |_| {});
    let page = PageServer::spawn();
    let made = registered(&s, &page, "browserapp", json!({})).await;
    let key = made["key"].as_str().unwrap();
    let r = s.create(key, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = r.json::<Value>().await.unwrap()["iframe_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = crate::browser::id_of(&url);
    crate::browser::open(&b, &page, &[&url]).await;
    let wait = || async {
        for _ in 0..500 {
            if s.id_status(key, &id).await["waiting"] == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the page never waited");
    };
    wait().await;
    assert_eq!(
        s.notify(key, &id, "from a self-registered app")
            .await
            .status(),
        StatusCode::OK
    );
    b.wait_for("the value", "return window.received[0].length === 1")
        .await;
    assert_eq!(
        b.received(0).await,
        [("from a self-registered app".to_owned(), 1)]
    );
}
