//! The `ferry` command line: argument definitions (clap derive), dispatch, exit codes and
//! error reporting. `src/main.rs` only calls [`main`].
//!
//! This module is the binary's front end that happens to live in the library (so commands can
//! be unit-tested and `main.rs` stays one line); it is the one place in the library that uses
//! `anyhow`, because here errors end as text for a person, not as values for a caller.
//!
//! Exit codes (in one place, like ripgrep's `main.rs`):
//! - 0: success, and also a closed stdout (`ferry config check | head` is not an error);
//! - 1: the command failed;
//! - 2: bad command line (clap);
//! - 78 (`EX_CONFIG` from sysexits.h): the configuration is invalid or unreadable. systemd
//!   units can use `RestartPreventExitStatus=78` so a broken config is not restarted in a loop.

mod config_cmd;
mod passwd;
mod version;

mod backlog;
mod conn;
mod deadletter;
pub mod fmt;
mod peek;
mod status;
mod steer;
mod transfer;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, DEFAULT_CONFIG_PATH};

/// Exit status for success (and for a reader that went away).
pub const EXIT_OK: u8 = 0;
/// Exit status for a failed command.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for an invalid or unreadable configuration (`EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Edge store-and-forward buffer: durable MQTT ingest, per-class disk log, prioritized Kafka forwarding",
    after_help = "Examples:\n  ferry run                               run the daemon with /etc/ferry/ferry.toml\n  ferry config check ./ferry.toml         validate a config and print the effective one\n  ferry passwd --user plc-7               hash a password for a [[mqtt.user]] entry\n  ferry version --json                    build information for a bug report\n  ferry status --watch                    link, windows, backlog per class, ETA\n  ferry peek --class critical --limit 5   look at waiting records\n  ferry drain --for 30m                   send now, whatever the windows say"
)]
pub struct Cli {
    /// Path of the config file.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (in the foreground; systemd runs it as `ferry run`).
    #[command(after_help = "Example:\n  ferry run --config /etc/ferry/ferry.toml")]
    Run(RunArgs),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Hash an MQTT password for a [[mqtt.user]] entry (argon2id).
    #[command(
        long_about = "Hash an MQTT password for a [[mqtt.user]] entry (argon2id).\n\nReads the password from the terminal without echo (asking twice), or the first line of standard input when it is not a terminal or with --password-stdin. Prints a line (or with --user, a whole [[mqtt.user]] block) to paste into the config or the password file.",
        after_help = "Examples:\n  ferry passwd --user plc-7 >> /etc/ferry/users.toml\n  printf '%s\\n' \"$PW\" | ferry passwd --password-stdin"
    )]
    Passwd(PasswdArgs),
    /// Print the version and build information.
    #[command(after_help = "Examples:\n  ferry version\n  ferry version --json")]
    Version(VersionArgs),
    /// Link, window, throttle, rates and the backlog of every class.
    #[command(after_help = status::AFTER_HELP)]
    Status(status::StatusArgs),
    /// Waiting records per class and MQTT topic prefix: counts, bytes, oldest.
    #[command(after_help = backlog::AFTER_HELP)]
    Backlog(backlog::BacklogArgs),
    /// Show waiting records of a class, decoded, without removing them.
    #[command(after_help = peek::AFTER_HELP)]
    Peek(peek::PeekArgs),
    /// Stop forwarding (one class or all); ingest and storage go on.
    #[command(after_help = steer::PAUSE_HELP)]
    Pause(steer::PauseArgs),
    /// Resume forwarding (one class or all).
    #[command(after_help = steer::RESUME_HELP)]
    Resume(steer::PauseArgs),
    /// Send now for a while, regardless of the connectivity windows.
    #[command(after_help = steer::DRAIN_HELP)]
    Drain(steer::DrainArgs),
    /// Remove waiting records of a class without sending them.
    #[command(after_help = steer::PURGE_HELP)]
    Purge(steer::PurgeArgs),
    /// Records Kafka refused for good: list, show, replay, drop.
    #[command(
        subcommand,
        after_help = "Examples:\n  ferry dead-letter list\n  ferry dead-letter show 17\n  ferry dead-letter replay all"
    )]
    DeadLetter(deadletter::DeadLetterCommand),
    /// Write the waiting records of a class to a file (for removable media).
    #[command(after_help = transfer::EXPORT_HELP)]
    Export(transfer::ExportArgs),
    /// Append the records of an export file to this gateway's store.
    #[command(after_help = transfer::IMPORT_HELP)]
    Import(transfer::ImportArgs),
    /// Re-read the configuration in the running daemon.
    #[command(after_help = steer::RELOAD_HELP)]
    Reload(steer::ReloadArgs),
}

