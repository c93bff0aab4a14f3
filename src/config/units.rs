//! Human units for sizes, durations and rates.
//!
//! Operators write `"512MiB"`, `"1h30m"` and `"64KiB/s"`; the code works with `u64` bytes and
//! [`Duration`]. Each newtype parses from the human form, prints back in the same form (so the
//! effective config shown by `ferry config check` reads like the file), and rejects anything
//! ambiguous instead of guessing: `"10"` as a duration could mean seconds or milliseconds, so it
//! is an error; a size without a unit is bytes, because that is what every tool means by it.
//!
//! Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024; SI units (`kB`/`KB`, `MB`, `GB`,
//! `TB`) are powers of 1000, as the names say. Printing always uses binary units, choosing the
//! largest one that represents the value exactly.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a size looks like, quoted in every size error.
pub const SIZE_EXPECTED: &str =
    "a size like \"512MiB\", \"64KiB\", \"1GiB\" or a plain number of bytes";
/// What a duration looks like, quoted in every duration error.
pub const DURATION_EXPECTED: &str =
    "a duration like \"5ms\", \"30s\", \"10m\", \"2h\", \"7d\" or \"1h30m\"";
/// What a rate looks like, quoted in every rate error.
pub const RATE_EXPECTED: &str = "a rate like \"64KiB/s\", \"10MiB/s\" or \"unlimited\"";

const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

