//! Throttle: a byte-rate token bucket with time-of-day profiles and a daily budget.
//!
//! # API
//!
//! ```text
//! let mut t = Throttle::new(ThrottleConfig { rate, profiles, daily_budget, .. }, &now);
//! loop {
//!     match t.check(batch_bytes, &now) {          // may I send this batch now?
//!         Err(wait) => sleep(wait),               //   no: re-check after `wait` (never past a
//!                                                 //   profile boundary or the budget reset)
//!         Ok(()) => { let n = send(batch); t.record_sent(n, &now); }   // charge what was sent
//!     }
//! }
//! t.take(bytes, &now)                             // check + record_sent in one step
//! t.allowance(&now)                               // bytes sendable now without waiting: cut
//!                                                 //   a batch to this (at least one record)
//! t.current_rate() / t.tokens() / t.budget_left() // for status and metrics
//! Throttles { global, classes }                   // the global bucket plus optional per-class ones;
//!                                                 //   check_detailed says which one waits
//! "64KiB/s".parse::<Rate>(), parse_bytes("2GiB")  // config values (also serde)
//! ```
//!
//! # The bucket
//!
//! Tokens are bytes; they refill at the current rate up to a capacity of `burst` of rate
//! (default 250 ms). A send is allowed when the bucket holds at least `min(bytes, capacity)`
//! tokens, and then charges the full size, so the bucket may go negative: a batch or record
//! larger than the burst is never stuck (a full bucket always lets it go), it is paid for
//! afterwards by waiting. That is why the capacity need not cover a maximum batch, and why a
//! small burst keeps the average exact even with batches of several seconds of rate.
//! Charging happens on the bytes actually handed to the producer ([`Throttle::record_sent`]),
//! so a partly accepted batch is charged for what went. Over any interval the bytes sent are
//! at most `rate x time + capacity + the last batch` (which may overdraw).
//!
//! ```text
//!  tokens
//!  cap ┤‾‾‾‾╲      ╱‾‾‾╲      ╱‾‾    refill at rate, capped at cap
//!      │     ╲    ╱     ╲    ╱
//!    0 ┼──────╲──╱───────╲──╱─────  a send needs min(bytes, cap) tokens, then charges bytes
//!      │       ╲╱         ╲╱        (debt below 0 is waited off before the next send)
//! ```
//!
//! # Profiles and budget
//!
//! The rate is the first profile whose schedule is open at the local time, else the default
//! rate (e.g. 64 KiB/s on shift, unlimited at night). When time passes across a profile
//! boundary the refill is split at the boundary, so each part is credited at its own rate.
//! The optional daily budget counts bytes sent since local midnight; when the next batch
//! would exceed it, nothing is sent until the local date changes (the first batch of a day is
//! always allowed, so a record larger than the whole budget cannot block a class forever).
//! A wall clock stepped backwards does not reset the budget. The count lives in memory;
//! [`super::policy::Configured::with_budget_file`] saves [`Throttle::budget_used`] to
//! `<data_dir>/forward/budget` and restores it with [`Throttle::restore_budget`], so a restart
//! does not grant a fresh budget.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};

use super::clock::Now;
use super::window::Schedule;

/// How long a caller is told to wait when nothing (no refill, no boundary) will change by
/// itself, e.g. a profile with rate 0 and no other profile. The caller simply re-checks.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A configuration value that is not a valid rate or size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    /// Not a byte rate.
    #[error(
        "invalid rate `{input}`: {reason} (examples: `unlimited`, `64KiB/s`, `1.5 MB/s`, \
         `10Mbit/s`, `131072` for bytes per second)"
    )]
    InvalidRate {
        /// The text given.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// Not a byte size.
    #[error("invalid size `{input}`: {reason} (examples: `2GiB`, `500 MB`, `1048576`)")]
    InvalidSize {
        /// The text given.
        input: String,
        /// What is wrong.
        reason: String,
    },
}

/// A byte rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rate {
    /// No limit.
    #[default]
    Unlimited,
    /// Bytes per second; 0 sends nothing while in effect.
    BytesPerSec(u64),
}

impl Rate {
    /// From bytes per second, `None` meaning unlimited (as config's `ByteRate` gives it).
    pub fn from_bytes_per_sec(b: Option<u64>) -> Rate {
        b.map_or(Rate::Unlimited, Rate::BytesPerSec)
    }

    /// Bytes per second, `None` when unlimited.
    pub fn bytes_per_sec(self) -> Option<u64> {
        match self {
            Rate::Unlimited => None,
            Rate::BytesPerSec(b) => Some(b),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rate::Unlimited => f.write_str("unlimited"),
            Rate::BytesPerSec(b) => write!(f, "{}/s", human_bytes(b)),
        }
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if b >= size && b % size == 0 {
            return format!("{}{unit}", b / size);
        }
    }
    format!("{b}B")
}

