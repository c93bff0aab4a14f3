//! `ferry status [--watch]`: is the link up, how much waits, how old, when will it be gone.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;

use crate::control::{inspect, Request, StatusReport};

use super::conn::{self, SourceArgs};
use super::fmt::{self, Table};
use super::{Cli, EXIT_OK};

pub const AFTER_HELP: &str = "\
Examples:
  ferry status                     link, window, rates and every class's backlog
  ferry status --watch             redraw every second (Ctrl-C to stop)
  ferry status --json | jq '.classes[] | {name, records, oldest_age_secs}'
  ferry status --data-dir /var/lib/ferry   read a data directory read-only

Without a running daemon, read-only commands (status, backlog, peek,
dead-letter list/show, export) read [storage] data_dir without changing it.

Columns: RECORDS and BYTES wait for delivery; OLDEST is the age of the oldest
waiting record; ACKED is the last sequence Kafka acknowledged; DROPS counts
records removed without delivery (limits, purge, corruption); ETA is when the
class's backlog will have been delivered, FITS whether that is before the
current window (or drain override) closes.

The ETA is a forecast from the policy, not from a trailing rate: the throttle
rate in force (time-of-day profiles, daily budget, per-class caps), the window
schedule and any drain override (a closed window adds the time until it
opens), priorities and min shares (higher classes drain first), and the live
ingest measured now (the backlog keeps growing while it drains). Bytes are
counted as the throttle meters them: Kafka payload + key + headers,
uncompressed. When the link is unthrottled, the recently measured drain rate
is used, or the ETA is `?` (unknown) until one is measured. The forecast
assumes the Kafka link is up.";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Redraw every second until interrupted.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// Print JSON (one object per line with --watch).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

fn fetch(cli: &Cli, args: &StatusArgs) -> anyhow::Result<StatusReport> {
    conn::read_only(
        cli,
        &args.source,
        |c| c.call(Request::Status),
        |o| Ok(inspect::status(&o.store, "data_dir", &o.data_dir, None)),
    )
}

