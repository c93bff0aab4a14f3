//! MQTT ingest benchmark (issue 3): durable QoS 1 ingest through ferry's listener against
//! rumqttd in memory and Debian's Mosquitto, with the same load generator, in one run.
//!
//! Run: `cargo bench --bench mqtt_ingest` (or `scripts/bench-ingest.sh`, which also records
//! the date and the machine's load). Environment:
//! - `FERRY_BENCH_DIR`: where ferry's store, Mosquitto's persistence file and the fdatasync
//!   probe live (default: the temp dir; it must be on the disk under test, not tmpfs);
//! - `FERRY_BENCH_SECS`: measured seconds per row (default 6, after 1 s of warm-up);
//! - `FERRY_BENCH_CONNS`: publishing connections per row, comma-separated (default `1,4,16`);
//! - `FERRY_BENCH_MOSQUITTO`: the mosquitto binary (default `/usr/sbin/mosquitto`);
//! - `FERRY_BENCH_VARIANT`: adds a row "ferry (variant)": the shipped config plus these
//!   `dotted.key=TOML value` overrides, `;`-separated, e.g. `storage.compression_level=0`;
//! - `FERRY_BENCH_ONLY`: only the rows whose broker name contains one of these
//!   (comma-separated), for quick experiments.
//!
//! # The brokers
//! - **ferry**: in-process, built exactly as `ferry run` builds it — the shipped
//!   `config/ferry.toml` parsed by `Config`, turned into store, classifier and listener options
//!   by `runtime::wiring`, with three overrides: a temp `data_dir`, listen on 127.0.0.1:0, and
//!   `max_inflight = 100` (the shipped 64 would make ferry hold back part of the 100-message
//!   window). It runs on its own multi-threaded tokio runtime like the daemon; no forwarder
//!   runs (no Kafka here), so the store only takes appends. PUBACK goes out after the group
//!   commit's fdatasync (`ack = "durable"`). Measured with the shipped live fan-out on, and
//!   again with it off, to show what the fan-out costs.
//! - **rumqttd**: `rumqttd::Broker` 0.20 with the crate's sample config (one v4 listener),
//!   in its own threads. No subscriber, so publishes are acked from memory and dropped.
//! - **mosquitto**: Debian's package as a child process with a temp config that keeps the
//!   shipped persistence (`persistence true`, default `autosave_interval` 1800 s: the
//!   in-memory database is saved every 30 min, so acks do not wait for the disk).
//! - **null acker**: a 40-line in-process server that answers every PUBLISH with a PUBACK at
//!   once. Its rate is the generator's own ceiling on this machine: a broker close to it is
//!   limited by the generator (and the shared CPU), not by itself.
//!
//! # The load generator
//! Raw MQTT 3.1.1 over TCP (no client library in the measured path): each connection writes
//! QoS 1 PUBLISHes of 100 B payloads while fewer than 100 are unacknowledged, stamping the
//! time a batch of publishes is handed to the socket; the PUBACK's arrival gives the latency
//! per message. Throughput counts PUBACKs received inside the measured window. All
//! connections share one 2-thread tokio runtime.
//!
//! fdatasync: 4 KiB `write` + `fdatasync` in a loop on a file in `FERRY_BENCH_DIR`, for 1.5 s
//! just before each ferry row (the goal "p99 ≤ 3x fdatasync p99" is judged against that: the
//! shared virtual disk drifts 10x within minutes), and for longer, once
//! appending (the file grows, as the store's segments do) and once overwriting the first
//! 4 KiB, before and after the broker rows.
//!
//! CPU: every row records the CPU time of this process's threads grouped by thread name
//! (and of the mosquitto process) over the measured window, so the table shows where the two
//! cores went.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferry::config::Config;
use ferry::ingest::Server;
use ferry::runtime::wiring;
use ferry::store::{IoStats, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const PAYLOAD: usize = 100;
const WINDOW: usize = 100;
const WARMUP: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Raw MQTT 3.1.1 packets
// ---------------------------------------------------------------------------------------

fn put_len(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        buf.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&60u16.to_be_bytes()); // keep-alive, s
    put_str(&mut body, client_id);
    let mut p = vec![0x10];
    put_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

fn put_publish(buf: &mut Vec<u8>, topic: &str, pkid: u16, payload: &[u8]) {
    buf.push(0x32); // PUBLISH, QoS 1
    put_len(buf, 2 + topic.len() + 2 + payload.len());
    put_str(buf, topic);
    buf.extend_from_slice(&pkid.to_be_bytes());
    buf.extend_from_slice(payload);
}

/// Splits complete packets off the front of `buf`: (first byte, body range) each.
/// Returns how many bytes were consumed.
fn parse_packets(buf: &[u8], mut f: impl FnMut(u8, &[u8])) -> Result<usize> {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return Ok(pos);
        }
        let (mut len, mut mul, mut i) = (0usize, 1usize, 1usize);
        loop {
            let Some(&b) = rest.get(i) else {
                return Ok(pos);
            };
            len += (b & 0x7f) as usize * mul;
            mul *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if i > 4 {
                bail!("malformed remaining length from the broker");
            }
        }
        if rest.len() < i + len {
            return Ok(pos);
        }
        f(rest[0], &rest[i..i + len]);
        pos += i + len;
    }
}

