//! Store benchmark: append throughput with group commit against the raw write+fdatasync rate
//! of the same bytes and batch sizes on the same disk, bytes on disk per logical byte, read
//! throughput with RSS, and open (recovery) time of a 1 GB store.
//!
//! Run: `cargo bench --bench store` (env: FERRY_BENCH_DIR=/path/on/the/disk/to/test,
//! FERRY_BENCH_MESSAGES=2000000, FERRY_BENCH_OPEN_GB=1, FERRY_BENCH_LEVEL=<zstd level; default:
//! the shipped one>). Prints a Markdown table. Diagnostics: FERRY_BENCH_BREAKDOWN=1 prints where
//! a group's time goes (raw: write / fdatasync; store: building + submit / waiting for the
//! ticket / the writer's fdatasync); FERRY_BENCH_ONLY=submit runs only raw and the
//! one-submit-per-group store, alternating three times (for profiling); FERRY_BENCH_ONLY=open
//! builds the open-time store once and opens it cold three times.

#[path = "common/telemetry.rs"]
mod telemetry_data;
use telemetry_data::telemetry;

use ferry::store::*;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

const BATCH: usize = 256;

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn class(name: &str) -> ClassOptions {
    ClassOptions {
        name: name.into(),
        max_bytes: 64 << 30,
        max_age: None,
        overflow: Overflow::DropOldest,
    }
}

/// The store as `config/ferry.toml` ships it (`commit.max_delay = "0ms"`: the writer commits
/// whatever is queued at once; `max_batch = "1MiB"`), with the given zstd level.
fn opts(dir: &Path, level: i32) -> StoreOptions {
    let mut o = StoreOptions::new(dir, vec![class("telemetry")]);
    o.compression_level = level;
    o.commit_max_delay = Duration::ZERO;
    o.commit_max_bytes = 1 << 20;
    o
}

/// How a run hands its groups of BATCH records to the store.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// One `append` per record; the writer sees them one by one (with `commit_max_delay` 5 ms
    /// to gather them). The group's tickets are awaited before the next group.
    Single,
    /// Each group as one `AppendBatch` (`append_to` + `submit`, what the MQTT session does with
    /// the PUBLISHes of one socket read), awaited before the next group is built.
    Submit,
    /// Like `Submit`, but the next group is built and submitted while the previous one commits
    /// (two groups in flight, as with two publishing connections); a commit still holds one group.
    Pipelined,
}

/// Appends `n` records in groups of BATCH; returns (seconds, io stats, class stats).
fn append_run(dir: &Path, level: i32, n: u64, mode: Mode) -> (f64, IoStats, ClassStats) {
    let mut o = opts(dir, level);
    if mode == Mode::Single {
        // One append() per record only forms groups if the writer waits for them.
        o.commit_max_delay = Duration::from_millis(5);
    }
    let (store, _) = Store::open(o).unwrap();
    let t0 = Instant::now();
    // Where the appender's time goes: building + encoding its groups vs waiting for tickets.
    let mut building = Duration::ZERO;
    let mut submitting = Duration::ZERO;
    let mut i = 0;
    let mut batch = AppendBatch::default();
    // Pipelined: the previous group's ticket, awaited after the next group was submitted.
    let mut previous: Option<BatchTicket> = None;
    let check = |results: Vec<ferry::store::Result<u64>>| {
        assert_eq!(results.len(), BATCH);
        for r in results {
            r.unwrap();
        }
    };
    while i < n {
        if mode == Mode::Single {
            let tickets: Vec<_> = (0..BATCH as u64)
                .map(|k| store.append(0, telemetry(i + k)).unwrap())
                .collect();
            for t in tickets {
                t.wait().unwrap();
            }
        } else {
            let b0 = Instant::now();
            for k in 0..BATCH as u64 {
                let rec = telemetry(i + k);
                store.append_to(&mut batch, 0, rec.as_ref()).unwrap();
            }
            let s0 = Instant::now();
            let ticket = store.submit(&mut batch).unwrap();
            submitting += s0.elapsed();
            building += b0.elapsed();
            if mode == Mode::Pipelined {
                if let Some(t) = previous.replace(ticket) {
                    check(t.wait());
                }
            } else {
                check(ticket.wait());
            }
        }
        i += BATCH as u64;
    }
    if let Some(t) = previous {
        check(t.wait());
    }
    let secs = t0.elapsed().as_secs_f64();
    let io = store.io_stats();
    let st = store.stats().remove(0);
    if std::env::var_os("FERRY_BENCH_BREAKDOWN").is_some() && mode != Mode::Single {
        let groups = (n / BATCH as u64).max(1) as f64;
        let per = |s: f64| s / groups * 1e6;
        eprintln!(
            "breakdown (zstd {level}, {:?}): per group {:.0} µs = building+submit {:.0} µs (submit {:.0}) + waiting {:.0} µs; writer fdatasync {:.0} µs per commit ({} commits); zeroing ahead {:.0} µs per commit",
            mode,
            per(secs),
            per(building.as_secs_f64()),
            per(submitting.as_secs_f64()),
            per(secs - building.as_secs_f64()),
            io.fsync_seconds_sum / io.fsyncs.max(1) as f64 * 1e6,
            io.commits,
            io.zero_seconds_sum / io.commits.max(1) as f64 * 1e6
        );
    }
    store.close().unwrap();
    (secs, io, st)
}

