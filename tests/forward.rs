//! The forwarder against real parts: tansu (a Kafka-protocol broker) over TCP, the real store in
//! a temp dir, and librdkafka's mock cluster for deterministic broker errors.

mod common;

use std::time::Duration;

use common::tansu::{consume_until, Tansu};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// The harness itself: a plain rdkafka producer's records (key, headers, timestamp) come back
/// through the consumer helper, and the broker survives stop/restart on the same port.
#[test]
fn tansu_harness_round_trip() {
    let mut broker = Tansu::start();
    broker.create_topic("harness", 2);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .set("compression.type", "zstd")
        .create()
        .unwrap();
    for i in 0..10 {
        let key = format!("k{}", i % 3);
        let payload = format!("p{i}");
        p.send(
            BaseRecord::to("harness")
                .key(&key)
                .payload(&payload)
                .timestamp(1_700_000_000_000 + i)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "h",
                    value: Some("v"),
                })),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let got = consume_until(
        &broker.bootstrap(),
        &[("harness", 2)],
        Duration::from_secs(30),
        Duration::from_millis(300),
        |r| r.len() >= 10,
    );
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got.iter().all(|r| r.header("h").as_deref() == Some("v")));
    assert!(got
        .iter()
        .all(|r| r.timestamp.unwrap() >= 1_700_000_000_000 && r.key.is_some()));

    let port = broker.port();
    broker.stop();
    broker.restart();
    assert_eq!(broker.port(), port);
    // Memory storage starts empty; the harness re-created the topic.
    let got = consume_until(
        &broker.bootstrap(),
        &[("harness", 2)],
        Duration::from_secs(2),
        Duration::from_millis(300),
        |_| false,
    );
    assert!(got.is_empty());

    broker.restart_on_new_port();
    assert_ne!(broker.port(), port);
    broker.create_topic("moved", 1);
}

// ---------------------------------------------------------------------------------------------
// The forwarder against the real store and real brokers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use bytes::Bytes;
use common::tansu::{Consumed, Proxy, ProxyMode};
use common::{append, eventually, open_store, record};
use ferry::forward::deadletter::DeadLetters;
use ferry::forward::kafka::KafkaOptions;
use ferry::forward::mapping::{ClassMappingConfig, RuleMappingConfig};
use ferry::forward::policy::Unlimited;
use ferry::forward::{Forwarder, ForwarderHandle, ForwarderOptions, ForwarderReport, LinkState};
use ferry::store::Store;

struct Running {
    handle: ForwarderHandle,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ForwarderReport>,
}

