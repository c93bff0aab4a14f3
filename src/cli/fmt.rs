//! Output for people: units (KiB/MiB, `3h12m`), aligned tables that fit 80 columns, JSON.
//!
//! Sizes use binary units because segment and class limits are configured that way; ages
//! keep two units at most (`3h12m`, not `3h12m7s`): an operator reading a backlog wants the
//! order of magnitude at a glance, and `--json` has the exact numbers.

use std::io::Write;

use anyhow::Context;

/// Terminal width the tables are made to fit.
pub const WIDTH: usize = 80;

/// `0 B`, `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// `45s`, `12m05s`, `3h12m`, `2d04h`.
pub fn age(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Age of a Unix-ms timestamp at `now_ms`.
pub fn age_ms(ts_ms: u64, now_ms: u64) -> String {
    age(now_ms.saturating_sub(ts_ms) / 1000)
}

/// `1.5 KiB/s`.
pub fn byte_rate(bps: f64) -> String {
    format!("{}/s", bytes(bps.max(0.0).round() as u64))
}

/// `12,345`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A Unix-ms time as UTC `2026-11-22 05:38:03Z`.
pub fn time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// Cuts `s` to `max` characters, marking the cut with `…`.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Makes text safe for a terminal: control characters are escaped so a payload cannot move
/// the cursor or change colours.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Columns aligned by content; numbers right-aligned. When the table is wider than
/// [`WIDTH`], the first column (names, prefixes) is shortened.
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `cols`: (header, right-aligned).
    pub fn new(cols: &[(&'static str, bool)]) -> Self {
        Table {
            headers: cols.iter().map(|c| c.0).collect(),
            right: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let len = |s: &str| s.chars().count();
        let mut w: Vec<usize> = self.headers.iter().map(|h| len(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(len(c));
            }
        }
        let total: usize = w.iter().sum::<usize>() + 2 * n.saturating_sub(1);
        if total > WIDTH && n > 0 {
            w[0] = w[0]
                .saturating_sub(total - WIDTH)
                .max(len(self.headers[0]).max(8));
        }
        let mut out = String::new();
        let line = |cells: Vec<String>, out: &mut String| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate().take(n) {
                let c = clip(c, w[i]);
                let pad = w[i].saturating_sub(len(&c));
                if i > 0 {
                    l.push_str("  ");
                }
                if self.right[i] {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(&c);
                } else {
                    l.push_str(&c);
                    if i + 1 < n {
                        l.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(
            self.headers.iter().map(|h| h.to_string()).collect(),
            &mut out,
        );
        for r in &self.rows {
            line(r.clone(), &mut out);
        }
        out
    }
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).context("writing JSON to stdout")?;
    writeln!(out).context("writing to stdout")?;
    Ok(())
}

/// Prints text on stdout (a closed pipe ends the command quietly, see `cli::report`).
pub fn print(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes()).context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
        assert_eq!(age(7), "7s");
        assert_eq!(age(725), "12m05s");
        assert_eq!(age(3 * 3600 + 12 * 60 + 7), "3h12m");
        assert_eq!(age(2 * 86400 + 4 * 3600), "2d04h");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
    }

    #[test]
    fn tables_align_and_fit() {
        let mut t = Table::new(&[("NAME", false), ("N", true)]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["bbbb".into(), "100".into()]);
        assert_eq!(t.render(), "NAME    N\na       1\nbbbb  100\n");
        let mut t = Table::new(&[("NAME", false), ("N", true)]);
        t.row(vec!["x".repeat(200), "1".into()]);
        assert!(t.render().lines().all(|l| l.chars().count() <= WIDTH));
    }
}
