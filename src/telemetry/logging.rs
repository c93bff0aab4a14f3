//! Logging: `tracing` to journald when systemd started us, to stderr otherwise.
//!
//! # Where logs go
//!
//! | `format`   | output |
//! |------------|--------|
//! | `auto`     | journald if stderr *is* the journal stream systemd set up (`JOURNAL_STREAM` names stderr's device and inode), else `text` |
//! | `journald` | the native journal protocol (fails if the journal socket is missing) |
//! | `text`     | human-readable lines on stderr, colored only on a terminal |
//! | `json`     | one JSON object per line on stderr, for log shippers |
//!
//! Comparing `JOURNAL_STREAM` with stderr (as systemd.exec(5) recommends) rather than only
//! checking that it is set means a child started from a journald-logging shell with
//! redirected stderr does not send its logs somewhere the user is not looking.
//!
//! Natively to journald, each event keeps its structured fields as journal fields
//! (`journalctl -u ferry CLASS=...` would need the `F_` prefix: `F_CLASS=telemetry`) and its
//! level as the journal priority, so `journalctl -p warning` works.
//!
//! ## Why `tracing-journald` and not `systemd-journal-logger`
//! The original package list names `systemd-journal-logger`, a logger for the `log` crate.
//! ferry logs with `tracing`; going through `log` would flatten every event's fields into
//! the message text and drop span context. `tracing-journald` (maintained in the tokio-rs
//! `tracing` repository) is a `tracing` layer speaking the same native protocol, so fields
//! arrive as journal fields. Dependencies that log through `log` (librdkafka's callbacks via
//! rdkafka, rumqttd) reach the same output through `tracing-log`.
//!
//! # Levels
//!
//! The level comes from the config (`info` by default); `RUST_LOG`, when set, overrides it
//! completely, with the usual `EnvFilter` syntax (`ferry::forward=debug,rdkafka=warn`).
//! At `info` ferry logs state changes (link up/down, windows, recovery), never one line per
//! message; errors that can repeat per message or per retry go through [`RateLimited`].

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines are written (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Auto,
    Journald,
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = LoggingError;
    fn from_str(s: &str) -> Result<Self, LoggingError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(LogFormat::Auto),
            "journald" | "journal" => Ok(LogFormat::Journald),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(LoggingError::Format(s.to_string())),
        }
    }
}

/// Where [`init`] ended up sending logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Journald,
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("unknown log format `{0}`: use auto, journald, text or json")]
    Format(String),
    #[error("invalid log level/filter `{filter}` (from {source_name}): {reason}; use a level (error, warn, info, debug, trace) or EnvFilter directives like `info,ferry::forward=debug`")]
    Filter {
        filter: String,
        source_name: &'static str,
        reason: String,
    },
    #[error("cannot open the journald socket (/run/systemd/journal/socket): {0}; use log format `text` when not running under systemd")]
    Journald(std::io::Error),
    #[error("a global logger is already installed: {0}")]
    AlreadyInitialized(String),
}

