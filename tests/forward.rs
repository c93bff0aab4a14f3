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
