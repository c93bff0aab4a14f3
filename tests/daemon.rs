//! End to end through the real `ferry` binary: MQTT publishers (rumqttc over TCP) -> ferry run
//! -> a real Kafka-protocol broker (tansu over TCP), consumed back; metrics scraped over HTTP;
//! SIGTERM shuts down cleanly; a restart after SIGKILL re-sends nothing it already delivered
//! twice beyond the un-acked window and loses nothing acknowledged.

mod common;

use common::tansu::{consume_until, free_port, Tansu};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    mqtt: u16,
    metrics: u16,
}

fn write_config(dir: &Path, bootstrap: &str, mqtt: u16, metrics: u16) -> std::path::PathBuf {
    common::daemon_config(dir, &dir.join("data"), bootstrap, mqtt, metrics, &[])
}

fn start(config: &Path, mqtt: u16, metrics: u16) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
        assert!(Instant::now() < deadline, "ferry did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon {
        child,
        mqtt,
        metrics,
    }
}

/// Publishes `n` QoS1 messages per topic and returns the payloads that got a PUBACK.
fn publish(port: u16, client: &str, topics: &[&str], n: usize) -> Vec<String> {
    let mut o = MqttOptions::new(client, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut conn) = Client::new(o, 100);
    let total = topics.len() * n;
    let topics: Vec<String> = topics.iter().map(|s| s.to_string()).collect();
    let client_id = client.to_string();
    let pubber = std::thread::spawn(move || {
        let mut sent = Vec::new();
        for i in 0..n {
            for t in &topics {
                let payload = format!("{{\"client\":\"{client_id}\",\"topic\":\"{t}\",\"i\":{i}}}");
                c.publish(t.as_str(), QoS::AtLeastOnce, false, payload.clone())
                    .unwrap();
                sent.push(payload);
            }
        }
        (c, sent)
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for ev in conn.iter() {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = ev {
            acked += 1;
            if acked == total {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "publishing timed out after {acked} acks"
        );
    }
    let (c, sent) = pubber.join().unwrap();
    let _ = c.disconnect();
    assert_eq!(acked, total);
    sent
}

fn scrape(port: u16) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name_and_labels} not found"))
}

fn sigterm(d: &mut Daemon) -> std::process::ExitStatus {
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "ferry did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mqtt_to_kafka_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Tansu::start();
    for t in ["ferry.critical", "ferry.telemetry", "ferry.bulk"] {
        broker.create_topic(t, 1);
    }
    let (mqtt, metrics) = (free_port(), free_port());
    let config = write_config(dir.path(), &broker.bootstrap(), mqtt, metrics);
    let mut d = start(&config, mqtt, metrics);

    // Default rules: +/alarm/# -> critical, +/bulk/# -> bulk, the rest -> telemetry.
    let n = 300;
    let sent = publish(
        d.mqtt,
        "plc-1",
        &["hall1/alarm/fire", "hall1/line3/temp", "hall1/bulk/trace"],
        n,
    );
    let want: HashSet<String> = sent.iter().cloned().collect();
    let got = consume_until(
        &broker.bootstrap(),
        &[
            ("ferry.critical", 1),
            ("ferry.telemetry", 1),
            ("ferry.bulk", 1),
        ],
        Duration::from_secs(60),
        Duration::from_millis(500),
        |r| r.len() >= 3 * n,
    );
    let mut seen = HashSet::new();
    let mut per_topic: HashMap<String, Vec<u64>> = HashMap::new();
    for r in &got {
        let payload = String::from_utf8(r.payload.clone()).unwrap();
        assert!(want.contains(&payload), "unexpected record {payload}");
        seen.insert(payload);
        let class = r.header("ferry.class").unwrap();
        assert_eq!(r.topic, format!("ferry.{class}"));
        assert_eq!(r.header("mqtt.client_id").as_deref(), Some("plc-1"));
        assert_eq!(r.key_str().as_deref(), Some("plc-1"));
        let seq_id = r.header("ferry.seq").unwrap();
        let seq: u64 = seq_id.rsplit('/').next().unwrap().parse().unwrap();
        per_topic.entry(r.topic.clone()).or_default().push(seq);
    }
    assert_eq!(
        seen.len(),
        3 * n,
        "every acknowledged message reaches Kafka"
    );
    assert_eq!(per_topic["ferry.critical"].len(), n);
    for seqs in per_topic.values() {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "per-class order kept");
    }

    // Metrics reflect the run.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(d.metrics);
        if metric(&m, "ferry_backlog_records{class=\"telemetry\"}") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "backlog did not drain:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Counters match the known run: n per class in, n per class out, link up.
    let m = scrape(d.metrics);
    for class in ["critical", "telemetry", "bulk"] {
        let l = format!("{{class=\"{class}\"}}");
        assert_eq!(
            metric(&m, &format!("ferry_ingest_messages_total{l}")),
            n as f64,
            "{m}"
        );
        assert_eq!(
            metric(&m, &format!("ferry_forwarded_records_total{l}")),
            n as f64,
            "{m}"
        );
        assert_eq!(metric(&m, &format!("ferry_backlog_records{l}")), 0.0);
        assert_eq!(
            metric(
                &m,
                &format!("ferry_dropped_records_total{{class=\"{class}\",reason=\"max_bytes\"}}")
            ),
            0.0
        );
    }
    assert_eq!(metric(&m, "ferry_link_up"), 1.0);
    assert!(metric(&m, "ferry_store_fsyncs_total") >= 1.0);

    // The operator CLI talks to this daemon over its control socket.
    let ferry = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ferry {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let status: serde_json::Value = serde_json::from_str(&ferry(&["status", "--json"])).unwrap();
    let text = status.to_string();
    assert!(text.contains("online"), "link online in {text}");
    ferry(&["pause"]);
    ferry(&["resume"]);
    assert!(ferry(&["reload"]).contains("reloaded"));

    let st = sigterm(&mut d);
    assert!(st.success(), "exit status {st:?}");
    let mut log = String::new();
    d.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("ferry stopped"), "{log}");
}

