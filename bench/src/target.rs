//! Where the load goes and what it says: the loopback-only base URL, the server's URL
//! templates, the requests built from them, and how the server's answers are read.
//!
//! The loopback check happens here, when `--base` and `--publish-base` are parsed, so nothing
//! downstream can aim traffic off this machine. Everything that differs between CallHome and
//! Nchan lives here; the clients and publishers only move bytes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::cli::Common;
use crate::http::{self, Response};

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Callhome,
    Nchan,
}

impl Kind {
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Callhome => "callhome",
            Self::Nchan => "nchan",
        }
    }
}

/// How a subscriber waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Long poll, re-issued after every answer.
    Poll,
    /// Server-sent events.
    Sse,
}

impl Transport {
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::Sse => "sse",
        }
    }
}

/// Why `--base`, `--publish-base` or a template was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?}: only http:// URLs are supported")]
    Scheme(String),
    #[error("{0:?}: {1}")]
    Malformed(String, &'static str),
    #[error(
        "refusing target host {0:?}: this tool sends load only to loopback \
         (127.0.0.0/8, [::1] or localhost)"
    )]
    NotLoopback(String),
    #[error("{0} {1:?} must be a path starting with /")]
    Template(&'static str, String),
    #[error("no --base given")]
    NoBase,
    /// One of the URLs of a flag was refused: which flag, and why.
    #[error("{0} {1}")]
    Flag(&'static str, Box<TargetError>),
}

/// The server's address, as parsed from `--base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub addr: SocketAddr,
    /// The `Host` header: the URL's authority as given.
    pub host: String,
    /// A path prefix, without a trailing `/` (often empty).
    pub prefix: String,
}

impl Base {
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| TargetError::Scheme(url.to_owned()))?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        let malformed = |why| TargetError::Malformed(url.to_owned(), why);
        if authority.contains('@') {
            return Err(malformed("user info is not supported"));
        }
        if path.contains(['?', '#']) {
            return Err(malformed("a query or fragment is not supported"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| malformed("unclosed ["))?;
            if after.is_empty() {
                (host, 80)
            } else {
                let port = after
                    .strip_prefix(':')
                    .ok_or_else(|| malformed("bad port"))?;
                (host, port.parse().map_err(|_| malformed("bad port"))?)
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, port.parse().map_err(|_| malformed("bad port"))?),
                None => (authority, 80),
            }
        };
        // No name resolution: "localhost" is the one name, and it means 127.0.0.1.
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse::<IpAddr>()
                .map_err(|_| TargetError::NotLoopback(host.to_owned()))?
        };
        if !ip.is_loopback() {
            return Err(TargetError::NotLoopback(host.to_owned()));
        }
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            host: authority.to_owned(),
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// What a subscriber sends back so the server answers only with news.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// CallHome: the last `seq` seen.
    pub since: u64,
    /// Nchan long poll: the last answer's `Etag` and `Last-Modified`.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Nchan SSE: the last event's id, for a reconnect.
    pub last_event_id: Option<String>,
}

/// How an answer to a backend request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Create: the id was already there (409), as good as created.
    Exists,
    Failed,
}

/// An answer to a backend request, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    /// CallHome notify: the `waiting` count, polls held on the id when the notify landed.
    pub waiting: Option<u64>,
}

/// What a subscriber received, read from a poll answer or an event's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// CallHome's `seq`; Nchan has none.
    pub seq: Option<u64>,
    /// `None`: CallHome's `{"seq": 0, "info": null}`, a cursor reset rather than news.
    pub info: Option<String>,
}

/// One server under test: its address, kind, URL templates and key.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: Kind,
    pub base: Base,
    key: String,
    sub_template: Option<String>,
    pub_template: Option<String>,
}

impl Target {
    /// The server at the first `--base`, once every `--base` and `--publish-base` has passed
    /// the loopback check.
    pub fn new(common: &Common) -> Result<Self, TargetError> {
        let mut targets = Targets::new(common)?;
        Ok(targets.subscribe.swap_remove(0))
    }

    /// The same server kind, key and templates at another base.
    fn at(&self, base: Base) -> Self {
        Self {
            base,
            ..self.clone()
        }
    }

    /// CallHome ids must be created before use; Nchan channels spring up on first use.
    pub fn needs_ids(&self) -> bool {
        self.kind == Kind::Callhome
    }

