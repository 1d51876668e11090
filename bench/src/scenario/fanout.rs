//! `fanout`: N waiting clients, then one publish to every id; how fast does everyone hear?
//!
//! The coordinator stamps each publish with the wall-clock time just before it is written;
//! the workers stamp each delivery the moment its bytes arrive; latency is the difference.
//! A round ends when every waiting client has its value or `--wait-secs` after the round's
//! last publish; what has not arrived by then is missing.

use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Context;
use crate::cli::{PublishArgs, Record};
use crate::fleet::Plan;
use crate::ids;
use crate::protocol::{Delivery, WorkerEvent};
use crate::publisher::{self, Jobs, Tally};
use crate::report::{self, Latency, round3};
use crate::target::{self, Kind, Transport};

#[derive(Debug, Serialize)]
struct FanoutReport {
    scenario: &'static str,
    target: Kind,
    transport: Transport,
    clients: usize,
    conns: usize,
    workers: usize,
    rounds: u32,
    run: String,
    ready: u64,
    connect_secs: f64,
    publishes: usize,
    publish_errors: usize,
    publish_secs: f64,
    publish_per_sec: f64,
    /// First publish sent to last delivery received, the slowest round.
    all_answered_secs: Option<f64>,
    latency_p50_ms: Option<f64>,
    latency_p90_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    /// (id, round) pairs with no delivery within the wait.
    missing: usize,
    duplicates: u64,
    wrong: u64,
    /// Deliveries that came after their round's wait had ended.
    late: usize,
    /// CallHome: sum of the notify answers' `waiting` (polls held when each notify landed).
    waiting_at_publish: Option<u64>,
    connect_errors: u64,
    failed_connects: u64,
    early_closes: u64,
    unexpected_answers: u64,
    repolls: u64,
    reconnects: u64,
    create_errors: usize,
}

/// Receive times per round and id, as deliveries come in.
struct Arrivals {
    /// `[round - 1][id]`: ns since the epoch, 0 for none yet.
    at: Vec<Vec<u64>>,
    delivered: Vec<usize>,
    /// Rounds whose wait has ended.
    closed: Vec<bool>,
    duplicates: u64,
    late: usize,
}

impl Arrivals {
    fn new(rounds: usize, clients: usize) -> Self {
        Self {
            at: vec![vec![0; clients]; rounds],
            delivered: vec![0; rounds],
            closed: vec![false; rounds],
            duplicates: 0,
            late: 0,
        }
    }

    fn record(&mut self, records: impl IntoIterator<Item = Delivery>) {
        for Delivery(id, round, ns) in records {
            let r = usize::try_from(round).unwrap_or(usize::MAX).wrapping_sub(1);
            let Some(slot) = self.at.get_mut(r).and_then(|ids| ids.get_mut(id)) else {
                // Not an (id, round) this run published: the workers already count such
                // values as wrong, so this cannot happen short of a bug.
                self.late += 1;
                continue;
            };
            if self.closed[r] {
                self.late += 1;
            } else if *slot != 0 {
                self.duplicates += 1;
            } else {
                *slot = ns;
                self.delivered[r] += 1;
            }
        }
    }
}

