//! Reports computed from a [`Store`]: the daemon's live one, or one opened read-only.
//!
//! Everything here reads the log through the store's own bounded-memory [`crate::store::Reader`]
//! (one batch at a time), so inspecting a class of any size costs a batch of memory plus the
//! small per-prefix table of `backlog`, whose size is capped ([`TRACK_PREFIXES`]).
//!
//! Functions here block (they `pread`): the server calls them from `spawn_blocking`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::forward::clock::{Clock, SystemClock};
use crate::forward::deadletter::{DeadLetter, DeadLetterInfo, DeadLetters};
use crate::forward::eta::{DrainState, Eta, Forecast};
use crate::forward::mapping::Mapper;
use crate::forward::{DrainContext, ForwarderStatus};
use crate::store::{
    ClassId, ClassOptions, Overflow, Store, StoreError, StoreOptions, StoredRecord,
};
use crate::topic::{filter_matches, validate_filter};

use super::{
    BacklogReport, ClassBacklog, ClassView, DeadLetterEntry, DeadLetterSummary, EtaView,
    ForwarderView, PeekFrom, PeekRecord, PeekReport, PrefixBacklog, Rate, StatusReport,
};

/// Prefixes listed per class unless asked otherwise.
pub const DEFAULT_MAX_PREFIXES: usize = 20;
/// Distinct prefixes tracked per class while scanning; records under prefixes first seen after
/// the table is full are counted as "other". Bounds memory on a topic space with ids in it.
pub const TRACK_PREFIXES: usize = 10_000;

const SCAN_BATCH_RECORDS: usize = 1024;
const SCAN_BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("unknown class `{name}`; this store has: {known}")]
    UnknownClass { name: String, known: String },
    #[error("`{filter}` is not a valid MQTT topic filter: {what}")]
    BadFilter { filter: String, what: String },
    #[error("reading class `{class}`: {source}")]
    Store {
        class: String,
        #[source]
        source: StoreError,
    },
    #[error("opening the data directory {path} read-only: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("copying the dead-letter log {path} for read-only inspection: {source}")]
    DeadLetterCopy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    DeadLetter(#[from] crate::forward::deadletter::DeadLetterError),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn class_id(store: &Store, name: &str) -> Result<ClassId, InspectError> {
    store
        .class_id(name)
        .ok_or_else(|| InspectError::UnknownClass {
            name: name.to_string(),
            known: store.class_names().join(", "),
        })
}

/// Opens `data_dir` for inspection without writing to it: classes are the configured ones
/// (`configured`, may be empty) plus any class directory found on disk, so a data directory
/// can be inspected without its config.
pub fn open_read_only(data_dir: &Path, configured: &[String]) -> Result<Store, InspectError> {
    let mut names: Vec<String> = configured.to_vec();
    let classes_dir = data_dir.join("classes");
    if let Ok(rd) = std::fs::read_dir(&classes_dir) {
        let mut found: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !names.contains(n))
            .collect();
        found.sort();
        names.extend(found);
    }
    let classes = names
        .into_iter()
        .map(|name| ClassOptions {
            name,
            // Limits only matter to a writer; a read-only store never applies them.
            max_bytes: u64::MAX,
            max_age: None,
            overflow: Overflow::DropOldest,
        })
        .collect();
    let mut opts = StoreOptions::new(data_dir, classes);
    opts.read_only = true;
    Store::open(opts)
        .map(|(s, _report)| s)
        .map_err(|source| InspectError::Open {
            path: data_dir.to_path_buf(),
            source,
        })
}

/// Rates measured by sampling the store once a second (the daemon runs the sampling).
///
/// Ingest = growth of the committed sequences and of the logical bytes written; per-class drain
/// = growth of each class's acknowledged position. Both come from the store, so they are what
/// really happened, whatever the forwarder believes.
pub struct RateTracker {
    samples: VecDeque<Sample>,
    window: std::time::Duration,
}

struct Sample {
    at: Instant,
    committed: u64,
    written_bytes: u64,
    acked_bytes: Vec<u64>,
    /// Per class: acknowledged end + waiting bytes, which grows by the bytes appended.
    class_written: Vec<u64>,
}

/// Rates derived from the samples.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    pub ingest: Rate,
    pub class_drain_bytes_per_sec: Vec<f64>,
    /// Logical bytes appended per second, per class.
    pub class_ingest_bytes_per_sec: Vec<f64>,
}

