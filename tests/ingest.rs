//! Ingest against real parts: the real store in a temp dir, the real listener on 127.0.0.1:0,
//! the rumqttc client over TCP (and raw bytes where a client library would refuse to
//! misbehave). Each test asserts what the client saw and what the store holds.

mod common_mqtt;

use std::collections::HashMap;
use std::time::Duration;

use common_mqtt::*;
use ferry::ingest::{AckMode, AuthOptions, Classifier, FanoutOptions, TlsOptions, User};
use ferry::store::Overflow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIG: u64 = 1 << 30;

fn setup(classes: Vec<ferry::store::ClassOptions>) -> (tempfile::TempDir, ferry::store::Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), classes);
    (dir, store)
}

/// Reads from a raw socket until it is closed by the server (or `WAIT` passes); returns the
/// bytes received.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let r = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "server did not close the connection");
    out
}

#[tokio::test]
async fn v4_qos_0_1_2_are_stored_and_acked() {
    let (_d, store) = setup(vec![class("telemetry", BIG, Overflow::DropOldest)]);
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;
    let mut c = v4::Client::connect(srv.addr, "plc-1");
    c.connack().await.unwrap();

    c.client
        .publish("site/a/temp", v4::QoS::AtMostOnce, false, "q0")
        .await
        .unwrap();
    c.client
        .publish("site/a/temp", v4::QoS::AtLeastOnce, true, "q1")
        .await
        .unwrap();
    c.client
        .publish("site/a/temp", v4::QoS::ExactlyOnce, false, "q2")
        .await
        .unwrap();
    c.until(|e| matches!(e, Ok(v4::Event::Incoming(v4::Packet::PubAck(_)))).then_some(()))
        .await;
    c.until(|e| matches!(e, Ok(v4::Event::Incoming(v4::Packet::PubComp(_)))).then_some(()))
        .await;

    let recs = stored(&store, 0, 3).await;
    let got: Vec<_> = recs
        .iter()
        .map(|r| {
            (
                r.record.payload.as_ref().to_vec(),
                r.record.qos,
                r.record.retain,
                r.record.topic.as_str(),
                r.record.client_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (b"q0".to_vec(), 0, false, "site/a/temp", "plc-1"),
            (b"q1".to_vec(), 1, true, "site/a/temp", "plc-1"),
            (b"q2".to_vec(), 2, false, "site/a/temp", "plc-1"),
        ]
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(recs
        .iter()
        .all(|r| r.record.timestamp_ms <= now && r.record.timestamp_ms > now - 60_000));
    assert_eq!(srv.metric("publishes_qos1"), 1);
    srv.stop().await;
}

#[tokio::test]
async fn v5_properties_aliases_and_classes() {
    let (_d, store) = setup(vec![
        class("alarms", BIG, Overflow::Reject),
        class("telemetry", BIG, Overflow::DropOldest),
    ]);
    let classifier = Classifier::new(vec![("alarms/#".into(), 0)], 1);
    let srv = Running::start(test_opts(), store.clone(), classifier).await;
    let mut c = v5::Client::connect(srv.addr, "v5-dev");
    let ack = c.connack().await.unwrap();
    let p = ack.properties.expect("v5 CONNACK has properties");
    assert_eq!(p.receive_max, Some(100));
    assert_eq!(p.max_packet_size, Some(1 << 20));
    assert_eq!(p.topic_alias_max, Some(64));
    assert_eq!(p.retain_available, Some(1));

    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        // `ferry.*` properties are reserved (an imported record's origin id): stripped.
        user_properties: vec![
            ("unit".into(), "C".into()),
            ("ferry.origin.seq".into(), "spoofed/telemetry/1".into()),
            ("site".into(), "b".into()),
        ],
        content_type: Some("application/json".into()),
        topic_alias: Some(3),
        ..Default::default()
    };
    c.client
        .publish_with_properties(
            "site/b/temp",
            v5::QoS::AtLeastOnce,
            false,
            "{\"t\":1}",
            props,
        )
        .await
        .unwrap();
    c.until(|e| matches!(e, Ok(v5::Event::Incoming(v5::Packet::PubAck(_)))).then_some(()))
        .await;
    // Same alias, empty topic: resolves to "site/b/temp".
    let alias_only = rumqttc::v5::mqttbytes::v5::PublishProperties {
        topic_alias: Some(3),
        ..Default::default()
    };
    c.client
        .publish_with_properties("", v5::QoS::AtLeastOnce, false, "aliased", alias_only)
        .await
        .unwrap();
    c.until(|e| matches!(e, Ok(v5::Event::Incoming(v5::Packet::PubAck(_)))).then_some(()))
        .await;
    c.client
        .publish("alarms/fire", v5::QoS::AtLeastOnce, false, "hot")
        .await
        .unwrap();
    c.until(|e| matches!(e, Ok(v5::Event::Incoming(v5::Packet::PubAck(_)))).then_some(()))
        .await;

    // QoS 2 end to end on MQTT 5: PUBREC after commit, then PUBREL/PUBCOMP.
    c.client
        .publish("site/b/hum", v5::QoS::ExactlyOnce, false, "q2")
        .await
        .unwrap();
    c.until(|e| matches!(e, Ok(v5::Event::Incoming(v5::Packet::PubComp(_)))).then_some(()))
        .await;

    let tele = stored(&store, 1, 3).await;
    assert_eq!(tele.len(), 3);
    assert_eq!(
        tele[0].record.user_properties,
        vec![
            ("unit".to_string(), "C".to_string()),
            ("site".into(), "b".into())
        ]
    );
    assert_eq!(
        tele[0].record.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(tele[1].record.topic, "site/b/temp");
    assert_eq!(&tele[1].record.payload[..], b"aliased");
    assert_eq!(
        (tele[2].record.qos, &tele[2].record.payload[..]),
        (2, &b"q2"[..])
    );
    let alarms = stored(&store, 0, 1).await;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].record.topic, "alarms/fire");
    srv.stop().await;
}

