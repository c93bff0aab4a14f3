//! Connectivity windows: when the forwarder may use the link.
//!
//! # API
//!
//! ```text
//! Schedule::parse("Mon-Fri 22:00-06:00; Sat,Sun 00:00-24:00")? -> Schedule   (also FromStr, serde)
//! schedule.is_open(local)          -> bool
//! schedule.next_change(local)      -> Option<NaiveDateTime>   (None for always/never)
//!
//! Windows::new(schedule)                    the schedule plus the operator's override
//! windows.drain_for(duration, &now)         open regardless of the schedule until now+duration
//! windows.cancel_drain()
//! windows.is_open(&now) / windows.state(&now) -> WindowState { open, reason, next_change }
//! ```
//!
//! # Schedule syntax
//!
//! A schedule is one or more items joined with `;` (or a TOML array of strings); it is open
//! when any item is open (union). An item is
//!
//! ```text
//!   always | never
//!   [DAYS] [HH:MM-HH:MM]        DAYS: daily | weekdays | weekends | Mon | Mon-Fri | Sat,Sun | Fri-Mon
//!                               omitted DAYS = daily, omitted times = the whole day
//! ```
//!
//! Times are local wall-clock time, `00:00` to `24:00`, start inclusive, end exclusive. A
//! range whose end is not after its start crosses midnight and belongs to the day it starts
//! on: `Mon-Fri 22:00-06:00` is open from Friday 22:00 to Saturday 06:00, but not from
//! Sunday 22:00 (`Sun` is not listed) — Monday 00:00-06:00 is closed.
//!
//! # Representation
//!
//! Parsing turns the items into a sorted list of disjoint half-open intervals of "seconds
//! since Monday 00:00" on a 7-day circle; adjacent and overlapping intervals are merged, so
//! every interval end point is a real open/closed change (except where an interval touching
//! Sunday 24:00 continues at Monday 00:00, which [`Schedule::next_change`] skips):
//!
//! ```text
//!   Mon-Fri 22:00-06:00
//!   Mon        Tue        Wed        Thu        Fri        Sat        Sun
//!   |......##|####....##|####....##|####....##|####....##|####......|..........|
//!            ^ open Mon 22:00                              ^ closes Sat 06:00
//! ```
//!
//! # The override, and where pause lives
//!
//! [`Windows`] adds the operator's "drain now for N minutes" ([`Windows::drain_for`]) to the
//! configured schedule: while a drain is active the link is open whatever the schedule says.
//! The drain deadline is kept on the monotonic clock, so a wall-clock step does not shorten
//! or extend it. Pause/resume (per class or all) is not a window but a choice of what to send,
//! so it lives in the scheduler ([`super::schedule::Scheduler::pause`]); a paused class stays
//! paused during a drain, because the operator asked for both explicitly and pause is the
//! more specific request.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDateTime, Timelike};

use super::clock::Now;

const DAY: u32 = 86_400;
const WEEK: u32 = 7 * DAY;

const EXAMPLES: &str = "examples: `always`, `never`, `Mon-Fri 22:00-06:00`, \
     `Sat,Sun 00:00-24:00`, `daily 01:00-05:00`, several joined with `;`";

/// A schedule string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule `{input}`: {reason} ({EXAMPLES})")]
pub struct ScheduleError {
    /// The whole text given.
    pub input: String,
    /// What is wrong, naming the offending part.
    pub reason: String,
}

/// A weekly schedule of open intervals in local wall-clock time. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The text as given (trimmed), shown back to the operator.
    source: String,
    /// Disjoint, sorted, merged half-open `[start, end)` seconds since Monday 00:00, within
    /// `[0, WEEK]`.
    intervals: Vec<(u32, u32)>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.source)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Default for Schedule {
    /// `always`: the default is to forward whenever the link is up.
    fn default() -> Self {
        Schedule::always()
    }
}

impl Schedule {
    /// Open all the time.
    pub fn always() -> Self {
        Schedule {
            source: "always".into(),
            intervals: vec![(0, WEEK)],
        }
    }

