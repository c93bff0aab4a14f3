//! The MQTT connection handler, end to end: one real listener (`ferry::ingest::Server` with a
//! real store on tmpfs) lives for the whole fuzzing process; every input is sent over a fresh
//! TCP connection to 127.0.0.1, the write side is shut, and the reply is read until the server
//! closes (or 2 s pass). The codec and session are private to `ingest`, so the socket is the
//! entry point; that also covers the accept path, timeouts and the commit round trip.
//!
//! Input: byte 0 picks a prefix (bit 0: a valid MQTT 3.1.1 CONNECT, bit 1: a valid MQTT 5
//! CONNECT, both: v5 then v4, so a second CONNECT) so mutations reach the post-CONNECT
//! states quickly; bits 2-3 split the rest into up to 4 writes, so packets straddle reads.
//!
//! A panic in any server task aborts the process (libfuzzer-sys installs an aborting panic
//! hook), so a panic inside a tokio task is a crash here even though tokio would catch it.
//! Memory: libFuzzer's `-rss_limit_mb` covers the server too, it is in-process.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use ferry::ingest::{Classifier, IngestOptions, Server};
use ferry::store::{ClassOptions, Overflow, Store, StoreOptions};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

struct Fixture {
    rt: Runtime,
    addr: SocketAddr,
    // Kept alive for the process: the store's files live here.
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let root = if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        let dir = tempfile::tempdir_in(root).unwrap();
        let mut so = StoreOptions::new(
            dir.path(),
            vec![ClassOptions {
                name: "telemetry".into(),
                // Drop-oldest with small segments: a long run cannot fill the tmpfs.
                max_bytes: 64 << 20,
                max_age: None,
                overflow: Overflow::DropOldest,
            }],
        );
        so.segment_bytes = 1 << 20;
        let (store, _) = Store::open(so).unwrap();
        let opts = IngestOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            connect_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
            ..IngestOptions::default()
        };
        let addr = rt.block_on(async {
            let server = Server::bind(opts, store, Classifier::single(0))
                .await
                .unwrap();
            let addr = server.local_addr().unwrap();
            tokio::spawn(server.run(std::future::pending::<()>()));
            addr
        });
        Fixture {
            rt,
            addr,
            _dir: dir,
        }
    })
}

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client id "fz".
const CONNECT_V4: &[u8] = &[
    0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'f', b'z',
];
/// CONNECT, MQTT 5, clean start, keep-alive 60, no properties, client id "fz5".
const CONNECT_V5: &[u8] = &[
    0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 3, b'f', b'z', b'5',
];

async fn exchange(addr: SocketAddr, mode: u8, body: &[u8]) {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
    else {
        return;
    };
    let mut prefix = Vec::new();
    if mode & 2 != 0 {
        prefix.extend_from_slice(CONNECT_V5);
    }
    if mode & 1 != 0 {
        prefix.extend_from_slice(CONNECT_V4);
    }
    let pieces = usize::from((mode >> 2) & 3) + 1;
    let chunk = body.len().div_ceil(pieces).max(1);
    let io = async {
        s.write_all(&prefix).await?;
        for part in body.chunks(chunk) {
            s.write_all(part).await?;
            s.flush().await?;
            tokio::task::yield_now().await;
        }
        s.shutdown().await?;
        // Drain replies until the server closes; the content is not checked here (the
        // protocol tests do that), only that the server survives and lets go.
        let mut buf = [0u8; 4096];
        loop {
            if s.read(&mut buf).await? == 0 {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), io).await;
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let f = fixture();
    f.rt.block_on(exchange(f.addr, mode, body));
});
