//! The real `callhome` binary on the shipped config/callhome.toml, driven by the README's own
//! curl walk-through, so the commands a newcomer pastes are the commands that are tested.

use std::path::Path;
use std::process::Command;

use crate::support::Daemon;

/// The shell block after the `<!-- walkthrough -->` marker in README.md.
fn walkthrough() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md is readable");
    let after_marker = readme
        .split("<!-- walkthrough")
        .nth(1)
        .expect("README.md has a walkthrough marker");
    let block = after_marker
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```sh block follows the marker");
    block.to_owned()
}

#[test]
fn the_readme_walkthrough_runs_against_the_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let daemon = Daemon::start(&root.join("config/callhome.toml"));
    let script = walkthrough().replace("127.0.0.1:8080", &daemon.addr.to_string());
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "walk-through failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 6, "{stdout}");

    let created: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(created["id"], "d8_KsrcFSSRmMd4ZWLR06g");
    assert_eq!(created["origin"], "http://localhost:3000");
    // The shipped public_url, not the test's port: it is what browsers are told.
    assert_eq!(
        created["iframe_url"],
        "http://127.0.0.1:8080/v1/iframe?id=d8_KsrcFSSRmMd4ZWLR06g&origin=http%3A%2F%2Flocalhost%3A3000"
    );
    // (`waiting` is 1 unless the machine was too slow to start the poll within the README's
    // `sleep 1`; the poll gets the value either way.)
    assert!(lines[1].starts_with(r#"{"seq":1,"waiting":"#), "{stdout}");
    assert_eq!(lines[2], r#"{"seq":1,"info":"42"}"#, "{stdout}");
    assert_eq!(lines[3], r#"{"seq":3,"info":"44"}"#);
    let status: serde_json::Value = serde_json::from_str(lines[4]).unwrap();
    assert_eq!(
        (status["seq"].as_u64(), status["waiting"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(lines[5], "204");
}

#[test]
fn an_invalid_config_stops_start_up_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("callhome-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[apps]]\nname = \"a\"\nkey = \"k\"\norigins = [\"http://a\"]\n\
         [[apps]]\nname = \"b\"\nkey = \"k2\"\norigins = [\"not an origin\"]\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_callhome"))
        .arg("--config")
        .arg(&path)
        // The field named is the first one wrong in the file, whatever the engine.
        .env_remove("CALLHOME_STORE__BACKEND")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("apps[1].origins[0]"), "{stderr}");
}

/// Every id written in the README and docs/api.md that is long enough to be one: an example
/// is what people copy, so it must look like what the docs ask for.
fn example_ids() -> Vec<(&'static str, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ids = Vec::new();
    for file in ["README.md", "docs/api.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for before in [
            "\"id\": \"",
            "\"id\":\"",
            "?id=",
            "&id=",
            "ID=",
            "/v1/ids/",
            "-d id=",
        ] {
            for (at, _) in text.match_indices(before) {
                let id: String = text[at + before.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
                    .collect();
                // Shorter than any id: a placeholder such as `X` (or `$ID`, `{id}`: empty).
                if id.len() >= callhome::id::MIN_LEN {
                    ids.push((file, id));
                }
            }
        }
    }
    ids
}

#[test]
fn the_example_ids_in_the_docs_look_like_128_random_bits() {
    let ids = example_ids();
    assert!(ids.len() >= 10, "the scan found the examples: {ids:?}");
    for (file, id) in ids {
        // 22 base64url characters carry 128 bits; a random one has all three kinds of them.
        let random_looking = id.len() >= 22
            && id.bytes().any(|b| b.is_ascii_uppercase())
            && id.bytes().any(|b| b.is_ascii_lowercase())
            && id.bytes().any(|b| b.is_ascii_digit());
        assert!(
            random_looking,
            "{file}: example id {id:?} does not look like 128 random bits"
        );
        callhome::id::Id::parse(&id).unwrap();
    }
}