    fn path(&self, template: &str, id: &str, since: u64) -> String {
        let path = template
            .replace("{id}", id)
            .replace("{since}", &since.to_string());
        format!("{}{path}", self.base.prefix)
    }

    /// A subscriber's request: a long poll or the opening of an event stream, on `id`, or
    /// on every id of a CallHome `watch` list (`ID.SEQ,...`) when there is one.
    pub fn subscribe(
        &self,
        transport: Transport,
        id: &str,
        watch: Option<&str>,
        cursor: &Cursor,
    ) -> Vec<u8> {
        let path = if let Some(watch) = watch.filter(|_| self.kind == Kind::Callhome) {
            let endpoint = match transport {
                Transport::Poll => "/v1/poll",
                Transport::Sse => "/v1/events",
            };
            format!("{}{endpoint}?watch={watch}", self.base.prefix)
        } else {
            let template = self
                .sub_template
                .as_deref()
                .unwrap_or(match (self.kind, transport) {
                    (Kind::Callhome, Transport::Poll) => "/v1/poll?id={id}&since={since}",
                    (Kind::Callhome, Transport::Sse) => "/v1/events?id={id}&since={since}",
                    (Kind::Nchan, _) => "/sub/{id}",
                });
            self.path(template, id, cursor.since)
        };
        let mut headers = Vec::with_capacity(2);
        match transport {
            Transport::Poll => {
                if let Some(etag) = &cursor.etag {
                    headers.push(("If-None-Match", etag.as_str()));
                }
                if let Some(modified) = &cursor.last_modified {
                    headers.push(("If-Modified-Since", modified.as_str()));
                }
            }
            Transport::Sse => {
                headers.push(("Accept", "text/event-stream"));
                if let Some(id) = &cursor.last_event_id {
                    headers.push(("Last-Event-ID", id.as_str()));
                }
            }
        }
        http::request("GET", &path, &self.base.host, &headers, b"")
    }

    /// A publish of `info` to `id`.
    pub fn publish(&self, id: &str, info: &str) -> Vec<u8> {
        let template = self.pub_template.as_deref().unwrap_or(match self.kind {
            Kind::Callhome => "/v1/ids/{id}/notify",
            Kind::Nchan => "/pub/{id}",
        });
        let path = self.path(template, id, 0);
        let bearer = format!("Bearer {}", self.key);
        let mut headers = vec![("Content-Type", "text/plain")];
        if self.kind == Kind::Callhome {
            headers.push(("Authorization", bearer.as_str()));
        }
        http::request("POST", &path, &self.base.host, &headers, info.as_bytes())
    }

    /// CallHome: one batch notify (`POST /v1/notify`) of each `(id, info)` of `items`.
    pub fn publish_batch(&self, items: &[(String, String)]) -> Vec<u8> {
        let path = format!("{}/v1/notify", self.base.prefix);
        let bearer = format!("Bearer {}", self.key);
        let headers = [
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
        ];
        let notifications: Vec<serde_json::Value> = items
            .iter()
            .map(|(id, info)| serde_json::json!({ "id": id, "info": info }))
            .collect();
        let body = serde_json::json!({ "notifications": notifications }).to_string();
        http::request("POST", &path, &self.base.host, &headers, body.as_bytes())
    }

    /// CallHome: creating `id` (`None` for Nchan).
    pub fn create(&self, id: &str) -> Option<Vec<u8>> {
        self.needs_ids().then(|| {
            let path = format!("{}/v1/ids", self.base.prefix);
            let bearer = format!("Bearer {}", self.key);
            let headers = [
                ("Authorization", bearer.as_str()),
                ("Content-Type", "application/json"),
            ];
            let body = serde_json::json!({ "id": id }).to_string();
            http::request("POST", &path, &self.base.host, &headers, body.as_bytes())
        })
    }

    /// CallHome: deleting `id` (`None` for Nchan).
    pub fn delete(&self, id: &str) -> Option<Vec<u8>> {
        self.needs_ids().then(|| {
            let path = format!("{}/v1/ids/{id}", self.base.prefix);
            let bearer = format!("Bearer {}", self.key);
            http::request(
                "DELETE",
                &path,
                &self.base.host,
                &[("Authorization", &bearer)],
                b"",
            )
        })
    }

