//! Crash-loop soak through the real `ferry` binary: MQTT devices -> ferry -> a real
//! Kafka-protocol broker (tansu), with ferry SIGKILLed at random points and restarted on the
//! same data directory, cycle after cycle.
//!
//! Why this shape: the store, ingest and forwarder each have their own crash tests, but only
//! the whole daemon shows that the pieces agree about what "acknowledged" means across a
//! crash: a PUBACK is sent only after fdatasync, the forwarder's acked position is persisted
//! only after Kafka acked, and recovery resumes from there. The end-to-end check is the one an
//! operator cares about: every payload whose PUBACK a device received shows up in Kafka.
//!
//! Each cycle starts ferry, measures recovery (process start -> MQTT listener accepting),
//! lets three rumqttc publishers send QoS 1 to three classes (alarm -> critical, line ->
//! telemetry, bulk -> bulk) while the forwarder drains to tansu, and SIGKILLs ferry after a
//! random delay. Every third cycle the publishers stop first, so the kill lands during a
//! drain with no ingest. Segments are 64 KiB and compression is off, so segments roll every
//! few hundred records and acked segments are deleted continuously: kills also land during
//! segment rolls and segment deletion. The forward rate is throttled so a backlog exists and
//! drains across restarts. Publishers behave like devices: after a reconnect they resend what
//! was sent but not acknowledged (so payload duplicates are expected and counted).
//!
//! At the end ferry runs once more without a kill, drains, and all three Kafka topics are
//! consumed: every acknowledged payload must be there at least once. Duplicates are counted by
//! `ferry.seq` (the same stored record forwarded twice: a kill between Kafka's ack and the
//! persisted position) and by payload (also includes device resends stored twice).
//!
//! `FERRY_SOAK_CYCLES` (default 10), `FERRY_SOAK_SEED` (default: random, printed).
//! The long run is `scripts/soak.sh`.

mod common;

use common::tansu::{consume_until, free_port, Consumed, Tansu};
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PUBLISHERS: usize = 3;
const KAFKA_TOPICS: [&str; 3] = ["ferry.critical", "ferry.telemetry", "ferry.bulk"];
/// Pads payloads to ~200 bytes so 64 KiB segments roll every ~250 records.
const PAD: usize = 170;

fn cycles() -> usize {
    std::env::var("FERRY_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn write_config(dir: &Path, bootstrap: &str, mqtt: u16, metrics: u16) -> PathBuf {
    common::daemon_config(
        dir,
        &dir.join("data"),
        bootstrap,
        mqtt,
        metrics,
        &[
            // Small segments and no compression: rolls and ack-driven deletions happen every
            // few hundred records, so random kills land in them too.
            (
                "segment_size = \"64MiB\"",
                "segment_size = \"64KiB\"".into(),
            ),
            ("compression_level = 1", "compression_level = 0".into()),
            // Throttled so a backlog builds and is drained across restarts.
            ("rate = \"unlimited\"", "rate = \"256KiB/s\"".into()),
            // Reconnect to the broker quickly after each restart.
            ("backoff_max = \"60s\"", "backoff_max = \"2s\"".into()),
        ],
    )
}

/// Starts ferry and returns it with its recovery time: process start until the MQTT listener
/// accepts a TCP connection (recovery runs before the listener is bound).
fn start(config: &Path, log: &Path, mqtt: u16) -> (Child, Duration) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = t0 + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("ferry exited during startup: {st:?}");
        }
        assert!(Instant::now() < deadline, "ferry did not start listening");
        std::thread::sleep(Duration::from_millis(2));
    }
    (child, t0.elapsed())
}

