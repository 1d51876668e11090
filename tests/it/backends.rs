//! The two backend examples (examples/backends: Python with its standard library, Node.js
//! with its built-in fetch) run against the real binary: create ids, notify them in a
//! batch, retry with an idempotency key. Each exits 0 only when every step answered as
//! docs/api.md says. Under `CI=true` a missing `python3` or `node` fails the test.

use std::path::Path;
use std::process::Command;

use crate::support::{Daemon, KEY};

/// Runs `program script` against a fresh daemon; `None` when `program` is missing outside CI.
fn run_example(program: &str, script: &str) -> Option<String> {
    if Command::new(program).arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{program} is missing (CI=true)"
        );
        eprintln!("skipped: {program} is not installed");
        return None;
    }
    let dir =
        std::env::temp_dir().join(format!("callhome-backend-{program}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("callhome.toml");
    std::fs::write(
        &config,
        format!(
            "[[apps]]\nname = \"backend\"\nkey = \"{KEY}\"\norigins = [\"https://app.example\"]\n"
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config);
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/backends")
        .join(script);
    let output = Command::new(program)
        .arg(&script)
        .env("CALLHOME_URL", format!("http://{}", daemon.addr))
        .env("CALLHOME_KEY", KEY)
        .output()
        .unwrap();
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {}:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(stdout)
}

#[test]
fn the_python_backend_example_works_against_the_real_daemon() {
    if let Some(out) = run_example("python3", "callhome_backend.py") {
        assert!(
            out.contains("python backend: all steps as documented"),
            "{out}"
        );
    }
}

#[test]
fn the_node_backend_example_works_against_the_real_daemon() {
    if let Some(out) = run_example("node", "callhome_backend.mjs") {
        assert!(
            out.contains("node backend: all steps as documented"),
            "{out}"
        );
    }
}
