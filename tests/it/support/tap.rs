//! A recording TCP relay for loopback: put between nginx and CallHome, it passes every byte on
//! unchanged and keeps what CallHome sent back on each connection, so a test sees every answer
//! CallHome wrote on nginx's pooled connections (a smuggled request's answer included), not
//! only the ones nginx chose to pass on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What one relayed connection carried, each direction as one byte string.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// From the client (nginx) to CallHome.
    pub requests: Vec<u8>,
    /// From CallHome back to the client.
    pub answers: Vec<u8>,
}

/// A relay on 127.0.0.1 port 0 in front of `upstream`; stops relaying when dropped.
pub struct Tap {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
    accept: JoinHandle<()>,
}

impl Tap {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let recorded = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue; // the client sees a close, as it would without the relay
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let record = Arc::new(Mutex::new(Recorded::default()));
                recorded.lock().unwrap().push(Arc::clone(&record));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, Arc::clone(&record), true));
                tokio::spawn(pipe(server_read, client_write, record, false));
            }
        });
        Self {
            addr,
            connections,
            accept,
        }
    }

    /// Everything relayed so far, one entry per connection in the order they were accepted.
    pub fn recorded(&self) -> Vec<Recorded> {
        let connections = self.connections.lock().unwrap();
        connections
            .iter()
            .map(|record| record.lock().unwrap().clone())
            .collect()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` and into the record until `from` ends, then half-closes `to`, so a
/// client's FIN reaches the server as a FIN (and the other way round).
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    record: Arc<Mutex<Recorded>>,
    requests: bool,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut record = record.lock().unwrap();
            let side = if requests {
                &mut record.requests
            } else {
                &mut record.answers
            };
            side.extend_from_slice(&chunk[..n]);
        }
        if to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
