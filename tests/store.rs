//! Store behaviour through the public API: append/read/ack/reopen, retention, torn tails and
//! corruption, and a model-based property test.

use bytes::Bytes;
use ferry::store::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn class(name: &str, max_bytes: u64, overflow: Overflow) -> ClassOptions {
    ClassOptions {
        name: name.into(),
        max_bytes,
        max_age: None,
        overflow,
    }
}

fn opts(dir: &Path, classes: Vec<ClassOptions>) -> StoreOptions {
    let mut o = StoreOptions::new(dir, classes);
    o.segment_bytes = 16 << 10;
    o.commit_max_bytes = 4 << 10;
    o.commit_max_delay = Duration::ZERO;
    o
}

fn rec(i: u64, payload_len: usize) -> Record {
    let body = format!(
        "{{\"sensor\":\"temp-{}\",\"value\":{}.5,\"unit\":\"C\"}}",
        i % 17,
        i
    );
    let mut payload = body.into_bytes();
    payload.resize(payload_len.max(payload.len()), b' ');
    Record {
        timestamp_ms: 1_700_000_000_000 + i,
        topic: format!("site/line{}/temp", i % 3),
        qos: (i % 3) as u8,
        retain: i % 5 == 0,
        client_id: format!("plc-{}", i % 7),
        user_properties: if i % 4 == 0 {
            vec![("k".into(), format!("v{i}"))]
        } else {
            vec![]
        },
        content_type: (i % 6 == 0).then(|| "application/json".to_string()),
        payload: Bytes::from(payload),
    }
}

fn append_all(store: &Store, c: ClassId, range: std::ops::Range<u64>, len: usize) -> Vec<u64> {
    let tickets: Vec<_> = range
        .map(|i| store.append(c, rec(i, len)).unwrap())
        .collect();
    tickets.into_iter().map(|t| t.wait().unwrap()).collect()
}

/// What the class's segment files take on disk, zeroed-ahead space included.
fn segment_file_bytes(dir: &Path, class: &str) -> u64 {
    std::fs::read_dir(dir.join("classes").join(class))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Waits (≤ 10 s) until the writer, idle, has zeroed space after the class's active segment's
/// data: the last segment file then ends in a zero byte.
fn wait_for_zeroed_space(dir: &Path, class: &str) {
    for _ in 0..1000 {
        if let Some(last) = segment_paths(dir, class).last() {
            if std::fs::read(last).unwrap().last() == Some(&0) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the writer zeroed no space after the active segment's data within 10 s");
}

/// One class "a" with small segments and frames of at most 1 KiB, for tests that damage files.
fn small_frames(dir: &Path, level: i32, segment_bytes: u64) -> StoreOptions {
    let mut o = opts(dir, vec![class("a", 1 << 30, Overflow::DropOldest)]);
    o.compression_level = level;
    o.segment_bytes = segment_bytes;
    o.commit_max_bytes = 1 << 10;
    o
}

/// Appends `frames` commits of 5 records (80 B payloads) to class 0 and returns them all.
fn fill_in_frames(store: &Store, frames: u64) -> Vec<StoredRecord> {
    for f in 0..frames {
        append_all(store, 0, f * 5..f * 5 + 5, 80);
    }
    let all = read_all(store, 0, 1);
    assert_eq!(all.len() as u64, frames * 5);
    all
}

fn read_all(store: &Store, c: ClassId, from: u64) -> Vec<StoredRecord> {
    let mut r = store.reader(c, from).unwrap();
    let mut out = Vec::new();
    loop {
        let b = r.read_batch(100, 1 << 20).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend(b);
    }
}

#[test]
fn append_read_ack_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(
        dir.path(),
        vec![
            class("a", 1 << 30, Overflow::Reject),
            class("b", 1 << 30, Overflow::DropOldest),
        ],
    );
    o.compression_level = 0;
    let (store, report) = Store::open(o.clone()).unwrap();
    assert!(report.is_clean());
    let seqs = append_all(&store, 0, 0..1000, 100);
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    append_all(&store, 1, 0..10, 10);
    let got = read_all(&store, 0, 1);
    assert_eq!(got.len(), 1000);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.record, rec(i as u64, 100));
    }
    let st = &store.stats()[0];
    assert_eq!(st.records, 1000);
    assert!(st.segments > 1, "small segments should have rolled");
    assert_eq!(st.oldest_seq, Some(1));
    assert_eq!(st.oldest_ts_ms, Some(1_700_000_000_000));
    let logical: u64 = got.iter().map(|r| r.record.logical_size() as u64).sum();
    assert_eq!(st.logical_bytes, logical);
    // Ack half: stats follow, sealed segments are freed.
    store.ack(0, got[499].position()).unwrap();
    let st2 = &store.stats()[0];
    assert_eq!(st2.records, 500);
    assert_eq!(st2.oldest_seq, Some(501));
    assert_eq!(st2.logical_bytes, logical - got[499].logical_end);
    assert!(st2.segments < st.segments);
    store.close().unwrap();
    drop(store);

    let (store, report) = Store::open(o).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(store.acked(0).seq, 500);
    let rest = read_all(&store, 0, store.acked(0).seq + 1);
    assert_eq!(rest.len(), 500);
    assert_eq!(rest[0].seq, 501);
    assert_eq!(rest, got[500..]);
    assert_eq!(append_all(&store, 0, 1000..1001, 10), vec![1001]);
    assert_eq!(read_all(&store, 1, 1).len(), 10);
}