#[tokio::test]
async fn will_is_stored_on_abrupt_close_not_on_disconnect() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;

    let mut o = v4::options(srv.addr, "clean");
    o.set_last_will(rumqttc::LastWill::new(
        "status/clean",
        "gone",
        v4::QoS::AtLeastOnce,
        false,
    ));
    let mut clean = v4::Client::new(o);
    clean.connack().await.unwrap();
    clean.client.disconnect().await.unwrap();
    clean.until(|e| e.is_err().then_some(())).await;

    let mut o = v4::options(srv.addr, "abrupt");
    o.set_last_will(rumqttc::LastWill::new(
        "status/abrupt",
        "died",
        v4::QoS::AtLeastOnce,
        true,
    ));
    let mut abrupt = v4::Client::new(o);
    abrupt.connack().await.unwrap();
    abrupt.abort();

    let recs = stored(&store, 0, 1).await;
    eventually("will counted", || srv.metric("wills_stored") == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recs2 = read_all(&store, 0);
    assert_eq!(recs2.len(), 1, "only the abrupt client's will: {recs:?}");
    assert_eq!(recs2[0].record.topic, "status/abrupt");
    assert_eq!(&recs2[0].record.payload[..], b"died");
    assert!(recs2[0].record.retain);
    assert_eq!(recs2[0].record.client_id, "abrupt");
    srv.stop().await;
}

fn users() -> AuthOptions {
    let phc = ferry::ingest::auth::hash_password("s3cret").unwrap();
    let mut users = HashMap::new();
    users.insert(
        "plc".to_string(),
        User {
            password_phc: Some(phc),
            publish: vec!["site/+/temp".into()],
            subscribe: vec!["cmd/plc/#".into()],
        },
    );
    AuthOptions {
        allow_anonymous: false,
        users,
        ..AuthOptions::default()
    }
}

#[tokio::test]
async fn auth_success_and_failure() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let mut opts = test_opts();
    opts.auth = users();
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;

    let mut o = v4::options(srv.addr, "good");
    o.set_credentials("plc", "s3cret");
    let mut good = v4::Client::new(o);
    good.connack().await.unwrap();
    good.client
        .publish("site/a/temp", v4::QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    good.until(|e| matches!(e, Ok(v4::Event::Incoming(v4::Packet::PubAck(_)))).then_some(()))
        .await;

    let mut o = v4::options(srv.addr, "bad");
    o.set_credentials("plc", "wrong");
    let mut bad = v4::Client::new(o);
    let e = bad.connack().await.unwrap_err();
    assert!(e.contains("BadUserNamePassword"), "{e}");

    let mut anon = v4::Client::connect(srv.addr, "anon");
    let e = anon.connack().await.unwrap_err();
    assert!(e.contains("NotAuthorized"), "{e}");

    let mut o = v5::options(srv.addr, "bad5");
    o.set_credentials("nobody", "x");
    let mut bad5 = v5::Client::new(o);
    let e = bad5.connack().await.unwrap_err();
    assert!(e.contains("BadUserNamePassword"), "{e}");

    assert_eq!(srv.metric("closed_bad_credentials"), 2);
    assert_eq!(srv.metric("closed_not_authorized"), 1);

    // `ferry reload`: new logins use the new users.
    srv.handle.set_auth(
        ferry::ingest::Authenticator::new(&AuthOptions {
            allow_anonymous: true,
            ..AuthOptions::default()
        })
        .unwrap(),
    );
    let mut anon = v4::Client::connect(srv.addr, "anon-after-reload");
    anon.connack().await.unwrap();
    let recs = stored(&store, 0, 1).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(&recs[0].record.payload[..], b"ok");
    srv.stop().await;
}

