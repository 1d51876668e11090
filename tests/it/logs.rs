//! JSON logs of the real binary: one object per line, the request id of every request on the
//! lines it caused (and in its `X-Request-Id`), a trusted proxy's id kept and anyone else's
//! replaced, and neither ids nor keys in any line.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use crate::metrics::temp_dir;
use crate::support::{Daemon, Output, client};

const KEY: &str = "logs-test-key-0123456789abcdef";

/// A config whose only trusted proxy is 127.0.0.1.
fn config(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("callhome.toml");
    std::fs::write(
        &path,
        format!(
            "trusted_proxies = [\"127.0.0.1\"]\n\n\
             [[apps]]\nname = \"logs\"\nkey = \"{KEY}\"\norigins = [\"http://localhost:3000\"]\n"
        ),
    )
    .unwrap();
    path
}

/// A client whose connections come from 127.0.0.2: loopback, but not the trusted proxy.
fn untrusted_client() -> reqwest::Client {
    crate::support::client_builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Sends `request` and returns the response with its `X-Request-Id`.
async fn send(request: RequestBuilder) -> (Response, String) {
    let r = request.send().await.unwrap();
    let id = r
        .headers()
        .get("x-request-id")
        .expect("every response has an X-Request-Id")
        .to_str()
        .unwrap()
        .to_owned();
    (r, id)
}

/// The spans of a JSON log line (`with_span_list`): objects with a `name` and their fields.
fn spans(line: &Value) -> Vec<Value> {
    line["spans"].as_array().cloned().unwrap_or_default()
}

/// The request id of a JSON log line: its top-level `request_id`.
fn request_id(line: &Value) -> Option<String> {
    line["request_id"].as_str().map(str::to_owned)
}

/// True for lines logged inside the router's request span (tower-http's request lines).
fn is_routed(line: &Value) -> bool {
    spans(line)
        .iter()
        .any(|s| s["name"] == "request" && s.get("route").is_some())
}

fn parsed(output: &Output) -> Vec<Value> {
    output
        .lines()
        .iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_ids_and_no_secrets() {
    let dir = temp_dir("logs");
    let (mut daemon, output) =
        Daemon::start_recorded(&config(&dir), &["--log-format", "json", "--log", "debug"]);
    let base = format!("http://{}", daemon.addr);
    let (trusted, untrusted) = (client(), untrusted_client());

    let (r, create_rid) = send(trusted.post(format!("{base}/v1/ids")).bearer_auth(KEY)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = format!("{base}/v1/ids/{id}");

    // Our own id, when the peer sends none.
    let (r, own_rid) = send(trusted.get(&status).bearer_auth(KEY)).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The trusted proxy's id, kept.
    let (r, proxy_rid) = send(
        trusted
            .get(&status)
            .bearer_auth(KEY)
            .header("x-request-id", "proxy-request-0001"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(proxy_rid, "proxy-request-0001");
    // Anyone else's, replaced.
    let (r, replaced_rid) = send(
        untrusted
            .get(&status)
            .bearer_auth(KEY)
            .header("x-request-id", "spoofed-request-0001"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(replaced_rid, "spoofed-request-0001");
    // A request the lean path hands to hyper (it does not serve `Expect` itself), on a
    // connection of its own: hyper keeps the connection it was handed.
    let (r, hyper_rid) = send(
        client()
            .get(&status)
            .bearer_auth(KEY)
            .header("expect", "100-continue")
            .header("x-request-id", "proxy-request-0002"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hyper_rid, "proxy-request-0002");

    // The in-place paths: a notify and a poll answered at once.
    let (r, notify_rid) = send(
        trusted
            .post(format!("{status}/notify"))
            .bearer_auth(KEY)
            .json(&json!({ "info": "hello" })),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (r, poll_rid) = send(trusted.get(format!("{base}/v1/poll?id={id}&since=0"))).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "info": "hello"})
    );
    let rids = [&create_rid, &own_rid, &proxy_rid, &replaced_rid];
    let rids = [rids.as_slice(), &[&hyper_rid, &notify_rid, &poll_rid]].concat();
    let unique = rids.iter().collect::<BTreeSet<_>>().len();
    assert_eq!(unique, rids.len(), "request ids are unique: {rids:?}");

    // Every routed request's lines, in its span; without the lean path the notify and the
    // poll are routed too.
    let mut routed_rids = vec![&create_rid, &own_rid, &proxy_rid, &replaced_rid, &hyper_rid];
    if !crate::support::lean_path() {
        routed_rids.extend([&notify_rid, &poll_rid]);
    }
    for rid in routed_rids.iter().copied() {
        output
            .wait_for(&format!("finishing request {rid}"), |l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| {
                    request_id(&v).as_ref() == Some(rid)
                        && v["message"] == "finished processing request"
                })
            })
            .await;
    }
    app_lines_carry(
        &output,
        &[("id created", &create_rid), ("notified", &notify_rid)],
    )
    .await;
    let exited_cleanly = tokio::task::block_in_place(|| daemon.terminate());
    assert!(exited_cleanly);
    output
        .wait_for("\"stopped\"", |l| l.contains(r#""message":"stopped""#))
        .await;

    let routed_rids: Vec<String> = routed_rids.into_iter().cloned().collect();
    check_lines(
        &output,
        &routed_rids,
        &[id.as_str(), KEY, "spoofed-request-0001"],
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The app's own lines, written inside the request that caused them (on the lean path for a
/// notify), each carry that request's id.
async fn app_lines_carry(output: &Output, lines: &[(&str, &String)]) {
    for &(message, rid) in lines {
        output
            .wait_for(&format!("{message:?} with {rid}"), |l| {
                serde_json::from_str::<Value>(l)
                    .is_ok_and(|v| v["message"] == message && request_id(&v).as_ref() == Some(rid))
            })
            .await;
    }
}

/// Every line is a JSON object; every line logged inside the router's span carries a request
/// id, and those ids are exactly `routed_rids` (each with its start and finish lines); none of
/// `secrets` appears anywhere.
fn check_lines(output: &Output, routed_rids: &[String], secrets: &[&str]) {
    let lines = parsed(output);
    let routed: Vec<&Value> = lines.iter().filter(|l| is_routed(l)).collect();
    for line in &routed {
        assert!(
            request_id(line).is_some(),
            "a request line without a request id: {line}"
        );
    }
    let logged: BTreeSet<String> = routed.iter().filter_map(|l| request_id(l)).collect();
    let expected: BTreeSet<String> = routed_rids.iter().cloned().collect();
    assert_eq!(logged, expected, "the routed requests' ids, and no others");
    for rid in &expected {
        for message in ["started processing request", "finished processing request"] {
            let found = routed
                .iter()
                .any(|l| request_id(l).as_ref() == Some(rid) && l["message"] == message);
            assert!(found, "no {message:?} line for {rid}");
        }
    }
    let text = output.lines().join("\n");
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} was logged:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusting_every_address_as_a_proxy_is_warned_about_at_start() {
    let dir = temp_dir("logs-trust-all");
    let path = dir.join("callhome.toml");
    std::fs::write(
        &path,
        format!(
            "trusted_proxies = [\"0.0.0.0/0\", \"10.0.0.0/8\", \"::/0\"]\n\n\
             [[apps]]\nname = \"logs\"\nkey = \"{KEY}\"\norigins = [\"http://localhost:3000\"]\n"
        ),
    )
    .unwrap();
    let (daemon, output) = Daemon::start_recorded(&path, &[]);
    for entry in ["trusted_proxies[0]", "trusted_proxies[2]"] {
        output
            .wait_for(&format!("warning about {entry}"), |l| {
                l.contains("WARN") && l.contains(entry) && l.contains("X-Forwarded-For")
            })
            .await;
    }
    assert!(
        !output
            .lines()
            .iter()
            .any(|l| l.contains("trusted_proxies[1]")),
        "a range that is not everything is not warned about"
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