impl Running {
    async fn stop(self) -> ForwarderReport {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

fn spawn_forwarder(store: &Store, data_dir: &Path, opts: ForwarderOptions) -> Running {
    let dl = DeadLetters::open(data_dir).unwrap();
    let (fwd, handle) = Forwarder::new(store.clone(), dl, opts, Box::new(Unlimited)).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fwd.run(async move {
        let _ = rx.await;
    }));
    Running { handle, stop, task }
}

/// Test defaults: short timers so failures are noticed within seconds.
fn test_opts(bootstrap: &str) -> ForwarderOptions {
    let mut k = KafkaOptions::new(bootstrap);
    k.linger_ms = 5;
    let mut o = ForwarderOptions::new("gw1", k);
    o.stall_timeout = Duration::from_secs(30);
    o.backoff_min = Duration::from_millis(100);
    o.backoff_max = Duration::from_secs(2);
    o.ack_interval = Duration::from_millis(50);
    o.shutdown_flush_timeout = Duration::from_secs(10);
    o
}

async fn consume(
    bootstrap: &str,
    topics: &[(&str, i32)],
    timeout: Duration,
    done: impl Fn(&[Consumed]) -> bool + Send + 'static,
) -> Vec<Consumed> {
    let b = bootstrap.to_string();
    let t: Vec<(String, i32)> = topics.iter().map(|(t, n)| (t.to_string(), *n)).collect();
    tokio::task::spawn_blocking(move || {
        let t: Vec<(&str, i32)> = t.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        consume_until(&b, &t, timeout, Duration::from_millis(500), done)
    })
    .await
    .unwrap()
}

/// Distinct `ferry.seq` values in what was consumed.
fn ids(got: &[Consumed]) -> BTreeSet<String> {
    got.iter().filter_map(|r| r.header("ferry.seq")).collect()
}

/// Every copy of a record (same ferry.seq) is identical: re-sends are true duplicates.
fn assert_duplicates_identical(got: &[Consumed]) -> usize {
    let mut seen: HashMap<String, &Consumed> = HashMap::new();
    let mut dups = 0;
    for r in got {
        let id = r.header("ferry.seq").expect("every record has ferry.seq");
        if let Some(prev) = seen.get(&id) {
            dups += 1;
            assert_eq!(prev.payload, r.payload, "duplicate {id} differs in payload");
            assert_eq!(prev.key, r.key, "duplicate {id} differs in key");
            assert_eq!(
                prev.timestamp, r.timestamp,
                "duplicate {id} differs in timestamp"
            );
        } else {
            seen.insert(id, r);
        }
    }
    dups
}

/// Within each partition, the records of each class appear in sequence order (a re-sent run
/// may restart lower, but only by repeating records already seen).
fn assert_per_partition_order(got: &[Consumed]) {
    let mut last: HashMap<(String, i32, String), u64> = HashMap::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for r in got {
        let id = r.header("ferry.seq").unwrap();
        let class = r.header("ferry.class").unwrap();
        let seq: u64 = id.rsplit('/').next().unwrap().parse().unwrap();
        let k = (r.topic.clone(), r.partition, class);
        if let Some(prev) = last.get(&k) {
            assert!(
                seq > *prev || seen.contains(&id),
                "order broken in {k:?}: {seq} after {prev} and not a duplicate"
            );
        }
        last.insert(k, seq);
        seen.insert(id);
    }
}

/// N messages over 3 classes arrive with the right topics, keys, headers, timestamps and
/// per-class order; acknowledged positions reach the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_three_classes_with_mapping() {
    let mut broker = Tansu::start();
    broker.create_topic("alarms", 1);
    broker.create_topic("temp", 2);
    broker.create_topic("telemetry", 2);
    broker.create_topic("bulk", 3);
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), &["alarms", "telemetry", "bulk"]);

    let mut opts = test_opts(&broker.bootstrap());
    opts.mappings = vec![
        (
            "alarms".into(),
            ClassMappingConfig {
                topic: "{class}".into(),
                key: Some("{client_id}".into()),
                rules: vec![],
            },
        ),
        (
            "telemetry".into(),
            ClassMappingConfig {
                topic: "telemetry".into(),
                key: Some("{2}".into()),
                rules: vec![RuleMappingConfig {
                    filter: "site/+/temp".into(),
                    topic: Some("temp".into()),
                    key: Some("{gateway}-{2}".into()),
                }],
            },
        ),
        (
            "bulk".into(),
            ClassMappingConfig {
                topic: "bulk".into(),
                key: None,
                rules: vec![],
            },
        ),
    ];

    // Half before the forwarder starts (a backlog), half while it runs (fresh).
    const N: u64 = 600;
    let mut expected: BTreeMap<String, (usize, ferry::store::Record)> = BTreeMap::new();
    let mk = |i: u64| -> (usize, ferry::store::Record) {
        let class = (i % 3) as usize;
        let topic = match class {
            0 => format!("site/line{}/alarm", i % 4),
            1 if i % 2 == 0 => format!("site/line{}/temp", i % 5),
            1 => format!("site/line{}/pressure", i % 5),
            _ => format!("bulk/{i}"),
        };
        let mut r = record(
            &topic,
            &format!("dev-{}", i % 7),
            1_600_000_000_000 + i * 1000,
            Bytes::from(format!("payload-{i}")),
        );
        if i % 10 == 0 {
            r.user_properties = vec![("unit".into(), "C".into())];
            r.content_type = Some("text/plain".into());
            r.qos = 2;
            r.retain = true;
        }
        (class, r)
    };
    let names = ["alarms", "telemetry", "bulk"];
    for i in 0..N / 2 {
        let (c, r) = mk(i);
        let seq = append(&store, c, r.clone()).await;
        expected.insert(format!("gw1/{}/{seq}", names[c]), (c, r));
    }
    let running = spawn_forwarder(&store, dir.path(), opts);
    for i in N / 2..N {
        let (c, r) = mk(i);
        let seq = append(&store, c, r.clone()).await;
        expected.insert(format!("gw1/{}/{seq}", names[c]), (c, r));
    }

    let want = expected.len();
    let got = consume(
        &broker.bootstrap(),
        &[("alarms", 1), ("temp", 2), ("telemetry", 2), ("bulk", 3)],
        Duration::from_secs(90),
        move |r| ids(r).len() >= want,
    )
    .await;
    assert_eq!(ids(&got).len(), want, "not every record arrived");
    assert_duplicates_identical(&got);
    assert_per_partition_order(&got);

    for r in &got {
        let id = r.header("ferry.seq").unwrap();
        let (class, rec) = &expected[&id];
        let level2 = rec.topic.split('/').nth(1).unwrap_or("");
        let (topic, key) = match *class {
            0 => ("alarms".to_string(), Some(rec.client_id.clone())),
            1 if rec.topic.ends_with("/temp") => ("temp".into(), Some(format!("gw1-{level2}"))),
            1 => ("telemetry".into(), Some(level2.to_string())),
            _ => ("bulk".into(), None),
        };
        assert_eq!(r.topic, topic, "{id}");
        assert_eq!(r.key_str(), key, "{id}");
        assert_eq!(r.payload, rec.payload.to_vec(), "{id}");
        assert_eq!(
            r.timestamp,
            Some(rec.timestamp_ms as i64),
            "{id}: Kafka timestamp = receive time"
        );
        assert_eq!(r.header("mqtt.topic").as_deref(), Some(rec.topic.as_str()));
        assert_eq!(r.header("mqtt.qos"), Some(rec.qos.to_string()));
        assert_eq!(r.header("mqtt.retain"), Some(rec.retain.to_string()));
        assert_eq!(
            r.header("mqtt.client_id").as_deref(),
            Some(rec.client_id.as_str())
        );
        assert_eq!(r.header("ferry.gateway").as_deref(), Some("gw1"));
        assert_eq!(r.header("ferry.class").as_deref(), Some(names[*class]));
        assert_eq!(
            r.header("ferry.received_at"),
            Some(rec.timestamp_ms.to_string())
        );
        assert_eq!(r.header("content-type"), rec.content_type.clone());
        if !rec.user_properties.is_empty() {
            assert_eq!(r.header("unit").as_deref(), Some("C"));
        }
    }

    let h = running.handle.clone();
    assert!(
        eventually(Duration::from_secs(10), || h.status().acked_records >= N).await,
        "{:?}",
        h.status()
    );
    let report = running.stop().await;
    assert_eq!(report.unflushed_records, 0);
    assert_eq!(report.status.link, LinkState::Online);
    for (c, name) in names.iter().enumerate() {
        assert_eq!(
            store.acked(c).seq,
            store.committed(c),
            "class {name} fully acked"
        );
    }
    // Positions are durable: a new store handle sees them.
    store.close().unwrap();
    // The data directory lock goes with the last handle.
    drop(store);
    let store = open_store(dir.path(), &names);
    for c in 0..3 {
        assert_eq!(store.acked(c).seq, N / 3);
    }
}

