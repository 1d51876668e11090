//! `callhome-bench`: load tool for CallHome (and Nchan, for comparison).
//!
//! The coordinator (this process, running a scenario) creates ids, starts worker processes
//! that hold the waiting clients (`callhome-bench worker`, this same binary), publishes over
//! keep-alive connections, and prints the results. Loopback targets only.
//!
//! Modules: `cli` (flags), `target` (loopback-only base, per-server requests), `http` and
//! `sse` (wire parsing), `client` and `worker` (the waiting side), `fleet` and `protocol`
//! (coordinator to workers), `publisher` (the backend side), `proc` (/proc readings),
//! `report` (percentiles, output), `scenario` (idle, fanout, notify-rate, sse, store, drain).

mod cli;
mod client;
mod clock;
mod fleet;
mod http;
mod ids;
mod net;
mod proc;
mod protocol;
mod publisher;
mod report;
mod scenario;
mod sse;
mod target;
mod worker;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One runtime thread: the machine's cores are shared with the server under test, and a
    // worker's clients are I/O bound.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("callhome-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Worker(args) => worker::run(&cli.common, args).await,
            _ => scenario::run(&cli).await,
        }
    });
    // Do not wait for the blocking stdin reader or thousands of idle sockets to wind down.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callhome-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
