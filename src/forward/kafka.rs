//! The Kafka producer: construction, delivery reports, and what each error means for ferry.
//!
//! ## Why a producer with its own poll thread and a report queue, not `FutureProducer`
//! The forwarder needs every delivery report, in the order librdkafka produces them, on one
//! task that owns the per-class in-flight tables. A `BaseProducer` whose poll thread
//! (`poll_loop`) hands each report (tagged with class, sequence and producer generation) to
//! a shared [`ReportQueue`] does exactly that: no future or oneshot per message, no ordering
//! question between futures, and the poll thread keeps serving callbacks (including the client
//! error callback that tells us the link is down) even while the forwarder sleeps in a closed
//! window.
//!
//! The queue is a vector under a mutex plus a [`Notify`]. While reports flow, the poll thread
//! collects them for one short round (1 ms) and moves the round's reports into the queue at
//! once; only a hand-over that finds the queue empty wakes the forwarder, which then takes the
//! whole vector. So the forwarder wakes at most about once per round (a channel message per
//! record cost ~40 % of the forwarder's time in scheduler paths, and a wake-up whenever a
//! single report found the queue empty still meant a wake-up every few dozen records,
//! BENCHMARKS.md). When no report came for a while the poll thread hands each report over at
//! once, so the first one after a quiet spell is not held back. The queue is unbounded but
//! cannot grow past the forwarder's in-flight limit: one report per record sent.
//!
//! ## Producer settings ferry insists on
//! `enable.idempotence=true` and `acks=all` (no duplicates or reordering from librdkafka's own
//! retries, per-partition order kept), `message.timeout.ms` long (default 5 min) because ferry
//! keeps the record on disk and re-sends it itself; a timeout is a reported, retriable failure,
//! never a silent drop. Passthrough properties may tune anything else (SASL, TLS, batching), but
//! not weaken those two: [`KafkaOptions::client_config`] refuses that.
//!
//! ## Generations
//! Each producer instance has a generation number. When the forwarder replaces a producer
//! (fatal error, stall), the old one's purge reports still arrive; they carry the old
//! generation and the forwarder ignores them, because it already rewound every class to its
//! acknowledged position.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

use super::mapping::KafkaRecord;
use crate::store::ClassId;

/// Kafka connection and producer settings (the `[kafka]` section of the config).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaOptions {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Kafka `client.id`, visible in broker logs and quotas. Default `ferry`.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd` (default).
    #[serde(default = "default_compression")]
    pub compression: String,
    /// How long librdkafka waits to fill a batch. Default 20 ms: bigger batches for catch-up,
    /// still well under the "fresh data overtakes backlog within one batch interval" budget.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// librdkafka's `message.timeout.ms`. Default 300000 (5 min). A timed-out record is
    /// reported and re-sent by ferry from its acknowledged position.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Whether the cluster auto-creates topics. When false (default), "unknown topic" is a
    /// permanent error for that record (dead letter); when true it is retried.
    #[serde(default)]
    pub topic_auto_create: bool,
    /// Any other librdkafka property, passed through verbatim (SASL, TLS, batch sizes...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_client_id() -> String {
    "ferry".into()
}
fn default_compression() -> String {
    "zstd".into()
}
/// The same as `kafka.linger` in `config/ferry.toml` (`config::KafkaConfig`'s default).
fn default_linger_ms() -> u64 {
    5
}
fn default_message_timeout_ms() -> u64 {
    300_000
}

/// Secret property values (SASL and key passwords) are shown as `***`, so the options (and
/// the forwarder options holding them) can be logged.
impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::config::{KafkaProperties, MASK};
        let props: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if KafkaProperties::is_secret(k) {
                    MASK
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaOptions")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("client_id", &self.client_id)
            .field("compression", &self.compression)
            .field("linger_ms", &self.linger_ms)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("topic_auto_create", &self.topic_auto_create)
            .field("properties", &props)
            .finish()
    }
}

