//! Forwarder benchmark (issue 8): drain rate against a plain rdkafka producer, throttle accuracy,
//! and RSS while draining a large backlog — all against a real `tansu` broker on 127.0.0.1
//! (memory storage) and the real store in a temp dir.
//!
//! ```text
//! cargo bench --bench forward                       # everything, ~10-15 min
//! cargo bench --bench forward -- --messages 200000 --throttle-secs 20 --rss-gb 1   # quick
//! ```
//! Env: `FERRY_BENCH_DIR` (where the stores go; default the system temp dir),
//! `FERRY_TANSU` (broker binary; default `~/.local/share/ferry-test/bin/tansu`). Diagnostic
//! knobs are described where they are read (`FERRY_BENCH_KAFKA`, `FERRY_BENCH_LINGER_MS`,
//! `FERRY_BENCH_MAX_IN_FLIGHT`, `FERRY_BENCH_PLAIN_WINDOW`, `FERRY_BENCH_TIMELINE`,
//! `FERRY_BENCH_TRACE`).
//!
//! ## Shape
//! Each part runs in its own child process (this binary re-executed with `--part NAME`) with
//! its own broker, so memory one part leaves behind (1M pre-mapped records for the plain
//! producer, the payload pool used to build the big backlog) cannot show up in another part's
//! RSS, and every broker starts empty.
//!
//! 1. `drain`: 1M ~200 B JSON telemetry records appended to a store. A plain rdkafka
//!    `ThreadedProducer` built from the *same* `ClientConfig` ferry uses
//!    (`KafkaOptions::client_config`: zstd, idempotence, acks=all, linger 5 ms as shipped, same queue
//!    limits) sends the same records — read back from that store and mapped by ferry's own
//!    `Mapper` before the clock starts, so topic layout, keys, headers and timestamps are
//!    identical — to a fresh topic and waits for every delivery report. Then the real
//!    `Forwarder` (Unlimited policy) drains the store until it holds Kafka's acknowledgement
//!    of every record (its acknowledged position in `status()`, polled every 2 ms, as the
//!    plain run polls its delivery count); the time until `store.acked()` (the persisted
//!    position, written every `ack_interval` = 200 ms) reaches the end is printed beside it.
//!    Each side's first acknowledgement is timed too (the producer's start: connection and
//!    producer id), and a second ratio from each side's first acknowledgement to its last.
//!    The two alternate, `--rounds N` times (default 3; each ferry run drains its own class
//!    holding the same records, every run sends to its own topic), with one plain run more at
//!    the end, and the headline ratio comes from the summed times: on a shared machine one
//!    pair alone swings by ±25 %. CPU time (user+sys) of this process and of the broker is
//!    recorded per run.
//! 2. `throttle`: a `Configured` policy built the way `runtime::wiring::policy()` builds it,
//!    at 1 MiB/s, drains a backlog that cannot run dry; `ForwarderHandle::status().sent_bytes`
//!    (the bytes the throttle meters) is sampled every second.
//! 3. `rss-build` + `rss-drain`: a multi-GB backlog of 64 KiB JSON payloads is built by one
//!    process; a second, fresh process opens that store and drains it with the real forwarder
//!    while sampling its own VmRSS (and the broker's, to stay within memory) every second.

#[path = "common/telemetry.rs"]
mod telemetry_data;
use telemetry_data::telemetry;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::forward::deadletter::DeadLetters;
use ferry::forward::kafka::KafkaOptions;
use ferry::forward::mapping::{ClassMappingConfig, KafkaRecord, Mapper};
use ferry::forward::policy::{Configured, Policy, Unlimited};
use ferry::forward::{Forwarder, ForwarderHandle, ForwarderOptions, ForwarderReport};
use ferry::store::{ClassOptions, Overflow, Record, Store, StoreOptions};
use rdkafka::config::ClientConfig;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

const PARTITIONS: i32 = 3;
const GATEWAY: &str = "gw-bench";
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------------
// Arguments

struct Args {
    raw: Vec<String>,
}

impl Args {
    fn get(&self, name: &str) -> Option<String> {
        self.raw
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.raw.get(i + 1).cloned())
    }
    fn num(&self, name: &str, default: u64) -> u64 {
        self.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|e| panic!("{name} {v}: not a number: {e}"))
        })
    }
    fn f(&self, name: &str, default: f64) -> f64 {
        self.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|e| panic!("{name} {v}: not a number: {e}"))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Broker (a trimmed copy of tests/common/tansu.rs: benches cannot import tests/common)