fn telemetry_store(dir: &Path) -> Store {
    open_store(dir, &["telemetry"])
}

fn seq_ids(class: &str, range: std::ops::RangeInclusive<u64>) -> BTreeSet<String> {
    range.map(|s| format!("gw1/{class}/{s}")).collect()
}

/// Broker stopped while messages keep arriving: ferry buffers them (nothing acked), goes
/// offline; broker back: every message delivered, duplicates only with identical ferry.seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_buffers_then_delivers_everything() {
    let mut broker = Tansu::start();
    broker.create_topic("ferry.telemetry", 2);
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry_store(dir.path());
    let mut opts = test_opts(&broker.bootstrap());
    opts.kafka.message_timeout_ms = 5000;
    opts.stall_timeout = Duration::from_secs(10);
    let running = spawn_forwarder(&store, dir.path(), opts);
    for i in 0..50u64 {
        append(&store, 0, record("a/b", "c", 1000 + i, format!("m{i}"))).await;
    }
    let h = running.handle.clone();
    assert!(eventually(Duration::from_secs(30), || h.status().acked_records == 50).await);

    broker.stop();
    for i in 50..250u64 {
        append(&store, 0, record("a/b", "c", 1000 + i, format!("m{i}"))).await;
    }
    assert!(
        eventually(Duration::from_secs(30), || h.status().link
            == LinkState::Offline)
        .await,
        "link never went offline: {:?}",
        h.status()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        store.acked(0).seq,
        50,
        "nothing can be acked while the broker is down"
    );
    let st = h.status();
    assert!(st.last_error.is_some(), "{st:?}");

    // Memory storage restarts empty (topics re-created): the records buffered during the
    // outage must all arrive.
    broker.restart();
    assert!(
        eventually(Duration::from_secs(90), || store.acked(0).seq == 250).await,
        "not drained after the broker came back: {:?}",
        h.status()
    );
    let want = seq_ids("telemetry", 51..=250);
    let w = want.clone();
    let got = consume(
        &broker.bootstrap(),
        &[("ferry.telemetry", 2)],
        Duration::from_secs(30),
        move |r| w.is_subset(&ids(r)),
    )
    .await;
    let got_ids = ids(&got);
    let missing: Vec<_> = want.difference(&got_ids).collect();
    assert!(missing.is_empty(), "lost records: {missing:?}");
    let dups = assert_duplicates_identical(&got);
    assert_per_partition_order(&got);
    let report = running.stop().await;
    eprintln!(
        "outage: {} records consumed after restart, {dups} duplicates, {} producer resets",
        got.len(),
        report.status.producer_resets
    );
}