impl KafkaOptions {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaOptions {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: default_client_id(),
            compression: default_compression(),
            linger_ms: default_linger_ms(),
            message_timeout_ms: default_message_timeout_ms(),
            topic_auto_create: false,
            properties: BTreeMap::new(),
        }
    }

    /// The librdkafka configuration for a ferry producer.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaSetupError> {
        for (k, v) in &self.properties {
            let weakens = match k.as_str() {
                "enable.idempotence" => v != "true",
                "acks" | "request.required.acks" => v != "all" && v != "-1",
                _ => false,
            };
            if weakens {
                return Err(KafkaSetupError::Weakens {
                    key: k.clone(),
                    value: v.clone(),
                });
            }
        }
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // ferry bounds what it has in flight itself; librdkafka's queue only needs to
            // be larger than that so `send` does not report QueueFull in normal operation.
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        Ok(c)
    }
}

/// librdkafka's config errors print the offending value (`Client config error: {desc} {key}
/// {value}`). Replace it with `***` when the key names a secret or is unknown (a misspelled
/// `sasl.pasword` may still hold a password), so the error can be logged and shown.
fn mask_config_error(e: KafkaError) -> KafkaError {
    match e {
        KafkaError::ClientConfig(res, desc, key, value) => {
            let hide = crate::config::KafkaProperties::is_secret(&key)
                || res == rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN;
            if !hide || value.is_empty() {
                return KafkaError::ClientConfig(res, desc, key, value);
            }
            // librdkafka's description may quote the value too ("Invalid value \"..\" for").
            let desc = desc.replace(value.as_str(), crate::config::MASK);
            KafkaError::ClientConfig(res, desc, key, crate::config::MASK.to_string())
        }
        other => other,
    }
}

/// Errors creating a producer (configuration problems; they need an operator).
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka property `{key} = {value}` would weaken ferry's delivery guarantee (enable.idempotence must be true, acks must be all): remove it from [kafka.properties]")]
    Weakens { key: String, value: String },
    #[error(
        "creating the Kafka producer for {bootstrap}: {source}: check [kafka] in the configuration"
    )]
    Create {
        bootstrap: String,
        #[source]
        source: KafkaError,
    },
}

/// What an error means for the record (or the producer) it happened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Will never succeed for this record: dead-letter it and keep draining.
    Permanent,
    /// The producer instance is unusable: recreate it and re-send from the acknowledged position.
    Fatal,
    /// Anything else: re-send from the acknowledged position after a backoff, forever.
    Retriable,
}

/// Classifies a librdkafka error code. `topic_auto_create` decides whether an unknown topic
/// can appear later (retriable) or never will (permanent).
pub fn classify_code(code: RDKafkaErrorCode, topic_auto_create: bool) -> Disposition {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidRecord
        | C::InvalidMessage
        | C::InvalidTopic
        | C::InvalidTimestamp
        | C::TopicAuthorizationFailed
        | C::PolicyViolation => Disposition::Permanent,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => {
            if topic_auto_create {
                Disposition::Retriable
            } else {
                Disposition::Permanent
            }
        }
        C::Fatal
        | C::ProducerFenced
        | C::Fenced
        | C::InvalidProducerEpoch
        | C::InvalidProducerIdMapping
        | C::OutOfOrderSequenceNumber
        | C::UnknownProducerId => Disposition::Fatal,
        _ => Disposition::Retriable,
    }
}

/// Classifies any error from `send` or a delivery report.
pub fn classify(err: &KafkaError, topic_auto_create: bool) -> Disposition {
    match err.rdkafka_error_code() {
        Some(code) => classify_code(code, topic_auto_create),
        None => Disposition::Retriable,
    }
}

/// Where a delivered record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// What the producer's poll thread reports to the forwarder.
#[derive(Debug)]
pub enum ProducerEvent {
    Delivery {
        generation: u64,
        class: ClassId,
        seq: u64,
        result: Result<Delivered, KafkaError>,
    },
    /// librdkafka's client error callback (broker down, transport errors, fatal errors).
    ClientError {
        generation: u64,
        error: KafkaError,
        reason: String,
    },
}