/// Splits "1.5 MiB/s" into (1.5, "mib/s").
fn split_number(text: &str) -> Option<(f64, String)> {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..end].parse().ok()?;
    let unit: String = t[end..]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    Some((n, unit))
}

fn unit_factor(unit: &str) -> Option<f64> {
    Some(match unit {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        _ => return None,
    })
}

/// Parses a byte size: `1048576`, `500 MB` (10^6), `2GiB` (2^30).
pub fn parse_bytes(text: &str) -> Result<u64, ThrottleError> {
    let err = |reason: &str| ThrottleError::InvalidSize {
        input: text.to_string(),
        reason: reason.to_string(),
    };
    let (n, unit) = split_number(text).ok_or_else(|| err("it must start with a number"))?;
    let f = unit_factor(&unit)
        .ok_or_else(|| err("unknown unit; use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB"))?;
    let v = (n * f).round();
    if !v.is_finite() || v > u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(v as u64)
}

impl FromStr for Rate {
    type Err = ThrottleError;
    /// `unlimited`, bytes per second as a number, or a size per second (`64KiB/s`), or bits
    /// per second (`10Mbit/s`, decimal prefixes).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ThrottleError::InvalidRate {
            input: text.to_string(),
            reason: reason.to_string(),
        };
        let t = text.trim();
        if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
            return Ok(Rate::Unlimited);
        }
        let (n, unit) =
            split_number(t).ok_or_else(|| err("it must be `unlimited` or start with a number"))?;
        let unit = unit.strip_suffix("/s").unwrap_or(&unit).to_string();
        let bytes = if let Some(prefix) = unit.strip_suffix("bit") {
            let f = match prefix {
                "" => 1.0,
                "k" => 1e3,
                "m" => 1e6,
                "g" => 1e9,
                _ => return Err(err("unknown bit unit; use bit/s, kbit/s, Mbit/s or Gbit/s")),
            };
            n * f / 8.0
        } else {
            n * unit_factor(&unit).ok_or_else(|| {
                err("unknown unit; use B/s, KB/s, KiB/s, MB/s, MiB/s, GB/s, GiB/s or Mbit/s")
            })?
        };
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(err("too large"));
        }
        Ok(Rate::BytesPerSec(bytes.round() as u64))
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    /// A string (`"64KiB/s"`, `"unlimited"`) or an integer number of bytes per second.
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate such as \"64KiB/s\" or \"unlimited\", or bytes per second")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rate, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rate, E> {
                Ok(Rate::BytesPerSec(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rate, E> {
                u64::try_from(v)
                    .map(Rate::BytesPerSec)
                    .map_err(|_| E::custom(format!("a rate cannot be negative ({v})")))
            }
        }
        de.deserialize_any(V)
    }
}

/// A time-of-day rate: while `schedule` is open, the rate is `rate`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateProfile {
    /// When this profile applies, e.g. `"Mon-Fri 06:00-22:00"` (`when` in config files).
    #[serde(alias = "when")]
    pub schedule: Schedule,
    /// The rate while it applies.
    pub rate: Rate,
}

impl RateProfile {
    /// A profile from a schedule string and a rate.
    pub fn parse(
        when: &str,
        rate: Rate,
    ) -> Result<RateProfile, crate::forward::window::ScheduleError> {
        Ok(RateProfile {
            schedule: Schedule::parse(when)?,
            rate,
        })
    }
}

/// Settings of one bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleConfig {
    /// Rate when no profile applies. Default: unlimited.
    pub rate: Rate,
    /// Time-of-day profiles, first open one wins. Default: none.
    pub profiles: Vec<RateProfile>,
    /// Bytes per local day, `None` for no budget. Default: none.
    pub daily_budget: Option<u64>,
    /// Capacity in time at the current rate. Default 250 ms: smooth enough for a shared
    /// uplink, and a quarter second of link after an idle period is a harmless burst.
    pub burst: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            rate: Rate::Unlimited,
            profiles: Vec::new(),
            daily_budget: None,
            burst: Duration::from_millis(250),
        }
    }
}

impl ThrottleConfig {
    /// A plain bucket at `rate`, other settings default.
    pub fn rate(rate: Rate) -> Self {
        ThrottleConfig {
            rate,
            ..Default::default()
        }
    }
}

/// One token bucket. See the module docs.
#[derive(Debug, Clone)]
pub struct Throttle {
    cfg: ThrottleConfig,
    /// Rate in effect at `last`.
    rate: Rate,
    /// Bytes; negative while a large send is being paid off; +inf while unlimited.
    tokens: f64,
    last: Now,
    budget_day: NaiveDate,
    budget_used: u64,
}

impl Throttle {
    /// A bucket that starts full at time `now`.
    pub fn new(cfg: ThrottleConfig, now: &Now) -> Self {
        let rate = rate_at(&cfg, now.local);
        let mut t = Throttle {
            rate,
            tokens: 0.0,
            last: *now,
            budget_day: now.local.date(),
            budget_used: 0,
            cfg,
        };
        t.tokens = t.capacity_f64();
        t
    }

