//! The `OpenAPI` document (docs/openapi.json, served at `/v1/openapi.json`) held to the code
//! and to docs/api.md, so that none of the three drifts from the others:
//! - every route the source declares is in the document, and every path of the document is
//!   routed, with exactly the methods the document gives (asked of a real server);
//! - the error codes the code can answer are exactly the document's `ErrorCode`, and
//!   exactly those of docs/api.md's tables;
//! - every endpoint docs/api.md describes is in the document.
//!
//! What each answer looks like is held to the document by schemathesis in `.ci/run`
//! (scripts/schemathesis.sh).

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{KEY, TestServer};

const ADMIN: &str = "admin-key-for-openapi-0123456789";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn document() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("docs/openapi.json")).unwrap())
        .expect("docs/openapi.json is JSON")
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    out
}

/// The string literals that follow `marker` in `text` (the first `"..."` after each).
fn literals_after(text: &str, marker: &str) -> Vec<String> {
    text.match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = &text[at + marker.len()..];
            let start = rest.find('"')? + 1;
            let end = start + rest[start..].find('"')?;
            (rest[..start - 1].trim().is_empty()).then(|| rest[start..end].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn the_served_document_is_the_one_in_the_repository() {
    let s = TestServer::spawn();
    let r = s
        .client
        .get(s.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.json::<Value>().await.unwrap(), document());
    assert_eq!(document()["openapi"], "3.1.0");
}

#[test]
fn every_route_in_the_source_is_documented_and_every_documented_path_routed() {
    let doc = document();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut routed = BTreeSet::new();
    for (_, text) in sources(&root().join("src")) {
        routed.extend(literals_after(&text, ".route("));
        // Routes declared through a constant (`BATCH_PATH`, `POLL_PATH`, ...).
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("pub const ")
                && let Some((name, value)) = rest.split_once(": &str = ")
                && name.ends_with("_PATH")
            {
                routed.insert(value.trim_end_matches(';').trim_matches('"').to_owned());
            }
        }
    }
    routed.retain(|p| p.starts_with('/'));
    assert_eq!(
        routed, documented,
        "routes in src/ against paths in docs/openapi.json"
    );
}

/// Each documented path and method is served (not `not_found`, not `405`), and every other
/// method of those paths is refused with `405 method_not_allowed`.
#[tokio::test]
async fn every_documented_method_is_served_and_no_other() {
    let s = TestServer::spawn_with(|c| {
        c.admin.key = Some(callhome::auth::AppKey::new(ADMIN.into()));
        c.registration.policy = callhome::registration::Policy::Open;
        c.limits.poll_timeout = std::time::Duration::from_secs(1);
    });
    let doc = document();
    let all = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "abcdefghijklmnopqrstuv")
            .replace("{name}", "nobody")
            .replace("{key_id}", "nokey");
        let key = if path.starts_with("/v1/admin/") {
            ADMIN
        } else {
            KEY
        };
        for method in &all {
            if path == "/v1/events" && *method == Method::GET {
                // A stream; its route is seen answering an unknown id instead.
                let r = s
                    .client
                    .get(s.url("/v1/events?id=abcdefghijklmnopqrstuv"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "GET {path}");
                continue;
            }
            let r = s
                .client
                .request(method.clone(), s.url(&concrete))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            let documented = item.get(method.as_str().to_lowercase()).is_some();
            let code = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            if documented {
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED
                        && code.as_deref() != Some("not_found"),
                    "{method} {path} is documented but answered {status} {body}"
                );
            } else {
                assert_eq!(
                    (status, code.as_deref()),
                    (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
                    "{method} {path} is not documented but answered {body}"
                );
            }
        }
    }
}

/// The codes the code answers with: every `=> "code"` of an error's `code()`.
fn codes_in_the_code() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for file in ["src/error.rs", "src/challenge.rs"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let body = &text[text.find("pub fn code(&self)").expect("a code()")..];
        let body = &body[..body.find("\n    }\n").unwrap()];
        codes.extend(literals_after(body, "=>"));
    }
    codes
}

/// The prose reference: docs/api.md, and docs/operators.md for the admin API it points to.
fn prose() -> String {
    ["docs/api.md", "docs/operators.md"]
        .map(|f| std::fs::read_to_string(root().join(f)).unwrap())
        .join("\n")
}