/// Reports from librdkafka's poll thread to the forwarder, handed over in batches.
///
/// `push` wakes the consumer only when it finds the queue empty; [`ReportQueue::take`] takes
/// everything queued at once. A wake-up can therefore find the queue empty (the reports it was
/// for were taken with an earlier batch); that is harmless, and no report is ever left
/// without a wake-up: the push that makes the queue non-empty always notifies, and `Notify`
/// keeps that permit until the consumer waits.
#[derive(Default)]
pub struct ReportQueue {
    queue: parking_lot::Mutex<Vec<ProducerEvent>>,
    notify: Notify,
}

impl ReportQueue {
    pub fn new() -> Arc<ReportQueue> {
        Arc::new(ReportQueue::default())
    }

    fn push(&self, ev: ProducerEvent) {
        self.add(|q| q.push(ev));
    }

    /// Moves every report of `from` (in order) to the queue, with at most one wake-up.
    /// `from` keeps its capacity.
    fn push_all(&self, from: &mut Vec<ProducerEvent>) {
        self.add(|q| q.append(from));
    }

    /// Adds to the queue under its lock; wakes the forwarder only if the queue was empty.
    fn add(&self, f: impl FnOnce(&mut Vec<ProducerEvent>)) {
        let was_empty = {
            let mut q = self.queue.lock();
            let was_empty = q.is_empty();
            f(&mut q);
            was_empty
        };
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Moves every queued report into `into` (appended, in arrival order). Swaps buffers when
    /// `into` is empty, so the steady state allocates nothing.
    pub fn take(&self, into: &mut Vec<ProducerEvent>) {
        let mut q = self.queue.lock();
        if into.is_empty() {
            std::mem::swap(&mut *q, into);
        } else {
            into.append(&mut q);
        }
    }

    /// Completes when a report was queued since the last wake-up (possibly already taken).
    pub async fn wait(&self) {
        self.notify.notified().await
    }
}

/// Class id bits in a packed message tag (see [`Tags`]).
const TAG_CLASS_BITS: u32 = 7;

/// The tag that travels with each message through librdkafka: its class and sequence.
///
/// Packed into librdkafka's per-message opaque word when both fit (`seq << 8 | class << 1 |
/// 1`: on a 64-bit target every class id below 128 and sequence below 2^56), so sending
/// allocates nothing and the delivery report reads nothing back from memory: a boxed tag
/// was written by the sender and read by the poll thread ~10,000 records later, a cache
/// miss that was most of ferry's delivery callback (BENCHMARKS.md). A tag that does not fit
/// (a 32-bit target past 2^24 records, or a class id of 128 or more) is kept in a side
/// table under a ticket number, passed as `ticket << 1` (low bit 0).
#[derive(Default)]
struct Tags {
    spilled: parking_lot::Mutex<SpilledTags>,
}

#[derive(Default)]
struct SpilledTags {
    next: usize,
    tags: std::collections::HashMap<usize, (ClassId, u64)>,
}

impl Tags {
    fn tag(&self, class: ClassId, seq: u64) -> usize {
        let seq_bits = usize::BITS - 1 - TAG_CLASS_BITS;
        if class < (1 << TAG_CLASS_BITS) && seq < (1u64 << seq_bits) {
            // Fits: seq < 2^seq_bits <= usize::MAX.
            return ((seq as usize) << (TAG_CLASS_BITS + 1)) | (class << 1) | 1;
        }
        let mut sp = self.spilled.lock();
        // Tickets wrap around usize >> 1; skip any still in flight.
        loop {
            let ticket = sp.next;
            sp.next = (sp.next + 1) & (usize::MAX >> 1);
            if let std::collections::hash_map::Entry::Vacant(e) = sp.tags.entry(ticket) {
                e.insert((class, seq));
                return ticket << 1;
            }
        }
    }

