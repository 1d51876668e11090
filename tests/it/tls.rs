//! TLS served by the daemon: HTTP/1.1 (the lean path) and HTTP/2 as ALPN agrees, HTTP/2
//! streams counted as waiting clients and against `max_connections` as on the plain port,
//! certificates reloaded when their files change (and kept when the new ones are bad),
//! clients that are not TLS or never finish a handshake closed, and the real binary on a
//! config with `[tls]`.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, Version};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::events::{EventReader, data};
use crate::support::tls::{Alpn, Certs, presented, write_by_rename};
use crate::support::{Daemon, KEY, TestServer, error_code, metric_from};

/// Bound on anything this module waits for: generous, the machine is shared.
const PATIENCE: Duration = Duration::from_secs(20);

const EVENTS: &str = "callhome_waiting{transport=\"events\"}";

fn certs(s: &TestServer) -> &Certs {
    s.tls.as_ref().expect("a TLS test server")
}

/// Sends one HTTP/1.1 request on `stream` and reads its answer (a `Content-Length` body).
async fn exchange(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed mid-answer: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("a content-length")
                    .parse()
                    .unwrap();
                if body.len() >= len {
                    return text.into_owned();
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer")
}

#[tokio::test]
async fn create_notify_and_poll_over_https_with_http1_and_http2() {
    let s = TestServer::spawn_tls_with(|_| {});
    for (alpn, version) in [
        (Alpn::Http1, Version::HTTP_11),
        (Alpn::Http2, Version::HTTP_2),
        (Alpn::Both, Version::HTTP_2),
    ] {
        let client = certs(&s).client(alpn);
        let created = client
            .post(s.url("/v1/ids"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED, "{alpn:?}");
        assert_eq!(created.version(), version, "{alpn:?}");
        let body: Value = created.json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_owned();
        // Browsers are told the https URL of the daemon itself.
        let iframe_url = body["iframe_url"].as_str().unwrap();
        assert!(
            iframe_url.starts_with(&format!("https://{}/", s.addr)),
            "{iframe_url}"
        );

        let poll = client.get(s.url(&format!("/v1/poll?id={id}&since=0")));
        let held = tokio::spawn(async move { poll.send().await.unwrap() });
        s.wait_for_waiters(&id, 1).await;
        let notified = client
            .post(s.url(&format!("/v1/ids/{id}/notify")))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"info": "over tls"}))
            .send()
            .await
            .unwrap();
        assert_eq!(notified.status(), StatusCode::OK, "{alpn:?}");
        let answered = held.await.unwrap();
        assert_eq!(answered.version(), version, "{alpn:?}");
        assert_eq!(answered.status(), StatusCode::OK);
        assert_eq!(
            answered.text().await.unwrap(),
            r#"{"seq":1,"info":"over tls"}"#
        );
    }
}

