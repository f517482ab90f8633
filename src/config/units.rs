//! Durations (`100ms`, `1s`, `5m`, `1h`) and sizes (`256MiB`, or a plain byte count) as they
//! appear in the configuration file. Parsing errors are raised inside `Deserialize`, so the
//! TOML parser attaches the value's location to them.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A configured duration, parsed from strings such as `"250ms"`, `"1s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfDuration(pub Duration);

/// Parses `"<number><unit>"` with unit `ms`, `s`, `m` or `h`; fractions are allowed (`1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} has no unit (use ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?}: {num:?} is not a number"))?;
    let scale_ms = match unit.trim_start() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => {
            return Err(format!(
                "duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    let ms = value * scale_ms;
    if !ms.is_finite() || ms > 365.0 * 86_400_000.0 {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

/// Parses a byte size: an integer, or a string `"<number><unit>"` with unit B, KiB, MiB, GiB
/// (also KB, MB, GB as powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: {num:?} is not a number"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(format!(
                "size {s:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(bytes as u64)
}

impl<'de> Deserialize<'de> for ConfDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"100ms\", \"1s\", \"5m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfDuration, E> {
                match parse_duration(v) {
                    Ok(d) if d.is_zero() => Err(E::custom(format!("duration {v:?} must be > 0"))),
                    Ok(d) => Ok(ConfDuration(d)),
                    Err(e) => Err(E::custom(e)),
                }
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<ConfDuration, E> {
                Err(E::custom(
                    "a duration needs a unit: write it as a string such as \"500ms\"",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// A poll interval: a duration, where `"0s"` means back to back (the next request as soon as
/// the reply is in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfInterval(pub Duration);

impl<'de> Deserialize<'de> for ConfInterval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfInterval;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an interval such as \"100ms\", \"1s\", or \"0s\" for back to back")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfInterval, E> {
                parse_duration(v).map(ConfInterval).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<ConfInterval, E> {
                Err(E::custom(
                    "a duration needs a unit: write it as a string such as \"500ms\"",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// A configured byte size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfSize(pub u64);

impl<'de> Deserialize<'de> for ConfSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"256MiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfSize, E> {
                parse_size(v).map(ConfSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfSize, E> {
                u64::try_from(v)
                    .map(ConfSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("10").is_err());
        assert_eq!(parse_duration("10 s").unwrap(), Duration::from_secs(10));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert!(parse_size("12 parsecs").is_err());
    }
}