    /// The class and sequence of `opaque` (each tag is read back once: a spilled one is
    /// removed from the table).
    fn untag(&self, opaque: usize) -> Option<(ClassId, u64)> {
        if opaque & 1 == 1 {
            let class = (opaque >> 1) & ((1 << TAG_CLASS_BITS) - 1);
            Some((class, (opaque >> (TAG_CLASS_BITS + 1)) as u64))
        } else {
            self.spilled.lock().tags.remove(&(opaque >> 1))
        }
    }
}

/// The producer context: hands reports to the forwarder's [`ReportQueue`].
///
/// While reports flow, the poll thread collects them in `local` (touched by that thread only,
/// so its lock is never contended) and hands each round's reports over at once (see
/// `poll_loop`); while the producer is idle (`direct`), each report goes straight to the
/// queue, so the first report after a quiet spell is not held back.
pub struct FerryContext {
    generation: u64,
    events: Arc<ReportQueue>,
    local: parking_lot::Mutex<Vec<ProducerEvent>>,
    direct: AtomicBool,
    /// A report arrived while `direct` (the poll loop switches to collecting).
    reported: AtomicBool,
    /// Reports and errors served so far (the poll loop tells from it whether a poll found
    /// an event).
    served: AtomicU64,
    tags: Tags,
}

impl FerryContext {
    fn report(&self, ev: ProducerEvent) {
        self.served.fetch_add(1, Ordering::Relaxed);
        if self.direct.load(Ordering::Relaxed) {
            self.reported.store(true, Ordering::Relaxed);
            self.events.push(ev);
        } else {
            self.local.lock().push(ev);
        }
    }