/// `append_to` + `submit`: one submitted batch is one commit (the writer does not linger for
/// it), its one ticket gives every record's sequence in batch order, records come back exactly
/// as appended (encoded on the caller's thread), and a batch dropped without a submit stores
/// nothing.
#[test]
fn submitted_batch_is_one_commit_and_an_unsubmitted_one_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path(), vec![class("a", 1 << 30, Overflow::Reject)]);
    let (store, _) = Store::open(o).unwrap();
    let mut batch = AppendBatch::default();
    let recs: Vec<Record> = (0..20).map(|i| rec(i, 50)).collect();
    let idx: Vec<usize> = recs
        .iter()
        .map(|r| store.append_to(&mut batch, 0, r.as_ref()).unwrap())
        .collect();
    assert_eq!(idx, (0..20).collect::<Vec<_>>());
    assert_eq!(batch.len(), 20);
    let before = store.io_stats();
    let ticket = store.submit(&mut batch).unwrap();
    assert!(batch.is_empty());
    assert_eq!(ticket.len(), 20);
    let seqs: Vec<u64> = ticket.wait().into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let after = store.io_stats();
    assert_eq!(after.commits - before.commits, 1);
    assert_eq!(after.records_written - before.records_written, 20);
    let got = read_all(&store, 0, 1);
    assert_eq!(got.len(), 20);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.record, rec(i as u64, 50));
    }

    let mut dropped = AppendBatch::default();
    let extra = rec(99, 50);
    store.append_to(&mut dropped, 0, extra.as_ref()).unwrap();
    drop(dropped);
    let empty = store.submit(&mut AppendBatch::default()).unwrap();
    assert!(empty.wait().is_empty());
    assert_eq!(store.committed(0), 20);
    assert_eq!(read_all(&store, 0, 1).len(), 20);
}

/// One batch over two classes where one is a full `reject` class: its records are refused,
/// the other class's records are stored, and the single ticket reports each in batch order.
#[test]
fn one_batch_ticket_reports_each_record_separately() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(
        dir.path(),
        vec![
            class("room", 1 << 30, Overflow::Reject),
            class("tiny", 1, Overflow::Reject),
        ],
    );
    let (store, _) = Store::open(o).unwrap();
    let mut batch = AppendBatch::default();
    let recs: Vec<Record> = (0..6).map(|i| rec(i, 40)).collect();
    let mut refused_now = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        let class = if i % 2 == 0 { 0 } else { 1 };
        if let Err(e) = store.append_to(&mut batch, class, r.as_ref()) {
            assert!(e.is_backpressure(), "{e}");
            refused_now.push(i);
        }
    }
    let results = store.submit(&mut batch).unwrap().wait();
    // Whether the tiny class refuses at `append_to` (its last measured size) or in the
    // writer, its records are not stored and the others are.
    let mut stored = Vec::new();
    let mut k = 0;
    for i in 0..6 {
        if refused_now.contains(&i) {
            continue;
        }
        match &results[k] {
            Ok(seq) => stored.push((i, *seq)),
            Err(e) => assert!(i % 2 == 1 && e.is_backpressure(), "record {i}: {e}"),
        }
        k += 1;
    }
    assert_eq!(k, results.len());
    assert_eq!(stored, vec![(0, 1), (2, 2), (4, 3)]);
    assert_eq!(read_all(&store, 0, 1).len(), 3);
    assert_eq!(store.committed(1), 0);
}

#[test]
fn second_writer_is_refused_and_read_only_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path(), vec![class("a", 1 << 30, Overflow::Reject)]);
    let (store, _) = Store::open(o.clone()).unwrap();
    append_all(&store, 0, 0..50, 50);
    match Store::open(o.clone()) {
        Err(StoreError::Locked { .. }) => {}
        other => panic!("expected Locked, got {:?}", other.err()),
    }
    let mut ro = o.clone();
    ro.read_only = true;
    let (view, _) = Store::open(ro).unwrap();
    assert_eq!(read_all(&view, 0, 1).len(), 50);
    assert!(matches!(
        view.append(0, rec(1, 1)),
        Err(StoreError::ReadOnly)
    ));
}