#[tokio::test]
async fn acl_denial_v5_reason_v4_close_and_subscribe_failure() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let mut opts = test_opts();
    opts.auth = users();
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;

    let mut o = v5::options(srv.addr, "acl5");
    o.set_credentials("plc", "s3cret");
    let mut c5 = v5::Client::new(o);
    c5.connack().await.unwrap();
    c5.client
        .publish("site/a/humidity", v5::QoS::AtLeastOnce, false, "denied")
        .await
        .unwrap();
    let reason = c5
        .until(|e| match e {
            Ok(v5::Event::Incoming(v5::Packet::PubAck(a))) => Some(a.reason),
            _ => None,
        })
        .await;
    assert_eq!(
        reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
    c5.client
        .subscribe("cmd/other/#", v5::QoS::AtMostOnce)
        .await
        .unwrap();
    let codes = c5
        .until(|e| match e {
            Ok(v5::Event::Incoming(v5::Packet::SubAck(s))) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::NotAuthorized]
    );
    c5.client
        .subscribe("cmd/plc/#", v5::QoS::AtLeastOnce)
        .await
        .unwrap();
    let codes = c5
        .until(|e| match e {
            Ok(v5::Event::Incoming(v5::Packet::SubAck(s))) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
            v5::QoS::AtMostOnce
        )]
    );

    let mut o = v4::options(srv.addr, "acl4");
    o.set_credentials("plc", "s3cret");
    let mut c4 = v4::Client::new(o);
    c4.connack().await.unwrap();
    c4.client.subscribe("#", v4::QoS::AtMostOnce).await.unwrap();
    let codes = c4
        .until(|e| match e {
            Ok(v4::Event::Incoming(v4::Packet::SubAck(s))) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    c4.client
        .publish("other/topic", v4::QoS::AtLeastOnce, false, "denied")
        .await
        .unwrap();
    let saw_ack = c4
        .until(|e| match e {
            Ok(v4::Event::Incoming(v4::Packet::PubAck(_))) => Some(true),
            Err(_) => Some(false),
            _ => None,
        })
        .await;
    assert!(
        !saw_ack,
        "v3.1.1 client must be disconnected without an ack"
    );

    assert_eq!(srv.metric("refused_not_authorized"), 2);
    assert_eq!(srv.metric("closed_not_authorized"), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        read_all(&store, 0).is_empty(),
        "nothing denied may be stored"
    );
    srv.stop().await;
}

#[tokio::test]
async fn oversize_packet_closes_only_that_connection() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let mut opts = test_opts();
    opts.max_packet_size = 1024;
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;

    let mut ok = v4::Client::connect(srv.addr, "bystander");
    ok.connack().await.unwrap();

    // v3.1.1: raw bytes, a PUBLISH announcing 2000 bytes: closed as soon as the header is in.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&raw::connect("big4")).await.unwrap();
    let p = raw::publish(b"a/b", 1, 1, &[7u8; 2000]);
    s.write_all(&p[..10]).await.unwrap();
    let got = read_until_closed(&mut s).await;
    assert_eq!(&got[..4], &[0x20, 2, 0, 0], "CONNACK accepted, then closed");
    assert_eq!(got.len(), 4, "no ack for the oversize publish");

    // v5: raw bytes too (rumqttc honours the advertised maximum and would not send it):
    // DISCONNECT with reason 0x95 (packet too large), then the socket closes.
    let mut s5 = TcpStream::connect(srv.addr).await.unwrap();
    s5.write_all(&raw::connect_v5("big5")).await.unwrap();
    s5.write_all(&p[..10]).await.unwrap();
    let got = read_until_closed(&mut s5).await;
    assert_eq!(got[0], 0x20, "CONNACK first");
    let rest = &got[2 + got[1] as usize..];
    assert_eq!(
        rest,
        &[0xE0, 2, 0x95, 0],
        "then DISCONNECT 0x95 (packet too large)"
    );
    assert_eq!(srv.metric("closed_packet_too_large"), 2);

    ok.client
        .publish("a/b", v4::QoS::AtLeastOnce, false, "still fine")
        .await
        .unwrap();
    ok.until(|e| matches!(e, Ok(v4::Event::Incoming(v4::Packet::PubAck(_)))).then_some(()))
        .await;
    let recs = stored(&store, 0, 1).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(&recs[0].record.payload[..], b"still fine");
    srv.stop().await;
}