    /// The news in a poll answer's body or an event's data.
    pub fn value(&self, body: &[u8]) -> Option<Value> {
        match self.kind {
            Kind::Callhome => {
                #[derive(Deserialize)]
                struct Json {
                    seq: u64,
                    info: Option<String>,
                }
                let json: Json = serde_json::from_slice(body).ok()?;
                Some(Value {
                    seq: Some(json.seq),
                    info: json.info,
                })
            }
            Kind::Nchan => Some(Value {
                seq: None,
                info: Some(String::from_utf8_lossy(body).into_owned()),
            }),
        }
    }
}

/// Every server a run talks to, each one checked to be on loopback.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `--base`, in the order given: where the waiting clients go (split over them by
    /// worker process, see `fleet::shares`).
    pub subscribe: Vec<Target>,
    /// `--publish-base`, or the `--base` list when none is given: where ids are created,
    /// published to and deleted, job n on the (n mod len)-th.
    pub backends: Vec<Target>,
}

impl Targets {
    pub fn new(common: &Common) -> Result<Self, TargetError> {
        for (flag, template) in [
            ("--sub-template", &common.sub_template),
            ("--pub-template", &common.pub_template),
        ] {
            if let Some(t) = template.as_deref().filter(|t| !t.starts_with('/')) {
                return Err(TargetError::Template(flag, t.to_owned()));
            }
        }
        let parse = |flag: &'static str, urls: &[String]| {
            urls.iter()
                .map(|url| Base::parse(url).map_err(|e| TargetError::Flag(flag, Box::new(e))))
                .collect::<Result<Vec<_>, _>>()
        };
        let bases = parse("--base", &common.base)?;
        let publish_bases = parse("--publish-base", &common.publish_base)?;
        let Some(first) = bases.first() else {
            return Err(TargetError::NoBase);
        };
        let template = Target {
            kind: common.target,
            base: first.clone(),
            key: common.key.clone(),
            sub_template: common.sub_template.clone(),
            pub_template: common.pub_template.clone(),
        };
        let subscribe: Vec<Target> = bases.into_iter().map(|b| template.at(b)).collect();
        let backends = if publish_bases.is_empty() {
            subscribe.clone()
        } else {
            publish_bases.into_iter().map(|b| template.at(b)).collect()
        };
        Ok(Self {
            subscribe,
            backends,
        })
    }

    /// The server backend job `n` goes to: round-robin over the backends.
    pub fn backend(&self, n: usize) -> &Target {
        &self.backends[n % self.backends.len()]
    }

    /// Every distinct server address, waiters' first (for the preflight check).
    pub fn addrs(&self) -> Vec<(SocketAddr, &str)> {
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        for t in self.subscribe.iter().chain(&self.backends) {
            if !seen.iter().any(|(addr, _)| *addr == t.base.addr) {
                seen.push((t.base.addr, t.base.host.as_str()));
            }
        }
        seen
    }
}

/// Create: 201, or 409 when the id is already there.
pub fn classify_create(response: &Response) -> Answer {
    let outcome = match response.head.status {
        201 => Outcome::Ok,
        409 => Outcome::Exists,
        _ => Outcome::Failed,
    };
    Answer {
        outcome,
        waiting: None,
    }
}

/// Publish: any 2xx (CallHome 200 with `waiting`; Nchan 201 or 202).
/// A batch notify: 200 with no failed notify in it.
pub fn classify_batch(response: &Response) -> Answer {
    #[derive(Deserialize)]
    struct Batch {
        failed: u64,
    }
    let whole = (200..300).contains(&response.head.status)
        && serde_json::from_slice::<Batch>(&response.body).is_ok_and(|b| b.failed == 0);
    Answer {
        outcome: if whole { Outcome::Ok } else { Outcome::Failed },
        waiting: None,
    }
}

pub fn classify_publish(response: &Response) -> Answer {
    #[derive(Deserialize)]
    struct Notified {
        waiting: u64,
    }
    if !(200..300).contains(&response.head.status) {
        return Answer {
            outcome: Outcome::Failed,
            waiting: None,
        };
    }
    Answer {
        outcome: Outcome::Ok,
        waiting: serde_json::from_slice::<Notified>(&response.body)
            .ok()
            .map(|n| n.waiting),
    }
}