/// A fresh, empty file for a raw run.
fn raw_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Appends the message bytes (topic, client id, payload) of records `i..i + BATCH` to `buf`.
fn raw_group(buf: &mut Vec<u8>, i: u64) {
    for k in 0..BATCH as u64 {
        let r = telemetry(i + k);
        buf.extend_from_slice(r.topic.as_bytes());
        buf.extend_from_slice(r.client_id.as_bytes());
        buf.extend_from_slice(&r.payload);
    }
}

/// The same message bytes, BATCH at a time: one write + fdatasync per batch, no framing.
fn raw_run(dir: &Path, n: u64) -> f64 {
    let path = dir.join("raw.log");
    let mut f = raw_file(&path);
    let mut buf = Vec::with_capacity(BATCH * 256);
    let mut syncing = Duration::ZERO;
    let mut writing = Duration::ZERO;
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        buf.clear();
        raw_group(&mut buf, i);
        let w0 = Instant::now();
        f.write_all(&buf).unwrap();
        writing += w0.elapsed();
        let s0 = Instant::now();
        f.sync_data().unwrap();
        syncing += s0.elapsed();
        i += BATCH as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    if std::env::var_os("FERRY_BENCH_BREAKDOWN").is_some() {
        let groups = (n / BATCH as u64).max(1) as f64;
        eprintln!(
            "breakdown (raw): per group {:.0} µs, of which write {:.0} µs, fdatasync {:.0} µs",
            secs / groups * 1e6,
            writing.as_secs_f64() / groups * 1e6,
            syncing.as_secs_f64() / groups * 1e6
        );
    }
    std::fs::remove_file(&path).unwrap();
    secs
}