// ---------------------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------------------

struct Phase {
    measuring: AtomicBool,
    stop: AtomicBool,
}

#[derive(Default)]
struct ConnResult {
    acked: u64,
    /// PUBACK latency per message acked inside the window, µs.
    lat_us: Vec<u32>,
}

async fn publisher(addr: SocketAddr, client_id: String, phase: Arc<Phase>) -> Result<ConnResult> {
    let mut sock = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting {client_id} to {addr}"))?;
    sock.set_nodelay(true)?;
    sock.write_all(&connect_packet(&client_id)).await?;
    let mut connack = [0u8; 4];
    sock.read_exact(&mut connack)
        .await
        .with_context(|| format!("reading CONNACK for {client_id}"))?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("{client_id}: connection refused, CONNACK {connack:?}");
    }
    let (mut rd, mut wr) = sock.into_split();
    let epoch = Instant::now();
    // Send time per packet id, ns since `epoch`. At most WINDOW ids are outstanding, all
    // among the last WINDOW sent, so an id is never reused while in flight.
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..=u16::MAX).map(|_| AtomicU64::new(0)).collect());
    let window = Arc::new(Semaphore::new(WINDOW));

    let writer = {
        let (sent_at, window, phase) = (sent_at.clone(), window.clone(), phase.clone());
        let topic = format!("bench/{client_id}/telemetry");
        tokio::spawn(async move {
            let payload = [b'x'; PAYLOAD];
            let mut pkid: u16 = 0;
            let mut buf = Vec::with_capacity(WINDOW * (PAYLOAD + 64));
            while !phase.stop.load(Ordering::Relaxed) {
                let Ok(p) = window.acquire().await else { break };
                p.forget();
                let mut k = 1;
                while let Ok(p) = window.try_acquire() {
                    p.forget();
                    k += 1;
                }
                buf.clear();
                let now = epoch.elapsed().as_nanos() as u64;
                for _ in 0..k {
                    pkid = pkid.checked_add(1).unwrap_or(1);
                    sent_at[pkid as usize].store(now, Ordering::Relaxed);
                    put_publish(&mut buf, &topic, pkid, &payload);
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
            // A clean end, so brokers do not treat it as a dropped device.
            let _ = wr.write_all(&[0xe0, 0x00]).await;
            let _ = wr.shutdown().await;
        })
    };

    let mut res = ConnResult::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    while !phase.stop.load(Ordering::Relaxed) {
        let n = match tokio::time::timeout(Duration::from_millis(100), rd.read(&mut buf[have..]))
            .await
        {
            Err(_) => continue,
            // The writer task may already have said DISCONNECT at the end of the row (it sees
            // `stop` first), and a fast broker closes at once: that is no error.
            Ok(Ok(0)) if phase.stop.load(Ordering::Relaxed) => break,
            Ok(Ok(0)) => bail!("{client_id}: the broker closed the connection"),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e).with_context(|| format!("{client_id}: reading acks")),
        };
        have += n;
        let now = epoch.elapsed().as_nanos() as u64;
        let measuring = phase.measuring.load(Ordering::Relaxed);
        let mut acks = 0;
        let used = parse_packets(&buf[..have], |h, body| {
            if h >> 4 == 4 && body.len() >= 2 {
                acks += 1;
                if measuring {
                    let id = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let t = sent_at[id].load(Ordering::Relaxed);
                    res.acked += 1;
                    res.lat_us.push((now.saturating_sub(t) / 1000) as u32);
                }
            }
        })?;
        buf.copy_within(used..have, 0);
        have -= used;
        window.add_permits(acks);
    }
    window.close();
    let _ = writer.await;
    Ok(res)
}

