//! The control protocol on the wire: raw JSON lines over a real Unix socket served by
//! `control::server::serve` with a real store, plus the library client.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ferry::control::client::{Client, ClientError};
use ferry::control::server::{self, serve, ControlContext, ServeError};
use ferry::control::{PeekFrom, PeekReport, PurgeResult, Request, StatusReport, MAX_REQUEST_BYTES};
use ferry::store::{ClassOptions, Overflow, Record, Store, StoreOptions};
use serde_json::Value;

fn open_store(dir: &Path) -> Store {
    let class = |n: &str| ClassOptions {
        name: n.into(),
        max_bytes: 1 << 30,
        max_age: None,
        overflow: Overflow::DropOldest,
    };
    let mut o = StoreOptions::new(dir, vec![class("telemetry")]);
    o.segment_bytes = 2048;
    Store::open(o).unwrap().0
}

async fn append(store: &Store, n: u64, ts: u64) {
    let c = store.class_id("telemetry").unwrap();
    for i in 0..n {
        let r = Record {
            timestamp_ms: ts,
            topic: format!("site{}/m", i % 2),
            qos: 1,
            client_id: "c".into(),
            payload: Bytes::from(format!("value {i}")),
            ..Record::default()
        };
        store.append(c, r).unwrap().await.unwrap();
    }
}

struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    path: PathBuf,
}

fn start(store: &Store, path: &Path) -> Server {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ctx = ControlContext::new(store.clone(), "/data");
    let p = path.to_path_buf();
    let task = tokio::spawn(async move {
        serve(&p, ctx, async {
            let _ = rx.await;
        })
        .await
    });
    Server {
        stop: Some(tx),
        task,
        path: path.to_path_buf(),
    }
}

impl Server {
    async fn wait_ready(&self) {
        for _ in 0..200 {
            if UnixStream::connect(&self.path).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not start");
    }
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Sends raw lines on one connection and reads one answer per line (blocking, off the runtime).
async fn exchange(path: &Path, lines: Vec<Vec<u8>>) -> Vec<Value> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut out = Vec::new();
        for mut l in lines {
            l.push(b'\n');
            s.write_all(&l).unwrap();
            let mut buf = String::new();
            r.read_line(&mut buf).unwrap();
            out.push(serde_json::from_str(&buf).unwrap());
        }
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_in_order_with_versioned_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("d"));
    append(&store, 4, 1_000).await;
    let sock = tmp.path().join("c.sock");
    let srv = start(&store, &sock);
    srv.wait_ready().await;