    /// Hands the collected reports to the forwarder; returns how many.
    fn hand_over(&self) -> usize {
        let mut local = self.local.lock();
        let n = local.len();
        if n > 0 {
            self.events.push_all(&mut local);
        }
        n
    }
}

/// How long one poll round collects reports before handing them over while reports flow.
const POLL_ROUND: Duration = Duration::from_millis(1);
/// How long a poll waits while the producer is idle; also how quickly a dropped producer's
/// poll thread notices.
const POLL_IDLE: Duration = Duration::from_millis(100);
/// Rounds without a report after which the poll thread goes back to idle (direct) mode.
const IDLE_AFTER_ROUNDS: u32 = 50;

/// The producer's poll thread: serves librdkafka's events (delivery reports, errors) and,
/// while reports flow, hands them to the forwarder in rounds of [`POLL_ROUND`]: serve every
/// event that is ready, hand the round's reports over at once, sleep out the round. So the
/// forwarder wakes at most about once per round instead of whenever a report happened to
/// find the queue empty (with both threads busy, every few dozen records). A report waits at
/// most about one round longer (a round ends at its deadline even while events keep coming:
/// under a steady drain there always is a next one, and serving "until none is left" held
/// back nearly a whole in-flight window, 89,735 reports of a 100k window in one measurement,
/// so the forwarder refilled in stop-and-go bursts); while idle, reports are handed over at
/// once. Under a steady drain a round is all polls and no sleep.
///
/// (librdkafka's poll with a timeout keeps polling until the timeout has passed and polls
/// without waiting once less than a millisecond is left, so a round is made of polls that do
/// not wait plus a sleep, not of one short poll.)
fn poll_loop(producer: Arc<BaseProducer<FerryContext>>, stop: Arc<AtomicBool>) {
    let ctx = producer.context();
    hasten_producer_id(&producer, &stop);
    let mut quiet_rounds = 0u32;
    while !stop.load(Ordering::Relaxed) {
        if ctx.direct.load(Ordering::Relaxed) {
            producer.poll(POLL_IDLE);
            if ctx.reported.swap(false, Ordering::Relaxed) {
                ctx.direct.store(false, Ordering::Relaxed);
                quiet_rounds = 0;
            }
            continue;
        }
        let round_end = std::time::Instant::now() + POLL_ROUND;
        // Serve what is ready, but hand over at least once per round: while reports keep
        // coming, "until nothing is left" held them here until the window ran dry.
        loop {
            let before = ctx.served.load(Ordering::Relaxed);
            producer.poll(Duration::ZERO);
            if ctx.served.load(Ordering::Relaxed) == before
                || std::time::Instant::now() >= round_end
            {
                break;
            }
        }
        if ctx.hand_over() > 0 {
            quiet_rounds = 0;
        } else {
            quiet_rounds += 1;
            if quiet_rounds >= IDLE_AFTER_ROUNDS {
                ctx.direct.store(true, Ordering::Relaxed);
                continue;
            }
        }
        let left = round_end.saturating_duration_since(std::time::Instant::now());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
    }
    ctx.hand_over();
}

/// How long one metadata request of [`hasten_producer_id`] may wait, and how many it makes.
const HASTEN_TIMEOUT: Duration = Duration::from_millis(300);
const HASTEN_TRIES: u32 = 3;

/// Lets a new producer acquire its producer id (without which it sends nothing) as soon as a
/// broker can give it one, instead of 0.5–1.0 s later.
///
/// librdkafka (2.12) tries for the id when the first metadata answer arrives. That answer comes
/// over the bootstrap connection and names the real brokers, and librdkafka drops the
/// bootstrap connection at once, so no broker is up: "no brokers available", next try on a
/// 500 ms timer. The real broker is connected only when something needs it, so that timer may
/// again find none up: 1.0 s. Against tansu, ferry's first acknowledgement came after
/// 0.52–0.54 s, or 1.02–1.04 s in 5 of 9 drains of one bench series (BENCHMARKS.md).
/// librdkafka also tries for the id whenever a metadata answer arrives, so this asks for broker
/// metadata (no topics) until a real broker, not a bootstrap address, answers: that connects
/// one, and the id follows within milliseconds (first acknowledgement after ~0.07 s). Bounded
/// ([`HASTEN_TRIES`] requests of at most [`HASTEN_TIMEOUT`]) and only when the producer
/// starts, so an unreachable cluster delays the poll loop by at most about a second; the timer
/// stays librdkafka's fallback.
fn hasten_producer_id(producer: &BaseProducer<FerryContext>, stop: &AtomicBool) {
    use rdkafka::bindings as rd;
    for _ in 0..HASTEN_TRIES {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut md: *const rd::rd_kafka_metadata_t = std::ptr::null();
        let timeout_ms = i32::try_from(HASTEN_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the client pointer is valid while `producer` lives; `all_topics = 0` with no
        // topic handle asks for the brokers (and topics already known) only; on success
        // librdkafka hands over `md`, which is read once and given back with
        // `rd_kafka_metadata_destroy`.
        let err = unsafe {
            rd::rd_kafka_metadata(
                producer.client().native_ptr(),
                0,
                std::ptr::null_mut(),
                &mut md,
                timeout_ms,
            )
        };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || md.is_null() {
            return; // Unreachable or slow: leave it to librdkafka's timer.
        }
        // SAFETY: `md` is the valid metadata librdkafka just returned; destroyed once.
        let answered_by = unsafe {
            let id = (*md).orig_broker_id;
            rd::rd_kafka_metadata_destroy(md);
            id
        };
        if answered_by >= 0 {
            return; // A real broker answered: librdkafka has asked it for the id.
        }
    }
}

impl ClientContext for FerryContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        // librdkafka logs every reconnect attempt; the forwarder logs link state changes
        // itself (rate-limited), so these stay at debug unless they are real errors.
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::warn!(target: "ferry::forward::librdkafka", facility = fac, "{msg}")
            }
            _ => tracing::debug!(target: "ferry::forward::librdkafka", facility = fac, "{msg}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // After the reports collected before it (the forwarder applies them in order), and
        // at once: a client error changes the link state.
        self.report(ProducerEvent::ClientError {
            generation: self.generation,
            error,
            reason: reason.to_string(),
        });
        self.hand_over();
    }
}