/// A flapping link (connections refused, cut, blackholed several times through a proxy, the
/// broker itself keeps its data): every record arrives, in order per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_link_loses_nothing() {
    let proxy = Proxy::start(0);
    let mut broker = Tansu::start_behind(&proxy);
    broker.create_topic("ferry.telemetry", 2);
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry_store(dir.path());
    let mut opts = test_opts(&proxy.bootstrap());
    opts.kafka.message_timeout_ms = 4000;
    opts.stall_timeout = Duration::from_secs(5);
    let running = spawn_forwarder(&store, dir.path(), opts);

    const N: u64 = 600;
    let s2 = store.clone();
    let producer = tokio::spawn(async move {
        for i in 0..N {
            append(
                &s2,
                0,
                record("site/x", &format!("d{}", i % 5), 1000 + i, format!("m{i}")),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    for mode in [ProxyMode::Refuse, ProxyMode::Blackhole, ProxyMode::Refuse] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.set_mode(mode);
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.set_mode(ProxyMode::Open);
        proxy.cut();
    }
    producer.await.unwrap();
    let h = running.handle.clone();
    assert!(
        eventually(Duration::from_secs(120), || store.acked(0).seq == N).await,
        "not drained: {:?}",
        h.status()
    );
    let want = seq_ids("telemetry", 1..=N);
    let w = want.clone();
    let got = consume(
        &proxy.bootstrap(),
        &[("ferry.telemetry", 2)],
        Duration::from_secs(60),
        move |r| w.is_subset(&ids(r)),
    )
    .await;
    let got_ids = ids(&got);
    let missing: Vec<_> = want.difference(&got_ids).collect();
    assert!(missing.is_empty(), "lost records: {missing:?}");
    let dups = assert_duplicates_identical(&got);
    assert_per_partition_order(&got);
    let report = running.stop().await;
    eprintln!(
        "flapping: {} consumed, {dups} duplicates, resets {}, stalls {}, resent {}",
        got.len(),
        report.status.producer_resets,
        report.status.stalls,
        report.status.resent_records
    );
}

/// A hung broker (SIGSTOP: connections stay up, nothing answers) trips the stall watchdog,
/// which recreates the producer; after SIGCONT everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_broker_trips_stall_watchdog_and_recovers() {
    let mut broker = Tansu::start();
    broker.create_topic("ferry.telemetry", 1);
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry_store(dir.path());
    let mut opts = test_opts(&broker.bootstrap());
    opts.stall_timeout = Duration::from_secs(3);
    let running = spawn_forwarder(&store, dir.path(), opts);
    let h = running.handle.clone();
    for i in 0..20u64 {
        append(&store, 0, record("a", "c", 1000 + i, format!("m{i}"))).await;
    }
    assert!(eventually(Duration::from_secs(30), || store.acked(0).seq == 20).await);

    broker.pause();
    for i in 20..50u64 {
        append(&store, 0, record("a", "c", 1000 + i, format!("m{i}"))).await;
    }
    assert!(
        eventually(Duration::from_secs(30), || h.status().stalls >= 1).await,
        "watchdog did not fire: {:?}",
        h.status()
    );
    let st = h.status();
    assert!(st.producer_resets >= 1, "{st:?}");
    assert!(store.acked(0).seq < 50);

    broker.resume();
    assert!(
        eventually(Duration::from_secs(90), || store.acked(0).seq == 50).await,
        "not drained after SIGCONT: {:?}",
        h.status()
    );
    let want = seq_ids("telemetry", 1..=50);
    let w = want.clone();
    let got = consume(
        &broker.bootstrap(),
        &[("ferry.telemetry", 1)],
        Duration::from_secs(30),
        move |r| w.is_subset(&ids(r)),
    )
    .await;
    assert!(want.is_subset(&ids(&got)));
    assert_duplicates_identical(&got);
    assert_per_partition_order(&got);
    let report = running.stop().await;
    assert_eq!(report.status.link, LinkState::Online);
}

// ---------------------------------------------------------------------------------------------
// librdkafka's mock cluster: deterministic broker errors.

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// A record larger than `message.max.bytes` can never be sent: it goes to the dead-letter log
/// with the error, and the class keeps draining past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_too_large_goes_to_dead_letter_and_queue_drains() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.telemetry", 1, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry_store(dir.path());
    let mut opts = test_opts(&bootstrap);
    opts.kafka
        .properties
        .insert("message.max.bytes".into(), "20000".into());
    for i in 1..=20u64 {
        let payload = if i == 5 {
            Bytes::from(vec![b'x'; 50_000])
        } else {
            Bytes::from(format!("m{i}"))
        };
        append(&store, 0, record("big/or/small", "c", 1000 + i, payload)).await;
    }
    let running = spawn_forwarder(&store, dir.path(), opts);
    let h = running.handle.clone();
    assert!(
        eventually(Duration::from_secs(30), || store.acked(0).seq == 20).await,
        "{:?}",
        h.status()
    );
    let st = h.status();
    assert_eq!(st.dead_lettered, 1, "{st:?}");
    assert_eq!(st.classes[0].dead_lettered, 1);
    assert_eq!(st.dead_letter_entries, 1);

    let b = bootstrap.clone();
    let got = consume(
        &b,
        &[("ferry.telemetry", 1)],
        Duration::from_secs(30),
        |r| ids(r).len() >= 19,
    )
    .await;
    let mut want = seq_ids("telemetry", 1..=20);
    want.remove("gw1/telemetry/5");
    assert_eq!(ids(&got), want);
    running.stop().await;

    // The dead letter holds the record and the reason, survives reopening, and can be dropped.
    let dl = DeadLetters::open(dir.path()).unwrap();
    let list = dl.list();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].class.as_str(), list[0].seq), ("telemetry", 5));
    assert!(
        list[0].reason.contains("MessageSizeTooLarge"),
        "{}",
        list[0].reason
    );
    let entry = dl.get(list[0].id).unwrap();
    assert_eq!(entry.record.payload.len(), 50_000);
    assert_eq!(entry.record.topic, "big/or/small");
    // Replay puts it back into its class as a new record (it would fail again here; the
    // operator replays after fixing the cause).
    let replayed = dl
        .replay(&store, ferry::forward::deadletter::Selector::All)
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    assert_eq!(store.committed(0), 21);
    assert!(dl.list().is_empty());
    drop(mock);
}

/// `forward.max_in_flight` (records) caps what is handed to the producer and not yet
/// reported, even when the byte limit would allow far more; everything is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_record_limit_holds() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.telemetry", 1, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry_store(dir.path());
    for i in 1..=300u64 {
        append(&store, 0, record("a/b", "c", 1000 + i, format!("m{i}"))).await;
    }
    let mut opts = test_opts(&bootstrap);
    opts.max_in_flight_records = 7;
    // Slow acknowledgements so records pile up in flight if the limit did not hold.
    opts.kafka.linger_ms = 50;
    let running = spawn_forwarder(&store, dir.path(), opts);
    let h = running.handle.clone();
    let mut peak = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.acked(0).seq < 300 && std::time::Instant::now() < deadline {
        peak = peak.max(h.status().classes[0].in_flight_records);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(store.acked(0).seq, 300, "{:?}", h.status());
    assert!(peak > 0, "sampling saw records in flight");
    assert!(peak <= 7, "in flight peaked at {peak} records, limit 7");
    running.stop().await;
    drop(mock);
}

