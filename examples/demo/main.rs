//! CallHome demo: a shared notes page with live updates.
//!
//! A small web app on its own origin that uses CallHome the way a real backend would:
//!
//! - `GET /` creates a CallHome id for the page view (`POST /v1/ids` with the app's key),
//!   remembers it, and renders the notes with a script that loads `callhome.js` and calls
//!   `CallHome.connect(iframe_url, ...)`.
//! - `POST /notes` stores a note, then notifies every page id with the new note count
//!   (`POST /v1/ids/{id}/notify`). CallHome wakes those pages, and each one fetches the
//!   notes it has not shown yet from `GET /notes?after=N`. The note text itself never
//!   goes through CallHome: the info is only a hint that something changed.
//!
//! Run it next to the daemon, which the shipped config sets up for this demo (app `demo`,
//! origin `http://localhost:3000`):
//!
//! ```sh
//! # terminal 1: CallHome on 127.0.0.1:8080
//! cargo run --release -- --config config/callhome.toml
//! # terminal 2: this demo on 127.0.0.1:3000
//! cargo run --release --example demo
//! ```
//!
//! Then open <http://localhost:3000> in two browser windows (`localhost`, not `127.0.0.1`:
//! the id is bound to the origin in the config) and add a note in one of them.
//!
//! # On a CallHome server it was not configured into
//!
//! With `--register NAME` the demo uses no configured key: it registers itself with the
//! CallHome server it is pointed at, as any backend can where the operator allows it
//! (`[registration] policy = "open"`, or `"invite"` with `--invite CODE`). It reads the
//! server's discovery document, asks for a challenge token for its origin (`--origin`,
//! default `http://localhost:<port>`), serves the token at
//! `/.well-known/callhome-challenge/<token>`, registers, and uses the key it got (which it
//! keeps in memory only and never logs). CallHome refuses to fetch loopback origins unless
//! its operator allows private origins, as a local trial must:
//!
//! ```sh
//! CALLHOME_REGISTRATION__POLICY=open CALLHOME_REGISTRATION__ALLOW_PRIVATE_ORIGINS=true \
//!   cargo run --release -- --config config/callhome.toml
//! cargo run --release --example demo -- --register notes-demo --listen 127.0.0.1:3001 \
//!   --origin http://127.0.0.1:3001
//! ```
//!
//! To keep it short, everything is in memory, and every page view gets its own id, kept
//! until CallHome forgets it (404 on notify) or 10,000 newer page views push it out. A real
//! app would rather give an id to each user or document, and delete ids it no longer needs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;

/// The page template; `{{...}}` placeholders are filled in by [`render_page`].
const PAGE: &str = include_str!("page.html");
/// Notes kept in memory; older ones are dropped, but numbering goes on.
const MAX_NOTES: usize = 1_000;
/// Page ids remembered for notifying; the oldest are dropped first.
const MAX_PAGES: usize = 10_000;
/// The longest note, in characters.
const MAX_NOTE_CHARS: usize = 500;
/// Notify requests in flight at once, across all notes.
const NOTIFY_CONCURRENCY: usize = 32;

/// CallHome demo: a shared notes page with live updates.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Address to listen on. Browse it as `http://localhost:<port>`, the app's origin in
    /// CallHome's config.
    #[arg(long, env = "CALLHOME_DEMO_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// CallHome's base URL, as this backend reaches it.
    #[arg(
        long,
        env = "CALLHOME_DEMO_CALLHOME",
        default_value = "http://127.0.0.1:8080"
    )]
    callhome: String,
    /// The app's key, as in CallHome's config.
    #[arg(
        long,
        env = "CALLHOME_DEMO_KEY",
        default_value = "demo-key-change-me-0123456789",
        hide_env_values = true
    )]
    key: String,
    /// Register with CallHome as an app of this name instead of using --key (the server's
    /// registration policy must be `open`, or `invite` with --invite).
    #[arg(long, env = "CALLHOME_DEMO_REGISTER")]
    register: Option<String>,
    /// The invite code the CallHome operator gave, under the `invite` policy.
    #[arg(long, env = "CALLHOME_DEMO_INVITE", hide_env_values = true)]
    invite: Option<String>,
    /// The origin the demo's pages are served from, proven to CallHome when registering.
    /// Default: `http://localhost:<port>`.
    #[arg(long, env = "CALLHOME_DEMO_ORIGIN")]
    origin: Option<String>,
}

