//! Disk full, end to end through the real `ferry` binary on a real, small filesystem.
//!
//! ferry's data directory is a 24 MiB tmpfs mounted for this test, with `storage.min_free`
//! at 8 MiB, so the headroom rule must refuse ingest while the filesystem still has room for
//! ferry's own bookkeeping (ack positions, segment rolls, recovery). The Kafka broker is down
//! while devices publish, so nothing drains and the log grows until:
//!
//! - ingest refuses with backpressure: MQTT 5 gets PUBACK reason 0x97 (quota exceeded) on a
//!   connection that stays usable, MQTT 3.1.1 (no negative ack) is disconnected;
//! - the filesystem is not full (free space stays near `min_free`), and nothing stored is
//!   corrupted: the store opened read-only beside the running daemon recovers cleanly and
//!   every acknowledged payload is there, byte for byte;
//! - then the broker comes up: the forwarder drains, acknowledged segments are deleted so
//!   space returns, and ingest resumes by itself: the same v5 connection gets a successful
//!   PUBACK again with no operator action;
//! - every acknowledged payload is consumed back from Kafka.
//!
//! Mounting needs root (CAP_SYS_ADMIN). If mount(2) fails with EPERM the test prints why and
//! returns without testing anything; any other mount error fails the test. The tmpfs is
//! unmounted by a guard, also when an assertion fails.

mod common;

use common::tansu::{consume_until, free_port, Proxy, ProxyMode, Tansu};
use ferry::store::{ClassOptions, Overflow, Store, StoreOptions};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FS_SIZE: &str = "24m";
const MIN_FREE: u64 = 8 << 20;
const PAYLOAD: usize = 4000;
const TOPIC: &str = "dev1/line3/temp"; // -> class telemetry

/// A tmpfs mounted for the test; unmounted (lazily, so a still-open file cannot keep it
/// mounted) when dropped.
struct Mount(PathBuf);