/// The same load through rumqttc (`inflight` 100), as `tests/ingest.rs`'s `bench_durable_qos1`
/// does: shows how much a client library limits the rate (latency is taken from rumqttc's
/// `Outgoing::Publish` event, i.e. when the event loop handles the publish).
async fn rumqttc_publisher(
    addr: SocketAddr,
    client_id: String,
    phase: Arc<Phase>,
) -> Result<ConnResult> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let topic = format!("bench/{client_id}/telemetry");
    let mut o = MqttOptions::new(client_id.clone(), addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(WINDOW as u16);
    let (client, mut el) = AsyncClient::new(o, 2 * WINDOW);
    let feeder = {
        let client = client.clone();
        tokio::spawn(async move {
            let payload = vec![b'x'; PAYLOAD];
            while client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
                .await
                .is_ok()
            {}
        })
    };
    let mut sent: Vec<Option<Instant>> = vec![None; 1 << 16];
    let mut res = ConnResult::default();
    while !phase.stop.load(Ordering::Relaxed) {
        match el.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                sent[pkid as usize] = Some(Instant::now())
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                if let Some(t) = sent[a.pkid as usize].take() {
                    if phase.measuring.load(Ordering::Relaxed) {
                        res.acked += 1;
                        res.lat_us.push(t.elapsed().as_micros() as u32);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => bail!("{client_id} (rumqttc): {e}"),
        }
    }
    feeder.abort();
    let _ = client.try_disconnect();
    Ok(res)
}

#[derive(Clone, Copy)]
enum Gen {
    Raw,
    Rumqttc,
}

struct LoadResult {
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    secs: f64,
    cpu: Cpu,
    /// ferry's store I/O over the measured window.
    io: Option<String>,
}

/// One broker under load: where it listens, how to load it, what to sample besides us.
struct Target<'a> {
    addr: SocketAddr,
    gen: Gen,
    /// A broker in its own process (Mosquitto), for its CPU time.
    pid: Option<u32>,
    /// ferry's store, for its I/O counters.
    store: Option<&'a Store>,
}

/// `conns` connections at the target: 1 s warm-up, then `secs` measured.
fn run_load(
    rt: &tokio::runtime::Runtime,
    t: &Target<'_>,
    conns: usize,
    secs: f64,
    tag: &str,
) -> Result<LoadResult> {
    let Target {
        addr,
        gen,
        pid: broker_pid,
        store,
    } = *t;
    let phase = Arc::new(Phase {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            let id = format!("{tag}-{conns}-{i}");
            match gen {
                Gen::Raw => rt.spawn(publisher(addr, id, phase.clone())),
                Gen::Rumqttc => rt.spawn(rumqttc_publisher(addr, id, phase.clone())),
            }
        })
        .collect();
    std::thread::sleep(WARMUP);
    let cpu0 = Cpu::sample(broker_pid);
    let io0 = store.map(|s| s.io_stats());
    phase.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    phase.measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = Cpu::sample(broker_pid).since(&cpu0, elapsed);
    let io = store
        .zip(io0)
        .map(|(s, io0)| io_delta(&io0, &s.io_stats(), elapsed));
    phase.stop.store(true, Ordering::Relaxed);
    let mut acked = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let r = rt.block_on(t).context("publisher task panicked")??;
        acked += r.acked;
        lat.extend(r.lat_us);
    }
    lat.sort_unstable();
    Ok(LoadResult {
        msgs_per_s: acked as f64 / elapsed,
        p50_ms: pct_us(&lat, 0.50) / 1e3,
        p99_ms: pct_us(&lat, 0.99) / 1e3,
        secs: elapsed,
        cpu,
        io,
    })
}

fn pct_us(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64
}

// ---------------------------------------------------------------------------------------
// CPU accounting (per thread name, from /proc)
// ---------------------------------------------------------------------------------------