pub fn run(cli: &Cli, args: &StatusArgs) -> anyhow::Result<u8> {
    if !args.watch {
        let r = fetch(cli, args)?;
        if args.json {
            fmt::print_json(&r)?;
        } else {
            fmt::print(&render(&r))?;
        }
        return Ok(EXIT_OK);
    }
    loop {
        // A failed fetch is shown in place, not fatal: the daemon may be restarting.
        let text = match fetch(cli, args) {
            Ok(r) if args.json => serde_json::to_string(&r)? + "\n",
            Ok(r) => render(&r),
            Err(e) => format!("ferry: {e:#}\n"),
        };
        if args.json {
            fmt::print(&text)?;
        } else {
            // Home + clear screen, then the frame: no flicker of a scrolled terminal.
            fmt::print(&format!(
                "\x1b[H\x1b[2J{text}\n(every 1s, {}; Ctrl-C to stop)\n",
                fmt::time(inspect::now_ms())
            ))?;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The human view of a status report, at most 80 columns wide.
pub fn render(r: &StatusReport) -> String {
    let mut s = String::new();
    let now = r.now_ms;
    match (r.source.as_str(), r.started_at_ms) {
        ("daemon", Some(start)) => {
            let _ = writeln!(
                s,
                "ferry {}: daemon pid {}, up {}",
                r.version,
                r.pid.map_or("?".into(), |p| p.to_string()),
                fmt::age_ms(start, now)
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "ferry {}: daemon not running; read-only view of {}",
                r.version,
                fmt::clip(&r.data_dir, 40)
            );
        }
    }
    if let Some(f) = &r.forwarder {
        let _ = writeln!(
            s,
            "link      {} since {} ({} ago)",
            f.link,
            fmt::time(f.link_since_ms),
            fmt::age_ms(f.link_since_ms, now)
        );
        if let Some(e) = &f.last_error {
            let at = f
                .last_error_at_ms
                .map(|t| format!("{} ago: ", fmt::age_ms(t, now)))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{}",
                fmt::clip(&format!("  last error {at}{e}"), fmt::WIDTH)
            );
        }
        let window = match (f.drain_now_until_ms, f.window_open, f.window_next_change_ms) {
            (Some(u), _, _) => format!(
                "drain override until {} ({} left)",
                fmt::time(u),
                fmt::age_ms(now, u)
            ),
            (None, true, Some(n)) => format!("open, closes in {}", fmt::age_ms(now, n)),
            (None, true, None) => "open (always)".into(),
            (None, false, Some(n)) => format!("closed, opens in {}", fmt::age_ms(now, n)),
            (None, false, None) => "closed (no window scheduled)".into(),
        };
        let _ = writeln!(s, "window    {window}");
        let _ = writeln!(
            s,
            "throttle  {}",
            f.throttle_bytes_per_sec
                .map_or("unlimited".into(), |b| fmt::byte_rate(b as f64))
        );
        if let Some(i) = &r.ingest {
            let _ = writeln!(
                s,
                "ingest    {:.1} rec/s, {}",
                i.records_per_sec,
                fmt::byte_rate(i.bytes_per_sec)
            );
        }
        let _ = writeln!(
            s,
            "drain     {:.1} rec/s, {}   in flight {}",
            f.drain.records_per_sec,
            fmt::byte_rate(f.drain.bytes_per_sec),
            fmt::bytes(f.in_flight_bytes)
        );
        if let Some(e) = &r.eta {
            let _ = writeln!(s, "{}", fmt::clip(&eta_line(e), fmt::WIDTH));
        }
        let paused: Vec<&str> = r
            .classes
            .iter()
            .filter(|c| c.paused == Some(true))
            .map(|c| c.name.as_str())
            .collect();
        let paused = if f.all_paused {
            "all classes".to_string()
        } else if paused.is_empty() {
            "none".to_string()
        } else {
            paused.join(", ")
        };
        let _ = writeln!(
            s,
            "{}",
            fmt::clip(&format!("paused    {paused}"), fmt::WIDTH)
        );
    } else if r.source == "daemon" {
        let _ = writeln!(s, "link      no forwarder running in this daemon");
        if let Some(i) = &r.ingest {
            let _ = writeln!(
                s,
                "ingest    {:.1} rec/s, {}",
                i.records_per_sec,
                fmt::byte_rate(i.bytes_per_sec)
            );
        }
    }
    s.push('\n');
    let mut t = Table::new(&[
        ("CLASS", false),
        ("RECORDS", true),
        ("BYTES", true),
        ("OLDEST", true),
        ("ACKED", true),
        ("DROPS", true),
        ("STATE", false),
        ("ETA", true),
        ("FITS", false),
    ]);
    for c in &r.classes {
        t.row(vec![
            c.name.clone(),
            fmt::count(c.records),
            fmt::bytes(c.bytes),
            c.oldest_age_secs.map_or("-".into(), fmt::age),
            c.acked_seq.to_string(),
            fmt::count(c.dropped_total),
            match c.paused {
                Some(true) => "paused".into(),
                Some(false) => "active".into(),
                None => "-".into(),
            },
            match (c.eta_secs, &c.eta_note) {
                (Some(e), _) => fmt::age(e),
                (None, Some(n)) if n == "paused" => "paused".into(),
                (None, Some(_)) => "?".into(),
                (None, None) => "-".into(),
            },
            match c.fits_window {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
        ]);
    }
    t.row(vec![
        "total".into(),
        fmt::count(r.total_records),
        fmt::bytes(r.total_bytes),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        r.eta
            .as_ref()
            .map_or(String::new(), |e| e.total_secs.map_or("?".into(), fmt::age)),
        String::new(),
    ]);
    s.push_str(&t.render());
    s
}

/// `eta  all delivered in 4m 10s (throttle 512 KiB/s, 120 MiB waiting, ingest 40 KiB/s)`.
fn eta_line(e: &crate::control::EtaView) -> String {
    let when = match (e.total_secs, &e.total_note) {
        (Some(0), _) => "nothing waiting".to_string(),
        (Some(t), _) => format!("all delivered in {}", fmt::age(t)),
        (None, Some(n)) => format!("unknown: {n}"),
        (None, None) => "unknown".to_string(),
    };
    let rate = match (e.basis.as_str(), e.rate_bytes_per_sec) {
        ("measured", _) => "unthrottled, measured drain rate".to_string(),
        (_, Some(r)) => format!("throttle {}", fmt::byte_rate(r as f64)),
        (_, None) => "unthrottled".to_string(),
    };
    let link = if e.link_up || e.total_secs == Some(0) {
        ""
    } else {
        "; if the link comes up now"
    };
    format!(
        "eta       {when} ({rate}, {} waiting, ingest {}{link})",
        fmt::bytes(e.wire_bytes),
        fmt::byte_rate(e.ingest_wire_bytes_per_sec)
    )
}