/// Retriable broker errors (injected produce errors, then the broker down long enough for
/// records to time out) are retried: nothing is dropped or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_errors_are_retried_nothing_dropped() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.telemetry", 2, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry_store(dir.path());
    let mut opts = test_opts(&bootstrap);
    opts.kafka.message_timeout_ms = 1500;
    // One produce request in flight per broker: see the mock artifact explained below.
    opts.kafka
        .properties
        .insert("max.in.flight.requests.per.connection".into(), "1".into());
    opts.mappings = vec![(
        "telemetry".into(),
        ClassMappingConfig {
            topic: "ferry.{class}".into(),
            key: Some("{client_id}".into()),
            rules: vec![],
        },
    )];
    let running = spawn_forwarder(&store, dir.path(), opts);
    let h = running.handle.clone();
    // Warm up every partition first, so the injected errors hit steady-state batches.
    //
    // Why one request in flight: when a produce request R1 fails and a later request R2 on
    // the same partition (already in flight) succeeds, librdkafka's idempotent producer
    // acknowledges R1's records implicitly (`rd_kafka_dr_implicit_ack` in rdkafka_request.c).
    // That is correct against Kafka, whose broker refuses R2 with
    // OUT_OF_ORDER_SEQUENCE_NUMBER unless R1 was stored. The mock cluster does not check
    // sequences for a non-transactional producer (`rd_kafka_mock_validate_records` returns
    // early without a TransactionalId), so there R1's records are simply missing: a mock
    // artifact (it lost 4 records in CI on 2026-11-22 and was reproduced on a loaded machine
    // on 2026-12-03), not a ferry or Kafka behaviour. With one request in flight there is no
    // R2 to race R1. Link cuts against the real broker, pipelined, are covered by
    // `flapping_link_loses_nothing` and `outage_buffers_then_delivers_everything`.
    for i in 1..=10u64 {
        append(&store, 0, record("a", &format!("w{i}"), i, format!("m{i}"))).await;
    }
    assert!(eventually(Duration::from_secs(30), || store.acked(0).seq == 10).await);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ],
    );
    for i in 11..=40u64 {
        append(
            &store,
            0,
            record("a", &format!("w{}", i % 10), i, format!("m{i}")),
        )
        .await;
    }
    assert!(
        eventually(Duration::from_secs(30), || store.acked(0).seq == 40).await,
        "{:?}",
        h.status()
    );

    // Broker down: the records time out inside librdkafka and ferry re-sends them.
    mock.broker_down(1).unwrap();
    for i in 41..=70u64 {
        append(
            &store,
            0,
            record("a", &format!("w{}", i % 10), i, format!("m{i}")),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let st = h.status();
    assert!(store.acked(0).seq < 70, "{st:?}");
    assert!(st.last_error.is_some(), "{st:?}");
    mock.broker_up(1).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || store.acked(0).seq == 70).await,
        "{:?}",
        h.status()
    );
    let st = h.status();
    assert_eq!(st.dead_lettered, 0);
    assert!(
        st.resent_records > 0,
        "records were re-sent by ferry: {st:?}"
    );

    let got = consume(
        &bootstrap,
        &[("ferry.telemetry", 2)],
        Duration::from_secs(30),
        |r| ids(r).len() >= 70,
    )
    .await;
    assert_eq!(ids(&got), seq_ids("telemetry", 1..=70));
    assert_duplicates_identical(&got);
    assert_per_partition_order(&got);
    running.stop().await;
    drop(mock);
}

// ---------------------------------------------------------------------------------------------
// Manual control: pause/resume, drain-now overriding a closed window.

/// A window that is always closed (so only "drain now" can send).
struct ClosedWindow;

impl ferry::forward::policy::Policy for ClosedWindow {
    fn window(&mut self) -> ferry::forward::policy::WindowState {
        ferry::forward::policy::WindowState {
            open: false,
            next_change: None,
        }
    }
    fn pick(&mut self, c: &[ferry::forward::policy::Candidate]) -> Option<usize> {
        c.first().map(|c| c.class)
    }
    fn take(&mut self, _: usize, _: u64) -> Result<(), Duration> {
        Ok(())
    }
    fn sent(&mut self, _: usize, _: u64) {}
    fn rate_limit(&self) -> Option<u64> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_drain_now() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.alarms", 1, 1).unwrap();
    mock.create_topic("ferry.bulk", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), &["alarms", "bulk"]);
    let opts = test_opts(&mock.bootstrap_servers());

    // Pause one class: the other keeps flowing.
    let running = spawn_forwarder(&store, dir.path(), opts.clone());
    let h = running.handle.clone();
    h.pause(Some("bulk")).unwrap();
    assert!(h.pause(Some("nope")).is_err());
    for i in 0..10u64 {
        append(&store, 0, record("a", "c", i, "x")).await;
        append(&store, 1, record("b", "c", i, "y")).await;
    }
    assert!(eventually(Duration::from_secs(20), || store.acked(0).seq == 10).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.acked(1).seq, 0, "paused class sent");
    assert!(h.status().classes[1].paused);
    h.resume(Some("bulk")).unwrap();
    assert!(eventually(Duration::from_secs(20), || store.acked(1).seq == 10).await);
    running.stop().await;

    // A closed window holds everything back until the operator says "drain now".
    let dl = DeadLetters::open(dir.path()).unwrap();
    let (fwd, h) = Forwarder::new(store.clone(), dl, opts, Box::new(ClosedWindow)).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fwd.run(async move {
        let _ = rx.await;
    }));
    for i in 0..10u64 {
        append(&store, 0, record("a", "c", i, "x")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.acked(0).seq, 10, "sent while the window was closed");
    assert!(!h.status().window_open);
    h.drain_now_for(Duration::from_secs(30));
    assert!(eventually(Duration::from_secs(20), || store.acked(0).seq == 20).await);
    assert!(h.status().drain_now_until_ms.is_some());
    let _ = stop.send(());
    task.await.unwrap();
    drop(mock);
}

// ---------------------------------------------------------------------------------------------
// kill -9 during a drain.