    /// A bucket that never waits (no rate, no budget).
    pub fn unlimited(now: &Now) -> Self {
        Self::new(ThrottleConfig::default(), now)
    }

    /// The configuration.
    pub fn config(&self) -> &ThrottleConfig {
        &self.cfg
    }

    /// Replaces the configuration (config reload), keeping the tokens (clamped) and the
    /// budget already used today.
    pub fn set_config(&mut self, cfg: ThrottleConfig, now: &Now) {
        self.advance(now);
        self.cfg = cfg;
        self.rate = rate_at(&self.cfg, now.local);
        self.tokens = self.tokens.min(self.capacity_f64());
    }

    /// May `bytes` be sent now? `Err(wait)`: re-check after `wait`. Does not charge.
    pub fn check(&mut self, bytes: u64, now: &Now) -> Result<(), Duration> {
        self.advance(now);
        if let Some(budget) = self.cfg.daily_budget {
            let left = budget.saturating_sub(self.budget_used);
            if left == 0 || (bytes > left && self.budget_used > 0) {
                return Err(self.until_midnight(now));
            }
        }
        let per_sec = match self.rate {
            Rate::Unlimited => return Ok(()),
            Rate::BytesPerSec(r) => r,
        };
        let need = (bytes as f64).min(self.capacity_f64());
        // Half a byte of slack absorbs float rounding of a wait computed by this function.
        if self.tokens + 0.5 >= need {
            return Ok(());
        }
        let boundary = self.until_profile_change(now);
        if per_sec == 0 {
            return Err(boundary.unwrap_or(MAX_WAIT));
        }
        let secs = (need - self.tokens) / per_sec as f64;
        // Round up to a microsecond so that re-checking after `wait` succeeds.
        let wait = Duration::from_micros((secs * 1e6).ceil() as u64);
        Err(boundary.map_or(wait, |b| wait.min(b)))
    }

    /// Charges `bytes` actually sent (may take the bucket below zero).
    pub fn record_sent(&mut self, bytes: u64, now: &Now) {
        self.advance(now);
        self.tokens -= bytes as f64;
        self.budget_used = self.budget_used.saturating_add(bytes);
    }

    /// [`check`](Self::check) and, if allowed, [`record_sent`](Self::record_sent).
    pub fn take(&mut self, bytes: u64, now: &Now) -> Result<(), Duration> {
        self.check(bytes, now)?;
        self.record_sent(bytes, now);
        Ok(())
    }

