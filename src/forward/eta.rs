//! Drain forecast: when will each class's backlog be delivered, computed from the policy.
//!
//! # API
//!
//! ```text
//! let model = policy.drain_model();                  // windows, throttle, priorities, shares
//! let f = model.forecast(&DrainState { backlog, ingest, .. });
//! f.classes[i]  -> Eta::Secs(s) | Eta::Unknown(why)  // per class
//! f.total       -> the same for "everything empty"
//! ```
//!
//! # Model
//!
//! A fluid simulation of the forwarder's policy over future time, step by step from one event
//! to the next (a class empties, the window opens or closes, a rate profile or the drain
//! override ends, the daily budget runs out or resets):
//!
//! - the link carries the throttle rate in force at that local time (time-of-day profiles,
//!   the daily budget), 0 while the window is closed; when the link is unthrottled, the rate
//!   ferry measured recently (acknowledged bytes per second), or no forecast at all;
//! - each backlogged class first gets its `min_share` of that rate, the rest goes to the
//!   highest priority (equal split among equal priorities), each class capped by its own rate;
//!   a class with nothing waiting takes only its live ingest rate — as the scheduler does
//!   ([`super::schedule`]);
//! - live ingest keeps arriving at the rate measured now, so a backlog drains at
//!   `allocated - ingest`, and a class starved by higher ones grows.
//!
//! Bytes are the bytes the throttle meters: [`super::mapping::KafkaRecord::wire_size`]
//! (payload, key and headers, uncompressed). A forecast is for a link that is up: it does not
//! know when a broker that is down comes back. The simulation looks at most [`HORIZON`]
//! ahead; what does not drain by then is `Unknown` with the reason.

use std::time::Duration;

use chrono::NaiveDateTime;

use super::schedule::ClassPolicy;
use super::throttle::{Rate, ThrottleConfig};
use super::window::Schedule;

/// How far ahead the forecast looks.
pub const HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_STEPS: usize = 100_000;
/// Backlogs below this many bytes count as empty (float rounding).
const EPS_BYTES: f64 = 0.5;

/// The configured policy, as far as the drain rate depends on it.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainModel {
    pub windows: Schedule,
    pub global: ThrottleConfig,
    /// Indexed by class id; `None`: no per-class cap.
    pub class_caps: Vec<Option<ThrottleConfig>>,
    /// Indexed by class id.
    pub classes: Vec<ClassPolicy>,
}

/// The state the forecast starts from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainState {
    /// Local wall-clock time now (schedules are local).
    pub local_now: NaiveDateTime,
    /// Time left of an operator's drain override (the window counts as open meanwhile).
    pub drain_override: Option<Duration>,
    /// Waiting bytes per class, as the throttle meters them.
    pub backlog: Vec<f64>,
    /// Live ingest per class, in the same measure, bytes per second.
    pub ingest: Vec<f64>,
    pub paused: Vec<bool>,
    /// Bytes per second acknowledged recently (all classes); used only while unthrottled.
    pub measured_drain: Option<f64>,
    /// Bytes left in today's budget (`None`: no budget).
    pub budget_left: Option<u64>,
}

/// A forecast for one class or for all.
#[derive(Debug, Clone, PartialEq)]
pub enum Eta {
    /// Empty after this many seconds from now (0: empty now).
    Secs(f64),
    /// No honest figure; why.
    Unknown(String),
}

impl Eta {
    pub fn secs(&self) -> Option<f64> {
        match self {
            Eta::Secs(s) => Some(*s),
            Eta::Unknown(_) => None,
        }
    }
}

/// The result of [`DrainModel::forecast`].
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub classes: Vec<Eta>,
    pub total: Eta,
    /// What the link rate was taken from: `"throttle"`, `"measured"`, or `"none"` when
    /// nothing needed sending.
    pub basis: &'static str,
}

impl DrainModel {
    /// Always open, unthrottled, strict priority by class id (class 0 first): the forwarder's
    /// policy when none is configured.
    pub fn unlimited(class_names: &[String]) -> Self {
        let n = class_names.len() as u32;
        DrainModel {
            windows: Schedule::always(),
            global: ThrottleConfig::default(),
            class_caps: vec![None; class_names.len()],
            classes: class_names
                .iter()
                .enumerate()
                .map(|(i, name)| ClassPolicy {
                    name: name.clone(),
                    priority: n - i as u32,
                    min_share: 0.0,
                })
                .collect(),
        }
    }

