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

pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
