//! `ferry version`: what was built, from which commit, for which target, with which compiler.

use std::io::Write;

use anyhow::Context;

use super::{VersionArgs, EXIT_OK};

/// Build information captured by `build.rs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildInfo {
    pub name: &'static str,
    pub version: &'static str,
    /// None when built outside a git checkout without FERRY_GIT_COMMIT.
    pub git_commit: Option<&'static str>,
    pub target: &'static str,
    pub rustc: &'static str,
    pub profile: &'static str,
}

pub fn build_info() -> BuildInfo {
    BuildInfo {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        git_commit: option_env!("FERRY_GIT_COMMIT"),
        target: env!("FERRY_BUILD_TARGET"),
        rustc: env!("FERRY_RUSTC_VERSION"),
        profile: env!("FERRY_BUILD_PROFILE"),
    }
}

pub(super) fn run(args: &VersionArgs) -> anyhow::Result<u8> {
    let info = build_info();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &info).context("writing JSON to stdout")?;
        writeln!(out).context("writing to stdout")?;
    } else {
        writeln!(
            out,
            "{} {} (commit {}, {} build for {}, {})",
            info.name,
            info.version,
            info.git_commit.unwrap_or("unknown"),
            info.profile,
            info.target,
            info.rustc
        )
        .context("writing to stdout")?;
    }
    Ok(EXIT_OK)
}
