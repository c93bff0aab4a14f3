//! `ferry config check`: validate a file, show its problems and the effective config.

use std::io::Write;

use anyhow::Context;
use serde_json::json;

use super::{CheckArgs, Cli, EXIT_CONFIG, EXIT_OK};
use crate::config::{Config, ConfigError, Diagnostic};

pub(super) fn check(cli: &Cli, args: &CheckArgs) -> anyhow::Result<u8> {
    let path = args.path.clone().unwrap_or_else(|| cli.config.clone());
    // The password file is part of what a start-up would read, so check it too.
    let loaded = Config::load(&path).and_then(|cfg| cfg.users().map(|users| (cfg, users)));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match (loaded, args.json) {
        (Ok((cfg, users)), false) => {
            for w in cfg.warnings() {
                eprintln!("ferry: warning: {w}");
            }
            writeln!(
                out,
                "# {}: valid ({} warning{}, {} MQTT user{}).\n# Effective configuration: defaults filled in, secrets shown as \"***\".\n",
                path.display(),
                cfg.warnings().len(),
                plural(cfg.warnings().len()),
                users.len(),
                plural(users.len()),
            )
            .context("writing to stdout")?;
            out.write_all(cfg.to_toml_string().as_bytes())
                .context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
            Ok(EXIT_OK)
        }
        (Ok((cfg, users)), true) => {
            let v = json!({
                "file": path.display().to_string(),
                "valid": true,
                "warnings": cfg.warnings().iter().map(diag_json).collect::<Vec<_>>(),
                "errors": [],
                "users": users.len(),
                "config": cfg,
            });
            print_json(&mut out, &v)?;
            Ok(EXIT_OK)
        }
        (Err(e), false) => Err(e.into()),
        (Err(e), true) => {
            let errors: Vec<serde_json::Value> = match &e {
                ConfigError::Read { .. } => vec![json!({
                    "path": null, "line": null, "column": null, "message": e.to_string(),
                })],
                ConfigError::Invalid { problems, .. } => problems.iter().map(diag_json).collect(),
            };
            let v = json!({
                "file": path.display().to_string(),
                "valid": false,
                "warnings": [],
                "errors": errors,
                "users": null,
                "config": null,
            });
            print_json(&mut out, &v)?;
            // People running it by hand still see why, on stderr.
            eprintln!("ferry: {e}");
            Ok(EXIT_CONFIG)
        }
    }
}

fn print_json(out: &mut impl Write, v: &serde_json::Value) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v).context("writing JSON to stdout")?;
    writeln!(out).context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

fn diag_json(d: &Diagnostic) -> serde_json::Value {
    json!({
        "path": if d.path.is_empty() { None } else { Some(d.path.to_string()) },
        "line": d.location.as_ref().map(|l| l.line),
        "column": d.location.as_ref().map(|l| l.column),
        "message": d.message,
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
