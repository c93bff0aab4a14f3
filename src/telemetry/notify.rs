//! systemd service notifications (`sd_notify`) and a watchdog that only pings while ferry's
//! loops make progress.
//!
//! # Protocol
//!
//! With `Type=notify`, systemd passes a unix datagram socket in `NOTIFY_SOCKET` (a path, or
//! an abstract name written with a leading `@`). Each datagram is newline-separated
//! `KEY=VALUE` lines: `READY=1` ends "activating", `STATUS=...` is shown by
//! `systemctl status`, `STOPPING=1` announces a clean shutdown, `WATCHDOG=1` is a keep-alive
//! when the unit has `WatchdogSec=`. Without `NOTIFY_SOCKET` (run by hand, in a container,
//! in CI) every call is a no-op, so the daemon never needs to know how it was started.
//! That is all libsystemd's `sd_notify` does too, which is why this is ~40 lines and not a
//! dependency.
//!
//! # Watchdog
//!
//! A timer that pings unconditionally proves only that the tokio runtime is alive. ferry's
//! failure mode worth a restart is a wedged loop: a store writer stuck in `fdatasync` on a
//! dying SD card, a forwarder deadlocked on a lock. So [`Watchdog`] pings only if *every*
//! probe made progress since the previous tick. A probe is usually a [`Heartbeat`], an
//! atomic counter the loop bumps once per iteration; loops that can sleep (waiting for new
//! records, for a connectivity window) must wake at least every [`Watchdog::beat_every`] and
//! bump it, so that idle is not mistaken for wedged. When a probe stalls, the pings stop, the
//! stall is logged and shown in `STATUS=`, and systemd kills and restarts ferry after
//! `WatchdogSec` — the store's recovery then makes the restart safe.

use std::future::Future;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Errors from sending a notification. The daemon logs them and carries on: a lost
/// notification is systemd's problem to time out on, never a reason to stop serving.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET `{socket}` is not a usable unix socket address: {source}")]
    Address {
        socket: String,
        source: std::io::Error,
    },
    #[error("sending `{state}` to the systemd notify socket `{socket}` failed: {source} (is the service manager still running?)")]
    Send {
        socket: String,
        state: String,
        source: std::io::Error,
    },
}

/// A handle on the notify socket; a no-op when there is none.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    name: String,
    addr: SocketAddr,
    socket: UnixDatagram,
}

impl Notifier {
    /// The notifier systemd asked for via `NOTIFY_SOCKET`, or a no-op one.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(s) if !s.is_empty() => Notifier::new(&s),
            _ => Ok(Notifier::disabled()),
        }
    }

    /// A notifier for an explicit socket (`/run/...` path, or `@name` for the abstract
    /// namespace); tests use this to avoid sharing process environment.
    pub fn new(socket: &str) -> Result<Notifier, NotifyError> {
        let addr_err = |source| NotifyError::Address {
            socket: socket.to_string(),
            source,
        };
        let addr = match socket.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(socket),
        }
        .map_err(addr_err)?;
        let sock = UnixDatagram::unbound().map_err(addr_err)?;
        Ok(Notifier {
            target: Some(Arc::new(Target {
                name: socket.to_string(),
                addr,
                socket: sock,
            })),
        })
    }

    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends raw `KEY=VALUE` lines in one datagram.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(t) = &self.target else { return Ok(()) };
        t.socket
            .send_to_addr(state.as_bytes(), &t.addr)
            .map(drop)
            .map_err(|source| NotifyError::Send {
                socket: t.name.clone(),
                state: state.to_string(),
                source,
            })
    }

    pub fn ready(&self) -> Result<(), NotifyError> {
        self.notify("READY=1")
    }
    /// A one-line status for `systemctl status` (newlines would start new keys, so they
    /// become spaces).
    pub fn status(&self, msg: &str) -> Result<(), NotifyError> {
        self.notify(&format!("STATUS={}", msg.replace('\n', " ")))
    }
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1")
    }
    /// Announces a configuration reload (after SIGHUP); send [`Notifier::ready`] when done.
    /// `MONOTONIC_USEC` lets a `Type=notify-reload` unit match the reload to this message.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec we pass; CLOCK_MONOTONIC always exists
        // on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
    }
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }
    /// Asks systemd for `by` more time for the current start-up or shutdown step
    /// (`EXTEND_TIMEOUT_USEC`), e.g. while store recovery is still making progress.
    pub fn extend_timeout(&self, by: Duration) -> Result<(), NotifyError> {
        self.notify(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()))
    }
}