/// Installs the global subscriber. `level` is the config's level or filter; `RUST_LOG`, when
/// set and non-empty, replaces it. Returns where logs go, so the caller can mention it.
pub fn init(level: &str, format: LogFormat) -> Result<LogOutput, LoggingError> {
    let filter = build_filter(level, std::env::var("RUST_LOG").ok().as_deref())?;
    let output = match format {
        LogFormat::Auto if stderr_is_journal() => LogOutput::Journald,
        LogFormat::Auto | LogFormat::Text => LogOutput::Text,
        LogFormat::Journald => LogOutput::Journald,
        LogFormat::Json => LogOutput::Json,
    };
    let (journald, output, journald_err) = match output {
        LogOutput::Journald => match tracing_journald::layer() {
            Ok(l) => (Some(l.with_syslog_identifier("ferry".into())), output, None),
            // Asked for explicitly: the operator should know. Chosen by `auto`: stderr still
            // reaches the journal through the stream, so fall back and say so once.
            Err(e) if format == LogFormat::Journald => return Err(LoggingError::Journald(e)),
            Err(e) => (None, LogOutput::Text, Some(e)),
        },
        _ => (None, output, None),
    };
    let text = (output == LogOutput::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = (output == LogOutput::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|e| LoggingError::AlreadyInitialized(e.to_string()))?;
    if let Some(e) = journald_err {
        tracing::warn!(error = %e, "journald socket unavailable; logging to stderr");
    }
    Ok(output)
}

fn build_filter(level: &str, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    let (spec, source_name) = match rust_log {
        Some(s) if !s.trim().is_empty() => (s, "RUST_LOG"),
        _ => (level, "the config's log level"),
    };
    // EnvFilter reads a bare word as a target name: a typo like `inof` would silently turn
    // off every log line except those of a module called `inof`. The config is meant to
    // hold a level (or `target=level` directives), so reject bare words there.
    if rust_log.is_none_or(|s| s.trim().is_empty()) {
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        if let Some(bad) = spec.split(',').map(str::trim).find(|d| {
            !d.is_empty() && !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
        }) {
            return Err(LoggingError::Filter {
                filter: spec.to_string(),
                source_name,
                reason: format!("`{bad}` is not a level"),
            });
        }
    }
    EnvFilter::builder()
        .parse(spec)
        .map_err(|e| LoggingError::Filter {
            filter: spec.to_string(),
            source_name,
            reason: e.to_string(),
        })
}

/// True when stderr is the stream systemd connected to the journal (`JOURNAL_STREAM` is
/// `<device>:<inode>` of that stream).
fn stderr_is_journal() -> bool {
    let Ok(spec) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = spec.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // fstat(2) through a duplicate of the fd; the duplicate is closed when dropped.
    let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// Limits a repeating log line (a delivery error per message, a failing reconnect every
/// second) to one line per `period`, counting what it held back.
///
/// ```
/// use std::time::Duration;
/// use ferry::telemetry::logging::RateLimited;
///
/// static PRODUCE_FAILED: RateLimited = RateLimited::new(Duration::from_secs(60));
/// # let err = "broker transport failure";
/// if let Some(suppressed) = PRODUCE_FAILED.check() {
///     tracing::warn!(suppressed, error = %err, "produce failed; retrying");
/// }
/// ```
///
/// The first occurrence logs at once (`suppressed = 0`); later ones within the period are
/// only counted; the first after the period logs with the number held back since the last
/// line. When the condition clears, [`RateLimited::flush`] returns the count not yet
/// reported, so the "recovered" line can carry it. The [`crate::rate_limited`] macro wraps
/// the pattern.
#[derive(Debug)]
pub struct RateLimited {
    period: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub const fn new(period: Duration) -> RateLimited {
        RateLimited {
            period,
            state: Mutex::new(LimiterState {
                last_logged: None,
                suppressed: 0,
            }),
        }
    }

    /// Records one occurrence; `Some(n)` means "log it now", with `n` occurrences held back
    /// since the previous line.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`RateLimited::check`] with an explicit clock, for tests.
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        // A panic while holding this lock cannot leave the two fields inconsistent in a way
        // that matters, so a poisoned lock is simply reused.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last_logged {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last_logged = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }

    /// Returns and clears the occurrences held back since the last line, and lets the next
    /// occurrence log at once.
    pub fn flush(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.last_logged = None;
        std::mem::take(&mut s.suppressed)
    }
}

/// Logs through a [`RateLimited`], adding a `suppressed` field:
/// `rate_limited!(LIMITER, warn, error = %e, "produce failed")`.
#[macro_export]
macro_rules! rate_limited {
    ($limiter:expr, $level:ident, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check() {
            ::tracing::$level!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("auto".parse::<LogFormat>().unwrap(), LogFormat::Auto);
        assert_eq!("JSON".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!(
            "journald".parse::<LogFormat>().unwrap(),
            LogFormat::Journald
        );
        assert!("syslog".parse::<LogFormat>().is_err());
    }

    #[test]
    fn rust_log_overrides_config_level() {
        let f = build_filter("info", Some("ferry=trace")).unwrap();
        assert_eq!(f.to_string(), "ferry=trace");
        let f = build_filter("warn", Some("  ")).unwrap();
        assert_eq!(f.to_string(), "warn");
        let e = build_filter("loud", None).unwrap_err().to_string();
        assert!(e.contains("config's log level"), "{e}");
        let e = build_filter("info", Some("x=[")).unwrap_err().to_string();
        assert!(e.contains("RUST_LOG"), "{e}");
    }

    #[test]
    fn rate_limited_logs_first_then_summaries() {
        let l = RateLimited::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(l.check_at(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(l.check_at(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(l.check_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(l.flush(), 1);
        assert_eq!(l.check_at(t0 + Duration::from_secs(12)), Some(0));
    }

    #[test]
    fn macro_compiles_with_fields_and_plain_message() {
        static L: RateLimited = RateLimited::new(Duration::from_secs(1));
        let e = "boom";
        crate::rate_limited!(L, warn, error = %e, "it failed");
        crate::rate_limited!(L, error, "it failed again");
        assert_eq!(L.flush(), 1);
    }
}