const KILL9_DIR: &str = "FERRY_TEST_KILL9_DIR";
const KILL9_BOOTSTRAP: &str = "FERRY_TEST_KILL9_BOOTSTRAP";
const KILL9_RECORDS: u64 = 20_000;

fn kill9_opts(bootstrap: &str) -> ForwarderOptions {
    let mut o = test_opts(bootstrap);
    // A small in-flight window bounds what a crash can make ferry send twice.
    o.max_in_flight_bytes = 64 << 10;
    o.batch_max_records = 64;
    o.ack_interval = Duration::from_millis(10);
    o
}

/// Not a test on its own: the body of the child process that `kill9_during_drain_*` starts
/// (the test binary re-executed) and kills with SIGKILL mid-drain.
#[test]
fn kill9_child_process() {
    let (Some(dir), Some(bootstrap)) = (
        std::env::var_os(KILL9_DIR),
        std::env::var(KILL9_BOOTSTRAP).ok(),
    ) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = std::path::PathBuf::from(dir);
        use ferry::forward::clock::{Clock, SystemClock};
        use ferry::forward::policy::Configured;
        use ferry::forward::schedule::{ClassPolicy, Scheduler};
        use ferry::forward::throttle::{Rate, Throttle, ThrottleConfig, Throttles};
        use ferry::forward::window::{Schedule, Windows};
        let store = telemetry_store(&dir);
        // Throttled to 1 MiB/s so the ~9 MB backlog takes seconds and the kill lands mid-drain.
        let clock: std::sync::Arc<dyn Clock> = std::sync::Arc::new(SystemClock::local());
        let now = clock.now();
        let policy = Configured::new(
            clock,
            Windows::new(Schedule::always()),
            Scheduler::new(vec![ClassPolicy {
                name: "telemetry".into(),
                priority: 0,
                min_share: 0.0,
            }])
            .unwrap(),
            Throttles::new(
                Throttle::new(ThrottleConfig::rate(Rate::BytesPerSec(1 << 20)), &now),
                vec![],
            ),
        );
        let dl = DeadLetters::open(&dir).unwrap();
        let (fwd, _h) =
            Forwarder::new(store.clone(), dl, kill9_opts(&bootstrap), Box::new(policy)).unwrap();
        fwd.run(std::future::pending::<()>()).await;
    });
}

/// kill -9 while draining a backlog, restart: nothing lost, and what is sent twice is bounded
/// by the un-acknowledged window (in flight + not yet persisted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_drain_loses_nothing() {
    common::init_tracing();
    let mut broker = Tansu::start();
    broker.create_topic("ferry.telemetry", 2);
    let dir = tempfile::tempdir().unwrap();
    {
        let store = telemetry_store(dir.path());
        let payload = Bytes::from(vec![b'p'; 400]);
        let mut tickets = Vec::new();
        for i in 0..KILL9_RECORDS {
            tickets.push(
                store
                    .append(
                        0,
                        record("site/a", &format!("d{}", i % 8), 1000 + i, payload.clone()),
                    )
                    .unwrap(),
            );
        }
        for t in tickets {
            t.await.unwrap();
        }
        store.close().unwrap();
    }

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "kill9_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL9_DIR, dir.path())
        .env(KILL9_BOOTSTRAP, broker.bootstrap())
        .spawn()
        .unwrap();
    // Let it drain part of the backlog, then kill it without warning.
    let b = broker.bootstrap();
    let seen = tokio::task::spawn_blocking(move || {
        consume_until(
            &b,
            &[("ferry.telemetry", 2)],
            Duration::from_secs(60),
            Duration::ZERO,
            |r| r.len() >= 2000,
        )
    })
    .await
    .unwrap();
    assert!(seen.len() >= 2000, "child did not start draining");
    child.kill().unwrap();
    child.wait().unwrap();

    let store = telemetry_store(dir.path());
    let acked_at_kill = store.acked(0).seq;
    assert!(
        acked_at_kill < KILL9_RECORDS,
        "child finished before the kill; make the backlog larger"
    );
    let running = spawn_forwarder(&store, dir.path(), kill9_opts(&broker.bootstrap()));
    let h = running.handle.clone();
    assert!(
        eventually(Duration::from_secs(180), || store.acked(0).seq
            == KILL9_RECORDS)
        .await,
        "{:?}",
        h.status()
    );
    let report = running.stop().await;
    eprintln!("after restart: {:?}", report.status);

    let want = seq_ids("telemetry", 1..=KILL9_RECORDS);
    let w = want.clone();
    let got = consume(
        &broker.bootstrap(),
        &[("ferry.telemetry", 2)],
        Duration::from_secs(120),
        move |r| w.is_subset(&ids(r)),
    )
    .await;
    let got_ids = ids(&got);
    let mut missing: Vec<u64> = want
        .difference(&got_ids)
        .map(|id| id.rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    missing.sort_unstable();
    if !missing.is_empty() {
        let mut offs: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for r in &got {
            offs.entry(r.partition).or_default().push(r.offset);
        }
        for (p, o) in &mut offs {
            o.sort_unstable();
            let v: Vec<u64> = o.iter().map(|x| *x as u64).collect();
            eprintln!(
                "partition {p}: {} records, offset runs {:?}",
                o.len(),
                ranges(&v)
            );
        }
    }
    assert!(
        missing.is_empty(),
        "{} records lost across kill -9 (acked at kill {acked_at_kill}): ranges {:?}",
        missing.len(),
        ranges(&missing)
    );
    let dups = assert_duplicates_identical(&got);
    assert_per_partition_order(&got);
    eprintln!(
        "kill -9: acked at kill {acked_at_kill}, consumed {} for {} records, {dups} duplicates",
        got.len(),
        KILL9_RECORDS
    );
    // In flight: at most 64 KiB of ~450-byte records (~150) plus what was acknowledged in the
    // last 10 ms ack interval; 1000 is a generous bound that still proves "bounded".
    assert!(
        dups <= 1000,
        "{dups} duplicates: the re-sent range is not bounded"
    );
}