#[tokio::test]
async fn garbage_invalid_topics_and_silent_clients_are_closed_with_reasons() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let mut opts = test_opts();
    opts.connect_timeout = Duration::from_millis(300);
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;

    // Garbage instead of CONNECT.
    let mut g = TcpStream::connect(srv.addr).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until_closed(&mut g).await.is_empty());

    // Garbage after a valid CONNECT (packet type 0 is reserved).
    let mut g2 = TcpStream::connect(srv.addr).await.unwrap();
    g2.write_all(&raw::connect("g2")).await.unwrap();
    g2.write_all(&[0x00, 0x02, 0xff, 0xff]).await.unwrap();
    assert_eq!(read_until_closed(&mut g2).await, vec![0x20, 2, 0, 0]);

    // Wildcard and invalid UTF-8 in PUBLISH topics.
    let mut w = TcpStream::connect(srv.addr).await.unwrap();
    w.write_all(&raw::connect("wild")).await.unwrap();
    w.write_all(&raw::publish(b"a/+/c", 1, 1, b"x"))
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut w).await, vec![0x20, 2, 0, 0]);
    let mut u = TcpStream::connect(srv.addr).await.unwrap();
    u.write_all(&raw::connect("utf8")).await.unwrap();
    u.write_all(&raw::publish(b"a/\xff\xfe", 1, 1, b"x"))
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut u).await, vec![0x20, 2, 0, 0]);

    // Connects and says nothing: closed after connect_timeout (generous margin).
    let t0 = std::time::Instant::now();
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );

    assert_eq!(srv.metric("closed_malformed"), 2);
    assert_eq!(srv.metric("closed_invalid_topic"), 2);
    assert_eq!(srv.metric("closed_connect_timeout"), 1);
    assert!(read_all(&store, 0).is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;
    // keep-alive 1 s: a client that pings stays, a silent one is closed after ~1.5 s.
    let mut pinger = TcpStream::connect(srv.addr).await.unwrap();
    pinger
        .write_all(&raw::connect_ka("pinger", 1))
        .await
        .unwrap();
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    silent
        .write_all(&raw::connect_ka("silent", 1))
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let pings = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..6 {
            pinger.write_all(&raw::pingreq()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut buf = [0u8; 64];
        while got.len() < 4 + 12 {
            let n = pinger.read(&mut buf).await.unwrap();
            assert!(n > 0, "pinging client was closed");
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    assert_eq!(read_until_closed(&mut silent).await, vec![0x20, 2, 0, 0]);
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    let got = pings.await.unwrap();
    assert_eq!(&got[4..], &[0xD0, 0].repeat(6)[..], "six PINGRESPs");
    assert_eq!(srv.metric("closed_keep_alive_timeout"), 1);
    srv.stop().await;
}

#[tokio::test]
async fn qos2_retransmission_is_stored_once() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&raw::connect("q2")).await.unwrap();
    s.write_all(&raw::publish(b"a/b", 2, 7, b"once"))
        .await
        .unwrap();
    let mut dup = raw::publish(b"a/b", 2, 7, b"once");
    dup[0] |= 0x08; // DUP flag
    s.write_all(&dup).await.unwrap();
    let mut buf = vec![0u8; 4 + 4 + 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, vec![0x20, 2, 0, 0, 0x50, 2, 0, 7, 0x50, 2, 0, 7]);
    s.write_all(&raw::pubrel(7)).await.unwrap();
    let mut comp = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut comp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(comp, [0x70, 2, 0, 7]);
    // After PUBREL the id is free again: a new message with it is a new message.
    s.write_all(&raw::publish(b"a/b", 2, 7, b"twice"))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, s.read_exact(&mut comp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(comp, [0x50, 2, 0, 7]);
    let recs = stored(&store, 0, 2).await;
    let payloads: Vec<_> = recs.iter().map(|r| r.record.payload.to_vec()).collect();
    assert_eq!(payloads, vec![b"once".to_vec(), b"twice".to_vec()]);
    assert_eq!(srv.metric("qos2_duplicates"), 1);
    srv.stop().await;
}

#[tokio::test]
async fn session_takeover_closes_the_old_connection() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;
    let mut old = v5::Client::connect(srv.addr, "same-id");
    old.connack().await.unwrap();
    let mut new = v5::Client::connect(srv.addr, "same-id");
    new.connack().await.unwrap();
    // rumqttc reports a server DISCONNECT as an error carrying its reason code.
    let e = old.closed().await;
    assert!(e.contains("SessionTakenOver"), "{e}");
    new.client
        .publish("a/b", v5::QoS::AtLeastOnce, false, "from new")
        .await
        .unwrap();
    new.until(|e| matches!(e, Ok(v5::Event::Incoming(v5::Packet::PubAck(_)))).then_some(()))
        .await;
    assert_eq!(srv.metric("closed_taken_over"), 1);
    let recs = stored(&store, 0, 1).await;
    assert_eq!(recs[0].record.client_id, "same-id");
    srv.stop().await;
}

/// Fills a small `reject` class until the store refuses, then checks both protocol answers.
#[tokio::test]
async fn backpressure_on_a_full_reject_class() {
    let dir = tempfile::tempdir().unwrap();
    let mut so = ferry::store::StoreOptions::new(
        dir.path(),
        vec![class("alarms", 64 << 10, Overflow::Reject)],
    );
    so.segment_bytes = 16 << 10;
    so.compression_level = 0;
    let store = ferry::store::Store::open(so).unwrap().0;
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;

    let mut c5 = v5::Client::connect(srv.addr, "fill5");
    c5.connack().await.unwrap();
    let mut acked = 0u32;
    let mut refused_at = None;
    for i in 0..2000u32 {
        c5.client
            .publish(
                "alarms/x",
                v5::QoS::AtLeastOnce,
                false,
                format!("{i:04}-{}", "x".repeat(500)),
            )
            .await
            .unwrap();
        let reason = c5
            .until(|e| match e {
                Ok(v5::Event::Incoming(v5::Packet::PubAck(a))) => Some(a.reason),
                _ => None,
            })
            .await;
        if reason == rumqttc::v5::mqttbytes::v5::PubAckReason::Success {
            acked += 1;
        } else {
            assert_eq!(
                reason,
                rumqttc::v5::mqttbytes::v5::PubAckReason::QuotaExceeded
            );
            refused_at = Some(i);
            break;
        }
    }
    assert!(refused_at.is_some(), "the class never filled up");
    let before = read_all(&store, 0);
    assert_eq!(
        before.len() as u32,
        acked,
        "every acked message stored, the refused one not"
    );

    // v3.1.1: no negative ack exists, so the connection is closed without an ack.
    let mut c4 = v4::Client::connect(srv.addr, "fill4");
    c4.connack().await.unwrap();
    c4.client
        .publish("alarms/y", v4::QoS::AtLeastOnce, false, "refused")
        .await
        .unwrap();
    let saw_ack = c4
        .until(|e| match e {
            Ok(v4::Event::Incoming(v4::Packet::PubAck(_))) => Some(true),
            Err(_) => Some(false),
            _ => None,
        })
        .await;
    assert!(!saw_ack);
    assert_eq!(srv.metric("closed_backpressure"), 1);
    assert_eq!(srv.metric("refused_class_full"), 2);

    // QoS 2 on MQTT 5: PUBREC 0x97.
    c5.client
        .publish("alarms/z", v5::QoS::ExactlyOnce, false, "refused too")
        .await
        .unwrap();
    let reason = c5
        .until(|e| match e {
            Ok(v5::Event::Incoming(v5::Packet::PubRec(r))) => Some(r.reason),
            _ => None,
        })
        .await;
    assert_eq!(
        reason,
        rumqttc::v5::mqttbytes::v5::PubRecReason::QuotaExceeded
    );
    assert_eq!(srv.metric("refused_class_full"), 3);

    // Existing data untouched.
    let after = read_all(&store, 0);
    assert_eq!(after, before);
    srv.stop().await;
}

#[tokio::test]
async fn disk_headroom_refuses_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let free = std::sync::Arc::new(ferry::store::FixedFreeSpace::new(100 << 20));
    let mut so =
        ferry::store::StoreOptions::new(dir.path(), vec![class("t", BIG, Overflow::DropOldest)]);
    so.free_space = free.clone();
    so.min_free_bytes = 50 << 20;
    let store = ferry::store::Store::open(so).unwrap().0;
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;
    let mut c = v5::Client::connect(srv.addr, "headroom");
    c.connack().await.unwrap();
    let client = c.client.clone();
    let publish = |payload: &'static str| {
        let client = client.clone();
        async move {
            client
                .publish("a/b", v5::QoS::AtLeastOnce, false, payload)
                .await
                .unwrap()
        }
    };
    publish("before").await;
    let ack = |e: &Result<v5::Event, String>| match e {
        Ok(v5::Event::Incoming(v5::Packet::PubAck(a))) => Some(a.reason),
        _ => None,
    };
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    assert_eq!(c.until(ack).await, PubAckReason::Success);
    free.set(10 << 20);
    // The store may notice at the append or at the commit; either way the client hears 0x97.
    publish("no room").await;
    assert_eq!(c.until(ack).await, PubAckReason::QuotaExceeded);
    free.set(100 << 20);
    publish("after").await;
    assert_eq!(c.until(ack).await, PubAckReason::Success);
    let recs = stored(&store, 0, 2).await;
    let payloads: Vec<_> = recs.iter().map(|r| r.record.payload.to_vec()).collect();
    assert_eq!(payloads, vec![b"before".to_vec(), b"after".to_vec()]);
    assert_eq!(srv.metric("refused_headroom"), 1);
    srv.stop().await;
}

