//! `fdm-shim`: the management-plane server. See `docs/shim.md`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use heartbeat_fs::{ClusterId, DatastoreId};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use vcenter_shim::cli;
use vcenter_shim::dsio::DatastoreIo;
use vcenter_shim::service::Shim;
use vcenter_shim::store::{Retention, Store};

#[derive(Debug, Parser)]
#[command(
    name = "fdm-shim",
    version,
    about = "fdm management plane: inventory, HA settings, reports"
)]
struct Args {
    /// Address to serve the API on. Loopback by default: the API has no TLS.
    #[arg(long, default_value = "127.0.0.1:7480")]
    listen: SocketAddr,
    /// File holding the bearer token clients must present.
    #[arg(long)]
    token_file: PathBuf,
    /// SQLite database file (created if missing).
    #[arg(long, default_value = "fdm-shim.db")]
    db: PathBuf,
    /// Where this machine sees datastore ID, as ID=PATH (repeatable). Without it, the shim tries the
    /// mount paths of the hosts that mount the datastore.
    #[arg(long = "datastore-root", value_parser = parse_root)]
    datastore_roots: Vec<(DatastoreId, PathBuf)>,
    /// Events kept in the database; older ones are dropped.
    #[arg(long, default_value_t = 10_000)]
    event_retention: u64,
    /// Days an event is kept after the shim received it; 0 keeps events whatever their age.
    #[arg(long, default_value_t = 30)]
    event_retention_days: u64,
    /// Cluster id written into the config when the database is created; an existing database keeps
    /// its own.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// How often the datastores' reports are read.
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Longest an API call waits for one datastore's IO before answering without it.
    #[arg(long, default_value_t = 5000)]
    io_timeout_ms: u64,
    /// How often failed config writes are retried.
    #[arg(long, default_value_t = 2000)]
    retry_interval_ms: u64,
}

fn parse_root(s: &str) -> Result<(DatastoreId, PathBuf), String> {
    let (id, path) = cli::id_and_path(s, "ID", "datastore")?;
    Ok((DatastoreId(id), PathBuf::from(path)))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // journald and log files get plain text; colour only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let token = cli::read_token(&args.token_file)?;
    if token.len() < 8 {
        bail!(
            "the token in {} is shorter than 8 characters",
            args.token_file.display()
        );
    }
    let roots: BTreeMap<DatastoreId, PathBuf> = args.datastore_roots.into_iter().collect();
    let store = Store::open(&args.db).with_context(|| format!("opening {}", args.db.display()))?;
    let io = DatastoreIo::new(roots, Duration::from_millis(args.io_timeout_ms));
    let shim = Arc::new(Shim::new(
        store,
        ClusterId(args.cluster_id),
        io,
        Retention {
            max_events: args.event_retention,
            max_age: (args.event_retention_days > 0)
                .then(|| Duration::from_secs(args.event_retention_days.saturating_mul(86_400))),
        },
    )?);
    shim.start().await?;
    shim.spawn_background(
        Duration::from_millis(args.poll_interval_ms.max(50)),
        Duration::from_millis(args.retry_interval_ms.max(50)),
    );
    let app = vcenter_shim::api::router(shim, token);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving the API beyond loopback without TLS");
    }
    tracing::info!(%addr, "fdm-shim listening");
    // Tests and scripts read the bound address (useful with port 0) from the first stdout line.
    let mut out = std::io::stdout();
    writeln!(out, "fdm-shim listening on http://{addr}")?;
    out.flush()?;
    // systemd (`Type=notify`): the store is open, the datastores loaded, the API listening.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}