/// The configured throttle (fwd-policy's token bucket behind the `Configured` policy) limits
/// what the forwarder sends: 256 KiB at 64 KiB/s takes about 4 s (generous margins; the
/// accurate figure belongs in the benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_limits_the_drain_rate() {
    use ferry::forward::clock::{Clock, SystemClock};
    use ferry::forward::policy::Configured;
    use ferry::forward::schedule::{ClassPolicy, Scheduler};
    use ferry::forward::throttle::{Rate, Throttle, ThrottleConfig, Throttles};
    use ferry::forward::window::{Schedule, Windows};
    use std::sync::Arc;

    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.telemetry", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry_store(dir.path());
    for i in 0..256u64 {
        append(
            &store,
            0,
            record("a", "c", i, Bytes::from(vec![b'x'; 1024])),
        )
        .await;
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::local());
    let now = clock.now();
    let throttles = Throttles::new(
        Throttle::new(ThrottleConfig::rate(Rate::BytesPerSec(64 << 10)), &now),
        vec![],
    );
    let scheduler = Scheduler::new(vec![ClassPolicy {
        name: "telemetry".into(),
        priority: 0,
        min_share: 0.0,
    }])
    .unwrap();
    let policy = Configured::new(
        clock,
        Windows::new(Schedule::always()),
        scheduler,
        throttles,
    );
    let dl = DeadLetters::open(dir.path()).unwrap();
    let (fwd, h) = Forwarder::new(
        store.clone(),
        dl,
        test_opts(&mock.bootstrap_servers()),
        Box::new(policy),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fwd.run(async move {
        let _ = rx.await;
    }));
    assert!(eventually(Duration::from_secs(30), || store.acked(0).seq == 256).await);
    let took = started.elapsed();
    assert_eq!(h.status().throttle_bytes_per_sec, Some(64 << 10));
    // ~270 KiB on the wire (payload + headers) at 64 KiB/s, minus a 250 ms burst: ~4 s.
    assert!(
        took >= Duration::from_secs(3),
        "too fast for 64 KiB/s: {took:?}"
    );
    assert!(took <= Duration::from_secs(12), "too slow: {took:?}");
    let _ = stop.send(());
    task.await.unwrap();
}

/// A permanent error from the broker (topic authorization failed on a produce request) moves
/// the affected records to the dead-letter log instead of blocking the class; nothing is lost:
/// every record is either delivered or dead-lettered. (librdkafka remembers a topic's
/// authorization error until its next metadata refresh, so records produced right after the
/// failure can be refused too: that is why the test accepts more than one dead letter.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_permanent_error_dead_letters_the_record() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.telemetry", 1, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry_store(dir.path());
    let running = spawn_forwarder(&store, dir.path(), test_opts(&bootstrap));
    let h = running.handle.clone();
    // Warm up the connection so the injected error hits the next produce request only.
    append(&store, 0, record("a", "c", 1, "first")).await;
    assert!(eventually(Duration::from_secs(20), || store.acked(0).seq == 1).await);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    append(&store, 0, record("a", "c", 2, "denied")).await;
    assert!(
        eventually(Duration::from_secs(20), || h.status().dead_lettered >= 1).await,
        "{:?}",
        h.status()
    );
    for i in 3..=10u64 {
        append(&store, 0, record("a", "c", i, format!("m{i}"))).await;
    }
    assert!(
        eventually(Duration::from_secs(30), || store.acked(0).seq == 10).await,
        "the class must keep draining: {:?}",
        h.status()
    );
    running.stop().await;
    let dl = DeadLetters::open(dir.path()).unwrap();
    let list = dl.list();
    assert_eq!(list[0].seq, 2, "{list:?}");
    assert!(
        list.iter()
            .all(|e| e.reason.contains("TopicAuthorizationFailed")),
        "{list:?}"
    );
    let dead: BTreeSet<String> = list
        .iter()
        .map(|e| format!("gw1/telemetry/{}", e.seq))
        .collect();
    let n_live = 10 - dead.len();
    let got = consume(
        &bootstrap,
        &[("ferry.telemetry", 1)],
        Duration::from_secs(20),
        move |r| ids(r).len() >= n_live,
    )
    .await;
    let delivered = ids(&got);
    assert!(delivered.is_disjoint(&dead), "dead-lettered and delivered");
    let all: BTreeSet<String> = delivered.union(&dead).cloned().collect();
    assert_eq!(
        all,
        seq_ids("telemetry", 1..=10),
        "every record delivered or dead-lettered"
    );
    assert!(delivered.contains("gw1/telemetry/1"));
    eprintln!(
        "auth failure: {} dead letters, {} delivered",
        dead.len(),
        delivered.len()
    );
    drop(mock);
}

/// Compresses sorted numbers into (first, last) runs for readable failure messages.
fn ranges(v: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &x in v {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == x => *last = x,
            _ => out.push((x, x)),
        }
    }
    out
}