/// Shared by all handlers. Locks are held briefly and never across an `.await`.
#[derive(Clone)]
struct AppState {
    http: reqwest::Client,
    /// CallHome's base URL, without a trailing `/`.
    callhome: Arc<str>,
    /// The app's key: from the flags, or once the demo has registered itself.
    key: Arc<OnceLock<String>>,
    /// Challenge tokens CallHome gave, served at `/.well-known/callhome-challenge/<token>`
    /// while a registration runs.
    challenges: Arc<Mutex<HashMap<String, String>>>,
    notes: Arc<Mutex<Notes>>,
    /// Ids of the pages to notify, oldest first.
    pages: Arc<Mutex<VecDeque<String>>>,
    notify_slots: Arc<Semaphore>,
}

/// The newest [`MAX_NOTES`] notes. Note `n` (from 1) is `texts[n - dropped - 1]`.
#[derive(Default)]
struct Notes {
    dropped: u64,
    texts: VecDeque<String>,
}

#[derive(Serialize)]
struct Note {
    n: u64,
    text: String,
}

#[derive(Serialize)]
struct NotesPage {
    count: u64,
    notes: Vec<Note>,
}

impl Notes {
    /// How many notes were ever added, which is also the newest note's number.
    fn count(&self) -> u64 {
        self.dropped + self.texts.len() as u64
    }

    /// Stores a note and returns its number.
    fn add(&mut self, text: String) -> u64 {
        if self.texts.len() == MAX_NOTES {
            self.texts.pop_front();
            self.dropped += 1;
        }
        self.texts.push_back(text);
        self.count()
    }

    /// The kept notes numbered above `after`.
    fn after(&self, after: u64) -> NotesPage {
        let skip = usize::try_from(after.saturating_sub(self.dropped)).unwrap_or(usize::MAX);
        let notes = (self.dropped + 1..)
            .zip(&self.texts)
            .skip(skip)
            .map(|(n, text)| Note {
                n,
                text: text.clone(),
            })
            .collect();
        NotesPage {
            count: self.count(),
            notes,
        }
    }
}

/// The part of CallHome's answer to `POST /v1/ids` that the demo uses.
#[derive(Deserialize)]
struct CreatedId {
    id: String,
    iframe_url: String,
}

/// What became of one notify.
enum Delivery {
    Sent,
    /// CallHome does not know the id (deleted, or CallHome restarted).
    Gone,
}

impl AppState {
    /// The app's key, once there is one.
    fn key(&self) -> anyhow::Result<&str> {
        self.key
            .get()
            .map(String::as_str)
            .context("not registered with CallHome yet")
    }

    /// Creates an id bound to the app's only origin: no body, CallHome picks the id.
    async fn create_id(&self) -> anyhow::Result<CreatedId> {
        let response = self
            .http
            .post(format!("{}/v1/ids", self.callhome))
            .bearer_auth(self.key()?)
            .send()
            .await
            .context("CallHome is unreachable")?;
        Ok(success(response).await?.json().await?)
    }

    /// Sends `info` to the page waiting on `id`.
    async fn notify(&self, id: &str, info: String) -> anyhow::Result<Delivery> {
        let response = self
            .http
            .post(format!("{}/v1/ids/{id}/notify", self.callhome))
            .bearer_auth(self.key()?)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(info)
            .send()
            .await
            .context("CallHome is unreachable")?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Delivery::Gone);
        }
        success(response).await?;
        Ok(Delivery::Sent)
    }

    /// Remembers a page id, forgetting the oldest one past [`MAX_PAGES`].
    fn remember_page(&self, id: String) {
        let mut pages = self.pages.lock().unwrap();
        pages.push_back(id);
        if pages.len() > MAX_PAGES {
            pages.pop_front();
        }
    }
}

