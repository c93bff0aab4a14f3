//! What an operator sees of a running ferry besides the CLI: logs, metrics, systemd state.
//!
//! - [`logging`]: `tracing` to journald natively when systemd started ferry, readable stderr
//!   otherwise; `RUST_LOG` overrides the configured level; [`logging::RateLimited`] keeps a
//!   repeating error to one line per period.
//! - [`metrics`]: every Prometheus metric ferry exports, named in one place, with cheap
//!   per-class handles for the hot paths; [`http`] serves them on `GET /metrics`.
//! - [`notify`]: `sd_notify` (READY, STATUS, STOPPING, RELOADING, WATCHDOG) and a watchdog
//!   that pings only while the store writer and forwarder loops show progress.
//!
//! Startup order the runtime follows (as ntpd-rs does): logging first, so config and
//! recovery problems are visible; then store recovery, listeners and the metrics server are
//! bound; only then `notify::ready()`, so `systemctl start` returns when ferry really accepts
//! publishes. On SIGTERM: `notify::stopping()`, drain in-flight acks, exit.

//!
//! # Wiring (what `ferry run` does with these pieces)
//!
//! ```no_run
//! # async fn run(store: ferry::store::Store) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use ferry::telemetry::{http::MetricsServer, logging, metrics, notify};
//!
//! logging::init("info", logging::LogFormat::Auto)?; // [log] level / format
//! notify::status("recovering store");
//! // ... Store::open(..) and recovery ...
//! let metrics: Arc<metrics::Metrics> = metrics::global().clone();
//! metrics.watch_store(store.clone()); // scrapes show the store's own figures
//! let server = MetricsServer::bind("127.0.0.1:9464".parse()?).await?; // fail before READY
//! let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
//! let mut rx = stop_rx.clone();
//! tokio::spawn(server.serve(metrics.clone(), async move { let _ = rx.changed().await; }));
//!
//! let forwarder_hb = notify::Heartbeat::new(); // the forwarder loop bumps it, idle or not
//! if let Some(wd) = notify::Watchdog::from_env() {
//!     let s = store.clone();
//!     let wd = wd
//!         .counter("store writer", move || s.io_stats().writer_loops)
//!         .heartbeat("forwarder", &forwarder_hb);
//!     let mut rx = stop_rx.clone();
//!     tokio::spawn(wd.run(async move { let _ = rx.changed().await; }));
//! }
//! // ... bind the MQTT and control listeners, start the forwarder ...
//! notify::ready();
//! notify::status("running");
//! // on SIGTERM:
//! notify::stopping();
//! let _ = stop_tx.send(true);
//! # Ok(()) }
//! ```

pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
