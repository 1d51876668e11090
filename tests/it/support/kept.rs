//! A daemon's config and snapshot in a temporary directory of their own, for the tests that
//! restart the real binary on the same state (`kill -9`, graceful restarts). The directory
//! goes when the value is dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Daemon;

pub struct Kept {
    dir: PathBuf,
    config: PathBuf,
    snapshot: PathBuf,
}

impl Kept {
    /// A fresh directory named after `name`, holding a config file of `toml`.
    pub fn new(name: &str, toml: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "callhome-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("callhome.toml");
        std::fs::write(&config, toml).unwrap();
        let snapshot = dir.join("state");
        Self {
            dir,
            config,
            snapshot,
        }
    }

    /// The binary on this config and snapshot, on 127.0.0.1 port 0.
    pub fn start(&self) -> Daemon {
        Daemon::start_on(&self.config, "127.0.0.1:0", Some(&self.snapshot), &[])
    }

    /// What the snapshot file holds now.
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.snapshot).expect("the snapshot file was written")
    }

    /// Starts the binary, runs `change` on it, and `kill -9`s it once `change` returned:
    /// whatever `change` was answered must have been written already.
    pub async fn then_kill_9<F: Future<Output = ()>>(&self, change: impl FnOnce(String) -> F) {
        let mut daemon = self.start();
        change(format!("http://{}", daemon.addr)).await;
        daemon.send_signal("KILL");
        daemon.wait_exit();
    }

    /// Starts the binary twice, after the `kill -9` of [`Kept::then_kill_9`] and after a
    /// graceful stop, and runs `check` on each (with the base URL and which round it is).
    pub async fn check_restarts<F: Future<Output = ()>>(
        &self,
        check: impl Fn(String, &'static str) -> F,
    ) {
        for round in ["after kill -9", "after a graceful restart"] {
            let mut daemon = self.start();
            check(format!("http://{}", daemon.addr), round).await;
            assert!(daemon.terminate(), "{round}: graceful exit");
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
