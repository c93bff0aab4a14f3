//! The seam between the forwarder's delivery machinery and its sending policy.
//!
//! The delivery loop ([`super::Forwarder`]) knows how to read, produce, track and acknowledge;
//! *when* to send, *which* class goes next and *how fast* is policy: connectivity windows,
//! the priority scheduler with minimum shares, and the byte-rate throttle (the `window`,
//! `schedule` and `throttle` modules). The loop asks a [`Policy`] three questions per batch and
//! reports back what it sent; everything time-dependent lives behind this trait so the loop can
//! be tested against a real broker without waiting for a schedule, and the policies can be
//! tested with a manual clock without a broker.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::NaiveDate;

use crate::store::ClassId;

/// Whether sending is allowed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct WindowState {
    pub open: bool,
    /// Time until the window next opens or closes (None: never changes).
    pub next_change: Option<Duration>,
}

/// A class that has records ready to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub class: ClassId,
    /// Logical bytes waiting in the class (after the reader's position).
    pub backlog_bytes: u64,
}

/// Sending policy: window, scheduler and throttle.
pub trait Policy: Send {
    /// Is the connectivity window open now?
    fn window(&mut self) -> WindowState;
    /// Which of `candidates` sends the next batch (None: none of them now).
    fn pick(&mut self, candidates: &[Candidate]) -> Option<ClassId>;
    /// Takes `bytes` worth of tokens for `class`; `Err(wait)` when the throttle needs `wait`
    /// before these bytes may go (nothing was taken then).
    fn take(&mut self, class: ClassId, bytes: u64) -> Result<(), Duration>;
    /// Reports bytes actually sent for `class` (for minimum-share accounting).
    fn sent(&mut self, class: ClassId, bytes: u64);
    /// Current throttle rate in bytes/s (None: unlimited), for status.
    fn rate_limit(&self) -> Option<u64>;
    /// Largest run of bytes to hand to the producer at once for `class` (None: no limit
    /// beyond the batch and in-flight limits). A throttle returns its bucket capacity here:
    /// it lets a whole run go when the bucket allows its first bytes and charges the rest as
    /// debt, so runs larger than the bucket would make short drains overshoot the rate.
    fn max_run_bytes(&self, _class: ClassId) -> Option<u64> {
        None
    }
    /// Bytes left in today's budget (None: no budget), for status and the drain forecast.
    fn budget_left(&self) -> Option<u64> {
        None
    }
    /// The configured policy as the drain forecast models it ([`super::eta`]); `None` means
    /// always open, unthrottled, strict priority by class id.
    fn drain_model(&self) -> Option<super::eta::DrainModel> {
        None
    }
}

/// Always open, unthrottled, strict priority by class order (class 0 first). What the
/// forwarder uses when no schedule is configured, and in delivery tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unlimited;

impl Policy for Unlimited {
    fn window(&mut self) -> WindowState {
        WindowState {
            open: true,
            next_change: None,
        }
    }
    fn pick(&mut self, candidates: &[Candidate]) -> Option<ClassId> {
        candidates.iter().map(|c| c.class).min()
    }
    fn take(&mut self, _class: ClassId, _bytes: u64) -> Result<(), Duration> {
        Ok(())
    }
    fn sent(&mut self, _class: ClassId, _bytes: u64) {}
    fn rate_limit(&self) -> Option<u64> {
        None
    }
}

/// The configured policies: connectivity windows ([`super::window::Windows`]), the priority
/// scheduler with minimum shares ([`super::schedule::Scheduler`]) and the byte-rate throttle
/// ([`super::throttle::Throttles`]), read against one [`super::clock::Clock`].
///
/// The operator's overrides live in the forwarder's control cell
/// ([`super::ForwarderHandle`]): "drain now" bypasses [`Policy::window`] and paused classes
/// are never offered to [`Policy::pick`], so the windows' and the scheduler's own override
/// state stays unused here.
pub struct Configured {
    clock: std::sync::Arc<dyn super::clock::Clock>,
    windows: super::window::Windows,
    scheduler: super::schedule::Scheduler,
    throttles: super::throttle::Throttles,
    budget_file: Option<BudgetFile>,
}

