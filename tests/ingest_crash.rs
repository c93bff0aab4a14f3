//! The crash test that matters: every PUBACKed message survives `kill -9`.
//!
//! The test binary re-executes itself as a child (`FERRY_CRASH_CHILD=1`, filtered to the
//! `crash_child_entry` test) that runs the real listener on a real store in a data dir.
//! Several rumqttc publishers send QoS 1 messages as fast as the server acks them and record
//! every PUBACK. Mid-stream the parent SIGKILLs the child, opens the same data dir itself
//! (recovery), and checks that every acknowledged message is stored exactly as sent.
//! Publishers resend what was not acknowledged after each restart, as devices do, so
//! duplicates of unacknowledged messages occur; they are allowed (at-least-once) and counted.
//! 20 cycles (`FERRY_CRASH_CYCLES` for more).

mod common_mqtt;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common_mqtt::*;
use ferry::ingest::{Classifier, IngestOptions, Server};
use ferry::store::{Overflow, Store, StoreOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// At least 20 (the acceptance bar); `FERRY_CRASH_CYCLES` runs more.
fn cycles() -> usize {
    std::env::var("FERRY_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}
const PUBLISHERS: usize = 4;

fn classes() -> Vec<ferry::store::ClassOptions> {
    vec![class("telemetry", 1 << 30, Overflow::DropOldest)]
}

/// The child: serve until killed. Does nothing in a normal test run.
#[test]
fn crash_child_entry() {
    if std::env::var("FERRY_CRASH_CHILD").as_deref() != Ok("1") {
        return;
    }
    let dir = PathBuf::from(std::env::var("FERRY_CRASH_DIR").unwrap());
    let port_file = PathBuf::from(std::env::var("FERRY_CRASH_PORT_FILE").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (store, _) = Store::open(StoreOptions::new(&dir, classes())).unwrap();
        let opts = IngestOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            fanout: None,
            ..IngestOptions::default()
        };
        let server = Server::bind(opts, store, Classifier::single(0))
            .await
            .unwrap();
        let port = server.local_addr().unwrap().port();
        // Written atomically so the parent never reads half a number.
        let tmp = port_file.with_extension("tmp");
        std::fs::write(&tmp, port.to_string()).unwrap();
        std::fs::rename(&tmp, &port_file).unwrap();
        server.run(std::future::pending()).await.unwrap();
    });
}

// The caller SIGKILLs and waits for the child it gets back.
#[allow(clippy::zombie_processes)]
fn spawn_child(dir: &Path, port_file: &Path) -> (std::process::Child, u16) {
    let _ = std::fs::remove_file(port_file);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FERRY_CRASH_CHILD", "1")
        .env("FERRY_CRASH_DIR", dir)
        .env("FERRY_CRASH_PORT_FILE", port_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(port_file) {
            if let Ok(p) = s.trim().parse() {
                return (child, p);
            }
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child server did not start within 20 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Publishes QoS 1 until the connection dies: first `resend` (what the previous run sent
/// without getting an ack, as a real device would after reconnecting), then new messages.
/// Returns (payloads PUBACKed, payloads sent but not PUBACKed).
async fn publisher(
    port: u16,
    name: String,
    cycle: usize,
    resend: Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let mut o = MqttOptions::new(name.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    let (client, mut el) = AsyncClient::new(o, 200);
    let payload_at = {
        let resend = resend.clone();
        let name = name.clone();
        move |n: usize| match resend.get(n) {
            Some(p) => p.clone(),
            None => format!("{name}-c{cycle}-{:08}", n - resend.len()),
        }
    };
    let feeder = {
        let name = name.clone();
        let payload_at = payload_at.clone();
        tokio::spawn(async move {
            for n in 0.. {
                if client
                    .publish(
                        format!("crash/{name}"),
                        QoS::AtLeastOnce,
                        false,
                        payload_at(n),
                    )
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    // Requests are written in order, so the n-th Outgoing::Publish is the n-th payload.
    let mut next = 0usize;
    let mut by_pkid: HashMap<u16, String> = HashMap::new();
    let mut acked = Vec::new();
    loop {
        match el.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                by_pkid.insert(pkid, payload_at(next));
                next += 1;
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                if let Some(p) = by_pkid.remove(&a.pkid) {
                    acked.push(p);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    feeder.abort();
    (acked, by_pkid.into_values().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_loses_an_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port_file = tmp.path().join("port");
    let mut all_acked: HashSet<String> = HashSet::new();
    let mut unacked: Vec<Vec<String>> = vec![Vec::new(); PUBLISHERS];
    let mut total_dups = 0usize;
    let cycles = cycles();
    for cycle in 0..cycles {
        let (mut child, port) = spawn_child(&dir, &port_file);
        let pubs: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let resend = std::mem::take(&mut unacked[p]);
                tokio::spawn(publisher(port, format!("pub{p}"), cycle, resend))
            })
            .collect();
        // ~0.5 s of publishing, varied so the kill lands at different points of a commit.
        tokio::time::sleep(Duration::from_millis(350 + (cycle as u64 * 37) % 300)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut acked_this_cycle = 0;
        for (i, p) in pubs.into_iter().enumerate() {
            let (acked, not_acked) = tokio::time::timeout(Duration::from_secs(30), p)
                .await
                .expect("publisher did not notice the kill")
                .unwrap();
            acked_this_cycle += acked.len();
            all_acked.extend(acked);
            unacked[i] = not_acked
                .into_iter()
                .filter(|p| !all_acked.contains(p))
                .collect();
        }
        assert!(
            acked_this_cycle > 0,
            "cycle {cycle}: nothing was acknowledged"
        );

        // Restart on the same directory (recovery) and check every acked message.
        let (store, _report) = Store::open(StoreOptions::new(&dir, classes())).unwrap();
        let recs = read_all(&store, 0);
        store.close().unwrap();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for r in &recs {
            let payload = String::from_utf8(r.record.payload.to_vec()).unwrap();
            let publisher = payload.split('-').next().unwrap().to_string();
            assert_eq!(r.record.topic, format!("crash/{publisher}"), "{payload}");
            assert_eq!(r.record.client_id, publisher);
            assert_eq!(r.record.qos, 1);
            assert!(!r.record.retain);
            *counts.entry(payload).or_default() += 1;
        }
        let missing: Vec<_> = all_acked
            .iter()
            .filter(|p| !counts.contains_key(*p))
            .collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: {} acknowledged messages lost, e.g. {:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        let dups: usize = counts.values().map(|c| c - 1).sum();
        let acked_dups = all_acked
            .iter()
            .filter(|p| counts.get(*p).copied().unwrap_or(0) > 1)
            .count();
        total_dups = dups;
        eprintln!(
            "cycle {cycle}: {acked_this_cycle} acked, {} stored in total, {} acked so far, {dups} duplicate copies ({acked_dups} of acked messages)",
            recs.len(),
            all_acked.len()
        );
    }
    eprintln!(
        "{cycles} cycles: {} acknowledged messages, all stored; {total_dups} duplicate copies",
        all_acked.len()
    );
}
