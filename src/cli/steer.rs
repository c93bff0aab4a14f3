//! Steering a running daemon: `pause`, `resume`, `drain`, `purge`, `reload`.
//!
//! These change what the daemon does, so they need the daemon: without it they fail with the
//! command that starts it (read-only inspection cannot steer anything).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use clap::Args;

use crate::config::HumanDuration;
use crate::control::{PurgeResult, Request, StatusReport, SteerResult};

use super::conn::{self, SocketArgs};
use super::fmt;
use super::{Cli, EXIT_FAILURE, EXIT_OK};

pub const PAUSE_HELP: &str = "\
Examples:
  ferry pause                      stop sending every class (ingest continues)
  ferry pause --class bulk         stop sending one class
Records already sent still finish; nothing is lost while paused.";

pub const RESUME_HELP: &str = "\
Examples:
  ferry resume                     resume every class (clears per-class pauses)
  ferry resume --class bulk";

pub const DRAIN_HELP: &str = "\
Examples:
  ferry drain --for 30m            send now for 30 minutes, windows or not
  ferry drain --cancel             back to the configured windows
The throttle still applies; `ferry status` shows when the override ends.";

pub const PURGE_HELP: &str = "\
Examples:
  ferry purge --class telemetry --older-than 7d
  ferry purge --class bulk --all --yes
Purged records are never sent. Whole segments are removed, so a few records
just past the cut-off may stay. Asks for confirmation on a terminal unless
--yes; without a terminal, --yes is required. Purges are logged and counted
(DROPS in `ferry status`).";

pub const RELOAD_HELP: &str = "\
Examples:
  ferry reload                     same as `systemctl reload ferry` (SIGHUP)
Classification rules, users and ACLs change without a restart and without
dropping connections. Any other change (classes, [forward] windows and
throttle, [kafka], mappings, listen addresses, data directory) is refused with
the list of what needs `systemctl restart ferry`; the running config stays.";

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Only this class (default: every class).
    #[arg(long, value_name = "CLASS")]
    pub class: Option<String>,
    /// Print JSON: {"message"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// How long to send regardless of the windows (`30m`, `2h`).
    #[arg(
        long = "for",
        value_name = "DURATION",
        required_unless_present = "cancel"
    )]
    pub duration: Option<HumanDuration>,
    /// End an override early.
    #[arg(long, conflicts_with = "duration")]
    pub cancel: bool,
    /// Print JSON: {"message"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["older_than", "all"]))]
pub struct PurgeArgs {
    /// The class to purge.
    #[arg(long, value_name = "CLASS")]
    pub class: String,
    /// Remove records older than this (`7d`, `12h`).
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<HumanDuration>,
    /// Remove every waiting record of the class.
    #[arg(long)]
    pub all: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print JSON: {"class", "records", "bytes"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Print JSON: {"message"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

fn steer(cli: &Cli, socket: &SocketArgs, req: Request, json: bool) -> anyhow::Result<u8> {
    let r: SteerResult = conn::client(cli, &socket.socket)?.call(req)?;
    if json {
        fmt::print_json(&r)?;
    } else {
        fmt::print(&format!("{}\n", r.message))?;
    }
    Ok(EXIT_OK)
}

pub fn pause(cli: &Cli, a: &PauseArgs) -> anyhow::Result<u8> {
    let req = Request::Pause {
        class: a.class.clone(),
    };
    steer(cli, &a.socket, req, a.json)
}

pub fn resume(cli: &Cli, a: &PauseArgs) -> anyhow::Result<u8> {
    let req = Request::Resume {
        class: a.class.clone(),
    };
    steer(cli, &a.socket, req, a.json)
}

pub fn drain(cli: &Cli, a: &DrainArgs) -> anyhow::Result<u8> {
    let for_secs = match a.duration {
        Some(d) if d.get().as_secs() == 0 => {
            anyhow::bail!("--for must be at least 1s (use --cancel to end an override)")
        }
        Some(d) => d.get().as_secs(),
        None => 0,
    };
    steer(cli, &a.socket, Request::Drain { for_secs }, a.json)
}

pub fn reload(cli: &Cli, a: &ReloadArgs) -> anyhow::Result<u8> {
    steer(cli, &a.socket, Request::Reload, a.json)
}

pub fn purge(cli: &Cli, a: &PurgeArgs) -> anyhow::Result<u8> {
    let client = conn::client(cli, &a.socket.socket)?;
    let what = match a.older_than {
        Some(d) => format!("records older than {}", fmt::age(d.get().as_secs())),
        None => "ALL waiting records".to_string(),
    };
    if !a.yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "refusing to purge {what} of class `{}` without confirmation: pass --yes",
                a.class
            );
        }
        let status: StatusReport = client.call(Request::Status)?;
        let holds = status
            .classes
            .iter()
            .find(|c| c.name == a.class)
            .map(|c| {
                format!(
                    "Class `{}` holds {} waiting records ({}).\n",
                    a.class,
                    fmt::count(c.records),
                    fmt::bytes(c.bytes)
                )
            })
            .unwrap_or_default();
        let mut err = std::io::stderr().lock();
        write!(
            err,
            "{holds}Purge {what} of class `{}`? They will never be sent. [y/N] ",
            a.class
        )
        .context("writing the prompt")?;
        err.flush().context("writing the prompt")?;
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
            eprintln!("ferry: nothing purged");
            return Ok(EXIT_FAILURE);
        }
    }
    let r: PurgeResult = client.call(Request::Purge {
        class: a.class.clone(),
        older_than_secs: a.older_than.map(|d| d.get().as_secs()),
        all: a.all,
    })?;
    if a.json {
        fmt::print_json(&r)?;
    } else {
        fmt::print(&format!(
            "purged {} records ({} on disk) from class `{}`\n",
            fmt::count(r.records),
            fmt::bytes(r.bytes),
            r.class
        ))?;
    }
    Ok(EXIT_OK)
}
