//! The real `callhome` binary, started on a config file and port 0, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Daemon {
    pub addr: SocketAddr,
    child: Child,
}

impl Daemon {
    /// Starts the binary on `config`, listening on 127.0.0.1 port 0.
    pub fn start(config: &Path) -> Self {
        Self::start_on(config, "127.0.0.1:0")
    }

    /// Starts the binary on `config` and `listen`, and waits for the line that announces the
    /// address (no sleeping and hoping).
    pub fn start_on(config: &Path, listen: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_callhome"))
            .arg("--config")
            .arg(config)
            .args(["--listen", listen])
            .env_remove("CALLHOME_LISTEN")
            .env_remove("CALLHOME_PUBLIC_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the callhome binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TEST_LOG").is_some() {
                    println!("daemon: {line}");
                }
                if !sent && let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: SocketAddr = rest
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.parse().ok())
                        .expect("an address follows");
                    tx.send(addr).unwrap();
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the daemon announces its address");
        Self { addr, child }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