#[test]
fn broken_config_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[storage]\nsegment_size = \"lots\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("segment_size") && err.contains(":2:"), "{err}");
}

/// systemd readiness: READY=1 comes only after store recovery finished and the listener is
/// bound. The data directory holds a torn segment tail, so recovery has real work to do; the
/// test plays systemd's NOTIFY_SOCKET and checks the order of what ferry says and that the
/// MQTT port accepts connections the moment READY arrives. Then SIGTERM gives STOPPING=1.
#[test]
fn ready_only_after_recovery_and_listeners() {
    use ferry::store::{ClassOptions, Overflow, Record, Store, StoreOptions};
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, metrics) = (free_port(), free_port());
    // Kafka is not needed: the forwarder goes offline and buffers.
    let config = write_config(
        dir.path(),
        &format!("127.0.0.1:{}", free_port()),
        mqtt,
        metrics,
    );
    // Leave a torn tail behind in the telemetry class.
    let classes = ["critical", "telemetry", "bulk"]
        .iter()
        .map(|n| ClassOptions {
            name: n.to_string(),
            max_bytes: 1 << 30,
            max_age: None,
            overflow: Overflow::Reject,
        })
        .collect();
    let (store, _) = Store::open(StoreOptions::new(dir.path().join("data"), classes)).unwrap();
    for i in 0..100u64 {
        let rec = Record {
            topic: "a/b".into(),
            payload: format!("{i}").into(),
            timestamp_ms: i,
            ..Default::default()
        };
        store.append(1, rec).unwrap().wait().unwrap();
    }
    store.close().unwrap();
    drop(store);
    let seg = dir
        .path()
        .join("data/classes/telemetry/00000000000000000001.seg");
    // The writer keeps zeros after the data (storage.zero_ahead): cut 7 bytes off the last
    // frame, not off the zeros.
    let data = std::fs::read(&seg).unwrap();
    let data_end = data.len() - data.iter().rev().take_while(|&&b| b == 0).count();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(data_end as u64 - 7)
        .unwrap();

    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).expect("ferry said READY=1 within 20 s");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        let ready = msg.lines().any(|l| l == "READY=1");
        said.push(msg);
        if ready {
            // At READY the listener is already bound.
            assert!(std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_ok());
            break;
        }
    }
    assert!(said[0].contains("STATUS=recovering"), "{said:?}");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "STOPPING=1")
        {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    assert!(child.wait().unwrap().success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    // The torn tail was found and cut before READY.
    let cut = log
        .find("torn tail")
        .expect("recovery reported the torn tail");
    let running = log.find("ferry is running").unwrap();
    assert!(cut < running, "{log}");
}

/// The systemd watchdog watches the store writer *and* the forwarder loop. With no traffic
/// and nothing to send both loops are idle but alive, so ferry keeps pinging and never
/// reports a stall (a probe that mistook idle for wedged would make systemd restart a healthy
/// ferry every WatchdogSec).
#[test]
fn watchdog_keeps_pinging_while_idle_and_offline() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    let (mqtt, metrics) = (free_port(), free_port());
    // Kafka reachable and nothing to send: the forwarder has no reason to wake but its beat.
    let config = write_config(dir.path(), &broker.bootstrap(), mqtt, metrics);
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        // A 4 s watchdog: ferry checks every 2 s, its loops must beat every 1 s.
        .env("WATCHDOG_USEC", "4000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    let mut ready_at = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if ready_at.is_none() && msg.lines().any(|l| l == "READY=1") {
                ready_at = Some(Instant::now());
            }
            if ready_at.is_some() {
                said.push(msg);
            }
        }
        if ready_at.is_some_and(|t| t.elapsed() > Duration::from_secs(11)) {
            break;
        }
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    assert!(ready_at.is_some(), "ferry said READY=1: {said:?}");
    let pings = said
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(pings >= 4, "a ping every 2 s over 11 s: {said:?}");
    assert!(
        !said.iter().any(|m| m.contains("stalled")),
        "an idle, offline ferry is not stalled: {said:?}"
    );
}