/// Delete: 204, or 404 when it is already gone.
pub fn classify_delete(response: &Response) -> Answer {
    let outcome = match response.head.status {
        204 | 404 => Outcome::Ok,
        _ => Outcome::Failed,
    };
    Answer {
        outcome,
        waiting: None,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn target(flags: &[&str]) -> Result<Target, TargetError> {
        let mut command_line = vec!["callhome-bench"];
        command_line.extend_from_slice(flags);
        command_line.extend_from_slice(&["idle", "--clients", "1"]);
        Target::new(
            &Cli::try_parse_from(command_line)
                .expect("valid flags")
                .common,
        )
    }

    #[test]
    fn loopback_bases_parse() {
        let base = Base::parse("http://127.0.0.1:18080").expect("loopback");
        assert_eq!(base.addr, "127.0.0.1:18080".parse().expect("literal"));
        assert_eq!(
            (base.host.as_str(), base.prefix.as_str()),
            ("127.0.0.1:18080", "")
        );
        let base = Base::parse("http://localhost/push/").expect("loopback");
        assert_eq!(base.addr, "127.0.0.1:80".parse().expect("literal"));
        assert_eq!(base.prefix, "/push");
        let base = Base::parse("http://[::1]:9000").expect("loopback");
        assert_eq!(base.addr, "[::1]:9000".parse().expect("literal"));
        assert!(Base::parse("http://127.200.3.4:1").is_ok());
    }

    #[test]
    fn anything_but_loopback_is_refused() {
        for url in [
            "http://10.0.0.1:80",
            "http://192.168.1.1",
            "http://8.8.8.8:53",
            "http://example.com",
            "http://127.0.0.1.nip.io",
            "http://[::ffff:127.0.0.1]:80",
            "http://0.0.0.0:8080",
        ] {
            assert!(
                matches!(Base::parse(url), Err(TargetError::NotLoopback(_))),
                "{url}"
            );
        }
        assert!(matches!(
            Base::parse("https://127.0.0.1"),
            Err(TargetError::Scheme(_))
        ));
        assert!(Base::parse("http://user@127.0.0.1").is_err());
        assert!(Base::parse("http://127.0.0.1:x").is_err());
    }

    #[test]
    fn callhome_requests_follow_the_api() {
        let t = target(&["--base", "http://127.0.0.1:18080", "--key", "k"]).expect("valid");
        let cursor = Cursor {
            since: 3,
            ..Cursor::default()
        };
        let poll =
            String::from_utf8(t.subscribe(Transport::Poll, "bid", None, &cursor)).expect("utf8");
        assert!(
            poll.starts_with("GET /v1/poll?id=bid&since=3 HTTP/1.1\r\n"),
            "{poll}"
        );
        let sse =
            String::from_utf8(t.subscribe(Transport::Sse, "bid", None, &cursor)).expect("utf8");
        assert!(
            sse.starts_with("GET /v1/events?id=bid&since=3 HTTP/1.1\r\n"),
            "{sse}"
        );
        assert!(sse.contains("Accept: text/event-stream\r\n"));
        for (transport, endpoint) in [(Transport::Poll, "poll"), (Transport::Sse, "events")] {
            let many = t.subscribe(transport, "bid", Some("b1.0,b2.0"), &cursor);
            let many = String::from_utf8(many).expect("utf8");
            assert!(
                many.starts_with(&format!("GET /v1/{endpoint}?watch=b1.0,b2.0 HTTP/1.1\r\n")),
                "{many}"
            );
        }
        let publish = String::from_utf8(t.publish("bid", "i")).expect("utf8");
        assert!(publish.starts_with("POST /v1/ids/bid/notify HTTP/1.1\r\n"));
        assert!(publish.contains("Authorization: Bearer k\r\n"));
        assert!(publish.ends_with("Content-Length: 1\r\n\r\ni"));
        let create = String::from_utf8(t.create("bid").expect("callhome")).expect("utf8");
        assert!(create.ends_with("\r\n\r\n{\"id\":\"bid\"}"), "{create}");
        let value = t.value(br#"{"seq":2,"info":"x"}"#).expect("json");
        assert_eq!((value.seq, value.info.as_deref()), (Some(2), Some("x")));
    }

    #[test]
    fn nchan_requests_carry_its_cursor() {
        let t = target(&["--target", "nchan", "--base", "http://127.0.0.1:8081"]).expect("valid");
        assert!(t.create("bid").is_none());
        let cursor = Cursor {
            etag: Some("0".into()),
            last_modified: Some("Fri, 28 Nov 2025 07:00:00 GMT".into()),
            ..Cursor::default()
        };
        let poll =
            String::from_utf8(t.subscribe(Transport::Poll, "bid", None, &cursor)).expect("utf8");
        assert!(poll.starts_with("GET /sub/bid HTTP/1.1\r\n"));
        assert!(poll.contains("If-None-Match: 0\r\n"));
        assert!(poll.contains("If-Modified-Since: Fri, 28 Nov 2025 07:00:00 GMT\r\n"));
        let publish = String::from_utf8(t.publish("bid", "i")).expect("utf8");
        assert!(publish.starts_with("POST /pub/bid HTTP/1.1\r\n"));
        assert!(!publish.contains("Authorization"));
        assert_eq!(t.value(b"raw").and_then(|v| v.info).as_deref(), Some("raw"));
    }

    fn targets(flags: &[&str]) -> Result<Targets, TargetError> {
        let mut command_line = vec!["callhome-bench"];
        command_line.extend_from_slice(flags);
        command_line.extend_from_slice(&["fanout", "--clients", "1"]);
        Targets::new(
            &Cli::try_parse_from(command_line)
                .expect("valid flags")
                .common,
        )
    }

    #[test]
    fn without_publish_base_the_backend_is_the_base() {
        let t = targets(&["--base", "http://127.0.0.1:18080"]).expect("valid");
        assert_eq!(t.subscribe.len(), 1);
        assert_eq!(t.backends.len(), 1);
        assert_eq!(t.backend(7).base, t.subscribe[0].base);
        assert_eq!(t.addrs().len(), 1);
    }

    #[test]
    fn publishes_go_round_robin_over_the_publish_bases() {
        let t = targets(&[
            "--base",
            "http://127.0.0.1:18082",
            "--publish-base",
            "http://127.0.0.1:18080",
            "--publish-base",
            "http://localhost:18081",
            "--key",
            "k",
        ])
        .expect("valid");
        let ports = |n: usize| t.backend(n).base.addr.port();
        assert_eq!(
            (ports(0), ports(1), ports(2), ports(3)),
            (18080, 18081, 18080, 18081)
        );
        // Each request carries its own server's Host and the shared key.
        let publish = String::from_utf8(t.backend(1).publish("bid", "i")).expect("utf8");
        assert!(publish.contains("Host: localhost:18081\r\n"), "{publish}");
        assert!(publish.contains("Authorization: Bearer k\r\n"));
        let create =
            String::from_utf8(t.backend(0).create("bid").expect("callhome")).expect("utf8");
        assert!(create.contains("Host: 127.0.0.1:18080\r\n"), "{create}");
        // The waiters' side is only --base; Target::new is its first entry.
        assert_eq!(t.subscribe.len(), 1);
        assert_eq!(t.subscribe[0].base.addr.port(), 18082);
        let ports: Vec<u16> = t.addrs().iter().map(|(addr, _)| addr.port()).collect();
        assert_eq!(ports, [18082, 18080, 18081]);
    }

    #[test]
    fn every_base_and_publish_base_must_be_loopback() {
        let err = targets(&["--publish-base", "http://10.0.0.1:80"]).expect_err("refused");
        let TargetError::Flag(flag, why) = &err else {
            panic!("not a flag error: {err}");
        };
        assert_eq!(*flag, "--publish-base");
        assert!(matches!(**why, TargetError::NotLoopback(_)), "{why}");
        assert!(err.to_string().starts_with("--publish-base "), "{err}");
        let err = targets(&[
            "--base",
            "http://127.0.0.1:1",
            "--base",
            "http://192.168.1.1:2",
        ])
        .expect_err("refused");
        assert!(matches!(err, TargetError::Flag("--base", _)), "{err}");
        assert!(target(&["--publish-base", "https://127.0.0.1"]).is_err());
        assert!(target(&["--base", "http://127.0.0.1:1", "--base", "http://8.8.8.8"]).is_err());
    }

    #[test]
    fn templates_must_be_paths() {
        assert!(target(&["--sub-template", "http://elsewhere/{id}"]).is_err());
        let t = target(&["--sub-template", "/s/{id}/{since}"]).expect("valid");
        let cursor = Cursor::default();
        let r = String::from_utf8(t.subscribe(Transport::Poll, "x", None, &cursor)).expect("utf8");
        assert!(r.starts_with("GET /s/x/0 HTTP/1.1"));
    }
}