#[test]
fn reject_class_refuses_when_full_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), vec![class("c", 64 << 10, Overflow::Reject)]);
    o.compression_level = 0;
    let (store, _) = Store::open(o).unwrap();
    let mut ok = 0u64;
    let mut refused = 0;
    for i in 0..2000 {
        // The files, with the space zeroed ahead of the data, stay under the cap too.
        let files = segment_file_bytes(dir.path(), "c");
        assert!(files <= 64 << 10, "segment files {files} over cap");
        match store.append(0, rec(i, 200)) {
            Ok(t) => match t.wait() {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(e.is_backpressure(), "{e}");
                    refused += 1
                }
            },
            Err(e) => {
                assert!(e.is_backpressure(), "{e}");
                refused += 1
            }
        }
    }
    assert!(refused > 0 && ok > 0);
    let st = &store.stats()[0];
    assert!(st.disk_bytes <= 64 << 10, "disk {} over cap", st.disk_bytes);
    assert_eq!(st.records, ok);
    assert_eq!(st.dropped.total(), 0);
    assert_eq!(st.refused_full, refused);
    let all = read_all(&store, 0, 1);
    assert_eq!(all.len() as u64, ok);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, r)| r.record == rec(i as u64, 200)));
    // Acking frees sealed segments, and appends are accepted again.
    store.ack(0, all.last().unwrap().position()).unwrap();
    assert!(store.append(0, rec(9999, 200)).unwrap().wait().is_ok());
}

#[test]
fn drop_oldest_counts_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), vec![class("t", 64 << 10, Overflow::DropOldest)]);
    o.compression_level = 0;
    let (store, _) = Store::open(o).unwrap();
    for i in 0..20 {
        append_all(&store, 0, i * 100..i * 100 + 100, 200);
        // The files, with the space zeroed ahead of the data, stay under the cap too.
        let files = segment_file_bytes(dir.path(), "t");
        assert!(files <= 64 << 10, "segment files {files} over cap");
    }
    let st = &store.stats()[0];
    assert!(st.disk_bytes <= 64 << 10, "disk {} over cap", st.disk_bytes);
    assert!(st.dropped.max_bytes > 0);
    assert_eq!(st.records + st.dropped.max_bytes, 2000);
    let all = read_all(&store, 0, 1);
    assert_eq!(all.len() as u64, st.records);
    // What is left is the newest, contiguous, intact.
    assert_eq!(all.last().unwrap().seq, 2000);
    for w in all.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    for r in &all {
        assert_eq!(r.record, rec(r.seq - 1, 200));
    }
}

#[test]
fn max_age_drops_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = class("t", 1 << 30, Overflow::DropOldest);
    c.max_age = Some(Duration::from_secs(3600));
    let (store, _) = Store::open(opts(dir.path(), vec![c])).unwrap();
    append_all(&store, 0, 0..500, 200); // timestamps ~1.7e12 ms
    let before = store.stats()[0].clone();
    // "now" is 2 h after the records: everything is older than 1 h.
    store
        .enforce_retention(1_700_000_000_000 + 2 * 3600 * 1000)
        .unwrap();
    let st = &store.stats()[0];
    assert_eq!(st.records, 0);
    assert_eq!(st.dropped.max_age, before.records);
    // New appends continue the sequence.
    assert_eq!(append_all(&store, 0, 0..1, 10), vec![501]);
    // "now" 30 min after: nothing more is dropped.
    store
        .enforce_retention(1_700_000_000_000 + 1800 * 1000)
        .unwrap();
    assert_eq!(store.stats()[0].records, 1);
}

#[test]
fn headroom_refuses_every_class_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let free = Arc::new(FixedFreeSpace::new(1 << 30));
    let mut o = opts(
        dir.path(),
        vec![
            class("a", 1 << 30, Overflow::DropOldest),
            class("b", 1 << 30, Overflow::Reject),
        ],
    );
    o.min_free_bytes = 100 << 20;
    o.free_space = free.clone();
    let (store, _) = Store::open(o).unwrap();
    append_all(&store, 0, 0..10, 10);
    free.set(50 << 20);
    for c in 0..2 {
        let res = store.append(c, rec(1, 10)).and_then(|t| t.wait());
        assert!(matches!(res, Err(StoreError::Headroom { .. })), "{res:?}");
    }
    assert_eq!(store.stats()[0].records, 10);
    free.set(1 << 30);
    assert_eq!(append_all(&store, 1, 0..1, 10), vec![1]);
    assert_eq!(append_all(&store, 0, 0..1, 10), vec![11]);
}

