//! Crash test: a child process appends in a loop and prints every sequence number whose
//! commit ticket completed; the parent SIGKILLs it at random moments, reopens the store and
//! checks that every printed record is present and intact. The child is this same test
//! binary, re-executed with `FERRY_STORE_CRASH_CHILD` set.

use bytes::Bytes;
use ferry::store::*;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENV: &str = "FERRY_STORE_CRASH_CHILD";

fn options(dir: &Path) -> StoreOptions {
    let mk = |name: &str, overflow| ClassOptions {
        name: name.into(),
        max_bytes: 1 << 30,
        max_age: None,
        overflow,
    };
    let mut o = StoreOptions::new(
        dir,
        vec![
            mk("critical", Overflow::Reject),
            mk("bulk", Overflow::DropOldest),
        ],
    );
    // Small segments so that kills also land during segment rolls.
    o.segment_bytes = 64 << 10;
    o.commit_max_delay = Duration::from_micros(500);
    o
}

fn payload(tag: &str, i: u64) -> String {
    format!(
        "{{\"tag\":\"{tag}\",\"i\":{i},\"pad\":\"{}\"}}",
        "x".repeat((i % 300) as usize)
    )
}

/// The child: 4 threads append to both classes, 16 in flight each, and print `class seq tag`
/// for every completed ticket.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let tag = std::env::var("FERRY_CRASH_TAG").unwrap_or_default();
    let (store, _) = Store::open(options(Path::new(&dir))).expect("child open");
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            let out = out.clone();
            let tag = tag.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                loop {
                    let mut tickets = Vec::new();
                    for _ in 0..16 {
                        i += 1;
                        let class = (i % 2) as usize;
                        let id = format!("{tag}-{t}-{i}");
                        let rec = Record {
                            timestamp_ms: i,
                            topic: format!("t/{t}"),
                            qos: 1,
                            client_id: id.clone(),
                            payload: Bytes::from(payload(&id, i)),
                            ..Default::default()
                        };
                        tickets.push((class, id, store.append(class, rec).expect("append")));
                    }
                    for (class, id, t) in tickets {
                        let seq = t.wait().expect("commit");
                        let mut o = out.lock().unwrap();
                        writeln!(o, "ACK {class} {seq} {id}").unwrap();
                        o.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn kill_during_appends_loses_nothing_acknowledged() {
    crash_cycles(false);
}

/// Power loss: kill -9 keeps the page cache, so additionally cut every segment back to what
/// its last completed fdatasync covered (and remove segments whose creation was never synced)
/// before reopening.
#[test]
fn power_loss_keeps_every_acknowledged_record() {
    crash_cycles(true);
}

/// Returns (files changed, bytes cut off past the synced length, bytes of writes over synced
/// zeros turned back into zeros).
fn simulate_power_loss(dir: &Path, log: &Path, rng: &mut impl Rng) -> (usize, u64, u64) {
    use std::os::unix::fs::FileExt;
    // Segment -> (durable data length, durable file length: the data and the zeros written
    // ahead of it).
    let mut synced: HashMap<String, (u64, u64)> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(log) {
        for line in text.lines() {
            let mut f = line.rsplitn(3, ' ');
            let (Some(file_len), Some(len), Some(p)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let (Ok(len), Ok(file_len)) = (len.parse(), file_len.parse()) {
                synced.insert(p.to_string(), (len, file_len));
            }
        }
    }
    let (mut files, mut cut, mut unwritten) = (0, 0, 0);
    for class in std::fs::read_dir(dir.join("classes")).unwrap() {
        for seg in std::fs::read_dir(class.unwrap().path()).unwrap() {
            let p = seg.unwrap().path();
            if p.extension().is_none_or(|e| e != "seg") {
                continue;
            }
            let size = std::fs::metadata(&p).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            match synced.get(&p.display().to_string()) {
                Some(&(len, file_len)) => {
                    let mut changed = false;
                    // Nothing written past the synced file length survives...
                    if size > file_len {
                        f.set_len(file_len).unwrap();
                        cut += size - file_len;
                        changed = true;
                    }
                    // ...and of the writes over synced zeros, any prefix may (a torn frame
                    // followed by zeros, or none of them).
                    let over = size.min(file_len);
                    if over > len {
                        let keep = rng.random_range(len..=over);
                        if keep < over {
                            f.write_all_at(&vec![0; (over - keep) as usize], keep)
                                .unwrap();
                            unwritten += over - keep;
                            changed = true;
                        }
                    }
                    files += usize::from(changed);
                }
                // Never synced at all: a power cut could leave no file (or an empty one).
                None if size > 0 => {
                    f.set_len(0).unwrap();
                    files += 1;
                    cut += size;
                }
                None => {}
            }
        }
    }
    (files, cut, unwritten)
}

fn crash_cycles(power_loss: bool) {
    let cycles: usize = std::env::var("FERRY_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xF3A1);
    // (class, seq) -> client id of the record the child was told is durable.
    let mut acked: HashMap<(usize, u64), String> = HashMap::new();
    let mut total_acked = 0usize;
    let sync_log = dir.path().join("sync.log");
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(ENV, dir.path())
            .env("FERRY_TEST_SYNC_LOG", &sync_log)
            .env("FERRY_CRASH_TAG", format!("c{cycle}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
            }
            lines
        });
        // Let it get going (first ack), then kill at a random moment.
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(rng.random_range(80..400)));
        assert!(start.elapsed() < Duration::from_secs(30));
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        let lines = reader.join().unwrap();
        let mut n = 0;
        for l in lines {
            let mut parts = l.split_whitespace();
            if parts.next() != Some("ACK") {
                continue;
            }
            let class: usize = parts.next().unwrap().parse().unwrap();
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            let id = parts.next().unwrap().to_string();
            assert!(
                acked.insert((class, seq), id).is_none(),
                "seq {seq} acknowledged twice"
            );
            n += 1;
        }
        total_acked += n;
        if power_loss {
            let (files, bytes, unwritten) = simulate_power_loss(dir.path(), &sync_log, &mut rng);
            eprintln!("cycle {cycle}: power loss cut {bytes} unsynced bytes from {files} files and turned {unwritten} unsynced bytes over zeroed space back into zeros");
        }
        // Reopen and check every acknowledged record, in every cycle so far.
        let (store, report) = Store::open(options(dir.path())).unwrap();
        assert!(
            report.quarantined().next().is_none(),
            "cycle {cycle}: {report:?}"
        );
        let mut found = 0;
        for class in 0..2 {
            let mut r = store.reader(class, 1).unwrap();
            loop {
                let b = r.read_batch(1000, 1 << 20).unwrap();
                if b.is_empty() {
                    break;
                }
                for rec in b {
                    if let Some(id) = acked.get(&(class, rec.seq)) {
                        assert_eq!(
                            &rec.record.client_id, id,
                            "cycle {cycle} class {class} seq {}",
                            rec.seq
                        );
                        let i: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
                        assert_eq!(rec.record.payload, Bytes::from(payload(id, i)));
                        found += 1;
                    }
                }
            }
        }
        assert_eq!(
            found,
            acked.len(),
            "cycle {cycle}: acknowledged records missing after kill -9"
        );
        eprintln!(
            "cycle {cycle}: {n} acknowledged this cycle, {found} verified in total, recovery: {:?}",
            report.actions.len()
        );
        store.close().unwrap();
    }
    assert!(
        total_acked > cycles * 10,
        "the child acknowledged too little to mean anything: {total_acked}"
    );
}