fn tansu_bin() -> PathBuf {
    let path = match std::env::var_os("FERRY_TANSU") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".local/share/ferry-test/bin/tansu")
        }
    };
    assert!(
        path.is_file(),
        "the tansu broker is not installed at {}: run scripts/install-tansu.sh or set FERRY_TANSU",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Tansu {
    bin: PathBuf,
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Tansu {
    fn start() -> Tansu {
        let bin = tansu_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let t = Tansu {
            bin,
            port,
            child,
            _dir: dir,
        };
        let probe: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", t.bootstrap())
            .set("log_level", "0")
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while probe
            .client()
            .fetch_metadata(None, Duration::from_millis(1000))
            .is_err()
        {
            assert!(Instant::now() < deadline, "tansu did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        t
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(&self.bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let probe: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(md) = probe
                .client()
                .fetch_metadata(Some(name), Duration::from_secs(2))
            {
                if md.topics().iter().any(|t| {
                    t.name() == name
                        && t.error().is_none()
                        && t.partitions().len() == partitions as usize
                }) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "topic {name} did not appear");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring helpers

fn status_kb(pid: Option<u32>, field: &str) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) of this process, all threads.
fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Context switches (voluntary + involuntary) of this process, all threads: how often its
/// threads went to sleep and were woken (or were preempted).
fn self_csw() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    (ru.ru_nvcsw + ru.ru_nivcsw) as u64
}

/// CPU seconds (user + system) of another process, from /proc/PID/stat.
fn proc_cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after ')' + state.
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("FERRY_BENCH_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            tempfile::tempdir_in(d).unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    }
}

fn fmt_int(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Records, store, forwarder

fn open_store(dir: &Path) -> Store {
    open_store_classes(dir, &["telemetry"])
}

fn open_store_classes(dir: &Path, names: &[&str]) -> Store {
    let classes = names
        .iter()
        .map(|n| ClassOptions {
            name: n.to_string(),
            max_bytes: 64 << 30,
            max_age: None,
            overflow: Overflow::DropOldest,
        })
        .collect();
    let (store, _) = Store::open(StoreOptions::new(dir, classes)).unwrap();
    store
}

/// Appends records `gen(0..n)` in groups of 256 concurrent appends (one group commit each).
fn fill(store: &Store, n: u64, gen: impl Fn(u64) -> Record) -> f64 {
    fill_class(store, 0, n, gen)
}

fn fill_class(store: &Store, class: usize, n: u64, gen: impl Fn(u64) -> Record) -> f64 {
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(256);
        let tickets: Vec<_> = (i..i + k)
            .map(|j| store.append(class, gen(j)).unwrap())
            .collect();
        for t in tickets {
            t.wait().unwrap();
        }
        i += k;
    }
    t0.elapsed().as_secs_f64()
}

/// Topic per bench, key = the device's client id (so partitions and per-key order matter).
fn mapping(topic: &str) -> ClassMappingConfig {
    ClassMappingConfig {
        topic: topic.into(),
        key: Some("{client_id}".into()),
        rules: Vec::new(),
    }
}

/// The producer options both ferry and the plain producer use: production defaults, plus the
/// diagnostic knobs `FERRY_BENCH_LINGER_MS=N` and `FERRY_BENCH_KAFKA="key=value,key=value"`
/// (librdkafka passthrough properties, e.g. `batch.size=262144`).
fn kafka_opts(bootstrap: &str) -> KafkaOptions {
    let mut k = KafkaOptions::new(bootstrap);
    if let Some(ms) = std::env::var("FERRY_BENCH_LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        k.linger_ms = ms;
    }
    if let Ok(props) = std::env::var("FERRY_BENCH_KAFKA") {
        for kv in props.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = kv.split_once('=').expect("FERRY_BENCH_KAFKA: key=value");
            k.properties.insert(key.trim().into(), value.trim().into());
        }
    }
    k
}

fn forwarder_opts(bootstrap: &str, topic: &str) -> ForwarderOptions {
    // Production defaults (linger 5 ms, zstd, 16 MiB in flight, 1000-record batches).
    let mut o = ForwarderOptions::new(GATEWAY, kafka_opts(bootstrap));
    o.mappings = vec![("telemetry".into(), mapping(topic))];
    o
}

struct Running {
    handle: ForwarderHandle,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ForwarderReport>,
}

fn spawn_forwarder(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    dir: &Path,
    opts: ForwarderOptions,
    policy: Box<dyn Policy>,
) -> Running {
    spawn_forwarder_paused(rt, store, dir, opts, policy, &[])
}

/// As [`spawn_forwarder`], with `paused` classes paused before the forwarder starts (the
/// variant runs share one store; each drains only its own class).
fn spawn_forwarder_paused(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    dir: &Path,
    opts: ForwarderOptions,
    policy: Box<dyn Policy>,
    paused: &[&str],
) -> Running {
    let _guard = rt.enter();
    let dl = DeadLetters::open(dir).unwrap();
    let (fwd, handle) = Forwarder::new(store.clone(), dl, opts, policy).unwrap();
    for p in paused {
        handle.pause(Some(p)).unwrap();
    }
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(fwd.run(async move {
        let _ = rx.await;
    }));
    Running { handle, stop, task }
}

impl Running {
    fn stop(self, rt: &tokio::runtime::Runtime) -> ForwarderReport {
        let _ = self.stop.send(());
        rt.block_on(self.task).unwrap()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // The daemon's runtime on a 2-core gateway.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The plain producer

struct Counting {
    ok: AtomicU64,
    failed: AtomicU64,
    tx_bytes: AtomicI64,
}

struct Ctx(Arc<Counting>);

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        self.0.tx_bytes.store(s.tx_bytes, Ordering::Relaxed);
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

struct PlainRun {
    secs: f64,
    /// Until the first delivery report.
    first_ack: f64,
    /// Records queued in librdkafka by then.
    queued_at_first_ack: u64,
    csw: u64,
    cpu: f64,
    broker_cpu: f64,
    failed: u64,
    net_bytes: i64,
}

/// Sends every record with a bare `ThreadedProducer` and waits for all delivery reports.
fn plain_run(bootstrap: &str, broker_pid: u32, recs: &[KafkaRecord]) -> PlainRun {
    let mut cfg = kafka_opts(bootstrap).client_config().unwrap();
    cfg.set("client.id", "plain-bench")
        .set("statistics.interval.ms", "500");
    let ctx = Arc::new(Counting {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        tx_bytes: AtomicI64::new(0),
    });
    let p: ThreadedProducer<Ctx> = cfg.create_with_context(Ctx(ctx.clone())).unwrap();
    let threads0 = thread_stats();
    let (cpu0, bcpu0, csw0) = (self_cpu(), proc_cpu(broker_pid), self_csw());
    let t0 = Instant::now();
    // When the first delivery report came (the producer's start: connection, producer id),
    // and how many records had been queued by then; sampled every 2 ms like the end.
    // `queued` is its own allocation, written every 1,024 sends: a counter beside `ok` (which
    // the poll thread bumps per report), bumped per send, would bounce a cache line between
    // the two threads on every record.
    let queued = Arc::new(AtomicU64::new(0));
    let first_ack_sampler = {
        let (ctx, queued) = (ctx.clone(), queued.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(2));
            if ctx.ok.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) > 0 {
                return (t0.elapsed().as_secs_f64(), queued.load(Ordering::Relaxed));
            }
        })
    };
    // Diagnostic: `FERRY_BENCH_PLAIN_WINDOW=N` keeps at most N records unreported, like
    // ferry's in-flight record cap (default: no window, the whole backlog queued at once).
    let window: Option<u64> = std::env::var("FERRY_BENCH_PLAIN_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok());
    for (sent, r) in recs.iter().enumerate() {
        if let Some(w) = window {
            while sent as u64
                - (ctx.ok.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed))
                >= w
            {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(&v[..]),
                });
            }
            let mut br = BaseRecord::to(&r.topic)
                .payload(&r.payload[..])
                .timestamp(r.timestamp_ms)
                .headers(headers);
            if let Some(k) = &r.key {
                br = br.key(k.as_str());
            }
            match p.send(br) {
                Ok(()) => {
                    if sent % 1024 == 1023 {
                        queued.store(sent as u64 + 1, Ordering::Relaxed);
                    }
                    break;
                }
                Err((e, _)) => {
                    assert_eq!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        "plain producer send: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    let n = recs.len() as u64;
    while ctx.ok.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < n {
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = t0.elapsed().as_secs_f64();
    let (first_ack, queued_at_first_ack) = first_ack_sampler.join().unwrap();
    let (cpu, broker_cpu) = (self_cpu() - cpu0, proc_cpu(broker_pid) - bcpu0);
    let csw = self_csw() - csw0;
    print_thread_stats("plain", &threads0, &thread_stats(), recs.len() as u64);
    // One more statistics interval, so tx_bytes covers the whole run.
    std::thread::sleep(Duration::from_millis(1200));
    PlainRun {
        secs,
        first_ack,
        queued_at_first_ack,
        csw,
        cpu,
        broker_cpu,
        failed: ctx.failed.load(Ordering::Relaxed),
        net_bytes: ctx.tx_bytes.load(Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------------------------
// Part 1: drain rate vs. plain producer

fn part_drain(args: &Args) {
    let n = args.num("--messages", 1_000_000);
    if args.raw.iter().any(|a| a == "--ferry-only") {
        return ferry_only(n);
    }
    // Diagnostic runs of the same forwarder with a larger in-flight limit (ForwarderOptions
    // only; src/ unchanged), each on its own class holding the same records.
    // (name, max_in_flight_bytes, max_in_flight_records); the defaults are 16 MiB / 10,000.
    let variants: Vec<(&str, usize, usize)> = if args.raw.iter().any(|a| a == "--no-variants") {
        Vec::new()
    } else {
        vec![
            ("window50k", 16 << 20, 50_000),
            ("window64m", 64 << 20, 200_000),
        ]
    };
    // ferry and the plain producer alternate: plain, ferry, plain, ferry, ..., plain, with
    // `--rounds` ferry runs (default 3), each draining its own class of the same records to
    // its own topic, and one plain run more, each to its own topic. The headline ratio is
    // taken from the summed times: on this shared VM one pair alone swings by ±25 %.
    let rounds = args.num("--rounds", 3).max(1) as usize;
    let broker = Tansu::start();
    let mut class_names: Vec<String> = vec!["telemetry".into()];
    // Class names as long as "telemetry": the `ferry.class` and `ferry.seq` headers carry
    // them, so every run sends records of the same size.
    class_names.extend((2..=rounds).map(|r| format!("round{r:04}")));
    class_names.extend(variants.iter().map(|(v, _, _)| v.to_string()));
    let names: Vec<&str> = class_names.iter().map(String::as_str).collect();
    let ferry_topic = |c: &str| {
        if c == "telemetry" {
            "ferry.telemetry".to_string()
        } else {
            format!("ferry.{c}")
        }
    };
    let plain_topic = |k: usize| {
        if k == 1 {
            "plain.telemetry".to_string()
        } else {
            format!("plain{k}.telemetry")
        }
    };
    for c in &names {
        broker.create_topic(&ferry_topic(c), PARTITIONS);
    }
    for k in 1..=rounds + 1 {
        broker.create_topic(&plain_topic(k), PARTITIONS);
    }
    let dir = bench_dir();
    let store = open_store_classes(dir.path(), &names);
    let build_secs = fill(&store, n, telemetry);
    for i in 1..names.len() {
        fill_class(&store, i, n, telemetry);
    }
    let st = store.stats().remove(0);
    eprintln!(
        "drain: built {} records per class ({:.1} MB logical, {:.1} MB on disk) in {build_secs:.1} s, {} classes",
        st.records,
        st.logical_bytes as f64 / 1e6,
        st.disk_bytes as f64 / 1e6,
        names.len()
    );

    // The plain producer's records: the same stored records through ferry's own mapping, read
    // and mapped before its clock starts. Timing the same read + map alone shows what that
    // costs ferry per record (ferry does it on its one forwarder task, between sends).
    let mapper = Mapper::new(GATEWAY, &[("telemetry".into(), mapping(&plain_topic(1)))]).unwrap();
    let mut recs: Vec<KafkaRecord> = Vec::with_capacity(n as usize);
    let mut reader = store.reader(0, 1).unwrap();
    let t0 = Instant::now();
    let mut read_secs = 0.0;
    loop {
        let tr = Instant::now();
        let batch = reader.read_batch(1000, 1 << 20).unwrap();
        read_secs += tr.elapsed().as_secs_f64();
        if batch.is_empty() {
            break;
        }
        for s in &batch {
            recs.push(mapper.map(0, s).unwrap());
        }
    }
    let read_map_secs = t0.elapsed().as_secs_f64();
    assert_eq!(recs.len() as u64, n);
    let payload_bytes: u64 = recs.iter().map(|r| r.payload.len() as u64).sum();
    let wire_bytes: u64 = recs.iter().map(|r| r.wire_size() as u64).sum();
    eprintln!("drain: read+map {n} records in {read_map_secs:.2} s (read {read_secs:.2} s)");

    let rt = runtime();
    // Every class mapped to its own topic (only the unpaused one sends).
    let class_opts = || {
        let mut o = forwarder_opts(&broker.bootstrap(), "ferry.telemetry");
        o.mappings = names
            .iter()
            .map(|c| (c.to_string(), mapping(&ferry_topic(c))))
            .collect();
        o
    };
    // One drain of class `class` by a fresh forwarder with every other class paused.
    let drain = |class: usize, opts: ForwarderOptions| -> FerryRun {
        let others: Vec<&str> = names
            .iter()
            .copied()
            .filter(|c| *c != names[class])
            .collect();
        let (cpu0, bcpu0, csw0) = (self_cpu(), proc_cpu(broker.pid()), self_csw());
        let t0 = Instant::now();
        let fwd =
            spawn_forwarder_paused(&rt, &store, dir.path(), opts, Box::new(Unlimited), &others);
        // Done when the forwarder holds Kafka's acknowledgement of every record (its
        // in-memory acknowledged position, published after every step), polled every 2 ms
        // like the plain producer's delivery count. The store's persisted position follows
        // at the next `ack_interval` tick (200 ms); timing that instead rounded every ferry
        // run up to the tick (the times came in 0.2 s steps), so it is reported apart.
        let (mut peak, mut sum, mut samples) = (0u64, 0u64, 0u64);
        let mut first_ack: Option<f64> = None;
        loop {
            std::thread::sleep(Duration::from_millis(2));
            let st = fwd.handle.status();
            if first_ack.is_none() && st.classes[class].acked_seq > 0 {
                first_ack = Some(t0.elapsed().as_secs_f64());
            }
            peak = peak.max(st.in_flight_bytes);
            sum += st.in_flight_bytes;
            samples += 1;
            if st.classes[class].acked_seq >= n {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(600), "ferry drain stuck");
        }
        let secs = t0.elapsed().as_secs_f64();
        let (cpu, broker_cpu) = (self_cpu() - cpu0, proc_cpu(broker.pid()) - bcpu0);
        let csw = self_csw() - csw0;
        while store.acked(class).seq < n {
            std::thread::sleep(Duration::from_millis(1));
            assert!(t0.elapsed() < Duration::from_secs(600), "ack not persisted");
        }
        let persisted_secs = t0.elapsed().as_secs_f64();
        let report = fwd.stop(&rt);
        FerryRun {
            secs,
            persisted_secs,
            first_ack: first_ack.unwrap_or(0.0),
            cpu,
            broker_cpu,
            csw,
            peak,
            mean: sum as f64 / samples.max(1) as f64,
            status: report.status,
        }
    };

    let mut plains = Vec::new();
    let mut ferries = Vec::new();
    for k in 1..=rounds + 1 {
        for r in recs.iter_mut() {
            r.topic = plain_topic(k).into();
        }
        let p = plain_run(&broker.bootstrap(), broker.pid(), &recs);
        eprintln!(
            "drain: plain #{k} {:.2} s first ack {:.3} s",
            p.secs, p.first_ack
        );
        plains.push(p);
        if k <= rounds {
            let f = drain(k - 1, class_opts());
            eprintln!(
                "drain: ferry #{k} {:.2} s (position persisted at {:.2} s) first ack {:.3} s",
                f.secs, f.persisted_secs, f.first_ack
            );
            ferries.push(f);
        }
    }
    drop(recs);

    let mut variant_rows = Vec::new();
    for (i, (v, limit, records)) in variants.iter().enumerate() {
        let mut o = class_opts();
        o.max_in_flight_bytes = *limit;
        o.max_in_flight_records = *records;
        let f = drain(rounds + i, o);
        eprintln!("drain: ferry {v} {:.2} s", f.secs);
        variant_rows.push((*v, *limit, *records, f));
    }

    let rate = |secs: f64| n as f64 / secs;
    println!(
        "\n### Drain rate: {} records, {PARTITIONS} partitions, zstd, acks=all, idempotent, linger {} ms\n",
        fmt_int(n),
        kafka_opts("-").linger_ms
    );
    println!(
        "Backlog: {} records, payload {:.1} MB (avg {:.0} B), record bytes (payload + key + headers, what ferry meters) {:.1} MB; store {:.1} MB on disk, built in {build_secs:.1} s.\n",
        fmt_int(n),
        payload_bytes as f64 / 1e6,
        payload_bytes as f64 / n as f64,
        wire_bytes as f64 / 1e6,
        st.disk_bytes as f64 / 1e6
    );
    println!("| run | seconds | first ack (s) | msg/s | payload MB/s | record MB/s | network MB/s (zstd, librdkafka tx_bytes) | CPU s (bench process) | CPU µs/record (bench process) | context switches per 1000 records (bench process) | CPU s (broker) | failed |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let row = |name: &str,
               secs: f64,
               first_ack: f64,
               cpu: f64,
               bcpu: f64,
               csw: u64,
               net: Option<i64>,
               failed: u64| {
        println!(
            "| {name} | {secs:.2} | {first_ack:.2} | {} | {:.1} | {:.1} | {} | {cpu:.1} | {:.2} | {:.0} | {bcpu:.1} | {failed} |",
            fmt_int(rate(secs) as u64),
            payload_bytes as f64 / 1e6 / secs,
            wire_bytes as f64 / 1e6 / secs,
            net.map_or("—".to_string(), |b| format!("{:.1}", b as f64 / 1e6 / secs)),
            cpu * 1e6 / n as f64,
            csw as f64 * 1000.0 / n as f64,
        )
    };
    let ferry_row = |name: &str, f: &FerryRun| {
        row(
            name,
            f.secs,
            f.first_ack,
            f.cpu,
            f.broker_cpu,
            f.csw,
            None,
            f.status.dead_lettered,
        )
    };
    for (k, p) in plains.iter().enumerate() {
        row(
            &format!("plain rdkafka producer #{}", k + 1),
            p.secs,
            p.first_ack,
            p.cpu,
            p.broker_cpu,
            p.csw,
            Some(p.net_bytes),
            p.failed,
        );
        if let Some(f) = ferries.get(k) {
            ferry_row(
                &format!(
                    "**ferry forwarder #{}** (store → Kafka, until acked; position persisted at {:.2} s)",
                    k + 1,
                    f.persisted_secs
                ),
                f,
            );
        }
    }
    for (v, limit, records, f) in &variant_rows {
        ferry_row(
            &format!(
                "ferry, max_in_flight_bytes = {} MiB, max_in_flight_records = {records} (diagnostic `{v}`; peak in flight {:.1} MiB)",
                limit >> 20,
                f.peak as f64 / MIB
            ),
            f,
        );
    }
    let plain_mean = plains.iter().map(|p| p.secs).sum::<f64>() / plains.len() as f64;
    let ferry_mean = ferries.iter().map(|f| f.secs).sum::<f64>() / ferries.len() as f64;
    // Each ferry run against the two plain runs around it.
    let per_round: Vec<String> = ferries
        .iter()
        .enumerate()
        .map(|(k, f)| {
            format!(
                "{:.2}",
                (plains[k].secs + plains[k + 1].secs) / 2.0 / f.secs
            )
        })
        .collect();
    let persisted_mean =
        ferries.iter().map(|f| f.persisted_secs).sum::<f64>() / ferries.len() as f64;
    println!(
        "\nferry / plain: **{:.2}x** from the summed times of {} ferry and {} plain runs, alternating (goal ≥ 0.8x); each ferry run against the plain runs either side: {}. \
         Timed instead until ferry's acknowledged position was persisted (the next 200 ms `ack_interval` tick): {:.2}x.",
        plain_mean / ferry_mean,
        ferries.len(),
        plains.len(),
        per_round.join(", "),
        plain_mean / persisted_mean
    );
    // The same runs from each side's first acknowledgement to its last: the producer's start
    // left out. Not like for like either: while the plain producer waited for its start it
    // queued records in librdkafka (all of them, given time), ferry keeps at most its
    // in-flight window unacknowledged.
    let plain_steady = plains.iter().map(|p| p.secs - p.first_ack).sum::<f64>();
    let ferry_steady = ferries.iter().map(|f| f.secs - f.first_ack).sum::<f64>();
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "\nFirst acknowledgement (the producer's start: connection and producer id) after {:.2} s for the plain producer, {:.2} s for ferry (means). \
         From each side's first acknowledgement to its last: plain {} msg/s, ferry {} msg/s = **{:.2}x** — not like for like either: by its first acknowledgement \
         the plain producer had already queued {} of the {} records in librdkafka, ferry keeps at most {} unacknowledged.",
        mean(plains.iter().map(|p| p.first_ack).collect()),
        mean(ferries.iter().map(|f| f.first_ack).collect()),
        fmt_int((n as f64 * plains.len() as f64 / plain_steady) as u64),
        fmt_int((n as f64 * ferries.len() as f64 / ferry_steady) as u64),
        (plain_steady / plains.len() as f64) / (ferry_steady / ferries.len() as f64),
        fmt_int(mean(plains.iter().map(|p| p.queued_at_first_ack as f64).collect()) as u64),
        fmt_int(n),
        fmt_int(ForwarderOptions::new(GATEWAY, kafka_opts("-")).max_in_flight_records as u64),
    );
    let s = &ferries[0].status;
    println!(
        "\nferry details (run #1): sent {} records ({} re-sent), sent_bytes {:.1} MB, acked {}, producer resets {}, in flight (2 ms samples) mean {:.1} MiB / peak {:.1} MiB of the 16 MiB limit; \
         read+map alone (one thread, same store, page cache warm): {:.2} s = {:.2} µs/record (store read {:.2} s of it).",
        fmt_int(s.sent_records),
        fmt_int(s.resent_records),
        s.sent_bytes as f64 / 1e6,
        fmt_int(s.acked_records),
        s.producer_resets,
        ferries[0].mean / MIB,
        ferries[0].peak as f64 / MIB,
        read_map_secs,
        read_map_secs * 1e6 / n as f64,
        read_secs
    );
    store.close().unwrap();
}

/// One ferry drain of `--part drain`.
struct FerryRun {
    /// Until the forwarder held Kafka's acknowledgement of every record.
    secs: f64,
    /// Until the store's acknowledged position was persisted (the next `ack_interval` tick).
    persisted_secs: f64,
    /// Until the first acknowledgement (the producer's start: connection, producer id).
    first_ack: f64,
    cpu: f64,
    broker_cpu: f64,
    csw: u64,
    /// In-flight bytes (2 ms samples): peak and mean.
    peak: u64,
    mean: f64,
    status: ferry::forward::ForwarderStatus,
}

/// Only the forwarder's drain, for profiling (`perf record ... --part drain --ferry-only`):
/// the threads are then the forwarder's (tokio workers), librdkafka's and the store's. Prints
/// the mean records in flight (2 ms samples) and, by Little's law, the mean time from send to
/// acknowledgement, plus CPU and context switches per thread name (the plain producer runs of
/// `--part drain` print the same per-thread lines). `FERRY_BENCH_MAX_IN_FLIGHT=N` sets the
/// record cap (and at least N KiB of byte cap) for a diagnostic run.
fn ferry_only(n: u64) {
    // Diagnostic: `FERRY_BENCH_TRACE=1` logs ferry's tracing and librdkafka's log to stderr
    // (librdkafka's debug contexts via `FERRY_BENCH_KAFKA=debug=all`).
    if std::env::var("FERRY_BENCH_TRACE").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("ferry=debug,librdkafka=debug")
            .with_writer(std::io::stderr)
            .try_init();
    }
    let broker = Tansu::start();
    broker.create_topic("ferry.telemetry", PARTITIONS);
    let dir = bench_dir();
    let store = open_store(dir.path());
    fill(&store, n, telemetry);
    let rt = runtime();
    let mut opts = forwarder_opts(&broker.bootstrap(), "ferry.telemetry");
    // Diagnostic knob: `FERRY_BENCH_MAX_IN_FLIGHT=records` (default: the production 10,000).
    if let Some(r) = std::env::var("FERRY_BENCH_MAX_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.max_in_flight_records = r;
        opts.max_in_flight_bytes = opts.max_in_flight_bytes.max(r * 1024);
    }
    let threads0 = thread_stats();
    let (cpu0, csw0, t0) = (self_cpu(), self_csw(), Instant::now());
    let fwd = spawn_forwarder(&rt, &store, dir.path(), opts, Box::new(Unlimited));
    let (mut sum_inflight, mut samples) = (0u64, 0u64);
    let mut timeline: Vec<(f64, u64, u64)> = Vec::new();
    // Until Kafka acknowledged every record (see `part_drain`'s `drain`).
    loop {
        std::thread::sleep(Duration::from_millis(2));
        let st = fwd.handle.status();
        sum_inflight += st.classes[0].in_flight_records;
        samples += 1;
        timeline.push((
            t0.elapsed().as_secs_f64(),
            st.classes[0].acked_seq,
            st.classes[0].sent_records,
        ));
        if st.classes[0].acked_seq >= n {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = self_cpu() - cpu0;
    let csw = self_csw() - csw0;
    let threads1 = thread_stats();
    // Diagnostic: `FERRY_BENCH_TIMELINE=1` prints when the first record was sent and the
    // first acknowledged, the rate from there on, every gap of > 30 ms without progress, and
    // acked/sent every ~100 ms (how the 0.5 s / 1.0 s producer-id wait was found).
    if std::env::var("FERRY_BENCH_TIMELINE").is_ok() {
        let mut last = (0.0, 0u64);
        for (t, a, s) in &timeline {
            if *a != last.1 {
                if t - last.0 > 0.03 {
                    eprintln!(
                        "stall: no ack progress {:.0} ms from {:.3} s at acked {} (sent {s})",
                        (t - last.0) * 1e3,
                        last.0,
                        last.1
                    );
                }
                last = (*t, *a);
            }
        }
        let first = timeline.iter().find(|x| x.2 > 0).map_or(0.0, |x| x.0);
        let (first_ack, a0) = timeline
            .iter()
            .find(|x| x.1 > 0)
            .map_or((0.0, 0), |x| (x.0, x.1));
        eprintln!("first sent at {first:.3} s, first ack at {first_ack:.3} s");
        let last = timeline.last().map_or(0.0, |x| x.0);
        eprintln!(
            "steady: {:.0} msg/s from first ack to the end",
            (n - a0) as f64 / (last - first_ack)
        );
        for w in timeline.chunks(50) {
            let (t, a, s) = w[w.len() - 1];
            eprint!("{t:.2}:{}k/{}k ", a / 1000, s / 1000);
        }
        eprintln!();
    }

    fwd.stop(&rt);
    let mean_inflight = sum_inflight as f64 / samples.max(1) as f64;
    let rate = n as f64 / secs;
    println!(
        "ferry only: {n} records in {secs:.2} s = {rate:.0} msg/s, CPU {cpu:.2} s = {:.2} µs/record, {:.0} context switches per 1000 records; in flight mean {mean_inflight:.0} records => {:.1} ms per record (Little)",
        cpu * 1e6 / n as f64,
        csw as f64 * 1000.0 / n as f64,
        mean_inflight / rate * 1e3
    );
    print_thread_stats("ferry", &threads0, &threads1, n);
    store.close().unwrap();
}

type ThreadStats = std::collections::HashMap<u32, (String, f64, u64)>;

/// Per thread name: CPU s and context switches between two [`thread_stats`] samples (threads
/// that ended in between are missing).
fn print_thread_stats(who: &str, before: &ThreadStats, after: &ThreadStats, n: u64) {
    let mut by_name: std::collections::BTreeMap<String, (f64, u64)> = Default::default();
    for (tid, (name, c1, s1)) in after {
        let (c0, s0) = before.get(tid).map_or((0.0, 0), |(_, c, s)| (*c, *s));
        let e = by_name.entry(name.clone()).or_default();
        e.0 += c1 - c0;
        e.1 += s1 - s0;
    }
    for (name, (c, s)) in by_name {
        if c > 0.01 || s > 100 {
            eprintln!(
                "  {who} thread {name:<16} CPU {c:.2} s = {:.2} µs/record, {:.1} context switches / 1000 records",
                c * 1e6 / n as f64,
                s as f64 * 1000.0 / n as f64
            );
        }
    }
}

/// tid -> (name, CPU s, context switches) of every live thread of this process.
fn thread_stats() -> ThreadStats {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let base = e.path();
        let name = std::fs::read_to_string(base.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let stat = std::fs::read_to_string(base.join("stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let status = std::fs::read_to_string(base.join("status")).unwrap_or_default();
        let csw: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(tid, (name, ticks / 100.0, csw));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Part 2: throttle accuracy

fn part_throttle(args: &Args) {
    use ferry::forward::clock::{Clock, SystemClock};
    use ferry::forward::schedule::{ClassPolicy, Scheduler};
    use ferry::forward::throttle::{Rate, Throttle, ThrottleConfig, Throttles};
    use ferry::forward::window::{Schedule, Windows};

    let secs = args.num("--throttle-secs", 60);
    let warmup = 5u64;
    let rate_bps: u64 = 1 << 20;
    // Enough backlog that the class never runs dry: ~380 record bytes per record.
    let n = ((secs + warmup + 10) * rate_bps / 300).max(10_000);
    let broker = Tansu::start();
    broker.create_topic("ferry.telemetry", PARTITIONS);
    let dir = bench_dir();
    let store = open_store(dir.path());
    fill(&store, n, telemetry);

    // As runtime::wiring::policy() builds it for `[forward] rate = "1MiB/s"`, windows
    // `always`, one class.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::local());
    let now = clock.now();
    let throttles = Throttles::new(
        Throttle::new(ThrottleConfig::rate(Rate::BytesPerSec(rate_bps)), &now),
        vec![None],
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
    let rt = runtime();
    let t0 = Instant::now();
    let fwd = spawn_forwarder(
        &rt,
        &store,
        dir.path(),
        forwarder_opts(&broker.bootstrap(), "ferry.telemetry"),
        Box::new(policy),
    );
    // Sample on a fixed 1 s grid from the start.
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    for k in 1..=(warmup + secs) {
        let at = t0 + Duration::from_secs(k);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let st = fwd.handle.status();
        samples.push((t0.elapsed().as_secs_f64(), st.sent_bytes, st.acked_bytes));
    }
    let report = fwd.stop(&rt);
    let total_acked = report.status.acked_records;
    assert!(
        total_acked < n,
        "the backlog ran dry: the throttle figure would be meaningless"
    );
    let w = warmup as usize;
    let (ta, sa, aa) = samples[w - 1];
    let (tb, sb, ab) = *samples.last().unwrap();
    let steady = (sb - sa) as f64 / (tb - ta);
    let steady_acked = (ab - aa) as f64 / (tb - ta);
    let per_sec: Vec<f64> = samples
        .windows(2)
        .skip(w - 1)
        .map(|p| (p[1].1 - p[0].1) as f64 / (p[1].0 - p[0].0))
        .collect();
    let min = per_sec.iter().cloned().fold(f64::MAX, f64::min);
    let max = per_sec.iter().cloned().fold(0.0, f64::max);
    let (t_first, s_first, _) = samples[0];
    let whole = sb as f64 / tb;
    let err = |v: f64| (v / rate_bps as f64 - 1.0) * 100.0;
    println!("\n### Throttle accuracy: `Configured` policy at 1 MiB/s, {secs} s steady (after {warmup} s warm-up)\n");
    println!("| measure | bytes/s | error vs 1 MiB/s |");
    println!("|---|---|---|");
    println!(
        "| **sent_bytes, steady {secs} s** (t = {ta:.1} .. {tb:.1} s) | {steady:.0} | **{:+.2} %** |",
        err(steady)
    );
    println!(
        "| acked bytes, same interval | {steady_acked:.0} | {:+.2} % |",
        err(steady_acked)
    );
    println!(
        "| sent_bytes, whole run from start (includes the initial burst) | {whole:.0} | {:+.2} % |",
        err(whole)
    );
    println!(
        "| first second (burst: {:.0} bytes by t = {t_first:.2} s) | — | — |",
        s_first as f64
    );
    println!(
        "| per-second samples in the steady interval: min / max | {min:.0} / {max:.0} | {:+.1} % / {:+.1} % |",
        err(min),
        err(max)
    );
    println!(
        "\nBacklog {} records, {} delivered during the run (never ran dry).",
        fmt_int(n),
        fmt_int(total_acked)
    );
    store.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Part 3: RSS during the drain of a large backlog

const BIG_PAYLOAD: usize = 64 << 10;
const POOL: usize = 256;

/// A pool of distinct ~64 KiB JSON payloads (batches of sensor samples with pseudo-random
/// values, so zstd gets a realistic ratio, not a run of identical bytes).
fn payload_pool() -> Vec<Bytes> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..POOL)
        .map(|p| {
            let mut v = Vec::with_capacity(BIG_PAYLOAD + 128);
            write!(v, "{{\"device\":\"plc-{:04}\",\"samples\":[", p).unwrap();
            let mut t = 1_763_000_000_000u64 + p as u64 * 1000;
            while v.len() < BIG_PAYLOAD - 64 {
                let r = next();
                t += 10 + r % 7;
                write!(
                    v,
                    "{{\"t\":{t},\"temp\":{}.{:02},\"kpa\":{}.{},\"rpm\":{}}},",
                    15 + r % 40,
                    (r >> 8) % 100,
                    95 + (r >> 16) % 20,
                    (r >> 24) % 10,
                    1200 + (r >> 32) % 600
                )
                .unwrap();
            }
            v.pop();
            v.extend_from_slice(b"]}");
            Bytes::from(v)
        })
        .collect()
}

fn big(pool: &[Bytes], i: u64) -> Record {
    Record {
        timestamp_ms: 1_763_000_000_000 + i * 10,
        topic: format!("site/hall{}/line{}/plc-{:04}/batch", i % 3, i % 12, i % 500),
        qos: 1,
        retain: false,
        client_id: format!("plc-{:04}", i % 500),
        user_properties: vec![],
        content_type: None,
        payload: pool[(i % POOL as u64) as usize].clone(),
    }
}

fn part_rss_build(args: &Args) {
    let dir = PathBuf::from(args.get("--dir").expect("--dir"));
    let gb = args.f("--rss-gb", 10.0);
    let n = (gb * 1e9 / BIG_PAYLOAD as f64).ceil() as u64;
    let pool = payload_pool();
    let store = open_store(&dir);
    let secs = fill(&store, n, |i| big(&pool, i));
    let st = store.stats().remove(0);
    store.close().unwrap();
    println!(
        "\nBacklog: {} records of {} KiB JSON: {:.2} GB logical, {:.2} GB on disk (store zstd level {}), {} segments, built in {secs:.0} s ({:.0} MB/s).",
        fmt_int(st.records),
        BIG_PAYLOAD >> 10,
        st.logical_bytes as f64 / 1e9,
        st.disk_bytes as f64 / 1e9,
        StoreOptions::new(&dir, vec![]).compression_level,
        st.segments,
        st.logical_bytes as f64 / 1e6 / secs
    );
}

fn part_rss_drain(args: &Args) {
    let dir = PathBuf::from(args.get("--dir").expect("--dir"));
    let limit = Duration::from_secs(args.num("--rss-secs", 240));
    let broker_limit_kb = args.num("--broker-max-gb", 7) << 20;
    let inflight_mib = args.num("--inflight-mib", 16);
    let broker = Tansu::start();
    broker.create_topic("ferry.bulk", PARTITIONS);
    let rss_open0 = status_kb(None, "VmRSS:");
    let store = open_store(&dir);
    let end = store.stats().remove(0);
    let rt = runtime();
    let rss_start = status_kb(None, "VmRSS:");
    let t0 = Instant::now();
    let mut opts = forwarder_opts(&broker.bootstrap(), "ferry.bulk");
    opts.max_in_flight_bytes = (inflight_mib as usize) << 20;
    let fwd = spawn_forwarder(&rt, &store, &dir, opts, Box::new(Unlimited));
    let mut samples: Vec<(f64, u64, u64, u64)> = Vec::new(); // t, rss KiB, acked logical, broker KiB
    let why;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let rss = status_kb(None, "VmRSS:");
        let acked = store.acked(0);
        let b = status_kb(Some(broker.pid()), "VmRSS:");
        samples.push((t0.elapsed().as_secs_f64(), rss, acked.logical_end, b));
        if acked.seq >= end.newest_seq {
            why = "the whole backlog was drained";
            break;
        }
        if t0.elapsed() >= limit {
            why = "the time limit was reached";
            break;
        }
        if b >= broker_limit_kb {
            why = "the broker's memory reached its limit";
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let report = fwd.stop(&rt);
    let rss_end = status_kb(None, "VmRSS:");
    let hwm = status_kb(None, "VmHWM:");
    let acked = store.acked(0);
    store.close().unwrap();
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let after10: Vec<u64> = samples
        .iter()
        .filter(|s| s.0 >= 10.0)
        .map(|s| s.1)
        .collect();
    let after10 = if after10.is_empty() {
        "— (drain shorter than 10 s)".to_string()
    } else {
        format!(
            "{:.1} / {:.1} MiB",
            *after10.iter().min().unwrap_or(&0) as f64 / 1024.0,
            *after10.iter().max().unwrap_or(&0) as f64 / 1024.0
        )
    };
    let broker_peak = samples.iter().map(|s| s.3).max().unwrap_or(0);
    let drained = acked.logical_end as f64 / 1e9;
    println!(
        "\nDrain by a fresh process, Unlimited policy, zstd, `max_in_flight_bytes` = {inflight_mib} MiB{}:",
        if inflight_mib == 16 { " (the default)" } else { " (diagnostic: how RSS scales with the in-flight limit)" }
    );
    println!(
        "\n| measure | value | goal |\n|---|---|---|\n\
         | RSS before opening the store / after opening it and creating the runtime | {:.1} / {:.1} MiB | — |\n\
         | RSS during the drain: peak (1 s samples) / kernel high-water mark VmHWM | **{:.1} MiB** / {:.1} MiB | ≤ 64 MB |\n\
         | RSS from 10 s on: min / max | {after10} | flat |\n\
         | RSS at the end (forwarder stopped) | {:.1} MiB | — |\n\
         | drained (acked logical bytes) | **{drained:.2} GB** of {:.2} GB ({} of {} records) in {secs:.0} s, {:.0} MB/s — stopped because {why} | 10 GB |\n\
         | broker (tansu, memory storage) RSS peak | {:.2} GiB | — |",
        rss_open0 as f64 / 1024.0,
        rss_start as f64 / 1024.0,
        peak as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        end.logical_bytes as f64 / 1e9,
        fmt_int(acked.seq),
        fmt_int(end.newest_seq),
        drained * 1e3 / secs,
        broker_peak as f64 / (1024.0 * 1024.0),
    );
    let series: Vec<String> = samples
        .iter()
        .step_by((samples.len() / 12).max(1))
        .map(|s| {
            format!(
                "{:.0}s {:.1} MiB / {:.2} GB",
                s.0,
                s.1 as f64 / 1024.0,
                s.2 as f64 / 1e9
            )
        })
        .collect();
    println!("\nRSS / drained over time: {}.", series.join(", "));
    println!(
        "ferry: sent {} records, re-sent {}, producer resets {}, stalls {}.",
        fmt_int(report.status.sent_records),
        fmt_int(report.status.resent_records),
        report.status.producer_resets,
        report.status.stalls
    );
}

// ---------------------------------------------------------------------------------------------

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn child(part: &str, extra: &[String]) {
    let exe = std::env::current_exe().unwrap();
    let status = Command::new(exe)
        .args(["--part", part])
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "part {part} failed: {status}");
}

fn main() {
    // The same allocator as `ferry run`: the library declares it (jemalloc, serving librdkafka
    // too), so the plain producer and ferry share it in every part.
    let args = Args {
        raw: std::env::args().collect(),
    };
    match args.get("--part").as_deref() {
        Some("drain") => return part_drain(&args),
        Some("throttle") => return part_throttle(&args),
        Some("rss-build") => return part_rss_build(&args),
        Some("rss-drain") => return part_rss_drain(&args),
        Some(p) => panic!("unknown --part {p}"),
        None => {}
    }
    // Pass the user's options on to every part.
    let extra: Vec<String> = args.raw[1..]
        .iter()
        .filter(|a| *a != "--bench")
        .cloned()
        .collect();
    let only = args.get("--only");
    let run = |p: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == p));
    println!("## Forwarder benchmark run\n");
    println!("- date: {}", sh("date -u '+%Y-%m-%d %H:%M:%S UTC'"));
    println!(
        "- machine: {} cores, {}",
        sh("nproc"),
        sh("free -g | awk '/Mem:/ {print $2\" GiB RAM\"}'")
    );
    println!("- load at start: `{}`", sh("uptime"));
    println!(
        "- allocator (as `ferry run` has it): {}",
        ferry::runtime::memory::allocator()
    );
    let t0 = Instant::now();
    if run("drain") {
        child("drain", &extra);
        println!("\n- load after the drain part: `{}`", sh("uptime"));
    }
    if run("throttle") {
        child("throttle", &extra);
        println!("\n- load after the throttle part: `{}`", sh("uptime"));
    }
    if run("rss") {
        let dir = bench_dir();
        let d = dir.path().display().to_string();
        println!("\n### RSS while draining a large backlog\n");
        let mut e = vec!["--dir".to_string(), d];
        e.extend(extra.iter().cloned());
        child("rss-build", &e);
        child("rss-drain", &e);
        drop(dir);
        // The same drain with a smaller in-flight limit, on a smaller backlog: what part of
        // the RSS scales with the records held in flight.
        if !args.raw.iter().any(|a| a == "--no-variants") {
            let dir = bench_dir();
            let d = dir.path().display().to_string();
            let mut e: Vec<String> = ["--dir", &d, "--rss-gb", "2", "--inflight-mib", "4"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            e.extend(extra.iter().cloned());
            child("rss-build", &e);
            child("rss-drain", &e);
        }
        println!("\n- load after the RSS part: `{}`", sh("uptime"));
    }
    println!("\nTotal bench time {:.0} s.", t0.elapsed().as_secs_f64());
}