#[test]
fn purge_all_and_older_than() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(opts(
        dir.path(),
        vec![class("a", 1 << 30, Overflow::DropOldest)],
    ))
    .unwrap();
    append_all(&store, 0, 0..1000, 100);
    let (n, bytes) = store.purge(0, None).unwrap();
    assert_eq!(n, 1000);
    assert!(bytes > 0);
    let st = &store.stats()[0];
    assert_eq!(st.records, 0);
    assert_eq!(st.dropped.purge, 1000);
    assert_eq!(append_all(&store, 0, 0..1, 10), vec![1001]);
}

/// Truncating the last segment anywhere inside its last frames loses only what was cut.
#[test]
fn torn_tail_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), vec![class("a", 1 << 30, Overflow::DropOldest)]);
    o.segment_bytes = 1 << 20;
    let (store, _) = Store::open(o.clone()).unwrap();
    // Three frames of known sizes (one ticket batch each).
    for f in 0..3u64 {
        append_all(&store, 0, f * 10..f * 10 + 10, 60);
    }
    wait_for_zeroed_space(dir.path(), "a");
    store.close().unwrap();
    drop(store);
    let seg = std::fs::read_dir(dir.path().join("classes/a"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let orig = std::fs::read(&seg).unwrap();
    // Frame boundaries: find them from a clean open's reads.
    let (store, _) = Store::open(o.clone()).unwrap();
    let all = read_all(&store, 0, 1);
    assert_eq!(all.len(), 30);
    drop(store);
    let start = 40usize; // segment header
    let mut boundaries = vec![start];
    // Frames up to the data's end; the writer zeroes the space after it ahead of time.
    let magic = 0xC0DEF3A1u32.to_le_bytes();
    loop {
        let at = *boundaries.last().unwrap();
        if at + 48 > orig.len() || orig[at..at + 4] != magic {
            break;
        }
        let body = u32::from_le_bytes(orig[at + 4..at + 8].try_into().unwrap()) as usize;
        boundaries.push(at + 48 + body);
    }
    let data_end = *boundaries.last().unwrap();
    assert!(boundaries.len() >= 4, "at least three frames");
    assert!(
        orig.len() > data_end && orig[data_end..].iter().all(|&b| b == 0),
        "the active segment is zeroed ahead of its data"
    );
    // Cuts inside the zeros lose nothing and are no damage.
    for cut in [orig.len() - 1, data_end + 48, data_end + 1, data_end] {
        std::fs::write(&seg, &orig[..cut]).unwrap();
        let (store, report) = Store::open(o.clone()).unwrap();
        assert!(report.is_clean(), "cut at {cut}: {report:?}");
        assert_eq!(read_all(&store, 0, 1), all, "cut at {cut}");
        drop(store);
    }
    for cut in (start..data_end)
        .rev()
        .step_by(7)
        .chain([start, data_end - 1])
    {
        std::fs::write(&seg, &orig[..cut]).unwrap();
        let (store, report) = Store::open(o.clone()).unwrap();
        let got = read_all(&store, 0, 1);
        // Whatever is left is a prefix of what was written, intact.
        assert_eq!(got[..], all[..got.len()], "cut at {cut}");
        // A cut inside a frame is reported; one on a frame boundary leaves nothing to detect
        // (and never happens to synced data: those frames were simply never written).
        assert!(
            boundaries.contains(&cut) || !report.is_clean(),
            "cut at {cut} not reported"
        );
        // And the store keeps working after the cut.
        let next = append_all(&store, 0, 0..1, 10)[0];
        assert_eq!(next, got.len() as u64 + 1);
        drop(store);
        std::fs::write(&seg, &orig).unwrap();
    }
}

/// Segments, oldest first.
fn segment_paths(dir: &Path, class: &str) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("classes").join(class))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// The writer zeroes space ahead of the active segment's data; a roll cuts it off the sealed
/// segment. A crash between the two leaves zeros after a sealed segment's data: the next open
/// cuts them without calling it damage, and a partial frame written over the zeros of the
/// last segment is an ordinary torn tail.
#[test]
fn zeroed_space_is_a_clean_end_and_a_torn_frame_over_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let o = small_frames(dir.path(), 0, 4 << 10);
    let (store, _) = Store::open(o.clone()).unwrap();
    let all = fill_in_frames(&store, 20);
    wait_for_zeroed_space(dir.path(), "a");
    drop(store);
    let segs = segment_paths(dir.path(), "a");
    assert!(segs.len() >= 3);
    let last = segs.last().unwrap();
    let last_data = std::fs::read(last).unwrap();
    let data_end = last_data.len() - last_data.iter().rev().take_while(|&&b| b == 0).count();
    assert!(
        last_data.len() > data_end,
        "the active segment has zeroed space after its data"
    );
    // Sealed segments were cut to their data at the roll.
    for s in &segs[..segs.len() - 1] {
        let d = std::fs::read(s).unwrap();
        assert_ne!(d.last(), Some(&0), "{} ends in zeros", s.display());
    }

    // Zeros after a sealed segment's data (an interrupted roll).
    let middle = &segs[1];
    let sealed_len = std::fs::metadata(middle).unwrap().len();
    let mut d = std::fs::read(middle).unwrap();
    d.resize(d.len() + 3000, 0);
    std::fs::write(middle, &d).unwrap();
    let (store, report) = Store::open(o.clone()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(read_all(&store, 0, 1), all);
    assert_eq!(std::fs::metadata(middle).unwrap().len(), sealed_len);
    drop(store);

    // Half a frame over the last segment's zeros: torn, cut, reported; nothing else lost.
    let mut d = std::fs::read(last).unwrap();
    let frame_start = 40;
    let frame_len =
        48 + u32::from_le_bytes(d[frame_start + 4..frame_start + 8].try_into().unwrap()) as usize;
    let copy = d[frame_start..frame_start + frame_len / 2].to_vec();
    if d.len() < data_end + copy.len() {
        // Less zeroed room than half a frame: more zeros, as the writer could have left.
        d.resize(data_end + copy.len() + 100, 0);
    }
    d[data_end..data_end + copy.len()].copy_from_slice(&copy);
    std::fs::write(last, &d).unwrap();
    let (store, report) = Store::open(o.clone()).unwrap();
    assert!(!report.is_clean(), "a torn frame must be reported");
    assert!(report.quarantined().next().is_none(), "{report:?}");
    assert_eq!(read_all(&store, 0, 1), all);
    // The store goes on from there and reopens clean.
    assert_eq!(
        append_all(&store, 0, 100..105, 80),
        (101..=105).collect::<Vec<_>>()
    );
    drop(store);
    let (store, report) = Store::open(o.clone()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(read_all(&store, 0, 1).len(), 105);
    drop(store);

    // Zeros where a sealed segment's last frame was: not the space zeroed ahead (the next
    // segment starts later), so damage: quarantined, the lost records counted.
    let mut d = std::fs::read(&segs[0]).unwrap();
    let mut at = 40;
    let mut last_frame = (at, 0u64);
    while at + 48 <= d.len() {
        let body = u32::from_le_bytes(d[at + 4..at + 8].try_into().unwrap()) as usize;
        let count = u32::from_le_bytes(d[at + 24..at + 28].try_into().unwrap());
        last_frame = (at, u64::from(count));
        at += 48 + body;
    }
    d[last_frame.0..].fill(0);
    std::fs::write(&segs[0], &d).unwrap();
    let (store, report) = Store::open(o).unwrap();
    let q: Vec<_> = report.quarantined().collect();
    assert_eq!(q.len(), 1, "{report:?}");
    match q[0] {
        RecoveryAction::Quarantined {
            records_lost, what, ..
        } => {
            assert_eq!(*records_lost, last_frame.1, "{report:?}");
            assert!(what.contains("zeros"), "{what}");
        }
        _ => unreachable!(),
    }
    assert_eq!(read_all(&store, 0, 1).len() as u64, 105 - last_frame.1);
}

/// An empty last segment whose header is damaged (a crash during a roll), header only or with
/// zeroed space after it: the header is rewritten from the previous segment's end, and the
/// records appended after it continue the class's sequence and logical offsets, so later opens
/// are clean (a header left damaged read as logical start 0, and the next opens quarantined
/// and then cut the records appended into it).
#[test]
fn a_damaged_header_on_an_empty_last_segment_is_rewritten() {
    for zeros in [0usize, 3000] {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path(), vec![class("a", 1 << 30, Overflow::DropOldest)]);
        let (store, _) = Store::open(o.clone()).unwrap();
        append_all(&store, 0, 0..20, 80);
        drop(store);
        let mut d = vec![0xa5u8; 40];
        d.resize(40 + zeros, 0);
        let seg = dir.path().join("classes/a").join(format!("{:020}.seg", 21));
        assert!(!seg.exists());
        std::fs::write(&seg, &d).unwrap();

        let (store, report) = Store::open(o.clone()).unwrap();
        assert!(
            report
                .actions
                .iter()
                .any(|a| matches!(a, RecoveryAction::TruncatedTail { .. })),
            "zeros {zeros}: the header rewrite is reported: {report:?}"
        );
        assert!(report.quarantined().next().is_none(), "{report:?}");
        assert_eq!(
            append_all(&store, 0, 20..25, 80),
            (21..=25).collect::<Vec<_>>()
        );
        drop(store);
        for round in 0..2 {
            let (store, report) = Store::open(o.clone()).unwrap();
            assert!(report.is_clean(), "zeros {zeros}, open {round}: {report:?}");
            let all = read_all(&store, 0, 1);
            let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (1..=25 + round).collect::<Vec<_>>());
            assert!(
                all.windows(2).all(|w| w[0].logical_end < w[1].logical_end),
                "zeros {zeros}: logical offsets go on across the rewritten header"
            );
            // Appending and reopening once more keeps it so.
            if round == 0 {
                append_all(&store, 0, 25..26, 80);
            }
        }
    }
}

