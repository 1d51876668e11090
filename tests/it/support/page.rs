//! A web app's page on its own origin (`http://localhost:<port>`, while CallHome is on
//! 127.0.0.1), so the browser tests cross origins exactly as real deployments do.
//!
//! `/?iframe=<url>&iframe=<url>...` loads callhome.js from the first iframe URL's origin and
//! connects to each; `window.received[i]` collects `{info, seq}` for subscription `i` and
//! `window.errors[i]` its errors, `window.statuses[i]` the newest status (how the
//! subscription shares its connection).

use std::net::SocketAddr;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

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
        let app = Router::new().route("/", get(|| async { Html(PAGE) }));
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tokio::spawn(async move { serve.await });
        Self {
            addr,
            host: host.to_owned(),
            shutdown,
        }
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
