//! Where a command gets its answers: the daemon's control socket, or — for read-only commands
//! when the daemon is not running — the data directory opened read-only.
//!
//! Read-only commands (`status`, `backlog`, `peek`, `dead-letter list|show`) ask the daemon
//! first; when nobody listens on the socket they open the data directory (`--data-dir`, else
//! `[storage] data_dir` from the config) read-only, which changes no byte in it. With an
//! explicit `--data-dir` they go straight to the directory. Steering commands need the
//! daemon and say how to start it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::Config;
use crate::control::client::{Client, ClientError};
use crate::control::inspect;
use crate::store::Store;

use super::Cli;

/// How a read-only command finds its data.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Daemon's control socket [default: [control] socket].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read this data directory, read-only.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// How a steering command reaches the daemon.
#[derive(Debug, Clone, Args)]
pub struct SocketArgs {
    /// Daemon's control socket [default: [control] socket].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// A scan of a large backlog may take minutes; a dead daemon is detected at connect time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The config when its file exists (errors in it are errors: exit 78), else None (the CLI
/// works on a box without a config when given --socket / --data-dir).
pub fn config(cli: &Cli) -> anyhow::Result<Option<Config>> {
    if !cli.config.exists() {
        return Ok(None);
    }
    Ok(Some(Config::load(&cli.config)?))
}

fn effective(cfg: &Option<Config>) -> Config {
    cfg.clone().unwrap_or_else(Config::default_config)
}

pub fn client(cli: &Cli, socket: &Option<PathBuf>) -> anyhow::Result<Client> {
    let path = match socket {
        Some(p) => p.clone(),
        None => effective(&config(cli)?).control.socket,
    };
    Ok(Client::new(path, REQUEST_TIMEOUT))
}

/// A read-only view of a data directory.
pub struct Offline {
    pub store: Store,
    pub data_dir: PathBuf,
}

impl Offline {
    pub fn open(data_dir: &Path, cfg: &Option<Config>) -> anyhow::Result<Offline> {
        if !data_dir.is_dir() {
            anyhow::bail!(
                "data directory {} does not exist: pass --data-dir with the daemon's [storage] data_dir",
                data_dir.display()
            );
        }
        if !data_dir.join("classes").is_dir() {
            anyhow::bail!(
                "{} is not a ferry data directory (it has no classes/ directory): pass --data-dir with the daemon's [storage] data_dir",
                data_dir.display()
            );
        }
        let names: Vec<String> = cfg
            .as_ref()
            .map(|c| c.classes.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let store = inspect::open_read_only(data_dir, &names)?;
        Ok(Offline {
            store,
            data_dir: data_dir.to_path_buf(),
        })
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        let _ = self.store.close();
    }
}

/// Runs a read-only command against the daemon, or against the data directory when the
/// daemon is not running (or `--data-dir` was given).
pub fn read_only<T>(
    cli: &Cli,
    src: &SourceArgs,
    daemon: impl FnOnce(&Client) -> Result<T, ClientError>,
    offline: impl FnOnce(&Offline) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let cfg = config(cli)?;
    let open_offline = |dir: &Path| -> anyhow::Result<T> {
        let o = Offline::open(dir, &cfg)?;
        offline(&o).with_context(|| format!("reading {} read-only", dir.display()))
    };
    if let Some(dir) = &src.data_dir {
        return open_offline(dir);
    }
    let eff = effective(&cfg);
    let socket = src.socket.clone().unwrap_or(eff.control.socket.clone());
    let client = Client::new(socket, REQUEST_TIMEOUT);
    match daemon(&client) {
        Err(ClientError::NotRunning(path)) => {
            tracing::debug!(socket = %path.display(), "daemon not running; reading the data directory");
            open_offline(&eff.storage.data_dir).with_context(|| {
                format!(
                    "daemon not running (nothing listens on {}), and read-only inspection failed",
                    path.display()
                )
            })
        }
        other => Ok(other?),
    }
}
