//! `store`: memory per stored id with no client attached. Ids need no sockets, so this one
//! is measured at full size (a million ids) rather than at the socket limit.
//!
//! Reads the server's RSS, creates the ids (CallHome), publishes one 16-byte info to each,
//! and reads the RSS again: the difference over the count is what one id with its newest
//! value costs, map and allocator overhead included.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::Context;
use crate::cli::StoreArgs;
use crate::publisher::{self, Jobs};
use crate::report::{self, round3};
use crate::target::{self, Kind};
use crate::{ids, proc};

/// Time for the allocator to settle before the second reading.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
struct StoreReport {
    scenario: &'static str,
    target: Kind,
    ids: usize,
    info_bytes: usize,
    run: String,
    server_pid: u32,
    rss_before: u64,
    rss_after: u64,
    rss_per_id: f64,
    publish_errors: usize,
    create_errors: usize,
}

pub async fn run(ctx: &Context, args: &StoreArgs) -> anyhow::Result<()> {
    let pid = super::idle::server_pid(ctx, args.server_pid)?;
    let rss = || proc::rss_bytes(pid).with_context(|| format!("cannot read /proc/{pid}/status"));
    let rss_before = rss()?;
    let set = super::create_ids(ctx, args.ids, args.conns).await?;

    ctx.progress(format_args!(
        "publishing one info to each of {} ids",
        args.ids
    ));
    let targets = ctx.targets.clone();
    let run = set.run.clone();
    let tally = publisher::run(
        args.conns,
        Jobs::Count(args.ids),
        false,
        move |i| {
            let target = targets.backend(i);
            let request = target.publish(&ids::id_name(&run, i), &ids::info(i, 1));
            (target.base.addr, request)
        },
        target::classify_publish,
    )
    .await;
    if tally.ok == 0 {
        bail!(
            "no publish succeeded: {}",
            tally.first_error.unwrap_or_default()
        );
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after = rss()?;
    // The ids stay for the reading; deleting them is the last step.
    super::delete_ids(ctx, &set).await;

    let result = StoreReport {
        scenario: "store",
        target: ctx.target.kind,
        ids: args.ids,
        info_bytes: ids::info(0, 1).len(),
        run: set.run.clone(),
        server_pid: pid,
        rss_before,
        rss_after,
        rss_per_id: round3(rss_after.saturating_sub(rss_before) as f64 / args.ids as f64),
        publish_errors: tally.failed,
        create_errors: set.create_errors,
    };
    let human = format!(
        "store {}: {} ids with a {}-byte info: server RSS {} -> {}: {} per id ({} create and {} publish errors)",
        result.target.as_arg(),
        result.ids,
        result.info_bytes,
        report::bytes(rss_before as f64),
        report::bytes(rss_after as f64),
        report::bytes(result.rss_per_id),
        result.create_errors,
        result.publish_errors,
    );
    report::emit(ctx.common.json, &human, &result)?;
    Ok(())
}
