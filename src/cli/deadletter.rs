//! `ferry dead-letter list|show|replay|drop`: records Kafka refused for good.

use clap::{Args, Subcommand};

use crate::control::inspect::{self, DeadLetterSnapshot};
use crate::control::{CountResult, DeadLetterEntry, DeadLetterList, Request, MAX_PEEK_PAYLOAD};

use super::conn::{self, SocketArgs, SourceArgs};
use super::fmt::{self, Table};
use super::{Cli, EXIT_OK};

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters (id, class, reason, topic, size).
    #[command(
        after_help = "Examples:\n  ferry dead-letter list\n  ferry dead-letter list --json | jq '.entries[].reason'"
    )]
    List(ListArgs),
    /// Show one dead letter with its headers and payload.
    #[command(after_help = "Example:\n  ferry dead-letter show 17")]
    Show(ShowArgs),
    /// Send dead letters again (after fixing the cause).
    #[command(
        after_help = "Examples:\n  ferry dead-letter replay 17\n  ferry dead-letter replay all\nReplayed records get new sequence numbers in their class and are sent again."
    )]
    Replay(ChangeArgs),
    /// Remove dead letters without sending them.
    #[command(after_help = "Examples:\n  ferry dead-letter drop 17\n  ferry dead-letter drop all")]
    Drop(ChangeArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON: {"entries": [{"id", "class", ...}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The dead letter's id (from `list`).
    pub id: u64,
    /// Print JSON: {"info": {...}, "record": {...}}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// A dead letter's id, or `all`.
    #[arg(value_name = "ID|all", value_parser = parse_which)]
    pub which: Which,
    /// Print JSON: {"count"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    One(u64),
    All,
}

fn parse_which(s: &str) -> Result<Which, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(Which::All);
    }
    s.parse()
        .map(Which::One)
        .map_err(|_| format!("`{s}` is neither a dead-letter id nor `all`"))
}

impl Which {
    fn id(self) -> Option<u64> {
        match self {
            Which::One(i) => Some(i),
            Which::All => None,
        }
    }
}

pub fn run(cli: &Cli, cmd: &DeadLetterCommand) -> anyhow::Result<u8> {
    match cmd {
        DeadLetterCommand::List(a) => {
            let r: DeadLetterList = conn::read_only(
                cli,
                &a.source,
                |c| c.call(Request::DeadLetterList),
                |o| {
                    let snap = DeadLetterSnapshot::open(&o.data_dir)?;
                    Ok(DeadLetterList {
                        entries: snap
                            .log
                            .as_ref()
                            .map(|l| l.list().iter().map(inspect::dead_letter_summary).collect())
                            .unwrap_or_default(),
                    })
                },
            )?;
            if a.json {
                fmt::print_json(&r)?;
            } else if r.entries.is_empty() {
                fmt::print("no dead letters\n")?;
            } else {
                let now = inspect::now_ms();
                let mut t = Table::new(&[
                    ("ID", true),
                    ("CLASS", false),
                    ("SEQ", true),
                    ("AGE", true),
                    ("SIZE", true),
                    ("TOPIC", false),
                    ("REASON", false),
                ]);
                for e in &r.entries {
                    t.row(vec![
                        e.id.to_string(),
                        e.class.clone(),
                        e.seq.to_string(),
                        fmt::age_ms(e.dead_at_ms, now),
                        fmt::bytes(e.payload_bytes),
                        fmt::clip(&fmt::printable(&e.mqtt_topic), 24),
                        fmt::clip(&e.reason, 30),
                    ]);
                }
                fmt::print(&t.render())?;
            }
        }
        DeadLetterCommand::Show(a) => {
            let r: DeadLetterEntry = conn::read_only(
                cli,
                &a.source,
                |c| c.call(Request::DeadLetterShow { id: a.id }),
                |o| {
                    let snap = DeadLetterSnapshot::open(&o.data_dir)?;
                    let Some(log) = snap.log.as_ref() else {
                        anyhow::bail!("dead letter {} does not exist (the log is empty)", a.id);
                    };
                    Ok(inspect::dead_letter_entry(
                        &log.get(a.id)?,
                        MAX_PEEK_PAYLOAD,
                    ))
                },
            )?;
            if a.json {
                fmt::print_json(&r)?;
            } else {
                let mut s = format!(
                    "dead letter {} (since {}): {}\n",
                    r.info.id,
                    fmt::time(r.info.dead_at_ms),
                    r.info.reason
                );
                s.push_str(&super::peek::render_record(&r.info.class, &r.record));
                fmt::print(&s)?;
            }
        }
        DeadLetterCommand::Replay(a) | DeadLetterCommand::Drop(a) => {
            let replay = matches!(cmd, DeadLetterCommand::Replay(_));
            let req = if replay {
                Request::DeadLetterReplay { id: a.which.id() }
            } else {
                Request::DeadLetterDrop { id: a.which.id() }
            };
            let r: CountResult = conn::client(cli, &a.socket.socket)?.call(req)?;
            if a.json {
                fmt::print_json(&r)?;
            } else {
                fmt::print(&format!(
                    "{} {} dead letter(s)\n",
                    if replay { "replayed" } else { "dropped" },
                    r.count
                ))?;
            }
        }
    }
    Ok(EXIT_OK)
}