/// A number of bytes, written `"512MiB"` or as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn b(n: u64) -> Self {
        ByteSize(n)
    }
    pub const fn kib(n: u64) -> Self {
        ByteSize(n << 10)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits_end = t
            .find(|c: char| !(c.is_ascii_digit() || c == '_' || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let unit = unit.trim_start();
        if num.is_empty() {
            return Err(format!(
                "`{s}` does not start with a number; expected {SIZE_EXPECTED}"
            ));
        }
        let mult = if unit.is_empty() {
            1
        } else {
            match SIZE_UNITS.iter().find(|(u, _)| *u == unit) {
                Some((_, m)) => *m,
                None => {
                    return Err(format!(
                        "`{s}` has an unknown unit `{unit}` (units: B, KiB, MiB, GiB, TiB, kB, MB, GB, TB); expected {SIZE_EXPECTED}"
                    ))
                }
            }
        };
        let num = num.replace('_', "");
        let bytes = if let Some((int, frac)) = num.split_once('.') {
            // "1.5GiB" is handy; compute exactly in integers so "0.5KiB" is 512, not 511.
            if int.is_empty() || frac.is_empty() || frac.contains('.') {
                return Err(format!("`{s}` is not a number; expected {SIZE_EXPECTED}"));
            }
            let int: u64 = int
                .parse()
                .map_err(|_| format!("`{s}` is too large; expected {SIZE_EXPECTED}"))?;
            if frac.len() > 9 {
                return Err(format!(
                    "`{s}` has too many decimals; expected {SIZE_EXPECTED}"
                ));
            }
            let scale = 10u128.pow(frac.len() as u32);
            let frac: u128 = frac
                .parse()
                .map_err(|_| format!("`{s}` is not a number; expected {SIZE_EXPECTED}"))?;
            let total = (int as u128) * (mult as u128) + frac * (mult as u128) / scale;
            if frac * (mult as u128) % scale != 0 {
                return Err(format!(
                    "`{s}` is not a whole number of bytes; expected {SIZE_EXPECTED}"
                ));
            }
            u64::try_from(total).map_err(|_| format!("`{s}` is too large (max 16EiB)"))?
        } else {
            let n: u64 = num.parse().map_err(|_| {
                format!("`{s}` is not a number or too large; expected {SIZE_EXPECTED}")
            })?;
            n.checked_mul(mult)
                .ok_or_else(|| format!("`{s}` is too large (max 16EiB)"))?
        };
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n != 0 && n % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative; expected {SIZE_EXPECTED}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "{v} is not a whole number of bytes; expected {SIZE_EXPECTED}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written `"30s"`, `"1h30m"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn ms(n: u64) -> Self {
        HumanDuration(Duration::from_millis(n))
    }
    pub const fn secs(n: u64) -> Self {
        HumanDuration(Duration::from_secs(n))
    }
    pub const fn mins(n: u64) -> Self {
        HumanDuration(Duration::from_secs(n * 60))
    }
    pub const fn hours(n: u64) -> Self {
        HumanDuration(Duration::from_secs(n * 3600))
    }
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

const DURATION_UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3600 * 1_000_000_000),
    ("d", 86400 * 1_000_000_000),
    ("w", 7 * 86400 * 1_000_000_000),
];

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err(format!(
                "the duration is empty; expected {DURATION_EXPECTED}"
            ));
        }
        let mut rest = t;
        let mut nanos: u128 = 0;
        let mut last_unit_rank: Option<usize> = None;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if num_end == 0 {
                return Err(format!(
                    "`{s}`: expected a number at `{rest}`; expected {DURATION_EXPECTED}"
                ));
            }
            let (num, after) = rest.split_at(num_end);
            let unit_end = after
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_end);
            let unit = unit.trim();
            if unit.is_empty() {
                return Err(format!(
                    "`{s}` has a number without a unit (is it seconds? milliseconds?); expected {DURATION_EXPECTED}"
                ));
            }
            let Some(rank) = DURATION_UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(format!(
                    "`{s}` has an unknown unit `{unit}` (units: ns, us, ms, s, m, h, d, w); expected {DURATION_EXPECTED}"
                ));
            };
            // "30m1h" is almost certainly a typo; require the largest unit first.
            if let Some(prev) = last_unit_rank {
                if rank >= prev {
                    return Err(format!(
                        "`{s}`: units must go from largest to smallest, each once (like \"1h30m\"); expected {DURATION_EXPECTED}"
                    ));
                }
            }
            last_unit_rank = Some(rank);
            let n: u128 = num
                .parse()
                .map_err(|_| format!("`{s}` is too large; expected {DURATION_EXPECTED}"))?;
            nanos = n
                .checked_mul(DURATION_UNITS[rank].1)
                .and_then(|v| v.checked_add(nanos))
                .ok_or_else(|| format!("`{s}` is too large"))?;
            rest = next;
        }
        let secs =
            u64::try_from(nanos / 1_000_000_000).map_err(|_| format!("`{s}` is too large"))?;
        Ok(HumanDuration(Duration::new(
            secs,
            (nanos % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        // Weeks are accepted on input but days read better in output ("14d").
        for (unit, size) in DURATION_UNITS.iter().rev().skip(1) {
            if nanos >= *size {
                let n = nanos / size;
                nanos %= size;
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "{v} has no unit (is it seconds? milliseconds?); expected {DURATION_EXPECTED}"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "{v} has no unit; expected {DURATION_EXPECTED}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A throughput limit: bytes per second, or unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ByteRate {
    #[default]
    Unlimited,
    PerSecond(ByteSize),
}

impl ByteRate {
    /// Bytes per second, `None` when unlimited.
    pub fn bytes_per_sec(self) -> Option<u64> {
        match self {
            ByteRate::Unlimited => None,
            ByteRate::PerSecond(b) => Some(b.0),
        }
    }
}

impl FromStr for ByteRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "unlimited" {
            return Ok(ByteRate::Unlimited);
        }
        let Some(size) = t.strip_suffix("/s") else {
            return Err(format!(
                "`{s}` does not end in \"/s\"; expected {RATE_EXPECTED}"
            ));
        };
        let size: ByteSize = size
            .parse()
            .map_err(|_| format!("`{s}` does not start with a size; expected {RATE_EXPECTED}"))?;
        if size.0 == 0 {
            // A zero rate would stop forwarding for good; windows are the tool for that.
            return Err(format!(
                "`{s}` would never forward anything (use [forward] windows to pause); expected {RATE_EXPECTED}"
            ));
        }
        Ok(ByteRate::PerSecond(size))
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ByteRate::Unlimited => f.write_str("unlimited"),
            ByteRate::PerSecond(b) => write!(f, "{b}/s"),
        }
    }
}

impl Serialize for ByteRate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteRate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(RATE_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteRate, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteRate, E> {
                Err(E::custom(format!(
                    "{v} has no unit; expected {RATE_EXPECTED}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        let ok = [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("64KiB", 64 << 10),
            ("512MiB", 512 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("1.5GiB", 3 << 29),
            ("0.5KiB", 512),
            ("10MB", 10_000_000),
            ("10 MiB", 10 << 20),
            ("1_000", 1000),
            ("4kB", 4000),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<ByteSize>().unwrap(), ByteSize(want), "{s}");
        }
    }

    #[test]
    fn sizes_reject() {
        for s in [
            "",
            "MiB",
            "12XB",
            "1.2.3MiB",
            "-1",
            "1.B",
            ".5MiB",
            "0.3B",
            "99999999999999999999",
            "20000000TiB",
            "5 mib",
        ] {
            let e = s.parse::<ByteSize>().unwrap_err();
            assert!(
                e.contains("expected") || e.contains("too large"),
                "{s}: {e}"
            );
        }
        assert!("12XB"
            .parse::<ByteSize>()
            .unwrap_err()
            .contains("unknown unit `XB`"));
    }

    #[test]
    fn sizes_print_back() {
        for (n, s) in [
            (0, "0B"),
            (100, "100B"),
            (1024, "1KiB"),
            (1536, "1536B"),
            (64 << 20, "64MiB"),
            (3 << 29, "1536MiB"),
            (1 << 40, "1TiB"),
        ] {
            assert_eq!(ByteSize(n).to_string(), s);
            assert_eq!(s.parse::<ByteSize>().unwrap(), ByteSize(n));
        }
    }

    #[test]
    fn durations_parse() {
        let ok = [
            ("5ms", Duration::from_millis(5)),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("2h", Duration::from_secs(7200)),
            ("7d", Duration::from_secs(7 * 86400)),
            ("1w", Duration::from_secs(7 * 86400)),
            ("1h30m", Duration::from_secs(5400)),
            (
                "1d2h3m4s5ms",
                Duration::from_millis(((86400 + 7200 + 180 + 4) * 1000) + 5),
            ),
            ("250us", Duration::from_micros(250)),
            ("0s", Duration::ZERO),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<HumanDuration>().unwrap().0, want, "{s}");
        }
    }

    #[test]
    fn durations_reject() {
        for s in [
            "", "10", "s", "10x", "30m1h", "1h1h", "1.5h", "-5s", "5 sec",
        ] {
            let e = s.parse::<HumanDuration>().unwrap_err();
            assert!(e.contains("expected"), "{s}: {e}");
        }
        assert!("10"
            .parse::<HumanDuration>()
            .unwrap_err()
            .contains("without a unit"));
    }

    #[test]
    fn durations_print_back() {
        for s in [
            "0s",
            "2ms",
            "30s",
            "1h30m",
            "7d",
            "1d2h3m4s5ms",
            "250us",
            "1s5ns",
        ] {
            let d: HumanDuration = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("2w".parse::<HumanDuration>().unwrap().to_string(), "14d");
    }

    #[test]
    fn rates() {
        assert_eq!(
            "unlimited".parse::<ByteRate>().unwrap(),
            ByteRate::Unlimited
        );
        assert_eq!(
            "64KiB/s".parse::<ByteRate>().unwrap().bytes_per_sec(),
            Some(64 << 10)
        );
        assert_eq!(
            "1MB/s".parse::<ByteRate>().unwrap().bytes_per_sec(),
            Some(1_000_000)
        );
        for s in ["64KiB", "0/s", "fast", "/s", "1XB/s"] {
            let e = s.parse::<ByteRate>().unwrap_err();
            assert!(e.contains("expected"), "{s}: {e}");
        }
        assert_eq!(
            ByteRate::PerSecond(ByteSize::kib(64)).to_string(),
            "64KiB/s"
        );
        assert_eq!(ByteRate::Unlimited.to_string(), "unlimited");
    }

    #[test]
    fn serde_round_trip() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct T {
            a: ByteSize,
            b: HumanDuration,
            c: ByteRate,
            d: ByteSize,
        }
        let t: T =
            toml::from_str("a = \"1GiB\"\nb = \"1h30m\"\nc = \"64KiB/s\"\nd = 4096\n").unwrap();
        assert_eq!(t.a, ByteSize::gib(1));
        assert_eq!(t.d, ByteSize::kib(4));
        let s = toml::to_string(&t).unwrap();
        assert_eq!(toml::from_str::<T>(&s).unwrap(), t);
        assert!(s.contains("\"1h30m\""), "{s}");
        let e = toml::from_str::<T>("a = 1.5\nb = \"1s\"\nc = \"unlimited\"\nd = 1\n").unwrap_err();
        assert!(e.to_string().contains("whole number of bytes"), "{e}");
        let e = toml::from_str::<T>("a = 1\nb = 30\nc = \"unlimited\"\nd = 1\n").unwrap_err();
        assert!(e.to_string().contains("no unit"), "{e}");
    }
}