pub async fn run(
    ctx: &Context,
    clients: usize,
    transport: Transport,
    args: &PublishArgs,
) -> anyhow::Result<()> {
    let ids = super::create_ids(ctx, clients, args.conns).await?;
    let plan = Plan {
        clients,
        transport,
        run: ids.run.clone(),
        id_modulo: None,
        ids_per_client: 1,
        record: Record::Deliveries,
        single_poll: false,
    };
    let mut started = super::start_fleet(ctx, &plan).await?;
    let rounds = usize::try_from(args.rounds)?;
    let mut arrivals = Arrivals::new(rounds, clients);
    arrivals.record(started.fleet.take_early());
    let mut publishing = Publishing::default();
    for round in 1..=args.rounds {
        publish_round(
            ctx,
            &ids.run,
            clients,
            round,
            args,
            &mut started,
            &mut arrivals,
            &mut publishing,
        )
        .await?;
    }
    let (counts, late) = super::stop_fleet(started.fleet).await?;
    arrivals.record(late);
    super::delete_ids(ctx, &ids).await;

    let (latency, all_answered) = summarize(&publishing.sent_ns, &arrivals.at);
    let publish_secs = publishing.elapsed.as_secs_f64();
    let result = FanoutReport {
        scenario: "fanout",
        target: ctx.target.kind,
        transport,
        clients,
        conns: args.conns,
        workers: started.workers,
        rounds: args.rounds,
        run: ids.run.clone(),
        ready: started.readiness.ready,
        connect_secs: round3(started.connect_secs),
        publishes: publishing.sent,
        publish_errors: publishing.failed,
        publish_secs: round3(publish_secs),
        publish_per_sec: round3(publishing.sent as f64 / publish_secs.max(1e-9)),
        all_answered_secs: all_answered.map(round3),
        latency_p50_ms: latency.map(|l| l.p50),
        latency_p90_ms: latency.map(|l| l.p90),
        latency_p99_ms: latency.map(|l| l.p99),
        latency_max_ms: latency.map(|l| l.max),
        missing: clients * rounds - arrivals.delivered.iter().sum::<usize>(),
        duplicates: counts.duplicates + arrivals.duplicates,
        wrong: counts.wrong,
        late: arrivals.late,
        waiting_at_publish: (ctx.target.kind == Kind::Callhome).then_some(publishing.waiting),
        connect_errors: counts.errors(),
        failed_connects: counts.failed_connects,
        early_closes: counts.early_closes,
        unexpected_answers: counts.unexpected_answers,
        repolls: counts.repolls,
        reconnects: counts.reconnects,
        create_errors: ids.create_errors,
    };
    report::emit(ctx.common.json, &human(&result, latency.as_ref()), &result)?;
    Ok(())
}

/// The publishing of all rounds so far.
#[derive(Debug, Default)]
struct Publishing {
    sent: usize,
    failed: usize,
    waiting: u64,
    elapsed: Duration,
    /// `[round - 1][id]`: send time, ns since the epoch (0: never sent).
    sent_ns: Vec<Vec<u64>>,
}

/// Publishes round `round` to every id while collecting deliveries, until everyone waiting
/// has it or `--wait-secs` after the last publish.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn publish_round(
    ctx: &Context,
    run: &str,
    clients: usize,
    round: u32,
    args: &PublishArgs,
    started: &mut super::Started,
    arrivals: &mut Arrivals,
    publishing: &mut Publishing,
) -> anyhow::Result<()> {
    let r = publishing.sent_ns.len();
    ctx.progress(format_args!(
        "round {round}: publishing to {clients} ids over {} connections",
        args.conns
    ));
    let targets = ctx.targets.clone();
    let run = run.to_owned();
    let mut pool = Some(tokio::spawn(publisher::run(
        args.conns,
        Jobs::Count(clients),
        false,
        move |i| {
            let target = targets.backend(i);
            let request = target.publish(&ids::id_name(&run, i), &ids::info(i, round));
            (target.base.addr, request)
        },
        target::classify_publish,
    )));
    let mut wait_until = None;
    loop {
        let everyone =
            u64::try_from(arrivals.delivered[r]).unwrap_or(u64::MAX) >= started.readiness.ready;
        if pool.is_none() && everyone {
            break;
        }
        tokio::select! {
            tally = join(&mut pool) => {
                let tally = tally?;
                pool = None;
                wait_until = Some(Instant::now() + Duration::from_secs(args.wait_secs));
                if tally.ok == 0 {
                    let why = tally.first_error.unwrap_or_default();
                    bail!("no publish succeeded: {why}");
                }
                ctx.progress(format_args!(
                    "round {round}: {} publishes in {:.2} s ({} failed), {} delivered so far",
                    tally.sent, tally.elapsed.as_secs_f64(), tally.failed, arrivals.delivered[r]
                ));
                publishing.sent += tally.sent;
                publishing.failed += tally.failed;
                publishing.waiting += tally.waiting;
                publishing.elapsed += tally.elapsed;
                publishing.sent_ns.push(tally.sent_ns);
            }
            event = started.fleet.next() => {
                if let WorkerEvent::Deliveries { records } = event? {
                    arrivals.record(records);
                }
            }
            () = sleep_until(wait_until), if wait_until.is_some() => break,
        }
    }
    arrivals.closed[r] = true;
    ctx.progress(format_args!(
        "round {round}: {} of {clients} delivered",
        arrivals.delivered[r]
    ));
    Ok(())
}

