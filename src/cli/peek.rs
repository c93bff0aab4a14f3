//! `ferry peek`: look at waiting records, decoded, without taking them out.

use std::fmt::Write as _;

use clap::Args;

use crate::control::{inspect, PeekFrom, PeekRecord, PeekReport, Request};

use super::conn::{self, SourceArgs};
use super::fmt;
use super::{Cli, EXIT_OK};

pub const AFTER_HELP: &str = "\
Examples:
  ferry peek --class telemetry                     the 10 oldest waiting records
  ferry peek --class alarms --from newest --limit 3
  ferry peek --class telemetry --topic 'site1/+/temp' --json

Payloads are shown as text when they are UTF-8 (marked json when they parse
as JSON) and as hex otherwise, cut after --max-payload bytes.";

#[derive(Debug, Args)]
pub struct PeekArgs {
    /// The class to read.
    #[arg(long, value_name = "CLASS")]
    pub class: String,
    /// Start at the oldest waiting records or show the newest ones.
    #[arg(long, value_enum, default_value_t = PeekFrom::Oldest)]
    pub from: PeekFrom,
    /// How many records (1-1000).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub limit: usize,
    /// Only topics matching this MQTT filter.
    #[arg(long, value_name = "FILTER")]
    pub topic: Option<String>,
    /// Show at most this many payload bytes per record.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub max_payload: usize,
    /// Print JSON (the control API's `peek` result).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

pub fn run(cli: &Cli, args: &PeekArgs) -> anyhow::Result<u8> {
    let r: PeekReport = conn::read_only(
        cli,
        &args.source,
        |c| {
            c.call(Request::Peek {
                class: args.class.clone(),
                from: args.from,
                limit: args.limit,
                topic: args.topic.clone(),
                max_payload: args.max_payload,
            })
        },
        |o| {
            Ok(inspect::peek(
                &o.store,
                &args.class,
                args.from,
                args.limit,
                args.topic.as_deref(),
                args.max_payload,
            )?)
        },
    )?;
    if args.json {
        fmt::print_json(&r)?;
    } else {
        let mut s = String::new();
        if r.records.is_empty() {
            let _ = writeln!(s, "class {}: no waiting records match", r.class);
        }
        for rec in &r.records {
            s.push_str(&render_record(&r.class, rec));
        }
        fmt::print(&s)?;
    }
    Ok(EXIT_OK)
}

/// One record with its headers, then the payload.
pub fn render_record(class: &str, r: &PeekRecord) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "--- {class} #{} ---", r.seq);
    let _ = writeln!(s, "topic:        {}", fmt::printable(&r.topic));
    let _ = writeln!(
        s,
        "received:     {} ({} ago)",
        fmt::time(r.timestamp_ms),
        fmt::age_ms(r.timestamp_ms, inspect::now_ms())
    );
    let _ = writeln!(
        s,
        "client:       {}   qos {}{}",
        fmt::printable(&r.client_id),
        r.qos,
        if r.retain { "   retain" } else { "" }
    );
    if let Some(ct) = &r.content_type {
        let _ = writeln!(s, "content-type: {}", fmt::printable(ct));
    }
    for (k, v) in &r.user_properties {
        let _ = writeln!(
            s,
            "property:     {}={}",
            fmt::printable(k),
            fmt::printable(v)
        );
    }
    let _ = writeln!(
        s,
        "payload:      {} ({}{})",
        fmt::bytes(r.payload_bytes),
        r.payload_encoding,
        if r.payload_truncated { ", cut" } else { "" }
    );
    let _ = writeln!(s, "{}", fmt::printable(&r.payload));
    s
}
