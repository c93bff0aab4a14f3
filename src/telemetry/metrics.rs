//! Prometheus metrics: a small registry and every metric ferry exports, in one place.
//!
//! # Why not a metrics crate
//!
//! ferry exports a fixed, known set of metrics from a handful of components, on a device with
//! two cores. What that needs is an atomic add on the hot path and a text renderer on scrape;
//! the registry below is ~300 lines with no dependency, and every name, help text, label set
//! and bucket layout is visible in [`Metrics::new`]. (`prometheus-client` would do as well; it
//! brings its own encoding traits and derive macros for label sets, which is more machinery
//! than a fixed list of metrics needs.)
//!
//! # How components use it
//!
//! Everything hangs off one [`Metrics`] (`Arc`, shared by the runtime, or [`global`]).
//! A family with labels ([`Family`]) hands out a handle per label set with
//! [`Family::with`]; the lookup takes a read lock, so hot loops resolve their handles once
//! (per class: [`Metrics::class`]) and then only touch atomics. Label values must come from
//! bounded sets (configured class names, fixed reason strings): every label set ever used stays
//! in the registry until the process exits.
//!
//! Figures the store already keeps (backlog, drops by reason, which it persists across
//! restarts, refusals, and the writer's commit-batch and fsync histograms) are copied in right
//! before each scrape by a hook the runtime registers ([`Metrics::watch_store`]), so the numbers
//! a scrape shows are the store's own, not a second count that could drift.
//!
//! # Conventions
//!
//! Names follow the Prometheus guide: `ferry_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` on counters. Histograms use fixed buckets chosen for what they measure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::store::{ClassStats, DropReason, IoStats, Store, BATCH_BUCKETS, FSYNC_BUCKETS};

/// Content type of the Prometheus text exposition format this module renders.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }
    pub fn inc_by(&self, n: u64) {
        // Relaxed: each counter is independent and a scrape may see any recent value.
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Mirrors a counter that someone else keeps (e.g. the store's persisted drop counts).
    /// Only use it for values that are themselves monotonic.
    pub fn set_to(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, stored as `f64` bits.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn set_bool(&self, v: bool) {
        self.set(if v { 1.0 } else { 0.0 });
    }
    pub fn add(&self, d: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + d).to_bits())
            });
    }
    pub fn inc(&self) {
        self.add(1.0);
    }
    pub fn dec(&self) {
        self.add(-1.0);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A distribution over fixed buckets (upper bounds, ascending; `+Inf` is implicit).
#[derive(Debug)]
pub struct Histogram {
    bounds: Arc<[f64]>,
    /// Per-bucket (not cumulative) counts; the last slot is the `+Inf` bucket. Cumulated on
    /// render so that `observe` touches exactly one bucket.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: Arc<[f64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, v: f64) {
        // One NaN would turn `_sum` into NaN for the life of the process.
        if v.is_nan() {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    /// Mirrors a histogram someone else keeps with the same bounds: `cumulative` holds one
    /// Prometheus-style cumulative count per bound plus `+Inf` last. A length mismatch (the
    /// other side changed its buckets) is ignored rather than rendered wrong.
    pub fn set_cumulative(&self, cumulative: &[u64], sum: f64) {
        if cumulative.len() != self.counts.len() {
            return;
        }
        let mut below = 0;
        for (slot, &c) in self.counts.iter().zip(cumulative) {
            slot.store(c.saturating_sub(below), Ordering::Relaxed);
            below = c;
        }
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
        self.count.store(below, Ordering::Relaxed);
    }
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }
}

/// What a [`Family`] can hold.
pub trait Metric: Send + Sync + 'static {
    const TYPE: &'static str;
    fn create(buckets: &Arc<[f64]>) -> Self;
    /// Appends this metric's sample lines; `labels` is the rendered `k="v",...` list (may be
    /// empty).
    fn render(&self, out: &mut String, name: &str, labels: &str);
}

impl Metric for Counter {
    const TYPE: &'static str = "counter";
    fn create(_: &Arc<[f64]>) -> Self {
        Counter::default()
    }
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), self.get());
    }
}

impl Metric for Gauge {
    const TYPE: &'static str = "gauge";
    fn create(_: &Arc<[f64]>) -> Self {
        Gauge::default()
    }
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{} {}", braces(labels), fmt_f64(self.get()));
    }
}