/// The process's notifier (from `NOTIFY_SOCKET`, read once), for tasks that need their own
/// handle, e.g. [`Watchdog::new`].
pub fn notifier() -> Notifier {
    global().clone()
}

fn global() -> &'static Notifier {
    static GLOBAL: OnceLock<Notifier> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "systemd notifications disabled");
            Notifier::disabled()
        })
    })
}

fn log_failure(r: Result<(), NotifyError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "systemd notification not delivered");
    }
}

/// `READY=1` on the `NOTIFY_SOCKET` notifier: send after recovery finished and every
/// listener is bound. Failures are logged, never fatal.
pub fn ready() {
    log_failure(global().ready());
}
/// `STATUS=msg` on the `NOTIFY_SOCKET` notifier.
pub fn status(msg: &str) {
    log_failure(global().status(msg));
}
/// `STOPPING=1` on the `NOTIFY_SOCKET` notifier: send when a graceful shutdown begins.
pub fn stopping() {
    log_failure(global().stopping());
}
/// `EXTEND_TIMEOUT_USEC` on the `NOTIFY_SOCKET` notifier; see [`Notifier::extend_timeout`].
pub fn extend_timeout(by: Duration) {
    log_failure(global().extend_timeout(by));
}
/// `WATCHDOG=1` on the `NOTIFY_SOCKET` notifier. Prefer [`Watchdog`], which checks progress.
pub fn watchdog() {
    log_failure(global().watchdog());
}

/// The watchdog timeout systemd enforces (`WATCHDOG_USEC`), if it is meant for this process
/// (`WATCHDOG_PID` unset or equal to our pid).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A progress counter a loop bumps once per iteration; cheap to clone and to bump.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat::default()
    }
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Something the watchdog asks "did you make progress since I last asked?".
pub trait Probe: Send {
    fn progressed(&mut self) -> bool;
}

/// A heartbeat as seen by the watchdog: progress means the counter moved.
struct HeartbeatProbe {
    hb: Heartbeat,
    last: u64,
}

impl Probe for HeartbeatProbe {
    fn progressed(&mut self) -> bool {
        let now = self.hb.count();
        let moved = now != self.last;
        self.last = now;
        moved
    }
}

/// Any closure works as a probe, e.g. one that checks an "oldest unfinished commit" age.
impl<F: FnMut() -> bool + Send> Probe for F {
    fn progressed(&mut self) -> bool {
        self()
    }
}

/// Pings systemd's watchdog only while every probe makes progress (see the module docs).
pub struct Watchdog {
    notifier: Notifier,
    tick: Duration,
    probes: Vec<(String, Box<dyn Probe>)>,
}

impl Watchdog {
    /// A watchdog for a systemd timeout of `timeout` (from [`watchdog_interval`]). It checks
    /// and pings every `timeout / 2`, as `sd_watchdog_enabled(3)` recommends, so one slow
    /// tick does not cost a restart.
    pub fn new(notifier: Notifier, timeout: Duration) -> Watchdog {
        Watchdog {
            notifier,
            tick: (timeout / 2).max(Duration::from_millis(1)),
            probes: Vec::new(),
        }
    }

    /// The watchdog systemd asked for (`WATCHDOG_USEC` for this pid), on the process's
    /// notifier; `None` when the unit has no `WatchdogSec=` or ferry was not started by
    /// systemd. Add probes, then spawn [`Watchdog::run`].
    pub fn from_env() -> Option<Watchdog> {
        let timeout = watchdog_interval()?;
        Some(Watchdog::new(notifier(), timeout))
    }