impl RateTracker {
    pub fn new(window: std::time::Duration) -> Self {
        RateTracker {
            samples: VecDeque::new(),
            window,
        }
    }

    pub fn sample(&mut self, store: &Store) {
        let stats = store.stats();
        let s = Sample {
            at: Instant::now(),
            committed: (0..stats.len()).map(|c| store.committed(c)).sum(),
            // The class's logical end (acknowledged end + waiting bytes) grows by exactly the
            // bytes appended; only a purge or a retention drop makes it dip (rate 0 for that
            // sample). It comes from the same snapshot as the per-class figures, so ingest and
            // drain rates are measured over the same instants.
            written_bytes: stats
                .iter()
                .map(|c| c.acked.logical_end + c.logical_bytes)
                .sum(),
            acked_bytes: stats.iter().map(|c| c.acked.logical_end).collect(),
            class_written: stats
                .iter()
                .map(|c| c.acked.logical_end + c.logical_bytes)
                .collect(),
        };
        self.samples.push_back(s);
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|f| f.at.elapsed() > self.window)
        {
            self.samples.pop_front();
        }
    }

    pub fn rates(&self) -> Rates {
        let (Some(a), Some(b)) = (self.samples.front(), self.samples.back()) else {
            return Rates::default();
        };
        let dt = b.at.duration_since(a.at).as_secs_f64();
        if dt <= 0.0 {
            return Rates {
                class_drain_bytes_per_sec: vec![0.0; b.acked_bytes.len()],
                ..Rates::default()
            };
        }
        let per_sec = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
        Rates {
            ingest: Rate {
                records_per_sec: per_sec(a.committed, b.committed),
                bytes_per_sec: per_sec(a.written_bytes, b.written_bytes),
            },
            class_drain_bytes_per_sec: b
                .acked_bytes
                .iter()
                .enumerate()
                .map(|(i, y)| per_sec(a.acked_bytes.get(i).copied().unwrap_or(*y), *y))
                .collect(),
            class_ingest_bytes_per_sec: b
                .class_written
                .iter()
                .enumerate()
                .map(|(i, y)| per_sec(a.class_written.get(i).copied().unwrap_or(*y), *y))
                .collect(),
        }
    }
}

/// What only a running daemon knows.
pub struct Live {
    pub started_at_ms: u64,
    pub pid: u32,
    pub forwarder: Option<ForwarderStatus>,
    /// The forwarder's policy model and mapping, for the drain forecast.
    pub drain: Option<Arc<DrainContext>>,
    pub rates: Rates,
}

/// Records read from the head of a class's backlog to measure its wire bytes per logical byte.
const WIRE_SAMPLE_RECORDS: usize = 512;
const WIRE_SAMPLE_BYTES: usize = 512 << 10;

/// Wire bytes (as the throttle meters them: [`crate::forward::mapping::KafkaRecord::wire_size`])
/// per logical (stored, uncompressed) byte, measured on the next records the forwarder will
/// send of `class`: up to [`WIRE_SAMPLE_RECORDS`] from the acknowledged position. `None` when
/// nothing waits or the store cannot be read.
fn wire_ratio(store: &Store, class: ClassId, mapper: &Mapper) -> Option<f64> {
    let mut reader = store.reader(class, store.acked(class).seq + 1).ok()?;
    let batch = reader
        .read_batch(WIRE_SAMPLE_RECORDS, WIRE_SAMPLE_BYTES)
        .ok()?;
    let (mut logical, mut wire) = (0usize, 0usize);
    for r in &batch {
        logical += r.record.logical_size();
        // An unmappable record goes to the dead-letter log; the forwarder charges its payload.
        wire += mapper
            .map(class, r)
            .map_or(r.record.payload.len(), |k| k.wire_size());
    }
    (logical > 0).then(|| wire as f64 / logical as f64)
}