fn sigkill(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn payload(name: &str, cycle: usize, n: usize) -> String {
    format!("{name}-c{cycle}-{n:08}-{}", "x".repeat(PAD))
}

/// Which MQTT topic (and so which class) the n-th message of a publisher goes to.
fn topic(name: &str, n: usize) -> String {
    match n % 3 {
        0 => format!("{name}/alarm/fire"),
        1 => format!("{name}/line3/temp"),
        _ => format!("{name}/bulk/trace"),
    }
}

/// One device connection: first resends `resend` (sent before, never acknowledged), then new
/// messages, ~300/s, until the connection dies or, with `limit`, until `limit` new messages
/// are all acknowledged. Returns (acknowledged, sent but not acknowledged) as (topic, payload).
async fn publisher(
    port: u16,
    name: String,
    cycle: usize,
    resend: Vec<(String, String)>,
    limit: Option<usize>,
) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let mut o = MqttOptions::new(name.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    // Below the listener's max_inflight (64) so ferry never has to hold a client back.
    o.set_inflight(32);
    let (client, mut el) = AsyncClient::new(o, 64);
    let message_at = {
        let resend = resend.clone();
        let name = name.clone();
        move |n: usize| match resend.get(n) {
            Some(m) => m.clone(),
            None => {
                let k = n - resend.len();
                (topic(&name, k), payload(&name, cycle, k))
            }
        }
    };
    let total = limit.map(|l| l + resend.len());
    let feeder = {
        let message_at = message_at.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while total.is_none_or(|t| n < t) {
                let (t, p) = message_at(n);
                if client.publish(t, QoS::AtLeastOnce, false, p).await.is_err() {
                    return;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // Requests are written in order, so the n-th Outgoing::Publish carries the n-th message.
    let mut next = 0usize;
    let mut by_pkid: HashMap<u16, (String, String)> = HashMap::new();
    let mut acked = Vec::new();
    loop {
        if total == Some(next) && by_pkid.is_empty() {
            let _ = client.disconnect().await;
            break;
        }
        match tokio::time::timeout(Duration::from_secs(30), el.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                by_pkid.insert(pkid, message_at(next));
                next += 1;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                if let Some(m) = by_pkid.remove(&a.pkid) {
                    acked.push(m);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => panic!("{name}: no MQTT event for 30 s (ferry hung?)"),
        }
    }
    feeder.abort();
    (acked, by_pkid.into_values().collect())
}

/// (MQTT topic, payload) of one message.
type Message = (String, String);
/// What one publisher connection returns: (acknowledged, sent but not acknowledged).
type Outcome = (Vec<Message>, Vec<Message>);

struct Devices {
    /// Per publisher: what it sent and never got a PUBACK for.
    unacked: Vec<Vec<(String, String)>>,
    /// Every acknowledged payload -> its MQTT topic.
    acked: HashMap<String, String>,
}

impl Devices {
    fn spawn(
        &mut self,
        port: u16,
        cycle: usize,
        limit: Option<usize>,
    ) -> Vec<tokio::task::JoinHandle<Outcome>> {
        (0..PUBLISHERS)
            .map(|p| {
                let resend = std::mem::take(&mut self.unacked[p]);
                tokio::spawn(publisher(port, format!("dev{p}"), cycle, resend, limit))
            })
            .collect()
    }

    /// Collects the publishers' results; returns how many PUBACKs arrived.
    async fn collect(&mut self, pubs: Vec<tokio::task::JoinHandle<Outcome>>) -> usize {
        let mut n = 0;
        for (i, p) in pubs.into_iter().enumerate() {
            let (acked, not_acked) = tokio::time::timeout(Duration::from_secs(60), p)
                .await
                .expect("publisher did not finish")
                .unwrap();
            n += acked.len();
            for (t, p) in acked {
                self.acked.insert(p, t);
            }
            self.unacked[i] = not_acked
                .into_iter()
                .filter(|(_, p)| !self.acked.contains_key(p))
                .collect();
        }
        n
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_delivers_every_acknowledged_message() {
    let cycles = cycles();
    let seed: u64 = std::env::var("FERRY_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "soak: {cycles} cycles, seed {seed} (FERRY_SOAK_SEED={seed} repeats the kill points)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let mut broker = Tansu::start();
    for t in KAFKA_TOPICS {
        broker.create_topic(t, 1);
    }
    let (mqtt, metrics) = (free_port(), free_port());
    let config = write_config(dir.path(), &broker.bootstrap(), mqtt, metrics);
    let log = dir.path().join("ferry.log");

    let mut devices = Devices {
        unacked: vec![Vec::new(); PUBLISHERS],
        acked: HashMap::new(),
    };
    let mut recovery = Vec::new();
    let (mut ingest_kills, mut drain_kills) = (0, 0);
    for cycle in 0..cycles {
        let (mut child, rec) = start(&config, &log, mqtt);
        recovery.push(rec);
        let drain_only = cycle % 3 == 2;
        let acked_now = if drain_only {
            // A bounded burst, then kill while the forwarder drains the backlog.
            let burst = rng.random_range(150..450);
            let pubs = devices.spawn(mqtt, cycle, Some(burst));
            let n = devices.collect(pubs).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            sigkill(&mut child);
            drain_kills += 1;
            n
        } else {
            let pubs = devices.spawn(mqtt, cycle, None);
            tokio::time::sleep(Duration::from_millis(rng.random_range(150..1500))).await;
            sigkill(&mut child);
            ingest_kills += 1;
            devices.collect(pubs).await
        };
        assert!(acked_now > 0, "cycle {cycle}: nothing was acknowledged");
        eprintln!(
            "cycle {cycle}: recovery {:.1} ms, {acked_now} acked ({}), {} acked so far",
            rec.as_secs_f64() * 1e3,
            if drain_only {
                "killed during drain"
            } else {
                "killed during ingest + drain"
            },
            devices.acked.len()
        );
    }

    // Last start: no kill. Devices resend what is still unacknowledged, then ferry drains.
    let (mut child, rec) = start(&config, &log, mqtt);
    recovery.push(rec);
    let pubs = devices.spawn(mqtt, cycles, Some(0));
    devices.collect(pubs).await;
    let acked = devices.acked.clone();
    let want: HashSet<String> = acked.keys().cloned().collect();
    let bootstrap = broker.bootstrap();
    let got: Vec<Consumed> = tokio::task::spawn_blocking(move || {
        let topics: Vec<(&str, i32)> = KAFKA_TOPICS.iter().map(|t| (*t, 1)).collect();
        consume_until(
            &bootstrap,
            &topics,
            Duration::from_secs(150),
            Duration::from_secs(2),
            |r| {
                let seen: HashSet<&[u8]> = r.iter().map(|c| c.payload.as_slice()).collect();
                want.iter().all(|p| seen.contains(p.as_bytes()))
            },
        )
    })
    .await
    .unwrap();

    // Every acknowledged payload arrived, in the Kafka topic of its class.
    let mut by_payload: HashMap<String, usize> = HashMap::new();
    let mut by_seq: HashMap<(String, String), usize> = HashMap::new();
    for r in &got {
        let p = String::from_utf8(r.payload.clone()).unwrap();
        assert!(p.starts_with("dev"), "unexpected record {p}");
        let seq = r.header("ferry.seq").expect("ferry.seq header");
        *by_seq.entry((r.topic.clone(), seq)).or_default() += 1;
        *by_payload.entry(p).or_default() += 1;
    }
    let mut missing: Vec<(&String, &String)> = acked
        .iter()
        .filter(|(p, _)| !by_payload.contains_key(*p))
        .collect();
    missing.sort();
    let seq_dups: usize = by_seq.values().map(|c| c - 1).sum();
    let payload_dups: usize = by_payload.values().map(|c| c - 1).sum();
    let wrong_topic = got
        .iter()
        .filter(|r| {
            let p = String::from_utf8_lossy(&r.payload);
            let mqtt_topic = acked.get(p.as_ref()).map(String::as_str).unwrap_or("");
            let class = if mqtt_topic.contains("/alarm/") {
                "critical"
            } else if mqtt_topic.contains("/bulk/") {
                "bulk"
            } else {
                "telemetry"
            };
            !mqtt_topic.is_empty() && r.topic != format!("ferry.{class}")
        })
        .count();

    // Clean shutdown after the soak.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            sigkill(&mut child);
            panic!("ferry did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log_text = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut log_text)
        .unwrap();
    broker.kill();

    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never reached Kafka, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing
            .iter()
            .take(10)
            .map(|(p, t)| format!("{t}: {}", &p[..p.len() - PAD - 1]))
            .collect::<Vec<_>>()
    );
    assert_eq!(wrong_topic, 0, "records in the wrong Kafka topic");
    assert!(
        !log_text.contains("panicked"),
        "ferry panicked during the soak:\n{log_text}"
    );
    assert!(status.success(), "exit status after SIGTERM: {status:?}");

    let mut sorted = recovery.clone();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "SOAK SUMMARY: {cycles} SIGKILL cycles ({ingest_kills} during ingest+drain, {drain_kills} during drain only), \
         {} messages acknowledged, {} records consumed from Kafka, 0 lost; \
         duplicates: {seq_dups} by ferry.seq (re-forwarded), {payload_dups} by payload (incl. device resends); \
         recovery (start -> listener accepting) min {:.0} ms, median {:.0} ms, max {:.0} ms over {} starts; \
         {:.0} s total; seed {seed}",
        acked.len(),
        got.len(),
        ms(sorted[0]),
        ms(percentile(&sorted, 0.5)),
        ms(sorted[sorted.len() - 1]),
        sorted.len(),
        started.elapsed().as_secs_f64()
    );
}
