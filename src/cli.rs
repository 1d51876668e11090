//! `callhome apps ...`: the admin API (`/v1/admin/apps`, src/api/admin.rs) from a shell.
//!
//! Each subcommand is one admin request; the server's JSON answer goes to standard output
//! as it came (pretty-printed), so scripts can read it with `jq`, and an error answer goes to
//! standard error as `error: <code>: <message>` with exit status 1. The CLI keeps no state
//! and decides nothing the server would not: it is a thin, scriptable face of the API.
//!
//! Where the server is and which key opens it: `--server` (or `CALLHOME_SERVER`), else the
//! `listen` address of the config file the daemon uses; the admin key from the environment
//! variable `CALLHOME_ADMIN_KEY`, else the config's `[admin] key` or `key_env`. A key is never
//! taken as an argument: arguments are visible to every user of the machine in `ps`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::AppKey;
use crate::config::Settings;

/// The environment variable the CLI reads the admin key from first.
pub const ADMIN_KEY_ENV: &str = "CALLHOME_ADMIN_KEY";

/// How long one admin request may take before the CLI gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `callhome apps ...`.
#[derive(Debug, Args)]
pub struct AppsArgs {
    /// The CallHome server, e.g. `http://127.0.0.1:8080` (default: the config's `listen`).
    #[arg(long, env = "CALLHOME_SERVER", global = true)]
    pub server: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: AppsCommand,
}

