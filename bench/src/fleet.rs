//! The coordinator's side of the worker processes: start them, read them, stop them.
//!
//! Each worker is this same binary re-executed as `callhome-bench worker ...`, with a
//! contiguous share of the clients and one `--base` (with several, the workers are split
//! evenly over them, see [`shares`]). One task per worker reads its stdout lines into a
//! channel, so the coordinator never blocks on a quiet worker and a chatty one never blocks
//! on a full pipe. A worker whose stdout ends before it said `done` has died: that fails the
//! run. Workers are killed if the coordinator drops them (a failed or timed-out run).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::cli::{Common, Record};
use crate::protocol::{self, ClientCounts, Delivery, WorkerEvent};
use crate::target::Transport;

/// Most clients one worker may hold: well under the 20,000 open files a process may have.
pub const MAX_CLIENTS_PER_WORKER: usize = 9_500;
/// Clients per worker when `--workers` is not given.
const DEFAULT_CLIENTS_PER_WORKER: usize = 9_000;
/// Seconds a worker may outlive the coordinator's deadline before it stops itself.
const WORKER_GRACE_SECS: u64 = 5;

/// What the workers should do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: usize,
    pub transport: Transport,
    pub run: String,
    /// Client k waits on id k mod this (default: id k).
    pub id_modulo: Option<usize>,
    /// Ids per client, on its one connection (CallHome `watch=`); 1: one id per client.
    pub ids_per_client: usize,
    pub record: Record,
    /// Each client polls once and stops at its first answer or break.
    pub single_poll: bool,
}

/// Worker processes for `clients` clients: `--workers`, or ceil(clients / 9000).
pub fn worker_count(requested: Option<usize>, clients: usize) -> anyhow::Result<usize> {
    let workers = requested.unwrap_or_else(|| clients.div_ceil(DEFAULT_CLIENTS_PER_WORKER));
    let workers = workers.clamp(1, clients.max(1));
    let per_worker = clients.div_ceil(workers);
    if per_worker > MAX_CLIENTS_PER_WORKER {
        bail!(
            "{clients} clients over {workers} workers is {per_worker} per worker, more than \
             {MAX_CLIENTS_PER_WORKER}: use --workers {}",
            clients.div_ceil(MAX_CLIENTS_PER_WORKER)
        );
    }
    Ok(workers)
}

/// Workers for `clients` clients spread over `bases` servers: [`worker_count`], rounded up
/// to a multiple of `bases` so that every base gets as many workers, and so as many clients
/// (within one), as the others. With one base it is `worker_count`.
pub fn worker_count_over(
    requested: Option<usize>,
    clients: usize,
    bases: usize,
) -> anyhow::Result<usize> {
    let workers = worker_count(requested, clients)?;
    let bases = bases.max(1);
    Ok((workers.div_ceil(bases) * bases).min(clients.max(1)))
}

/// One worker's part of the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Global index of its first client.
    pub first: usize,
    pub count: usize,
    /// Index of the `--base` its clients connect to.
    pub base: usize,
}

/// How `clients` clients are split over `workers` workers and `bases` bases: worker k holds
/// the contiguous range `clients*k/workers ..` and connects to base `k*bases/workers`. When
/// `workers` is a multiple of `bases`, base j so holds clients `clients*j/bases ..
/// clients*(j+1)/bases`.
pub fn shares(clients: usize, workers: usize, bases: usize) -> Vec<Share> {
    (0..workers)
        .map(|k| {
            let first = clients * k / workers;
            Share {
                first,
                count: clients * (k + 1) / workers - first,
                base: k * bases / workers,
            }
        })
        .collect()
}

/// What came out of a worker's stdout.
enum Line {
    Event(WorkerEvent),
    Garbage(String),
    End,
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    done: bool,
}

/// The running workers.
pub struct Fleet {
    workers: Vec<Worker>,
    lines: mpsc::UnboundedReceiver<(usize, Line)>,
    /// Deliveries that arrived while waiting for something else.
    early: Vec<Delivery>,
}

