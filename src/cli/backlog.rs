//! `ferry backlog [--depth N]`: what is waiting, grouped by class and MQTT topic prefix.

use clap::Args;

use crate::control::{inspect, BacklogReport, Request};

use super::conn::{self, SourceArgs};
use super::fmt::{self, Table};
use super::{Cli, EXIT_OK};

pub const AFTER_HELP: &str = "\
Examples:
  ferry backlog                    per class, and per first topic level
  ferry backlog --depth 2          group by the first two levels (site/line1)
  ferry backlog --top 50 --json

The class is read with a bounded-memory reader; at most 10,000 distinct
prefixes are tracked per class (the rest count as \"(other)\"), and the
largest --top prefixes by bytes are listed.";

#[derive(Debug, Args)]
pub struct BacklogArgs {
    /// Topic levels per prefix (2: `site/line1`).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub depth: usize,
    /// Prefixes listed per class, largest first.
    #[arg(long, default_value_t = inspect::DEFAULT_MAX_PREFIXES, value_name = "N")]
    pub top: usize,
    /// Print JSON (the control API's `backlog` result).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

pub fn run(cli: &Cli, args: &BacklogArgs) -> anyhow::Result<u8> {
    if args.depth == 0 {
        anyhow::bail!("--depth must be at least 1 (the first topic level)");
    }
    let r: BacklogReport = conn::read_only(
        cli,
        &args.source,
        |c| {
            c.call(Request::Backlog {
                depth: args.depth,
                max_prefixes: args.top,
            })
        },
        |o| {
            Ok(inspect::backlog(
                &o.store, "data_dir", args.depth, args.top,
            )?)
        },
    )?;
    if args.json {
        fmt::print_json(&r)?;
    } else {
        fmt::print(&render(&r))?;
    }
    Ok(EXIT_OK)
}

pub fn render(r: &BacklogReport) -> String {
    let mut t = Table::new(&[
        ("CLASS / PREFIX", false),
        ("RECORDS", true),
        ("BYTES", true),
        ("OLDEST", true),
    ]);
    let age = |ts: Option<u64>| ts.map_or("-".into(), |t| fmt::age_ms(t, r.now_ms));
    for c in &r.classes {
        t.row(vec![
            c.class.clone(),
            fmt::count(c.records),
            fmt::bytes(c.bytes),
            age(c.oldest_ts_ms),
        ]);
        for p in &c.prefixes {
            let name = if p.prefix.is_empty() {
                "(empty level)"
            } else {
                &p.prefix
            };
            t.row(vec![
                format!("  {}", fmt::printable(name)),
                fmt::count(p.records),
                fmt::bytes(p.bytes),
                age(Some(p.oldest_ts_ms)),
            ]);
        }
        if c.other_records > 0 {
            t.row(vec![
                "  (other)".into(),
                fmt::count(c.other_records),
                fmt::bytes(c.other_bytes),
                String::new(),
            ]);
        }
    }
    let mut s = format!("waiting records by topic prefix (depth {})\n", r.depth);
    s.push_str(&t.render());
    s
}
