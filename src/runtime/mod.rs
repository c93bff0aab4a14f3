//! `ferry run`: start-up order, signals, reload and shutdown of the daemon.
//!
//! ```text
//!  load config ─▶ logging ─▶ open store (recovery) ─▶ bind metrics ─▶ bind MQTT listener(s)
//!    ─▶ build forwarder ─▶ control socket ─▶ READY=1 ─▶ run until SIGTERM/SIGINT
//!                                                     (SIGHUP: reload)
//!  shutdown: STOPPING=1 ─▶ stop the listeners (in-flight commits finish, their acks go out)
//!    ─▶ stop the forwarder (flush, persist positions) ─▶ close the store ─▶ exit 0
//! ```
//!
//! Like `cli`, this is the binary's edge: errors end as text for a person (or systemd), so it
//! uses `anyhow` and leaves typed errors to the components.

pub mod memory;
pub mod metrics;
pub mod wiring;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::{Config, LogFormat as CfgLogFormat};
use crate::control::server::ControlContext;
use crate::forward::deadletter::DeadLetters;
use crate::forward::Forwarder;
use crate::ingest::{IngestHandle, Server};
use crate::store::Store;
use crate::telemetry::logging::{self, LogFormat};
use crate::telemetry::notify::{self, Watchdog};

/// While the store opens, how often the daemon checks that recovery is still moving (and then
/// asks systemd for three times this much more start-up time).
const RECOVERY_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the daemon with the config at `path` until SIGTERM/SIGINT. Returns the exit status.
pub fn run(path: &Path) -> anyhow::Result<u8> {
    let cfg = Config::load(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cfg, path.to_path_buf()))
}

/// A "stop now" signal every task can wait on.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    async fn wait(mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

fn stop_pair() -> (watch::Sender<bool>, Stop) {
    let (tx, rx) = watch::channel(false);
    (tx, Stop(rx))
}