#[derive(Default, Clone)]
struct Cpu {
    /// Thread-name group -> CPU seconds (or, after `since`, cores used on average).
    by_group: BTreeMap<String, f64>,
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

/// (comm, utime + stime in seconds) from a /proc/.../stat file.
fn stat_cpu(path: &Path) -> Option<(String, f64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((comm, ticks / clk_tck()))
}

fn group_of(comm: &str) -> &'static str {
    match comm {
        c if c.starts_with("loadgen") => "load generator",
        c if c.starts_with("ferry-store") => "ferry store writer",
        c if c.starts_with("ferry-srv") => "ferry runtime",
        c if c.starts_with("null-acker") => "null acker",
        c if c.starts_with("rumqttd-v4") => "rumqttd listener",
        _ => "other threads (routers, blocking pools)",
    }
}

impl Cpu {
    fn sample(broker_pid: Option<u32>) -> Cpu {
        let mut c = Cpu::default();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for e in dir.flatten() {
                if let Some((comm, s)) = stat_cpu(&e.path().join("stat")) {
                    *c.by_group.entry(group_of(&comm).to_string()).or_default() += s;
                }
            }
        }
        if let Some(pid) = broker_pid {
            if let Some((_, s)) = stat_cpu(Path::new(&format!("/proc/{pid}/stat"))) {
                c.by_group.insert("mosquitto".into(), s);
            }
        }
        c
    }
    fn since(&self, before: &Cpu, secs: f64) -> Cpu {
        let by_group = self
            .by_group
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (v - before.by_group.get(k).unwrap_or(&0.0)) / secs,
                )
            })
            .filter(|(_, v)| *v >= 0.005)
            .collect();
        Cpu { by_group }
    }
    fn summary(&self) -> String {
        let mut v: Vec<_> = self.by_group.iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        v.iter()
            .map(|(k, c)| format!("{k} {:.2}", c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// Brokers
// ---------------------------------------------------------------------------------------

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not start listening on {addr} within 10 s")
}

/// Answers CONNECT with CONNACK and every QoS 1 PUBLISH with a PUBACK, nothing else.
fn start_null_acker() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    l.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("null-acker".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return eprintln!("null acker: starting its runtime: {e}"),
            };
            rt.block_on(async move {
                let Ok(l) = TcpListener::from_std(l) else {
                    return;
                };
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let _ = s.set_nodelay(true);
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut have = 0;
                        let mut out = Vec::new();
                        loop {
                            match s.read(&mut buf[have..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => have += n,
                            }
                            out.clear();
                            let mut end = false;
                            let Ok(used) = parse_packets(&buf[..have], |h, body| match h >> 4 {
                                1 => out.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]),
                                3 if body.len() >= 2 => {
                                    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                                    if let Some(id) = body.get(2 + tl..4 + tl) {
                                        out.extend_from_slice(&[0x40, 0x02, id[0], id[1]]);
                                    }
                                }
                                14 => end = true,
                                _ => {}
                            }) else {
                                return;
                            };
                            buf.copy_within(used..have, 0);
                            have -= used;
                            if s.write_all(&out).await.is_err() || end {
                                return;
                            }
                        }
                    });
                }
            });
        })?;
    Ok(addr)
}

fn start_rumqttd() -> Result<SocketAddr> {
    let port = free_port()?;
    // The crate's sample rumqttd.toml, one v4 listener, smaller segments (nothing is kept:
    // there is no subscriber).
    let toml = format!(
        r#"
id = 0
[router]
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 10
[v4.1]
name = "rumqttd-v4"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let cfg: rumqttd::Config = toml::from_str(&toml).context("rumqttd config")?;
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = rumqttd::Broker::new(cfg).start() {
                eprintln!("rumqttd stopped: {e}");
            }
        })?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr, "rumqttd")?;
    Ok(addr)
}

/// Mosquitto as a child process; killed on drop.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
}

