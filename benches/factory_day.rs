//! "A factory day" (issue 7): the job ferry exists for, end to end, measured.
//!
//! Everything here is real and runs on this machine: the release `ferry` binary (`ferry run`),
//! a tansu Kafka-protocol broker, 500 simulated devices multiplexed over 50 rumqttc MQTT
//! connections, and an rdkafka consumer that reads what ferry delivered.
//!
//! ```text
//!   devices (rumqttc, 50 conns) ──MQTT──▶ ferry run ──Kafka──▶ counting proxy ──▶ tansu
//!                                            ▲                                     │
//!                     ferry status --json ───┘        consumer (rdkafka) ◀─────────┘
//! ```
//!
//! Phase 1, the outage: ferry starts with `[forward] windows = ["never"]` while the broker is up
//! (a closed connectivity window, not a dead broker: the link being down is then a decision ferry
//! makes, so the moment it ends is known to the millisecond and the broker's own reconnect
//! backoff does not blur the catch-up figures). Devices publish for `FACTORY_OUTAGE_SECS`.
//!
//! Phase 2, the window: `ferry drain --for 24h` opens the link with `[forward] rate` as throttle
//! while the devices keep publishing, until everything acknowledged before the window opened was
//! delivered (plus `FACTORY_TAIL_SECS`), then publishing stops and the run waits until every
//! acknowledged message arrived.
//!
//! The Kafka link goes through a byte-counting TCP proxy (tansu advertises the proxy's port), so
//! "bytes on the wire" is what really crossed TCP towards the broker (zstd batches, Kafka
//! framing). Connections that sent more than they received are the producer's; the consumer's
//! (which receive more) are counted apart.
//!
//! Knobs (environment; `scripts/factory-day.sh` documents the defaults and the long run):
//! `FACTORY_DEVICES`, `FACTORY_CONNS`, `FACTORY_OUTAGE_SECS`, `FACTORY_RATE`,
//! `FACTORY_TELEMETRY_MS`, `FACTORY_ALARM_PCT`, `FACTORY_BULK_SECS`, `FACTORY_BULK_BYTES`,
//! `FACTORY_TAIL_SECS`, `FACTORY_MAX_CATCHUP_SECS`, `FACTORY_SEED`, `FACTORY_DIR`,
//! `FACTORY_OUT` (also write the report there), `FERRY_BIN` (default: this build's `ferry`).

#![allow(clippy::type_complexity, clippy::needless_range_loop)]

// tests/common/tansu.rs carries its own `#![allow(dead_code)]`.
#[path = "../tests/common/tansu.rs"]
mod tansu;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const CLASSES: [&str; 3] = ["critical", "telemetry", "bulk"];
const CRIT: usize = 0;
const TELE: usize = 1;
const BULK: usize = 2;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

#[derive(Debug, Clone)]
struct Params {
    devices: usize,
    conns: usize,
    outage: Duration,
    rate: String,
    telemetry_every: Duration,
    alarm_pct: f64,
    bulk_every: Duration,
    bulk_bytes: usize,
    tail: Duration,
    max_catchup: Duration,
    seed: u64,
    /// The alternative's bridge is killed and restarted halfway through the outage.
    alt_restart: bool,
}