/// Delivered records missing from disk (the log ends before the acknowledged position, e.g. a
/// device that lost synced writes): reported, and new records go on after the position
/// instead of reusing sequence numbers the forwarder counts as delivered (they would never be
/// sent).
#[test]
fn a_log_that_ends_before_the_acked_position_goes_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path(), vec![class("a", 1 << 30, Overflow::DropOldest)]);
    let (store, _) = Store::open(o.clone()).unwrap();
    append_all(&store, 0, 0..10, 80);
    let got = read_all(&store, 0, 1);
    store.ack(0, got[9].position()).unwrap();
    drop(store);
    let segs = segment_paths(dir.path(), "a");
    assert_eq!(segs.len(), 1);
    // The delivered frames read back as zeros (what a device that lost them returns).
    let mut d = std::fs::read(&segs[0]).unwrap();
    d[40..].fill(0);
    std::fs::write(&segs[0], &d).unwrap();

    let (store, report) = Store::open(o.clone()).unwrap();
    assert!(
        report.actions.iter().any(|a| matches!(
            a,
            RecoveryAction::PositionPastLogEnd {
                log_end_seq: 0,
                acked_seq: 10,
                ..
            }
        )),
        "{report:?}"
    );
    assert_eq!(
        append_all(&store, 0, 10..13, 80),
        vec![11, 12, 13],
        "new records start after the acknowledged position"
    );
    assert_eq!(store.stats()[0].records, 3);
    let seqs: Vec<u64> = read_all(&store, 0, 11).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![11, 12, 13]);
    drop(store);
    // The old segment was sealed (its zeros cut): the next open is clean, not a quarantine of
    // zeros where records should be.
    let (store, report) = Store::open(o).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let all = read_all(&store, 0, 1);
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![11, 12, 13], "a reader from seq 1 jumps the gap");
    assert_eq!(store.stats()[0].records, 3);
    // Acknowledging frees the old, empty segment.
    store.ack(0, all[2].position()).unwrap();
    assert_eq!(segment_paths(dir.path(), "a").len(), 1);
}