/// The workers' `ready` reports, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readiness {
    pub ready: u64,
    pub not_ready: u64,
}

impl Fleet {
    /// Starts the workers; `secs` bounds how long they live.
    pub fn spawn(common: &Common, plan: &Plan, workers: usize, secs: u64) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program to start workers")?;
        let (tx, lines) = mpsc::unbounded_channel();
        let mut started = Vec::with_capacity(workers);
        for (k, share) in shares(plan.clients, workers, common.base.len())
            .into_iter()
            .enumerate()
        {
            let Share { first, count, base } = share;
            let mut command = Command::new(&exe);
            command
                .arg("worker")
                .args(["--target", common.target.as_arg()])
                .args(["--base", &common.base[base]])
                .args(["--max-secs", &(secs + WORKER_GRACE_SECS).to_string()])
                .args(["--source-ips", &common.source_ips.to_string()])
                .args([
                    "--connect-concurrency",
                    &common.connect_concurrency.to_string(),
                ])
                .args(["--transport", plan.transport.as_arg()])
                .args(["--run", &plan.run])
                .args(["--first", &first.to_string()])
                .args(["--count", &count.to_string()])
                .args(["--record", plan.record.as_arg()]);
            if let Some(template) = &common.sub_template {
                command.args(["--sub-template", template]);
            }
            if let Some(m) = plan.id_modulo {
                command.args(["--id-modulo", &m.to_string()]);
            }
            if plan.single_poll {
                command.arg("--single-poll");
            }
            if plan.ids_per_client > 1 {
                command.args(["--ids-per-client", &plan.ids_per_client.to_string()]);
            }
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start worker {k}"))?;
            let stdout = child.stdout.take().context("worker stdout is piped")?;
            let stdin = child.stdin.take();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut stdout = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = stdout.next_line().await {
                    let parsed =
                        serde_json::from_str(&line).map_or(Line::Garbage(line), Line::Event);
                    if tx.send((k, parsed)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((k, Line::End));
            });
            started.push(Worker {
                child,
                stdin,
                done: false,
            });
        }
        Ok(Self {
            workers: started,
            lines,
            early: Vec::new(),
        })
    }

    /// The next event from any worker; an error if a worker died or said something odd.
    /// Cancel-safe: nothing is lost if the future is dropped while waiting.
    pub async fn next(&mut self) -> anyhow::Result<WorkerEvent> {
        loop {
            let Some((k, line)) = self.lines.recv().await else {
                bail!("all workers are gone");
            };
            match line {
                Line::Event(event) => {
                    if matches!(event, WorkerEvent::Done { .. }) {
                        self.workers[k].done = true;
                    }
                    return Ok(event);
                }
                Line::Garbage(line) => bail!("worker {k} said something unexpected: {line:?}"),
                Line::End if self.workers[k].done => {}
                Line::End => {
                    let status = self.workers[k].child.wait().await;
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    bail!("worker {k} died ({status})");
                }
            }
        }
    }

    /// Waits until every worker said `ready`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Readiness> {
        let mut readiness = Readiness::default();
        let mut waiting = self.workers.len();
        let wait = async {
            while waiting > 0 {
                match self.next().await? {
                    WorkerEvent::Ready { ready, errors, .. } => {
                        readiness.ready += ready;
                        readiness.not_ready += errors;
                        waiting -= 1;
                    }
                    WorkerEvent::Deliveries { records } => self.early.extend(records),
                    WorkerEvent::Done { .. } => bail!("a worker stopped before it was ready"),
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| anyhow!("clients not connected after {} s", timeout.as_secs()))??;
        Ok(readiness)
    }

    /// Lets `duration` pass while watching the workers: a worker that dies meanwhile fails
    /// the run at once rather than when it is stopped. Deliveries are kept for later.
    pub async fn watch(&mut self, duration: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Ok(()),
                event = self.next() => match event? {
                    WorkerEvent::Deliveries { records } => self.early.extend(records),
                    WorkerEvent::Ready { .. } => {}
                    WorkerEvent::Done { .. } => bail!("a worker stopped before it was told to"),
                },
            }
        }
    }

    /// Deliveries that arrived while waiting for readiness.
    pub fn take_early(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.early)
    }

    /// Stops every worker and returns their totals, plus deliveries that were still on their
    /// way.
    pub async fn stop(
        mut self,
        timeout: Duration,
    ) -> anyhow::Result<(ClientCounts, Vec<Delivery>)> {
        let mut stop = serde_json::to_vec(&protocol::Command::Stop)?;
        stop.push(b'\n');
        for worker in &mut self.workers {
            if let Some(mut stdin) = worker.stdin.take() {
                // A worker that already exited is reported by `next` below.
                let _ = stdin.write_all(&stop).await;
            }
        }
        let mut counts = ClientCounts::default();
        let mut late = self.take_early();
        let collect = async {
            while self.workers.iter().any(|w| !w.done) {
                match self.next().await? {
                    WorkerEvent::Done { counts: c } => counts += c,
                    WorkerEvent::Deliveries { records } => late.extend(records),
                    WorkerEvent::Ready { .. } => {}
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(timeout, collect)
            .await
            .map_err(|_| anyhow!("workers did not stop within {} s", timeout.as_secs()))??;
        for worker in &mut self.workers {
            let _ = worker.child.wait().await;
        }
        Ok((counts, late))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_default_to_9000_clients_each() {
        assert_eq!(worker_count(None, 500).expect("fits"), 1);
        assert_eq!(worker_count(None, 9_000).expect("fits"), 1);
        assert_eq!(worker_count(None, 19_000).expect("fits"), 3);
        assert_eq!(worker_count(Some(2), 19_000).expect("fits"), 2);
        assert!(worker_count(Some(1), 19_000).is_err());
        assert_eq!(worker_count(Some(8), 3).expect("fits"), 3);
    }

    #[test]
    fn workers_round_up_to_a_multiple_of_the_bases() {
        assert_eq!(worker_count_over(None, 500, 1).expect("fits"), 1);
        assert_eq!(worker_count_over(None, 19_000, 1).expect("fits"), 3);
        assert_eq!(worker_count_over(None, 500, 2).expect("fits"), 2);
        // 76,000 clients on four nodes: ceil(76000 / 9000) = 9 workers, rounded up to 12.
        assert_eq!(worker_count_over(None, 76_000, 4).expect("fits"), 12);
        assert_eq!(worker_count_over(Some(8), 76_000, 4).expect("fits"), 8);
        assert_eq!(worker_count_over(Some(3), 19_000, 2).expect("fits"), 4);
        // Never more workers than clients.
        assert_eq!(worker_count_over(None, 3, 4).expect("fits"), 3);
        assert!(worker_count_over(Some(4), 76_000, 4).is_err());
    }

    #[test]
    fn shares_cover_every_client_once_and_split_evenly_over_the_bases() {
        let one = shares(19_000, 3, 1);
        assert_eq!(one.iter().map(|s| s.count).sum::<usize>(), 19_000);
        assert!(one.iter().all(|s| s.base == 0));
        assert_eq!(one[0].first, 0);

        let four = shares(76_000, 12, 4);
        let mut next = 0;
        let mut per_base = [0; 4];
        for share in &four {
            assert_eq!(share.first, next, "contiguous");
            next += share.count;
            per_base[share.base] += share.count;
        }
        assert_eq!(next, 76_000);
        assert_eq!(per_base, [19_000; 4]);
        // Base j holds clients 19000*j .. 19000*(j+1).
        assert_eq!(
            four[3],
            Share {
                first: 19_000,
                count: 6_333,
                base: 1
            }
        );

        let odd = shares(1_001, 2, 2);
        assert_eq!(
            odd,
            vec![
                Share {
                    first: 0,
                    count: 500,
                    base: 0
                },
                Share {
                    first: 500,
                    count: 501,
                    base: 1
                },
            ]
        );
    }
}
