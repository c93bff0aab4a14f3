//! Priority scheduler: which class the forwarder reads its next batch from.
//!
//! # API
//!
//! ```text
//! let mut s = Scheduler::new(vec![ClassPolicy { name, priority, min_share }, ..])?;  // index = ClassId
//! loop {
//!     let Some(class) = s.pick(|c| has_backlog(c) && class_throttle_allows(c)) else { wait };
//!     let bytes = send_a_batch_from(class);
//!     s.record_sent(class, bytes);
//! }
//! s.rank(ready) -> Vec<ClassId>      all eligible classes, best first (try the next if one fails)
//! s.pause(Some(class)) / s.pause(None) / s.resume(..) / s.is_paused(class)   operator override
//! s.shares() -> Vec<f64>             recent share of bytes per class, for status and metrics
//! ```
//!
//! # Algorithm
//!
//! Each class keeps an exponentially decayed count of the bytes sent for it ("recent
//! bytes"). Decay is by bytes, not time: every time `b` bytes are sent (for any class), all
//! counts are multiplied by `2^(-b / half_life)`, so a class's share is its fraction of,
//! roughly, the last `half_life` bytes on the link (default 32 MiB) — independent of how fast
//! the link is, and unaffected by closed windows or idle hours. At each pick, among classes
//! that are ready (have backlog, as the caller says) and not paused:
//!
//! ```text
//!              ready, not paused
//!                     │
//!       any with min_share > 0 and share < min_share ?
//!            yes │                          │ no
//!                ▼                          ▼
//!   the most starved one:          the highest priority;
//!   lowest share / min_share       among equals the lowest recent bytes
//!   (then priority, then id)       (then id)
//! ```
//!
//! So while everything is backlogged, each class converges to at least its `min_share` of
//! the bytes and the remainder goes to the highest-priority class; a class with
//! `min_share = 0` gets nothing while a higher class is backlogged, and the link back as soon
//! as it is not. Nothing is remembered about backlog between picks, so fresh messages of a
//! high class overtake an old backlog of a lower one at the very next pick — unless a lower
//! class is below its guaranteed share, which is the point of the guarantee. Shares are
//! granted a batch at a time, so a class can overshoot its share by at most one batch.
//!
//! Pause is kept here, not in [`super::window`], because it is a choice of what to send: a
//! paused class is never picked, whatever its backlog or share, until resumed, and its
//! share decays meanwhile so it is served promptly after resuming.

use crate::store::ClassId;

/// Default decay half-life in bytes.
pub const DEFAULT_HALF_LIFE_BYTES: u64 = 32 << 20;

/// Scheduling settings of one class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPolicy {
    /// Class name, for messages.
    pub name: String,
    /// Higher is served first.
    pub priority: i32,
    /// Fraction of the link's bytes (0.0..=1.0) guaranteed while the class is backlogged.
    pub min_share: f64,
}

/// Scheduler settings that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A share outside 0..=1 (or not a number).
    #[error("class `{class}`: min_share {value} must be between 0.0 and 1.0 (e.g. 0.1 for 10 %)")]
    ShareOutOfRange {
        /// The class.
        class: String,
        /// The value given.
        value: f64,
    },
    /// Guarantees that add up to more than the whole link.
    #[error(
        "the min_share values add up to {sum:.3}, more than the whole link (1.0); \
         lower some of them so that the sum is at most 1.0"
    )]
    SharesExceedOne {
        /// The sum.
        sum: f64,
    },
    /// A half-life of zero bytes would forget every send at once.
    #[error("the scheduler's share half-life must be at least 1 byte")]
    ZeroHalfLife,
}

#[derive(Debug, Clone)]
struct ClassState {
    policy: ClassPolicy,
    recent: f64,
    paused: bool,
}

/// The scheduler. See the module docs.
#[derive(Debug, Clone)]
pub struct Scheduler {
    classes: Vec<ClassState>,
    half_life: f64,
}