impl Configured {
    pub fn new(
        clock: std::sync::Arc<dyn super::clock::Clock>,
        windows: super::window::Windows,
        scheduler: super::schedule::Scheduler,
        throttles: super::throttle::Throttles,
    ) -> Self {
        Configured {
            clock,
            windows,
            scheduler,
            throttles,
            budget_file: None,
        }
    }

    /// Keeps the daily byte budget's count in `path`, so a restart does not grant a fresh
    /// budget on a metered link: restores today's count from it now, and rewrites it at most
    /// once per [`BUDGET_SAVE_EVERY`] while bytes are sent (and when the policy is dropped).
    /// A crash loses at most that interval's count. An unreadable file is reported and
    /// ignored (the budget then starts from zero, as it would on a new day).
    pub fn with_budget_file(mut self, path: PathBuf) -> Self {
        match BudgetFile::load(&path) {
            Ok(Some((day, used))) => {
                self.throttles.global.restore_budget(day, used);
                let (today, now_used) = self.throttles.global.budget_used();
                tracing::info!(path = %path.display(), day = %today, used = now_used, "daily byte budget restored");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the saved daily byte budget; counting today's budget from zero")
            }
        }
        let saved = self.throttles.global.budget_used();
        self.budget_file = Some(BudgetFile {
            path,
            last_save: None,
            saved,
        });
        self
    }

    /// Recent share of bytes per class (for status and metrics).
    pub fn shares(&self) -> Vec<f64> {
        self.scheduler.shares()
    }

    /// Bytes used of today's budget and the budget day (for status).
    pub fn budget_used(&self) -> (NaiveDate, u64) {
        self.throttles.global.budget_used()
    }

    fn save_budget(&mut self, force: bool) {
        let used = self.throttles.global.budget_used();
        let Some(f) = self.budget_file.as_mut() else {
            return;
        };
        if used == f.saved
            || (!force && f.last_save.is_some_and(|t| t.elapsed() < BUDGET_SAVE_EVERY))
        {
            return;
        }
        f.last_save = Some(Instant::now());
        match BudgetFile::store(&f.path, used) {
            Ok(()) => f.saved = used,
            Err(e) => {
                tracing::warn!(path = %f.path.display(), error = %e, "cannot save the daily byte budget; a restart now would count today's budget from an older figure")
            }
        }
    }
}

impl Drop for Configured {
    fn drop(&mut self) {
        self.save_budget(true);
    }
}

/// How often the daily budget's count is written while bytes are sent.
pub const BUDGET_SAVE_EVERY: Duration = Duration::from_secs(1);

/// The saved daily budget count: one line `YYYY-MM-DD <bytes>`, replaced atomically (write a
/// temporary file, fdatasync, rename).
struct BudgetFile {
    path: PathBuf,
    last_save: Option<Instant>,
    saved: (NaiveDate, u64),
}

impl BudgetFile {
    fn load(path: &Path) -> std::io::Result<Option<(NaiveDate, u64)>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "expected one line `YYYY-MM-DD <bytes>`, found {:?}",
                    text.trim()
                ),
            )
        };
        let mut parts = text.split_whitespace();
        let day = parts
            .next()
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .ok_or_else(bad)?;
        let used = parts
            .next()
            .and_then(|u| u.parse::<u64>().ok())
            .ok_or_else(bad)?;
        Ok(Some((day, used)))
    }

    fn store(path: &Path, (day, used): (NaiveDate, u64)) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{} {used}", day.format("%Y-%m-%d"))?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    }
}