impl Mosquitto {
    fn start(bin: &Path, dir: &Path) -> Result<Mosquitto> {
        let port = free_port()?;
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("mosquitto.conf");
        // Debian's /etc/mosquitto/mosquitto.conf keeps `persistence true` with the default
        // autosave; only the port, the paths and logging differ. `user root` stops it
        // dropping to the `mosquitto` account, which could not write the temp dir.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nlog_dest none\nuser root\n",
                dir.display()
            ),
        )?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (apt-get install -y mosquitto, or set FERRY_BENCH_MOSQUITTO)",
                    bin.display()
                )
            })?;
        let m = Mosquitto {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        wait_listening(m.addr, "mosquitto")?;
        Ok(m)
    }
    fn version(bin: &Path) -> String {
        Command::new(bin)
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "mosquitto (version unknown)".into())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ferry's listener and store, configured from the shipped config like `ferry run`.
struct Ferry {
    addr: SocketAddr,
    store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ferry {
    /// `extra`: further `dotted.key = TOML value` overrides (FERRY_BENCH_VARIANT).
    fn start(data_dir: &Path, fanout: bool, extra: &[(String, String)]) -> Result<Ferry> {
        let shipped = include_str!("../config/ferry.toml");
        let mut doc: toml_edit::DocumentMut =
            shipped.parse().context("parsing config/ferry.toml")?;
        doc["storage"]["data_dir"] = toml_edit::value(data_dir.display().to_string());
        doc["mqtt"]["listen"] = toml_edit::value("127.0.0.1:0");
        doc["mqtt"]["max_inflight"] = toml_edit::value(WINDOW as i64);
        doc["mqtt"]["local_fanout"]["enabled"] = toml_edit::value(fanout);
        for (key, val) in extra {
            let v: toml_edit::Value = val
                .parse()
                .with_context(|| format!("FERRY_BENCH_VARIANT: `{val}` is not a TOML value"))?;
            let mut item = doc.as_item_mut();
            for part in key.split('.') {
                item = &mut item[part];
            }
            *item = toml_edit::Item::Value(v);
        }
        let cfg = Config::from_str_with_name(&doc.to_string(), "bench ferry.toml")
            .map_err(|e| anyhow!("bench config: {e}"))?;
        let (store, _) = Store::open(cfg.store_options()).context("opening the store")?;
        let classifier = wiring::classifier(&cfg, &store)?;
        let opts = wiring::ingest_options(&cfg)?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = store.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-main".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("ferry-srv")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return drop(addr_tx.send(Err(anyhow!("ferry runtime: {e}")))),
                };
                rt.block_on(async move {
                    let srv = match Server::bind(opts, st, classifier).await {
                        Ok(s) => s,
                        Err(e) => return drop(addr_tx.send(Err(e.into()))),
                    };
                    let _ = addr_tx.send(srv.local_addr().map_err(Into::into));
                    if let Err(e) = srv
                        .run(async {
                            let _ = stop_rx.await;
                        })
                        .await
                    {
                        eprintln!("ferry listener: {e}");
                    }
                });
            })?;
        let addr = addr_rx
            .recv()
            .context("ferry's thread ended before binding")??;
        Ok(Ferry {
            addr,
            store,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.store.close() {
            eprintln!("closing ferry's store: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// fdatasync probe
// ---------------------------------------------------------------------------------------

struct SyncLat {
    p50_ms: f64,
    p99_ms: f64,
    n: usize,
}

/// 4 KiB write + fdatasync in a loop for `secs`: appending (file grows) or overwriting.
fn fdatasync_probe(dir: &Path, secs: f64, append: bool) -> Result<SyncLat> {
    let path = dir.join(if append {
        "probe-append"
    } else {
        "probe-overwrite"
    });
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5au8; 4096];
    if !append {
        f.write_all_at(&block, 0)?;
        f.sync_all()?;
    }
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut off = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        f.write_all_at(&block, off)?;
        f.sync_data()?;
        lat.push(t.elapsed().as_micros() as u32);
        if append {
            off += block.len() as u64;
        }
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    Ok(SyncLat {
        p50_ms: pct_us(&lat, 0.50) / 1e3,
        p99_ms: pct_us(&lat, 0.99) / 1e3,
        n: lat.len(),
    })
}

// ---------------------------------------------------------------------------------------

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn io_delta(a: &IoStats, b: &IoStats, secs: f64) -> String {
    let commits = b.commits - a.commits;
    let fsyncs = b.fsyncs - a.fsyncs;
    let recs = b.records_written - a.records_written;
    let fs = b.fsync_seconds_sum - a.fsync_seconds_sum;
    format!(
        "{:.0} commits/s, {:.0} fsyncs/s (mean {:.2} ms), {:.0} records/commit",
        commits as f64 / secs,
        fsyncs as f64 / secs,
        if fsyncs > 0 {
            fs * 1e3 / fsyncs as f64
        } else {
            0.0
        },
        if commits > 0 {
            recs as f64 / commits as f64
        } else {
            0.0
        }
    )
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let base: PathBuf = std::env::var("FERRY_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::env::temp_dir());
    let secs: f64 = std::env::var("FERRY_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6.0);
    let conns: Vec<usize> = std::env::var("FERRY_BENCH_CONNS")
        .unwrap_or_else(|_| "1,4,16".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .context("FERRY_BENCH_CONNS: numbers like 1,4,16")
        })
        .collect::<Result<_>>()?;
    let mosq_bin: PathBuf = std::env::var("FERRY_BENCH_MOSQUITTO")
        .map(Into::into)
        .unwrap_or_else(|_| "/usr/sbin/mosquitto".into());
    let work = tempfile::tempdir_in(&base)
        .with_context(|| format!("creating a work dir in {}", base.display()))?;

    let started = chrono::Utc::now();
    let load_start = loadavg();
    println!(
        "# ferry MQTT ingest bench, {} UTC, load average at start {load_start}",
        started.format("%Y-%m-%d %H:%M")
    );
    println!(
        "# {} B payloads, QoS 1, MQTT 3.1.1, {WINDOW} in flight per connection, {secs} s per row after {} s warm-up; dir {}",
        PAYLOAD,
        WARMUP.as_secs(),
        base.display()
    );
    println!("# {}", Mosquitto::version(&mosq_bin));

    let sync_a1 = fdatasync_probe(work.path(), 3.0, true)?;
    let sync_o1 = fdatasync_probe(work.path(), 2.0, false)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("loadgen")
        .build()?;
    let null = start_null_acker()?;
    let rumqttd = start_rumqttd()?;
    let mosq = Mosquitto::start(&mosq_bin, &work.path().join("mosquitto"))?;
    let ferry_fo = Ferry::start(&work.path().join("ferry-fanout"), true, &[])?;
    let ferry_nf = Ferry::start(&work.path().join("ferry-nofanout"), false, &[])?;
    // An optional third ferry, the shipped config plus overrides, to try a setting:
    // FERRY_BENCH_VARIANT='storage.commit.max_delay="0ms"; storage.compression_level=0'.
    let variant: Vec<(String, String)> = std::env::var("FERRY_BENCH_VARIANT")
        .unwrap_or_default()
        .split(';')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("FERRY_BENCH_VARIANT: `{kv}` is not key=value"))
        })
        .collect::<Result<_>>()?;
    let ferry_var = if variant.is_empty() {
        None
    } else {
        println!(
            "# ferry (variant) = shipped config plus {}",
            std::env::var("FERRY_BENCH_VARIANT").unwrap_or_default()
        );
        Some(Ferry::start(
            &work.path().join("ferry-variant"),
            true,
            &variant,
        )?)
    };
    let mut brokers = vec![
        "null acker",
        "rumqttd",
        "rumqttd, rumqttc client",
        "mosquitto",
        "ferry",
        "ferry (fan-out off)",
    ];
    if ferry_var.is_some() {
        brokers.push("ferry (variant)");
    }
    // FERRY_BENCH_ONLY=ferry,variant: only rows whose broker name contains one of these
    // (for quick experiments; the published table uses every row).
    if let Ok(only) = std::env::var("FERRY_BENCH_ONLY") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        brokers.retain(|b| only.iter().any(|o| b.contains(o)));
    }

    struct Row {
        broker: &'static str,
        conns: usize,
        r: LoadResult,
        note: String,
        /// For ferry rows: the disk's fdatasync latency probed just before the row, because
        /// on a shared virtual disk it drifts by 10x within minutes.
        sync: Option<SyncLat>,
    }
    let mut rows: Vec<Row> = Vec::new();
    for (i, &n) in conns.iter().enumerate() {
        // Interleaved per connection count, so drift on the shared machine hits all alike,
        // and the order reversed every other count, so no broker always goes first.
        let mut order = brokers.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        for &broker in &order {
            let gen = if broker.contains("rumqttc") {
                Gen::Rumqttc
            } else {
                Gen::Raw
            };
            let (addr, pid, store) = match broker {
                "null acker" => (null, None, None),
                "rumqttd" | "rumqttd, rumqttc client" => (rumqttd, None, None),
                "mosquitto" => (mosq.addr, Some(mosq.child.id()), None),
                "ferry" => (ferry_fo.addr, None, Some(&ferry_fo.store)),
                "ferry (fan-out off)" => (ferry_nf.addr, None, Some(&ferry_nf.store)),
                _ => match &ferry_var {
                    Some(f) => (f.addr, None, Some(&f.store)),
                    None => bail!("no broker named {broker}"),
                },
            };
            let tag: String = broker.chars().filter(char::is_ascii_alphanumeric).collect();
            let target = Target {
                addr,
                gen,
                pid,
                store,
            };
            let sync = match store {
                Some(_) => Some(fdatasync_probe(work.path(), 1.5, true)?),
                None => None,
            };
            let r = run_load(&rt, &target, n, secs, &tag)
                .with_context(|| format!("{broker}, {n} connections"))?;
            let note = r.io.clone().unwrap_or_default();
            eprintln!(
                "{broker:>20} x{n:<2} {:>9.0} msg/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({:.1} s)  cpu: {}  {note}",
                r.msgs_per_s,
                r.p50_ms,
                r.p99_ms,
                r.secs,
                r.cpu.summary()
            );
            rows.push(Row {
                broker,
                conns: n,
                r,
                note,
                sync,
            });
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    drop(ferry_fo);
    drop(ferry_nf);
    drop(ferry_var);
    drop(mosq);

    let sync_a2 = fdatasync_probe(work.path(), 3.0, true)?;
    let sync_o2 = fdatasync_probe(work.path(), 2.0, false)?;
    let load_end = loadavg();
    let sync_p99 = rows
        .iter()
        .filter_map(|r| r.sync.as_ref().map(|s| s.p99_ms))
        .fold(sync_a1.p99_ms.max(sync_a2.p99_ms), f64::max);

    rows.sort_by_key(|r| (r.conns, brokers.iter().position(|b| *b == r.broker)));
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(out, "| connections | broker | acked msg/s | PUBACK p50 ms | PUBACK p99 ms | CPU (cores) over the window |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for row in &rows {
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            row.conns,
            row.broker,
            row.r.msgs_per_s,
            row.r.p50_ms,
            row.r.p99_ms,
            row.r.cpu.summary()
        )?;
    }
    writeln!(out)?;
    writeln!(out, "| connections | ferry / rumqttd (goal ≥ 0.5) | ferry / mosquitto (goal ≥ 1.5) | ferry p99 / fdatasync p99 just before (goal ≤ 3) | ferry p99 / worst fdatasync p99 of the run | ferry store I/O over the window |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let get = |b: &str, n: usize| rows.iter().find(|r| r.broker == b && r.conns == n);
    for &n in &conns {
        if let (Some(f), Some(r), Some(m)) =
            (get("ferry", n), get("rumqttd", n), get("mosquitto", n))
        {
            let ok = |c: bool| if c { "" } else { " **missed**" };
            let (a, b, d) = (
                f.r.msgs_per_s / r.r.msgs_per_s,
                f.r.msgs_per_s / m.r.msgs_per_s,
                f.r.p99_ms / sync_p99,
            );
            let near = f.sync.as_ref().map_or(f64::NAN, |s| s.p99_ms);
            let c = f.r.p99_ms / near;
            writeln!(
                out,
                "| {n} | {a:.2}{} | {b:.2}{} | {c:.2} ({:.2} / {near:.2} ms){} | {d:.2} | {} |",
                ok(a >= 0.5),
                ok(b >= 1.5),
                f.r.p99_ms,
                ok(c <= 3.0),
                f.note
            )?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "| fdatasync probe (4 KiB write + fdatasync) | p50 ms | p99 ms | samples |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for (what, s) in [
        ("append, before the broker rows", &sync_a1),
        ("overwrite, before", &sync_o1),
        ("append, after", &sync_a2),
        ("overwrite, after", &sync_o2),
    ] {
        writeln!(
            out,
            "| {what} | {:.2} | {:.2} | {} |",
            s.p50_ms, s.p99_ms, s.n
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "worst append fdatasync p99 of the run (probes before and after all rows and before each ferry row): {sync_p99:.2} ms. Load average: {load_start} at start, {load_end} at end. Run took {:.0} s.",
        (chrono::Utc::now() - started).num_seconds()
    )?;
    Ok(())
}