#[tokio::test]
async fn local_subscriber_gets_the_live_feed() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;
    let mut sub = v4::Client::connect(srv.addr, "dashboard");
    sub.connack().await.unwrap();
    sub.client
        .subscribe("site/#", v4::QoS::AtLeastOnce)
        .await
        .unwrap();
    let codes = sub
        .until(|e| match e {
            Ok(v4::Event::Incoming(v4::Packet::SubAck(s))) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![rumqttc::SubscribeReasonCode::Success(v4::QoS::AtMostOnce)]
    );
    // The router applies the subscription asynchronously.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut pubc = v5::Client::connect(srv.addr, "sensor");
    pubc.connack().await.unwrap();
    for i in 0..20 {
        pubc.client
            .publish(
                format!("site/a/{i}"),
                v5::QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    pubc.client
        .publish(
            "other/x",
            v5::QoS::AtLeastOnce,
            false,
            "not for the dashboard",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let p = sub
            .until(|e| match e {
                Ok(v4::Event::Incoming(v4::Packet::Publish(p))) => Some(p.clone()),
                _ => None,
            })
            .await;
        assert_eq!(p.qos, v4::QoS::AtMostOnce);
        seen.push((
            p.topic.clone(),
            String::from_utf8(p.payload.to_vec()).unwrap(),
        ));
    }
    for (i, (t, p)) in seen.iter().enumerate() {
        assert_eq!(t, &format!("site/a/{i}"));
        assert_eq!(p, &format!("m{i}"));
    }
    let recs = stored(&store, 0, 21).await;
    assert_eq!(recs.len(), 21);
    srv.stop().await;
}

/// A subscriber that never reads its socket must not slow the durable path: its fan-out
/// queue overflows (counted) while every publish is still stored and acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_does_not_stall_publishers() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;
    let mut stuck = TcpStream::connect(srv.addr).await.unwrap();
    stuck.write_all(&raw::connect("stuck")).await.unwrap();
    stuck.write_all(&raw::subscribe(1, "#")).await.unwrap();
    let mut first = [0u8; 9]; // CONNACK + SUBACK, then never read again
    tokio::time::timeout(WAIT, stuck.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, [0x20, 2, 0, 0, 0x90, 3, 0, 1, 0]);
    tokio::time::sleep(Duration::from_millis(200)).await;

    const N: usize = 10_000;
    let mut o = v4::options(srv.addr, "producer");
    o.set_inflight(100);
    let mut p = v4::Client::new(o);
    p.connack().await.unwrap();
    let client = p.client.clone();
    let feeder = tokio::spawn(async move {
        for i in 0..N {
            client
                .publish(
                    "big/x",
                    v4::QoS::AtLeastOnce,
                    false,
                    vec![(i % 251) as u8; 1024],
                )
                .await
                .unwrap();
        }
    });
    let mut acks = 0;
    while acks < N {
        p.until(|e| matches!(e, Ok(v4::Event::Incoming(v4::Packet::PubAck(_)))).then_some(()))
            .await;
        acks += 1;
    }
    feeder.await.unwrap();
    let recs = stored(&store, 0, N as u64).await;
    assert_eq!(recs.len(), N);
    eprintln!(
        "fan-out messages dropped for the stuck subscriber: {}",
        srv.metric("fanout_dropped")
    );
    // Shutdown is not held up by the stuck socket (write_timeout is 30 s; grace here 5 s).
    let t0 = std::time::Instant::now();
    srv.stop().await;
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    drop(stuck);
}

#[tokio::test]
async fn fast_ack_mode_stores_everything_too() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let mut opts = test_opts();
    opts.ack = AckMode::Fast;
    opts.fanout = None;
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;
    let mut c = v4::Client::connect(srv.addr, "fast");
    c.connack().await.unwrap();
    for i in 0..50 {
        c.client
            .publish("a/b", v4::QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut acks = 0;
    while acks < 50 {
        c.until(|e| matches!(e, Ok(v4::Event::Incoming(v4::Packet::PubAck(_)))).then_some(()))
            .await;
        acks += 1;
    }
    let recs = stored(&store, 0, 50).await;
    assert_eq!(recs.len(), 50);
    // Without fan-out, SUBSCRIBE is refused per filter.
    c.client
        .subscribe("a/#", v4::QoS::AtMostOnce)
        .await
        .unwrap();
    let codes = c
        .until(|e| match e {
            Ok(v4::Event::Incoming(v4::Packet::SubAck(s))) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    srv.stop().await;
}

#[tokio::test]
async fn max_connections_refuses_with_connack() {
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let mut opts = test_opts();
    opts.max_connections = 1;
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;
    let mut first = v4::Client::connect(srv.addr, "first");
    first.connack().await.unwrap();
    let mut second = v4::Client::connect(srv.addr, "second");
    let e = second.connack().await.unwrap_err();
    assert!(e.contains("ServiceUnavailable"), "{e}");
    assert_eq!(srv.metric("closed_server_busy"), 1);
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_completes_in_flight_acks_and_reload_swaps_classifier() {
    let (_d, store) = setup(vec![
        class("a", BIG, Overflow::DropOldest),
        class("b", BIG, Overflow::DropOldest),
    ]);
    let srv = Running::start(test_opts(), store.clone(), Classifier::single(0)).await;
    let mut c = v5::Client::connect(srv.addr, "reload");
    c.connack().await.unwrap();
    c.client
        .publish("x", v5::QoS::AtLeastOnce, false, "to a")
        .await
        .unwrap();
    c.until(|e| matches!(e, Ok(v5::Event::Incoming(v5::Packet::PubAck(_)))).then_some(()))
        .await;
    assert!(srv.handle.set_classifier(Classifier::single(2)).is_err());
    srv.handle.set_classifier(Classifier::single(1)).unwrap();
    for i in 0..30 {
        c.client
            .publish("x", v5::QoS::AtLeastOnce, false, format!("to b {i}"))
            .await
            .unwrap();
    }
    c.until(|e| matches!(e, Ok(v5::Event::Incoming(v5::Packet::PubAck(_)))).then_some(()))
        .await;
    srv.stop().await;
    // Every PUBACK the client got before the shutdown DISCONNECT is stored in class b.
    let mut acks = 1;
    let mut saw_shutdown = false;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(2), c.events.recv()).await {
        match e {
            Ok(v5::Event::Incoming(v5::Packet::PubAck(_))) => acks += 1,
            Err(e) => {
                assert!(e.contains("ServerShuttingDown"), "{e}");
                saw_shutdown = true;
                break;
            }
            _ => {}
        }
    }
    assert!(saw_shutdown);
    assert!(read_all(&store, 1).len() >= acks);
    assert_eq!(read_all(&store, 0).len(), 1);
}

// ---------------------------------------------------------------- TLS

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let srv_key = KeyPair::generate().unwrap();
    let srv = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&srv_key, &ca)
        .unwrap();
    let cli_key = KeyPair::generate().unwrap();
    let cli = CertificateParams::new(vec!["device-1".to_string()])
        .unwrap()
        .signed_by(&cli_key, &ca)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), srv.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), srv_key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca.pem(),
        client_cert: cli.pem(),
        client_key: cli_key.serialize_pem(),
        dir,
    }
}