async fn run_async(cfg: Config, path: PathBuf) -> anyhow::Result<u8> {
    let format = match cfg.log.format {
        CfgLogFormat::Auto => LogFormat::Auto,
        CfgLogFormat::Journald => LogFormat::Journald,
        CfgLogFormat::Text => LogFormat::Text,
        CfgLogFormat::Json => LogFormat::Json,
    };
    logging::init(&cfg.log.level, format).context("setting up logging")?;
    tracing::debug!(allocator = memory::allocator(), "memory allocator");
    for w in cfg.warnings() {
        tracing::warn!("config: {w}");
    }
    // Signals first: a SIGTERM that arrives any time after this (even during recovery, or
    // right after READY) is a graceful stop, never the default kill.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    notify::status("recovering the message store");

    // The store first: nothing is accepted before recovery finished.
    let store_opts = cfg.store_options();
    let data_dir = cfg.storage.data_dir.clone();
    let t0 = std::time::Instant::now();
    // A large backlog on a slow card can take longer to check than `TimeoutStartSec`: while
    // recovery keeps checking segments, ask systemd for more time (a recovery that stops
    // moving gets none, so a wedged disk still fails the start).
    let progress = tokio::spawn(async {
        let mut seen = crate::store::segments_checked();
        let mut tick = tokio::time::interval(RECOVERY_PROGRESS_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = crate::store::segments_checked();
            if now != seen {
                seen = now;
                notify::extend_timeout(RECOVERY_PROGRESS_EVERY * 3);
                notify::status(&format!(
                    "recovering the message store: {now} segments checked"
                ));
            }
        }
    });
    let opened = tokio::task::spawn_blocking(move || Store::open(store_opts)).await;
    progress.abort();
    let (store, report) = opened
        .context("store recovery task")?
        .with_context(|| format!("opening the message store in {}", data_dir.display()))?;
    for a in &report.actions {
        tracing::warn!("recovery: {a}");
    }
    tracing::info!(
        segments = report.segments_scanned,
        bytes = report.bytes_scanned,
        actions = report.actions.len(),
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "message store recovered"
    );

    let telemetry_metrics = crate::telemetry::metrics::global().clone();
    telemetry_metrics.watch_store(store.clone());
    let metrics_server = if cfg.metrics.enabled {
        let addr = wiring_addr(&cfg.metrics.listen)?;
        Some(crate::telemetry::http::MetricsServer::bind(addr).await?)
    } else {
        None
    };

    // MQTT listener (plain, and TLS when configured; one server, shared sessions).
    let classifier = wiring::classifier(&cfg, &store)?;
    let server = Server::bind(wiring::ingest_options(&cfg)?, store.clone(), classifier)
        .await
        .context("starting the MQTT listener")?;
    let ingest_handle = server.handle();

    // Forwarder.
    let dead_letters = DeadLetters::open(&cfg.storage.data_dir).with_context(|| {
        format!(
            "opening the dead-letter store in {}",
            cfg.storage.data_dir.display()
        )
    })?;
    let policy = wiring::policy(&cfg)?;
    let (forwarder, fwd_handle) = Forwarder::new(
        store.clone(),
        dead_letters.clone(),
        wiring::forwarder_options(&cfg),
        Box::new(policy),
    )
    .context("setting up the Kafka forwarder")?;

    metrics::export(
        &telemetry_metrics,
        ingest_handle.metrics(),
        fwd_handle.clone(),
        store.clone(),
    );

    // Control socket: bound before READY so `ferry status` works as soon as systemd says so.
    let reloader = Arc::new(Reloader {
        path: path.clone(),
        current: parking_lot::Mutex::new(cfg.clone()),
        store: store.clone(),
        ingest: ingest_handle.clone(),
    });
    let control_listener =
        crate::control::server::bind(&cfg.control.socket).context("opening the control socket")?;
    let mut ctx = ControlContext::new(store.clone(), cfg.storage.data_dir.clone());
    ctx.forwarder = Some(fwd_handle.clone());
    ctx.dead_letters = Some(Arc::new(dead_letters));
    let r = reloader.clone();
    ctx.reload = Some(Arc::new(move || r.reload().map_err(|e| format!("{e:#}"))));

    let fwd_heartbeat = crate::telemetry::notify::Heartbeat::new();

    // Tasks, each with its own stop signal so shutdown can go in order.
    let (ingest_stop_tx, ingest_stop) = stop_pair();
    let (fwd_stop_tx, fwd_stop) = stop_pair();
    let (aux_stop_tx, aux_stop) = stop_pair();
    let ingest_task = {
        let stop = ingest_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = server.run(stop.wait()).await {
                tracing::error!(error = %e, "MQTT listener failed");
            }
        })
    };
    // The watchdog pings systemd only while both the store writer and the forwarder loop
    // make progress (src/telemetry/notify.rs).
    let watchdog = Watchdog::from_env();
    let forwarder = match &watchdog {
        Some(wd) => forwarder.with_heartbeat(&fwd_heartbeat, wd.beat_every()),
        None => forwarder,
    };
    let fwd_task = tokio::spawn(forwarder.run(fwd_stop.wait()));
    {
        let stop = aux_stop.clone();
        let socket = cfg.control.socket.clone();
        tokio::spawn(async move {
            if let Err(e) =
                crate::control::server::serve_listener(control_listener, &socket, ctx, stop.wait())
                    .await
            {
                tracing::error!(error = %e, "control socket failed");
            }
        });
    }
    if let Some(ms) = metrics_server {
        let stop = aux_stop.clone();
        let m = telemetry_metrics.clone();
        tokio::spawn(async move { ms.serve(m, stop.wait()).await });
    }
    if let Some(wd) = watchdog {
        let s = store.clone();
        let wd = wd
            .counter("store writer", move || s.io_stats().writer_loops)
            .heartbeat("forwarder", &fwd_heartbeat);
        let stop = aux_stop.clone();
        tokio::spawn(async move { wd.run(stop.wait()).await });
    }

    notify::ready();
    notify::status("running");
    tracing::info!(config = %path.display(), "ferry is running");

    drop(cfg);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                notify::notifier().reloading().ok();
                if let Err(e) = reloader.reload() {
                    tracing::error!("reload refused, the running config stays: {e:#}");
                }
                notify::ready();
            }
        }
    }

    // Shutdown in data-flow order.
    notify::stopping();
    let _ = ingest_stop_tx.send(true);
    let _ = ingest_task.await;
    let _ = fwd_stop_tx.send(true);
    match fwd_task.await {
        Ok(report) => tracing::info!(
            unflushed_records = report.unflushed_records,
            acked_records = report.status.acked_records,
            "forwarder stopped"
        ),
        Err(e) => tracing::error!(error = %e, "forwarder task failed"),
    }
    let _ = aux_stop_tx.send(true);
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .context("store close task")?
        .context("closing the message store")?;
    tracing::info!("ferry stopped");
    Ok(0)
}

