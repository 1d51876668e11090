//! Tenants cannot hurt each other: an app that lists `*` cannot bind ids to another app's
//! origins.

use callhome::auth::AppKey;
use callhome::config::{AppConfig, Config};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{KEY, KEY_TWO, ORIGIN, ORIGIN_TWO_A, TestServer, error_code};

/// App "any": lists `*`, so any origin is one of its own, except those another app lists.
const KEY_ANY: &str = "test-key-any-0123456789";

/// Adds app "any" to the test apps.
fn with_wildcard_app(config: &mut Config) {
    config.apps.push(AppConfig {
        name: "any".into(),
        key: Some(AppKey::new(KEY_ANY.into())),
        origins: vec!["*".into()],
        ..AppConfig::default()
    });
}

#[tokio::test]
async fn a_wildcard_app_cannot_bind_another_apps_origin() {
    let s = TestServer::spawn_with(with_wildcard_app);
    let taken = ["x1nA5Qb0sJ-eR7tLw2YkVg", "Lr4TzP0c-Wm8aQy1Hn6dXe"];
    for (other, origin) in [(taken[0], ORIGIN), (taken[1], ORIGIN_TWO_A)] {
        let r = s
            .create(KEY_ANY, Some(json!({"id": other, "origin": origin})))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(error_code(r).await, "origin_not_allowed", "{origin}");

        let r = s
            .client
            .get(s.url(&format!("/idcreate?id={other}&origin={origin}")))
            .bearer_auth(KEY_ANY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(error_code(r).await, "origin_not_allowed", "{origin}");

        let r = s
            .client
            .post(s.url("/idcreate"))
            .bearer_auth(KEY_ANY)
            .form(&[("id", other), ("origin", origin)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(error_code(r).await, "origin_not_allowed", "{origin}");
    }
    // Nothing was made: the owners can still create those ids.
    for (other, key) in [(taken[0], KEY), (taken[1], KEY_TWO)] {
        let r = s.create(key, Some(json!({ "id": other }))).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{other}");
    }

    // Any origin no app lists is still the wildcard app's to bind.
    let r = s
        .create(KEY_ANY, Some(json!({"origin": "https://anywhere.example"})))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .client
        .get(s.url("/idcreate?origin=https://anywhere.example"))
        .bearer_auth(KEY_ANY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_iframe_serves_a_wildcard_apps_id_to_no_other_apps_origin() {
    let s = TestServer::spawn_with(with_wildcard_app);
    // Bound to `*` (the app's only origin), so it serves any origin but those of other apps.
    let id = s.new_id_for(KEY_ANY).await;
    let iframe = async |origin: &str| {
        s.client
            .get(s.url(&format!("/v1/iframe?id={id}&origin={origin}")))
            .send()
            .await
            .unwrap()
    };
    for origin in [ORIGIN, ORIGIN_TWO_A] {
        let r = iframe(origin).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{origin}");
        assert_eq!(error_code(r).await, "origin_mismatch", "{origin}");
    }
    assert_eq!(
        iframe("https://anywhere.example").await.status(),
        StatusCode::OK
    );
}