fn tls_client(addr: std::net::SocketAddr, id: &str, pki: &Pki, with_cert: bool) -> v4::Client {
    let mut o = rumqttc::MqttOptions::new(id, "localhost", addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
        ca: pki.ca_pem.clone().into_bytes(),
        alpn: None,
        client_auth: with_cert.then(|| {
            (
                pki.client_cert.clone().into_bytes(),
                pki.client_key.clone().into_bytes(),
            )
        }),
    }));
    v4::Client::new(o)
}

#[tokio::test]
async fn tls_with_and_without_client_certificates() {
    let pki = pki();
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let tls = |client_ca: bool| TlsOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(3),
        cert_chain: pki.dir.path().join("server.pem"),
        private_key: pki.dir.path().join("server.key"),
        client_ca: client_ca.then(|| pki.dir.path().join("ca.pem")),
        require_client_cert: client_ca,
    };

    // Server-only TLS.
    let mut opts = test_opts();
    opts.tls = Some(tls(false));
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;
    let tls_addr = srv.tls_addr.unwrap();
    // A peer that connects and never handshakes must not hold up the TLS client behind it
    // (rumqttd handshakes inside its accept loop with no timeout).
    let mut idle = TcpStream::connect(tls_addr).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut c = tls_client(tls_addr, "tls-1", &pki, false);
    c.connack().await.unwrap();
    c.client
        .publish("a/b", v4::QoS::AtLeastOnce, false, "over tls")
        .await
        .unwrap();
    c.until(|e| matches!(e, Ok(v4::Event::Incoming(v4::Packet::PubAck(_)))).then_some(()))
        .await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the TLS client waited for the idle peer: {:?}",
        t0.elapsed()
    );
    // The idle peer is closed after handshake_timeout.
    assert!(read_until_closed(&mut idle).await.is_empty());
    assert_eq!(srv.metric("closed_tls_handshake"), 1);
    srv.stop().await;

    // Client certificates required.
    let mut opts = test_opts();
    opts.tls = Some(tls(true));
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;
    let tls_addr = srv.tls_addr.unwrap();
    let mut no_cert = tls_client(tls_addr, "tls-2", &pki, false);
    assert!(no_cert.connack().await.is_err());
    let mut with_cert = tls_client(tls_addr, "tls-3", &pki, true);
    with_cert.connack().await.unwrap();
    with_cert
        .client
        .publish("a/b", v4::QoS::AtLeastOnce, false, "mutual tls")
        .await
        .unwrap();
    with_cert
        .until(|e| matches!(e, Ok(v4::Event::Incoming(v4::Packet::PubAck(_)))).then_some(()))
        .await;
    // Both listeners share one session table: the same client id on the plain port takes
    // the TLS connection over.
    let mut plain = v4::Client::connect(srv.addr, "tls-3");
    plain.connack().await.unwrap();
    with_cert.closed().await;
    plain
        .client
        .publish("a/b", v4::QoS::AtLeastOnce, false, "plain")
        .await
        .unwrap();
    plain
        .until(|e| matches!(e, Ok(v4::Event::Incoming(v4::Packet::PubAck(_)))).then_some(()))
        .await;
    let recs = stored(&store, 0, 3).await;
    let payloads: Vec<_> = recs.iter().map(|r| r.record.payload.to_vec()).collect();
    assert_eq!(
        payloads,
        vec![
            b"over tls".to_vec(),
            b"mutual tls".to_vec(),
            b"plain".to_vec()
        ]
    );
    srv.stop().await;
}