fn wiring_addr(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    s.parse()
        .with_context(|| format!("metrics.listen `{s}` is not an address like 127.0.0.1:9464"))
}

/// Re-reads the config on SIGHUP or `ferry reload`. Settings that can change live
/// (classification rules, users and ACLs) take effect at once without dropping connections;
/// a change that needs a restart is refused and the running config stays.
struct Reloader {
    path: PathBuf,
    current: parking_lot::Mutex<Config>,
    store: Store,
    ingest: IngestHandle,
}

impl Reloader {
    fn reload(&self) -> anyhow::Result<String> {
        let new = Config::load(&self.path)?;
        let mut current = self.current.lock();
        let restart = current.restart_needed_for(&new);
        if !restart.is_empty() {
            let list: Vec<String> = restart.iter().map(|r| r.to_string()).collect();
            anyhow::bail!(
                "these changes need a restart (`systemctl restart ferry`): {}",
                list.join("; ")
            );
        }
        // The config module counts forward, mapping and log settings as live too, but this
        // build applies only rules, users and ACLs without a restart: refuse anything else
        // rather than pretend it took effect.
        let not_live = unapplied_changes(&current, &new);
        if !not_live.is_empty() {
            anyhow::bail!(
                "these changes take effect only at a restart in this version (`systemctl restart ferry`): {}",
                not_live.join(", ")
            );
        }
        let classifier = wiring::classifier(&new, &self.store)?;
        let auth = crate::ingest::auth::Authenticator::new(&wiring::auth_options(&new)?)
            .context("loading users")?;
        self.ingest.set_classifier(classifier)?;
        self.ingest.set_auth(auth);
        *current = new;
        let msg = "classification rules, users and ACLs reloaded; connections kept".to_string();
        tracing::info!("reload: {msg}");
        Ok(msg)
    }
}

/// Sections that changed between `old` and `new` other than what [`Reloader`] applies live
/// (classification filters and classes, users, anonymous access).
fn unapplied_changes(old: &Config, new: &Config) -> Vec<String> {
    fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    let overrides = |c: &Config| -> Vec<(String, Option<String>, Option<String>)> {
        c.classify
            .rules
            .iter()
            .filter(|r| r.kafka_topic.is_some() || r.kafka_key.is_some())
            .map(|r| (r.filter.clone(), r.kafka_topic.clone(), r.kafka_key.clone()))
            .collect()
    };
    let mut out = Vec::new();
    if differs(&old.forward, &new.forward) {
        out.push("[forward]");
    }
    if differs(&old.kafka, &new.kafka) {
        out.push("[kafka]");
    }
    if differs(&old.classes, &new.classes) {
        out.push("[[class]]");
    }
    if differs(&old.log, &new.log) {
        out.push("[log]");
    }
    if overrides(old) != overrides(new) {
        out.push("kafka_topic/kafka_key of [[classify.rule]]");
    }
    out.into_iter().map(String::from).collect()
}