    /// Never open (forwarding only by a manual drain).
    pub fn never() -> Self {
        Schedule {
            source: "never".into(),
            intervals: Vec::new(),
        }
    }

    /// Parses one schedule string; items may be joined with `;`.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        Self::parse_list(&[text])
    }

    /// Parses a list of schedule strings (as a TOML array gives them); the result is their
    /// union.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Schedule, ScheduleError> {
        let input = items
            .iter()
            .map(|s| s.as_ref().trim())
            .collect::<Vec<_>>()
            .join("; ");
        let err = |reason: String| ScheduleError {
            input: input.clone(),
            reason,
        };
        let mut raw = Vec::new();
        let mut any = false;
        for item in items.iter().flat_map(|s| s.as_ref().split(';')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            any = true;
            parse_item(item, &mut raw).map_err(err)?;
        }
        if !any {
            return Err(err("the schedule is empty".into()));
        }
        Ok(Schedule {
            source: input.clone(),
            intervals: merge(raw),
        })
    }

    /// True when the schedule is open at local time `at`.
    pub fn is_open(&self, at: NaiveDateTime) -> bool {
        let s = second_of_week(at);
        self.intervals.iter().any(|&(a, b)| a <= s && s < b)
    }

    /// True for a schedule that is open all week.
    pub fn is_always(&self) -> bool {
        self.intervals == [(0, WEEK)]
    }

    /// True for a schedule that is never open.
    pub fn is_never(&self) -> bool {
        self.intervals.is_empty()
    }

    /// The first local time strictly after `at` at which [`is_open`](Self::is_open) changes,
    /// or `None` when it never changes (`always`, `never`). Resolution is one second.
    pub fn next_change(&self, at: NaiveDateTime) -> Option<NaiveDateTime> {
        if self.is_always() || self.is_never() {
            return None;
        }
        // An interval ending at Sunday 24:00 that continues at Monday 00:00 is one window.
        let wraps = self.intervals.first().map(|i| i.0) == Some(0)
            && self.intervals.last().map(|i| i.1) == Some(WEEK);
        let mut boundaries: Vec<u32> = self
            .intervals
            .iter()
            .flat_map(|&(a, b)| [a, b])
            .filter(|&b| !(wraps && (b == 0 || b == WEEK)))
            .collect();
        boundaries.sort_unstable();
        let s = second_of_week(at);
        let next = match boundaries.iter().find(|&&b| b > s) {
            Some(&b) => b,
            None => boundaries.first().copied()? + WEEK,
        };
        let base = at.with_nanosecond(0).unwrap_or(at);
        Some(base + chrono::Duration::seconds(i64::from(next - s)))
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    /// Accepts a string (`"Mon-Fri 22:00-06:00; Sat,Sun"`) or an array of strings.
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Schedule;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a schedule string or an array of them ({EXAMPLES})")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Schedule, E> {
                Schedule::parse(v).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Schedule, A::Error> {
                let mut items: Vec<String> = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    items.push(s);
                }
                Schedule::parse_list(&items).map_err(serde::de::Error::custom)
            }
        }
        de.deserialize_any(V)
    }
}

fn second_of_week(at: NaiveDateTime) -> u32 {
    at.weekday().num_days_from_monday() * DAY + at.num_seconds_from_midnight()
}