/// The TLS listener speaks TLS 1.2 and 1.3 only (rustls's safe defaults; rustls has no code
/// for anything older): a client limited to either version completes the handshake, and a
/// TLS 1.1 ClientHello is answered with an alert, never a ServerHello.
#[tokio::test]
async fn tls_listener_offers_only_tls_1_2_and_1_3() {
    use std::sync::Arc;
    use tokio_rustls::rustls::{self, pki_types::ServerName};
    let pki = pki();
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let mut opts = test_opts();
    opts.tls = Some(TlsOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(3),
        cert_chain: pki.dir.path().join("server.pem"),
        private_key: pki.dir.path().join("server.key"),
        client_ca: None,
        require_client_cert: false,
    });
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;
    let tls_addr = srv.tls_addr.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes());
    use rustls::pki_types::pem::PemObject;
    roots.add(ca.unwrap()).unwrap();
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let tcp = TcpStream::connect(tls_addr).await.unwrap();
        let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap_or_else(|e| panic!("{want:?} handshake failed: {e}"));
        assert_eq!(conn.get_ref().1.protocol_version(), Some(want));
    }

    // A TLS 1.1 ClientHello (legacy_version 3.2, no supported_versions extension).
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
                   // Suites rustls has for TLS 1.2 (ECDHE-ECDSA/RSA-AES128-GCM), so only the version is off.
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    hello.extend_from_slice(&[0x01, 0x00]); // null compression only
                                            // Extensions a TLS 1.1-capable client would send, enough for the server to pick its
                                            // certificate: signature_algorithms (ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256),
                                            // supported_groups (x25519, secp256r1), ec_point_formats (uncompressed).
    hello.extend_from_slice(&[
        0x00, 0x1a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, 0x00, 0x0a, 0x00,
        0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x0b, 0x00, 0x02, 0x01, 0x00,
    ]);
    let mut hs = vec![0x01, 0x00, 0x00, hello.len() as u8];
    hs.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    record.extend_from_slice(&hs);
    // Control: the same hello saying TLS 1.2 (0x0303) gets a ServerHello, so the alert below
    // is about the version and nothing else.
    let mut as_tls12 = record.clone();
    as_tls12[10] = 0x03;
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(&as_tls12).await.unwrap();
    let mut first = [0u8; 6];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(
        (first[0], first[5]),
        (0x16, 0x02),
        "expected a ServerHello: {first:02x?}"
    );
    drop(s);
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(&record).await.unwrap();
    let reply = read_until_closed(&mut s).await;
    assert!(
        reply.len() >= 7 && reply[0] == 0x15,
        "expected a TLS alert record, got {reply:02x?}"
    );
    // Fatal protocol_version (70); never a ServerHello (record type 0x16).
    assert_eq!(&reply[5..7], &[0x02, 70], "{reply:02x?}");
    srv.stop().await;
}

#[tokio::test]
async fn fanout_options_are_bounded_by_slots() {
    // One subscription slot: the second subscribing connection gets a failure code.
    let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
    let mut opts = test_opts();
    opts.fanout = Some(FanoutOptions {
        max_subscribers: 1,
        ..FanoutOptions::default()
    });
    let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;
    let mut a = v5::Client::connect(srv.addr, "sub-a");
    a.connack().await.unwrap();
    a.client
        .subscribe("x/#", v5::QoS::AtMostOnce)
        .await
        .unwrap();
    let codes = a
        .until(|e| match e {
            Ok(v5::Event::Incoming(v5::Packet::SubAck(s))) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
            v5::QoS::AtMostOnce
        )]
    );
    let mut b = v5::Client::connect(srv.addr, "sub-b");
    b.connack().await.unwrap();
    b.client
        .subscribe("x/#", v5::QoS::AtMostOnce)
        .await
        .unwrap();
    let codes = b
        .until(|e| match e {
            Ok(v5::Event::Incoming(v5::Packet::SubAck(s))) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::QuotaExceeded]
    );
    // When `a` leaves, its slot is reused.
    a.client.disconnect().await.unwrap();
    a.until(|e| e.is_err().then_some(())).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.client
        .subscribe("x/#", v5::QoS::AtMostOnce)
        .await
        .unwrap();
    let codes = b
        .until(|e| match e {
            Ok(v5::Event::Incoming(v5::Packet::SubAck(s))) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
            v5::QoS::AtMostOnce
        )]
    );
    // The reused slot delivers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut p = v4::Client::connect(srv.addr, "pub");
    p.connack().await.unwrap();
    p.client
        .publish("x/1", v4::QoS::AtLeastOnce, false, "live")
        .await
        .unwrap();
    let got = b
        .until(|e| match e {
            Ok(v5::Event::Incoming(v5::Packet::Publish(m))) => Some(m.payload.to_vec()),
            _ => None,
        })
        .await;
    assert_eq!(got, b"live".to_vec());
    b.client.unsubscribe("x/#").await.unwrap();
    let reasons = b
        .until(|e| match e {
            Ok(v5::Event::Incoming(v5::Packet::UnsubAck(u))) => Some(u.reasons.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        reasons,
        vec![rumqttc::v5::mqttbytes::v5::UnsubAckReason::Success]
    );
    srv.stop().await;
}

// ---------------------------------------------------------------- throughput (manual)

/// Durable QoS 1 ingest throughput and PUBACK latency, 100-byte payloads, 100 in flight per
/// connection, 1/4/16 publishers. Not a pass/fail test: run it in release on an idle machine:
/// `cargo test --release --test ingest -- --ignored --nocapture bench_durable_qos1`
/// (`FERRY_BENCH_SECS` sets the seconds per row, default 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_durable_qos1() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let secs: u64 = std::env::var("FERRY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("| publishers | acked msg/s | PUBACK p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for &n in &[1usize, 4, 16] {
        let (_d, store) = setup(vec![class("t", BIG, Overflow::DropOldest)]);
        let mut opts = test_opts();
        opts.fanout = None;
        let srv = Running::start(opts, store.clone(), Classifier::single(0)).await;
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for p in 0..n {
            let addr = srv.addr;
            let measuring = measuring.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut o = MqttOptions::new(format!("bench{p}"), "127.0.0.1", addr.port());
                o.set_keep_alive(Duration::from_secs(60));
                o.set_inflight(100);
                let (client, mut el) = AsyncClient::new(o, 200);
                let feeder = tokio::spawn(async move {
                    let payload = vec![b'x'; 100];
                    while client
                        .publish("bench/t", QoS::AtLeastOnce, false, payload.clone())
                        .await
                        .is_ok()
                    {}
                });
                let mut sent: HashMap<u16, std::time::Instant> = HashMap::new();
                let mut lat = Vec::new();
                let mut acked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match el.poll().await {
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            sent.insert(pkid, std::time::Instant::now());
                        }
                        Ok(Event::Incoming(Packet::PubAck(a))) => {
                            if let Some(t) = sent.remove(&a.pkid) {
                                if measuring.load(Ordering::Relaxed) {
                                    acked += 1;
                                    lat.push(t.elapsed());
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => panic!("publisher {p}: {e}"),
                    }
                }
                feeder.abort();
                (acked, lat)
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // warm-up
        measuring.store(true, Ordering::Relaxed);
        let t0 = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        let mut lat = Vec::new();
        for t in tasks {
            let (a, l) = t.await.unwrap();
            total += a;
            lat.extend(l);
        }
        lat.sort();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map(|d| d.as_secs_f64() * 1e3)
                .unwrap_or(f64::NAN)
        };
        println!(
            "| {n} | {:.0} | {:.2} | {:.2} |",
            total as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99)
        );
        srv.stop().await;
    }
}

