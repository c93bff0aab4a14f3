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
            assert_eq!(prev.timestamp, r.timestamp, "duplicate {id} differs in timestamp");
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
        assert_eq!(r.timestamp, Some(rec.timestamp_ms as i64), "{id}: Kafka timestamp = receive time");
        assert_eq!(r.header("mqtt.topic").as_deref(), Some(rec.topic.as_str()));
        assert_eq!(r.header("mqtt.qos"), Some(rec.qos.to_string()));
        assert_eq!(r.header("mqtt.retain"), Some(rec.retain.to_string()));
        assert_eq!(r.header("mqtt.client_id").as_deref(), Some(rec.client_id.as_str()));
        assert_eq!(r.header("ferry.gateway").as_deref(), Some("gw1"));
        assert_eq!(r.header("ferry.class").as_deref(), Some(names[*class]));
        assert_eq!(r.header("ferry.received_at"), Some(rec.timestamp_ms.to_string()));
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
        assert_eq!(store.acked(c).seq, store.committed(c), "class {name} fully acked");
    }
    // Positions are durable: a new store handle sees them.
    store.close().unwrap();
    let store = open_store(dir.path(), &names);
    for c in 0..3 {
        assert_eq!(store.acked(c).seq, N / 3);
    }
}