/// The drain forecast for `status`: per class and total, from the policy model.
fn forecast(
    store: &Store,
    live: &Live,
    fwd: &ForwarderStatus,
    ctx: &DrainContext,
    now: u64,
) -> (Forecast, Vec<f64>, Vec<f64>) {
    let stats = store.stats();
    let ratios: Vec<Option<f64>> = (0..stats.len())
        .map(|c| wire_ratio(store, c, &ctx.mapper))
        .collect();
    let backlog: Vec<f64> = stats
        .iter()
        .zip(&ratios)
        .map(|(st, r)| st.logical_bytes as f64 * r.unwrap_or(1.0))
        .collect();
    // Live ingest converted with the same ratio (logical bytes where nothing waits to sample).
    let ingest: Vec<f64> = (0..stats.len())
        .map(|c| {
            live.rates
                .class_ingest_bytes_per_sec
                .get(c)
                .copied()
                .unwrap_or(0.0)
                * ratios[c].unwrap_or(1.0)
        })
        .collect();
    let paused = stats
        .iter()
        .map(|st| fwd.all_paused || fwd.classes.iter().any(|c| c.name == st.name && c.paused))
        .collect();
    let state = DrainState {
        local_now: SystemClock::local().now().local,
        drain_override: fwd
            .drain_now_until_ms
            .filter(|&u| u > now)
            .map(|u| std::time::Duration::from_millis(u - now)),
        backlog: backlog.clone(),
        ingest: ingest.clone(),
        paused,
        measured_drain: Some(fwd.drain_bytes_per_sec),
        budget_left: fwd.budget_left_bytes,
    };
    (ctx.model.forecast(&state), backlog, ingest)
}

pub fn status(store: &Store, source: &str, data_dir: &Path, live: Option<&Live>) -> StatusReport {
    let now = now_ms();
    let fwd = live.and_then(|l| l.forwarder.as_ref());
    let window_end = fwd.and_then(|f| {
        match f.drain_now_until_ms.filter(|&u| u > now) {
            Some(u) => Some(Some(u)),
            // Open with no known end: everything fits; closed: there is no current window.
            None if f.window_open => Some(f.window_next_change_ms),
            None => None,
        }
    });
    let fc = match (live, fwd) {
        (Some(l), Some(f)) => l.drain.as_ref().map(|ctx| forecast(store, l, f, ctx, now)),
        _ => None,
    };
    let secs_of = |e: &Eta| e.secs().map(|s| s.ceil() as u64);
    let ms_of = |e: &Eta| e.secs().map(|s| (s * 1000.0).round() as u64);
    let note_of = |e: &Eta| match e {
        Eta::Unknown(w) => Some(w.clone()),
        Eta::Secs(_) => None,
    };
    let mut classes = Vec::new();
    for (id, st) in store.stats().into_iter().enumerate() {
        let fcls = fwd.and_then(|f| f.classes.iter().find(|c| c.name == st.name));
        let drain = live.and_then(|l| l.rates.class_drain_bytes_per_sec.get(id).copied());
        let eta = fc.as_ref().and_then(|(f, _, _)| f.classes.get(id));
        let eta_secs = eta.and_then(secs_of);
        let fits_window = match (eta_secs, window_end) {
            (Some(eta), Some(Some(end))) => Some(now + eta * 1000 <= end),
            (Some(_), Some(None)) => Some(true),
            _ => None,
        };
        classes.push(ClassView {
            records: st.records,
            bytes: st.logical_bytes,
            disk_bytes: st.disk_bytes,
            oldest_seq: st.oldest_seq,
            oldest_ts_ms: st.oldest_ts_ms,
            oldest_age_secs: st.oldest_ts_ms.map(|t| now.saturating_sub(t) / 1000),
            newest_seq: st.newest_seq,
            acked_seq: st.acked.seq,
            dropped_max_bytes: st.dropped.max_bytes,
            dropped_max_age: st.dropped.max_age,
            dropped_purge: st.dropped.purge,
            dropped_corrupt: st.dropped.corrupt,
            dropped_total: st.dropped.total(),
            refused: st.refused_full + st.refused_headroom,
            paused: fcls.map(|c| c.paused || fwd.is_some_and(|f| f.all_paused)),
            in_flight_records: fcls.map(|c| c.in_flight_records),
            drain_bytes_per_sec: drain,
            eta_secs,
            eta_ms: eta.and_then(ms_of),
            eta_note: eta.and_then(note_of),
            wire_bytes: fc
                .as_ref()
                .and_then(|(_, b, _)| b.get(id))
                .map(|b| b.round() as u64),
            fits_window,
            name: st.name,
        });
    }
    StatusReport {
        now_ms: now,
        source: source.to_string(),
        data_dir: data_dir.display().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms: live.map(|l| l.started_at_ms),
        pid: live.map(|l| l.pid),
        forwarder: fwd.map(|f| ForwarderView {
            link: serde_json::to_value(f.link)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{:?}", f.link).to_lowercase()),
            link_since_ms: f.link_since_ms,
            last_error: f.last_error.clone(),
            last_error_at_ms: f.last_error_at_ms,
            window_open: f.window_open,
            window_next_change_ms: f.window_next_change_ms,
            drain_now_until_ms: f.drain_now_until_ms.filter(|&u| u > now),
            throttle_bytes_per_sec: f.throttle_bytes_per_sec,
            all_paused: f.all_paused,
            drain: Rate {
                records_per_sec: f.drain_records_per_sec,
                bytes_per_sec: f.drain_bytes_per_sec,
            },
            sent_records: f.sent_records,
            acked_records: f.acked_records,
            dead_lettered: f.dead_lettered,
            resent_records: f.resent_records,
            in_flight_bytes: f.in_flight_bytes,
            producer_resets: f.producer_resets,
            stalls: f.stalls,
        }),
        ingest: live.map(|l| l.rates.ingest),
        eta: fc.as_ref().map(|(f, b, i)| EtaView {
            total_secs: secs_of(&f.total),
            total_ms: ms_of(&f.total),
            total_note: note_of(&f.total),
            basis: f.basis.to_string(),
            rate_bytes_per_sec: fwd.and_then(|f| f.throttle_bytes_per_sec),
            wire_bytes: b.iter().sum::<f64>().round() as u64,
            ingest_wire_bytes_per_sec: i.iter().sum(),
            link_up: fwd.is_some_and(|f| f.link == crate::forward::LinkState::Online),
        }),
        total_records: classes.iter().map(|c| c.records).sum(),
        total_bytes: classes.iter().map(|c| c.bytes).sum(),
        classes,
    }
}