impl Metric for Histogram {
    const TYPE: &'static str = "histogram";
    fn create(buckets: &Arc<[f64]>) -> Self {
        Histogram::new(buckets.clone())
    }
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => fmt_f64(*b),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        // `_count` is the +Inf bucket, so the two can never disagree within one scrape.
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), fmt_f64(self.sum()));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// One metric name with a fixed list of label names, and a child per label-value set.
pub struct Family<M: Metric> {
    name: &'static str,
    help: &'static str,
    label_names: &'static [&'static str],
    buckets: Arc<[f64]>,
    children: RwLock<BTreeMap<Vec<String>, Arc<M>>>,
}

impl<M: Metric> Family<M> {
    fn new(name: &'static str, help: &'static str, label_names: &'static [&'static str]) -> Self {
        Self::with_buckets(name, help, label_names, &[])
    }
    fn with_buckets(
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
        buckets: &[f64],
    ) -> Self {
        Family {
            name,
            help,
            label_names,
            buckets: buckets.into(),
            children: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The child for these label values, created on first use. Values are matched to the
    /// family's label names by position.
    ///
    /// A wrong number of values is a programming error; rather than panic in a daemon, the
    /// values are padded with `""` or truncated (a debug build asserts).
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        debug_assert_eq!(
            values.len(),
            self.label_names.len(),
            "metric {} takes labels {:?}",
            self.name,
            self.label_names
        );
        if let Some(m) = self.find(values) {
            return m;
        }
        let mut key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        key.resize(self.label_names.len(), String::new());
        let mut children = self.children.write();
        children
            .entry(key)
            .or_insert_with(|| Arc::new(M::create(&self.buckets)))
            .clone()
    }

    fn find(&self, values: &[&str]) -> Option<Arc<M>> {
        let children = self.children.read();
        // BTreeMap<Vec<String>> cannot be queried with &[&str]; the families are small, and
        // callers on hot paths keep the Arc, so a linear scan on a miss is fine.
        children
            .iter()
            .find(|(k, _)| k.len() == values.len() && k.iter().zip(values).all(|(a, b)| a == b))
            .map(|(_, m)| m.clone())
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, M::TYPE);
        let children = self.children.read();
        for (values, m) in children.iter() {
            let mut labels = String::new();
            for (i, (k, v)) in self.label_names.iter().zip(values).enumerate() {
                if i > 0 {
                    labels.push(',');
                }
                let _ = write!(labels, "{k}=\"{}\"", escape_label(v));
            }
            m.render(out, self.name, &labels);
        }
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's shortest round-trip form ("0.005", "3", "1e-7") is valid Prometheus text.
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Hooks run right before a scrape renders, to copy in figures kept elsewhere.
type ScrapeHook = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric ferry exports. Fields are public so components reach the family they update;
/// the label names of each family are in its help text and in [`Metrics::new`].
pub struct Metrics {
    // ingest
    pub ingest_messages: Family<Counter>,
    pub ingest_bytes: Family<Counter>,
    pub ingest_refused: Family<Counter>,
    pub connections: Family<Gauge>,
    pub connections_accepted: Family<Counter>,
    pub connections_rejected: Family<Counter>,
    // store
    pub commit_batch_records: Family<Histogram>,
    pub fsync_seconds: Family<Histogram>,
    pub commits: Family<Counter>,
    pub fsyncs: Family<Counter>,
    pub written_bytes: Family<Counter>,
    pub backlog_records: Family<Gauge>,
    pub backlog_bytes: Family<Gauge>,
    pub backlog_oldest_age_seconds: Family<Gauge>,
    pub disk_bytes: Family<Gauge>,
    pub dropped_records: Family<Counter>,
    // forward
    pub forwarded_records: Family<Counter>,
    pub forwarded_bytes: Family<Counter>,
    pub delivery_errors: Family<Counter>,
    pub dead_letters: Family<Counter>,
    pub link_up: Family<Gauge>,
    pub window_open: Family<Gauge>,
    pub throttle_tokens: Family<Gauge>,
    // process
    pub build_info: Family<Gauge>,
    pub start_time_seconds: Family<Gauge>,
    hooks: Mutex<Vec<ScrapeHook>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Label names, shared so that every family spells them the same way.
const CLASS: &[&str] = &["class"];
const CLASS_REASON: &[&str] = &["class", "reason"];
const REASON: &[&str] = &["reason"];
const KIND: &[&str] = &["kind"];
const NONE: &[&str] = &[];

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let m = Metrics {
            ingest_messages: Family::new(
                "ferry_ingest_messages_total",
                "Messages committed to the store (PUBACK sent after fdatasync), by class.",
                CLASS,
            ),
            ingest_bytes: Family::new(
                "ferry_ingest_bytes_total",
                "Payload bytes of messages committed to the store, by class.",
                CLASS,
            ),
            ingest_refused: Family::new(
                "ferry_ingest_refused_total",
                "Publishes refused, by class and reason. class_full and headroom are the \
                 store's own counts since start; ingest adds its reasons (too_large, \
                 invalid_topic, no_class, store_error).",
                CLASS_REASON,
            ),
            connections: Family::new(
                "ferry_mqtt_connections",
                "MQTT client connections currently open.",
                NONE,
            ),
            connections_accepted: Family::new(
                "ferry_mqtt_connections_accepted_total",
                "MQTT connections accepted (CONNACK success).",
                NONE,
            ),
            connections_rejected: Family::new(
                "ferry_mqtt_connections_rejected_total",
                "MQTT connections rejected, by reason (limit, auth, protocol, timeout).",
                REASON,
            ),
            commit_batch_records: Family::with_buckets(
                "ferry_store_commit_batch_records",
                "Records per group commit (one write + fdatasync per class touched).",
                NONE,
                &BATCH_BUCKETS,
            ),
            fsync_seconds: Family::with_buckets(
                "ferry_store_fsync_seconds",
                "Latency of fdatasync on segment files (0.2-4 ms is normal on an SSD-backed \
                 VM; tens of ms point at a struggling card or an overloaded host).",
                NONE,
                &FSYNC_BUCKETS,
            ),
            commits: Family::new(
                "ferry_store_commits_total",
                "Group commits that wrote at least one frame.",
                NONE,
            ),
            fsyncs: Family::new(
                "ferry_store_fsyncs_total",
                "fdatasync calls on segment files.",
                NONE,
            ),
            written_bytes: Family::new(
                "ferry_store_written_bytes_total",
                "Bytes the store wrote, by kind: logical (uncompressed records), frame \
                 (after compression) and zeroed (segment space zeroed ahead of the frames; \
                 flash wear follows frame + zeroed).",
                &["kind"],
            ),
            backlog_records: Family::new(
                "ferry_backlog_records",
                "Records stored and not yet acknowledged by Kafka, by class.",
                CLASS,
            ),
            backlog_bytes: Family::new(
                "ferry_backlog_bytes",
                "Uncompressed bytes of the records waiting for delivery, by class.",
                CLASS,
            ),
            backlog_oldest_age_seconds: Family::new(
                "ferry_backlog_oldest_age_seconds",
                "Age of the oldest record waiting for delivery (0 when empty), by class.",
                CLASS,
            ),
            disk_bytes: Family::new(
                "ferry_store_disk_bytes",
                "Size of the class's segment files on disk, by class.",
                CLASS,
            ),
            dropped_records: Family::new(
                "ferry_dropped_records_total",
                "Records removed without Kafka acknowledging them, by class and reason \
                 (max_bytes, max_age, purge, corrupt). Persisted by the store across restarts.",
                CLASS_REASON,
            ),
            forwarded_records: Family::new(
                "ferry_forwarded_records_total",
                "Records acknowledged by Kafka, by class.",
                CLASS,
            ),
            forwarded_bytes: Family::new(
                "ferry_forwarded_bytes_total",
                "Payload bytes of records acknowledged by Kafka, by class.",
                CLASS,
            ),
            delivery_errors: Family::new(
                "ferry_delivery_errors_total",
                "Failed Kafka deliveries, by kind (transport, timeout, fenced, fatal, \
                 too_large, authorization, other).",
                KIND,
            ),
            dead_letters: Family::new(
                "ferry_dead_letters_total",
                "Records moved to the dead-letter destination, by class.",
                CLASS,
            ),
            link_up: Family::new(
                "ferry_link_up",
                "1 while the Kafka link is established, 0 while it is down.",
                NONE,
            ),
            window_open: Family::new(
                "ferry_forward_window_open",
                "1 while a connectivity window allows forwarding, 0 outside it.",
                NONE,
            ),
            throttle_tokens: Family::new(
                "ferry_throttle_tokens",
                "Tokens (bytes) currently in the forwarder's throttle bucket, by bucket.",
                &["bucket"],
            ),
            build_info: Family::new(
                "ferry_build_info",
                "Always 1; the label carries the running ferry version.",
                &["version"],
            ),
            start_time_seconds: Family::new(
                "ferry_start_time_seconds",
                "When the process started, in seconds since the Unix epoch.",
                NONE,
            ),
            hooks: Mutex::new(Vec::new()),
        };
        m.build_info.with(&[env!("CARGO_PKG_VERSION")]).set(1.0);
        m.start_time_seconds.with(&[]).set(unix_now().as_secs_f64());
        // Label-less families render a sample from the start, so a dashboard sees 0, not a gap.
        for g in [&m.connections, &m.link_up, &m.window_open] {
            g.with(&[]);
        }
        m.connections_accepted.with(&[]);
        Arc::new(m)
    }

    /// Handles for the per-class metrics, resolved once so hot loops only touch atomics.
    /// Also makes the class's series appear (at 0) before its first message.
    pub fn class(&self, class: &str) -> ClassMetrics {
        ClassMetrics {
            ingest_messages: self.ingest_messages.with(&[class]),
            ingest_bytes: self.ingest_bytes.with(&[class]),
            backlog_records: self.backlog_records.with(&[class]),
            backlog_bytes: self.backlog_bytes.with(&[class]),
            backlog_oldest_age_seconds: self.backlog_oldest_age_seconds.with(&[class]),
            forwarded_records: self.forwarded_records.with(&[class]),
            forwarded_bytes: self.forwarded_bytes.with(&[class]),
            dead_letters: self.dead_letters.with(&[class]),
        }
    }

    /// Counts one refused publish. `reason` must come from a fixed set (see the help text).
    /// `class_full` and `headroom` refusals are the store's and are copied from its stats by
    /// [`Metrics::watch_store`]; ingest counts only its own reasons here.
    pub fn refused(&self, class: &str, reason: &str) {
        self.ingest_refused.with(&[class, reason]).inc();
    }

    /// Counts one failed delivery attempt. `kind` must come from a fixed set.
    pub fn delivery_error(&self, kind: &str) {
        self.delivery_errors.with(&[kind]).inc();
    }

    /// Counts an accepted MQTT connection; the returned guard keeps it in
    /// `ferry_mqtt_connections` until dropped, so every exit path of a session task (error,
    /// panic, disconnect) closes the count.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_accepted.with(&[]).inc();
        let open = self.connections.with(&[]);
        open.inc();
        ConnectionGuard(open)
    }

    pub fn connection_rejected(&self, reason: &str) {
        self.connections_rejected.with(&[reason]).inc();
    }

    pub fn set_link_up(&self, up: bool) {
        self.link_up.with(&[]).set_bool(up);
    }

    pub fn set_window_open(&self, open: bool) {
        self.window_open.with(&[]).set_bool(open);
    }

    pub fn set_throttle_tokens(&self, bucket: &str, tokens: f64) {
        self.throttle_tokens.with(&[bucket]).set(tokens);
    }

    /// Copies the store's own figures in: backlog gauges, disk size and the persisted drop
    /// counters. `now_ms` is the wall clock in ms since the Unix epoch (records carry
    /// receive times in that unit).
    pub fn update_from_store(&self, stats: &[ClassStats], now_ms: u64) {
        for s in stats {
            let class = s.name.as_str();
            self.backlog_records.with(&[class]).set(s.records as f64);
            self.backlog_bytes
                .with(&[class])
                .set(s.logical_bytes as f64);
            self.disk_bytes.with(&[class]).set(s.disk_bytes as f64);
            let age_ms = s.oldest_ts_ms.map_or(0, |t| now_ms.saturating_sub(t));
            self.backlog_oldest_age_seconds
                .with(&[class])
                .set(age_ms as f64 / 1000.0);
            for r in DropReason::ALL {
                self.dropped_records
                    .with(&[class, r.as_str()])
                    .set_to(s.dropped.get(r));
            }
            self.ingest_refused
                .with(&[class, "class_full"])
                .set_to(s.refused_full);
            self.ingest_refused
                .with(&[class, "headroom"])
                .set_to(s.refused_headroom);
        }
    }

    /// Copies the store writer's own I/O figures in (commit batch and fsync histograms,
    /// commit/fsync/byte counters).
    pub fn update_from_io(&self, io: &IoStats) {
        self.commit_batch_records
            .with(&[])
            .set_cumulative(&io.batch_buckets, io.batch_records_sum as f64);
        self.fsync_seconds
            .with(&[])
            .set_cumulative(&io.fsync_buckets, io.fsync_seconds_sum);
        self.commits.with(&[]).set_to(io.commits);
        self.fsyncs.with(&[]).set_to(io.fsyncs);
        self.written_bytes
            .with(&["logical"])
            .set_to(io.logical_bytes_written);
        self.written_bytes
            .with(&["frame"])
            .set_to(io.frame_bytes_written);
        self.written_bytes
            .with(&["zeroed"])
            .set_to(io.zeroed_bytes_written);
    }

    /// Makes every scrape copy the store's figures in first ([`Metrics::update_from_store`],
    /// [`Metrics::update_from_io`]).
    pub fn watch_store(&self, store: Store) {
        self.add_scrape_hook(move |m| {
            let now_ms = unix_now().as_millis() as u64;
            m.update_from_store(&store.stats(), now_ms);
            m.update_from_io(&store.io_stats());
        });
    }

    /// Registers a function that runs before every [`Metrics::render`], e.g. one that calls
    /// [`Metrics::update_from_store`] with `store.stats()`. Hooks run on the scrape's task and
    /// should be quick.
    pub fn add_scrape_hook(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.hooks.lock().push(Box::new(hook));
    }

    /// Renders every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        {
            let hooks = self.hooks.lock();
            for h in hooks.iter() {
                h(self);
            }
        }
        let mut out = String::with_capacity(8 * 1024);
        self.ingest_messages.render(&mut out);
        self.ingest_bytes.render(&mut out);
        self.ingest_refused.render(&mut out);
        self.connections.render(&mut out);
        self.connections_accepted.render(&mut out);
        self.connections_rejected.render(&mut out);
        self.commit_batch_records.render(&mut out);
        self.fsync_seconds.render(&mut out);
        self.commits.render(&mut out);
        self.fsyncs.render(&mut out);
        self.written_bytes.render(&mut out);
        self.backlog_records.render(&mut out);
        self.backlog_bytes.render(&mut out);
        self.backlog_oldest_age_seconds.render(&mut out);
        self.disk_bytes.render(&mut out);
        self.dropped_records.render(&mut out);
        self.forwarded_records.render(&mut out);
        self.forwarded_bytes.render(&mut out);
        self.delivery_errors.render(&mut out);
        self.dead_letters.render(&mut out);
        self.link_up.render(&mut out);
        self.window_open.render(&mut out);
        self.throttle_tokens.render(&mut out);
        self.build_info.render(&mut out);
        self.start_time_seconds.render(&mut out);
        out
    }
}

