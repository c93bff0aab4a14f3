//! The seam between the forwarder's delivery machinery and its sending policy.
//!
//! The delivery loop ([`super::Forwarder`]) knows how to read, produce, track and acknowledge;
//! *when* to send, *which* class goes next and *how fast* is policy: connectivity windows,
//! the priority scheduler with minimum shares, and the byte-rate throttle (the `window`,
//! `schedule` and `throttle` modules). The loop asks a [`Policy`] three questions per batch and
//! reports back what it sent; everything time-dependent lives behind this trait so the loop can
//! be tested against a real broker without waiting for a schedule, and the policies can be
//! tested with a manual clock without a broker.

use std::time::Duration;

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
        }
    }

    /// Recent share of bytes per class (for status and metrics).
    pub fn shares(&self) -> Vec<f64> {
        self.scheduler.shares()
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