/// Parses one item (no `;`) and appends its intervals, possibly crossing Sunday 24:00.
fn parse_item(item: &str, out: &mut Vec<(u32, u32)>) -> Result<(), String> {
    let lower = item.to_ascii_lowercase();
    match lower.as_str() {
        "always" => {
            out.push((0, WEEK));
            return Ok(());
        }
        "never" => return Ok(()),
        _ => {}
    }
    // Split "DAYS TIMES" at the first token that looks like a time; spaces inside either
    // part ("Sat, Sun", "22:00 - 06:00") are tolerated.
    let tokens: Vec<&str> = item.split_whitespace().collect();
    let first_time = tokens
        .iter()
        .position(|t| t.chars().next().is_some_and(|c| c.is_ascii_digit()));
    let (day_part, time_part) = match first_time {
        Some(i) => (tokens[..i].concat(), Some(tokens[i..].concat())),
        None => (tokens.concat(), None),
    };
    let days = if day_part.is_empty() {
        [true; 7]
    } else {
        parse_days(&day_part)?
    };
    let (start, end) = match time_part {
        Some(t) => parse_time_range(&t)?,
        None => (0, DAY),
    };
    // end <= start: crosses midnight into the next day.
    let len = if end > start {
        end - start
    } else {
        end + DAY - start
    };
    for (d, _) in days.iter().enumerate().filter(|(_, on)| **on) {
        let a = d as u32 * DAY + start;
        let b = a + len;
        if b <= WEEK {
            out.push((a, b));
        } else {
            out.push((a, WEEK));
            out.push((0, b - WEEK));
        }
    }
    Ok(())
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.to_ascii_lowercase().as_str() {
            "" => return Err(format!("empty day in `{text}`")),
            "daily" | "everyday" => days = [true; 7],
            "weekdays" => days[..5].iter_mut().for_each(|d| *d = true),
            "weekends" => days[5..].iter_mut().for_each(|d| *d = true),
            _ => {
                let (a, b) = match part.split_once('-') {
                    Some((a, b)) => (parse_day(a)?, parse_day(b)?),
                    None => {
                        let d = parse_day(part)?;
                        (d, d)
                    }
                };
                // A range may wrap around the week: Fri-Mon = Fri, Sat, Sun, Mon.
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
        }
    }
    Ok(days)
}

fn parse_day(text: &str) -> Result<usize, String> {
    const NAMES: [(&str, &str); 7] = [
        ("mon", "monday"),
        ("tue", "tuesday"),
        ("wed", "wednesday"),
        ("thu", "thursday"),
        ("fri", "friday"),
        ("sat", "saturday"),
        ("sun", "sunday"),
    ];
    let lower = text.to_ascii_lowercase();
    NAMES
        .iter()
        .position(|(short, long)| lower == *short || lower == *long)
        .ok_or_else(|| {
            if text.contains(':') {
                format!("`{text}` looks like a time but is in the day list; put the days first")
            } else {
                format!(
                    "unknown day `{text}`; use Mon Tue Wed Thu Fri Sat Sun, ranges like Mon-Fri, \
                     lists like Sat,Sun, or daily/weekdays/weekends"
                )
            }
        })
}

/// `HH:MM-HH:MM` -> (start, end) seconds of the day; `end` may be 86400 (`24:00`).
fn parse_time_range(text: &str) -> Result<(u32, u32), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("time range `{text}` must be START-END, like 22:00-06:00"))?;
    let start = parse_time(a)?;
    let end = parse_time(b)?;
    if start == DAY {
        return Err(format!(
            "a range cannot start at 24:00 (in `{text}`); use 00:00"
        ));
    }
    if start == end || (start == 0 && end == 0) {
        return Err(format!(
            "time range `{text}` is empty; for the whole day write 00:00-24:00"
        ));
    }
    Ok((start, end))
}

fn parse_time(text: &str) -> Result<u32, String> {
    let bad = || format!("`{text}` is not a time of day HH:MM between 00:00 and 24:00");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
}

fn merge(mut raw: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    raw.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(raw.len());
    for (a, b) in raw {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Why the link is open or closed right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowReason {
    /// The configured schedule is open.
    Schedule,
    /// An operator's drain override is active (the schedule may be closed).
    Drain,
    /// The schedule is closed and no drain is active.
    Closed,
}

/// A snapshot for `ferry status` and for the forwarder's sleep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    /// May the forwarder send now?
    pub open: bool,
    /// Why.
    pub reason: WindowReason,
    /// Local time of the next open/closed change, if any ("next window at ...").
    pub next_change: Option<NaiveDateTime>,
    /// When a drain is active: its end, in local time.
    pub drain_until: Option<NaiveDateTime>,
}

/// The configured schedule plus the operator's drain override. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    schedule: Schedule,
    drain_until: Option<Instant>,
}

impl Windows {
    /// Windows following `schedule`, with no override active.
    pub fn new(schedule: Schedule) -> Self {
        Windows {
            schedule,
            drain_until: None,
        }
    }