/// Priority with minimum shares through the whole forwarder (fwd-policy's scheduler behind
/// `Configured`, throttled so the drain takes seconds): while both classes are backlogged the
/// high class gets most of the link but the low class at least about its minimum share, and a
/// fresh high-class message overtakes the low class's backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_with_minimum_share() {
    use ferry::forward::clock::{Clock, SystemClock};
    use ferry::forward::policy::Configured;
    use ferry::forward::schedule::{ClassPolicy, Scheduler};
    use ferry::forward::throttle::{Rate, Throttle, ThrottleConfig, Throttles};
    use ferry::forward::window::{Schedule, Windows};
    use std::sync::Arc;

    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.alarms", 1, 1).unwrap();
    mock.create_topic("ferry.bulk", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), &["alarms", "bulk"]);
    // 2 MiB of backlog in each class; the link does 256 KiB/s, so neither drains in the test.
    let payload = Bytes::from(vec![b'x'; 1024]);
    let mut tickets = Vec::new();
    for i in 0..2048u64 {
        tickets.push(
            store
                .append(0, record("a", "c", i, payload.clone()))
                .unwrap(),
        );
        tickets.push(
            store
                .append(1, record("b", "c", i, payload.clone()))
                .unwrap(),
        );
    }
    for t in tickets {
        t.await.unwrap();
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::local());
    let now = clock.now();
    let scheduler = Scheduler::new(vec![
        ClassPolicy {
            name: "alarms".into(),
            priority: 10,
            min_share: 0.0,
        },
        ClassPolicy {
            name: "bulk".into(),
            priority: 0,
            min_share: 0.25,
        },
    ])
    .unwrap()
    .with_half_life(256 << 10)
    .unwrap();
    let policy = Configured::new(
        clock,
        Windows::new(Schedule::always()),
        scheduler,
        Throttles::new(
            Throttle::new(ThrottleConfig::rate(Rate::BytesPerSec(256 << 10)), &now),
            vec![],
        ),
    );
    let mut opts = test_opts(&mock.bootstrap_servers());
    opts.batch_max_records = 16;
    let dl = DeadLetters::open(dir.path()).unwrap();
    let (fwd, h) = Forwarder::new(store.clone(), dl, opts, Box::new(policy)).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fwd.run(async move {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (a, b) = (store.acked(0).seq, store.acked(1).seq);
    let share_b = b as f64 / (a + b) as f64;
    eprintln!("after 4 s: alarms {a}, bulk {b}, bulk share {share_b:.2}");
    assert!(
        a > b,
        "the high class must get most of the link: {a} vs {b}"
    );
    assert!(
        share_b >= 0.15,
        "the low class must get about its minimum share (0.25): {share_b:.2}"
    );
    assert!(a + b < 4096, "the throttle held: {}", a + b);
    let _ = stop.send(());
    task.await.unwrap();
    assert_eq!(h.status().dead_lettered, 0);
    drop(mock);
}

/// Connectivity windows through the real forwarder, with an injectable clock: with the wall
/// clock outside "Mon-Fri 22:00-06:00" nothing is sent (the link stays idle, the backlog
/// waits); moving the clock into the window sends everything; moving it out again stops new
/// records from going out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_closed_sends_nothing_until_the_clock_enters_it() {
    use ferry::forward::clock::{Clock, ManualClock};
    use ferry::forward::policy::Configured;
    use ferry::forward::schedule::{ClassPolicy, Scheduler};
    use ferry::forward::throttle::{Throttle, Throttles};
    use ferry::forward::window::{Schedule, Windows};
    use std::sync::Arc;

    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ferry.telemetry", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = telemetry_store(dir.path());
    for i in 0..50u64 {
        append(&store, 0, record("a", "c", i, format!("m{i}"))).await;
    }
    // Wednesday 2026-11-18 12:00 local: outside the night window.
    let clock = ManualClock::at(2026, 11, 18, 12, 0, 0);
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let now = shared.now();
    let policy = Configured::new(
        shared,
        Windows::new(Schedule::parse("Mon-Fri 22:00-06:00").unwrap()),
        Scheduler::new(vec![ClassPolicy {
            name: "telemetry".into(),
            priority: 0,
            min_share: 0.0,
        }])
        .unwrap(),
        Throttles::new(Throttle::unlimited(&now), vec![]),
    );
    let dl = DeadLetters::open(dir.path()).unwrap();
    let (fwd, h) = Forwarder::new(
        store.clone(),
        dl,
        test_opts(&mock.bootstrap_servers()),
        Box::new(policy),
    )
    .unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(fwd.run(async move {
        let _ = rx.await;
    }));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = h.status();
    assert!(!st.window_open, "{st:?}");
    assert_eq!(st.sent_records, 0, "nothing is sent outside the window");
    assert_eq!(store.acked(0).seq, 0);
    assert!(
        st.window_next_change_ms.is_some(),
        "status says when it opens"
    );

    // 22:30 the same evening: inside the window.
    clock.set_local(
        chrono::NaiveDate::from_ymd_opt(2026, 11, 18)
            .unwrap()
            .and_hms_opt(22, 30, 0)
            .unwrap(),
    );
    assert!(
        eventually(Duration::from_secs(20), || store.acked(0).seq == 50).await,
        "{:?}",
        h.status()
    );
    assert!(h.status().window_open);

    // 06:30 the next morning: closed again; new records wait.
    clock.set_local(
        chrono::NaiveDate::from_ymd_opt(2026, 11, 19)
            .unwrap()
            .and_hms_opt(6, 30, 0)
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 50..60u64 {
        append(&store, 0, record("a", "c", i, format!("m{i}"))).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        store.acked(0).seq,
        50,
        "closed window: the new records wait"
    );
    assert!(!h.status().window_open);
    let _ = stop.send(());
    task.await.unwrap();
}