impl Policy for Configured {
    fn window(&mut self) -> WindowState {
        let now = self.clock.now();
        WindowState {
            open: self.windows.is_open(&now),
            next_change: self.windows.time_to_change(&now),
        }
    }
    fn pick(&mut self, candidates: &[Candidate]) -> Option<ClassId> {
        self.scheduler
            .pick(|c| candidates.iter().any(|cand| cand.class == c))
    }
    fn take(&mut self, class: ClassId, bytes: u64) -> Result<(), Duration> {
        let now = self.clock.now();
        self.throttles.check(class, bytes, &now)
    }
    fn sent(&mut self, class: ClassId, bytes: u64) {
        let now = self.clock.now();
        self.throttles.record_sent(class, bytes, &now);
        self.scheduler.record_sent(class, bytes);
        self.save_budget(false);
    }
    fn rate_limit(&self) -> Option<u64> {
        self.throttles.global.current_rate().bytes_per_sec()
    }
    fn max_run_bytes(&self, class: ClassId) -> Option<u64> {
        let class_cap = self
            .throttles
            .classes
            .get(class)
            .and_then(|t| t.as_ref())
            .and_then(|t| t.capacity());
        match (self.throttles.global.capacity(), class_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    fn budget_left(&self) -> Option<u64> {
        self.throttles.global.budget_left()
    }
    fn drain_model(&self) -> Option<super::eta::DrainModel> {
        Some(super::eta::DrainModel {
            windows: self.windows.schedule().clone(),
            global: self.throttles.global.config().clone(),
            class_caps: (0..self.scheduler.len())
                .map(|i| {
                    self.throttles
                        .classes
                        .get(i)
                        .and_then(|t| t.as_ref())
                        .map(|t| t.config().clone())
                })
                .collect(),
            classes: (0..self.scheduler.len())
                .filter_map(|i| self.scheduler.policy(i).cloned())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::forward::clock::{Clock, ManualClock};
    use crate::forward::schedule::{ClassPolicy, Scheduler};
    use crate::forward::throttle::{Rate, Throttle, ThrottleConfig, Throttles};
    use crate::forward::window::{Schedule, Windows};

    const MIB: u64 = 1 << 20;

    fn policy(clock: Arc<ManualClock>, budget: u64) -> Configured {
        let now = clock.now();
        let global = Throttle::new(
            ThrottleConfig {
                rate: Rate::Unlimited,
                daily_budget: Some(budget),
                ..ThrottleConfig::default()
            },
            &now,
        );
        let scheduler = Scheduler::new(vec![ClassPolicy {
            name: "telemetry".into(),
            priority: 1,
            min_share: 0.0,
        }])
        .expect("one class is a valid scheduler");
        Configured::new(
            clock,
            Windows::new(Schedule::always()),
            scheduler,
            Throttles::new(global, vec![None]),
        )
    }

    #[test]
    fn daily_budget_survives_a_restart_but_not_midnight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("forward").join("budget");
        let clock = Arc::new(ManualClock::at(2026, 12, 3, 10, 0, 0));

        let mut p = policy(clock.clone(), 10 * MIB).with_budget_file(path.clone());
        assert_eq!(p.take(0, 4 * MIB), Ok(()));
        p.sent(0, 4 * MIB);
        drop(p); // the daemon stops (or is restarted)
        let text = std::fs::read_to_string(&path).expect("budget file written");
        assert_eq!(text.trim(), format!("2026-12-03 {}", 4 * MIB));

        let p = policy(clock.clone(), 10 * MIB).with_budget_file(path.clone());
        assert_eq!(
            p.budget_used().1,
            4 * MIB,
            "the restart keeps today's count"
        );
        drop(p);

        // The next day the saved count is stale and the budget starts fresh.
        clock.advance(Duration::from_secs(24 * 3600));
        let p = policy(clock.clone(), 10 * MIB).with_budget_file(path.clone());
        assert_eq!(p.budget_used().1, 0);
    }

    #[test]
    fn unreadable_budget_file_is_reported_and_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("budget");
        std::fs::write(&path, "not a budget\n").expect("write");
        let clock = Arc::new(ManualClock::at(2026, 12, 3, 10, 0, 0));
        let p = policy(clock, MIB).with_budget_file(path);
        assert_eq!(p.budget_used().1, 0);
    }
}