/// Calls `f` on every waiting record of `class` (after the acknowledged position, up to the
/// committed end as of the call), one bounded batch at a time.
fn scan_waiting(
    store: &Store,
    class: ClassId,
    from_seq: u64,
    to_seq: u64,
    mut f: impl FnMut(&StoredRecord) -> bool,
) -> Result<(), InspectError> {
    let name = || store.class_names().get(class).cloned().unwrap_or_default();
    let mut reader = store
        .reader(class, from_seq)
        .map_err(|source| InspectError::Store {
            class: name(),
            source,
        })?;
    loop {
        let batch = reader
            .read_batch(SCAN_BATCH_RECORDS, SCAN_BATCH_BYTES)
            .map_err(|source| InspectError::Store {
                class: name(),
                source,
            })?;
        if batch.is_empty() {
            return Ok(());
        }
        for r in &batch {
            if r.seq > to_seq || !f(r) {
                return Ok(());
            }
        }
    }
}

/// The first `depth` levels of `topic` (the whole topic when it has fewer).
pub fn topic_prefix(topic: &str, depth: usize) -> &str {
    if depth == 0 {
        return "";
    }
    match topic.match_indices('/').nth(depth - 1) {
        Some((i, _)) => &topic[..i],
        None => topic,
    }
}

pub fn backlog(
    store: &Store,
    source: &str,
    depth: usize,
    max_prefixes: usize,
) -> Result<BacklogReport, InspectError> {
    backlog_tracking(store, source, depth, max_prefixes, TRACK_PREFIXES)
}

fn backlog_tracking(
    store: &Store,
    source: &str,
    depth: usize,
    max_prefixes: usize,
    track: usize,
) -> Result<BacklogReport, InspectError> {
    let mut classes = Vec::new();
    for (id, name) in store.class_names().into_iter().enumerate() {
        let from = store.acked(id).seq + 1;
        let to = store.committed(id);
        let mut table: HashMap<String, PrefixBacklog> = HashMap::new();
        let (mut records, mut bytes, mut oldest) = (0u64, 0u64, None::<u64>);
        let (mut other_records, mut other_bytes) = (0u64, 0u64);
        let mut capped = false;
        scan_waiting(store, id, from, to, |r| {
            let size = r.record.logical_size() as u64;
            let ts = r.record.timestamp_ms;
            records += 1;
            bytes += size;
            oldest = Some(oldest.map_or(ts, |o: u64| o.min(ts)));
            let p = topic_prefix(&r.record.topic, depth);
            if let Some(e) = table.get_mut(p) {
                e.records += 1;
                e.bytes += size;
                e.oldest_ts_ms = e.oldest_ts_ms.min(ts);
            } else if table.len() < track {
                table.insert(
                    p.to_string(),
                    PrefixBacklog {
                        prefix: p.to_string(),
                        records: 1,
                        bytes: size,
                        oldest_ts_ms: ts,
                    },
                );
            } else {
                capped = true;
                other_records += 1;
                other_bytes += size;
            }
            true
        })?;
        let distinct = table.len() as u64;
        let mut prefixes: Vec<PrefixBacklog> = table.into_values().collect();
        prefixes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.prefix.cmp(&b.prefix)));
        for p in prefixes.iter().skip(max_prefixes) {
            other_records += p.records;
            other_bytes += p.bytes;
        }
        prefixes.truncate(max_prefixes);
        classes.push(ClassBacklog {
            class: name,
            records,
            bytes,
            oldest_ts_ms: oldest,
            prefixes,
            other_records,
            other_bytes,
            distinct_prefixes: distinct,
            prefixes_capped: capped,
        });
    }
    Ok(BacklogReport {
        now_ms: now_ms(),
        source: source.to_string(),
        depth,
        classes,
    })
}

