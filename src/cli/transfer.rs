//! `ferry export` / `ferry import`: a backlog on removable media (format in
//! [`crate::control::transfer`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::control::transfer::{self, ExportReader};
use crate::control::{ImportReport, Request};

use super::conn::{self, Offline, SocketArgs};
use super::fmt;
use super::{Cli, EXIT_OK};

pub const EXPORT_HELP: &str = "\
Examples:
  ferry export --class telemetry --out /media/usb/site7-telemetry.fex
  ferry export --class alarms --out alarms.fex --data-dir /var/lib/ferry

Writes the waiting records of the class (they stay in the store: purge them
afterwards if they must not also go over a link later; duplicates are
harmless downstream because every record keeps its gateway/class/seq id).
Reads the data directory read-only, so it works with the daemon stopped.";

pub const IMPORT_HELP: &str = "\
Examples:
  ferry import /media/usb/site7-telemetry.fex
  ferry import --check site7-telemetry.fex      verify only, append nothing
  ferry import t.fex --data-dir /var/lib/ferry  daemon stopped: append directly

The running daemon reads the file (it must be readable by the ferry user),
checks it completely, then appends the records to the class of the same name.
Each keeps its original id in the MQTT user property ferry.origin.seq
(gateway/class/seq), forwarded as a Kafka header, so importing twice is
idempotent for a consumer that deduplicates on it.";

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The class to export.
    #[arg(long, value_name = "CLASS")]
    pub class: String,
    /// The file to write (via FILE.partial).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Data directory [default: [storage] data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON: {"path", "class", "records", ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The export file.
    pub file: PathBuf,
    /// Only verify the file and say what it holds.
    #[arg(long)]
    pub check: bool,
    /// Print JSON: {"gateway", "class", "records", ...}.
    #[arg(long)]
    pub json: bool,
    /// With the daemon stopped: append into this data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArgs,
}

pub fn export(cli: &Cli, a: &ExportArgs) -> anyhow::Result<u8> {
    let cfg = conn::config(cli)?;
    let eff = cfg
        .clone()
        .unwrap_or_else(crate::config::Config::default_config);
    let dir = a.data_dir.clone().unwrap_or(eff.storage.data_dir.clone());
    let o = Offline::open(&dir, &cfg)?;
    let r = transfer::export(&o.store, &eff.gateway_id, &a.class, &a.out)
        .with_context(|| format!("exporting class `{}` to {}", a.class, a.out.display()))?;
    if a.json {
        fmt::print_json(&r)?;
    } else {
        fmt::print(&format!(
            "exported {} records of class `{}` (seq {}..{}) from gateway `{}` to {} ({})\n",
            fmt::count(r.records),
            r.class,
            r.first_seq.map_or("-".into(), |s| s.to_string()),
            r.last_seq.map_or("-".into(), |s| s.to_string()),
            r.gateway,
            r.path,
            fmt::bytes(r.file_bytes)
        ))?;
    }
    Ok(EXIT_OK)
}

/// Appends into a stopped daemon's data directory. The store's lock refuses this while the
/// daemon runs; the class limits come from the config, so the import obeys them as the
/// daemon would.
fn import_offline(
    cli: &Cli,
    dir: &std::path::Path,
    file: &std::path::Path,
) -> anyhow::Result<ImportReport> {
    let Some(cfg) = conn::config(cli)? else {
        anyhow::bail!(
            "importing into {} needs the daemon's config for its classes and limits: pass --config",
            dir.display()
        );
    };
    let mut opts = cfg.store_options();
    opts.data_dir = dir.to_path_buf();
    let (store, _) = crate::store::Store::open(opts)
        .with_context(|| format!("opening {} to import into it", dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the import runtime")?;
    let result = rt.block_on(transfer::import(&store, file));
    store
        .close()
        .with_context(|| format!("closing {}", dir.display()))?;
    Ok(result?)
}

pub fn import(cli: &Cli, a: &ImportArgs) -> anyhow::Result<u8> {
    let r: ImportReport = if a.check {
        let mut rd = ExportReader::open(&a.file)?;
        let (mut records, mut bytes, mut first, mut last) = (0u64, 0u64, None, None);
        while let Some((seq, rec)) = rd.next_record()? {
            records += 1;
            bytes += rec.payload.len() as u64;
            first.get_or_insert(seq);
            last = Some(seq);
        }
        ImportReport {
            gateway: rd.gateway.clone(),
            class: rd.class.clone(),
            records,
            bytes,
            first_seq: first,
            last_seq: last,
        }
    } else if let Some(dir) = &a.data_dir {
        import_offline(cli, dir, &a.file)?
    } else {
        // The daemon opens the path itself: make it absolute so its working directory
        // does not matter.
        let path = std::path::absolute(&a.file)
            .with_context(|| format!("resolving {}", a.file.display()))?;
        conn::client(cli, &a.socket.socket)?.call(Request::Import {
            path: path.display().to_string(),
        })?
    };
    if a.json {
        fmt::print_json(&r)?;
    } else {
        fmt::print(&format!(
            "{} {} records ({} of payload) of class `{}` from gateway `{}` (seq {}..{})\n",
            if a.check { "file holds" } else { "imported" },
            fmt::count(r.records),
            fmt::bytes(r.bytes),
            r.class,
            r.gateway,
            r.first_seq.map_or("-".into(), |s| s.to_string()),
            r.last_seq.map_or("-".into(), |s| s.to_string()),
        ))?;
    }
    Ok(EXIT_OK)
}