/// `stats().disk_bytes` is what the segment files take, zeroed space included, and
/// `zero_ahead_bytes = 0` (`storage.zero_ahead = "0"`) writes no zeros at all.
#[test]
fn disk_bytes_count_the_zeroed_space_and_zero_ahead_can_be_off() {
    for ahead in [0u64, 2 << 10, 64 << 10] {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path(), vec![class("a", 1 << 30, Overflow::DropOldest)]);
        o.segment_bytes = 32 << 10;
        o.zero_ahead_bytes = ahead;
        let (store, _) = Store::open(o.clone()).unwrap();
        for f in 0..30u64 {
            append_all(&store, 0, f * 10..f * 10 + 10, 120);
            // The writer zeroes while idle, a step at a time, and publishes the figure after
            // each step: once it is done, the stats and the files agree.
            let mut agree = false;
            for _ in 0..500 {
                let before = store.stats()[0].disk_bytes;
                let files = segment_file_bytes(dir.path(), "a");
                if before == files && store.stats()[0].disk_bytes == files {
                    agree = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                agree,
                "zero_ahead {ahead}, round {f}: stats {}, files {}",
                store.stats()[0].disk_bytes,
                segment_file_bytes(dir.path(), "a")
            );
        }
        let zeroed = store.io_stats().zeroed_bytes_written;
        if ahead == 0 {
            assert_eq!(zeroed, 0);
        } else {
            assert!(zeroed > 0, "zero_ahead {ahead}");
        }
        drop(store);
        // The next open counts the same.
        let (store, report) = Store::open(o.clone()).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            store.stats()[0].disk_bytes,
            segment_file_bytes(dir.path(), "a")
        );
        assert_eq!(read_all(&store, 0, 1).len(), 300);
        drop(store);
        // Zeroing turned off: an open cuts the zeros written under the earlier setting.
        o.zero_ahead_bytes = 0;
        let (store, report) = Store::open(o).unwrap();
        assert!(report.is_clean(), "{report:?}");
        let files = segment_file_bytes(dir.path(), "a");
        assert_eq!(store.stats()[0].disk_bytes, files);
        let last = segment_paths(dir.path(), "a").pop().unwrap();
        assert_ne!(
            std::fs::read(&last).unwrap().last(),
            Some(&0),
            "zero_ahead {ahead}: zeros left after the data"
        );
        assert_eq!(read_all(&store, 0, 1).len(), 300);
    }
}