    /// The configured schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Replaces the schedule (config reload); an active drain continues.
    pub fn set_schedule(&mut self, schedule: Schedule) {
        self.schedule = schedule;
    }

    /// Opens the link regardless of the schedule until `now + duration`. A second call
    /// replaces the first (it can shorten a drain); a zero duration cancels it.
    pub fn drain_for(&mut self, duration: Duration, now: &Now) {
        self.drain_until = if duration.is_zero() {
            None
        } else {
            now.mono.checked_add(duration)
        };
        tracing::info!(
            drain_secs = duration.as_secs(),
            schedule = %self.schedule,
            "manual drain override set"
        );
    }

    /// Ends a drain override early.
    pub fn cancel_drain(&mut self) {
        if self.drain_until.take().is_some() {
            tracing::info!("manual drain override cancelled");
        }
    }

    /// True while a drain override is active.
    pub fn draining(&self, now: &Now) -> bool {
        self.drain_until.is_some_and(|t| now.mono < t)
    }

    /// May the forwarder send now?
    pub fn is_open(&self, now: &Now) -> bool {
        self.draining(now) || self.schedule.is_open(now.local)
    }

    /// The full state, with the next change for status output and sleeping.
    pub fn state(&self, now: &Now) -> WindowState {
        if let Some(until) = self.drain_until.filter(|&t| now.mono < t) {
            let end_local = now.local
                + chrono::Duration::from_std(until - now.mono).unwrap_or(chrono::Duration::MAX);
            // If the schedule is open when the drain ends, the link stays open until the
            // schedule closes after that.
            let next_change = if self.schedule.is_open(end_local) {
                self.schedule.next_change(end_local)
            } else {
                Some(end_local)
            };
            return WindowState {
                open: true,
                reason: WindowReason::Drain,
                next_change,
                drain_until: Some(end_local),
            };
        }
        let open = self.schedule.is_open(now.local);
        WindowState {
            open,
            reason: if open {
                WindowReason::Schedule
            } else {
                WindowReason::Closed
            },
            next_change: self.schedule.next_change(now.local),
            drain_until: None,
        }
    }