    /// Simulates the drain from `st`. See the module docs.
    pub fn forecast(&self, st: &DrainState) -> Forecast {
        let n = self.classes.len();
        let get = |v: &[f64], i: usize| v.get(i).copied().unwrap_or(0.0).max(0.0);
        let mut b: Vec<f64> = (0..n).map(|i| get(&st.backlog, i)).collect();
        let ingest: Vec<f64> = (0..n).map(|i| get(&st.ingest, i)).collect();
        let paused: Vec<bool> = (0..n)
            .map(|i| st.paused.get(i).copied().unwrap_or(false))
            .collect();
        // A class's ETA is when the bytes waiting *now* have been sent: records are sent in
        // order within a class, so that is when its allocation adds up to its backlog. Its own
        // newer records queue behind; they still count in the allocation (the class stays
        // backlogged) and in everyone's competition for the link.
        let initial = b.clone();
        let mut sent = vec![0.0f64; n];
        let mut empty_at: Vec<Option<f64>> =
            b.iter().map(|&x| (x < EPS_BYTES).then_some(0.0)).collect();
        let horizon = HORIZON.as_secs_f64();
        let mut budget = st.budget_left.map(|x| x as f64);
        let mut t = 0.0f64;
        let mut basis = "none";
        let mut stuck: Option<String> = None;
        let mut ever_open = false;
        for _ in 0..MAX_STEPS {
            let active_left = (0..n).any(|i| !paused[i] && empty_at[i].is_none());
            if !active_left || t >= horizon {
                break;
            }
            let local = add_secs(st.local_now, t);
            let overriding = st.drain_override.is_some_and(|d| t < d.as_secs_f64());
            let open = overriding || self.windows.is_open(local);
            // The next instant at which something in the policy changes by itself.
            let mut next = horizon - t;
            if let Some(d) = st.drain_override.filter(|_| overriding) {
                next = next.min(d.as_secs_f64() - t);
            }
            let mut boundary = |c: Option<NaiveDateTime>| {
                if let Some(c) = c {
                    next = next.min(secs_between(local, c).max(0.001));
                }
            };
            if !overriding {
                boundary(self.windows.next_change(local));
            }
            boundary(next_profile_change(&self.global, local));
            for c in self.class_caps.iter().flatten() {
                boundary(next_profile_change(c, local));
            }
            if self.global.daily_budget.is_some() {
                boundary(next_midnight(local));
            }

            let exhausted = budget.is_some_and(|x| x <= EPS_BYTES);
            let rate = if !open || exhausted {
                0.0
            } else {
                ever_open = true;
                match rate_at(&self.global, local) {
                    Rate::BytesPerSec(r) => {
                        basis = "throttle";
                        r as f64
                    }
                    Rate::Unlimited => match st.measured_drain.filter(|&r| r > 0.0) {
                        Some(r) => {
                            basis = "measured";
                            r
                        }
                        None => {
                            stuck = Some(
                                "the link is unthrottled and no drain rate has been measured yet"
                                    .into(),
                            );
                            break;
                        }
                    },
                }
            };
            let caps: Vec<f64> = (0..n)
                .map(|i| match self.class_caps.get(i).and_then(|c| c.as_ref()) {
                    Some(c) => match rate_at(c, local) {
                        Rate::BytesPerSec(r) => r as f64,
                        Rate::Unlimited => f64::INFINITY,
                    },
                    None => f64::INFINITY,
                })
                .collect();
            let alloc = self.allocate(rate, &b, &ingest, &caps, &paused);
            let net: Vec<f64> = (0..n)
                .map(|i| {
                    let d = ingest[i] - alloc[i];
                    if paused[i] || (b[i] < EPS_BYTES && d <= 0.0) {
                        0.0
                    } else {
                        d
                    }
                })
                .collect();
            let mut dt = next;
            for i in 0..n {
                if b[i] >= EPS_BYTES && net[i] < 0.0 {
                    dt = dt.min(b[i] / -net[i]);
                }
                if empty_at[i].is_none() && alloc[i] > 0.0 {
                    dt = dt.min((initial[i] - sent[i]).max(0.0) / alloc[i]);
                }
            }
            let sending: f64 = alloc.iter().sum();
            if let Some(x) = budget.filter(|&x| x > EPS_BYTES && sending > 0.0) {
                dt = dt.min(x / sending);
            }
            let dt = dt.max(1e-6);
            for i in 0..n {
                if paused[i] {
                    continue;
                }
                let was = b[i];
                b[i] = (b[i] + net[i] * dt).max(0.0);
                if (was >= EPS_BYTES && net[i] < 0.0 && was / -net[i] <= dt * (1.0 + 1e-9))
                    || b[i] < EPS_BYTES
                {
                    b[i] = 0.0;
                }
                sent[i] += alloc[i] * dt;
                if empty_at[i].is_none()
                    && (sent[i] + EPS_BYTES >= initial[i] * (1.0 - 1e-9) || b[i] == 0.0)
                {
                    empty_at[i] = Some(t + dt);
                }
            }
            if let Some(x) = budget.as_mut() {
                *x -= sending * dt;
            }
            let before = add_secs(st.local_now, t);
            t += dt;
            if let (Some(daily), Some(x)) = (self.global.daily_budget, budget.as_mut()) {
                if add_secs(st.local_now, t).date() > before.date() {
                    *x = daily as f64;
                }
            }
        }
        let why_not = || {
            stuck.clone().unwrap_or_else(|| {
                if !ever_open {
                    format!(
                        "the window does not open within {} days",
                        HORIZON.as_secs() / 86400
                    )
                } else {
                    format!(
                        "not delivered within {} days at this rate and ingest",
                        HORIZON.as_secs() / 86400
                    )
                }
            })
        };
        let classes: Vec<Eta> = (0..n)
            .map(|i| match empty_at[i] {
                _ if paused[i] && b[i] >= EPS_BYTES => Eta::Unknown("paused".into()),
                Some(s) => Eta::Secs(s),
                None => Eta::Unknown(why_not()),
            })
            .collect();
        let mut total = Eta::Secs(0.0);
        for (i, e) in classes.iter().enumerate() {
            total = match (&total, e) {
                (Eta::Unknown(_), _) => total,
                (_, Eta::Unknown(_)) if paused[i] => {
                    Eta::Unknown(format!("class `{}` is paused", self.classes[i].name))
                }
                (_, Eta::Unknown(w)) => Eta::Unknown(w.clone()),
                (Eta::Secs(a), Eta::Secs(b)) => Eta::Secs(a.max(*b)),
            };
        }
        Forecast {
            classes,
            total,
            basis,
        }
    }

