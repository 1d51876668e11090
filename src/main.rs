//! The `callhome` daemon: flags, telemetry, config, bind, run.

use std::path::PathBuf;

use anyhow::Context as _;
use callhome::config::{Config, LogFormat, Overrides};
use callhome::{server, shutdown, telemetry};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: measured faster on the request path and smaller
/// for many small slots (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CallHome: a push relay that holds idle browser connections for web apps.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The TOML config file.
    #[arg(long, env = "CALLHOME_CONFIG", default_value = "config/callhome.toml")]
    config: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:8080 (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Base URL browsers reach this daemon at (overrides `public_url`).
    #[arg(long)]
    public_url: Option<String>,
    /// Tracing filter, e.g. `info` or `callhome=debug` (overrides `log`).
    #[arg(long)]
    log: Option<String>,
    /// Log lines as human-readable `text` or one `json` object each (overrides `log_format`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Move the snapshot file aside (to `<snapshot_path>.discarded-<time>`) and start with no
    /// ids; for a snapshot that is damaged or from an incompatible version.
    #[arg(long)]
    discard_state: bool,
    /// Without a subcommand, the daemon runs.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Manage the apps of a running server through its admin API (`[admin] key`).
    Apps(callhome::cli::AppsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Apps(args)) = &cli.command {
        return apps(&cli, args);
    }
    let overrides = Overrides {
        listen: cli.listen,
        public_url: cli.public_url,
        log: cli.log,
        log_format: cli.log_format,
    };
    let settings = Config::load(&cli.config, &overrides)
        .and_then(|config| config.validate(|var| std::env::var(var).ok()))
        .with_context(|| format!("invalid configuration ({})", cli.config.display()))?;
    telemetry::init(&settings.log, settings.log_format)?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if settings.workers > 0 {
        runtime.worker_threads(settings.workers);
    }
    // Held until the process exits, after the final snapshot: one daemon per snapshot.
    let _lock = settings
        .store
        .snapshot_path
        .as_deref()
        .map(callhome::snapshot::Lock::acquire)
        .transpose()?;
    if cli.discard_state
        && let Some(path) = &settings.store.snapshot_path
        && let Some(aside) = callhome::snapshot::discard(path)?
    {
        tracing::warn!(
            "moved {} aside to {}; starting with no ids",
            path.display(),
            aside.display()
        );
    }
    runtime.enable_all().build()?.block_on(serve(settings))
}

/// `callhome apps ...`: one admin request; exits 1 when the server refused it.
fn apps(cli: &Cli, args: &callhome::cli::AppsArgs) -> anyhow::Result<()> {
    let target = callhome::cli::Target::resolve(
        args,
        std::env::var(callhome::cli::ADMIN_KEY_ENV).ok(),
        || {
            Config::load(&cli.config, &Overrides::default())
                .and_then(|config| config.validate(|var| std::env::var(var).ok()))
                .with_context(|| format!("invalid configuration ({})", cli.config.display()))
        },
    )?;
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(callhome::cli::run(&target, &args.command))?;
    if !outcome.stdout.is_empty() {
        println!("{}", outcome.stdout);
    }
    if !outcome.stderr.is_empty() {
        eprintln!("{}", outcome.stderr);
    }
    if outcome.status != 0 {
        std::process::exit(outcome.status);
    }
    Ok(())
}

async fn serve(settings: callhome::config::Settings) -> anyhow::Result<()> {
    // Each waiting client is a socket: take every file descriptor the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }

    let listener = server::bind(settings.listen)
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, apps = settings.apps.view().len(), "callhome listening on {scheme}://{addr}");
    if let Some(tls) = &settings.tls {
        tracing::info!(
            cert = %tls.files().cert_path.display(),
            "tls: serving HTTP/2 and HTTP/1.1 over TLS only on {addr}"
        );
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(shutdown.clone()));
    server::run(listener, settings, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
