//! `drain`: how a server's shutdown ends the long polls it holds.
//!
//! The tool holds N polls, says when all are held (`--ready-file`) and waits for the server to
//! exit; whoever runs it sends the signal (`bench/restart.sh`) and times the exit. Each client
//! polls once, so each held poll ends exactly once and is counted by how: answered (204, as
//! CallHome answers at shutdown; Nchan's 304 or 408), with a value, cut (closed or broken
//! before an answer), with another answer, or never.
//!
//! Run the server with a poll timeout longer than the run (CallHome:
//! `CALLHOME_LIMITS__POLL_TIMEOUT`): a poll that times out before the signal is answered
//! 204 too, and would be counted as released by the drain.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::time::Instant;

use super::Context;
use crate::cli::{DrainArgs, Record};
use crate::fleet::Plan;
use crate::proc;
use crate::protocol::ClientCounts;
use crate::report::{self, round3};
use crate::target::{Kind, Transport};

/// How often the server's process is looked at while waiting for it to exit.
const EXIT_CHECK: Duration = Duration::from_millis(20);
/// Time for the clients to read what the server sent just before it exited.
const AFTER_EXIT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
struct DrainReport {
    scenario: &'static str,
    target: Kind,
    clients: usize,
    workers: usize,
    run: String,
    server_pid: u32,
    /// Polls held when the tool said ready.
    ready: u64,
    not_ready: u64,
    connect_secs: f64,
    /// From saying ready to seeing the server gone, in 20 ms steps. It includes the wait for
    /// the signal: the one who sends it times the exit itself.
    exit_seen_secs: f64,
    #[serde(flatten)]
    ends: Ends,
    create_errors: usize,
}

/// How the clients' single polls ended. Clients that never got to wait (`not_ready`, normally
/// 0) are in `cut`, `other_answers` or `failed_connects`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct Ends {
    /// Answered `204` (Nchan: 304 or 408): released.
    answered: u64,
    /// Answered with a value; nothing is published, so normally 0.
    values: u64,
    /// The connection closed or broke before an answer.
    cut: u64,
    /// Any other answer.
    other_answers: u64,
    failed_connects: u64,
    /// No end seen: still open after the server was gone.
    unended: u64,
}

impl Ends {
    fn of(counts: &ClientCounts) -> Self {
        let mut ends = Self {
            answered: counts.repolls,
            values: counts.deliveries + counts.duplicates + counts.wrong,
            cut: counts.early_closes,
            other_answers: counts.unexpected_answers,
            failed_connects: counts.failed_connects,
            unended: 0,
        };
        let ended = ends.answered + ends.values + ends.cut + ends.other_answers;
        ends.unended =
            (counts.ready + counts.not_ready).saturating_sub(ended + ends.failed_connects);
        ends
    }
}

pub async fn run(ctx: &Context, args: &DrainArgs) -> anyhow::Result<()> {
    let pid = super::idle::server_pid(ctx, args.server_pid)?;
    // The ids are not deleted at the end: the server is gone by then.
    let ids = super::create_ids(ctx, args.clients, 16).await?;
    let plan = Plan {
        clients: args.clients,
        transport: Transport::Poll,
        run: ids.run.clone(),
        id_modulo: None,
        ids_per_client: 1,
        record: Record::Counts,
        single_poll: true,
    };
    let mut started = super::start_fleet(ctx, &plan).await?;
    started
        .fleet
        .watch(Duration::from_secs(args.settle_secs))
        .await?;
    let ready = started.readiness.ready;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{ready}\n"))
            .with_context(|| format!("cannot write --ready-file {}", path.display()))?;
    }
    ctx.progress(format_args!(
        "{ready} polls held; waiting up to {} s for the server (pid {pid}) to exit",
        args.wait_secs
    ));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(args.wait_secs);
    while proc::running(pid) {
        if Instant::now() >= deadline {
            bail!(
                "the server (pid {pid}) still runs {} s after the polls were held",
                args.wait_secs
            );
        }
        started.fleet.watch(EXIT_CHECK).await?;
    }
    let exit_seen_secs = t0.elapsed().as_secs_f64();
    ctx.progress(format_args!(
        "the server is gone after {exit_seen_secs:.2} s; collecting how the polls ended"
    ));
    started.fleet.watch(AFTER_EXIT).await?;
    let (counts, _) = super::stop_fleet(started.fleet).await?;

    let result = DrainReport {
        scenario: "drain",
        target: ctx.target.kind,
        clients: args.clients,
        workers: started.workers,
        run: ids.run.clone(),
        server_pid: pid,
        ready,
        not_ready: started.readiness.not_ready,
        connect_secs: round3(started.connect_secs),
        exit_seen_secs: round3(exit_seen_secs),
        ends: Ends::of(&counts),
        create_errors: ids.create_errors,
    };
    report::emit(ctx.common.json, &human(&result), &result)?;
    Ok(())
}

fn human(r: &DrainReport) -> String {
    let e = &r.ends;
    format!(
        "drain {target}: {ready}/{clients} polls held ({workers} worker(s)); the server was \
         gone {exit:.2} s after that\n\
         \x20 held polls: {answered} answered, {cut} cut, {other} other answers, {values} \
         values, {unended} never ended ({failed} failed connects)",
        target = r.target.as_arg(),
        ready = r.ready,
        clients = r.clients,
        workers = r.workers,
        exit = r.exit_seen_secs,
        answered = e.answered,
        cut = e.cut,
        other = e.other_answers,
        values = e.values,
        unended = e.unended,
        failed = e.failed_connects,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_poll_is_counted_by_how_it_ended() {
        let counts = ClientCounts {
            ready: 10,
            not_ready: 1,
            failed_connects: 1,
            early_closes: 2,
            unexpected_answers: 1,
            repolls: 5,
            ..ClientCounts::default()
        };
        let ends = Ends::of(&counts);
        assert_eq!(
            ends,
            Ends {
                answered: 5,
                values: 0,
                cut: 2,
                other_answers: 1,
                failed_connects: 1,
                unended: 2,
            }
        );
        let json = serde_json::to_string(&ends).expect("serialises");
        assert!(json.contains(r#""answered":5"#) && json.contains(r#""unended":2"#));
    }
}
