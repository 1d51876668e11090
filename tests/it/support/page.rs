//! A web app's page on its own origin (`http://localhost:<port>`, while CallHome is on
//! 127.0.0.1), so the browser tests cross origins exactly as real deployments do.
//!
//! `/?iframe=<url>&iframe=<url>...` loads callhome.js from the first iframe URL's origin and
//! connects to each; `window.received[i]` collects `{info, seq}` for subscription `i` and
//! `window.errors[i]` its errors, `window.statuses[i]` the newest status (how the
//! subscription shares its connection).
//!
//! Any other path answers what the test put there with [`PageServer::serve`] (`404` until
//! then): the challenge of a self-registration, served the ways a real app might get it
//! right or wrong. [`PageServer::requests`] counts what was asked for besides the page.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// What a path of the page server answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `200` with this body.
    Text(String),
    /// This status, no body.
    Status(u16),
    /// `302` to this location (a path, or another server's URL).
    Redirect(String),
    /// [`Answer::Text`] after this long.
    Slow(Duration, String),
    /// `200` with a chunked body that never ends.
    Endless,
}

#[derive(Debug, Default)]
struct Paths {
    answers: Mutex<HashMap<String, Answer>>,
    requests: AtomicUsize,
}

async fn answer(State(paths): State<Arc<Paths>>, uri: Uri) -> Response {
    paths.requests.fetch_add(1, Ordering::SeqCst);
    let answer = paths.answers.lock().unwrap().get(uri.path()).cloned();
    match answer {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(Answer::Text(text)) => text.into_response(),
        Some(Answer::Status(status)) => StatusCode::from_u16(status).unwrap().into_response(),
        Some(Answer::Redirect(to)) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        Some(Answer::Slow(wait, text)) => {
            tokio::time::sleep(wait).await;
            text.into_response()
        }
        Some(Answer::Endless) => {
            let chunks = futures_util::stream::repeat_with(|| {
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(&[b'x'; 512]))
            });
            axum::body::Body::from_stream(chunks).into_response()
        }
    }
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>CallHome test page</title></head>
<body>
<script>
window.received = {};
window.errors = {};
window.statuses = {};
var frames = new URLSearchParams(location.search).getAll("iframe");
var script = document.createElement("script");
script.src = new URL(frames[0]).origin + "/callhome.js";
script.onload = function () {
  window.subs = frames.map(function (url, i) {
    window.received[i] = [];
    window.errors[i] = [];
    return CallHome.connect(url, function (info, seq) {
      window.received[i].push({ info: info, seq: seq });
    }, {
      onError: function (reason) { window.errors[i].push(reason); },
      onStatus: function (status) { window.statuses[i] = status; },
    });
  });
  window.ready = true;
};
document.head.appendChild(script);
</script>
</body></html>"#;

/// The test page's server; stops on drop.
pub struct PageServer {
    addr: SocketAddr,
    host: String,
    paths: Arc<Paths>,
    shutdown: CancellationToken,
}

impl PageServer {
    /// Serves the page on 127.0.0.1 port 0, as `localhost`. Call inside a tokio runtime.
    pub fn spawn() -> Self {
        Self::spawn_on("127.0.0.1", "localhost")
    }

    /// Serves the page on `ip` port 0, with origin `http://<host>:<port>` (`host` must name
    /// `ip`). Pages on another host are another site: browsers give them workers, locks and
    /// channels of their own.
    pub fn spawn_on(ip: &str, host: &str) -> Self {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let shutdown = CancellationToken::new();
        let paths = Arc::new(Paths::default());
        let app = Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .fallback(answer)
            .with_state(Arc::clone(&paths));
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tokio::spawn(async move { serve.await });
        Self {
            addr,
            host: host.to_owned(),
            paths,
            shutdown,
        }
    }

    /// Answers `answer` at `path` from now on.
    pub fn serve(&self, path: &str, answer: Answer) {
        self.paths
            .answers
            .lock()
            .unwrap()
            .insert(path.to_owned(), answer);
    }

    /// How many requests for other paths than the page arrived.
    pub fn requests(&self) -> usize {
        self.paths.requests.load(Ordering::SeqCst)
    }

    /// The page server's address, for origins by IP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's origin, by name rather than address so it differs from CallHome's.
    pub fn origin(&self) -> String {
        format!("http://{}:{}", self.host, self.addr.port())
    }

    /// The page's URL subscribing to each of `iframe_urls`.
    pub fn url(&self, iframe_urls: &[&str]) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for iframe in iframe_urls {
            query.append_pair("iframe", iframe);
        }
        format!("{}/?{}", self.origin(), query.finish())
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