/// Raw with the overlap of `Mode::Pipelined`: a second thread writes and fdatasyncs group k
/// while this one builds group k+1 (two groups in flight at most), same bytes, no framing, no
/// compression. The baseline for the pipelined store run.
fn raw_pipelined_run(dir: &Path, n: u64) -> f64 {
    let path = dir.join("raw-pipelined.log");
    let mut f = raw_file(&path);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let t0 = Instant::now();
    let syncer = std::thread::spawn(move || {
        for buf in rx {
            f.write_all(&buf).unwrap();
            f.sync_data().unwrap();
            done_tx.send(()).unwrap();
        }
    });
    let mut i = 0;
    let mut in_flight = 0;
    while i < n {
        let mut buf = Vec::with_capacity(BATCH * 256);
        raw_group(&mut buf, i);
        tx.send(buf).unwrap();
        in_flight += 1;
        if in_flight == 2 {
            done_rx.recv().unwrap();
            in_flight -= 1;
        }
        i += BATCH as u64;
    }
    drop(tx);
    for _ in 0..in_flight {
        done_rx.recv().unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    syncer.join().unwrap();
    std::fs::remove_file(&path).unwrap();
    secs
}

fn read_run(dir: &Path, level: i32) -> (f64, u64, u64, u64) {
    let mut o = opts(dir, level);
    o.read_only = true;
    let (store, _) = Store::open(o).unwrap();
    let rss_before = rss_kb("VmRSS:");
    let mut r = store.reader(0, 1).unwrap();
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut peak = 0;
    loop {
        let b = r.read_batch(1000, 1 << 20).unwrap();
        if b.is_empty() {
            break;
        }
        n += b.len() as u64;
        if n % 100_000 < 1000 {
            peak = peak.max(rss_kb("VmRSS:"));
        }
    }
    (
        t0.elapsed().as_secs_f64(),
        n,
        rss_before,
        peak.max(rss_kb("VmRSS:")),
    )
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var("FERRY_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::env::temp_dir());
    let n: u64 = std::env::var("FERRY_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let open_gb: f64 = std::env::var("FERRY_BENCH_OPEN_GB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let n = n / BATCH as u64 * BATCH as u64;
    let work = tempfile::tempdir_in(&base).unwrap();
    println!(
        "# ferry store bench: {n} x ~200 B JSON telemetry, groups of {BATCH}, dir {}",
        base.display()
    );

    // The shipped zstd level unless FERRY_BENCH_LEVEL says otherwise.
    let level: i32 = std::env::var("FERRY_BENCH_LEVEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(StoreOptions::new(&base, vec![]).compression_level);
    // FERRY_BENCH_ONLY=open: build the FERRY_BENCH_OPEN_GB store once, then three cold opens.
    if std::env::var("FERRY_BENCH_ONLY").as_deref() == Ok("open") {
        let big = work.path().join("big");
        let per = telemetry(0).logical_size() as u64 + 6;
        let big_n = ((open_gb * 1e9) as u64 / per) / BATCH as u64 * BATCH as u64;
        append_run(&big, 0, big_n, Mode::Submit);
        for round in 0..3 {
            if std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
                println!("cannot drop the page cache (needs root): opens are warm");
            }
            let t0 = Instant::now();
            let (store, _) = Store::open(opts(&big, 0)).unwrap();
            let s = t0.elapsed().as_secs_f64();
            store.close().unwrap();
            println!("open {round}: {s:.3} s");
        }
        return;
    }
    // FERRY_BENCH_ONLY=submit: only raw / store (zstd, one submit per group) alternating, for
    // profiling and the FERRY_BENCH_BREAKDOWN lines.
    if std::env::var("FERRY_BENCH_ONLY").as_deref() == Ok("submit") {
        for round in 0..3 {
            let raw = raw_run(work.path(), n);
            let d = work.path().join(format!("only{round}"));
            let (s, _, st) = append_run(&d, level, n, Mode::Submit);
            eprintln!(
                "level {level}: disk/logical {:.3}",
                st.disk_bytes as f64 / st.logical_bytes as f64
            );
            println!(
                "raw {:.0} msg/s, store submit {:.0} msg/s, ratio {:.2}",
                n as f64 / raw,
                n as f64 / s,
                raw / s
            );
            std::fs::remove_dir_all(&d).unwrap();
        }
        return;
    }
    // Raw and store (shipped settings, one submit per group) alternating in BLOCKS blocks of
    // n / BLOCKS records: this disk's fdatasync latency drifts by phases of seconds, and short
    // alternating blocks put both through the same phases.
    const BLOCKS: u64 = 10;
    let block = (n / BLOCKS / BATCH as u64).max(1) * BATCH as u64;
    let (mut alt_raw, mut alt_store) = (0.0, 0.0);
    for b in 0..BLOCKS {
        let d = work.path().join(format!("block{b}"));
        if b % 2 == 0 {
            alt_raw += raw_run(work.path(), block);
            alt_store += append_run(&d, level, block, Mode::Submit).0;
        } else {
            alt_store += append_run(&d, level, block, Mode::Submit).0;
            alt_raw += raw_run(work.path(), block);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
    // Interleave raw and store runs so disk noise hits both alike.
    let raw1 = raw_run(work.path(), n);
    let zdir = work.path().join("zstd");
    let (zs, zio, zst) = append_run(&zdir, level, n, Mode::Submit);
    let raw2 = raw_run(work.path(), n);
    let rdir = work.path().join("raw");
    let (rs, rio, _) = append_run(&rdir, 0, n, Mode::Submit);
    let raw3 = raw_run(work.path(), n);
    let sdir = work.path().join("single");
    let (ss, sio, _) = append_run(&sdir, level, n, Mode::Single);
    let raw4 = raw_run(work.path(), n);
    let rawp1 = raw_pipelined_run(work.path(), n);
    let pdir = work.path().join("pipelined");
    let (ps, pio, _) = append_run(&pdir, level, n, Mode::Pipelined);
    let rawp2 = raw_pipelined_run(work.path(), n);
    let raw5 = raw_run(work.path(), n);
    // The previous default level, for comparison with the shipped one.
    let l3dir = work.path().join("level3");
    let (l3s, _, l3st) = append_run(&l3dir, 3, n, Mode::Submit);
    let raw6 = raw_run(work.path(), n);
    let raw = (raw1 + raw2 + raw3 + raw4 + raw5 + raw6) / 6.0;
    // The virtual disk's fdatasync latency drifts within a run, so each store run is also
    // compared with the raw runs just before and after it.
    let near = |before: f64, after: f64| (before + after) / 2.0;
    // A store run's rate, its ratio to all raw runs and to the raw runs just before and after.
    let vs_raw = |secs: f64, before: f64, after: f64| {
        format!(
            "{:.0} msg/s — ratio to raw {:.2} (to the raw runs before and after it: {:.2})",
            n as f64 / secs,
            raw / secs,
            near(before, after) / secs
        )
    };
    let fsync_ms = |io: &IoStats| io.fsync_seconds_sum / io.fsyncs.max(1) as f64 * 1e3;
    let msg_bytes: u64 = (0..n)
        .map(|i| {
            let r = telemetry(i);
            (r.topic.len() + r.client_id.len() + r.payload.len()) as u64
        })
        .sum();

    let (read_s, read_n, rss0, rss_peak) = read_run(&zdir, level);
    assert_eq!(read_n, n);

    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| **store append (zstd level {level}, one submit per group) vs raw, alternating in {BLOCKS} blocks of {block} records** | store {:.0} msg/s, raw {:.0} msg/s — **ratio {:.2}** |",
        (block * BLOCKS) as f64 / alt_store,
        (block * BLOCKS) as f64 / alt_raw,
        alt_raw / alt_store
    );
    println!(
        "| raw write+fdatasync, same bytes, groups of {BATCH} | {:.0} msg/s ({:.1} MB/s) |",
        n as f64 / raw,
        msg_bytes as f64 / raw / 1e6
    );
    println!(
        "| store append, zstd level {level}, one submit per group | {} |",
        vs_raw(zs, raw1, raw2)
    );
    println!(
        "| store append, compression off, one submit per group | {} |",
        vs_raw(rs, raw2, raw3)
    );
    println!(
        "| store append, zstd level {level}, one append() per record | {}; {} commits, {:.0} records per commit |",
        vs_raw(ss, raw3, raw4),
        sio.commits,
        sio.batch_records_sum as f64 / sio.commits.max(1) as f64
    );
    println!(
        "| store append, zstd level {level}, one submit per group, next group built during the commit | {}; {} commits, {:.0} records per commit, mean fsync {:.2} ms |",
        vs_raw(ps, raw4, raw5),
        pio.commits,
        pio.batch_records_sum as f64 / pio.commits.max(1) as f64,
        fsync_ms(&pio)
    );
    println!(
        "| raw write+fdatasync, pipelined (a second thread writes and syncs group k while group k+1 is built) | {:.0} / {:.0} msg/s (before / after the pipelined store run) |",
        n as f64 / rawp1,
        n as f64 / rawp2
    );
    println!(
        "| store append, zstd level {level}, pipelined, vs the pipelined raw runs beside it | ratio {:.2} |",
        near(rawp1, rawp2) / ps
    );
    println!(
        "| store append, zstd level 3, one submit per group | {}; bytes on disk / logical byte {:.3} |",
        vs_raw(l3s, raw5, raw6),
        l3st.disk_bytes as f64 / l3st.logical_bytes as f64
    );
    println!(
        "| raw runs (msg/s each, interleaved with the store runs) | {} |",
        [raw1, raw2, raw3, raw4, raw5, raw6]
            .iter()
            .map(|r| format!("{:.0}", n as f64 / r))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "| commits / fsyncs (zstd {level} run) | {} / {} (mean fsync {:.2} ms, {:.0} records per commit) |",
        zio.commits,
        zio.fsyncs,
        fsync_ms(&zio),
        zio.batch_records_sum as f64 / zio.commits.max(1) as f64
    );
    println!(
        "| bytes on disk / logical byte (zstd {level}) | {:.3} ({} / {}) |",
        zst.disk_bytes as f64 / zst.logical_bytes as f64,
        zst.disk_bytes,
        zst.logical_bytes
    );
    println!(
        "| device writes / logical byte (zstd {level}: frames + segment space zeroed ahead) | {:.3} (zeros {} bytes, {:.1} ms to write and sync in all, {:.1} µs per commit) |",
        (zio.frame_bytes_written + zio.zeroed_bytes_written) as f64 / zio.logical_bytes_written as f64,
        zio.zeroed_bytes_written,
        zio.zero_seconds_sum * 1e3,
        zio.zero_seconds_sum / zio.commits.max(1) as f64 * 1e6
    );
    println!(
        "| bytes on disk / message byte (topic+client id+payload, zstd) | {:.3} |",
        zst.disk_bytes as f64 / msg_bytes as f64
    );
    println!(
        "| bytes on disk / logical byte (compression off) | {:.3} |",
        rio.frame_bytes_written as f64 / rio.logical_bytes_written as f64
    );
    println!(
        "| read (zstd store, from disk cache) | {:.0} msg/s |",
        read_n as f64 / read_s
    );
    println!(
        "| RSS while reading the whole class | {} KiB before, {} KiB peak |",
        rss0, rss_peak
    );
    drop(work);

    // Open time of a store with `open_gb` GB on disk (compression off: the most bytes to check).
    let work = tempfile::tempdir_in(&base).unwrap();
    let big = work.path().join("big");
    let per = telemetry(0).logical_size() as u64 + 6;
    let big_n = ((open_gb * 1e9) as u64 / per) / BATCH as u64 * BATCH as u64;
    let (bs, _, bst) = append_run(&big, 0, big_n, Mode::Submit);
    let disk = dir_bytes(&big);
    let t0 = Instant::now();
    let (store, report) = Store::open(opts(&big, 0)).unwrap();
    let open_s = t0.elapsed().as_secs_f64();
    let rss_open = rss_kb("VmRSS:");
    store.close().unwrap();
    drop(store);
    // Cold cache, if this process may drop caches (root on a real machine).
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    let t0 = Instant::now();
    let (store, _) = Store::open(opts(&big, 0)).unwrap();
    let open_cold = t0.elapsed().as_secs_f64();
    store.close().unwrap();
    let (read_s, read_n, rss0, rss_peak) = read_run(&big, 0);
    println!(
        "| build {:.2} GB store (compression off) | {:.0} msg/s, {} records, {} segments |",
        disk as f64 / 1e9,
        big_n as f64 / bs,
        bst.records,
        bst.segments
    );
    println!("| open {:.2} GB store, page cache warm | {:.3} s ({} segments, {} bytes CRC-checked; RSS {} KiB) |",
        disk as f64 / 1e9, open_s, report.segments_scanned, report.bytes_scanned, rss_open);
    println!(
        "| open {:.2} GB store, {} | {:.3} s |",
        disk as f64 / 1e9,
        if cold {
            "page cache dropped"
        } else {
            "page cache NOT dropped (no permission)"
        },
        open_cold
    );
    println!(
        "| read {:.2} GB class | {:.0} msg/s; RSS {} KiB before, {} KiB peak |",
        disk as f64 / 1e9,
        read_n as f64 / read_s,
        rss0,
        rss_peak
    );
}