impl ProducerContext for FerryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let Some((class, seq)) = self.tags.untag(tag) else {
            // Cannot happen (every tag is made by `send_parts` and reported once). If it did,
            // the record stays in flight and the stall watchdog re-sends it: never lost.
            tracing::warn!(
                tag,
                "delivery report with an unknown message tag ignored; the record is re-sent"
            );
            return;
        };
        let result = match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(e.clone()),
        };
        self.report(ProducerEvent::Delivery {
            generation: self.generation,
            class,
            seq,
            result,
        });
    }
}

/// A record to produce, borrowed (see [`KafkaProducer::send_parts`]).
pub struct OutRecord<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub payload: &'a [u8],
    pub timestamp_ms: i64,
}

/// Builds librdkafka headers from `(name, value)` pairs as they come.
pub struct HeaderBuilder(Option<OwnedHeaders>);

impl HeaderBuilder {
    pub fn with_capacity(n: usize) -> HeaderBuilder {
        HeaderBuilder(Some(OwnedHeaders::new_with_capacity(n)))
    }

    pub fn add(&mut self, key: &str, value: &[u8]) {
        if let Some(h) = self.0.take() {
            self.0 = Some(h.insert(Header {
                key,
                value: Some(value),
            }));
        }
    }

    pub fn finish(self) -> OwnedHeaders {
        self.0.unwrap_or_default()
    }
}

/// One producer instance (one generation): a librdkafka producer and its poll thread
/// (`poll_loop`), which stops when the producer is dropped.
pub struct KafkaProducer {
    inner: Arc<BaseProducer<FerryContext>>,
    generation: u64,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl Drop for KafkaProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.poller.take() {
            if h.join().is_err() {
                tracing::warn!("the Kafka producer's poll thread panicked");
            }
        }
        // The last `inner` drops here: librdkafka purges what is left and joins its threads.
    }
}