    /// Splits `rate` among the classes as the scheduler does (see the module docs).
    fn allocate(
        &self,
        rate: f64,
        backlog: &[f64],
        ingest: &[f64],
        caps: &[f64],
        paused: &[bool],
    ) -> Vec<f64> {
        let n = self.classes.len();
        let mut backlogged: Vec<bool> = backlog.iter().map(|&x| x >= EPS_BYTES).collect();
        let mut alloc = vec![0.0; n];
        // A class with nothing waiting asks for its ingest; if it does not get it, it starts
        // to queue and asks for all it can take. At most n rounds.
        for _ in 0..=n {
            let demand: Vec<f64> = (0..n)
                .map(|i| {
                    if paused[i] {
                        0.0
                    } else if backlogged[i] {
                        caps[i]
                    } else {
                        ingest[i].min(caps[i])
                    }
                })
                .collect();
            alloc = vec![0.0; n];
            let mut left = rate;
            for i in 0..n {
                let share = self.classes[i].min_share;
                if share > 0.0 && demand[i] > 0.0 {
                    alloc[i] = (share * rate).min(demand[i]).min(left);
                    left -= alloc[i];
                }
            }
            let mut prios: Vec<u32> = self.classes.iter().map(|c| c.priority).collect();
            prios.sort_unstable_by(|a, b| b.cmp(a));
            prios.dedup();
            for p in prios {
                if left <= 0.0 {
                    break;
                }
                // Water-fill `left` equally among this priority's classes.
                let mut needs: Vec<(f64, usize)> = (0..n)
                    .filter(|&i| self.classes[i].priority == p)
                    .map(|i| (demand[i] - alloc[i], i))
                    .filter(|(need, _)| *need > 0.0)
                    .collect();
                needs.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut k = needs.len();
                for (need, i) in needs {
                    let fair = left / k as f64;
                    let give = need.min(fair);
                    alloc[i] += give;
                    left -= give;
                    k -= 1;
                }
            }
            let mut changed = false;
            for i in 0..n {
                if !backlogged[i] && !paused[i] && alloc[i] + 1e-9 < ingest[i] {
                    backlogged[i] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        alloc
    }
}

fn add_secs(t: NaiveDateTime, s: f64) -> NaiveDateTime {
    t + chrono::Duration::milliseconds((s * 1000.0).round() as i64)
}

fn secs_between(a: NaiveDateTime, b: NaiveDateTime) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

fn next_midnight(t: NaiveDateTime) -> Option<NaiveDateTime> {
    t.date().succ_opt().and_then(|d| d.and_hms_opt(0, 0, 0))
}

use super::throttle::{next_profile_change, rate_at};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::clock::local_dt;
    use crate::forward::throttle::RateProfile;

    const KIB: f64 = 1024.0;

    fn class(name: &str, priority: u32, min_share: f64) -> ClassPolicy {
        ClassPolicy {
            name: name.into(),
            priority,
            min_share,
        }
    }

    /// critical (prio 100), telemetry (50, share 0.2), bulk (10, share 0.05): the shipped
    /// config's classes.
    fn factory(rate: u64) -> DrainModel {
        DrainModel {
            windows: Schedule::always(),
            global: ThrottleConfig::rate(Rate::BytesPerSec(rate)),
            class_caps: vec![None; 3],
            classes: vec![
                class("critical", 100, 0.0),
                class("telemetry", 50, 0.2),
                class("bulk", 10, 0.05),
            ],
        }
    }

    fn state(backlog: [f64; 3], ingest: [f64; 3]) -> DrainState {
        DrainState {
            local_now: local_dt(2026, 3, 2, 10, 0, 0), // a Monday
            backlog: backlog.to_vec(),
            ingest: ingest.to_vec(),
            paused: vec![false; 3],
            ..DrainState::default()
        }
    }

    fn secs(e: &Eta) -> f64 {
        e.secs()
            .unwrap_or_else(|| panic!("expected a figure, got {e:?}"))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01 * b.max(1.0)
    }

    #[test]
    fn single_class_is_backlog_over_rate() {
        let m = factory(100 * 1024);
        let f = m.forecast(&state([0.0, 0.0, 1000.0 * KIB], [0.0; 3]));
        assert!(close(secs(&f.classes[2]), 10.0), "{f:?}");
        assert_eq!(f.classes[0], Eta::Secs(0.0));
        assert!(close(secs(&f.total), 10.0));
        assert_eq!(f.basis, "throttle");
    }

    #[test]
    fn priorities_and_shares_order_the_drain() {
        // 100 KiB/s; critical 75 KiB waiting, telemetry 100 KiB, bulk 100 KiB.
        // While all wait: critical 75 KiB/s (the rest after shares), telemetry 20, bulk 5.
        // t=1: critical empty; telemetry has 80 left and gets 95 KiB/s -> empty at 1+80/95.
        // bulk: 5 KiB sent by t=1, 95 left; after telemetry empties it gets 100 KiB/s.
        let m = factory(100 * 1024);
        let f = m.forecast(&state([75.0 * KIB, 100.0 * KIB, 100.0 * KIB], [0.0; 3]));
        assert!(close(secs(&f.classes[0]), 1.0), "{f:?}");
        let t_tel = 1.0 + 80.0 / 95.0;
        assert!(close(secs(&f.classes[1]), t_tel), "{f:?}");
        // Total is all bytes over the rate whatever the order: 275 KiB / 100 KiB/s.
        assert!(close(secs(&f.classes[2]), 2.75), "{f:?}");
        assert!(close(secs(&f.total), 2.75));
    }

    #[test]
    fn live_ingest_slows_the_drain() {
        // 100 KiB/s link, 1000 KiB of bulk waiting, telemetry arriving at 20 KiB/s and served
        // first: bulk drains at 80 KiB/s net of nothing (its own ingest 0) -> 12.5 s.
        let m = factory(100 * 1024);
        let f = m.forecast(&state([0.0, 0.0, 1000.0 * KIB], [0.0, 20.0 * KIB, 0.0]));
        assert!(close(secs(&f.classes[2]), 12.5), "{f:?}");
        assert_eq!(f.classes[1], Eta::Secs(0.0));
        // Bulk's own new records queue behind its backlog: they do not delay it.
        let f = m.forecast(&state(
            [0.0, 0.0, 1000.0 * KIB],
            [0.0, 20.0 * KIB, 10.0 * KIB],
        ));
        assert!(close(secs(&f.classes[2]), 12.5), "{f:?}");
        // Critical's new alarms go first and do delay bulk: 1000 / (80 - 10).
        let f = m.forecast(&state(
            [0.0, 0.0, 1000.0 * KIB],
            [10.0 * KIB, 20.0 * KIB, 0.0],
        ));
        assert!(close(secs(&f.classes[2]), 1000.0 / 70.0), "{f:?}");
    }

    #[test]
    fn ingest_above_the_rate_never_drains() {
        // Alarms arrive at 12 KiB/s on a 10 KiB/s link; bulk has no share: it never goes.
        let mut m = factory(10 * 1024);
        m.classes[2].min_share = 0.0;
        let f = m.forecast(&state([0.0, 0.0, 100.0 * KIB], [12.0 * KIB, 0.0, 0.0]));
        assert!(
            matches!(&f.classes[2], Eta::Unknown(w) if w.contains("not delivered")),
            "{f:?}"
        );
        assert!(matches!(f.total, Eta::Unknown(_)));
    }

    #[test]
    fn closed_window_adds_the_time_until_it_opens() {
        let mut m = factory(100 * 1024);
        m.windows = Schedule::parse("daily 11:00-12:00").unwrap();
        // 10:00 now: closed for an hour, then 10 s of drain.
        let f = m.forecast(&state([0.0, 0.0, 1000.0 * KIB], [0.0; 3]));
        assert!(close(secs(&f.classes[2]), 3610.0), "{f:?}");
        // Telemetry arriving meanwhile (1 KiB/s for the hour: 3600 KiB) goes first: bulk
        // gets its 5 % share while telemetry's queue drains.
        let f = m.forecast(&state([0.0, 0.0, 1000.0 * KIB], [0.0, KIB, 0.0]));
        let tel = 3600.0 / 94.0; // telemetry: 95 KiB/s less its own 1 KiB/s ingest
        let bulk = 3600.0 + tel + (1000.0 - 5.0 * tel) / 99.0;
        assert!(close(secs(&f.classes[2]), bulk), "{f:?}");
        // An hour-long window that is too short: continues the next day at 11:00.
        let f = m.forecast(&state([0.0, 0.0, 3600.0 * 200.0 * KIB], [0.0; 3]));
        assert!(
            close(secs(&f.classes[2]), 3600.0 + 86400.0 + 3600.0),
            "{f:?}"
        );
    }

    #[test]
    fn drain_override_opens_a_closed_window() {
        let mut m = factory(100 * 1024);
        m.windows = Schedule::never();
        let mut st = state([0.0, 0.0, 1000.0 * KIB], [0.0; 3]);
        let f = m.forecast(&st);
        assert!(
            matches!(&f.total, Eta::Unknown(w) if w.contains("does not open")),
            "{f:?}"
        );
        st.drain_override = Some(Duration::from_secs(86400));
        let f = m.forecast(&st);
        assert!(close(secs(&f.total), 10.0), "{f:?}");
        // An override that ends first leaves the rest waiting for a window that never comes.
        st.drain_override = Some(Duration::from_secs(5));
        let f = m.forecast(&st);
        assert!(matches!(f.total, Eta::Unknown(_)), "{f:?}");
    }

    #[test]
    fn rate_profiles_and_class_caps_apply() {
        let mut m = factory(100 * 1024);
        // From 10:00:10 on... schedules have minute resolution: from 10:01 the link is
        // 50 KiB/s. 6000 KiB: 60 s at 100 KiB/s (6000 KiB), so exactly at the boundary; make
        // it 9000 KiB: 6000 in the first minute, 3000 at 50 KiB/s = 60 s more.
        m.global.profiles =
            vec![RateProfile::parse("daily 10:01-23:00", Rate::BytesPerSec(50 * 1024)).unwrap()];
        let f = m.forecast(&state([0.0, 0.0, 9000.0 * KIB], [0.0; 3]));
        assert!(close(secs(&f.classes[2]), 120.0), "{f:?}");
        // A class cap below the link rate: bulk alone at 25 KiB/s.
        let mut m = factory(100 * 1024);
        m.class_caps[2] = Some(ThrottleConfig::rate(Rate::BytesPerSec(25 * 1024)));
        let f = m.forecast(&state([0.0, 0.0, 100.0 * KIB], [0.0; 3]));
        assert!(close(secs(&f.classes[2]), 4.0), "{f:?}");
        // With telemetry waiting too: telemetry 95 KiB/s, bulk its 5 KiB/s share, then bulk
        // alone at its cap.
        let f = m.forecast(&state([0.0, 100.0 * KIB, 100.0 * KIB], [0.0; 3]));
        let tel = 100.0 / 95.0;
        assert!(close(secs(&f.classes[1]), tel), "{f:?}");
        assert!(
            close(secs(&f.classes[2]), tel + (100.0 - 5.0 * tel) / 25.0),
            "{f:?}"
        );
    }

    #[test]
    fn unthrottled_uses_the_measured_rate_or_says_unknown() {
        let mut m = factory(0);
        m.global = ThrottleConfig::default();
        let mut st = state([0.0, 0.0, 1000.0 * KIB], [0.0; 3]);
        let f = m.forecast(&st);
        assert!(
            matches!(&f.total, Eta::Unknown(w) if w.contains("unthrottled")),
            "{f:?}"
        );
        st.measured_drain = Some(200.0 * KIB);
        let f = m.forecast(&st);
        assert!(close(secs(&f.total), 5.0), "{f:?}");
        assert_eq!(f.basis, "measured");
        // Nothing waiting: empty now, whatever the rate.
        let f = m.forecast(&state([0.0; 3], [0.0; 3]));
        assert_eq!(f.total, Eta::Secs(0.0));
    }

    #[test]
    fn paused_classes_have_no_eta() {
        let m = factory(100 * 1024);
        let mut st = state([0.0, 100.0 * KIB, 100.0 * KIB], [0.0; 3]);
        st.paused[2] = true;
        let f = m.forecast(&st);
        assert_eq!(f.classes[2], Eta::Unknown("paused".into()));
        assert!(close(secs(&f.classes[1]), 1.0), "{f:?}");
        assert!(matches!(&f.total, Eta::Unknown(w) if w.contains("paused")));
    }

    #[test]
    fn daily_budget_stops_the_drain_until_midnight() {
        let mut m = factory(100 * 1024);
        m.global.daily_budget = Some(500 * 1024);
        let mut st = state([0.0, 0.0, 1000.0 * KIB], [0.0; 3]);
        st.local_now = local_dt(2026, 3, 2, 23, 59, 0);
        st.budget_left = Some(500 * 1024);
        // 5 s to spend today's 500 KiB, wait until midnight (60 s from now), 5 s more.
        let f = m.forecast(&st);
        assert!(close(secs(&f.classes[2]), 65.0), "{f:?}");
    }

    #[test]
    fn starved_lower_class_grows_then_drains() {
        // Bulk (share 0.05) arriving at 10 KiB/s while critical drains: bulk gets 5 KiB/s
        // and queues behind its 10 KiB backlog, which is sent after 2 s at its share.
        let m = factory(100 * 1024);
        let f = m.forecast(&state(
            [200.0 * KIB, 0.0, 10.0 * KIB],
            [0.0, 0.0, 10.0 * KIB],
        ));
        assert!(close(secs(&f.classes[0]), 200.0 / 95.0), "{f:?}");
        assert!(close(secs(&f.classes[2]), 2.0), "{f:?}");
    }
}