    /// How long the forwarder may sleep before the state can change (drain end or next
    /// schedule boundary), or `None` if it never changes by itself. Callers cap this and
    /// re-check, since the wall clock may be stepped meanwhile.
    pub fn time_to_change(&self, now: &Now) -> Option<Duration> {
        let drain = self
            .drain_until
            .filter(|&t| now.mono < t)
            .map(|t| t - now.mono);
        let sched = self
            .schedule
            .next_change(now.local)
            .map(|t| now.until_local(t).max(Duration::from_millis(1)));
        match (drain, sched) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::clock::{local_dt, Clock, ManualClock};

    // 2026-11-16 is a Monday.
    fn mon(h: u32, m: u32) -> NaiveDateTime {
        local_dt(2026, 11, 16, h, m, 0)
    }
    fn day(d: u32, h: u32, m: u32) -> NaiveDateTime {
        // d = 0 for Monday 16th ... 6 for Sunday 22nd, 7 for next Monday.
        local_dt(2026, 11, 16, 0, 0, 0)
            + chrono::Duration::days(i64::from(d))
            + chrono::Duration::minutes(i64::from(h * 60 + m))
    }
    fn p(s: &str) -> Schedule {
        Schedule::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn always_and_never() {
        let a = p("always");
        let n = p("never");
        for d in 0..7 {
            for h in [0, 5, 12, 23] {
                assert!(a.is_open(day(d, h, 59)));
                assert!(!n.is_open(day(d, h, 59)));
            }
        }
        assert_eq!(a.next_change(mon(1, 0)), None);
        assert_eq!(n.next_change(mon(1, 0)), None);
        assert!(p("ALWAYS").is_always());
        assert!(p("daily").is_always());
        assert!(p("Mon-Sun 00:00-24:00").is_always());
        assert!(p("never; never").is_never());
    }

    #[test]
    fn weekday_night_crosses_midnight_into_saturday() {
        let s = p("Mon-Fri 22:00-06:00");
        // Monday early morning belongs to Sunday night, which is not listed.
        assert!(!s.is_open(mon(0, 0)));
        assert!(!s.is_open(mon(5, 59)));
        assert!(!s.is_open(mon(21, 59)));
        assert!(s.is_open(mon(22, 0)));
        assert!(s.is_open(day(1, 5, 59)));
        assert!(!s.is_open(day(1, 6, 0)));
        // Friday night into Saturday morning.
        assert!(s.is_open(day(4, 23, 30)));
        assert!(s.is_open(day(5, 0, 0)));
        assert!(s.is_open(day(5, 5, 59)));
        assert!(!s.is_open(day(5, 6, 0)));
        // Not Saturday night, nor Sunday night.
        assert!(!s.is_open(day(5, 22, 30)));
        assert!(!s.is_open(day(6, 23, 0)));
        // Second-level edges.
        assert!(s.is_open(day(1, 5, 59) + chrono::Duration::seconds(59)));
    }

    #[test]
    fn sunday_night_wraps_to_monday_across_the_week() {
        let s = p("Sun 22:00-06:00");
        assert!(s.is_open(day(6, 22, 0)));
        assert!(s.is_open(day(7, 0, 0)));
        assert!(s.is_open(day(7, 5, 59)));
        assert!(!s.is_open(day(7, 6, 0)));
        assert_eq!(s.next_change(day(6, 12, 0)), Some(day(6, 22, 0)));
        assert_eq!(s.next_change(day(6, 23, 0)), Some(day(7, 6, 0)));
        assert_eq!(s.next_change(day(7, 6, 0)), Some(day(13, 22, 0)));
    }

    #[test]
    fn weekend_whole_days_and_lists() {
        let s = p("Sat,Sun 00:00-24:00");
        assert!(!s.is_open(day(4, 23, 59)));
        assert!(s.is_open(day(5, 0, 0)));
        assert!(s.is_open(day(6, 23, 59)));
        assert!(!s.is_open(day(7, 0, 0)));
        // Saturday 00:00 to Monday 00:00 is one change away each way.
        assert_eq!(s.next_change(day(2, 10, 0)), Some(day(5, 0, 0)));
        assert_eq!(s.next_change(day(5, 10, 0)), Some(day(7, 0, 0)));
        assert_eq!(
            p("Sat, Sun"),
            Schedule {
                source: "Sat, Sun".into(),
                ..s.clone()
            }
        );
        assert_eq!(p("weekends").intervals, s.intervals);
        assert_eq!(p("Sat-Sun").intervals, s.intervals);
        assert_eq!(p("saturday,SUNDAY").intervals, s.intervals);
    }

    #[test]
    fn daily_window_and_bare_times() {
        let s = p("daily 01:00-05:00");
        for d in 0..7 {
            assert!(!s.is_open(day(d, 0, 59)));
            assert!(s.is_open(day(d, 1, 0)));
            assert!(s.is_open(day(d, 4, 59)));
            assert!(!s.is_open(day(d, 5, 0)));
        }
        assert_eq!(p("01:00-05:00").intervals, s.intervals);
        assert_eq!(p("daily 1:00 - 05:00").intervals, s.intervals);
        assert_eq!(s.next_change(mon(0, 30)), Some(mon(1, 0)));
        assert_eq!(s.next_change(mon(1, 0)), Some(mon(5, 0)));
        assert_eq!(s.next_change(mon(5, 0)), Some(day(1, 1, 0)));
        // Sub-second times round to the whole-second boundary.
        let t = mon(4, 59) + chrono::Duration::milliseconds(59_500);
        assert_eq!(s.next_change(t), Some(mon(5, 0)));
    }

    #[test]
    fn union_of_items_merges_overlaps_and_adjacency() {
        let s = p("Mon-Fri 22:00-06:00; Sat,Sun 00:00-24:00");
        // Friday 22:00 through Monday 00:00 is one continuous window.
        assert_eq!(s.next_change(day(4, 23, 0)), Some(day(7, 0, 0)));
        assert!(s.is_open(day(5, 12, 0)));
        assert!(!s.is_open(day(7, 3, 0)));
        let list = Schedule::parse_list(&["Mon-Fri 22:00-06:00", "Sat,Sun 00:00-24:00"]).unwrap();
        assert_eq!(list.intervals, s.intervals);
        assert_eq!(
            p("daily 01:00-03:00; daily 02:00-05:00").intervals,
            p("daily 01:00-05:00").intervals
        );
        assert_eq!(
            p("daily 01:00-03:00; daily 03:00-05:00").intervals,
            p("daily 01:00-05:00").intervals
        );
        assert!(p("never; always").is_always());
        // Every day 22-06 merged across days, wrap included: a window of 8 hours a day.
        let nightly = p("daily 22:00-06:00");
        assert_eq!(nightly.intervals.len(), 8); // 6 full nights + the wrap split in two
        assert_eq!(nightly.next_change(day(6, 23, 0)), Some(day(7, 6, 0)));
    }

    #[test]
    fn wrapping_day_ranges() {
        let s = p("Fri-Mon 09:00-10:00");
        for (d, open) in [
            (0, true),
            (1, false),
            (2, false),
            (3, false),
            (4, true),
            (5, true),
            (6, true),
        ] {
            assert_eq!(s.is_open(day(d, 9, 30)), open, "day {d}");
        }
    }

    #[test]
    fn next_change_walks_a_whole_week_consistently() {
        // For every 7 minutes across two weeks: the state just before next_change equals the
        // current state, and at next_change it differs.
        for text in [
            "Mon-Fri 22:00-06:00",
            "Sat,Sun 00:00-24:00",
            "daily 01:00-05:00",
            "Sun 22:00-06:00; Wed 12:00-12:01",
            "Mon-Fri 22:00-06:00; Sat,Sun 00:00-24:00",
        ] {
            let s = p(text);
            let mut t = mon(0, 0);
            while t < day(14, 0, 0) {
                let c = s.next_change(t).unwrap();
                assert!(c > t);
                assert_eq!(
                    s.is_open(c - chrono::Duration::seconds(1)),
                    s.is_open(t),
                    "{text} at {t}"
                );
                assert_ne!(s.is_open(c), s.is_open(t), "{text} at {t} -> {c}");
                t += chrono::Duration::minutes(7);
            }
        }
    }

    #[test]
    fn errors_say_what_is_wrong_and_show_examples() {
        let cases = [
            ("", "empty"),
            ("  ;  ", "empty"),
            ("Mon-Fry 22:00-06:00", "unknown day `Fry`"),
            ("Mon-Fri 22:00", "START-END"),
            ("Mon-Fri 25:00-06:00", "`25:00` is not a time"),
            ("Mon-Fri 22:60-06:00", "`22:60`"),
            ("Mon-Fri 22:00-24:30", "`24:30`"),
            ("daily 24:00-01:00", "cannot start at 24:00"),
            ("daily 10:00-10:00", "is empty"),
            ("daily 00:00-00:00", "is empty"),
            ("Mon,,Tue", "empty day"),
            ("sometimes", "unknown day `sometimes`"),
            ("22:00-06:00 Mon", "`06:00Mon` is not a time"),
            ("Mon 22:00-06:00,Tue", "`06:00,Tue` is not a time"),
            ("daily 1-5", "not a time"),
        ];
        for (text, want) in cases {
            let e = Schedule::parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains("Mon-Fri 22:00-06:00"), "{e}");
        }
    }

    #[test]
    fn serde_accepts_string_or_array_and_round_trips() {
        #[derive(serde::Deserialize)]
        struct C {
            windows: Schedule,
        }
        let c: C = toml::from_str(r#"windows = "Mon-Fri 22:00-06:00; Sat,Sun""#).unwrap();
        assert!(c.windows.is_open(day(5, 12, 0)));
        let c: C = toml::from_str(r#"windows = ["Mon-Fri 22:00-06:00", "Sat,Sun"]"#).unwrap();
        assert!(c.windows.is_open(day(5, 12, 0)));
        assert_eq!(c.windows.to_string(), "Mon-Fri 22:00-06:00; Sat,Sun");
        let e = toml::from_str::<C>(r#"windows = "Mon-Fri 2200-0600""#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("2200"), "{e}");
        assert_eq!(
            serde_json::to_string(&c.windows).unwrap(),
            "\"Mon-Fri 22:00-06:00; Sat,Sun\""
        );
    }

    #[test]
    fn windows_drain_overrides_a_closed_schedule_and_then_expires() {
        let clock = ManualClock::new(mon(12, 0));
        let mut w = Windows::new(p("Mon-Fri 22:00-06:00"));
        let now = clock.now();
        assert!(!w.is_open(&now));
        let st = w.state(&now);
        assert_eq!(st.reason, WindowReason::Closed);
        assert_eq!(st.next_change, Some(mon(22, 0)));
        assert_eq!(w.time_to_change(&now), Some(Duration::from_secs(10 * 3600)));

        w.drain_for(Duration::from_secs(30 * 60), &now);
        let st = w.state(&now);
        assert!(st.open);
        assert_eq!(st.reason, WindowReason::Drain);
        assert_eq!(st.drain_until, Some(mon(12, 30)));
        assert_eq!(st.next_change, Some(mon(12, 30)));
        assert_eq!(w.time_to_change(&now), Some(Duration::from_secs(1800)));

        clock.advance(Duration::from_secs(29 * 60));
        assert!(w.is_open(&clock.now()));
        clock.advance(Duration::from_secs(60));
        assert!(!w.is_open(&clock.now()));
        assert_eq!(w.state(&clock.now()).reason, WindowReason::Closed);
    }

    #[test]
    fn drain_ending_inside_an_open_window_reports_the_windows_end() {
        let clock = ManualClock::new(mon(21, 30));
        let mut w = Windows::new(p("Mon-Fri 22:00-06:00"));
        w.drain_for(Duration::from_secs(3600), &clock.now());
        let st = w.state(&clock.now());
        assert_eq!(st.next_change, Some(day(1, 6, 0)));
        // The drain deadline is monotonic: a wall-clock step does not end it.
        clock.set_local(mon(10, 0));
        assert!(w.is_open(&clock.now()));
        w.cancel_drain();
        assert!(!w.is_open(&clock.now()));
        // Zero cancels too.
        w.drain_for(Duration::from_secs(60), &clock.now());
        w.drain_for(Duration::ZERO, &clock.now());
        assert!(!w.draining(&clock.now()));
    }

    #[test]
    fn always_has_no_change_and_never_only_drains() {
        let clock = ManualClock::new(mon(3, 0));
        let w = Windows::default();
        assert!(w.is_open(&clock.now()));
        assert_eq!(w.time_to_change(&clock.now()), None);
        let mut n = Windows::new(Schedule::never());
        assert!(!n.is_open(&clock.now()));
        assert_eq!(n.time_to_change(&clock.now()), None);
        n.drain_for(Duration::from_secs(5), &clock.now());
        assert_eq!(n.time_to_change(&clock.now()), Some(Duration::from_secs(5)));
    }

    #[test]
    fn fixed_offsets_do_not_change_wall_clock_semantics() {
        use chrono::{FixedOffset, TimeZone};
        // The same UTC instant is inside the window in one zone and outside in another.
        let s = p("Mon-Fri 22:00-06:00");
        let utc = chrono::Utc
            .with_ymd_and_hms(2026, 11, 16, 20, 30, 0)
            .unwrap();
        let plus2 = utc.with_timezone(&FixedOffset::east_opt(2 * 3600).unwrap());
        let minus5 = utc.with_timezone(&FixedOffset::west_opt(5 * 3600).unwrap());
        assert!(s.is_open(plus2.naive_local())); // Mon 22:30
        assert!(!s.is_open(minus5.naive_local())); // Mon 15:30
                                                   // +14:00 pushes Sunday 20:30 UTC into Monday 10:30 local.
        let sun = chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 20, 30, 0)
            .unwrap();
        let plus14 = sun.with_timezone(&FixedOffset::east_opt(14 * 3600).unwrap());
        assert!(p("Mon 10:00-11:00").is_open(plus14.naive_local()));
    }
}