impl KafkaProducer {
    pub fn new(
        opts: &KafkaOptions,
        generation: u64,
        events: Arc<ReportQueue>,
    ) -> Result<KafkaProducer, KafkaSetupError> {
        let create = |source| KafkaSetupError::Create {
            bootstrap: opts.bootstrap_servers.clone(),
            source,
        };
        let inner: BaseProducer<FerryContext> = opts
            .client_config()?
            .create_with_context(FerryContext {
                generation,
                events,
                local: parking_lot::Mutex::new(Vec::new()),
                direct: AtomicBool::new(true),
                reported: AtomicBool::new(false),
                served: AtomicU64::new(0),
                tags: Tags::default(),
            })
            .map_err(|e| create(mask_config_error(e)))?;
        let inner = Arc::new(inner);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (p, stop) = (inner.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ferry-kafka-poll".into())
                .spawn(move || poll_loop(p, stop))
                .map_err(|e| {
                    create(KafkaError::ClientCreation(format!(
                        "starting the producer's poll thread: {e}"
                    )))
                })?
        };
        Ok(KafkaProducer {
            inner,
            generation,
            stop,
            poller: Some(poller),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Enqueues one record; its delivery report arrives later as a [`ProducerEvent`]. An `Err`
    /// means librdkafka refused it now (no report will follow).
    pub fn send(&self, class: ClassId, seq: u64, rec: &KafkaRecord) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(&v[..]),
            });
        }
        self.send_parts(
            class,
            seq,
            &OutRecord {
                topic: &rec.topic,
                key: rec.key.as_deref(),
                payload: &rec.payload,
                timestamp_ms: rec.timestamp_ms,
            },
            headers,
        )
    }

    /// [`KafkaProducer::send`] from borrowed parts: librdkafka copies them, so nothing needs to
    /// be owned by the caller (the forwarder's path, no per-record record building).
    pub fn send_parts(
        &self,
        class: ClassId,
        seq: u64,
        rec: &OutRecord<'_>,
        headers: OwnedHeaders,
    ) -> Result<(), KafkaError> {
        let tags = &self.inner.context().tags;
        let mut br = BaseRecord::with_opaque_to(rec.topic, tags.tag(class, seq))
            .payload(rec.payload)
            .timestamp(rec.timestamp_ms)
            .headers(headers);
        if let Some(k) = rec.key {
            br = br.key(k);
        }
        self.inner.send(br).map_err(|(e, br)| {
            // Refused now: no report will follow, so the tag is not read back later.
            tags.untag(br.delivery_opaque);
            e
        })
    }

    /// The producer's fatal error, if it entered the fatal state (idempotence violated).
    pub fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.inner.client().fatal_error()
    }

    pub fn in_flight_count(&self) -> i32 {
        self.inner.in_flight_count()
    }

    /// Waits up to `timeout` for everything queued to be delivered (or fail).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        use RDKafkaErrorCode as C;
        assert_eq!(
            classify_code(C::MessageSizeTooLarge, false),
            Disposition::Permanent
        );
        assert_eq!(
            classify_code(C::UnknownTopicOrPartition, false),
            Disposition::Permanent
        );
        assert_eq!(
            classify_code(C::UnknownTopicOrPartition, true),
            Disposition::Retriable
        );
        assert_eq!(classify_code(C::ProducerFenced, false), Disposition::Fatal);
        assert_eq!(classify_code(C::Fatal, false), Disposition::Fatal);
        assert_eq!(
            classify_code(C::MessageTimedOut, false),
            Disposition::Retriable
        );
        assert_eq!(
            classify_code(C::NotEnoughReplicas, false),
            Disposition::Retriable
        );
    }

    #[test]
    fn message_tags_round_trip_packed_and_spilled() {
        let tags = Tags::default();
        let cases = [
            (0usize, 0u64),
            (0, 1),
            (127, 1),
            (3, 1 << 40),
            (127, (1u64 << (usize::BITS - 1 - TAG_CLASS_BITS)) - 1),
            // Do not fit: kept in the side table.
            (128, 5),
            (1000, 7),
            (2, u64::MAX),
            (2, 1u64 << (usize::BITS - 1 - TAG_CLASS_BITS)),
        ];
        let packed: Vec<usize> = cases.iter().map(|&(c, s)| tags.tag(c, s)).collect();
        assert_eq!(tags.spilled.lock().tags.len(), 4);
        for (&(c, s), &t) in cases.iter().zip(&packed) {
            assert_eq!(tags.untag(t), Some((c, s)), "class {c} seq {s} tag {t:#x}");
        }
        // Spilled tags are read back once and then gone.
        assert!(tags.spilled.lock().tags.is_empty());
        assert_eq!(tags.untag(packed[5]), None);
    }

    #[test]
    fn guarantees_cannot_be_weakened() {
        let mut o = KafkaOptions::new("127.0.0.1:1");
        o.properties.insert("acks".into(), "1".into());
        assert!(matches!(
            o.client_config(),
            Err(KafkaSetupError::Weakens { .. })
        ));
        o.properties.clear();
        o.properties
            .insert("enable.idempotence".into(), "false".into());
        assert!(o.client_config().is_err());
        o.properties.clear();
        o.properties.insert("batch.size".into(), "100000".into());
        let c = o.client_config().unwrap();
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("batch.size"), Some("100000"));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_config_errors() {
        let mut o = KafkaOptions::new("127.0.0.1:1");
        o.properties
            .insert("sasl.password".into(), "hunter2-known".into());
        o.properties
            .insert("sasl.username".into(), "ferry-user".into());
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("ferry-user"), "{dbg}");
        // A misspelled key is refused by librdkafka, whose message quotes the value.
        o.properties
            .insert("sasl.pasword".into(), "hunter2-typo".into());
        let Err(e) = KafkaProducer::new(&o, 0, ReportQueue::new()) else {
            panic!("an unknown property must be refused");
        };
        let msg = format!("{e} / {e:?}");
        assert!(msg.contains("sasl.pasword"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        // A bad value of an ordinary key is still shown: the operator needs it.
        o.properties.remove("sasl.pasword");
        o.properties.insert("linger.ms".into(), "soon".into());
        let Err(e) = KafkaProducer::new(&o, 0, ReportQueue::new()) else {
            panic!("a bad linger.ms must be refused");
        };
        assert!(e.to_string().contains("soon"), "{e}");
    }
}
