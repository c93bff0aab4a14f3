//! Shared test helpers: the tansu broker harness, a real store in a temp dir, test records.

#![allow(dead_code)]

pub mod tansu;

use std::time::Duration;

use bytes::Bytes;
use ferry::store::{ClassOptions, Overflow, Record, Store, StoreOptions};

/// Opens a real store with the given classes (1 GiB each, reject on overflow) in `dir`.
pub fn open_store(dir: &std::path::Path, classes: &[&str]) -> Store {
    let opts = StoreOptions::new(
        dir,
        classes
            .iter()
            .map(|n| ClassOptions {
                name: n.to_string(),
                max_bytes: 1 << 30,
                max_age: None,
                overflow: Overflow::Reject,
            })
            .collect(),
    );
    Store::open(opts).expect("open store").0
}

pub fn record(topic: &str, client_id: &str, ts: u64, payload: impl Into<Bytes>) -> Record {
    Record {
        timestamp_ms: ts,
        topic: topic.into(),
        qos: 1,
        retain: false,
        client_id: client_id.into(),
        user_properties: Vec::new(),
        content_type: None,
        payload: payload.into(),
    }
}

/// Appends and waits until durable; returns the sequence.
pub async fn append(store: &Store, class: usize, rec: Record) -> u64 {
    store
        .append(class, rec)
        .expect("append")
        .await
        .expect("commit")
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs to the test output, filtered by `RUST_LOG` (e.g. `RUST_LOG=ferry=debug`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Writes a `ferry run` config for tests: the shipped `config/ferry.toml` with the data dir,
/// loopback ports, broker and control socket replaced, plus `extra` (from, to) edits. Every
/// edited line must still be in the shipped file (the test fails if it changed).
pub fn daemon_config(
    dir: &std::path::Path,
    data: &std::path::Path,
    bootstrap: &str,
    mqtt: u16,
    metrics: u16,
    extra: &[(&str, String)],
) -> std::path::PathBuf {
    let mut text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ferry.toml")).unwrap();
    let base = [
        (
            "data_dir = \"/var/lib/ferry\"",
            format!("data_dir = \"{}\"", data.display()),
        ),
        (
            "listen = \"0.0.0.0:1883\"",
            format!("listen = \"127.0.0.1:{mqtt}\""),
        ),
        (
            "listen = \"127.0.0.1:9464\"",
            format!("listen = \"127.0.0.1:{metrics}\""),
        ),
        (
            "bootstrap_servers = \"127.0.0.1:9092\"",
            format!("bootstrap_servers = \"{bootstrap}\""),
        ),
        (
            "socket = \"/run/ferry/ferry.sock\"",
            format!("socket = \"{}\"", dir.join("ferry.sock").display()),
        ),
    ];
    for (from, to) in base
        .iter()
        .map(|(f, t)| (*f, t))
        .chain(extra.iter().map(|(f, t)| (*f, t)))
    {
        assert!(
            text.contains(from),
            "config/ferry.toml no longer has {from}"
        );
        text = text.replace(from, to);
    }
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    path
}