    let answers = exchange(
        &sock,
        vec![
            br#"{"v":1,"cmd":"version"}"#.to_vec(),
            br#"{"v":1,"cmd":"status"}"#.to_vec(),
            br#"{"v":2,"cmd":"status"}"#.to_vec(),
            br#"{"v":1,"cmd":"explode"}"#.to_vec(),
            b"not json".to_vec(),
            br#"{"v":1,"cmd":"pause"}"#.to_vec(),
            br#"{"v":1,"cmd":"purge","class":"telemetry"}"#.to_vec(),
            br#"{"v":1,"cmd":"peek","class":"telemetry","from":"newest","limit":1,"topic":"site1/#"}"#.to_vec(),
        ],
    )
    .await;
    assert_eq!(answers[0]["v"], 1);
    assert_eq!(answers[0]["ok"], true);
    assert_eq!(answers[0]["result"]["protocol"], 1);
    assert_eq!(answers[1]["result"]["classes"][0]["records"], 4);
    assert_eq!(answers[2]["ok"], false);
    assert!(answers[2]["error"]
        .as_str()
        .unwrap()
        .contains("this daemon speaks version 1"));
    assert!(answers[3]["error"]
        .as_str()
        .unwrap()
        .starts_with("bad request"));
    assert!(answers[4]["error"]
        .as_str()
        .unwrap()
        .starts_with("bad request"));
    assert!(answers[5]["error"]
        .as_str()
        .unwrap()
        .contains("forwarder is not running"));
    assert!(answers[5].get("result").is_none());
    assert!(answers[6]["error"]
        .as_str()
        .unwrap()
        .contains("exactly one of"));
    let peek = &answers[7]["result"]["records"];
    assert_eq!(peek.as_array().unwrap().len(), 1);
    assert_eq!(peek[0]["seq"], 4);
    assert_eq!(peek[0]["payload"], "value 3");
    srv.stop().await;
    assert!(!sock.exists(), "shutdown removes the socket file");
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_request_is_refused_and_the_connection_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("d"));
    let sock = tmp.path().join("c.sock");
    let srv = start(&store, &sock);
    srv.wait_ready().await;
    let p = sock.clone();
    let (answer, rest) = tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&p).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut big = vec![b'x'; MAX_REQUEST_BYTES + 10];
        big.push(b'\n');
        s.write_all(&big).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        (line, rest)
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("longer than"));
    assert!(rest.is_empty(), "connection closed after the error");
    // The server still serves others.
    let c = Client::new(&sock, Duration::from_secs(10));
    let st: StatusReport = tokio::task::spawn_blocking(move || c.call(Request::Status))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.source, "daemon");
    srv.stop().await;
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_sockets_are_replaced_live_ones_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("d"));
    let sock = tmp.path().join("c.sock");
    // A socket file nobody listens on (left by a crash).
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let srv = start(&store, &sock);
    srv.wait_ready().await;
    // A second server on the live socket refuses to start.
    match server::bind(&sock) {
        Err(ServeError::InUse(p)) => assert_eq!(p, sock),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bound a socket that is in use"),
    }
    srv.stop().await;
    // A path that is not a socket is never removed.
    let file = tmp.path().join("precious.toml");
    std::fs::write(&file, "keep me").unwrap();
    assert!(matches!(
        server::bind(&file),
        Err(ServeError::NotASocket(_))
    ));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // With no daemon, the client says so (and how to start one).
    let c = Client::new(&sock, Duration::from_secs(1));
    let err = c.call_value(Request::Status).unwrap_err();
    assert!(matches!(err, ClientError::NotRunning(_)), "{err}");
    assert!(err.to_string().contains("systemctl start ferry"));
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_over_the_socket_changes_what_readers_see() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("d"));
    // 40 old records, then 10 new ones (small segments: several per class).
    append(&store, 40, 1_000).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    append(&store, 10, now).await;
    let sock = tmp.path().join("c.sock");
    let srv = start(&store, &sock);
    srv.wait_ready().await;
    let c = Client::new(&sock, Duration::from_secs(10));
    let (purged, peek) = tokio::task::spawn_blocking(move || {
        let purged: PurgeResult = c
            .call(Request::Purge {
                class: "telemetry".into(),
                older_than_secs: Some(3600),
                all: false,
            })
            .unwrap();
        let peek: PeekReport = c
            .call(Request::Peek {
                class: "telemetry".into(),
                from: PeekFrom::Oldest,
                limit: 1000,
                topic: None,
                max_payload: 100,
            })
            .unwrap();
        (purged, peek)
    })
    .await
    .unwrap();
    assert!(purged.records > 0 && purged.records <= 40, "{purged:?}");
    assert!(purged.bytes > 0);
    assert_eq!(peek.records.len() as u64, 50 - purged.records);
    // Whole segments go: nothing new was removed, and what remains is contiguous.
    assert!(
        peek.records
            .iter()
            .filter(|r| r.timestamp_ms == now)
            .count()
            == 10
    );
    let c = store.class_id("telemetry").unwrap();
    let mut r = store.reader(c, 1).unwrap();
    let first = r.read_batch(1, 1 << 20).unwrap();
    assert_eq!(first[0].seq, purged.records + 1);
    srv.stop().await;
    store.close().unwrap();
}