/// `ferry run`.
#[derive(Debug, Args)]
pub struct RunArgs {}

/// `ferry config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file and print the effective configuration.
    #[command(
        long_about = "Validate a config file and print the effective configuration.\n\nEvery problem is reported with its key, line and what is expected; warnings (such as anonymous MQTT access on a public address) go to standard error. The effective configuration (defaults filled in, units in human form, secrets shown as \"***\") goes to standard output. Exits 78 when the file is invalid.",
        after_help = "Examples:\n  ferry config check                      check /etc/ferry/ferry.toml\n  ferry config check ./ferry.toml\n  ferry config check --json | jq .config.class"
    )]
    Check(CheckArgs),
}

/// `ferry config check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The file to check (default: the --config path).
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Print the result as JSON: {"file", "valid", "warnings", "errors", "config"}.
    #[arg(long)]
    pub json: bool,
}

/// `ferry passwd`.
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Print a complete [[mqtt.user]] block for this user name.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Read the password from the first line of stdin, even from a terminal.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `ferry version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print as JSON: {"name", "version", "git_commit", "target", "rustc", "profile"}.
    #[arg(long)]
    pub json: bool,
}

/// Parses the process's arguments, runs the command and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" to clap but successes to the user.
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    ExitCode::from(run(cli))
}

/// Runs a parsed command line; returns the exit status.
pub fn run(cli: Cli) -> u8 {
    let result = match &cli.command {
        Command::Run(_) => run_daemon(&cli),
        Command::Config(ConfigCommand::Check(args)) => config_cmd::check(&cli, args),
        Command::Passwd(args) => passwd::run(args),
        Command::Version(args) => version::run(args),
        Command::Status(args) => status::run(&cli, args),
        Command::Backlog(args) => backlog::run(&cli, args),
        Command::Peek(args) => peek::run(&cli, args),
        Command::Pause(args) => steer::pause(&cli, args),
        Command::Resume(args) => steer::resume(&cli, args),
        Command::Drain(args) => steer::drain(&cli, args),
        Command::Purge(args) => steer::purge(&cli, args),
        Command::DeadLetter(cmd) => deadletter::run(&cli, cmd),
        Command::Export(args) => transfer::export(&cli, args),
        Command::Import(args) => transfer::import(&cli, args),
        Command::Reload(args) => steer::reload(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

fn run_daemon(cli: &Cli) -> anyhow::Result<u8> {
    // A broken config fails here with exit 78, before anything is opened or bound.
    crate::runtime::run(&cli.config)
}

/// Prints `err` with its whole chain and picks the exit status.
fn report(err: &anyhow::Error) -> u8 {
    if is_broken_pipe(err) {
        return EXIT_OK;
    }
    let _ = writeln!(std::io::stderr().lock(), "ferry: {err:#}");
    exit_code_for(err)
}

/// 78 for configuration errors anywhere in the chain, 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err
        .chain()
        .any(|c| c.downcast_ref::<ConfigError>().is_some())
    {
        EXIT_CONFIG
    } else {
        EXIT_FAILURE
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_path_defaults_and_is_global() {
        let cli = Cli::try_parse_from(["ferry", "run"]).unwrap();
        assert_eq!(cli.config, PathBuf::from(DEFAULT_CONFIG_PATH));
        let cli = Cli::try_parse_from(["ferry", "run", "--config", "/x.toml"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("/x.toml"));
        let cli = Cli::try_parse_from(["ferry", "config", "check", "a.toml", "--json"]).unwrap();
        match cli.command {
            Command::Config(ConfigCommand::Check(a)) => {
                assert_eq!(a.path, Some(PathBuf::from("a.toml")));
                assert!(a.json);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exit_codes() {
        let cfg_err = anyhow::Error::new(ConfigError::Invalid {
            file: "f".into(),
            problems: vec![],
        })
        .context("loading");
        assert_eq!(exit_code_for(&cfg_err), EXIT_CONFIG);
        assert_eq!(exit_code_for(&anyhow::anyhow!("x")), EXIT_FAILURE);
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&pipe.context("writing")));
    }

    #[test]
    fn every_command_has_an_example() {
        let cmd = Cli::command();
        let mut stack = vec![cmd];
        while let Some(c) = stack.pop() {
            if c.get_name() != "help" && !c.has_subcommands() {
                let help = c
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(
                    help.contains("Example"),
                    "`{}` has no example",
                    c.get_name()
                );
            }
            stack.extend(c.get_subcommands().cloned());
        }
    }
}