impl Mount {
    /// `Ok(None)` when mounting is not permitted here (not root, or no CAP_SYS_ADMIN).
    fn tmpfs(dir: &Path, size: &str) -> std::io::Result<Option<Mount>> {
        let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc == 0 {
            return Ok(Some(Mount(dir.to_path_buf())));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Ok(None);
        }
        Err(e)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            eprintln!(
                "unmounting {} failed: {}",
                self.0.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Kills ferry when the test ends early (an assertion), so the mount can go.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

fn write_config(dir: &Path, data: &Path, bootstrap: &str, mqtt: u16, metrics: u16) -> PathBuf {
    common::daemon_config(
        dir,
        data,
        bootstrap,
        mqtt,
        metrics,
        &[
            // Segments small against the 24 MiB filesystem, so acknowledged ones are freed
            // in small steps once the broker is back.
            (
                "segment_size = \"64MiB\"",
                "segment_size = \"256KiB\"".into(),
            ),
            (
                "min_free = \"256MiB\"",
                format!("min_free = \"{}MiB\"", MIN_FREE >> 20),
            ),
            // Uncompressed, so the payload bytes are the disk bytes.
            ("compression_level = 1", "compression_level = 0".into()),
            // Reconnect to the broker quickly once it is back.
            ("backoff_max = \"60s\"", "backoff_max = \"1s\"".into()),
        ],
    )
}

fn payload(n: usize) -> String {
    let head = format!("msg-{n:06}-");
    format!("{head}{}", "p".repeat(PAYLOAD - head.len()))
}

/// Publishes QoS 1 messages from `first` on, one at a time (PUBACK before the next), until
/// `stop_after_refusals` publishes were refused with 0x97 or `max` were sent. Returns
/// (acknowledged payloads, number refused).
async fn publish_until_refused(
    client: &AsyncClient,
    el: &mut EventLoop,
    first: usize,
    max: usize,
    stop_after_refusals: usize,
) -> (Vec<String>, usize) {
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut pending: HashMap<u16, String> = HashMap::new();
    let mut queued: Vec<String> = Vec::new();
    let mut n = first;
    // Keep a few publishes in flight: enough to fill the disk quickly, few enough that
    // everything after the first refusal is refused too (no space returns meanwhile).
    let window = 8;
    while n < first + max && refused < stop_after_refusals {
        while pending.len() + queued.len() < window && n < first + max {
            let p = payload(n);
            n += 1;
            client
                .publish(TOPIC, QoS::AtLeastOnce, false, p.clone())
                .await
                .unwrap();
            queued.push(p);
        }
        let ev = tokio::time::timeout(Duration::from_secs(20), el.poll())
            .await
            .expect("no MQTT event for 20 s")
            .expect("the v5 connection must stay up under backpressure");
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                pending.insert(pkid, queued.remove(0));
            }
            Event::Incoming(Packet::PubAck(a)) => {
                let p = pending
                    .remove(&a.pkid)
                    .expect("PUBACK for a known packet id");
                match a.reason {
                    PubAckReason::Success => acked.push(p),
                    PubAckReason::QuotaExceeded => refused += 1,
                    other => panic!("unexpected PUBACK reason {other:?}"),
                }
            }
            _ => {}
        }
    }
    // Drain what is still in flight so the caller starts from a quiet connection.
    while !pending.is_empty() || !queued.is_empty() {
        match tokio::time::timeout(Duration::from_secs(20), el.poll())
            .await
            .expect("no MQTT event for 20 s")
            .expect("connection stays up")
        {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                pending.insert(pkid, queued.remove(0));
            }
            Event::Incoming(Packet::PubAck(a)) => {
                let p = pending.remove(&a.pkid).expect("known packet id");
                match a.reason {
                    PubAckReason::Success => acked.push(p),
                    PubAckReason::QuotaExceeded => refused += 1,
                    other => panic!("unexpected PUBACK reason {other:?}"),
                }
            }
            _ => {}
        }
    }
    (acked, refused)
}

