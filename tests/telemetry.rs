//! Telemetry against real parts: Prometheus scrapes over real TCP, sd_notify datagrams on a
//! real unix socket, logging from a real child process.
//!
//! Tests that need process-wide state (`NOTIFY_SOCKET`, `RUST_LOG`, the global tracing
//! subscriber) re-run this test binary as a child with `FERRY_TELEMETRY_CHILD` set, so
//! they never race other tests on the environment. The `child_*` tests do nothing unless
//! that variable is set.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::telemetry::http::MetricsServer;
use ferry::telemetry::logging::{self, LogFormat, LogOutput, RateLimited};
use ferry::telemetry::metrics::Metrics;
use ferry::telemetry::notify::{self, Heartbeat, Notifier, Watchdog};

const CHILD: &str = "FERRY_TELEMETRY_CHILD";

fn is_child(name: &str) -> bool {
    std::env::var(CHILD).as_deref() == Ok(name)
}

/// Runs test `name` of this binary in a child process with extra environment.
/// `FERRY_TEST_CHILD_RUNNER` (e.g. `qemu-aarch64`) runs the child through an emulator, for
/// running this suite on a cross-built binary where binfmt_misc is not set up.
fn run_child(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match std::env::var_os("FERRY_TEST_CHILD_RUNNER") {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "child {name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh path in a directory that is removed when the guard drops.
fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

// ---------------------------------------------------------------------------------------
// /metrics over TCP

/// A blocking HTTP/1.1 request over a fresh TCP connection; returns (status line, body).
fn http(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    if !request.starts_with(b"HEAD") {
        assert_eq!(len, body.len(), "Content-Length matches the body");
    }
    (status, body.to_string())
}

/// Parses the text exposition format into `series -> value`, checking that every sample
/// belongs to a family announced by `# TYPE` and that each line is well formed.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram"].contains(&ty),
                "type in {line}"
            );
            types.insert(name.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE for {line:?}");
        assert!(
            name.starts_with("ferry_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name}"
        );
        if types[family] == "counter" {
            assert!(name.ends_with("_total"), "counter {name} ends in _total");
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate {series}"
        );
    }
    samples
}

#[tokio::test]
async fn metrics_scrape_over_tcp_matches_updates() {
    let metrics = Metrics::new();
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(metrics.clone(), async {
        let _ = stop_rx.await;
    }));

    // A known run: 1000 telemetry messages of 100 B, 3 alarms, some refusals and deliveries.
    let tele = metrics.class("telemetry");
    for _ in 0..1000 {
        tele.ingested(100);
    }
    let alarms = metrics.class("alarms");
    for _ in 0..3 {
        alarms.ingested(7);
    }
    metrics.fsync_seconds.with(&[]).observe(0.003);
    for _ in 0..5 {
        metrics.refused("telemetry", "class_full");
    }
    metrics.refused("alarms", "headroom");
    tele.forwarded(600, 60_000);
    metrics.delivery_error("timeout");
    metrics.delivery_error("timeout");
    metrics.set_link_up(true);
    metrics.set_window_open(false);
    metrics.set_throttle_tokens("global", 1536.5);
    let _open = metrics.connection_opened();
    drop(metrics.connection_opened());
    metrics.connection_rejected("limit");
    tele.backlog_records.set(400.0);

    let (status, body) = tokio::task::spawn_blocking(move || {
        http(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let m = parse_exposition(&body);
    let v = |s: &str| {
        *m.get(s)
            .unwrap_or_else(|| panic!("{s} missing from:\n{body}"))
    };

    assert_eq!(
        v(r#"ferry_ingest_messages_total{class="telemetry"}"#),
        1000.0
    );
    assert_eq!(
        v(r#"ferry_ingest_bytes_total{class="telemetry"}"#),
        100_000.0
    );
    assert_eq!(v(r#"ferry_ingest_messages_total{class="alarms"}"#), 3.0);
    assert_eq!(v(r#"ferry_ingest_bytes_total{class="alarms"}"#), 21.0);
    assert_eq!(
        v(r#"ferry_ingest_refused_total{class="telemetry",reason="class_full"}"#),
        5.0
    );
    assert_eq!(
        v(r#"ferry_ingest_refused_total{class="alarms",reason="headroom"}"#),
        1.0
    );
    assert_eq!(v(r#"ferry_store_fsync_seconds_bucket{le="0.0025"}"#), 0.0);
    assert_eq!(v(r#"ferry_store_fsync_seconds_bucket{le="0.005"}"#), 1.0);
    assert_eq!(v(r#"ferry_store_fsync_seconds_bucket{le="+Inf"}"#), 1.0);
    assert_eq!(v("ferry_store_fsync_seconds_count"), 1.0);
    assert_eq!(
        v(r#"ferry_forwarded_records_total{class="telemetry"}"#),
        600.0
    );
    assert_eq!(
        v(r#"ferry_forwarded_bytes_total{class="telemetry"}"#),
        60_000.0
    );
    assert_eq!(v(r#"ferry_forwarded_records_total{class="alarms"}"#), 0.0);
    assert_eq!(v(r#"ferry_delivery_errors_total{kind="timeout"}"#), 2.0);
    assert_eq!(v("ferry_link_up"), 1.0);
    assert_eq!(v("ferry_forward_window_open"), 0.0);
    assert_eq!(v(r#"ferry_throttle_tokens{bucket="global"}"#), 1536.5);
    assert_eq!(v("ferry_mqtt_connections"), 1.0);
    assert_eq!(v("ferry_mqtt_connections_accepted_total"), 2.0);
    assert_eq!(
        v(r#"ferry_mqtt_connections_rejected_total{reason="limit"}"#),
        1.0
    );
    assert_eq!(v(r#"ferry_backlog_records{class="telemetry"}"#), 400.0);
    assert_eq!(
        v(&format!(
            r#"ferry_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );

    // A scrape hook runs before rendering (the runtime copies store stats in this way).
    let hooked = metrics.class("hooked");
    metrics.add_scrape_hook(move |_| hooked.backlog_bytes.set(4096.0));
    let (_, body) =
        tokio::task::spawn_blocking(move || http(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"))
            .await
            .unwrap();
    assert_eq!(
        parse_exposition(&body)[r#"ferry_backlog_bytes{class="hooked"}"#],
        4096.0
    );

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("server stops on shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn metrics_server_rejects_what_it_does_not_serve() {
    let metrics = Metrics::new();
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(metrics, std::future::pending()));

    tokio::task::spawn_blocking(move || {
        let (status, _) = http(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _) = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        let (status, body) = http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.is_empty());

        // An oversized head is refused, not buffered.
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..2000 {
            big.extend_from_slice(format!("X-Filler-{i}: aaaaaaaa\r\n").as_bytes());
        }
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // The server may close before taking all of it; a write error is fine.
        let _ = s.write_all(&big);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        assert!(
            resp.starts_with("HTTP/1.1 431 "),
            "oversized head answered with {resp:?}"
        );

        // A client that connects and says nothing does not block other scrapes.
        let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let t = Instant::now();
        let (status, _) = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(t.elapsed() < Duration::from_secs(4), "scrape not held up");
        // ...and is itself timed out with 408 after IO_TIMEOUT.
        let mut s = idle.into_iter().next().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(
            resp.starts_with("HTTP/1.1 408 "),
            "idle client got {resp:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn metrics_bind_error_names_the_address() {
    let first = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let err = MetricsServer::bind(first.local_addr()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&first.local_addr().to_string()), "{msg}");
}

// ---------------------------------------------------------------------------------------
// sd_notify

fn recv_all(sock: &UnixDatagram, for_at_most: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + for_at_most;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn notify_from_env_in_a_child_process() {
    let (_dir, path) = temp_path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    run_child(
        "child_notify_from_env",
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let got = recv_all(&sock, Duration::from_millis(300));
    assert_eq!(
        got,
        [
            "STATUS=recovering store",
            "READY=1",
            "WATCHDOG=1",
            "STOPPING=1"
        ]
    );
}

#[test]
fn child_notify_from_env() {
    if !is_child("child_notify_from_env") {
        return;
    }
    notify::status("recovering store");
    notify::ready();
    notify::watchdog();
    notify::stopping();
}

#[test]
fn notify_without_socket_is_silent() {
    // The child has no NOTIFY_SOCKET: every call must succeed as a no-op.
    run_child("child_notify_without_socket", &[]);
}

#[test]
fn child_notify_without_socket() {
    if !is_child("child_notify_without_socket") {
        return;
    }
    assert!(!Notifier::from_env().unwrap().is_enabled());
    assert_eq!(notify::watchdog_interval(), None);
    notify::ready();
    notify::stopping();
}

#[test]
fn watchdog_interval_from_env_in_a_child_process() {
    run_child("child_watchdog_interval", &[("WATCHDOG_USEC", "30000000")]);
}

#[test]
fn child_watchdog_interval() {
    if !is_child("child_watchdog_interval") {
        return;
    }
    assert_eq!(notify::watchdog_interval(), Some(Duration::from_secs(30)));
}

/// A loop that bumps its heartbeat every few ms until it is told to wedge.
fn spawn_loop(hb: Heartbeat, wedged: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if !wedged.load(Ordering::Relaxed) {
                hb.beat();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

#[tokio::test]
async fn watchdog_stops_pinging_when_a_loop_wedges() {
    let (_dir, path) = temp_path("watchdog.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let notifier = Notifier::new(path.to_str().unwrap()).unwrap();

    let (writer, forwarder) = (Heartbeat::new(), Heartbeat::new());
    let writer_wedged = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    spawn_loop(writer.clone(), writer_wedged.clone(), stop.clone());
    spawn_loop(
        forwarder.clone(),
        Arc::new(AtomicBool::new(false)),
        stop.clone(),
    );

    // WATCHDOG_USEC=200ms -> a check every 100 ms.
    let wd = Watchdog::new(notifier, Duration::from_millis(200))
        .heartbeat("store writer", &writer)
        .heartbeat("forwarder", &forwarder);
    assert_eq!(wd.tick(), Duration::from_millis(100));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(wd.run(async {
        let _ = stop_rx.await;
    }));

    let sock = Arc::new(sock);
    let rx = sock.clone();
    let healthy = tokio::task::spawn_blocking(move || recv_all(&rx, Duration::from_secs(1)))
        .await
        .unwrap();
    let pings = healthy.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        pings >= 3,
        "expected ~10 pings in 1 s while healthy, got {healthy:?}"
    );

    writer_wedged.store(true, Ordering::Relaxed);
    // Let the tick in flight pass, then nothing may ping for a full second (~10 ticks).
    let rx = sock.clone();
    tokio::task::spawn_blocking(move || recv_all(&rx, Duration::from_millis(250)))
        .await
        .unwrap();
    let rx = sock.clone();
    let wedged = tokio::task::spawn_blocking(move || recv_all(&rx, Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(
        !wedged.iter().any(|m| m == "WATCHDOG=1"),
        "no keep-alive while the writer is wedged: {wedged:?}"
    );

    writer_wedged.store(false, Ordering::Relaxed);
    let rx = sock.clone();
    let recovered = tokio::task::spawn_blocking(move || recv_all(&rx, Duration::from_secs(1)))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();

    let all: Vec<&String> = wedged.iter().chain(recovered.iter()).collect();
    assert!(
        all.iter()
            .any(|m| m.starts_with("STATUS=stalled: store writer")),
        "the stall is reported in STATUS: {all:?}"
    );
    assert!(
        recovered.iter().any(|m| m == "WATCHDOG=1"),
        "pings resume once the writer moves again: {recovered:?}"
    );
    assert!(recovered.iter().any(|m| m == "STATUS=running"));
}

/// The real store writer as a watchdog probe: its loop counter moves (at least once a second,
/// idle or not) while it runs, so the watchdog pings; while the writer is wedged (the store's
/// `stall_writer` fault-injection hook blocks its thread, like a hung disk) the counter stops
/// and so do the pings; when it comes back, so do they.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_follows_the_real_store_writer() {
    use ferry::store::{ClassOptions, Overflow, Store, StoreOptions};

    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::new(
        tmp.path().join("data"),
        vec![ClassOptions {
            name: "telemetry".into(),
            max_bytes: 64 << 20,
            max_age: None,
            overflow: Overflow::Reject,
        }],
    ))
    .unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = Arc::new(UnixDatagram::bind(&sock_path).unwrap());
    let probe_store = store.clone();
    // A 4 s timeout means a check every 2 s: two idle writer turns per check.
    let wd = Watchdog::new(
        Notifier::new(sock_path.to_str().unwrap()).unwrap(),
        Duration::from_secs(4),
    )
    .counter("store writer", move || probe_store.io_stats().writer_loops);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(wd.run(async {
        let _ = stop_rx.await;
    }));

    let rx = sock.clone();
    let running = tokio::task::spawn_blocking(move || recv_all(&rx, Duration::from_millis(4500)))
        .await
        .unwrap();
    assert!(
        running.iter().any(|m| m == "WATCHDOG=1"),
        "pings while the writer runs: {running:?}"
    );

    store.stall_writer(Duration::from_secs(9)).unwrap();
    let rx = sock.clone();
    tokio::task::spawn_blocking(move || recv_all(&rx, Duration::from_millis(2500)))
        .await
        .unwrap();
    let rx = sock.clone();
    let stopped = tokio::task::spawn_blocking(move || recv_all(&rx, Duration::from_millis(4500)))
        .await
        .unwrap();
    assert!(
        !stopped.iter().any(|m| m == "WATCHDOG=1"),
        "no keep-alive while the writer is wedged: {stopped:?}"
    );
    // The stall ends 9 s after it began; pings come back.
    let rx = sock.clone();
    let resumed = tokio::task::spawn_blocking(move || recv_all(&rx, Duration::from_millis(6000)))
        .await
        .unwrap();
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    assert!(
        resumed.iter().any(|m| m == "WATCHDOG=1"),
        "pings resume once the writer runs again: {resumed:?}"
    );
    assert!(stopped
        .iter()
        .any(|m| m.starts_with("STATUS=stalled: store writer")));
}

// ---------------------------------------------------------------------------------------
// logging

#[test]
fn json_logs_carry_fields_and_rust_log_overrides_the_level() {
    let out = run_child("child_logging_json", &[("RUST_LOG", "telemetry=debug")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The config said `warn`; RUST_LOG asked for debug on this crate.
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "debug detail" && l["class"] == "alarms"),
        "{stderr}"
    );
    // Five identical failures in a burst: one line, then the summary on flush.
    let failures: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "produce failed")
        .collect();
    assert_eq!(failures.len(), 1, "{stderr}");
    assert_eq!(failures[0]["suppressed"], 0);
    assert_eq!(failures[0]["level"], "WARN");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "link recovered" && l["suppressed"] == 4),
        "{stderr}"
    );
}

#[test]
fn child_logging_json() {
    if !is_child("child_logging_json") {
        return;
    }
    let out = logging::init("warn", LogFormat::Json).unwrap();
    assert_eq!(out, LogOutput::Json);
    tracing::debug!(class = "alarms", "debug detail");
    static FAILED: RateLimited = RateLimited::new(Duration::from_secs(3600));
    for _ in 0..5 {
        ferry::rate_limited!(FAILED, warn, error = "transport", "produce failed");
    }
    let suppressed = FAILED.flush();
    tracing::info!(suppressed, "link recovered");
    // A second init must fail cleanly, not panic.
    assert!(logging::init("info", LogFormat::Text).is_err());
}

#[test]
fn auto_format_uses_stderr_when_not_under_systemd() {
    let out = run_child(
        "child_logging_auto",
        // A JOURNAL_STREAM that is not our stderr (inherited from some parent) is ignored.
        &[("JOURNAL_STREAM", "1:1")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INFO") && stderr.contains("hello from text") && stderr.contains("n=3"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("\x1b["),
        "no colors when stderr is not a terminal"
    );
}

#[test]
fn child_logging_auto() {
    if !is_child("child_logging_auto") {
        return;
    }
    let out = logging::init("info", LogFormat::Auto).unwrap();
    assert_eq!(out, LogOutput::Text);
    tracing::info!(n = 3, "hello from text");
}

#[test]
fn bad_level_is_refused_with_advice() {
    let out = run_child("child_logging_bad_level", &[]);
    assert!(out.status.success());
}

#[test]
fn child_logging_bad_level() {
    if !is_child("child_logging_bad_level") {
        return;
    }
    let e = logging::init("inof", LogFormat::Text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`inof` is not a level"), "{e}");
}

#[test]
fn journald_format_without_journal_fails_with_advice() {
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        // A real journal is listening here; the error path cannot be reached.
        return;
    }
    run_child("child_logging_journald_missing", &[]);
}

#[test]
fn child_logging_journald_missing() {
    if !is_child("child_logging_journald_missing") {
        return;
    }
    let e = logging::init("info", LogFormat::Journald)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("journald socket") && e.contains("use log format `text`"),
        "{e}"
    );
    // `auto` without JOURNAL_STREAM (not started by systemd) picks text.
    assert_eq!(
        logging::init("info", LogFormat::Auto).unwrap(),
        LogOutput::Text
    );
}

// ---------------------------------------------------------------------------------------
// metrics against the real store

/// A known run against the real store: 500 records committed, 200 forwarded (read and
/// acked), then a purge. The scrape must show the store's own figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_a_real_store_run() {
    use bytes::Bytes;
    use ferry::store::{ClassOptions, Overflow, Record, Store, StoreOptions};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let class = |name: &str| ClassOptions {
        name: name.into(),
        max_bytes: 64 << 20,
        max_age: None,
        overflow: Overflow::Reject,
    };
    let (store, _report) = Store::open(StoreOptions::new(
        &dir,
        vec![class("telemetry"), class("alarms")],
    ))
    .unwrap();
    let tele = store.class_id("telemetry").unwrap();

    let metrics = Metrics::new();
    metrics.watch_store(store.clone());
    let handles = metrics.class("telemetry");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let mut logical = Vec::new();
    let mut tickets = Vec::new();
    for i in 0..500u64 {
        let rec = Record {
            // Received 60 s ago, so the oldest-age gauge has something to show.
            timestamp_ms: now_ms - 60_000 + i,
            topic: format!("site/dev{}/temp", i % 7),
            qos: 1,
            client_id: format!("dev{}", i % 7),
            payload: Bytes::from(vec![b'x'; 100]),
            ..Default::default()
        };
        logical.push(rec.logical_size() as u64);
        tickets.push(store.append(tele, rec).unwrap());
    }
    for t in tickets {
        t.await.unwrap();
        handles.ingested(100); // what ingest does once the ticket completes
    }

    // "Forward" the first 200: read them and ack the 200th, as the forwarder does after
    // Kafka's delivery reports.
    let mut reader = store.reader(tele, store.acked(tele).seq + 1).unwrap();
    let mut sent = Vec::new();
    while sent.len() < 200 {
        let batch =
            tokio::task::block_in_place(|| reader.read_batch(200 - sent.len(), 1 << 20)).unwrap();
        assert!(!batch.is_empty(), "store returned fewer than 500 records");
        sent.extend(batch);
    }
    store.ack(tele, sent[199].position()).unwrap();
    handles.forwarded(200, 200 * 100);

    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(metrics.clone(), std::future::pending()));
    let scrape = move || {
        let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        parse_exposition(&body)
    };
    let m = tokio::task::spawn_blocking(scrape).await.unwrap();
    let t = |name: &str| m[&format!(r#"{name}{{class="telemetry"}}"#)];
    assert_eq!(t("ferry_ingest_messages_total"), 500.0);
    assert_eq!(t("ferry_ingest_bytes_total"), 50_000.0);
    assert_eq!(t("ferry_forwarded_records_total"), 200.0);
    assert_eq!(t("ferry_backlog_records"), 300.0);
    assert_eq!(
        t("ferry_backlog_bytes"),
        logical[200..].iter().sum::<u64>() as f64
    );
    let age = t("ferry_backlog_oldest_age_seconds");
    assert!(
        (55.0..3600.0).contains(&age),
        "oldest waiting record is ~60 s old: {age}"
    );
    assert!(t("ferry_store_disk_bytes") > 0.0);
    assert_eq!(m[r#"ferry_backlog_records{class="alarms"}"#], 0.0);
    assert_eq!(
        m[r#"ferry_backlog_oldest_age_seconds{class="alarms"}"#],
        0.0
    );
    assert_eq!(
        m[r#"ferry_dropped_records_total{class="telemetry",reason="purge"}"#],
        0.0
    );
    // The writer's own I/O figures: at least one commit, every record written once.
    let io = store.io_stats();
    assert!(io.commits >= 1);
    assert_eq!(io.records_written, 500);
    assert_eq!(m["ferry_store_commits_total"], io.commits as f64);
    assert_eq!(m["ferry_store_fsyncs_total"], io.fsyncs as f64);
    assert_eq!(m["ferry_store_fsync_seconds_count"], io.fsyncs as f64);
    assert_eq!(m["ferry_store_commit_batch_records_sum"], 500.0);
    assert_eq!(
        m[r#"ferry_store_commit_batch_records_bucket{le="+Inf"}"#],
        io.commits as f64
    );
    assert_eq!(
        m[r#"ferry_store_written_bytes_total{kind="logical"}"#],
        logical.iter().sum::<u64>() as f64
    );

    // An operator purge drops the 300 waiting records: counted by the store, seen here.
    let (purged, _) = store.purge(tele, None).unwrap();
    assert_eq!(purged, 300);
    let m = tokio::task::spawn_blocking(scrape).await.unwrap();
    assert_eq!(
        m[r#"ferry_dropped_records_total{class="telemetry",reason="purge"}"#],
        300.0
    );
    assert_eq!(m[r#"ferry_backlog_records{class="telemetry"}"#], 0.0);

    store.close().unwrap();
}