/// The admin calls, one per subcommand.
#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Lists every app, config and registered, with key ids (never keys).
    List,
    /// Shows one app.
    Show {
        /// The app's name.
        name: String,
    },
    /// Registers an app and prints its key, once: keep it, it cannot be shown again.
    Add {
        /// The app's name: 1 to 64 of a-z, 0-9, '-', '_', '.'.
        name: String,
        /// An origin the app's pages are served from (repeat for several).
        #[arg(long = "origin", required = true)]
        origins: Vec<String>,
        /// The app's id quota (default: the server's `[admin] default_max_ids`).
        #[arg(long)]
        max_ids: Option<usize>,
        /// The app's own rates and info size (default: the server's).
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Changes a registered app's origins (all of them, as given) or quota.
    Update {
        /// The app's name.
        name: String,
        /// The app's origins from now on (repeat for several; replaces the list).
        #[arg(long = "origin")]
        origins: Vec<String>,
        /// The app's id quota from now on.
        #[arg(long)]
        max_ids: Option<usize>,
        /// The app's own rates and info size from now on.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Gives an app a new key (printed once); its old keys work for the grace period.
    Rotate {
        /// The app's name.
        name: String,
        /// How long the old keys keep working, e.g. `10m`, `0s` (default: the server's).
        #[arg(long)]
        grace: Option<String>,
    },
    /// Stops one of an app's keys at once.
    Revoke {
        /// The app's name.
        name: String,
        /// The key's id, as `list` or `show` gives it. One in 64 starts with '-' (ids are
        /// base64url), and is taken as the id, not as a flag.
        #[arg(allow_hyphen_values = true)]
        key_id: String,
    },
    /// Removes a registered app and its ids.
    Remove {
        /// The app's name.
        name: String,
    },
}

/// An app's own limits, as `PATCH`/`POST /v1/admin/apps` take them in `"limits"`.
#[derive(Debug, Default, Args)]
pub struct LimitArgs {
    /// Id creations: `PER_SECOND/BURST`, e.g. `10/100`.
    #[arg(long, value_parser = rate)]
    pub create_rate: Option<(u32, u32)>,
    /// Notifies: `PER_SECOND/BURST`, e.g. `100/1000`.
    #[arg(long, value_parser = rate)]
    pub notify_rate: Option<(u32, u32)>,
    /// The largest info a notify may carry, in bytes.
    #[arg(long)]
    pub info_max_bytes: Option<usize>,
}

impl LimitArgs {
    /// The `"limits"` object, or `None` when no limit was given.
    fn json(&self) -> Option<Value> {
        let mut limits = serde_json::Map::new();
        let rate =
            |(per_second, burst): (u32, u32)| json!({"per_second": per_second, "burst": burst});
        if let Some(r) = self.create_rate {
            limits.insert("create_per_app".into(), rate(r));
        }
        if let Some(r) = self.notify_rate {
            limits.insert("notify_per_app".into(), rate(r));
        }
        if let Some(n) = self.info_max_bytes {
            limits.insert("info_max_bytes".into(), json!(n));
        }
        (!limits.is_empty()).then_some(Value::Object(limits))
    }
}

/// `PER_SECOND/BURST`.
fn rate(text: &str) -> Result<(u32, u32), String> {
    let (per_second, burst) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: write PER_SECOND/BURST, e.g. 10/100"))?;
    let number = |n: &str| n.trim().parse::<u32>().map_err(|e| format!("{n:?}: {e}"));
    Ok((number(per_second)?, number(burst)?))
}

impl AppsCommand {
    /// The request this command makes: method, path below the server, JSON body.
    fn request(&self) -> anyhow::Result<(Method, String, Option<Value>)> {
        let path = |name: &str| format!("/v1/admin/apps/{}", segment(name));
        Ok(match self {
            Self::List => (Method::GET, "/v1/admin/apps".into(), None),
            Self::Show { name } => (Method::GET, path(name), None),
            Self::Add {
                name,
                origins,
                max_ids,
                limits,
            } => {
                let mut body = json!({ "name": name, "origins": origins });
                if let Some(max_ids) = max_ids {
                    body["max_ids"] = json!(max_ids);
                }
                if let Some(limits) = limits.json() {
                    body["limits"] = limits;
                }
                (Method::POST, "/v1/admin/apps".into(), Some(body))
            }
            Self::Update {
                name,
                origins,
                max_ids,
                limits,
            } => {
                let limits = limits.json();
                if origins.is_empty() && max_ids.is_none() && limits.is_none() {
                    bail!(
                        "nothing to change: give --origin, --max-ids, --create-rate, \
                         --notify-rate or --info-max-bytes"
                    );
                }
                let mut body = json!({});
                if !origins.is_empty() {
                    body["origins"] = json!(origins);
                }
                if let Some(max_ids) = max_ids {
                    body["max_ids"] = json!(max_ids);
                }
                if let Some(limits) = limits {
                    body["limits"] = limits;
                }
                (Method::PATCH, path(name), Some(body))
            }
            Self::Rotate { name, grace } => {
                let body = grace.as_ref().map(|grace| json!({ "grace": grace }));
                (Method::POST, format!("{}/keys", path(name)), body)
            }
            Self::Revoke { name, key_id } => (
                Method::DELETE,
                format!("{}/keys/{}", path(name), segment(key_id)),
                None,
            ),
            Self::Remove { name } => (Method::DELETE, path(name), None),
        })
    }
}

/// `text` as one URL path segment: names and key ids are plain ASCII, but a stray `/` or `?`
/// must not turn into another request.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Where and with which key: from the flags and environment, else from the config.
pub struct Target {
    /// The server's base URL, without a trailing `/`.
    pub server: String,
    /// The admin key.
    pub key: AppKey,
}

impl Target {
    /// The target for `args` and the admin key from the environment (`env_key`); the
    /// config the daemon runs on (`settings`) is read only when one of them is missing.
    pub fn resolve(
        args: &AppsArgs,
        env_key: Option<String>,
        settings: impl FnOnce() -> anyhow::Result<Settings>,
    ) -> anyhow::Result<Self> {
        let env_key = env_key.filter(|k| !k.is_empty());
        let config = if args.server.is_none() || env_key.is_none() {
            Some(settings().context(
                "reading the config (for the server's address without --server, or for the \
                 admin key without CALLHOME_ADMIN_KEY)",
            )?)
        } else {
            None
        };
        let server = match (&args.server, &config) {
            (Some(server), _) => server.trim_end_matches('/').to_owned(),
            (None, Some(s)) => format!("http://{}", reachable(s.listen)),
            (None, None) => unreachable!("the config was read"),
        };
        let key = match (env_key, config) {
            (Some(key), _) => AppKey::new(key),
            (None, Some(s)) => {
                s.admin
                    .context("the config has no [admin] key: the admin API is off")?
                    .key
            }
            (None, None) => unreachable!("the config was read"),
        };
        Ok(Self { server, key })
    }
}

/// The address to reach a daemon that listens on `listen`: an unspecified address (all
/// interfaces) is reached on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

/// What one command printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status: 0 for a 2xx answer, 1 otherwise.
    pub status: i32,
    /// For standard output: the answer's JSON, pretty-printed (empty for `204`).
    pub stdout: String,
    /// For standard error: what went wrong, and for a new key the reminder to keep it.
    pub stderr: String,
}

/// Runs `command` against `target`.
pub async fn run(target: &Target, command: &AppsCommand) -> anyhow::Result<Outcome> {
    let (method, path, body) = command.request()?;
    // The one crypto provider of this binary (src/tls.rs), for an https server; a second
    // install (there is nothing else to install) changes nothing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let url = format!("{}{path}", target.server);
    let mut request = client
        .request(method, &url)
        .bearer_auth(target.key.expose());
    if let Some(body) = &body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {}", target.server))?;
    let status = response.status();
    let text = response.text().await.context("the answer broke off")?;
    Ok(outcome(status, &text))
}