/// An MQTT 3.1.1 device has no negative PUBACK: a refused QoS 1 publish closes its connection.
/// Publishes up to 5 messages one at a time; returns (acknowledged payloads, disconnected).
/// A message can still be acknowledged right at the limit (the rule refuses while free space
/// is *below* `min_free`, and the v5 burst may have stopped exactly on it).
async fn v3_publish_until_disconnected(port: u16) -> (Vec<String>, bool) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let (c, mut el) = AsyncClient::new(MqttOptions::new("dev-v3", "127.0.0.1", port), 10);
    let mut acked = Vec::new();
    for i in 0..5 {
        let p = payload(900_000 + i);
        c.publish(TOPIC, QoS::AtLeastOnce, false, p.clone())
            .await
            .unwrap();
        let got_ack = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .expect("v3 publish: neither PUBACK nor disconnect within 20 s");
        if !got_ack {
            return (acked, true);
        }
        acked.push(p);
    }
    (acked, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_then_drains_and_resumes() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let _mount = match Mount::tmpfs(&data, FS_SIZE) {
        Ok(Some(m)) => m,
        Ok(None) => {
            eprintln!(
                "SKIPPED disk_full: mount(2) of a tmpfs failed with EPERM (not root / no \
                 CAP_SYS_ADMIN); run as root (.ci/run does) to test disk full"
            );
            return;
        }
        Err(e) => panic!("mounting a {FS_SIZE} tmpfs on {}: {e}", data.display()),
    };
    let fs_free_at_start = free_bytes(&data);

    // No broker runs while devices publish. ferry is pointed at a proxy (refusing for now)
    // rather than straight at the broker's port: when the broker starts, the test creates the
    // topics before opening the proxy. Restarting tansu on ferry's bootstrap port instead
    // raced with ferry's reconnecting producer: the topics already existed when the harness
    // re-created them ("Topic with this name already exists") and the test failed.
    let proxy = Proxy::start(free_port());
    proxy.set_mode(ProxyMode::Refuse);

    let (mqtt, metrics) = (free_port(), free_port());
    let config = write_config(base.path(), &data, &proxy.bootstrap(), mqtt, metrics);
    let log = base.path().join("ferry.log");
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
        assert!(Instant::now() < deadline, "ferry did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut o = MqttOptions::new("dev1", "127.0.0.1", mqtt);
    o.set_keep_alive(Duration::from_secs(60));
    let (client, mut el) = AsyncClient::new(o, 64);

    // 1. Fill: the fs is 24 MiB, so far fewer than 10,000 x 4 KB messages fit.
    let t_fill = Instant::now();
    let (mut acked, refused) = publish_until_refused(&client, &mut el, 0, 10_000, 50).await;
    let fill_secs = t_fill.elapsed().as_secs_f64();
    let free_when_refused = free_bytes(&data);
    eprintln!(
        "filled: {} acked, {refused} refused with 0x97 in {fill_secs:.1} s; fs free {} KiB \
         (min_free {} KiB, {} KiB at start)",
        acked.len(),
        free_when_refused >> 10,
        MIN_FREE >> 10,
        fs_free_at_start >> 10
    );
    assert!(refused >= 50, "ingest never refused: the disk did not fill");
    assert!(
        acked.len() * PAYLOAD > 8 << 20,
        "refused too early: only {} acked",
        acked.len()
    );
    // The headroom rule refused before the filesystem was full: the room kept back is still
    // there (within one commit batch of the limit).
    assert!(
        free_when_refused + (1 << 20) >= MIN_FREE,
        "free space {free_when_refused} fell far below min_free {MIN_FREE}"
    );
    let (v3_acked, v3_closed) = v3_publish_until_disconnected(mqtt).await;
    assert!(
        v3_closed,
        "5 MQTT 3.1.1 publishes were acknowledged on a full disk"
    );
    eprintln!(
        "v3.1.1 publisher disconnected after {} acknowledged at the limit",
        v3_acked.len()
    );
    acked.extend(v3_acked);

    // 2. Nothing stored is corrupted: a read-only view next to the running daemon recovers
    //    cleanly and holds every acknowledged payload exactly.
    let classes = ["critical", "telemetry", "bulk"]
        .iter()
        .map(|n| ClassOptions {
            name: n.to_string(),
            max_bytes: 1 << 30,
            max_age: None,
            overflow: Overflow::DropOldest,
        })
        .collect();
    let mut opts = StoreOptions::new(&data, classes);
    opts.read_only = true;
    let (store, report) = Store::open(opts).unwrap();
    assert!(
        report.quarantined().next().is_none(),
        "recovery quarantined segments: {:?}",
        report.actions
    );
    let tel = store.class_id("telemetry").unwrap();
    let mut stored: HashSet<Vec<u8>> = HashSet::new();
    let mut r = store.reader(tel, 1).unwrap();
    loop {
        let batch = r
            .read_batch(1000, usize::MAX)
            .expect("every stored frame reads back with a valid CRC");
        if batch.is_empty() {
            break;
        }
        for s in batch {
            assert_eq!(s.record.topic, TOPIC);
            stored.insert(s.record.payload.to_vec());
        }
    }
    drop(r);
    drop(store);
    let lost: Vec<_> = acked
        .iter()
        .filter(|p| !stored.contains(p.as_bytes()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages are not in the store",
        lost.len()
    );
    eprintln!(
        "store verified read-only: {} records stored, all {} acknowledged present; recovery \
         actions {:?}",
        stored.len(),
        acked.len(),
        report.actions
    );

    // 3. The broker comes back: ferry drains, frees acknowledged segments, and the same
    //    connection's publishes are acknowledged again without anyone intervening.
    // The broker advertises its own port: ferry only bootstraps through the proxy. (Advertising
    // the still-refusing proxy made the harness's readiness probe time out now and then.)
    let mut broker = Tansu::start();
    for t in ["ferry.critical", "ferry.telemetry", "ferry.bulk"] {
        broker.create_topic(t, 1);
    }
    proxy.set_target(broker.port());
    proxy.set_mode(ProxyMode::Open);
    let t_back = Instant::now();
    let mut next = 10_000;
    let resumed_after = loop {
        assert!(
            t_back.elapsed() < Duration::from_secs(120),
            "ingest did not resume within 120 s of the broker returning; fs free {} KiB",
            free_bytes(&data) >> 10
        );
        let (ok, _) = publish_until_refused(&client, &mut el, next, 1, 1).await;
        next += 1;
        if !ok.is_empty() {
            acked.extend(ok);
            break t_back.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let free_when_resumed = free_bytes(&data);
    // Drained: acknowledged segments are deleted, so nearly all the space is back (what stays
    // is the open segment of each class and the small position files).
    let deadline = Instant::now() + Duration::from_secs(60);
    let free_after_drain = loop {
        let f = free_bytes(&data);
        if f + (2 << 20) >= fs_free_at_start {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "space did not return after the drain: {} KiB free of {} KiB",
            f >> 10,
            fs_free_at_start >> 10
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let drained_after = t_back.elapsed();

    // Once drained, ingest is open again for good, not for one lucky message.
    let (more, refused_after) = publish_until_refused(&client, &mut el, next, 200, 1).await;
    assert_eq!(
        refused_after, 0,
        "refused again after the drain freed the space"
    );
    acked.extend(more);
    eprintln!(
        "broker back: first PUBACK after {:.1} s (fs free {} KiB then); space back after {:.1} \
         s ({} KiB free); 200 more publishes all acknowledged",
        resumed_after.as_secs_f64(),
        free_when_resumed >> 10,
        drained_after.as_secs_f64(),
        free_after_drain >> 10
    );

    // 4. Every acknowledged payload reaches Kafka.
    let want: HashSet<String> = acked.iter().cloned().collect();
    let bootstrap = broker.bootstrap();
    let want2 = want.clone();
    let got = tokio::task::spawn_blocking(move || {
        consume_until(
            &bootstrap,
            &[("ferry.telemetry", 1)],
            Duration::from_secs(120),
            Duration::from_secs(1),
            |r| {
                let seen: HashSet<&[u8]> = r.iter().map(|c| c.payload.as_slice()).collect();
                want2.iter().all(|p| seen.contains(p.as_bytes()))
            },
        )
    })
    .await
    .unwrap();
    let seen: HashSet<Vec<u8>> = got.iter().map(|c| c.payload.clone()).collect();
    let missing = want.iter().filter(|p| !seen.contains(p.as_bytes())).count();
    let dups = got.len() - seen.len();
    let _ = client.disconnect().await;

    // Clean shutdown.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(daemon.0.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = daemon.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "ferry did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        missing, 0,
        "{missing} acknowledged messages never reached Kafka"
    );
    assert!(!log_text.contains("panicked"), "{log_text}");
    assert!(status.success(), "exit status {status:?}\n{log_text}");
    eprintln!(
        "DISK FULL SUMMARY: {FS_SIZE} tmpfs, min_free {} MiB: {} acknowledged ({} x {PAYLOAD} B \
         before refusal), {refused} refused with 0x97 + v3 disconnect, free {} KiB at refusal, \
         0 lost, {dups} duplicates in Kafka; ingest resumed {:.1} s after the broker returned; \
         space back ({} KiB free) after {:.1} s",
        MIN_FREE >> 20,
        want.len(),
        stored.len(),
        free_when_refused >> 10,
        resumed_after.as_secs_f64(),
        free_after_drain >> 10,
        drained_after.as_secs_f64()
    );
}