/// Latencies (receive - send, ms) over all rounds, and the slowest round's time from its
/// first publish to its last delivery.
fn summarize(sent_ns: &[Vec<u64>], received_ns: &[Vec<u64>]) -> (Option<Latency>, Option<f64>) {
    let mut latencies = Vec::new();
    let mut all_answered: Option<f64> = None;
    for (sent, received) in sent_ns.iter().zip(received_ns) {
        for (&s, &a) in sent.iter().zip(received) {
            if s != 0 && a != 0 {
                latencies.push(a.saturating_sub(s) as f64 / 1e6);
            }
        }
        let first = sent.iter().copied().filter(|&s| s != 0).min();
        let last = received.iter().copied().max().filter(|&a| a != 0);
        if let (Some(first), Some(last)) = (first, last) {
            let secs = last.saturating_sub(first) as f64 / 1e9;
            all_answered = Some(all_answered.map_or(secs, |x| x.max(secs)));
        }
    }
    (Latency::of(latencies), all_answered)
}

/// The publisher pool's result, or never once it has been taken.
async fn join(pool: &mut Option<JoinHandle<Tally>>) -> anyhow::Result<Tally> {
    match pool {
        Some(handle) => handle
            .await
            .map_err(|e| anyhow!("the publishers failed: {e}")),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn human(r: &FanoutReport, latency: Option<&Latency>) -> String {
    let answered = r
        .all_answered_secs
        .map_or_else(|| "nobody".to_owned(), |s| format!("{s:.3} s"));
    let waiting = r
        .waiting_at_publish
        .map_or_else(String::new, |w| format!(", server reported {w} waiting"));
    format!(
        "fanout {target}/{transport}: {ready}/{clients} clients ({workers} worker(s)), \
         {rounds} round(s), {conns} publisher connections\n\
         \x20 {publishes} publishes at {rate:.0}/s ({errors} errors{waiting}); \
         all answered in {answered}\n\
         \x20 latency {latency}\n\
         \x20 missing {missing}, duplicates {dups}, wrong {wrong}, late {late}; \
         {cerr} connection errors, {repolls} re-polls",
        target = r.target.as_arg(),
        transport = r.transport.as_arg(),
        ready = r.ready,
        clients = r.clients,
        workers = r.workers,
        rounds = r.rounds,
        conns = r.conns,
        publishes = r.publishes,
        rate = r.publish_per_sec,
        errors = r.publish_errors,
        latency = report::latency_line(latency),
        missing = r.missing,
        dups = r.duplicates,
        wrong = r.wrong,
        late = r.late,
        cerr = r.connect_errors,
        repolls = r.repolls,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_count_each_id_once_per_round() {
        let mut arrivals = Arrivals::new(2, 3);
        arrivals.record([Delivery(0, 1, 10), Delivery(2, 1, 30), Delivery(0, 1, 11)]);
        assert_eq!((arrivals.delivered[0], arrivals.duplicates), (2, 1));
        arrivals.closed[0] = true;
        arrivals.record([Delivery(1, 1, 40), Delivery(1, 2, 50), Delivery(9, 1, 1)]);
        assert_eq!((arrivals.delivered[1], arrivals.late), (1, 2));
    }

    #[test]
    fn latency_pairs_send_and_receive_times() {
        let sent = vec![vec![1_000_000, 2_000_000, 0]];
        let received = vec![vec![3_000_000, 2_500_000, 0]];
        let (latency, answered) = summarize(&sent, &received);
        let latency = latency.expect("two samples");
        assert!((latency.p50 - 0.5).abs() < 1e-9 && (latency.max - 2.0).abs() < 1e-9);
        assert!((answered.expect("delivered") - 0.002).abs() < 1e-12);
    }
}