/// Renders a payload for people and JSON alike: JSON and UTF-8 text (without control
/// characters other than line breaks and tabs) as they are, anything else as hex; at most
/// `max` bytes of it.
pub fn render_payload(payload: &[u8], max: usize) -> (String, String, bool) {
    let truncated = payload.len() > max;
    // Valid UTF-8 made of control bytes (small binary integers often are) reads better as hex.
    let text = std::str::from_utf8(payload).ok().filter(|t| {
        !t.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    });
    match text {
        Some(text) => {
            let enc = if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
                "json"
            } else {
                "text"
            };
            let mut end = max.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            (enc.to_string(), text[..end].to_string(), truncated)
        }
        None => {
            let mut hex = String::with_capacity(max.min(payload.len()) * 2);
            for b in &payload[..max.min(payload.len())] {
                hex.push_str(&format!("{b:02x}"));
            }
            ("hex".to_string(), hex, truncated)
        }
    }
}

pub fn peek_record(seq: u64, r: &crate::store::Record, max_payload: usize) -> PeekRecord {
    let (payload_encoding, payload, payload_truncated) = render_payload(&r.payload, max_payload);
    PeekRecord {
        seq,
        timestamp_ms: r.timestamp_ms,
        topic: r.topic.clone(),
        qos: r.qos,
        retain: r.retain,
        client_id: r.client_id.clone(),
        content_type: r.content_type.clone(),
        user_properties: r.user_properties.clone(),
        payload_bytes: r.payload.len() as u64,
        payload_encoding,
        payload,
        payload_truncated,
    }
}

pub fn peek(
    store: &Store,
    class: &str,
    from: PeekFrom,
    limit: usize,
    topic: Option<&str>,
    max_payload: usize,
) -> Result<PeekReport, InspectError> {
    let id = class_id(store, class)?;
    if let Some(f) = topic {
        validate_filter(f).map_err(|what| InspectError::BadFilter {
            filter: f.to_string(),
            what,
        })?;
    }
    let limit = limit.clamp(1, super::MAX_PEEK_LIMIT);
    let max_payload = max_payload.min(super::MAX_PEEK_PAYLOAD);
    let matches = |r: &StoredRecord| topic.is_none_or(|f| filter_matches(f, &r.record.topic));
    let first = store.acked(id).seq + 1;
    let end = store.committed(id);
    let mut found: VecDeque<StoredRecord> = VecDeque::new();
    match from {
        PeekFrom::Oldest => scan_waiting(store, id, first, end, |r| {
            if matches(r) {
                found.push_back(r.clone());
            }
            found.len() < limit
        })?,
        PeekFrom::Newest => {
            // Look back a window from the end; widen it until it holds `limit` matches or
            // reaches the oldest waiting record. Memory stays at `limit` records.
            let mut window = limit as u64;
            loop {
                let start = end.saturating_add(1).saturating_sub(window).max(first);
                found.clear();
                scan_waiting(store, id, start, end, |r| {
                    if matches(r) {
                        found.push_back(r.clone());
                        if found.len() > limit {
                            found.pop_front();
                        }
                    }
                    true
                })?;
                if found.len() >= limit || start <= first {
                    break;
                }
                window = window.saturating_mul(4);
            }
        }
    }
    Ok(PeekReport {
        class: class.to_string(),
        from,
        records: found
            .iter()
            .map(|r| peek_record(r.seq, &r.record, max_payload))
            .collect(),
    })
}

pub fn dead_letter_summary(i: &DeadLetterInfo) -> DeadLetterSummary {
    DeadLetterSummary {
        id: i.id,
        class: i.class.clone(),
        seq: i.seq,
        dead_at_ms: i.dead_at_ms,
        reason: i.reason.clone(),
        mqtt_topic: i.mqtt_topic.clone(),
        payload_bytes: i.payload_bytes,
        received_at_ms: i.received_at_ms,
    }
}