    /// Watches `hb`: its loop must bump it at least every [`Watchdog::beat_every`].
    pub fn heartbeat(mut self, name: &str, hb: &Heartbeat) -> Watchdog {
        let last = hb.count();
        self.probes.push((
            name.to_string(),
            Box::new(HeartbeatProbe {
                hb: hb.clone(),
                last,
            }),
        ));
        self
    }

    /// Watches a counter read through `read` (e.g. the store writer's
    /// `store.io_stats().writer_loops`): progress means the value changed since the last tick.
    pub fn counter(self, name: &str, mut read: impl FnMut() -> u64 + Send + 'static) -> Watchdog {
        let mut last = read();
        self.probe(name, move || {
            let now = read();
            let moved = now != last;
            last = now;
            moved
        })
    }

    pub fn probe(mut self, name: &str, probe: impl Probe + 'static) -> Watchdog {
        self.probes.push((name.to_string(), Box::new(probe)));
        self
    }

    /// How often the watchdog checks and pings.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// How often a watched loop must beat, even when idle: twice per tick, so a loop that
    /// just started a wait is never judged on a tick it could not reach.
    pub fn beat_every(&self) -> Duration {
        self.tick / 2
    }

    /// One check: pings when every probe progressed. Returns the names of the stalled ones
    /// (empty means it pinged).
    pub fn check(&mut self) -> Vec<String> {
        // Ask every probe, not just until the first stall, so that each one's baseline moves
        // on every tick.
        let stalled: Vec<String> = self
            .probes
            .iter_mut()
            .filter_map(|(name, p)| (!p.progressed()).then(|| name.clone()))
            .collect();
        if stalled.is_empty() {
            if let Err(e) = self.notifier.watchdog() {
                tracing::warn!(error = %e, "watchdog ping not delivered");
            }
        }
        stalled
    }

    /// Checks every [`Watchdog::tick`] until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut timer = tokio::time::interval(self.tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval fires at once; skip it so probes get one full tick.
        timer.tick().await;
        let mut was_stalled = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = timer.tick() => {}
            }
            let stalled = self.check();
            if !stalled.is_empty() {
                tracing::error!(
                    stalled = ?stalled,
                    "watchdog: loops made no progress; withholding the keep-alive so systemd \
                     restarts ferry if they stay stuck"
                );
                let _ = self.notifier.status(&format!(
                    "stalled: {} not making progress",
                    stalled.join(", ")
                ));
                was_stalled = true;
            } else if was_stalled {
                tracing::warn!("watchdog: all loops making progress again");
                let _ = self.notifier.status("running");
                was_stalled = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_respects_pid() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
    }

    #[test]
    fn disabled_notifier_is_a_no_op() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready().unwrap();
        n.watchdog().unwrap();
    }

    #[test]
    fn abstract_socket_receives_states() {
        let name = format!("ferry-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        n.status("line one\nline two").unwrap();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=line one line two");
        n.reloading().unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..len])
            .unwrap()
            .starts_with("RELOADING=1\nMONOTONIC_USEC="));
        n.extend_timeout(Duration::from_secs(30)).unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"EXTEND_TIMEOUT_USEC=30000000");
    }

    #[test]
    fn check_pings_only_when_all_probes_progress() {
        let name = format!("ferry-watchdog-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_nonblocking(true).unwrap();
        let writer = Heartbeat::new();
        let forwarder = Heartbeat::new();
        let mut wd = Watchdog::new(
            Notifier::new(&format!("@{name}")).unwrap(),
            Duration::from_secs(2),
        )
        .heartbeat("store writer", &writer)
        .heartbeat("forwarder", &forwarder);
        writer.beat();
        forwarder.beat();
        assert!(wd.check().is_empty());
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        forwarder.beat();
        assert_eq!(wd.check(), vec!["store writer".to_string()]);
        assert!(
            rx.recv(&mut buf).is_err(),
            "no ping while the writer is stalled"
        );
    }
}