    /// Bytes that may be sent now without waiting or overdrawing the bucket or the budget;
    /// `None` when unlimited. The forwarder cuts a batch to this (keeping at least one
    /// record, which [`check`](Self::check) then decides on), so a large batch does not go
    /// out as one burst of many seconds of rate that is then paid off by a long silence.
    pub fn allowance(&mut self, now: &Now) -> Option<u64> {
        self.advance(now);
        let tokens = match self.rate {
            Rate::Unlimited => None,
            Rate::BytesPerSec(_) => Some(self.tokens.max(0.0) as u64),
        };
        match (tokens, self.budget_left()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The rate in effect at the last check or charge.
    pub fn current_rate(&self) -> Rate {
        self.rate
    }

    /// Tokens (bytes) in the bucket as of the last check or charge; negative while paying
    /// off a large send; `None` while unlimited.
    pub fn tokens(&self) -> Option<i64> {
        self.tokens.is_finite().then_some(self.tokens as i64)
    }

    /// Bucket capacity in bytes at the current rate; `None` while unlimited.
    pub fn capacity(&self) -> Option<u64> {
        let c = self.capacity_f64();
        c.is_finite().then_some(c as u64)
    }

    /// Bytes left in today's budget; `None` without a budget.
    pub fn budget_left(&self) -> Option<u64> {
        self.cfg
            .daily_budget
            .map(|b| b.saturating_sub(self.budget_used))
    }

    /// Bytes sent on the current budget day, and that day (for persisting).
    pub fn budget_used(&self) -> (NaiveDate, u64) {
        (self.budget_day, self.budget_used)
    }

    /// Restores a persisted budget count; ignored if `day` is before the current budget day.
    pub fn restore_budget(&mut self, day: NaiveDate, used: u64) {
        if day >= self.budget_day {
            self.budget_day = day;
            self.budget_used = used;
        }
    }

    fn capacity_f64(&self) -> f64 {
        capacity(&self.cfg, self.rate)
    }

    fn until_midnight(&self, now: &Now) -> Duration {
        let next = now
            .local
            .date()
            .succ_opt()
            .and_then(|d| d.and_hms_opt(0, 0, 0));
        match next {
            Some(m) => now.until_local(m).max(Duration::from_millis(1)),
            None => MAX_WAIT,
        }
    }

    fn until_profile_change(&self, now: &Now) -> Option<Duration> {
        next_profile_change(&self.cfg, now.local)
            .map(|t| now.until_local(t).max(Duration::from_millis(1)))
    }

    /// Refills for the time since the last call, at the rate(s) in effect meanwhile, and
    /// rolls the budget over at a new local date.
    fn advance(&mut self, now: &Now) {
        let mut remaining = now.mono.saturating_duration_since(self.last.mono);
        let mut t_local = self.last.local;
        // Walk profile boundaries between the two wall-clock readings; the monotonic time
        // decides the total, so a stepped wall clock cannot mint tokens. After a few
        // boundaries the bucket is long full; the rest is credited at the current rate.
        for _ in 0..16 {
            if remaining.is_zero() {
                break;
            }
            let rate = rate_at(&self.cfg, t_local);
            let seg = match next_profile_change(&self.cfg, t_local) {
                Some(b) if b < now.local => (b - t_local)
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(remaining),
                _ => remaining,
            };
            self.refill(rate, seg);
            remaining -= seg;
            t_local += chrono::Duration::from_std(seg).unwrap_or(chrono::Duration::zero());
        }
        self.rate = rate_at(&self.cfg, now.local);
        self.refill(self.rate, remaining);
        self.tokens = self.tokens.min(self.capacity_f64());
        // A reading older than the last one (two clock reads racing) must not move `last`
        // back, or the same interval would be credited twice.
        if now.mono >= self.last.mono {
            self.last = *now;
        }
        if now.local.date() > self.budget_day {
            tracing::debug!(day = %now.local.date(), used = self.budget_used, "daily byte budget reset");
            self.budget_day = now.local.date();
            self.budget_used = 0;
        }
    }

    fn refill(&mut self, rate: Rate, d: Duration) {
        if d.is_zero() {
            return;
        }
        match rate {
            Rate::Unlimited => self.tokens = f64::INFINITY,
            Rate::BytesPerSec(r) => {
                // Capped at this rate's capacity, so a bucket left full (or unlimited) by a
                // faster period holds only this period's burst.
                let cap = capacity(&self.cfg, rate);
                self.tokens = (self.tokens + r as f64 * d.as_secs_f64()).min(cap);
            }
        }
    }
}

fn capacity(cfg: &ThrottleConfig, rate: Rate) -> f64 {
    match rate {
        Rate::Unlimited => f64::INFINITY,
        Rate::BytesPerSec(r) => (r as f64 * cfg.burst.as_secs_f64()).max(1.0),
    }
}

/// The rate in force at `local`: the first open profile's, else the base rate.
pub(crate) fn rate_at(cfg: &ThrottleConfig, local: NaiveDateTime) -> Rate {
    cfg.profiles
        .iter()
        .find(|p| p.schedule.is_open(local))
        .map_or(cfg.rate, |p| p.rate)
}

/// When the next time-of-day profile opens or closes after `local`.
pub(crate) fn next_profile_change(
    cfg: &ThrottleConfig,
    local: NaiveDateTime,
) -> Option<NaiveDateTime> {
    cfg.profiles
        .iter()
        .filter_map(|p| p.schedule.next_change(local))
        .min()
}

/// Which bucket asked a send to wait, from [`Throttles::check_detailed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleWait {
    /// How long to wait before re-checking.
    pub wait: Duration,
    /// True when the global bucket (or budget) is the one waiting: nothing can be sent. False
    /// when only the class's own bucket is: other classes may still go meanwhile.
    pub global: bool,
}

/// The global bucket plus optional per-class buckets; a send must pass both.
#[derive(Debug, Clone)]
pub struct Throttles {
    /// Applies to all classes together.
    pub global: Throttle,
    /// Indexed by class id; `None` (or missing) = no per-class limit.
    pub classes: Vec<Option<Throttle>>,
}

impl Throttles {
    /// Combines a global bucket with per-class ones.
    pub fn new(global: Throttle, classes: Vec<Option<Throttle>>) -> Self {
        Throttles { global, classes }
    }