/// Flipping bytes inside a middle segment: reopen succeeds, the segment is quarantined,
/// and every record outside the damaged frame is served.
#[test]
fn corrupt_middle_segment_is_quarantined() {
    use rand::{Rng, SeedableRng};
    for seed in 0..20u64 {
        let dir = tempfile::tempdir().unwrap();
        let (level, segment_bytes) = if seed % 2 == 0 {
            (3, 2 << 10)
        } else {
            (0, 8 << 10)
        };
        let o = small_frames(dir.path(), level, segment_bytes);
        let (store, _) = Store::open(o.clone()).unwrap();
        let all = fill_in_frames(&store, 40);
        drop(store);
        let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("classes/a"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 3);
        let victim = &segs[1];
        let mut data = std::fs::read(victim).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let flips = rng.random_range(1..4);
        for _ in 0..flips {
            let at = rng.random_range(0..data.len());
            data[at] ^= 1 << rng.random_range(0..8);
        }
        std::fs::write(victim, &data).unwrap();
        let (store, report) = Store::open(o.clone()).unwrap();
        let q: Vec<_> = report.quarantined().collect();
        assert_eq!(q.len(), 1, "seed {seed}: {report:?}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("quarantine"))
                .unwrap()
                .count(),
            1
        );
        let got = read_all(&store, 0, 1);
        let lost = match q[0] {
            RecoveryAction::Quarantined { records_lost, .. } => *records_lost,
            _ => unreachable!(),
        };
        assert!(lost > 0);
        assert_eq!(got.len() as u64 + lost, 200, "seed {seed}");
        // Every record served is one that was written, in order; nothing else.
        for r in &got {
            assert_eq!(r.record, all[r.seq as usize - 1].record, "seed {seed}");
        }
        // Records in other segments are all there.
        let st = &store.stats()[0];
        assert_eq!(st.dropped.corrupt, lost);
        assert_eq!(st.records, got.len() as u64);
        drop(store);
        // A second open is clean and serves the same.
        let (store, report) = Store::open(o.clone()).unwrap();
        assert!(report.is_clean(), "seed {seed}: {report:?}");
        assert_eq!(read_all(&store, 0, 1), got);
    }
}