impl Scheduler {
    /// A scheduler over `policies`, indexed by class id.
    pub fn new(policies: Vec<ClassPolicy>) -> Result<Self, PolicyError> {
        let mut sum = 0.0;
        for p in &policies {
            if !(0.0..=1.0).contains(&p.min_share) {
                return Err(PolicyError::ShareOutOfRange {
                    class: p.name.clone(),
                    value: p.min_share,
                });
            }
            sum += p.min_share;
        }
        // A little slack for decimal fractions that do not add up exactly in binary.
        if sum > 1.0 + 1e-9 {
            return Err(PolicyError::SharesExceedOne { sum });
        }
        Ok(Scheduler {
            classes: policies
                .into_iter()
                .map(|policy| ClassState {
                    policy,
                    recent: 0.0,
                    paused: false,
                })
                .collect(),
            half_life: DEFAULT_HALF_LIFE_BYTES as f64,
        })
    }

    /// Sets the decay half-life in bytes (see the module docs). It should be many batches
    /// long, or shares are measured over too few batches to be met smoothly.
    pub fn with_half_life(mut self, bytes: u64) -> Result<Self, PolicyError> {
        if bytes == 0 {
            return Err(PolicyError::ZeroHalfLife);
        }
        self.half_life = bytes as f64;
        Ok(self)
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when there are no classes.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The policy of `class`.
    pub fn policy(&self, class: ClassId) -> Option<&ClassPolicy> {
        self.classes.get(class).map(|c| &c.policy)
    }

    /// The class to read the next batch from, among those for which `ready` is true (the
    /// caller's "has backlog and may send now"), or `None` if none is ready.
    pub fn pick(&self, ready: impl Fn(ClassId) -> bool) -> Option<ClassId> {
        self.rank(ready).first().copied()
    }

    /// All ready, unpaused classes in the order [`pick`](Self::pick) would choose them.
    pub fn rank(&self, ready: impl Fn(ClassId) -> bool) -> Vec<ClassId> {
        let total = self.total();
        let share = |c: &ClassState| if total > 0.0 { c.recent / total } else { 0.0 };
        let mut starved: Vec<(f64, ClassId)> = Vec::new();
        let mut rest: Vec<ClassId> = Vec::new();
        for (id, c) in self.classes.iter().enumerate() {
            if c.paused || !ready(id) {
                continue;
            }
            let s = share(c);
            if c.policy.min_share > 0.0 && s < c.policy.min_share {
                starved.push((s / c.policy.min_share, id));
            } else {
                rest.push(id);
            }
        }
        let prio = |id: ClassId| self.classes[id].policy.priority;
        let recent = |id: ClassId| self.classes[id].recent;
        starved.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(prio(b.1).cmp(&prio(a.1)))
                .then(a.1.cmp(&b.1))
        });
        rest.sort_by(|&a, &b| {
            prio(b)
                .cmp(&prio(a))
                .then(recent(a).total_cmp(&recent(b)))
                .then(a.cmp(&b))
        });
        starved.into_iter().map(|(_, id)| id).chain(rest).collect()
    }

    /// Accounts `bytes` sent for `class` (after the batch went to the producer). Unknown
    /// classes are ignored.
    pub fn record_sent(&mut self, class: ClassId, bytes: u64) {
        if class >= self.classes.len() {
            tracing::warn!(
                class,
                bytes,
                "scheduler: bytes recorded for an unknown class"
            );
            return;
        }
        let factor = (-(bytes as f64) / self.half_life).exp2();
        for c in &mut self.classes {
            c.recent *= factor;
        }
        self.classes[class].recent += bytes as f64;
    }

    /// Recent share of bytes per class (0.0 when nothing was sent yet).
    pub fn shares(&self) -> Vec<f64> {
        let total = self.total();
        self.classes
            .iter()
            .map(|c| if total > 0.0 { c.recent / total } else { 0.0 })
            .collect()
    }

    /// Pauses one class (`Some`) or all (`None`): it is not picked until resumed.
    pub fn pause(&mut self, class: Option<ClassId>) {
        self.set_paused(class, true);
    }

    /// Resumes one class (`Some`) or all (`None`).
    pub fn resume(&mut self, class: Option<ClassId>) {
        self.set_paused(class, false);
    }

    /// True if `class` is paused (unknown classes are not).
    pub fn is_paused(&self, class: ClassId) -> bool {
        self.classes.get(class).is_some_and(|c| c.paused)
    }

    fn set_paused(&mut self, class: Option<ClassId>, paused: bool) {
        for (id, c) in self.classes.iter_mut().enumerate() {
            if class.is_none_or(|want| want == id) && c.paused != paused {
                c.paused = paused;
                tracing::info!(class = %c.policy.name, paused, "forwarding pause changed");
            }
        }
    }

    fn total(&self) -> f64 {
        self.classes.iter().map(|c| c.recent).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pol(name: &str, priority: i32, min_share: f64) -> ClassPolicy {
        ClassPolicy {
            name: name.into(),
            priority,
            min_share,
        }
    }

    /// Runs `picks` picks with the given backlog and batch sizes; returns the bytes each
    /// class got in the second half (after convergence).
    fn run(
        s: &mut Scheduler,
        picks: usize,
        ready: &[bool],
        batch: impl Fn(usize) -> u64,
    ) -> Vec<u64> {
        let mut got = vec![0; s.len()];
        for i in 0..picks {
            let c = s.pick(|c| ready[c]).unwrap();
            let b = batch(i);
            s.record_sent(c, b);
            if i >= picks / 2 {
                got[c] += b;
            }
        }
        got
    }

    fn fractions(got: &[u64]) -> Vec<f64> {
        let total: u64 = got.iter().sum();
        got.iter().map(|&g| g as f64 / total as f64).collect()
    }

    #[test]
    fn all_backlogged_shares_converge_to_min_shares_and_the_rest_to_the_top() {
        let mut s = Scheduler::new(vec![
            pol("alarms", 30, 0.0),
            pol("telemetry", 20, 0.2),
            pol("bulk", 10, 0.1),
        ])
        .unwrap();
        let got = run(&mut s, 20_000, &[true; 3], |_| 64 << 10);
        let f = fractions(&got);
        assert!(f[1] >= 0.2 - 0.005, "{f:?}");
        assert!(f[2] >= 0.1 - 0.005, "{f:?}");
        assert!((f[0] - 0.7).abs() < 0.01, "{f:?}");
        // The decayed shares the scheduler reports agree.
        let sh = s.shares();
        assert!(
            (sh[0] - 0.7).abs() < 0.02 && (sh[1] - 0.2).abs() < 0.02,
            "{sh:?}"
        );
    }

    #[test]
    fn uneven_batches_still_meet_min_shares() {
        let mut s = Scheduler::new(vec![
            pol("a", 3, 0.05),
            pol("b", 2, 0.25),
            pol("c", 1, 0.3),
            pol("d", 0, 0.0),
        ])
        .unwrap()
        .with_half_life(64 << 20)
        .unwrap();
        let got = run(&mut s, 40_000, &[true; 4], |i| {
            1_000 + (i as u64 * 7_919) % 1_000_000
        });
        let f = fractions(&got);
        assert!(
            f[1] >= 0.25 - 0.01 && f[2] >= 0.3 - 0.01 && f[0] >= 0.05,
            "{f:?}"
        );
        assert!((f[0] - 0.45).abs() < 0.02, "{f:?}");
        // d has no guarantee and a lower priority than everything backlogged.
        assert_eq!(got[3], 0, "{f:?}");
    }

    #[test]
    fn zero_share_class_starves_only_while_a_higher_class_is_backlogged() {
        let mut s = Scheduler::new(vec![pol("high", 2, 0.0), pol("low", 1, 0.0)]).unwrap();
        for _ in 0..1000 {
            assert_eq!(s.pick(|_| true), Some(0));
            s.record_sent(0, 100_000);
        }
        // The high class drains: the low one gets the link at once.
        assert_eq!(s.pick(|c| c == 1), Some(1));
        s.record_sent(1, 100_000);
        // Fresh high messages overtake the low backlog at the next pick.
        assert_eq!(s.pick(|_| true), Some(0));
    }

    #[test]
    fn fresh_high_messages_overtake_an_old_low_backlog_at_the_next_pick() {
        let mut s = Scheduler::new(vec![pol("alarms", 9, 0.0), pol("bulk", 1, 0.2)]).unwrap();
        // Hours of bulk backlog alone.
        for _ in 0..5_000 {
            assert_eq!(s.pick(|c| c == 1), Some(1));
            s.record_sent(1, 1 << 20);
        }
        // One alarm arrives: it is next, and again for each new alarm, since bulk is far
        // above its guaranteed share.
        for _ in 0..10 {
            assert_eq!(s.pick(|_| true), Some(0));
            s.record_sent(0, 300);
        }
    }

    #[test]
    fn a_class_below_its_share_is_served_before_higher_priority() {
        let mut s = Scheduler::new(vec![pol("high", 5, 0.0), pol("low", 1, 0.1)]).unwrap();
        // Nothing sent yet: low is below its share.
        assert_eq!(s.pick(|_| true), Some(1));
        s.record_sent(1, 1 << 20);
        assert_eq!(s.pick(|_| true), Some(0));
        for _ in 0..30 {
            s.record_sent(0, 1 << 20);
        }
        // Low has fallen below 10 % of recent bytes: it goes first.
        assert!(s.shares()[1] < 0.1);
        assert_eq!(s.pick(|_| true), Some(1));
        assert_eq!(s.rank(|_| true), vec![1, 0]);
        // Unless it has no backlog.
        assert_eq!(s.pick(|c| c == 0), Some(0));
    }

    #[test]
    fn most_starved_goes_first_among_starved() {
        let mut s =
            Scheduler::new(vec![pol("a", 1, 0.4), pol("b", 1, 0.4), pol("c", 9, 0.0)]).unwrap();
        s.record_sent(0, 30);
        s.record_sent(1, 10);
        s.record_sent(2, 60);
        // shares: a 0.3 (0.75 of its guarantee), b 0.1 (0.25): b first, then a, then c.
        assert_eq!(s.rank(|_| true), vec![1, 0, 2]);
    }

    #[test]
    fn equal_priorities_share_evenly() {
        let mut s =
            Scheduler::new(vec![pol("a", 1, 0.0), pol("b", 1, 0.0), pol("c", 1, 0.0)]).unwrap();
        let got = run(&mut s, 3_000, &[true; 3], |_| 10_000);
        let f = fractions(&got);
        for x in f {
            assert!((x - 1.0 / 3.0).abs() < 0.01);
        }
    }

    #[test]
    fn paused_classes_are_never_picked() {
        let mut s =
            Scheduler::new(vec![pol("a", 3, 0.0), pol("b", 2, 0.5), pol("c", 1, 0.0)]).unwrap();
        s.pause(Some(1));
        assert!(s.is_paused(1));
        assert_eq!(s.rank(|_| true), vec![0, 2]);
        s.pause(None);
        assert_eq!(s.pick(|_| true), None);
        s.resume(Some(2));
        assert_eq!(s.pick(|_| true), Some(2));
        s.resume(None);
        // b has its guaranteed share and nothing sent yet.
        assert_eq!(s.pick(|_| true), Some(1));
        assert!(!s.is_paused(7));
    }

    #[test]
    fn nothing_ready_means_no_pick() {
        let s = Scheduler::new(vec![pol("a", 1, 0.5)]).unwrap();
        assert_eq!(s.pick(|_| false), None);
        let empty = Scheduler::new(vec![]).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.pick(|_| true), None);
    }

    #[test]
    fn invalid_policies_are_rejected_with_reasons() {
        let e = Scheduler::new(vec![pol("a", 1, 0.7), pol("b", 1, 0.4)]).unwrap_err();
        assert!(e.to_string().contains("1.100"), "{e}");
        let e = Scheduler::new(vec![pol("a", 1, -0.1)]).unwrap_err();
        assert!(e.to_string().contains("class `a`"), "{e}");
        assert!(Scheduler::new(vec![pol("a", 1, f64::NAN)]).is_err());
        // Decimal fractions that sum to one in decimal are fine.
        Scheduler::new(vec![pol("a", 1, 0.1), pol("b", 1, 0.2), pol("c", 1, 0.7)]).unwrap();
        assert!(Scheduler::new(vec![]).unwrap().with_half_life(0).is_err());
    }

    #[test]
    fn unknown_class_bytes_are_ignored() {
        let mut s = Scheduler::new(vec![pol("a", 1, 0.0)]).unwrap();
        s.record_sent(5, 1000);
        assert_eq!(s.shares(), vec![0.0]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Pick { ready: Vec<bool>, bytes: u64 },
        Pause(Option<usize>),
        Resume(Option<usize>),
    }

    fn ops(n: usize) -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            8 => (proptest::collection::vec(any::<bool>(), n), 0u64..2_000_000)
                .prop_map(|(ready, bytes)| Op::Pick { ready, bytes }),
            1 => proptest::option::of(0..n).prop_map(Op::Pause),
            1 => proptest::option::of(0..n).prop_map(Op::Resume),
        ];
        proptest::collection::vec(op, 1..200)
    }

    fn policies() -> impl Strategy<Value = Vec<ClassPolicy>> {
        proptest::collection::vec((-3i32..3, 0.0f64..1.0), 1..6).prop_map(|v| {
            let sum: f64 = v.iter().map(|x| x.1).sum();
            let scale = if sum > 1.0 { 1.0 / sum } else { 1.0 };
            v.into_iter()
                .enumerate()
                .map(|(i, (p, s))| pol(&format!("c{i}"), p, (s * scale).min(1.0) * 0.999))
                .collect()
        })
    }

    proptest! {
        /// The scheduler picks only ready, unpaused classes, and always picks one if any
        /// is ready and unpaused (it never idles the link with work to do).
        #[test]
        fn never_picks_a_class_without_backlog(
            (pols, ops) in policies().prop_flat_map(|p| { let n = p.len(); (Just(p), ops(n)) })
        ) {
            let n = pols.len();
            let mut s = Scheduler::new(pols).unwrap().with_half_life(1 << 20).unwrap();
            let mut paused = vec![false; n];
            for op in ops {
                match op {
                    Op::Pause(c) => {
                        s.pause(c);
                        for (i, p) in paused.iter_mut().enumerate() {
                            if c.is_none_or(|c| c == i) { *p = true; }
                        }
                    }
                    Op::Resume(c) => {
                        s.resume(c);
                        for (i, p) in paused.iter_mut().enumerate() {
                            if c.is_none_or(|c| c == i) { *p = false; }
                        }
                    }
                    Op::Pick { ready, bytes } => {
                        let eligible: Vec<usize> = (0..n).filter(|&i| ready[i] && !paused[i]).collect();
                        let rank = s.rank(|c| ready[c]);
                        let mut sorted = rank.clone();
                        sorted.sort_unstable();
                        prop_assert_eq!(&sorted, &eligible);
                        match s.pick(|c| ready[c]) {
                            Some(c) => {
                                prop_assert!(ready[c] && !paused[c]);
                                prop_assert_eq!(Some(&c), rank.first());
                                s.record_sent(c, bytes);
                            }
                            None => prop_assert!(eligible.is_empty()),
                        }
                    }
                }
            }
            let total: f64 = s.shares().iter().sum();
            prop_assert!(total == 0.0 || (total - 1.0).abs() < 1e-9);
        }
    }
}