/// An open connection in `ferry_mqtt_connections` (see [`Metrics::connection_opened`]).
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Gauge>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Per-class handles (see [`Metrics::class`]).
#[derive(Debug, Clone)]
pub struct ClassMetrics {
    pub ingest_messages: Arc<Counter>,
    pub ingest_bytes: Arc<Counter>,
    pub backlog_records: Arc<Gauge>,
    pub backlog_bytes: Arc<Gauge>,
    pub backlog_oldest_age_seconds: Arc<Gauge>,
    pub forwarded_records: Arc<Counter>,
    pub forwarded_bytes: Arc<Counter>,
    pub dead_letters: Arc<Counter>,
}

impl ClassMetrics {
    /// One message committed (its PUBACK may now go out).
    pub fn ingested(&self, payload_bytes: usize) {
        self.ingest_messages.inc();
        self.ingest_bytes.inc_by(payload_bytes as u64);
    }

    /// Kafka acknowledged `records` records carrying `payload_bytes` bytes.
    pub fn forwarded(&self, records: u64, payload_bytes: u64) {
        self.forwarded_records.inc_by(records);
        self.forwarded_bytes.inc_by(payload_bytes);
    }
}

/// The process-wide registry, for code that has no `Arc<Metrics>` passed in. The runtime
/// should use this same instance (`global().clone()`) so that there is one set of numbers.
pub fn global() -> &'static Arc<Metrics> {
    static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_escaped_labels() {
        let m = Metrics::new();
        let c = m.class("tele\"metry");
        c.ingested(10);
        c.ingested(5);
        m.refused("alarms", "class_full");
        m.set_link_up(true);
        let text = m.render();
        assert!(text.contains("# TYPE ferry_ingest_messages_total counter\n"));
        assert!(text.contains("ferry_ingest_messages_total{class=\"tele\\\"metry\"} 2\n"));
        assert!(text.contains("ferry_ingest_bytes_total{class=\"tele\\\"metry\"} 15\n"));
        assert!(
            text.contains("ferry_ingest_refused_total{class=\"alarms\",reason=\"class_full\"} 1\n")
        );
        assert!(text.contains("ferry_link_up 1\n"));
        assert!(text.contains("ferry_mqtt_connections 0\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        let h = m.commit_batch_records.with(&[]);
        h.observe(1.0);
        h.observe(3.0);
        h.observe(5000.0);
        let text = m.render();
        assert!(text.contains("ferry_store_commit_batch_records_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("ferry_store_commit_batch_records_bucket{le=\"4\"} 2\n"));
        assert!(text.contains("ferry_store_commit_batch_records_bucket{le=\"1024\"} 2\n"));
        assert!(text.contains("ferry_store_commit_batch_records_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("ferry_store_commit_batch_records_sum 5004\n"));
        assert!(text.contains("ferry_store_commit_batch_records_count 3\n"));
    }

    #[test]
    fn io_stats_are_mirrored() {
        let m = Metrics::new();
        let mut fsync = vec![0u64; FSYNC_BUCKETS.len() + 1];
        // 2 fsyncs <= 0.5 ms, 1 more <= 5 ms, 1 above every bound.
        for (i, b) in FSYNC_BUCKETS.iter().enumerate() {
            fsync[i] = if *b < 0.0005 {
                0
            } else if *b < 0.005 {
                2
            } else {
                3
            };
        }
        fsync[FSYNC_BUCKETS.len()] = 4;
        let io = IoStats {
            commits: 4,
            fsyncs: 4,
            fsync_seconds_sum: 2.5,
            fsync_buckets: fsync,
            batch_buckets: vec![1; BATCH_BUCKETS.len() + 1],
            batch_records_sum: 1,
            records_written: 1,
            logical_bytes_written: 100,
            frame_bytes_written: 80,
            ..IoStats::default()
        };
        m.update_from_io(&io);
        let text = m.render();
        assert!(text.contains("ferry_store_fsync_seconds_bucket{le=\"0.0001\"} 0\n"));
        assert!(text.contains("ferry_store_fsync_seconds_bucket{le=\"0.0005\"} 2\n"));
        assert!(text.contains("ferry_store_fsync_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("ferry_store_fsync_seconds_bucket{le=\"1\"} 3\n"));
        assert!(text.contains("ferry_store_fsync_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("ferry_store_fsync_seconds_count 4\n"));
        assert!(text.contains("ferry_store_fsync_seconds_sum 2.5\n"));
        assert!(text.contains("ferry_store_commits_total 4\n"));
        assert!(text.contains("ferry_store_written_bytes_total{kind=\"frame\"} 80\n"));
        assert!(text.contains("ferry_store_commit_batch_records_count 1\n"));
    }

    #[test]
    fn same_labels_share_one_child() {
        let m = Metrics::new();
        m.delivery_error("timeout");
        m.delivery_error("timeout");
        assert_eq!(m.delivery_errors.with(&["timeout"]).get(), 2);
        assert!(Arc::ptr_eq(
            &m.delivery_errors.with(&["timeout"]),
            &m.delivery_errors.with(&["timeout"])
        ));
    }

    #[test]
    fn connection_guard_counts_open_connections() {
        let m = Metrics::new();
        let a = m.connection_opened();
        let b = m.connection_opened();
        assert_eq!(m.connections.with(&[]).get(), 2.0);
        drop(a);
        assert_eq!(m.connections.with(&[]).get(), 1.0);
        drop(b);
        assert_eq!(m.connections.with(&[]).get(), 0.0);
        assert_eq!(m.connections_accepted.with(&[]).get(), 2);
    }

    #[test]
    fn histogram_ignores_nan() {
        let h = Histogram::new(Arc::from(&[1.0][..]));
        h.observe(f64::NAN);
        h.observe(0.5);
        assert_eq!(h.count(), 1);
        assert_eq!(h.sum(), 0.5);
    }

    #[test]
    fn gauge_add_and_special_values() {
        let g = Gauge::default();
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1.0);
        assert_eq!(fmt_f64(f64::INFINITY), "+Inf");
        assert_eq!(fmt_f64(f64::NAN), "NaN");
        assert_eq!(fmt_f64(0.25), "0.25");
    }
}