mod model {
    //! Random append / ack / reopen / retention sequences against a simple in-memory model.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append { n: u8, len: u16 },
        Ack { frac: u8 },
        Reopen,
        Read { from_back: u8 },
        Purge,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u8..40, 0u16..400).prop_map(|(n, len)| Op::Append { n, len }),
            2 => any::<u8>().prop_map(|frac| Op::Ack { frac }),
            1 => Just(Op::Reopen),
            2 => any::<u8>().prop_map(|from_back| Op::Read { from_back }),
            1 => Just(Op::Purge),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
        #[test]
        fn store_matches_model(ops in proptest::collection::vec(op(), 1..40), cap in 16u64..200, reject in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let overflow = if reject { Overflow::Reject } else { Overflow::DropOldest };
            let mut o = opts(dir.path(), vec![class("m", cap << 10, overflow)]);
            o.segment_bytes = 4 << 10;
            let (mut store, _) = Store::open(o.clone()).unwrap();
            // The model: every record ever accepted, by seq; acked position; drops.
            let mut written: Vec<Record> = Vec::new();
            let mut acked = 0u64;
            let mut i = 0u64;
            let mut first_present = 1u64;
            let mut dropped_model = 0u64;
            for op in ops {
                match op {
                    Op::Append { n, len } => {
                        let mut tickets = Vec::new();
                        for _ in 0..n {
                            i += 1;
                            let r = rec(i, len as usize);
                            match store.append(0, r.clone()) {
                                Ok(t) => tickets.push((t, r)),
                                Err(e) => prop_assert!(reject && e.is_backpressure(), "{}", e),
                            }
                        }
                        for (t, r) in tickets {
                            match t.wait() {
                                Ok(seq) => {
                                    prop_assert_eq!(seq, written.len() as u64 + 1);
                                    written.push(r);
                                }
                                Err(e) => prop_assert!(reject && e.is_backpressure(), "{}", e),
                            }
                        }
                    }
                    Op::Ack { frac } => {
                        let avail = read_all(&store, 0, acked + 1);
                        if !avail.is_empty() {
                            let k = (frac as usize * avail.len()) / 256;
                            store.ack(0, avail[k].position()).unwrap();
                            acked = avail[k].seq;
                        }
                    }
                    Op::Reopen => {
                        store.close().unwrap();
                        drop(store);
                        let (s, report) = Store::open(o.clone()).unwrap();
                        prop_assert!(report.is_clean());
                        store = s;
                        prop_assert_eq!(store.acked(0).seq, acked);
                    }
                    Op::Read { from_back } => {
                        let from = (written.len() as u64).saturating_sub(from_back as u64).max(acked + 1);
                        let got = read_all(&store, 0, from);
                        // A contiguous suffix of the model from `from` (drops only remove a prefix).
                        if let Some(first) = got.first() {
                            prop_assert!(first.seq >= from);
                        }
                        for r in &got {
                            prop_assert_eq!(&r.record, &written[r.seq as usize - 1]);
                        }
                        if let Some(last) = got.last() {
                            prop_assert_eq!(last.seq, written.len() as u64);
                        }
                    }
                    Op::Purge => {
                        store.purge(0, None).unwrap();
                    }
                }
                // Invariants after every step.
                let st = store.stats()[0].clone();
                let got = read_all(&store, 0, acked + 1);
                prop_assert_eq!(st.records, got.len() as u64);
                prop_assert!(st.disk_bytes <= cap << 10, "disk {} > cap", st.disk_bytes);
                prop_assert_eq!(st.newest_seq, written.len() as u64);
                // Unacked records either are served or were dropped, and are counted.
                // Records vanish only from the front: whatever disappeared between the last
                // first-present record and now, without being acknowledged, was dropped.
                let newest = written.len() as u64;
                let now_first = got.first().map_or(newest + 1, |r| r.seq);
                dropped_model += now_first.saturating_sub(first_present.max(acked + 1));
                first_present = now_first;
                prop_assert_eq!(st.dropped.total(), dropped_model);
                prop_assert_eq!(got.len() as u64, newest + 1 - now_first);
                for w in got.windows(2) {
                    prop_assert_eq!(w[1].seq, w[0].seq + 1);
                }
                if reject {
                    prop_assert_eq!(st.dropped.max_bytes, 0);
                }
                let logical: u64 = got.iter().map(|r| r.record.logical_size() as u64).sum();
                prop_assert_eq!(st.logical_bytes, logical);
            }
        }
    }
}

/// A reader tailing a class while commits roll segments sees every record exactly once.
///
/// A commit larger than `commit_max_bytes` is written as several frames; when one of the later
/// frames does not fit, the writer seals the segment and starts the next one in the middle of
/// the commit. The next segment became visible to readers before the frames already written
/// to the sealed one were published, so a reader at the sealed segment's published end took
/// it as finished and jumped to the new segment's first record, skipping those frames for
/// good (the forwarder then acknowledged past records it never sent; found by
/// `tests/cli.rs`' import test under load).
#[test]
fn tailing_reader_sees_every_record_across_mid_commit_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), vec![class("c", 1 << 30, Overflow::Reject)]);
    // 2 KiB frames in 6 KiB segments: most batches below span several frames and a roll.
    o.segment_bytes = 6 << 10;
    o.commit_max_bytes = 2 << 10;
    let (store, _) = Store::open(o).unwrap();
    let c = store.class_id("c").unwrap();
    const BATCHES: u64 = 400;
    const PER_BATCH: u64 = 30;
    let total = BATCHES * PER_BATCH;
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut r = store.reader(c, 1).unwrap();
            let mut next = 1u64;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while next <= total {
                assert!(
                    std::time::Instant::now() < deadline,
                    "reader stuck at {next}"
                );
                for s in r.read_batch(64, 1 << 20).unwrap() {
                    assert_eq!(s.seq, next, "the reader skipped records {next}..{}", s.seq);
                    next += 1;
                }
            }
        })
    };
    let mut i = 0u64;
    for _ in 0..BATCHES {
        let mut batch = AppendBatch::default();
        for _ in 0..PER_BATCH {
            store
                .append_to(&mut batch, c, rec(i, 200).as_ref())
                .unwrap();
            i += 1;
        }
        for r in store.submit(&mut batch).unwrap().wait() {
            r.unwrap();
        }
    }
    reader.join().unwrap();
    store.close().unwrap();
}
