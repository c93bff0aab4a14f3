//! Throttle accuracy against the real clock.
//!
//! Drives a [`Throttle`] the way the forwarder does — check, sleep the returned wait, send,
//! record the bytes sent — with `std::thread::sleep` and the system clock, and reports the
//! achieved rate. No network: this isolates the token bucket and the OS sleep granularity;
//! the end-to-end figure against Kafka belongs to the forwarder benchmark.
//!
//! ```text
//! cargo bench --bench throttle                                  # 10 s at 1 MiB/s, 16 KiB batches
//! cargo bench --bench throttle -- --secs 60 --rate 1MiB/s --batch 64KiB
//! ```
//!
//! Two figures: the whole run (includes the bucket's initial burst of 250 ms of rate, which
//! weighs 2.5 % over 10 s and 0.4 % over 60 s), and the steady state from the first wait on.

use std::time::{Duration, Instant};

use ferry::forward::clock::{Clock, SystemClock};
use ferry::forward::throttle::{parse_bytes, Rate, Throttle, ThrottleConfig};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = arg(&args, "--secs").map_or(10, |s| s.parse().unwrap_or(10));
    let rate: Rate = arg(&args, "--rate")
        .unwrap_or_else(|| "1MiB/s".into())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = parse_bytes(&arg(&args, "--batch").unwrap_or_else(|| "16KiB".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    let Some(per_sec) = rate.bytes_per_sec() else {
        panic!("the benchmark needs a finite --rate");
    };

    let clock = SystemClock::local();
    let mut t = Throttle::new(ThrottleConfig::rate(rate), &clock.now());
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut sent: u64 = 0;
    let mut steady: Option<(Instant, u64)> = None;
    let (mut waits, mut oversleep_total, mut oversleep_max) =
        (0u64, Duration::ZERO, Duration::ZERO);
    loop {
        let now = clock.now();
        if now.mono >= end {
            break;
        }
        match t.check(batch, &now) {
            Ok(()) => {
                t.record_sent(batch, &now);
                sent += batch;
            }
            Err(wait) => {
                if steady.is_none() {
                    steady = Some((now.mono, sent));
                }
                let wait = wait.min(end - now.mono);
                std::thread::sleep(wait);
                let over = now.mono.elapsed().saturating_sub(wait);
                waits += 1;
                oversleep_total += over;
                oversleep_max = oversleep_max.max(over);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let whole = sent as f64 / elapsed;
    let err = |r: f64| (r / per_sec as f64 - 1.0) * 100.0;
    println!(
        "throttle bench: target {rate} ({per_sec} B/s), batch {batch} B, {elapsed:.2} s real clock"
    );
    println!(
        "  whole run   : {:>12.0} B/s  error {:+.3} %  ({sent} bytes)",
        whole,
        err(whole)
    );
    if let Some((t0, s0)) = steady {
        let r = (sent - s0) as f64 / t0.elapsed().as_secs_f64();
        println!("  steady state: {:>12.0} B/s  error {:+.3} %", r, err(r));
    }
    if waits > 0 {
        println!(
            "  sleeps: {waits}, mean oversleep {:.1} us, max {:.1} us",
            oversleep_total.as_secs_f64() * 1e6 / waits as f64,
            oversleep_max.as_secs_f64() * 1e6
        );
    }
}