/// Registers the demo as app `name` for `origin` with the CallHome server it is pointed at,
/// over nothing but HTTP: discovery, a challenge token for the origin (served by this demo
/// while CallHome fetches it), the registration. Returns the key.
async fn register(
    state: &AppState,
    name: &str,
    origin: &str,
    invite: Option<&str>,
) -> anyhow::Result<String> {
    let base = &state.callhome;
    let discovery: serde_json::Value = success(
        state
            .http
            .get(format!("{base}/.well-known/callhome"))
            .send()
            .await
            .context("CallHome is unreachable")?,
    )
    .await?
    .json()
    .await?;
    let policy = discovery["registration"]["policy"]
        .as_str()
        .unwrap_or("closed");
    match (policy, invite) {
        ("open", _) | ("invite", Some(_)) => {}
        ("invite", None) => bail!("{base} takes new apps with an invite only: pass --invite"),
        _ => bail!("{base} takes no new apps (registration policy {policy:?}); use --key"),
    }
    let challenge: serde_json::Value = success(
        state
            .http
            .post(format!("{base}/v1/apps/challenges"))
            .json(&json!({ "origin": origin }))
            .send()
            .await?,
    )
    .await?
    .json()
    .await?;
    let token = challenge["token"]
        .as_str()
        .context("no token in CallHome's challenge")?
        .to_owned();
    state
        .challenges
        .lock()
        .unwrap()
        .insert(token.clone(), token.clone());
    let mut request = json!({ "name": name, "origins": [origin], "tokens": [token] });
    if let Some(invite) = invite {
        request["invite"] = json!(invite);
    }
    let registered = state
        .http
        .post(format!("{base}/v1/apps"))
        .json(&request)
        .send()
        .await;
    state.challenges.lock().unwrap().remove(&token);
    let registered: serde_json::Value = success(registered?).await?.json().await?;
    tracing::info!(
        app = name,
        %origin,
        key_id = registered["key_id"].as_str().unwrap_or("?"),
        "registered with CallHome (the key is kept in memory only)"
    );
    registered["key"]
        .as_str()
        .map(str::to_owned)
        .context("no key in CallHome's answer")
}