    /// May `bytes` of `class` be sent now? On `Err`, the longer of the two waits.
    pub fn check(&mut self, class: usize, bytes: u64, now: &Now) -> Result<(), Duration> {
        let g = self.global.check(bytes, now);
        let c = match self.classes.get_mut(class) {
            Some(Some(t)) => t.check(bytes, now),
            _ => Ok(()),
        };
        match (g, c) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(w), Ok(())) | (Ok(()), Err(w)) => Err(w),
        }
    }

    /// Like [`check`](Self::check), but says whether the wait holds all classes (global) or
    /// only this one, so the forwarder can serve the next class instead of idling.
    pub fn check_detailed(
        &mut self,
        class: usize,
        bytes: u64,
        now: &Now,
    ) -> Result<(), ThrottleWait> {
        let g = self.global.check(bytes, now);
        let c = match self.classes.get_mut(class) {
            Some(Some(t)) => t.check(bytes, now),
            _ => Ok(()),
        };
        match (g, c) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(wait), _) => Err(ThrottleWait { wait, global: true }),
            (Ok(()), Err(wait)) => Err(ThrottleWait {
                wait,
                global: false,
            }),
        }
    }

    /// The smaller allowance of the two buckets (see [`Throttle::allowance`]).
    pub fn allowance(&mut self, class: usize, now: &Now) -> Option<u64> {
        let g = self.global.allowance(now);
        let c = match self.classes.get_mut(class) {
            Some(Some(t)) => t.allowance(now),
            _ => None,
        };
        match (g, c) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Charges both buckets.
    pub fn record_sent(&mut self, class: usize, bytes: u64, now: &Now) {
        self.global.record_sent(bytes, now);
        if let Some(Some(t)) = self.classes.get_mut(class) {
            t.record_sent(bytes, now);
        }
    }

    /// [`check`](Self::check) and, if allowed, [`record_sent`](Self::record_sent).
    pub fn take(&mut self, class: usize, bytes: u64, now: &Now) -> Result<(), Duration> {
        self.check(class, bytes, now)?;
        self.record_sent(class, bytes, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::clock::{local_dt, Clock, ManualClock};

    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;

    fn sched(s: &str) -> Schedule {
        Schedule::parse(s).unwrap()
    }

    /// Sends `batch`-byte batches as fast as the throttle allows for `secs` simulated
    /// seconds; returns the bytes sent.
    fn drive(t: &mut Throttle, clock: &ManualClock, batch: impl Fn(u64) -> u64, secs: u64) -> u64 {
        let end = clock.now().mono + Duration::from_secs(secs);
        let mut sent = 0;
        let mut i = 0;
        loop {
            let now = clock.now();
            if now.mono >= end {
                return sent;
            }
            let b = batch(i);
            match t.take(b, &now) {
                Ok(()) => {
                    sent += b;
                    i += 1;
                }
                Err(w) => {
                    assert!(!w.is_zero());
                    clock.advance(w.min(end - now.mono));
                }
            }
        }
    }

    #[test]
    fn average_over_60s_at_1mib_is_within_1_percent() {
        for batch in [16 * KIB, 100_000, MIB, 3 * MIB] {
            let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
            let mut t = Throttle::new(ThrottleConfig::rate(Rate::BytesPerSec(MIB)), &clock.now());
            let sent = drive(&mut t, &clock, |_| batch, 60);
            let rate = sent as f64 / 60.0;
            let err = (rate - MIB as f64).abs() / MIB as f64;
            assert!(
                err < 0.01,
                "batch {batch}: {rate} B/s, error {:.3}%",
                err * 100.0
            );
        }
        // Uneven batch sizes, as real batches are.
        let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
        let mut t = Throttle::new(ThrottleConfig::rate(Rate::BytesPerSec(MIB)), &clock.now());
        let sent = drive(&mut t, &clock, |i| 1 + (i * 7919 % 300_000), 60);
        let err = (sent as f64 / 60.0 - MIB as f64).abs() / MIB as f64;
        assert!(err < 0.01, "uneven: error {:.3}%", err * 100.0);
    }

    #[test]
    fn a_batch_larger_than_the_burst_goes_and_is_paid_off() {
        let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
        let cfg = ThrottleConfig {
            rate: Rate::BytesPerSec(10 * KIB),
            ..Default::default()
        };
        let mut t = Throttle::new(cfg, &clock.now());
        assert_eq!(t.capacity(), Some(2560));
        // 100 KiB in one record: allowed from a full bucket, then ~9.75 s of debt.
        t.take(100 * KIB, &clock.now()).unwrap();
        assert_eq!(t.tokens(), Some(2560 - 100 * KIB as i64));
        let w = t.check(1, &clock.now()).unwrap_err();
        assert!((w.as_secs_f64() - 9.75).abs() < 0.01, "{w:?}");
        clock.advance(w);
        t.check(1, &clock.now()).unwrap();
    }

    #[test]
    fn burst_is_a_fraction_of_a_second() {
        let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
        let t = Throttle::new(
            ThrottleConfig::rate(Rate::BytesPerSec(64 * MIB)),
            &clock.now(),
        );
        assert_eq!(t.capacity(), Some(16 * MIB));
        let t = Throttle::new(
            ThrottleConfig::rate(Rate::BytesPerSec(64 * KIB)),
            &clock.now(),
        );
        assert_eq!(t.capacity(), Some(16 * KIB));
        // Idle time does not accumulate beyond capacity.
        let mut t = Throttle::new(ThrottleConfig::rate(Rate::BytesPerSec(MIB)), &clock.now());
        clock.advance(Duration::from_secs(3600));
        t.take(MIB / 4, &clock.now()).unwrap();
        assert!(t.check(1, &clock.now()).is_err());
    }

    #[test]
    fn an_older_reading_does_not_credit_time_twice() {
        let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
        let early = clock.now();
        let mut t = Throttle::new(ThrottleConfig::rate(Rate::BytesPerSec(KIB)), &early);
        clock.advance(Duration::from_secs(10));
        t.record_sent(10 * KIB, &clock.now());
        t.record_sent(0, &early);
        clock.advance(Duration::from_secs(1));
        t.record_sent(0, &clock.now());
        // Full (256) - 10 KiB + 1 s of refill; crediting the 11 s again would refill it.
        assert_eq!(t.tokens(), Some(256 - 10 * 1024 + 1024));
    }

    #[test]
    fn unlimited_never_waits() {
        let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
        let mut t = Throttle::unlimited(&clock.now());
        for _ in 0..1000 {
            t.take(u64::MAX / 2000, &clock.now()).unwrap();
        }
        assert_eq!(t.tokens(), None);
        assert_eq!(t.capacity(), None);
        assert_eq!(t.allowance(&clock.now()), None);
        assert_eq!(t.current_rate(), Rate::Unlimited);
        assert_eq!(t.budget_left(), None);
    }

    fn shift_profile() -> ThrottleConfig {
        ThrottleConfig {
            rate: Rate::Unlimited,
            profiles: vec![RateProfile {
                schedule: sched("Mon-Fri 06:00-22:00"),
                rate: Rate::BytesPerSec(64 * KIB),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn profile_switches_exactly_at_its_boundaries() {
        // Monday 21:59:00: one minute of shift rate left, then unlimited.
        let clock = ManualClock::at(2026, 11, 16, 21, 59, 0);
        let mut t = Throttle::new(shift_profile(), &clock.now());
        assert_eq!(t.current_rate(), Rate::BytesPerSec(64 * KIB));
        t.record_sent(10 * MIB, &clock.now());
        // Debt would take 160 s at 64 KiB/s, but the wait stops at the 22:00 boundary.
        let w = t.check(KIB, &clock.now()).unwrap_err();
        assert_eq!(w, Duration::from_secs(60));
        clock.advance(w);
        t.check(KIB, &clock.now()).unwrap();
        assert_eq!(t.current_rate(), Rate::Unlimited);

        // Tuesday 05:59:59 -> 06:00:00 the limit returns with a full (not unlimited) bucket
        // of 250 ms at 64 KiB/s.
        clock.set_local(local_dt(2026, 11, 17, 5, 59, 59));
        t.check(KIB, &clock.now()).unwrap();
        clock.advance(Duration::from_secs(1));
        t.check(KIB, &clock.now()).unwrap();
        assert_eq!(t.current_rate(), Rate::BytesPerSec(64 * KIB));
        assert_eq!(t.tokens(), Some(16 * KIB as i64));
        // Over the next simulated minute the shift rate holds.
        let sent = drive(&mut t, &clock, |_| 4 * KIB, 60);
        let rate = sent as f64 / 60.0;
        assert!((rate / (64 * KIB) as f64 - 1.0).abs() < 0.01, "{rate}");
    }

    #[test]
    fn refill_is_split_at_a_boundary_crossed_while_idle() {
        // Night (unlimited) ends at 06:00; at 22:00 the other way. Crossing 22:00 with debt:
        // 30 s before at 10 KiB/s pays 300 KiB, the rest is unlimited.
        let clock = ManualClock::at(2026, 11, 16, 21, 59, 30);
        let cfg = ThrottleConfig {
            profiles: vec![RateProfile {
                schedule: sched("Mon-Fri 06:00-22:00"),
                rate: Rate::BytesPerSec(10 * KIB),
            }],
            ..Default::default()
        };
        let mut t = Throttle::new(cfg.clone(), &clock.now());
        t.record_sent(400 * KIB, &clock.now());
        // 20 s later, still shift: 200 KiB paid off the debt (capacity 2.5 KiB).
        clock.advance(Duration::from_secs(20));
        t.record_sent(0, &clock.now());
        assert_eq!(t.tokens(), Some(-202_240));
        // Cross into the night: debt cleared by unlimited.
        clock.advance(Duration::from_secs(20));
        t.check(MIB, &clock.now()).unwrap();
        // And the reverse: night -> shift at 06:00 leaves a full (capacity), not unlimited,
        // bucket.
        let clock = ManualClock::at(2026, 11, 17, 5, 59, 50);
        let mut t = Throttle::new(cfg, &clock.now());
        clock.advance(Duration::from_secs(15));
        t.record_sent(100 * KIB, &clock.now());
        assert_eq!(t.tokens(), Some(-99_840));
    }

    #[test]
    fn first_matching_profile_wins_else_default() {
        let cfg = ThrottleConfig {
            rate: Rate::BytesPerSec(5 * MIB),
            profiles: vec![
                RateProfile {
                    schedule: sched("daily 12:00-13:00"),
                    rate: Rate::BytesPerSec(0),
                },
                RateProfile {
                    schedule: sched("Mon-Fri 06:00-22:00"),
                    rate: Rate::BytesPerSec(64 * KIB),
                },
            ],
            ..Default::default()
        };
        let clock = ManualClock::at(2026, 11, 16, 11, 0, 0);
        let mut t = Throttle::new(cfg, &clock.now());
        assert_eq!(t.current_rate(), Rate::BytesPerSec(64 * KIB));
        clock.advance(Duration::from_secs(3600));
        t.check(0, &clock.now()).unwrap();
        assert_eq!(t.current_rate(), Rate::BytesPerSec(0));
        // Rate 0: nothing moves until the profile ends, and the wait says exactly when.
        t.record_sent(KIB, &clock.now());
        assert_eq!(t.check(1, &clock.now()), Err(Duration::from_secs(3600)));
        clock.advance(Duration::from_secs(3601));
        t.check(1, &clock.now()).unwrap();
        assert_eq!(t.current_rate(), Rate::BytesPerSec(64 * KIB));
        // After the shift, the default.
        clock.advance(Duration::from_secs(9 * 3600));
        t.check(1, &clock.now()).unwrap();
        assert_eq!(t.current_rate(), Rate::BytesPerSec(5 * MIB));
    }

    #[test]
    fn daily_budget_stops_sending_until_local_midnight() {
        let clock = ManualClock::at(2026, 11, 16, 23, 0, 0);
        let cfg = ThrottleConfig {
            daily_budget: Some(10 * MIB),
            ..Default::default()
        };
        let mut t = Throttle::new(cfg, &clock.now());
        assert_eq!(t.budget_left(), Some(10 * MIB));
        for _ in 0..9 {
            t.take(MIB, &clock.now()).unwrap();
        }
        assert_eq!(t.budget_left(), Some(MIB));
        assert_eq!(t.allowance(&clock.now()), Some(MIB));
        // A batch that would exceed the budget waits for midnight, a fitting one goes.
        assert_eq!(
            t.check(MIB + 1, &clock.now()),
            Err(Duration::from_secs(3600))
        );
        t.take(MIB, &clock.now()).unwrap();
        assert_eq!(t.budget_left(), Some(0));
        assert_eq!(t.check(1, &clock.now()), Err(Duration::from_secs(3600)));
        clock.advance(Duration::from_secs(3599));
        assert!(t.check(1, &clock.now()).is_err());
        clock.advance(Duration::from_secs(1));
        t.take(1, &clock.now()).unwrap();
        assert_eq!(t.budget_left(), Some(10 * MIB - 1));
        // The first batch of a day may exceed the whole budget, once.
        let clock = ManualClock::at(2026, 11, 16, 0, 0, 0);
        let mut t = Throttle::new(
            ThrottleConfig {
                daily_budget: Some(MIB),
                ..Default::default()
            },
            &clock.now(),
        );
        t.take(5 * MIB, &clock.now()).unwrap();
        assert_eq!(t.budget_left(), Some(0));
        assert!(t.check(1, &clock.now()).is_err());
    }

    #[test]
    fn budget_survives_a_backward_clock_step_and_can_be_restored() {
        let clock = ManualClock::at(2026, 11, 16, 0, 0, 30);
        let cfg = ThrottleConfig {
            daily_budget: Some(MIB),
            ..Default::default()
        };
        let mut t = Throttle::new(cfg.clone(), &clock.now());
        t.take(MIB, &clock.now()).unwrap();
        clock.set_local(local_dt(2026, 11, 15, 23, 59, 50));
        assert!(t.check(1, &clock.now()).is_err());
        // Persisted state from earlier today is restored; yesterday's is ignored.
        let mut t2 = Throttle::new(cfg, &ManualClock::at(2026, 11, 16, 8, 0, 0).now());
        let (day, used) = t.budget_used();
        t2.restore_budget(day - chrono::Duration::days(1), used);
        assert_eq!(t2.budget_left(), Some(MIB));
        t2.restore_budget(day, 1000);
        assert_eq!(t2.budget_left(), Some(MIB - 1000));
    }

    #[test]
    fn budget_and_rate_together() {
        // 1 MiB/s with a 5 MiB budget: 5 MiB in ~5 s, then nothing until midnight.
        let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
        let cfg = ThrottleConfig {
            rate: Rate::BytesPerSec(MIB),
            daily_budget: Some(5 * MIB),
            ..Default::default()
        };
        let mut t = Throttle::new(cfg, &clock.now());
        let sent = drive(&mut t, &clock, |_| 64 * KIB, 600);
        assert_eq!(sent, 5 * MIB);
        let w = t.check(64 * KIB, &clock.now()).unwrap_err();
        assert_eq!(w, Duration::from_secs(12 * 3600 - 600));
    }

    #[test]
    fn per_class_and_global_buckets_both_apply() {
        let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
        let now = clock.now();
        let small = ThrottleConfig {
            rate: Rate::BytesPerSec(10 * KIB),
            ..Default::default()
        };
        let mut ts = Throttles::new(
            Throttle::new(ThrottleConfig::rate(Rate::BytesPerSec(MIB)), &now),
            vec![None, Some(Throttle::new(small, &now))],
        );
        assert_eq!(ts.allowance(1, &now), Some(2560));
        assert_eq!(ts.allowance(0, &now), Some(256 * KIB));
        ts.take(1, 10 * KIB, &now).unwrap();
        assert_eq!(ts.allowance(1, &now), Some(0));
        assert_eq!(ts.allowance(0, &now), Some(246 * KIB));
        let w = ts.check(1, 10 * KIB, &now).unwrap_err();
        assert!((w.as_secs_f64() - 1.0).abs() < 0.001);
        // Class 0 only sees the global bucket, which class 1 also drew from.
        ts.take(0, 246 * KIB, &now).unwrap();
        assert!(ts.check(0, 1, &now).is_err());
        // Unknown classes have no own bucket.
        assert!(ts.check(7, 1, &now).is_err());
        assert!(ts.check_detailed(7, 1, &now).unwrap_err().global);
        // Detailed: class 1's own bucket holds only class 1.
        let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
        let now = clock.now();
        let mut ts = Throttles::new(
            Throttle::unlimited(&now),
            vec![
                None,
                Some(Throttle::new(
                    ThrottleConfig::rate(Rate::BytesPerSec(KIB)),
                    &now,
                )),
            ],
        );
        ts.take(1, KIB, &now).unwrap();
        let w = ts.check_detailed(1, KIB, &now).unwrap_err();
        assert!(!w.global && w.wait > Duration::from_millis(900), "{w:?}");
        ts.check_detailed(0, MIB, &now).unwrap();
    }

    #[test]
    fn set_config_keeps_budget_and_clamps_tokens() {
        let clock = ManualClock::at(2026, 11, 16, 12, 0, 0);
        let mut t = Throttle::new(
            ThrottleConfig {
                daily_budget: Some(10 * MIB),
                ..Default::default()
            },
            &clock.now(),
        );
        t.take(MIB, &clock.now()).unwrap();
        t.set_config(
            ThrottleConfig {
                rate: Rate::BytesPerSec(KIB),
                daily_budget: Some(10 * MIB),
                ..Default::default()
            },
            &clock.now(),
        );
        assert_eq!(t.budget_left(), Some(9 * MIB));
        assert_eq!(t.tokens(), Some(256));
    }

    #[test]
    fn rates_and_sizes_parse() {
        let ok = [
            ("unlimited", Rate::Unlimited),
            ("UNLIMITED", Rate::Unlimited),
            ("131072", Rate::BytesPerSec(131_072)),
            ("64KiB/s", Rate::BytesPerSec(65_536)),
            ("64 KiB/s", Rate::BytesPerSec(65_536)),
            ("1.5 MB/s", Rate::BytesPerSec(1_500_000)),
            ("1MiB/s", Rate::BytesPerSec(MIB)),
            ("10Mbit/s", Rate::BytesPerSec(1_250_000)),
            ("0", Rate::BytesPerSec(0)),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<Rate>().unwrap(), want, "{s}");
        }
        for bad in ["fast", "-5", "10 parsecs/s", "", "5 Xbit/s"] {
            let e = bad.parse::<Rate>().unwrap_err().to_string();
            assert!(e.contains("64KiB/s"), "{bad}: {e}");
        }
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("500 MB").unwrap(), 500_000_000);
        assert_eq!(parse_bytes("1048576").unwrap(), MIB);
        assert!(parse_bytes("lots")
            .unwrap_err()
            .to_string()
            .contains("2GiB"));
        assert!(parse_bytes("5 XB")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert_eq!(Rate::BytesPerSec(64 * KIB).to_string(), "64KiB/s");
        assert_eq!(Rate::BytesPerSec(1000).to_string(), "1000B/s");
        assert_eq!(Rate::Unlimited.to_string(), "unlimited");
    }

    #[test]
    fn rates_and_profiles_deserialize() {
        #[derive(serde::Deserialize)]
        struct C {
            rate: Rate,
            other: Rate,
            profiles: Vec<RateProfile>,
        }
        let c: C = toml::from_str(
            r#"
            rate = "64KiB/s"
            other = 1000
            profiles = [{ schedule = "Mon-Fri 06:00-22:00", rate = "unlimited" },
                        { when = "Sat,Sun", rate = "1MiB/s" }]
            "#,
        )
        .unwrap();
        assert_eq!(c.rate, Rate::BytesPerSec(65_536));
        assert_eq!(c.other, Rate::BytesPerSec(1000));
        assert_eq!(c.profiles[0].rate, Rate::Unlimited);
        assert_eq!(
            c.profiles[1],
            RateProfile::parse("Sat,Sun", Rate::from_bytes_per_sec(Some(MIB))).unwrap()
        );
        assert_eq!(Rate::from_bytes_per_sec(None), Rate::Unlimited);
        assert!(RateProfile::parse("Sat-", Rate::Unlimited).is_err());
        let e = toml::from_str::<C>("rate = -1\nother = 1\nprofiles = []")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("negative"), "{e}");
    }
}