/// Every HTTP/2 stream that waits is a waiting client, and takes a place in
/// `max_connections` of its own, exactly as on the plain port (tests/it/http2.rs).
#[tokio::test]
async fn http2_streams_over_tls_count_as_waiting_clients_and_against_max_connections() {
    // The HTTP/2 connection itself and three streams.
    let s = TestServer::spawn_tls_with(|c| c.limits.max_connections = 4);
    let h2 = certs(&s).client(Alpn::Http2);
    let created = h2
        .post(s.url("/v1/ids"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut streams = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while streams.len() < 3 {
        let r = h2
            .get(s.url(&format!("/v1/events?id={id}&since=0")))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            // The create's stream may still hold its place for a moment after its answer.
            assert!(
                Instant::now() < deadline,
                "no place for stream {}",
                streams.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert_eq!((r.status(), r.version()), (StatusCode::OK, Version::HTTP_2));
        let mut reader = EventReader::new(r);
        assert_eq!(
            reader.next_event().await.unwrap(),
            ["event: ready", "data: {}"]
        );
        streams.push(reader);
    }
    // A fourth stream on the same connection is refused as a fourth connection would be.
    let refused = h2.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.version(), Version::HTTP_2);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(error_code(refused).await, "too_many_connections");

    // A stream that ends gives its place back; the two left are waiting clients.
    drop(streams.pop());
    let deadline = Instant::now() + PATIENCE;
    while h2.get(s.url("/healthz")).send().await.unwrap().status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Asked on the same connection: a connection of its own would be over the limit while
    // the one a previous question used is still closing.
    let deadline = Instant::now() + PATIENCE;
    while metric_from(&h2, &s.url("/metrics"), EVENTS).await != 2 {
        assert!(
            Instant::now() < deadline,
            "two streams never showed as waiting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = h2
        .get(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(status.json::<Value>().await.unwrap()["waiting"], 2);

    let notified = h2
        .post(s.url(&format!("/v1/ids/{id}/notify")))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"info": "news"}))
        .send()
        .await
        .unwrap();
    assert_eq!(notified.status(), StatusCode::OK);
    for reader in &mut streams {
        let event = reader.next_event().await.unwrap();
        assert_eq!(data(&event)["info"], "news", "{event:?}");
    }
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_and_open_ones_go_on() {
    let mut s = TestServer::spawn_tls_with(|c| c.tls.reload_interval = Duration::from_secs(1));
    let first = certs(&s).served.clone();
    assert_eq!(presented(certs(&s), s.addr).await, first);
    let healthz = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut open = certs(&s).connect(s.addr, Alpn::Http1).await;
    assert!(
        exchange(&mut open, healthz)
            .await
            .starts_with("HTTP/1.1 200 ")
    );

    let certs_mut = s.tls.as_mut().unwrap();
    let renewed = certs_mut.issue("callhome renewed");
    certs_mut.install(&renewed);
    let deadline = Instant::now() + PATIENCE;
    while presented(certs(&s), s.addr).await != renewed.der {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(renewed.der, first);
    // The connection opened on the old certificate is still served.
    assert!(
        exchange(&mut open, healthz)
            .await
            .starts_with("HTTP/1.1 200 ")
    );
    assert_eq!(
        s.metric("callhome_tls_reloads_total{outcome=\"loaded\"}")
            .await,
        1
    );

    // A renewal gone wrong keeps the certificate in use, and the server serving. (The
    // renewal itself may have been seen half done, its new key with the old certificate.)
    let failed = "callhome_tls_reloads_total{outcome=\"failed\"}";
    let failed_before = s.metric(failed).await;
    write_by_rename(
        &certs(&s).cert_path,
        b"-----BEGIN CERTIFICATE-----\ntruncated",
    );
    s.wait_for_metric(failed, failed_before + 1).await;
    assert_eq!(presented(certs(&s), s.addr).await, renewed.der);
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        exchange(&mut open, healthz)
            .await
            .starts_with("HTTP/1.1 200 ")
    );
}

#[tokio::test]
async fn plaintext_http_to_the_tls_port_is_closed_and_the_server_goes_on() {
    let s = TestServer::spawn_tls_with(|_| {});
    let mut plain = TcpStream::connect(s.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    // At most a TLS alert: never an HTTP answer in the clear.
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    assert_eq!(
        s.metric("callhome_tls_handshake_failures_total{reason=\"error\"}")
            .await,
        1
    );
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed_after_header_timeout() {
    let s = TestServer::spawn_tls_with(|c| c.limits.header_timeout = Duration::from_millis(500));
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    // The first bytes of a ClientHello record, and then nothing.
    silent.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(PATIENCE, silent.read_to_end(&mut sink))
        .await
        .expect("a stalled handshake is closed")
        .ok();
    assert_eq!(
        s.metric("callhome_tls_handshake_failures_total{reason=\"timeout\"}")
            .await,
        1
    );
    // Its place came back: only the metrics connections are open (one at a time).
    s.wait_for_metric("callhome_connections_open", 1).await;
}

#[tokio::test]
async fn a_tls_connection_over_max_connections_is_closed_before_its_handshake() {
    let s = TestServer::spawn_tls_with(|c| c.limits.max_connections = 1);
    let mut held = certs(&s).connect(s.addr, Alpn::Http1).await;
    let healthz = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert!(
        exchange(&mut held, healthz)
            .await
            .starts_with("HTTP/1.1 200 ")
    );
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let config = std::sync::Arc::new(certs(&s).client_config(Alpn::Http1));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = tokio::time::timeout(
        PATIENCE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("the server closes the connection");
    assert!(refused.is_err(), "no handshake over the limit");
    // Once the place is free (the server may take a moment to see the close: until then
    // each try is refused too), the refusals show.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    let metrics = loop {
        let client = certs(&s).client(Alpn::Http1);
        if let Ok(r) = client.get(s.url("/metrics")).send().await {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("callhome_connections_total{outcome=\"refused\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 1, "{metrics}");
}

#[test]
fn the_real_binary_serves_tls_from_its_config_file() {
    let certs = Certs::new("callhome binary");
    let config = certs.dir.join("callhome.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_path = {:?}\nkey_path = {:?}\nreload_interval = \"10s\"\n",
            certs.cert_path, certs.key_path
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("https://{}/.well-known/callhome", daemon.addr);
        let r = certs.client(Alpn::Both).get(&url).send().await.unwrap();
        assert_eq!((r.status(), r.version()), (StatusCode::OK, Version::HTTP_2));
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["public_url"],
            format!("https://{}", daemon.addr),
            "{body}"
        );
        assert_eq!(presented(&certs, daemon.addr).await, certs.served);
    });
}