impl Params {
    fn from_env() -> Params {
        Params {
            devices: env_or("FACTORY_DEVICES", 500),
            conns: env_or("FACTORY_CONNS", 50),
            outage: Duration::from_secs(env_or("FACTORY_OUTAGE_SECS", 60)),
            rate: env_or("FACTORY_RATE", "512KiB/s".to_string()),
            telemetry_every: Duration::from_millis(env_or("FACTORY_TELEMETRY_MS", 2000)),
            alarm_pct: env_or("FACTORY_ALARM_PCT", 1.0),
            bulk_every: Duration::from_secs(env_or("FACTORY_BULK_SECS", 30)),
            bulk_bytes: env_or("FACTORY_BULK_BYTES", 8192),
            tail: Duration::from_secs(env_or("FACTORY_TAIL_SECS", 10)),
            max_catchup: Duration::from_secs(env_or("FACTORY_MAX_CATCHUP_SECS", 600)),
            seed: env_or("FACTORY_SEED", 7),
            alt_restart: env_or("FACTORY_ALT_RESTART", 0) == 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka side: tansu behind a counting proxy, and the consumer.

/// Per proxied connection: bytes client -> broker, broker -> client.
type ConnBytes = Arc<(AtomicU64, AtomicU64)>;

struct CountingProxy {
    port: u16,
    conns: Arc<Mutex<Vec<ConnBytes>>>,
    /// While set, the link is down: new connections are closed at once.
    down: Arc<AtomicBool>,
    /// Open connections (both ends), to cut them when the link goes down.
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl CountingProxy {
    fn start(target: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let conns: Arc<Mutex<Vec<ConnBytes>>> = Arc::default();
        let list = conns.clone();
        let down: Arc<AtomicBool> = Arc::default();
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (down2, streams2) = (down.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if down2.load(Ordering::Relaxed) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let counts: ConnBytes = Arc::default();
                list.lock().unwrap().push(counts.clone());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                {
                    let mut st = streams2.lock().unwrap();
                    st.push(client.try_clone().unwrap());
                    st.push(server.try_clone().unwrap());
                }
                let up = counts.clone();
                std::thread::spawn(move || pump(client, server, &up.0));
                std::thread::spawn(move || pump(s2, c2, &counts.1));
            }
        });
        CountingProxy {
            port,
            conns,
            down,
            streams,
        }
    }

    /// Takes the link down (cutting open connections) or brings it back.
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
        if down {
            for s in self.streams.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// (producer bytes to the broker, consumer bytes from the broker).
    fn totals(&self) -> (u64, u64) {
        let (mut prod, mut cons) = (0, 0);
        for c in self.conns.lock().unwrap().iter() {
            let (up, down) = (c.0.load(Ordering::Relaxed), c.1.load(Ordering::Relaxed));
            if up > down {
                prod += up;
            } else {
                cons += down;
            }
        }
        (prod, cons)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    /// Starts tansu on `port`, advertising `advertised` (the proxy) in metadata.
    fn start_on(dir: &Path, port: u16, advertised: u16) -> Broker {
        let log = std::fs::File::create(dir.join("tansu.log")).expect("tansu log");
        let child = Command::new(tansu::tansu_bin())
            .arg("broker")
            .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu log"))
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let b = Broker { child, port };
        let probe: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{port}"))
            .set("log_level", "0")
            .create()
            .expect("probe producer");
        let deadline = Instant::now() + Duration::from_secs(30);
        while probe
            .client()
            .fetch_metadata(None, Duration::from_secs(1))
            .is_err()
        {
            assert!(Instant::now() < deadline, "tansu did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        b
    }

    fn create_topic(&self, name: &str) {
        let out = Command::new(tansu::tansu_bin())
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", "1", name])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of a device payload the scorer needs (the rest is realistic filler).
#[derive(serde::Deserialize)]
struct Head {
    id: u64,
    sent_ms: u64,
}

#[derive(Default)]
struct Delivered {
    /// Per class: message id -> first arrival (unix ms).
    first: [HashMap<u64, u64>; 3],
    duplicates: [u64; 3],
    payload_bytes: [u64; 3],
    /// Alarms: (sent_ms, arrival_ms).
    alarm_latency: Vec<(u64, u64)>,
    unparsable: u64,
}

fn start_consumer(
    bootstrap: String,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Delivered>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "factory-day-reader")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // Latency is measured at this consumer: do not let the broker hold fetches.
            .set("fetch.wait.max.ms", "10")
            .set("fetch.min.bytes", "1")
            .set("log_level", "3")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for c in CLASSES {
            tpl.add_partition_offset(&format!("ferry.{c}"), 0, Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&tpl).expect("assign");
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let arrived = now_ms();
            let Some(class) = CLASSES
                .iter()
                .position(|c| m.topic().strip_prefix("ferry.") == Some(*c))
            else {
                continue;
            };
            let payload = m.payload().unwrap_or_default();
            let mut d = out.lock().unwrap();
            let Ok(h) = serde_json::from_slice::<Head>(payload) else {
                d.unparsable += 1;
                continue;
            };
            d.payload_bytes[class] += payload.len() as u64;
            if d.first[class].insert(h.id, arrived).is_some() {
                d.duplicates[class] += 1;
            } else if class == CRIT {
                d.alarm_latency.push((h.sent_ms, arrived));
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Devices.

#[derive(Default)]
struct Published {
    /// Per class: id -> unix ms of the PUBACK (QoS1) or of the write to the socket (QoS0).
    acked: [HashMap<u64, u64>; 3],
    qos0: HashSet<u64>,
    /// Raw payload bytes per class of everything acked/sent.
    payload_bytes: [u64; 3],
    /// QoS1 publishes that got a PUBACK with an error reason or never got one.
    errors: u64,
}

struct Msg {
    class: usize,
    id: u64,
    len: usize,
    qos: QoS,
}

fn telemetry_json(rng: &mut StdRng, dev: &str, id: u64, line: usize) -> String {
    format!(
        "{{\"id\":{id},\"sent_ms\":{},\"dev\":\"{dev}\",\"line\":{line},\"kind\":\"process\",\
         \"temp_c\":{:.2},\"pressure_bar\":{:.3},\"spindle_rpm\":{},\"feed_mm_min\":{:.1},\
         \"power_kw\":{:.2},\"state\":\"{}\",\"good_parts\":{},\"scrap_parts\":{},\"oee\":{:.3}}}",
        now_ms(),
        60.0 + rng.random::<f64>() * 25.0,
        3.5 + rng.random::<f64>(),
        1400 + rng.random_range(0..200),
        800.0 + rng.random::<f64>() * 400.0,
        5.0 + rng.random::<f64>() * 10.0,
        ["RUN", "RUN", "RUN", "IDLE", "SETUP"][rng.random_range(0..5)],
        rng.random_range(0..5000),
        rng.random_range(0..40),
        0.6 + rng.random::<f64>() * 0.35,
    )
}

fn alarm_json(rng: &mut StdRng, dev: &str, id: u64) -> String {
    let (code, text) = [
        ("E-4012", "spindle over temperature"),
        ("E-2201", "hydraulic pressure low"),
        ("E-0917", "emergency stop pressed"),
        ("E-3310", "coolant flow below minimum"),
    ][rng.random_range(0..4)];
    format!(
        "{{\"id\":{id},\"sent_ms\":{},\"dev\":\"{dev}\",\"kind\":\"alarm\",\"code\":\"{code}\",\
         \"severity\":\"high\",\"text\":\"{text}\",\"value\":{:.2},\"ack_required\":true}}",
        now_ms(),
        rng.random::<f64>() * 100.0
    )
}

/// A vibration spectrum: numbers with 4 decimals, which zstd packs to roughly half.
fn bulk_json(rng: &mut StdRng, dev: &str, id: u64, target: usize) -> String {
    let mut s = format!(
        "{{\"id\":{id},\"sent_ms\":{},\"dev\":\"{dev}\",\"kind\":\"vibration_spectrum\",\
         \"fs_hz\":25600,\"axis\":\"z\",\"unit\":\"mm/s\",\"bins\":[",
        now_ms()
    );
    let mut first = true;
    while s.len() + 12 < target {
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(&format!("{:.4}", rng.random::<f64>() * rng.random::<f64>()));
    }
    s.push_str("]}");
    s
}

/// One MQTT connection (a line gateway) multiplexing `devices` devices until `stop`.
async fn run_connection(
    conn: usize,
    devices: Vec<usize>,
    port: u16,
    p: Params,
    stop: Arc<AtomicBool>,
    published: Arc<Mutex<Published>>,
) {
    let client_id = format!("line-gw-{conn:02}");
    let mut o = MqttOptions::new(client_id.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(64);
    let (client, mut eventloop) = AsyncClient::new(o, 256);
    // Publishes in the order they were handed to rumqttc; the event loop reports them in the
    // same order as Outgoing::Publish(pkid), which is how a PUBACK maps back to a message.
    let queued: Arc<Mutex<VecDeque<Msg>>> = Arc::default();
    let q2 = queued.clone();
    let pubs = published.clone();
    // Set once the publishing loop below has handed its last message to rumqttc: only then may
    // the event loop stop (else a publish racing with `stop` finds the client gone).
    let stop2 = Arc::new(AtomicBool::new(false));
    let publishing_done = stop2.clone();
    let events = tokio::spawn(async move {
        let mut by_pkid: HashMap<u16, Msg> = HashMap::new();
        loop {
            // Bounded, so a quiet connection still notices `stop` (poll is cancel-safe).
            let polled = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
            let Ok(polled) = polled else {
                if stop2.load(Ordering::Relaxed)
                    && by_pkid.is_empty()
                    && q2.lock().unwrap().is_empty()
                {
                    break;
                }
                continue;
            };
            match polled {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let Some(m) = q2.lock().unwrap().pop_front() else {
                        continue;
                    };
                    if m.qos == QoS::AtMostOnce {
                        let mut p = pubs.lock().unwrap();
                        p.acked[m.class].insert(m.id, now_ms());
                        p.qos0.insert(m.id);
                        p.payload_bytes[m.class] += m.len as u64;
                    } else {
                        by_pkid.insert(pkid, m);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(m) = by_pkid.remove(&ack.pkid) {
                        let mut p = pubs.lock().unwrap();
                        p.acked[m.class].insert(m.id, now_ms());
                        p.payload_bytes[m.class] += m.len as u64;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if stop2.load(Ordering::Relaxed) && by_pkid.is_empty() {
                        break;
                    }
                    eprintln!("factory-day: connection {conn}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if stop2.load(Ordering::Relaxed) && by_pkid.is_empty() && q2.lock().unwrap().is_empty()
            {
                break;
            }
        }
        by_pkid.len()
    });

    let mut rng = StdRng::seed_from_u64(p.seed ^ (conn as u64).wrapping_mul(0x9e37_79b9));
    let start = Instant::now();
    // Spread each device's schedule over its period so the load is smooth.
    let mut next_tele: Vec<Duration> = devices
        .iter()
        .map(|_| p.telemetry_every.mul_f64(rng.random::<f64>()))
        .collect();
    let mut next_bulk: Vec<Duration> = devices
        .iter()
        .map(|_| p.bulk_every.mul_f64(rng.random::<f64>()))
        .collect();
    let mut counter: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = start.elapsed();
        for (i, &dev) in devices.iter().enumerate() {
            let name = format!("hall{}-line{:02}-m{:03}", dev % 3 + 1, conn, dev);
            let mut out: Vec<(String, String, usize, QoS, u64)> = Vec::new();
            if t >= next_tele[i] {
                next_tele[i] += p.telemetry_every;
                counter += 1;
                let id = ((conn as u64) << 40) | counter;
                out.push((
                    format!("{name}/process/line{conn:02}"),
                    telemetry_json(&mut rng, &name, id, conn),
                    TELE,
                    QoS::AtLeastOnce,
                    id,
                ));
                if rng.random::<f64>() * 100.0 < p.alarm_pct {
                    counter += 1;
                    let id = ((conn as u64) << 40) | counter;
                    out.push((
                        format!("{name}/alarm/machine"),
                        alarm_json(&mut rng, &name, id),
                        CRIT,
                        QoS::AtLeastOnce,
                        id,
                    ));
                }
            }
            if t >= next_bulk[i] {
                next_bulk[i] += p.bulk_every;
                counter += 1;
                let id = ((conn as u64) << 40) | counter;
                let qos = if dev % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                out.push((
                    format!("{name}/bulk/vibration"),
                    bulk_json(&mut rng, &name, id, p.bulk_bytes),
                    BULK,
                    qos,
                    id,
                ));
            }
            for (topic, payload, class, qos, id) in out {
                queued.lock().unwrap().push_back(Msg {
                    class,
                    id,
                    len: payload.len(),
                    qos,
                });
                if client.publish(topic, qos, false, payload).await.is_err() {
                    published.lock().unwrap().errors += 1;
                }
            }
        }
    }
    publishing_done.store(true, Ordering::Relaxed);
    // Wait (bounded) for outstanding PUBACKs, then disconnect.
    let lost = tokio::time::timeout(Duration::from_secs(60), events)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(usize::MAX);
    if lost > 0 {
        published.lock().unwrap().errors += lost.min(1_000_000) as u64;
    }
    let _ = client.disconnect().await;
}

// ---------------------------------------------------------------------------------------------
// ferry: config, process, CLI, /proc sampling.

fn write_config(dir: &Path, bootstrap: &str, mqtt: u16, metrics: u16, rate: &str) -> PathBuf {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ferry.toml"))
        .expect("read config/ferry.toml");
    let replace = |text: String, from: &str, to: String| {
        assert!(text.contains(from), "config/ferry.toml has no line {from}");
        text.replacen(from, &to, 1)
    };
    let mut t = text;
    t = replace(
        t,
        "data_dir = \"/var/lib/ferry\"",
        format!("data_dir = \"{}\"", dir.join("data").display()),
    );
    t = replace(
        t,
        "listen = \"0.0.0.0:1883\"",
        format!("listen = \"127.0.0.1:{mqtt}\""),
    );
    t = replace(
        t,
        "listen = \"127.0.0.1:9464\"",
        format!("listen = \"127.0.0.1:{metrics}\""),
    );
    t = replace(
        t,
        "bootstrap_servers = \"127.0.0.1:9092\"",
        format!("bootstrap_servers = \"{bootstrap}\""),
    );
    t = replace(
        t,
        "socket = \"/run/ferry/ferry.sock\"",
        format!("socket = \"{}\"", dir.join("ferry.sock").display()),
    );
    t = replace(t, "windows = [\"always\"]", "windows = [\"never\"]".into());
    t = replace(t, "rate = \"unlimited\"", format!("rate = \"{rate}\""));
    // The machine this runs on may have little free disk; the default headroom is for a gateway.
    t = replace(t, "min_free = \"256MiB\"", "min_free = \"32MiB\"".into());
    t = replace(
        t,
        "segment_size = \"64MiB\"",
        "segment_size = \"8MiB\"".into(),
    );
    let path = dir.join("ferry.toml");
    std::fs::write(&path, t).expect("write ferry.toml");
    path
}

fn ferry_bin() -> PathBuf {
    std::env::var_os("FERRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ferry")))
}

fn ferry_cli(config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(ferry_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn status(config: &Path) -> Option<serde_json::Value> {
    ferry_cli(config, &["status", "--json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// A class's ETA from `ferry status --json`, in seconds: `eta_ms` (exact) when the daemon
/// reports it, else `eta_secs` (rounded up to whole seconds).
fn eta_of(st: &serde_json::Value, class: &str) -> Option<f64> {
    class_field(st, class, "eta_ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| class_field(st, class, "eta_secs"))
}

fn class_field(st: &serde_json::Value, class: &str, field: &str) -> Option<f64> {
    st["classes"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == class)?
        .get(field)?
        .as_f64()
}

fn scrape(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// (unix ms, CPU ticks user+system, RSS KiB) of a process.
fn proc_sample(pid: u32) -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is the first, utime the 12th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((now_ms(), ticks, rss))
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU % of one core and (mean, max) RSS in MiB over the samples within [from, to).
fn proc_summary(samples: &[(u64, u64, u64)], from: u64, to: u64) -> (f64, f64, f64) {
    let s: Vec<_> = samples.iter().filter(|x| x.0 >= from && x.0 < to).collect();
    if s.len() < 2 {
        return (0.0, 0.0, 0.0);
    }
    let (a, b) = (s[0], s[s.len() - 1]);
    let cpu = (b.1 - a.1) as f64 / clk_tck() / ((b.0 - a.0) as f64 / 1000.0) * 100.0;
    let mean = s.iter().map(|x| x.2 as f64).sum::<f64>() / s.len() as f64 / 1024.0;
    let max = s.iter().map(|x| x.2).max().unwrap_or(0) as f64 / 1024.0;
    (cpu, mean, max)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn parse_rate(rate: &str) -> f64 {
    let s = rate.trim_end_matches("/s");
    let (num, mult) = [
        ("GiB", 1024.0 * 1024.0 * 1024.0),
        ("MiB", 1024.0 * 1024.0),
        ("KiB", 1024.0),
        ("GB", 1e9),
        ("MB", 1e6),
        ("kB", 1e3),
        ("B", 1.0),
    ]
    .iter()
    .find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m)))
    .unwrap_or((s, 1.0));
    num.trim().parse::<f64>().expect("FACTORY_RATE") * mult
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The simulated devices: `p.devices` devices spread over `p.conns` MQTT connections on their
/// own tokio runtime, recording what they published and what ferry acknowledged.
struct Fleet {
    rt: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    published: Arc<Mutex<Published>>,
    conns: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    fn start(p: &Params, mqtt: u16) -> Fleet {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let published: Arc<Mutex<Published>> = Arc::default();
        let conns = (0..p.conns)
            .map(|c| {
                let devs: Vec<usize> = (0..p.devices).filter(|d| d % p.conns == c).collect();
                rt.spawn(run_connection(
                    c,
                    devs,
                    mqtt,
                    p.clone(),
                    stop.clone(),
                    published.clone(),
                ))
            })
            .collect();
        Fleet {
            rt,
            stop,
            published,
            conns,
        }
    }

    /// Stops publishing and waits until every connection has finished.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let conns = self.conns;
        self.rt.block_on(async {
            for c in conns {
                let _ = c.await;
            }
        });
    }
}

fn main() {
    // `cargo bench` passes --bench; this runner takes its knobs from the environment.
    let p = Params::from_env();
    let base = std::env::var_os("FACTORY_DIR").map(PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .expect("scenario directory");
    let dir = dir.path().to_path_buf();
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = chrono::Utc::now();
    eprintln!("factory-day: {p:?} in {}", dir.display());

    // Kafka: tansu behind the counting proxy.
    // The proxy needs the broker's port and the broker needs the proxy's: pick the broker's
    // port first, start the proxy towards it, then the broker advertising the proxy.
    let broker_port = tansu::free_port();
    let proxy = CountingProxy::start(broker_port);
    let broker = Broker::start_on(&dir, broker_port, proxy.port);
    for c in CLASSES {
        broker.create_topic(&format!("ferry.{c}"));
    }
    let bootstrap = format!("127.0.0.1:{}", proxy.port);

    // ferry, link closed.
    let (mqtt, metrics) = (tansu::free_port(), tansu::free_port());
    let config = write_config(&dir, &bootstrap, mqtt, metrics, &p.rate);
    let log = std::fs::File::create(dir.join("ferry.log")).expect("ferry log");
    let mut ferry = Command::new(ferry_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ferry");
    let pid = ferry.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
        assert!(Instant::now() < deadline, "ferry did not listen on MQTT");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Observers.
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let delivered: Arc<Mutex<Delivered>> = Arc::default();
    let consumer = start_consumer(bootstrap.clone(), stop_consumer.clone(), delivered.clone());
    let samples: Arc<Mutex<Vec<(u64, u64, u64)>>> = Arc::default();
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (samples.clone(), stop_sampler.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(s) = proc_sample(pid) {
                    samples.lock().unwrap().push(s);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // Devices.
    let fleet = Fleet::start(&p, mqtt);
    let published = fleet.published.clone();
    let t_start = now_ms();

    // Phase 1: outage.
    std::thread::sleep(p.outage);

    // Phase 2: the window opens.
    let st_open = status(&config).expect("ferry status --json at window open");
    let acked_at_open: [HashSet<u64>; 3] = {
        let pb = published.lock().unwrap();
        std::array::from_fn(|c| pb.acked[c].keys().copied().collect())
    };
    let payload_at_open: u64 = published.lock().unwrap().payload_bytes.iter().sum();
    let fwd_bytes_before = scrape(metrics, "ferry_forwarded_bytes_total{class=\"all\"}");
    let open_ms = now_ms();
    ferry_cli(&config, &["drain", "--for", "24h"]).expect("ferry drain --for 24h");
    eprintln!(
        "factory-day: window open after {:.1} s",
        secs(open_ms - t_start)
    );

    // Catch-up: watch until every message acknowledged before the window is delivered.
    let mut drained_at: [Option<u64>; 3] = [None; 3];
    // ETA samples: [0] the one `ferry status` gives right after the window opened, [1] the
    // first one at least FACTORY_ETA_AT_SECS after the window opened. Each is scored against
    // the time until every message acknowledged when it was taken is delivered.
    let eta_at: u64 = env_or("FACTORY_ETA_AT_SECS", 12) * 1000;
    let mut eta_first: [[Option<(u64, f64, HashSet<u64>)>; 2]; 3] = Default::default();
    let mut eta_drained: [[Option<u64>; 2]; 3] = [[None; 2]; 3];
    let st_eta_open = status(&config);
    let eta_open_ms = now_ms();
    let mut eta_total: Option<(f64, [HashSet<u64>; 3])> = None;
    let mut eta_total_drained: Option<u64> = None;
    if let Some(st) = &st_eta_open {
        let ids: [HashSet<u64>; 3] = {
            let pb = published.lock().unwrap();
            std::array::from_fn(|c| pb.acked[c].keys().copied().collect())
        };
        for (c, name) in CLASSES.iter().enumerate() {
            if let Some(eta) = eta_of(st, name) {
                if class_field(st, name, "bytes").unwrap_or(0.0) > 0.0 {
                    eta_first[c][0] = Some((eta_open_ms, eta, ids[c].clone()));
                }
            }
        }
        if let Some(t) = st["eta"]["total_ms"]
            .as_f64()
            .map(|ms| ms / 1000.0)
            .or_else(|| st["eta"]["total_secs"].as_f64())
        {
            eta_total = Some((t, ids));
        }
    }
    let catchup_deadline = Instant::now() + p.max_catchup;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let t = now_ms();
        {
            let d = delivered.lock().unwrap();
            for c in 0..3 {
                if drained_at[c].is_none()
                    && acked_at_open[c]
                        .iter()
                        .all(|id| d.first[c].contains_key(id))
                {
                    drained_at[c] = Some(t);
                }
                for k in 0..2 {
                    if let (Some((_, _, ids)), None) = (&eta_first[c][k], eta_drained[c][k]) {
                        if ids.iter().all(|id| d.first[c].contains_key(id)) {
                            eta_drained[c][k] = Some(t);
                        }
                    }
                }
            }
            if let (Some((_, ids)), None) = (&eta_total, eta_total_drained) {
                if (0..3).all(|c| ids[c].iter().all(|id| d.first[c].contains_key(id))) {
                    eta_total_drained = Some(t);
                }
            }
        }
        if let Some(st) = status(&config) {
            for (c, name) in CLASSES.iter().enumerate() {
                for k in 0..2 {
                    if eta_first[c][k].is_some() || (k == 1 && t < open_ms + eta_at) {
                        continue;
                    }
                    let Some(eta) = eta_of(&st, name) else {
                        continue;
                    };
                    if class_field(&st, name, "bytes").unwrap_or(0.0) > 0.0 {
                        let ids = published.lock().unwrap().acked[c].keys().copied().collect();
                        eta_first[c][k] = Some((t, eta, ids));
                    }
                }
            }
        }
        if drained_at.iter().all(Option::is_some)
            && (eta_total.is_none() || eta_total_drained.is_some())
        {
            break;
        }
        if Instant::now() >= catchup_deadline {
            eprintln!(
                "factory-day: catch-up did not finish within {:?}",
                p.max_catchup
            );
            break;
        }
    }
    let caught_up_ms = now_ms();
    let fwd_bytes_caught_up = scrape(metrics, "ferry_forwarded_bytes_total{class=\"all\"}");
    std::thread::sleep(p.tail);

    // Stop publishing; wait until every acknowledged message is delivered.
    fleet.stop();
    let stop_publish_ms = now_ms();
    let final_deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let all = {
            let pb = published.lock().unwrap();
            let d = delivered.lock().unwrap();
            (0..3).all(|c| pb.acked[c].keys().all(|id| d.first[c].contains_key(id)))
        };
        if all || Instant::now() >= final_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let end_ms = now_ms();
    let st_end = status(&config);
    let fwd_bytes_end = scrape(metrics, "ferry_forwarded_bytes_total{class=\"all\"}");
    stop_consumer.store(true, Ordering::Relaxed);
    stop_sampler.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    let _ = sampler.join();
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let _ = ferry.wait();
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (wire_producer, _wire_consumer) = proxy.totals();
    drop(broker);

    // ---- Score.
    let pb = published.lock().unwrap();
    let d = delivered.lock().unwrap();
    let samples = samples.lock().unwrap();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |m: &str, v: String, g: &str| rows.push((m.into(), v, g.into()));
    let mut lost_total = 0;
    for (c, name) in CLASSES.iter().enumerate() {
        let acked = pb.acked[c].len();
        let lost = pb.acked[c]
            .keys()
            .filter(|id| !d.first[c].contains_key(id))
            .count();
        lost_total += lost;
        let q0 = if c == BULK {
            let q0 = pb.acked[c].keys().filter(|id| pb.qos0.contains(id)).count();
            format!(" ({q0} of them QoS0, counted when written to the socket)")
        } else {
            String::new()
        };
        row(
            &format!("`{name}`: acknowledged / delivered / lost / duplicates"),
            format!(
                "{acked} / {} / **{lost}** / {}{q0}",
                d.first[c].len(),
                d.duplicates[c]
            ),
            "lost = 0",
        );
    }
    let open_backlog: Vec<usize> = acked_at_open.iter().map(HashSet::len).collect();
    row(
        "backlog at window open (critical / telemetry / bulk records)",
        format!(
            "{} / {} / {} ({:.1} MB raw payload)",
            open_backlog[0],
            open_backlog[1],
            open_backlog[2],
            payload_at_open as f64 / 1e6
        ),
        "—",
    );
    for (c, name) in CLASSES.iter().enumerate() {
        let v = drained_at[c].map_or("not drained".to_string(), |t| {
            format!("{:.1} s", secs(t - open_ms))
        });
        let goal = if c == CRIT {
            "as soon as possible"
        } else {
            "—"
        };
        row(
            &format!("window open -> `{name}` backlog (acked before open) delivered"),
            v,
            goal,
        );
    }
    // New alarms during catch-up: published after the window opened, before bulk drained.
    let bulk_done = drained_at[BULK].unwrap_or(caught_up_ms);
    let mut lat: Vec<u64> = d
        .alarm_latency
        .iter()
        .filter(|(sent, _)| *sent >= open_ms && *sent < bulk_done)
        .map(|(s, a)| a.saturating_sub(*s))
        .collect();
    lat.sort_unstable();
    row(
        "new alarms during catch-up (bulk still draining): publish -> Kafka consumer, p50 / p99 / max",
        format!(
            "{} ms / **{} ms** / {} ms (n = {})",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(0),
            lat.len()
        ),
        "p99 < 1 s",
    );
    let mut lat_all: Vec<u64> = d
        .alarm_latency
        .iter()
        .filter(|(sent, _)| *sent >= open_ms)
        .map(|(s, a)| a.saturating_sub(*s))
        .collect();
    lat_all.sort_unstable();
    row(
        "all alarms published after window open, p50 / p99",
        format!(
            "{} ms / {} ms (n = {})",
            pct(&lat_all, 0.5),
            pct(&lat_all, 0.99),
            lat_all.len()
        ),
        "—",
    );
    let rate = parse_rate(&p.rate);
    let catchup = secs(
        drained_at
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or(caught_up_ms)
            - open_ms,
    );
    // The backlog as the throttle meters it (Kafka payload + key + headers), from `ferry
    // status` right after the window opened; the stored (logical) bytes where it has none.
    let (backlog_wire, measure) = match st_eta_open
        .as_ref()
        .and_then(|st| st["eta"]["wire_bytes"].as_f64())
    {
        Some(w) => (w, "backlog bytes as the throttle counts them"),
        None => (
            st_open["classes"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c["bytes"].as_f64()).sum::<f64>())
                .unwrap_or(0.0),
            "backlog bytes (stored)",
        ),
    };
    let simple_min = backlog_wire / rate;
    row(
        "catch-up time (window open -> all backlog delivered)",
        format!("{catchup:.1} s"),
        "—",
    );
    row(
        &format!("theoretical minimum A: {measure} at open / throttle"),
        format!(
            "{:.1} MB / {:.0} KiB/s = {simple_min:.1} s -> ratio **{:.2}x**",
            backlog_wire / 1e6,
            rate / 1024.0,
            catchup / simple_min.max(0.001)
        ),
        "≤ 1.1x",
    );
    if let (Some(a), Some(b)) = (fwd_bytes_before, fwd_bytes_caught_up) {
        let sent = b - a;
        let min = sent / rate;
        row(
            "theoretical minimum B: bytes ferry forwarded in that time (backlog + live traffic that shares the throttle) / throttle",
            format!(
                "{:.1} MB / {:.0} KiB/s = {min:.1} s -> ratio **{:.2}x** (achieved {:.0} KiB/s)",
                sent / 1e6,
                rate / 1024.0,
                catchup / min.max(0.001),
                sent / catchup.max(0.001) / 1024.0
            ),
            "≤ 1.1x",
        );
    }
    let raw_total: u64 = d.payload_bytes.iter().sum();
    row(
        "bytes on the wire to Kafka (TCP, zstd batches) / raw payload bytes delivered",
        format!(
            "{:.1} MB / {:.1} MB = **{:.3}**{}",
            wire_producer as f64 / 1e6,
            raw_total as f64 / 1e6,
            wire_producer as f64 / raw_total.max(1) as f64,
            fwd_bytes_end.map_or(String::new(), |f| format!(
                " (record bytes incl. key and headers, as the throttle counts them: {:.1} MB)",
                f / 1e6
            ))
        ),
        "—",
    );
    let disk_open = st_open["classes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["disk_bytes"].as_f64())
                .sum::<f64>()
        })
        .unwrap_or(0.0);
    row(
        "disk bytes at window open / payload bytes acknowledged by then",
        format!(
            "{:.1} MB / {:.1} MB = **{:.3}**",
            disk_open / 1e6,
            payload_at_open as f64 / 1e6,
            disk_open / payload_at_open.max(1) as f64
        ),
        "—",
    );
    let (cpu_o, rss_o, rss_o_max) = proc_summary(&samples, t_start, open_ms);
    let (cpu_c, rss_c, rss_c_max) = proc_summary(&samples, open_ms, caught_up_ms);
    row(
        "ferry CPU (% of one core) / RSS mean / RSS max — outage",
        format!("{cpu_o:.1} % / {rss_o:.1} MiB / {rss_o_max:.1} MiB"),
        "—",
    );
    row(
        "ferry CPU (% of one core) / RSS mean / RSS max — catch-up",
        format!("{cpu_c:.1} % / {rss_c:.1} MiB / {rss_c_max:.1} MiB"),
        "—",
    );
    let closed_eta = |name: &str| match (
        eta_of(&st_open, name),
        st_open["classes"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == *name))
            .and_then(|c| c["eta_note"].as_str()),
    ) {
        (Some(e), _) => format!("{e:.1} s"),
        (None, Some(n)) => format!("unknown ({n})"),
        (None, None) => "none".to_string(),
    };
    for (c, name) in CLASSES.iter().enumerate() {
        let mut v = format!("window still closed: {}", closed_eta(name));
        for (k, what) in [
            "at window open".to_string(),
            format!("first after {} s", eta_at / 1000),
        ]
        .iter()
        .enumerate()
        {
            v.push_str(&match (&eta_first[c][k], eta_drained[c][k]) {
                (Some((t, eta, _)), Some(done)) => {
                    let actual = secs(done - t);
                    format!(
                        "; {what} (+{:.1} s): {eta:.1} s, actual {actual:.1} s (**{:+.0} %**)",
                        secs(t - open_ms),
                        (eta - actual) / actual.max(0.001) * 100.0
                    )
                }
                (Some((t, eta, _)), None) => format!(
                    "; {what} (+{:.1} s): {eta:.1} s, that backlog never drained",
                    secs(t - open_ms)
                ),
                _ => format!("; {what}: none while a backlog waited"),
            });
        }
        row(&format!("`ferry status` ETA `{name}`"), v, "± 10 %");
    }
    if let Some(st) = &st_eta_open {
        let e = &st["eta"];
        let v = match (&eta_total, eta_total_drained) {
            (Some((eta, _)), Some(done)) => {
                let actual = secs(done - eta_open_ms);
                format!(
                    "{eta:.1} s, actual {actual:.1} s (**{:+.0} %**); forecast from {} at {:.0} KiB/s, \
                     {:.1} MB waiting as the throttle counts it, live ingest {:.1} KiB/s",
                    (eta - actual) / actual.max(0.001) * 100.0,
                    e["basis"].as_str().unwrap_or("?"),
                    e["rate_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1024.0,
                    e["wire_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                    e["ingest_wire_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1024.0,
                )
            }
            (Some((eta, _)), None) => format!("{eta:.1} s, the backlog never drained"),
            (None, _) => format!(
                "none: {}",
                e["total_note"]
                    .as_str()
                    .unwrap_or("no forecast in ferry status")
            ),
        };
        row(
            "`ferry status` total ETA at window open vs all of that backlog delivered",
            v,
            "± 10 %",
        );
    }
    row(
        "publish errors / refused (ferry status)",
        format!(
            "{} / {}",
            pb.errors,
            st_end
                .as_ref()
                .and_then(|s| s["classes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c["refused"].as_u64()).sum::<u64>()))
                .unwrap_or(0)
        ),
        "0",
    );

    let mut report = String::new();
    report.push_str(&format!(
        "Run {} UTC: {} devices on {} connections, telemetry every {:?} per device, alarms {} % of \
         telemetry ticks, bulk {} B every {:?} per device (QoS1 on even devices, QoS0 on odd); \
         outage {:?} (window closed, broker up); throttle {}; publishing stopped {:.0} s after \
         window open, run ended {:.0} s after it. Load average at start: {}, at end: {}.\n\n",
        started.format("%Y-%m-%d %H:%M"),
        p.devices,
        p.conns,
        p.telemetry_every,
        p.alarm_pct,
        p.bulk_bytes,
        p.bulk_every,
        p.outage,
        p.rate,
        secs(stop_publish_ms - open_ms),
        secs(end_ms - open_ms),
        load_start.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        load_end.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    ));
    // The alternative, same devices and outage, after ferry's run (FACTORY_ALT=0 skips it).
    let alt = if env_or("FACTORY_ALT", 1) == 1 {
        eprintln!("factory-day: the alternative: mosquitto + librdkafka bridge");
        Some(run_alternative(&p, &dir))
    } else {
        None
    };
    if alt.is_some() {
        report.push_str(
            "| measure | ferry | Mosquitto (persistence on) + plain librdkafka bridge, same outage | goal |\n|---|---|---|---|\n",
        );
    } else {
        report.push_str("| measure | value | goal |\n|---|---|---|\n");
    }
    for (m, v, g) in &rows {
        match &alt {
            Some(a) => {
                let av = a.get(m).map_or("—", String::as_str);
                report.push_str(&format!("| {m} | {v} | {av} | {g} |\n"));
            }
            None => report.push_str(&format!("| {m} | {v} | {g} |\n")),
        }
    }
    if alt.is_some() {
        report.push_str(
            "\nAlternative column: the same devices and outage length against Mosquitto \
             (persistence on, defaults otherwise: max_queued_messages 1000) and a plain bridge \
             in the runner (rumqttc subscriber on `#`, persistent session, QoS1, acknowledging \
             on receipt; librdkafka producer, idempotent, acks=all, zstd, default 100k-message \
             in-memory queue and 5 min message timeout; waits and retries on a full queue). Its \
             outage is the Kafka link cut at the proxy (a plain bridge has no window), and it \
             has no throttle, so its catch-up time is not comparable to a throttled one; its \
             catch-up order is what librdkafka's per-partition queues give.\n",
        );
        if p.alt_restart {
            report.push_str(
                "\nFACTORY_ALT_RESTART=1: the bridge was killed halfway through the outage (its \
                 librdkafka queue and in-flight requests purged, as a killed process loses \
                 them) and started again 2 s later with the same persistent MQTT session; \
                 ferry's column has no restart (its kill -9 durability is measured by the \
                 soak test, docs/reliability.md).\n",
            );
        }
    }
    if d.unparsable > 0 {
        report.push_str(&format!(
            "\n{} consumed records were not device JSON.\n",
            d.unparsable
        ));
    }
    println!("{report}");
    if let Some(out) = std::env::var_os("FACTORY_OUT") {
        let _ = std::fs::write(out, &report);
    }
    if lost_total > 0 {
        eprintln!("factory-day: {lost_total} acknowledged messages were not delivered");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// The nearest alternative: Mosquitto (persistence on, as Debian ships it) and a plain bridge,
// a rumqttc subscriber on `#` producing every message to Kafka with librdkafka (idempotent,
// acks=all, zstd), no durable buffer of its own beyond librdkafka's in-memory queue. The
// subscriber session is persistent (clean session off, QoS1) so Mosquitto queues for it;
// rumqttc acknowledges a publish as soon as it has read it, before Kafka has it — which is
// what a plain bridge does. On a full librdkafka queue the bridge waits and retries (back
// pressure onto Mosquitto, which queues up to its `max_queued_messages`, 1000 by default,
// and then drops). There is no throttle and no priority: it sends as fast as the link takes.

struct CountErrors(Arc<AtomicU64>);

impl rdkafka::ClientContext for CountErrors {}

impl rdkafka::producer::ProducerContext for CountErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if r.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn class_of(topic: &str) -> usize {
    let mut parts = topic.split('/');
    match parts.nth(1) {
        Some("alarm") => CRIT,
        Some("bulk") => BULK,
        _ => TELE,
    }
}

/// The bridge; returns (messages received from Mosquitto, delivery failures reported by
/// librdkafka) when `stop` is set.
/// Runs until `stop` (then flushes librdkafka's queue, up to 30 s) or `crash` (then drops the
/// queue and in-flight requests without delivering them: what a killed bridge process loses).
fn run_bridge(
    mqtt: u16,
    bootstrap: String,
    stop: Arc<AtomicBool>,
    crash: Arc<AtomicBool>,
) -> (u64, u64) {
    let failed = Arc::new(AtomicU64::new(0));
    let producer: rdkafka::producer::ThreadedProducer<CountErrors> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .set("log_level", "3")
        .create_with_context(CountErrors(failed.clone()))
        .expect("bridge producer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("bridge runtime");
    let received = rt.block_on(async {
        let mut o = MqttOptions::new("kafka-bridge", "127.0.0.1", mqtt);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(o, 1024);
        client
            .subscribe("#", QoS::AtLeastOnce)
            .await
            .expect("bridge subscribe");
        let mut received = 0u64;
        while !stop.load(Ordering::Relaxed) && !crash.load(Ordering::Relaxed) {
            let ev = match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await
            {
                Ok(ev) => ev,
                Err(_) => continue,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    received += 1;
                    let topic = format!("ferry.{}", CLASSES[class_of(&p.topic)]);
                    let key = p.topic.split('/').next().unwrap_or("").to_string();
                    let mut rec = rdkafka::producer::BaseRecord::to(&topic)
                        .payload(&p.payload[..])
                        .key(&key);
                    loop {
                        match producer.send(rec) {
                            Ok(()) => break,
                            Err((_, r)) => {
                                rec = r;
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("factory-day: bridge: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        received
    });
    if crash.load(Ordering::Relaxed) {
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    } else {
        let _ = producer.flush(Duration::from_secs(30));
    }
    (received, failed.load(Ordering::Relaxed))
}

/// The same devices and the same outage against Mosquitto + the bridge; the outage is the
/// Kafka link cut at the proxy (a plain bridge has no window to close). Returns the figures
/// keyed by the measure names of the main table.
fn run_alternative(p: &Params, dir: &Path) -> HashMap<String, String> {
    let dir = dir.join("alternative");
    std::fs::create_dir_all(dir.join("mosquitto")).expect("alternative dir");
    let broker_port = tansu::free_port();
    let proxy = CountingProxy::start(broker_port);
    let broker = Broker::start_on(&dir, broker_port, proxy.port);
    for c in CLASSES {
        broker.create_topic(&format!("ferry.{c}"));
    }
    let bootstrap = format!("127.0.0.1:{}", proxy.port);
    let mqtt = tansu::free_port();
    // Debian's /etc/mosquitto/mosquitto.conf: persistence true, persistence_location; the
    // rest at mosquitto's defaults (max_queued_messages 1000, autosave_interval 1800).
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {mqtt} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            dir.join("mosquitto").display()
        ),
    )
    .expect("mosquitto.conf");
    let log = std::fs::File::create(dir.join("mosquitto.log")).expect("mosquitto log");
    let mut mosquitto = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start mosquitto (apt-get install mosquitto)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let delivered: Arc<Mutex<Delivered>> = Arc::default();
    let consumer = start_consumer(bootstrap.clone(), stop_consumer.clone(), delivered.clone());
    let stop_bridge = Arc::new(AtomicBool::new(false));
    let start_bridge = |crash: Arc<AtomicBool>| {
        let (b, s) = (bootstrap.clone(), stop_bridge.clone());
        std::thread::spawn(move || run_bridge(mqtt, b, s, crash))
    };
    let crash_first = Arc::new(AtomicBool::new(false));
    let mut bridge = start_bridge(crash_first.clone());
    std::thread::sleep(Duration::from_secs(2));

    // The outage: the Kafka link is down while the devices publish.
    proxy.set_down(true);
    let fleet = Fleet::start(p, mqtt);
    let published = fleet.published.clone();
    // FACTORY_ALT_RESTART=1: the bridge process dies halfway through the outage (an update, a
    // crash, a reboot of the service) and comes back 2 s later; what it had acknowledged to
    // Mosquitto but not yet delivered to Kafka is gone with it.
    let mut crashed = (0u64, 0u64);
    if p.alt_restart {
        std::thread::sleep(p.outage / 2);
        crash_first.store(true, Ordering::Relaxed);
        crashed = bridge.join().unwrap_or((0, 0));
        std::thread::sleep(Duration::from_secs(2));
        bridge = start_bridge(Arc::default());
        eprintln!("factory-day: alternative: bridge killed and restarted");
        std::thread::sleep(
            p.outage
                .saturating_sub(p.outage / 2 + Duration::from_secs(2)),
        );
    } else {
        std::thread::sleep(p.outage);
    }
    let acked_at_open: [HashSet<u64>; 3] = {
        let pb = published.lock().unwrap();
        std::array::from_fn(|c| pb.acked[c].keys().copied().collect())
    };
    let open_ms = now_ms();
    proxy.set_down(false);
    eprintln!("factory-day: alternative: link up");
    let mut drained_at: [Option<u64>; 3] = [None; 3];
    let catchup_deadline =
        Instant::now() + p.max_catchup.min(p.outage * 3 + Duration::from_secs(60));
    while Instant::now() < catchup_deadline && drained_at.iter().any(Option::is_none) {
        std::thread::sleep(Duration::from_millis(500));
        let t = now_ms();
        let d = delivered.lock().unwrap();
        for c in 0..3 {
            if drained_at[c].is_none()
                && acked_at_open[c]
                    .iter()
                    .all(|id| d.first[c].contains_key(id))
            {
                drained_at[c] = Some(t);
            }
        }
    }
    let caught_up_ms = now_ms();
    std::thread::sleep(p.tail);
    fleet.stop();
    // Everything acknowledged gets a minute to arrive; what does not is lost.
    let final_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = {
            let pb = published.lock().unwrap();
            let d = delivered.lock().unwrap();
            (0..3).all(|c| pb.acked[c].keys().all(|id| d.first[c].contains_key(id)))
        };
        if all || Instant::now() >= final_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop_bridge.store(true, Ordering::Relaxed);
    let (received, failed) = bridge.join().unwrap_or((0, 0));
    let (received, failed) = (received + crashed.0, failed + crashed.1);
    stop_consumer.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    drop(broker);

    let pb = published.lock().unwrap();
    let d = delivered.lock().unwrap();
    let mut out = HashMap::new();
    for (c, name) in CLASSES.iter().enumerate() {
        let lost = pb.acked[c]
            .keys()
            .filter(|id| !d.first[c].contains_key(id))
            .count();
        out.insert(
            format!("`{name}`: acknowledged / delivered / lost / duplicates"),
            format!(
                "{} / {} / **{lost}** / {}",
                pb.acked[c].len(),
                d.first[c].len(),
                d.duplicates[c]
            ),
        );
        out.insert(
            format!("window open -> `{name}` backlog (acked before open) delivered"),
            drained_at[c].map_or("not drained".to_string(), |t| {
                format!("{:.1} s after the link came back", secs(t - open_ms))
            }),
        );
    }
    let bulk_done = drained_at[BULK].unwrap_or(caught_up_ms);
    let mut lat: Vec<u64> = d
        .alarm_latency
        .iter()
        .filter(|(sent, _)| *sent >= open_ms && *sent < bulk_done)
        .map(|(s, a)| a.saturating_sub(*s))
        .collect();
    lat.sort_unstable();
    out.insert(
        "new alarms during catch-up (bulk still draining): publish -> Kafka consumer, p50 / p99 / max"
            .to_string(),
        format!(
            "{} ms / **{} ms** / {} ms (n = {})",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(0),
            lat.len()
        ),
    );
    let catchup = drained_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(caught_up_ms)
        - open_ms;
    out.insert(
        "catch-up time (window open -> all backlog delivered)".to_string(),
        format!("{:.1} s (no throttle)", secs(catchup)),
    );
    out.insert(
        "publish errors / refused (ferry status)".to_string(),
        format!(
            "{} / — (bridge: {received} received from Mosquitto, {failed} Kafka delivery failures{})",
            pb.errors,
            if p.alt_restart {
                format!(
                    "; killed and restarted at {:.0} s into the outage, {} received before",
                    p.outage.as_secs_f64() / 2.0,
                    crashed.0
                )
            } else {
                String::new()
            }
        ),
    );
    out
}
