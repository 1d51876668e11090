//! A worker process: holds one share of the waiting clients and reports on its stdout.
//!
//! One process may hold at most ~20,000 open files, so big runs spread clients over several
//! workers (`callhome-bench worker ...`, started by the coordinator). A worker opens its
//! clients with bounded concurrency, says `ready` once every client is waiting or has given
//! up, streams delivery records in batches, and on `stop` (or when stdin closes, or at its
//! deadline) reports its totals and exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::cli::{Common, Record, WorkerArgs};
use crate::client::{self, Client, Shared};
use crate::protocol::{Command, Delivery, WorkerEvent};
use crate::target::Target;
use crate::{ids, net};

/// Deliveries per batch line at most.
const BATCH: usize = 2000;
/// How often readiness is checked and a partial batch is sent.
const TICK: Duration = Duration::from_millis(20);
/// Open files a worker needs besides its clients (stdio, the runtime, spare).
const SPARE_FILES: u64 = 64;

pub async fn run(common: &Common, args: &WorkerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(common.max_secs);
    let target = Target::new(common)?;
    let files = net::raise_nofile().context("cannot raise the open-files limit")?;
    ensure!(
        args.count as u64 + SPARE_FILES <= files,
        "{} clients need more than this process's open-files limit of {files}: use more --workers",
        args.count
    );
    let sources = net::source_ips(target.base.addr, common.source_ips);

    let (records_tx, mut records) = match args.record {
        Record::Deliveries => {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        Record::Counts => (None, None),
    };
    let shared = Arc::new(Shared::new(
        target,
        args.transport,
        records_tx,
        args.single_poll,
    ));
    tokio::spawn(open_clients(
        Arc::clone(&shared),
        args.clone(),
        sources,
        common.connect_concurrency,
    ));
    let mut stop = stop_signal();

    let mut out = tokio::io::stdout();
    let mut batch: Vec<Delivery> = Vec::new();
    let mut ready_sent = false;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep_until(deadline) => {
                eprintln!("callhome-bench worker: --max-secs reached, stopping");
                break;
            }
            Some(delivery) = recv(&mut records) => {
                batch.push(delivery);
                if batch.len() >= BATCH {
                    send_batch(&mut out, &mut batch).await?;
                }
            }
            _ = tick.tick() => {
                let settled = shared.stats.settled();
                if !ready_sent && settled >= args.count as u64 {
                    let counts = shared.stats.snapshot();
                    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    let event = WorkerEvent::Ready { ready: counts.ready, errors: counts.not_ready, millis };
                    send(&mut out, &event).await?;
                    ready_sent = true;
                }
                if !batch.is_empty() {
                    send_batch(&mut out, &mut batch).await?;
                }
            }
        }
    }
    if let Some(records) = &mut records {
        while let Ok(delivery) = records.try_recv() {
            batch.push(delivery);
        }
    }
    if !batch.is_empty() {
        send_batch(&mut out, &mut batch).await?;
    }
    let counts = shared.stats.snapshot();
    send(&mut out, &WorkerEvent::Done { counts }).await
}

/// Starts the clients, at most `concurrency` connecting at a time.
async fn open_clients(
    shared: Arc<Shared>,
    args: WorkerArgs,
    sources: Vec<std::net::IpAddr>,
    concurrency: usize,
) {
    let connecting = Arc::new(Semaphore::new(concurrency));
    for global in args.first..args.first + args.count {
        let Ok(permit) = Arc::clone(&connecting).acquire_owned().await else {
            return;
        };
        let per = args.ids_per_client;
        let id_index = args.id_modulo.map_or(global * per, |m| global % m);
        let watch = (per > 1).then(|| {
            (id_index..id_index + per)
                .map(|i| format!("{}.0", ids::id_name(&args.run, i)))
                .collect::<Vec<_>>()
                .join(",")
        });
        let client = Client {
            id_index,
            id: ids::id_name(&args.run, id_index),
            watch,
            source: (!sources.is_empty()).then(|| sources[global % sources.len()]),
        };
        tokio::spawn(client::run(client, Arc::clone(&shared), permit));
    }
}

/// Resolves on a `stop` command or when stdin closes (the coordinator is gone).
fn stop_signal() -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Command>(&line) {
                Ok(Command::Stop) => break,
                Err(e) => eprintln!("callhome-bench worker: ignoring command {line:?}: {e}"),
            }
        }
        let _ = tx.send(());
    });
    rx
}

/// The next delivery, or never when deliveries are not recorded.
async fn recv(records: &mut Option<mpsc::UnboundedReceiver<Delivery>>) -> Option<Delivery> {
    match records {
        Some(records) => records.recv().await,
        None => std::future::pending().await,
    }
}

async fn send_batch(out: &mut tokio::io::Stdout, batch: &mut Vec<Delivery>) -> anyhow::Result<()> {
    let records = std::mem::take(batch);
    send(out, &WorkerEvent::Deliveries { records }).await
}

async fn send(out: &mut tokio::io::Stdout, event: &WorkerEvent) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    out.write_all(&line)
        .await
        .context("writing to the coordinator")?;
    out.flush().await.context("writing to the coordinator")
}