/// How an answer is shown.
fn outcome(status: StatusCode, text: &str) -> Outcome {
    let json: Option<Value> = serde_json::from_str(text).ok();
    if status.is_success() {
        let stdout = json
            .as_ref()
            .map_or_else(|| text.to_owned(), pretty)
            .trim_end()
            .to_owned();
        let stderr = if json.as_ref().is_some_and(|j| j.get("key").is_some()) {
            "note: the key is shown this once; the server keeps only its digest".into()
        } else {
            String::new()
        };
        return Outcome {
            status: 0,
            stdout,
            stderr,
        };
    }
    let error = json.as_ref().and_then(|j| j.get("error"));
    let stderr = match error {
        Some(e) => format!(
            "error: {}: {} (HTTP {})",
            e["code"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or(""),
            status.as_u16()
        ),
        None => format!("error: HTTP {status}: {}", text.trim()),
    };
    Outcome {
        status: 1,
        stdout: String::new(),
        stderr,
    }
}

fn pretty(json: &Value) -> String {
    serde_json::to_string_pretty(json).expect("a Value serialises")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `callhome apps` as the binary parses it (src/main.rs), for the tests of its arguments.
    #[derive(Debug, Parser)]
    struct Apps {
        #[command(flatten)]
        apps: AppsArgs,
    }

    #[test]
    fn a_key_id_that_starts_with_a_hyphen_is_a_key_id() {
        for id in ["-1AbCdEf", "--xYz012", "_Ab-Cd_E"] {
            let parsed = Apps::try_parse_from(["apps", "revoke", "chat", id])
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            let AppsCommand::Revoke { name, key_id } = parsed.apps.command else {
                panic!("{id}: not a revoke");
            };
            assert_eq!((name.as_str(), key_id.as_str()), ("chat", id));
        }
        // Flags still work around it.
        let parsed = Apps::try_parse_from([
            "apps",
            "revoke",
            "chat",
            "-1AbCdEf",
            "--server",
            "http://127.0.0.1:1",
        ])
        .expect("a flag after the id");
        assert_eq!(parsed.apps.server.as_deref(), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn each_command_is_one_admin_request() {
        let cases = [
            (AppsCommand::List, "GET /v1/admin/apps", None),
            (
                AppsCommand::Add {
                    name: "chat".into(),
                    origins: vec!["https://chat.example".into()],
                    max_ids: Some(5),
                    limits: LimitArgs::default(),
                },
                "POST /v1/admin/apps",
                Some(json!({"name":"chat","origins":["https://chat.example"],"max_ids":5})),
            ),
            (
                AppsCommand::Update {
                    name: "chat".into(),
                    origins: vec![],
                    max_ids: Some(9),
                    limits: LimitArgs {
                        notify_rate: Some((5, 50)),
                        ..LimitArgs::default()
                    },
                },
                "PATCH /v1/admin/apps/chat",
                Some(json!({"max_ids":9,"limits":{"notify_per_app":{"per_second":5,"burst":50}}})),
            ),
            (
                AppsCommand::Rotate {
                    name: "chat".into(),
                    grace: None,
                },
                "POST /v1/admin/apps/chat/keys",
                None,
            ),
            (
                AppsCommand::Revoke {
                    name: "chat".into(),
                    key_id: "a/b?c".into(),
                },
                "DELETE /v1/admin/apps/chat/keys/a%2Fb%3Fc",
                None,
            ),
        ];
        for (command, line, body) in cases {
            let (method, path, sent) = command.request().unwrap();
            assert_eq!(format!("{method} {path}"), line);
            assert_eq!(sent, body, "{line}");
        }
        let nothing = AppsCommand::Update {
            name: "chat".into(),
            origins: vec![],
            max_ids: None,
            limits: LimitArgs::default(),
        };
        assert!(nothing.request().is_err());
        assert_eq!(rate("10/100"), Ok((10, 100)));
        assert!(rate("10").is_err() && rate("x/1").is_err());
    }

    #[test]
    fn errors_show_the_servers_code_and_a_new_key_a_reminder() {
        let refused = outcome(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"unknown_app","message":"no app \"x\""}}"#,
        );
        assert_eq!(refused.status, 1);
        assert_eq!(
            refused.stderr,
            r#"error: unknown_app: no app "x" (HTTP 404)"#
        );
        let made = outcome(StatusCode::CREATED, r#"{"key":"chk_x","key_id":"k"}"#);
        assert_eq!(made.status, 0);
        assert!(made.stdout.contains("\"key\": \"chk_x\""));
        assert!(made.stderr.contains("shown this once"));
    }

    #[test]
    fn a_daemon_on_all_interfaces_is_reached_on_loopback() {
        let at = |s: &str| reachable(s.parse().unwrap()).to_string();
        assert_eq!(at("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(at("[::]:8080"), "[::1]:8080");
        assert_eq!(at("10.0.0.1:80"), "10.0.0.1:80");
    }
}