pub fn dead_letter_entry(d: &DeadLetter, max_payload: usize) -> DeadLetterEntry {
    DeadLetterEntry {
        info: dead_letter_summary(&d.info),
        record: peek_record(d.info.seq, &d.record, max_payload),
    }
}

/// A read-only view of a stopped daemon's dead-letter log.
///
/// [`DeadLetters::open`] is a writer's open (it creates the file and cuts a torn tail), so the
/// log is copied to a private temporary directory and opened there: the data directory is
/// never written, and the parsing is the real one. The copy is removed on drop.
pub struct DeadLetterSnapshot {
    pub log: Option<DeadLetters>,
    tmp: Option<PathBuf>,
}

impl DeadLetterSnapshot {
    pub fn open(data_dir: &Path) -> Result<Self, InspectError> {
        let src = data_dir.join("deadletter").join("deadletter.log");
        if !src.exists() {
            return Ok(DeadLetterSnapshot {
                log: None,
                tmp: None,
            });
        }
        let tmp = std::env::temp_dir().join(format!(
            "ferry-deadletter-{}-{}",
            std::process::id(),
            now_ms()
        ));
        let copy_err = |source| InspectError::DeadLetterCopy {
            path: src.clone(),
            source,
        };
        std::fs::create_dir_all(tmp.join("deadletter")).map_err(copy_err)?;
        let mut snap = DeadLetterSnapshot {
            log: None,
            tmp: Some(tmp.clone()),
        };
        std::fs::copy(&src, tmp.join("deadletter").join("deadletter.log")).map_err(copy_err)?;
        snap.log = Some(DeadLetters::open(&tmp)?);
        Ok(snap)
    }
}

impl Drop for DeadLetterSnapshot {
    fn drop(&mut self) {
        if let Some(t) = &self.tmp {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(topic_prefix("a/b/c", 1), "a");
        assert_eq!(topic_prefix("a/b/c", 2), "a/b");
        assert_eq!(topic_prefix("a/b/c", 3), "a/b/c");
        assert_eq!(topic_prefix("a/b/c", 9), "a/b/c");
        assert_eq!(topic_prefix("/x", 1), "");
        assert_eq!(topic_prefix("a", 0), "");
    }

    #[test]
    fn backlog_memory_is_capped_and_the_rest_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let class = ClassOptions {
            name: "t".into(),
            max_bytes: 1 << 30,
            max_age: None,
            overflow: Overflow::DropOldest,
        };
        let (store, _) = Store::open(StoreOptions::new(tmp.path(), vec![class])).unwrap();
        let mut tickets = Vec::new();
        for i in 0..30u64 {
            let rec = crate::store::Record {
                timestamp_ms: 1000 + i,
                topic: format!("dev{i}/x"),
                // Larger payloads for lower i, so the order by bytes is known.
                payload: bytes::Bytes::from(vec![b'a'; 100 - i as usize]),
                ..Default::default()
            };
            tickets.push(store.append(0, rec).unwrap());
        }
        for t in tickets {
            t.wait().unwrap();
        }
        let r = backlog_tracking(&store, "test", 1, 5, 10).unwrap();
        let c = &r.classes[0];
        assert_eq!(c.records, 30);
        assert!(c.prefixes_capped);
        assert_eq!(c.distinct_prefixes, 10);
        let names: Vec<&str> = c.prefixes.iter().map(|p| p.prefix.as_str()).collect();
        assert_eq!(names, ["dev0", "dev1", "dev2", "dev3", "dev4"]);
        assert_eq!(c.other_records, 25);
        assert_eq!(
            c.prefixes.iter().map(|p| p.bytes).sum::<u64>() + c.other_bytes,
            c.bytes
        );
        store.close().unwrap();
    }

    #[test]
    fn payload_rendering() {
        assert_eq!(
            render_payload(br#"{"t":1}"#, 100),
            ("json".into(), r#"{"t":1}"#.into(), false)
        );
        assert_eq!(
            render_payload("héllo".as_bytes(), 2),
            ("text".into(), "h".into(), true)
        );
        assert_eq!(
            render_payload(&[1, 2], 9),
            ("hex".into(), "0102".into(), false)
        );
        assert_eq!(
            render_payload(&[0xff, 0x00, 0x10], 2),
            ("hex".into(), "ff00".into(), true)
        );
    }
}
