//! Time as the forwarder's policies see it: a monotonic instant and a local wall-clock time.
//!
//! The policies ([`super::window`], [`super::throttle`], [`super::schedule`]) are pure logic:
//! they never read a clock themselves, they are handed a [`Now`]. The forwarder reads one
//! [`Now`] per decision from a [`Clock`] so that both halves of it agree, and tests drive a
//! [`ManualClock`] through weeks of simulated time in microseconds.
//!
//! Why two times: rates and waits are measured on the monotonic clock (it never jumps, so an
//! NTP step cannot stall or flood the link), while connectivity windows, time-of-day profiles
//! and the daily budget are defined by the operator in local wall-clock terms ("Mon-Fri
//! 22:00-06:00", "resets at midnight"). Local time is a [`NaiveDateTime`]: schedules compare
//! weekday and time of day as the operator reads them on a wall clock. Across a DST change a
//! wall-clock difference can be off by the shift; the policies therefore never sleep past a
//! boundary based on a wall-clock difference alone without re-reading the clock (see
//! [`Now::until_local`]).
//!
//! ```text
//!   SystemClock { offset: None }        Instant::now() + chrono::Local::now()
//!   SystemClock { offset: Some(+02:00) } Instant::now() + Utc::now() shifted by a fixed offset
//!   ManualClock                          both advanced together by advance(); set_local() jumps
//!                                        the wall clock only (an NTP step / DST change)
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{FixedOffset, Local, NaiveDate, NaiveDateTime, Utc};
use parking_lot::Mutex;

/// One reading of the clock: both times taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for rates, waits and deadlines.
    pub mono: Instant,
    /// Local wall-clock time, for schedules and the daily budget.
    pub local: NaiveDateTime,
}

impl Now {
    /// The wall-clock time from now until `later`, as a [`Duration`] (zero when `later` is
    /// not in the future). Used to turn "next window change at 22:00" into a sleep; callers
    /// re-read the clock when it elapses, so a DST shift only makes one sleep early or late.
    pub fn until_local(&self, later: NaiveDateTime) -> Duration {
        (later - self.local).to_std().unwrap_or(Duration::ZERO)
    }
}

/// Source of [`Now`]. Implementations must be cheap: the forwarder reads it once per batch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Reads both clocks.
    fn now(&self) -> Now;
}

/// The real clocks: [`Instant::now`] and the system's local time zone, or a fixed UTC offset.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock {
    /// `None`: the system time zone (`TZ`, `/etc/localtime`), following DST. `Some`: a fixed
    /// offset from UTC, for gateways whose schedules are written in a zone other than the
    /// host's, and for tests.
    pub offset: Option<FixedOffset>,
}

impl SystemClock {
    /// The system time zone.
    pub fn local() -> Self {
        SystemClock { offset: None }
    }

    /// A fixed offset from UTC (no DST).
    pub fn with_offset(offset: FixedOffset) -> Self {
        SystemClock {
            offset: Some(offset),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Now {
        let mono = Instant::now();
        let local = match self.offset {
            None => Local::now().naive_local(),
            Some(off) => Utc::now().with_timezone(&off).naive_local(),
        };
        Now { mono, local }
    }
}

/// A clock that moves only when told to. Clones share the same time, so a test keeps one
/// handle and gives another to the code under test.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<Now>>,
}

impl ManualClock {
    /// A clock whose wall clock reads `local`; the monotonic part starts at the real
    /// `Instant::now()` (an `Instant` cannot be built from nothing) and moves only by
    /// [`advance`](Self::advance).
    pub fn new(local: NaiveDateTime) -> Self {
        ManualClock {
            inner: Arc::new(Mutex::new(Now {
                mono: Instant::now(),
                local,
            })),
        }
    }

    /// A clock at `y-m-d h:m:s` local time. Panics on an invalid date: for tests only.
    pub fn at(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> Self {
        Self::new(local_dt(y, m, d, h, min, s))
    }

    /// Moves both clocks forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut now = self.inner.lock();
        now.mono += d;
        // chrono's Duration covers ±292 billion years; a test never reaches that.
        now.local += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    }

    /// Sets the wall clock only, as an NTP step or a DST change would.
    pub fn set_local(&self, local: NaiveDateTime) {
        self.inner.lock().local = local;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Now {
        *self.inner.lock()
    }
}

/// Builds a local date-time, panicking on an invalid one. For tests and examples.
pub fn local_dt(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(y, m, d)
        .and_then(|date| date.and_hms_opt(h, min, s))
        .unwrap_or_else(|| panic!("invalid local date-time {y}-{m}-{d} {h}:{min}:{s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_halves_together() {
        let clock = ManualClock::at(2026, 11, 20, 23, 59, 30);
        let handle = clock.clone();
        let t0 = clock.now();
        handle.advance(Duration::from_secs(45));
        let t1 = clock.now();
        assert_eq!(t1.mono - t0.mono, Duration::from_secs(45));
        assert_eq!(t1.local, local_dt(2026, 11, 21, 0, 0, 15));
    }

    #[test]
    fn set_local_jumps_wall_clock_only() {
        let clock = ManualClock::at(2026, 3, 29, 1, 59, 0);
        let t0 = clock.now();
        clock.set_local(local_dt(2026, 3, 29, 3, 0, 0));
        let t1 = clock.now();
        assert_eq!(t1.mono, t0.mono);
        assert_eq!(t1.local, local_dt(2026, 3, 29, 3, 0, 0));
    }

    #[test]
    fn until_local_is_zero_for_the_past() {
        let now = ManualClock::at(2026, 1, 1, 12, 0, 0).now();
        assert_eq!(
            now.until_local(local_dt(2026, 1, 1, 11, 0, 0)),
            Duration::ZERO
        );
        assert_eq!(
            now.until_local(local_dt(2026, 1, 1, 12, 1, 0)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn system_clock_with_offset_differs_from_utc_by_the_offset() {
        let off = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        let shifted = SystemClock::with_offset(off).now().local;
        let utc = Utc::now().naive_utc();
        let diff = (shifted - utc).num_seconds();
        assert!((diff - 19800).abs() <= 2, "diff {diff}");
        // The system zone path must not panic and should be within a day of UTC.
        let local = SystemClock::local().now().local;
        assert!((local - utc).num_hours().abs() <= 14);
    }
}