/// Reads MQTT packets until the socket closes or `n` arrived (or `WAIT` passed): (type,
/// packet id, reason code: 0 when the packet has none).
async fn read_acks(s: &mut TcpStream, n: usize) -> (Vec<(u8, u16, u8)>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        // Complete packets at the front (acks are short: remaining length < 128).
        while buf.len() >= 2 && buf.len() >= 2 + buf[1] as usize {
            let len = buf[1] as usize;
            let body = &buf[2..2 + len];
            let pkid = u16::from_be_bytes([body[0], body[1]]);
            let reason = body.get(2).copied().unwrap_or(0);
            out.push((buf[0] >> 4, pkid, reason));
            buf.drain(..2 + len);
        }
        if out.len() >= n {
            break;
        }
        let mut chunk = [0u8; 256];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => break,
        }
    }
    (out, closed)
}

fn publish_v5(topic: &[u8], qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    // The v3.1.1 layout plus an empty property block after the packet id.
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(&pkid.to_be_bytes());
    body.push(0);
    body.extend_from_slice(payload);
    let mut p = vec![0x30 | (qos << 1), body.len() as u8];
    p.extend_from_slice(&body);
    p
}

/// One socket write holding publishes to a full `reject` class between publishes to a class
/// with room (and a QoS 2 retransmission): the session submits them as one batch and waits
/// for one completion, yet every publish gets its own answer, in publish order — the stored
/// ones success, the refused ones 0x97 (MQTT 5). On MQTT 3.1.1 the acks of the publishes
/// before the refused one still go out, then the connection closes without acking it.
#[tokio::test]
async fn a_refusal_inside_a_burst_answers_each_publish_in_order() {
    let (_d, store) = setup(vec![
        class("full", 64, Overflow::Reject),
        class("room", BIG, Overflow::DropOldest),
    ]);
    let classifier = Classifier::new(vec![("full/#".into(), 0)], 1);
    let srv = Running::start(test_opts(), store.clone(), classifier).await;

    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&raw::connect_v5("burst5")).await.unwrap();
    let mut burst = Vec::new();
    for p in [
        publish_v5(b"room/a", 1, 1, b"one"),
        publish_v5(b"full/a", 1, 2, b"refused"),
        publish_v5(b"room/b", 1, 3, b"three"),
        publish_v5(b"room/c", 2, 4, b"four"),
        publish_v5(b"room/c", 2, 4, b"four"), // retransmission: answered, not stored again
        publish_v5(b"full/b", 2, 5, b"refused too"),
        publish_v5(b"room/d", 1, 6, b"six"),
    ] {
        burst.extend_from_slice(&p);
    }
    s.write_all(&burst).await.unwrap();
    let (got, closed) = read_acks(&mut s, 8).await; // CONNACK + 7 answers
    assert!(
        !closed,
        "MQTT 5 stays connected under backpressure: {got:?}"
    );
    let answers: Vec<_> = got[1..].to_vec();
    assert_eq!(
        answers,
        vec![
            (4, 1, 0),
            (4, 2, 0x97),
            (4, 3, 0),
            (5, 4, 0),
            (5, 4, 0),
            (5, 5, 0x97),
            (4, 6, 0),
        ]
    );
    let recs = stored(&store, 1, 4).await;
    let payloads: Vec<_> = recs.iter().map(|r| r.record.payload.to_vec()).collect();
    assert_eq!(
        payloads,
        vec![
            b"one".to_vec(),
            b"three".to_vec(),
            b"four".to_vec(),
            b"six".to_vec()
        ]
    );
    assert!(read_all(&store, 0).is_empty());

    // MQTT 3.1.1: acks for 11 and 12, then the close; 13 (refused) is never acked.
    let mut s4 = TcpStream::connect(srv.addr).await.unwrap();
    s4.write_all(&raw::connect("burst4")).await.unwrap();
    let mut burst = Vec::new();
    for p in [
        raw::publish(b"room/e", 1, 11, b"eleven"),
        raw::publish(b"room/f", 1, 12, b"twelve"),
        raw::publish(b"full/c", 1, 13, b"refused"),
        raw::publish(b"room/g", 1, 14, b"fourteen"),
    ] {
        burst.extend_from_slice(&p);
    }
    s4.write_all(&burst).await.unwrap();
    let (got, closed) = read_acks(&mut s4, 5).await;
    assert_eq!(got, vec![(2, 0, 0), (4, 11, 0), (4, 12, 0)]);
    assert!(
        closed,
        "MQTT 3.1.1 has no negative ack: the connection closes"
    );
    assert_eq!(srv.metric("closed_backpressure"), 1);
    assert_eq!(srv.metric("refused_class_full"), 3);
    srv.stop().await;
}