/// `GET /.well-known/callhome-challenge/{token}`: a token CallHome gave, while it is wanted.
async fn challenge(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match state.challenges.lock().unwrap().get(&token) {
        Some(body) => ([(header::CONTENT_TYPE, "text/plain")], body.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Turns a CallHome error answer into an error that carries its status and body.
async fn success(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    bail!("CallHome answered {status}: {body}");
}

/// `GET /`: the notes page, connected to CallHome through a fresh id.
async fn index(State(state): State<AppState>) -> Response {
    let iframe_url = match state.create_id().await {
        Ok(created) => {
            // Remember the id before reading the notes: a note added after that read
            // then notifies this page, so the page misses nothing.
            state.remember_page(created.id);
            Some(created.iframe_url)
        }
        Err(err) => {
            tracing::warn!("cannot create a CallHome id, live updates are off: {err:#}");
            None
        }
    };
    let notes = state.notes.lock().unwrap().after(0);
    let page = render_page(iframe_url.as_deref(), &notes);
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

/// Fills in the page template. Everything interpolated is escaped for its context.
fn render_page(iframe_url: Option<&str>, notes: &NotesPage) -> String {
    let (status_class, status) = if iframe_url.is_some() {
        ("pending", "Connecting to CallHome\u{2026}")
    } else {
        (
            "off",
            "Live updates are off: no id from CallHome (see the demo's log). Reload for new notes.",
        )
    };
    // JSON inside <script>: escaping `<` keeps `</script>` and `<!--` out of it.
    let data = json!({ "iframe_url": iframe_url, "count": notes.count })
        .to_string()
        .replace('<', "\\u003c");
    let mut items = String::new();
    for note in &notes.notes {
        let (n, text) = (note.n, escape(&note.text));
        // Writing to a String cannot fail.
        let _ = write!(items, r#"<li class="note" data-n="{n}">{text}</li>"#);
    }
    // The notes go in last: they are user text, which must not be searched for placeholders.
    PAGE.replace("{{status_class}}", status_class)
        .replace("{{status}}", &escape(status))
        .replace("{{data}}", &data)
        .replace("{{notes}}", &items)
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

/// `GET /notes?after=N`: the notes numbered above N, and the total count.
async fn list_notes(State(state): State<AppState>, Query(query): Query<After>) -> Json<NotesPage> {
    Json(state.notes.lock().unwrap().after(query.after))
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

/// `POST /notes` `{"text": "..."}`: stores a note and tells every page about it.
async fn add_note(
    State(state): State<AppState>,
    body: Result<Json<NewNote>, JsonRejection>,
) -> Response {
    let text = match &body {
        Ok(Json(note)) => note.text.trim(),
        Err(rejection) => return bad_request(&rejection.body_text()),
    };
    if text.is_empty() {
        return bad_request("the note is empty");
    }
    if text.chars().count() > MAX_NOTE_CHARS {
        return bad_request(&format!("a note has at most {MAX_NOTE_CHARS} characters"));
    }
    let n = state.notes.lock().unwrap().add(text.to_owned());
    tracing::info!(n, "note added");
    // Answer now; the pages are notified in the background.
    tokio::spawn(notify_pages(state, n));
    (StatusCode::CREATED, Json(json!({ "n": n, "count": n }))).into_response()
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// Notifies every remembered page of the new note count, [`NOTIFY_CONCURRENCY`] at a
/// time, and forgets the pages CallHome no longer knows.
async fn notify_pages(state: AppState, count: u64) {
    let ids: Vec<String> = state.pages.lock().unwrap().iter().cloned().collect();
    let info = count.to_string();
    let mut tasks = JoinSet::new();
    for id in ids {
        let permit = Arc::clone(&state.notify_slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (state, info) = (state.clone(), info.clone());
        tasks.spawn(async move {
            let delivery = state.notify(&id, info).await;
            drop(permit);
            (id, delivery)
        });
    }

    let (mut sent, mut failed, mut gone) = (0_usize, 0_usize, HashSet::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(Delivery::Sent))) => sent += 1,
            Ok((id, Ok(Delivery::Gone))) => {
                gone.insert(id);
            }
            Ok((id, Err(err))) => {
                failed += 1;
                tracing::warn!(%id, "notify failed: {err:#}");
            }
            Err(err) => {
                failed += 1;
                tracing::error!("notify task failed: {err}");
            }
        }
    }
    if !gone.is_empty() {
        state.pages.lock().unwrap().retain(|id| !gone.contains(id));
    }
    tracing::info!(count, sent, failed, gone = gone.len(), "pages notified");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    // reqwest's rustls comes without a crypto provider (CallHome's tree uses ring alone):
    // name it once, before the first client, so an https CallHome works too.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let state = AppState {
        // Only loopback or a known host is contacted: never go through an env proxy.
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?,
        callhome: cli.callhome.trim_end_matches('/').into(),
        key: Arc::default(),
        challenges: Arc::default(),
        notes: Arc::default(),
        pages: Arc::default(),
        notify_slots: Arc::new(Semaphore::new(NOTIFY_CONCURRENCY)),
    };
    let app = Router::new()
        .route("/", get(index))
        .route("/notes", get(list_notes).post(add_note))
        .route("/.well-known/callhome-challenge/{token}", get(challenge))
        .with_state(state.clone());

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                tokio::signal::ctrl_c().await.ok();
                tracing::info!("Ctrl-C: stopping");
            })
            .into_future(),
    );
    // Registering needs the challenge route served, so it runs once the demo listens.
    let key = match &cli.register {
        Some(name) => {
            let origin = cli
                .origin
                .clone()
                .unwrap_or_else(|| format!("http://localhost:{port}"));
            register(&state, name, &origin, cli.invite.as_deref())
                .await
                .context("cannot register with CallHome")?
        }
        None => cli.key,
    };
    state.key.set(key).expect("set once");
    tracing::info!(
        callhome = %state.callhome,
        "demo listening on {}; open http://localhost:{port} in two windows",
        cli.listen
    );
    server.await??;
    Ok(())
}
