//! A real headless Chromium, driven through chromedriver with fantoccini.
//!
//! Why fantoccini: it keeps the browser tests in the one Rust integration binary, so the
//! README's single test command runs them, with the same `TestServer` and `Daemon` helpers as
//! every other test, and no Node toolchain or npm install in CI. Chromium and chromedriver are
//! Debian's packages (`chromium`, `chromium-driver`); `.ci/run` installs them. When they are
//! missing, the browser tests say so and pass vacuously, except under `CI=true`, where that
//! fails the run.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::{WebDriverCompatibleCommand, WindowHandle};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// How long a browser-side condition may take before the test fails. Generous: CI is shared.
pub const PATIENCE: Duration = Duration::from_secs(20);

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One chromedriver with one browser session. Quits the browser and the driver on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

fn binary(var: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    path.is_file().then_some(path)
}

/// How a browser is started, beyond what every test needs.
#[derive(Debug, Default)]
pub struct Options {
    /// More Chromium flags (`--ignore-certificate-errors` for a test's own certificate).
    pub args: Vec<String>,
    /// `WebDriver`'s `pageLoadStrategy`: `None` is "normal" (navigation waits for the load
    /// event); "none" returns at once, for pages whose subresources may never load.
    pub page_load: Option<&'static str>,
}

impl Browser {
    /// A fresh browser, or `None` (with a note on stderr) when Chromium is not installed and
    /// this is not CI.
    pub async fn start() -> Option<Self> {
        Self::start_with(Options::default()).await
    }

    /// [`Browser::start`] with `options`.
    pub async fn start_with(options: Options) -> Option<Self> {
        let (Some(chromium), Some(chromedriver)) = (
            binary("CHROMIUM", CHROMIUM),
            binary("CHROMEDRIVER", CHROMEDRIVER),
        ) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but chromium/chromedriver are missing: apt-get install chromium chromium-driver"
            );
            eprintln!(
                "SKIPPED: browser test needs chromium and chromedriver (apt-get install chromium chromium-driver)"
            );
            return None;
        };
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile =
            std::env::temp_dir().join(format!("callhome-chromium-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&profile).unwrap();
        let client = connect(port, &chromium, &profile, &options).await;
        Some(Self {
            client,
            driver,
            profile,
        })
    }

    /// Runs `script` in the current frame and returns its result.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("script runs")
    }

    /// Waits until `script` returns something truthy, and returns it. Fails after
    /// [`PATIENCE`], naming `what`.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.eval(script).await;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "browser never showed: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What subscription `i` of the test page (`support::page`) in the current tab
    /// received, as `(info, seq)`.
    pub async fn received(&self, i: usize) -> Vec<(String, u64)> {
        let list = self.eval(&format!("return window.received[{i}]")).await;
        list.as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["info"].as_str().unwrap().to_owned(),
                    v["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Opens `url` in a new tab and makes it the current one; returns its handle.
    pub async fn open_tab(&self, url: &str) -> WindowHandle {
        let tab = self.client.new_window(true).await.expect("a new tab");
        let handle = tab.handle;
        self.client
            .switch_to_window(handle.clone())
            .await
            .expect("switch to the new tab");
        self.client.goto(url).await.expect("the page loads");
        handle
    }

    /// Makes `tab` the current one.
    pub async fn switch_to(&self, tab: &WindowHandle) {
        self.client
            .switch_to_window(tab.clone())
            .await
            .expect("switch tabs");
    }

    /// Runs a Chrome `DevTools` Protocol command on the current tab (chromedriver's
    /// `goog/cdp/execute`), e.g. `Page.setWebLifecycleState`.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.client
            .issue_cmd(Cdp {
                cmd: cmd.to_owned(),
                params,
            })
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// Saves a PNG of the window.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver runs in a process group of its own, and Chromium inherits it: killing
        // the group ends exactly the processes this browser started, even if a test panicked.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn connect(port: u16, chromium: &Path, profile: &Path, options: &Options) -> Client {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-breakpad",
        "--disable-crash-reporter",
        "--window-size=900,700",
    ]
    .map(String::from)
    .into();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend(options.args.iter().cloned());
    let mut capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    if let Some(strategy) = options.page_load {
        capabilities["pageLoadStrategy"] = json!(strategy);
    }
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let url = format!("http://127.0.0.1:{port}");
    // chromedriver takes a moment to listen; retry the connection for a bounded time.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "chromedriver did not start: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A `DevTools` command through chromedriver.
#[derive(Debug)]
struct Cdp {
    cmd: String,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params});
        (axum::http::Method::POST, Some(body.to_string()))
    }
}

/// A port that was free a moment ago (chromedriver cannot be told to pick one itself).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
