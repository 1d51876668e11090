//! `callhome apps ...` against the real binary: every subcommand, run as an operator would,
//! and what it does seen through the API.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Daemon, ORIGIN, client};

const ADMIN: &str = "admin-key-for-the-cli-0123456789";

/// What one `callhome apps ...` run printed and its exit status.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// `callhome --config <config> apps <args>` with `env` set (and nothing inherited that
/// names a server or key).
fn apps(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_callhome"))
        .arg("--config")
        .arg(config)
        .arg("apps")
        .args(args)
        .env_remove("CALLHOME_SERVER")
        .env_remove("CALLHOME_ADMIN_KEY")
        // The suite's engine switch is for the daemons it starts, not for this command's
        // reading of a config that names no Redis.
        .env_remove("CALLHOME_STORE__BACKEND")
        .envs(env.iter().copied())
        .output()
        .expect("the callhome binary runs");
    Run {
        status: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    daemon: Daemon,
}

impl Setup {
    /// A daemon with an admin key in its config and no apps.
    fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("callhome-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("callhome.toml");
        std::fs::write(&config, format!("[admin]\nkey = \"{ADMIN}\"\n")).unwrap();
        let daemon = Daemon::start(&config);
        Self {
            dir,
            config,
            daemon,
        }
    }

    fn server(&self) -> String {
        format!("http://{}", self.daemon.addr)
    }

    /// `callhome apps <args>` at this daemon with the admin key from the environment.
    fn apps(&self, args: &[&str]) -> Run {
        let server = self.server();
        apps(
            &self.config,
            &[("CALLHOME_SERVER", &server), ("CALLHOME_ADMIN_KEY", ADMIN)],
            args,
        )
    }

    async fn create_status(&self, key: &str) -> StatusCode {
        client()
            .post(format!("{}/v1/ids", self.server()))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_apps_subcommand_works_against_the_real_daemon() {
    let s = Setup::start("all");

    let added = s.apps(&["add", "chat", "--origin", ORIGIN, "--max-ids", "7"]);
    assert_eq!(added.status, 0, "{}", added.stderr);
    assert!(added.stderr.contains("shown this once"), "{}", added.stderr);
    let added = added.json();
    let first = added["key"].as_str().unwrap().to_owned();
    let first_id = added["key_id"].as_str().unwrap().to_owned();
    assert_eq!(added["app"]["max_ids"], 7);
    assert_eq!(s.create_status(&first).await, StatusCode::CREATED);

    let listed = s.apps(&["list"]).json();
    let names: Vec<&str> = listed["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chat"]);
    assert!(
        !s.apps(&["list"]).stdout.contains(&first),
        "a key is never listed"
    );

    let updated = s.apps(&[
        "update",
        "chat",
        "--origin",
        "https://chat.example",
        "--origin",
        ORIGIN,
        "--max-ids",
        "9",
        "--notify-rate",
        "5/50",
    ]);
    assert_eq!(updated.status, 0, "{}", updated.stderr);
    let shown = s.apps(&["show", "chat"]).json();
    assert_eq!(shown["max_ids"], 9);
    assert_eq!(
        shown["limits"]["notify_per_app"],
        serde_json::json!({"per_second": 5, "burst": 50}),
        "{shown}"
    );
    assert_eq!(
        shown["origins"],
        serde_json::json!(["https://chat.example", ORIGIN])
    );

    // Rotated with a grace period: both keys work; then the old one is revoked at once.
    let rotated = s.apps(&["rotate", "chat", "--grace", "1h"]).json();
    let second = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(s.create_status(&first).await, StatusCode::CREATED);
    assert_eq!(s.create_status(&second).await, StatusCode::CREATED);
    let revoked = s.apps(&["revoke", "chat", &first_id]);
    assert_eq!(revoked.status, 0, "{}", revoked.stderr);
    assert_eq!(s.create_status(&first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(s.create_status(&second).await, StatusCode::CREATED);

    // Rotated with no grace: the old key stops at once.
    let third = s.apps(&["rotate", "chat", "--grace", "0s"]).json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.create_status(&second).await, StatusCode::UNAUTHORIZED);
    assert_eq!(s.create_status(&third).await, StatusCode::CREATED);

    let removed = s.apps(&["remove", "chat"]);
    assert_eq!((removed.status, removed.stdout.as_str()), (0, ""));
    assert_eq!(s.create_status(&third).await, StatusCode::UNAUTHORIZED);
    assert_eq!(s.apps(&["list"]).json()["apps"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_1_with_the_servers_error_code() {
    let s = Setup::start("errors");
    let cases: [(&[&str], &str); 4] = [
        (&["show", "nobody"], "error: unknown_app:"),
        (&["revoke", "nobody", "k"], "error: unknown_app:"),
        (
            &["add", "Bad Name", "--origin", ORIGIN],
            "error: invalid_app:",
        ),
        (&["add", "x", "--origin", "not an origin"], "error: "),
    ];
    for (args, expected) in cases {
        let run = s.apps(args);
        assert_eq!(run.status, 1, "{args:?}: {}", run.stdout);
        assert!(run.stderr.starts_with(expected), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}");
    }

    let wrong = apps(
        &s.config,
        &[
            ("CALLHOME_SERVER", &s.server()),
            ("CALLHOME_ADMIN_KEY", "not-the-admin-key-0123456789"),
        ],
        &["list"],
    );
    assert_eq!(wrong.status, 1);
    assert!(wrong.stderr.contains("HTTP 401"), "{}", wrong.stderr);

    let nothing = s.apps(&["update", "x"]);
    assert_ne!(nothing.status, 0);
    assert!(
        nothing.stderr.contains("nothing to change"),
        "{}",
        nothing.stderr
    );
}

/// With no `CALLHOME_ADMIN_KEY`, the key comes from the config the daemon runs on; with no
/// `--server`, the address too (here the config's `listen` is the daemon's real port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_flags_the_cli_reads_the_daemons_config() {
    let s = Setup::start("config");
    let own = s.dir.join("own.toml");
    std::fs::write(
        &own,
        format!(
            "listen = \"0.0.0.0:{}\"\n[admin]\nkey_env = \"SOME_ADMIN_KEY\"\n",
            s.daemon.addr.port()
        ),
    )
    .unwrap();
    let run = apps(&own, &[("SOME_ADMIN_KEY", ADMIN)], &["list"]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.json()["apps"], serde_json::json!([]));

    let no_admin = s.dir.join("no-admin.toml");
    std::fs::write(&no_admin, "").unwrap();
    let run = apps(&no_admin, &[("CALLHOME_SERVER", &s.server())], &["list"]);
    assert_ne!(run.status, 0);
    assert!(
        run.stderr.contains("no [admin] key"),
        "says why: {}",
        run.stderr
    );
}