/// The codes of the prose's error tables: the second cell of rows whose first is a status,
/// and the first cell of the rows of tables headed `| Code |`.
fn codes_in_api_md() -> BTreeSet<String> {
    let text = prose();
    let mut codes = BTreeSet::new();
    let mut in_code_table = false;
    for line in text.lines() {
        if !line.starts_with('|') {
            in_code_table = false;
        }
        if line.starts_with("| Code |") {
            in_code_table = true;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let status_row =
            cells.len() > 3 && cells[1].len() == 3 && cells[1].bytes().all(|b| b.is_ascii_digit());
        let code_row = in_code_table && cells.len() > 2 && cells[1].starts_with('`');
        let cell = if status_row {
            cells[2]
        } else if code_row {
            cells[1]
        } else {
            continue;
        };
        {
            for part in cell.split('`').skip(1).step_by(2) {
                if part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !part.is_empty() {
                    codes.insert(part.to_owned());
                }
            }
        }
    }
    codes
}

#[test]
fn the_error_codes_of_the_code_the_document_and_api_md_are_the_same() {
    let doc = document();
    let documented: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let code = codes_in_the_code();
    assert_eq!(code, documented, "codes in src/ against docs/openapi.json");
    let prose = codes_in_api_md();
    let missing: Vec<&String> = documented.difference(&prose).collect();
    assert!(
        missing.is_empty(),
        "codes docs/api.md never lists: {missing:?}"
    );
    let unknown: Vec<&String> = prose.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "codes in docs/api.md that nothing answers: {unknown:?}"
    );
}

#[test]
fn every_endpoint_of_api_md_is_in_the_document() {
    let doc = document();
    let paths = doc["paths"].as_object().unwrap();
    let text = std::fs::read_to_string(root().join("docs/api.md")).unwrap();
    for line in text.lines().filter(|l| l.starts_with("### ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(method), Some(path)) = (words.get(1), words.get(2)) else {
            continue;
        };
        if !["GET", "POST", "PATCH", "DELETE"].contains(method) {
            continue;
        }
        let path = path.trim_end_matches(':').split('?').next().unwrap();
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{line}: {path} is not in docs/openapi.json"));
        assert!(
            item.get(method.to_lowercase()).is_some(),
            "{line}: {method} is not documented for {path}"
        );
    }
    let prose = prose();
    for path in paths.keys() {
        assert!(
            prose.contains(path.as_str()),
            "neither docs/api.md nor docs/operators.md mentions {path}"
        );
    }
}

/// The field names an answer may have and must have, by the document's schema `name`.
fn fields_of(doc: &Value, schema: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = match schema["$ref"].as_str() {
        Some(at) => &doc["components"]["schemas"][at.rsplit('/').next().unwrap()],
        None => schema,
    };
    let may = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let must = schema["required"]
        .as_array()
        .map(|r| r.iter().map(|f| f.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    (may, must)
}

/// Holds `answer`'s fields to `schema`: none beyond its properties, every required one.
fn assert_fields(doc: &Value, schema: &Value, answer: &Value, what: &str) {
    let (may, must) = fields_of(doc, schema);
    let has: BTreeSet<String> = answer.as_object().unwrap().keys().cloned().collect();
    assert!(has.is_subset(&may), "{what}: {has:?} not all in {may:?}");
    assert!(must.is_subset(&has), "{what}: {must:?} not all in {has:?}");
}

/// The answers to notify (with and without `?wait=`), a batch (each result) and status,
/// with every field they can have, hold to the document: schemathesis sees only answers
/// without waiters, so the fields that appear with deliveries are checked here.
#[tokio::test]
async fn notify_batch_and_status_answers_have_exactly_the_documented_fields() {
    let doc = document();
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let held = s.spawn_poll(&id, 0);
    s.wait_for_waiters(&id, 1).await;
    let notified: Value = s
        .client
        .post(s.url(&format!("/v1/ids/{id}/notify?wait=5s")))
        .bearer_auth(KEY)
        .body("")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(notified["delivered"], 1, "{notified}");
    held.await.unwrap();
    let notify = &doc["paths"]["/v1/ids/{id}/notify"]["post"];
    let schema = &notify["responses"]["200"]["content"]["application/json"]["schema"];
    assert_fields(&doc, schema, &notified, "notify ?wait=");
    let plain: Value = s.notify(KEY, &id, "x").await.json().await.unwrap();
    assert_fields(&doc, schema, &plain, "notify");

    let batch: Value = s
        .client
        .post(s.url("/v1/notify?wait=1s"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"notifications": [
            {"id": id, "info": "y"}, {"id": "no-such-id-000000", "info": "y"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch_schema = &doc["components"]["schemas"]["BatchAnswer"];
    assert_fields(&doc, batch_schema, &batch, "batch");
    let item = &batch_schema["properties"]["results"]["items"];
    for result in batch["results"].as_array().unwrap() {
        assert_fields(&doc, item, result, "batch result");
    }

    // In cluster mode the delivery reaches the status within a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let status = s.id_status(KEY, &id).await;
        if status["delivered_seq"].is_u64() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let status_schema = &doc["paths"]["/v1/ids/{id}"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    assert_fields(&doc, status_schema, &status, "status");
}
