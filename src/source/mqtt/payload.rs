//! MQTT payloads → samples (pure): JSON messages (RFC 6901 pointers, arrays, batches, payload
//! timestamps) and single values. Every value is checked against its point's type; what does
//! not fit is not written and is counted, and a malformed message yields an error, never a
//! panic.

use crate::config::{PointType, TimestampFormat};
use crate::model::{Quality, Sample, Value};
use crate::source::number::Num;
use serde_json::Value as J;

/// How one point's value is read and typed.
#[derive(Debug, Clone)]
pub struct PointRead {
    /// Catalog ids of the point's elements (one unless `count` > 1).
    pub ids: Vec<u32>,
    /// json: where the value is in each message.
    pub pointer: String,
    pub kind: PointType,
    /// `(scale, offset)` of a point written as a float (`PointConfig::is_scaled`).
    pub scaling: Option<(f64, f64)>,
}

/// Why values of a message were not written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// A JSON value of another type than the point's (a string for a number, ...).
    pub wrong_type: u64,
    /// A number outside the point's type (300 for a u8, 1.5 for an integer).
    pub out_of_range: u64,
    /// The payload timestamp is missing or unreadable (the arrival time is used).
    pub bad_timestamp: u64,
}

impl Rejected {
    pub fn total(&self) -> u64 {
        self.wrong_type + self.out_of_range + self.bad_timestamp
    }
}

/// The JSON decoding of one topic: its points and where the timestamp is.
#[derive(Debug, Clone)]
pub struct JsonPlan {
    pub points: Vec<PointRead>,
    pub timestamp: Option<(String, TimestampFormat)>,
}

/// Decodes one JSON message (an object, or an array of objects: a batch) into samples.
/// `arrival_ns` stamps samples without a payload timestamp. Errors: not JSON, or not an
/// object / array of objects.
pub fn decode_json(
    payload: &[u8],
    plan: &JsonPlan,
    arrival_ns: i64,
    out: &mut Vec<Sample>,
    rejected: &mut Rejected,
) -> Result<(), String> {
    let doc: J = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    match &doc {
        J::Object(_) => decode_object(&doc, plan, arrival_ns, out, rejected),
        J::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if !item.is_object() {
                    return Err(format!("batch element {i} is not an object"));
                }
                decode_object(item, plan, arrival_ns, out, rejected);
            }
        }
        _ => return Err("the message is not a JSON object (or an array of objects)".into()),
    }
    Ok(())
}

fn decode_object(
    obj: &J,
    plan: &JsonPlan,
    arrival_ns: i64,
    out: &mut Vec<Sample>,
    rejected: &mut Rejected,
) {
    let ts = match &plan.timestamp {
        None => arrival_ns,
        Some((pointer, format)) => match obj.pointer(pointer).and_then(|v| timestamp(v, *format)) {
            Some(t) => t,
            None => {
                rejected.bad_timestamp += 1;
                arrival_ns
            }
        },
    };
    for p in &plan.points {
        let Some(v) = obj.pointer(&p.pointer) else {
            continue;
        };
        if p.ids.len() > 1 {
            let Some(items) = v.as_array() else {
                rejected.wrong_type += 1;
                continue;
            };
            for (id, item) in p.ids.iter().zip(items) {
                push(out, *id, ts, typed_json(item, p), rejected);
            }
        } else if let Some(&id) = p.ids.first() {
            push(out, id, ts, typed_json(v, p), rejected);
        }
    }
}

fn push(out: &mut Vec<Sample>, point: u32, ts: i64, v: Result<Value, Reject>, r: &mut Rejected) {
    match v {
        Ok(value) => out.push(Sample {
            point,
            timestamp_ns: ts,
            quality: Quality::Good as i32,
            value: Some(value),
        }),
        Err(Reject::WrongType) => r.wrong_type += 1,
        Err(Reject::OutOfRange) => r.out_of_range += 1,
        // JSON null: nothing to write, not an error.
        Err(Reject::Null) => {}
    }
}

enum Reject {
    WrongType,
    OutOfRange,
    Null,
}

/// A JSON value as a value of the point's type.
fn typed_json(v: &J, p: &PointRead) -> Result<Value, Reject> {
    match v {
        J::Null => Err(Reject::Null),
        J::Bool(b) => match p.kind {
            PointType::Bool => Ok(Value::BoolValue(*b)),
            _ => Err(Reject::WrongType),
        },
        J::String(s) => match p.kind {
            PointType::String => Ok(Value::StringValue(s.clone())),
            _ => Err(Reject::WrongType),
        },
        J::Number(n) => {
            if let Some(u) = n.as_u64() {
                number(Num::U(u), p)
            } else if let Some(i) = n.as_i64() {
                number(Num::I(i), p)
            } else {
                number(Num::F(n.as_f64().unwrap_or(f64::NAN)), p)
            }
        }
        J::Array(_) | J::Object(_) => Err(Reject::WrongType),
    }
}

/// A number, range-checked against the point's type, then scaled.
fn number(n: Num, p: &PointRead) -> Result<Value, Reject> {
    crate::source::number::number(n, p.kind, p.scaling).map_err(|r| match r {
        crate::source::number::Reject::WrongType => Reject::WrongType,
        crate::source::number::Reject::OutOfRange => Reject::OutOfRange,
    })
}

/// A Sparkplug metric value (of `datatype`, Sparkplug codes) as a value of the point's type.
/// Signed 8/16/32-bit integers are read truncated to their width (both encodings in use, sign-
/// extended and zero-extended, read the same); UInt32 from either value field.
pub fn from_sparkplug(
    v: &crate::mqtt::sparkplug::metric::Value,
    datatype: u32,
    p: &PointRead,
) -> Result<Value, String> {
    use crate::mqtt::sparkplug::datatype as dt;
    use crate::mqtt::sparkplug::metric::Value as M;
    let n = match (v, datatype) {
        (M::IntValue(i), dt::INT8) => Num::I(*i as i8 as i64),
        (M::IntValue(i), dt::INT16) => Num::I(*i as i16 as i64),
        (M::IntValue(i), dt::INT32) => Num::I(*i as i32 as i64),
        (M::IntValue(i), _) => Num::U(*i as u64),
        (M::LongValue(l), dt::INT64) => Num::I(*l as i64),
        (M::LongValue(l), _) => Num::U(*l),
        (M::FloatValue(f), _) => Num::F(*f as f64),
        (M::DoubleValue(d), _) => Num::F(*d),
        (M::BooleanValue(b), _) => {
            return match p.kind {
                PointType::Bool => Ok(Value::BoolValue(*b)),
                PointType::String => Err("a boolean for a string point".into()),
                _ => number(Num::U(u64::from(*b)), p).map_err(|_| "out of range".to_string()),
            }
        }
        (M::StringValue(s), _) => {
            return match p.kind {
                PointType::String => Ok(Value::StringValue(s.clone())),
                _ => Err(format!(
                    "text {:?} for a {} point",
                    truncate(s),
                    p.kind.as_str()
                )),
            }
        }
        (M::BytesValue(_), _) => return Err("bytes values are not read".into()),
    };
    if !n_finite(n) {
        return Err("not a finite number".into());
    }
    number(n, p).map_err(|r| match r {
        Reject::OutOfRange => format!("out of the range of {}", p.kind.as_str()),
        _ => format!("not a {}", p.kind.as_str()),
    })
}

fn n_finite(n: Num) -> bool {
    match n {
        Num::F(x) => x.is_finite(),
        _ => true,
    }
}

/// One value payload (format value): a number, `true`/`false`, or text for a string point.
pub fn decode_value(payload: &[u8], p: &PointRead) -> Result<Value, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8 text".to_string())?;
    if p.kind == PointType::String {
        return Ok(Value::StringValue(text.to_string()));
    }
    let t = text.trim();
    let n = match t {
        "true" if p.kind == PointType::Bool => return Ok(Value::BoolValue(true)),
        "false" if p.kind == PointType::Bool => return Ok(Value::BoolValue(false)),
        _ => {
            if let Ok(u) = t.parse::<u64>() {
                Num::U(u)
            } else if let Ok(i) = t.parse::<i64>() {
                Num::I(i)
            } else {
                match t.parse::<f64>() {
                    Ok(x) if x.is_finite() => Num::F(x),
                    _ => return Err(format!("{:?} is not a number", truncate(t))),
                }
            }
        }
    };
    number(n, p).map_err(|r| match r {
        Reject::OutOfRange => format!("{t} is out of the range of {}", p.kind.as_str()),
        _ => format!("{:?} is not a {}", truncate(t), p.kind.as_str()),
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A payload timestamp as Unix nanoseconds.
fn timestamp(v: &J, format: TimestampFormat) -> Option<i64> {
    if format == TimestampFormat::Rfc3339 {
        return rfc3339(v.as_str()?);
    }
    // Integers exactly (nanoseconds do not fit an f64).
    let exact = |i: i64| {
        let mul: i64 = match format {
            TimestampFormat::Unix => 1_000_000_000,
            TimestampFormat::UnixMs => 1_000_000,
            TimestampFormat::UnixUs => 1_000,
            _ => 1,
        };
        i.checked_mul(mul).filter(|t| *t > 0)
    };
    let x: f64 = match v {
        J::Number(n) => match n.as_i64() {
            Some(i) => return exact(i),
            None => n.as_f64()?,
        },
        J::String(s) => match s.trim().parse::<i64>() {
            Ok(i) => return exact(i),
            Err(_) => s.trim().parse().ok()?,
        },
        _ => return None,
    };
    let ns = match format {
        TimestampFormat::Unix => x * 1e9,
        TimestampFormat::UnixMs => x * 1e6,
        TimestampFormat::UnixUs => x * 1e3,
        _ => x,
    };
    (ns.is_finite() && ns > 0.0 && ns < 9.2e18).then_some(ns.round() as i64)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (RFC 3339; a space for the `T` too) as Unix ns.
pub fn rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return None;
        }
        let mut padded: String = digits.chars().take(9).collect();
        while padded.len() < 9 {
            padded.push('0');
        }
        frac_ns = padded.parse().ok()?;
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if *c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + sec - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(pointer: &str, kind: PointType, ids: Vec<u32>) -> PointRead {
        PointRead {
            ids,
            pointer: pointer.into(),
            kind,
            scaling: None,
        }
    }

    fn values(out: &[Sample]) -> Vec<(u32, i64, Value)> {
        out.iter()
            .map(|s| {
                (
                    s.point,
                    s.timestamp_ns,
                    s.value.clone().unwrap_or(Value::BoolValue(false)),
                )
            })
            .collect()
    }

    #[test]
    fn objects_arrays_batches_and_timestamps() {
        let mut temp = read("/sensors/temp", PointType::F64, vec![1]);
        temp.scaling = Some((0.1, 0.0));
        let plan = JsonPlan {
            points: vec![
                temp,
                read("/ok", PointType::Bool, vec![2]),
                read("/axes", PointType::I16, vec![3, 4, 5]),
                read("/name", PointType::String, vec![6]),
                read("/a~1b", PointType::U8, vec![7]),
            ],
            timestamp: Some(("/ts".into(), TimestampFormat::UnixMs)),
        };
        let msg = br#"[{"ts": 1700000000123, "sensors": {"temp": 415}, "ok": true, "axes": [1, -2, 3, 4], "name": "cam", "a/b": 7},
                       {"ts": 1700000000124, "sensors": {"temp": "hot"}, "ok": 1, "axes": [70000], "a/b": 300}]"#;
        let (mut out, mut r) = (Vec::new(), Rejected::default());
        decode_json(msg, &plan, 5, &mut out, &mut r).unwrap();
        let t1 = 1_700_000_000_123_000_000;
        let t2 = t1 + 1_000_000;
        assert_eq!(
            values(&out),
            vec![
                (1, t1, Value::DoubleValue(41.5)),
                (2, t1, Value::BoolValue(true)),
                (3, t1, Value::IntValue(1)),
                (4, t1, Value::IntValue(-2)),
                (5, t1, Value::IntValue(3)),
                (6, t1, Value::StringValue("cam".into())),
                (7, t1, Value::IntValue(7)),
                (2, t2, Value::BoolValue(true)),
            ]
        );
        // "hot" for a number, 70000 for an i16, 300 for a u8.
        assert_eq!(
            r,
            Rejected {
                wrong_type: 1,
                out_of_range: 2,
                bad_timestamp: 0
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        let plan = JsonPlan {
            points: vec![read("/x", PointType::F64, vec![1])],
            timestamp: None,
        };
        let (mut out, mut r) = (Vec::new(), Rejected::default());
        for bad in [&b"{"[..], b"12", b"\"x\"", b"[1, 2]", b"\xff\xfe", b""] {
            assert!(
                decode_json(bad, &plan, 0, &mut out, &mut r).is_err(),
                "{bad:?}"
            );
        }
        assert!(out.is_empty());
    }

    #[test]
    fn timestamp_formats() {
        let t = |v: J, f| timestamp(&v, f);
        assert_eq!(
            t(J::from(1_700_000_000), TimestampFormat::Unix),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            t(J::from(1_700_000_000.5), TimestampFormat::Unix),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(
            t(J::from(1_700_000_000_123_456i64), TimestampFormat::UnixUs),
            Some(1_700_000_000_123_456_000)
        );
        assert_eq!(
            t(
                J::from(1_700_000_000_123_456_789i64),
                TimestampFormat::UnixNs
            ),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(
            t(J::from("1700000000123"), TimestampFormat::UnixMs),
            Some(1_700_000_000_123_000_000)
        );
        assert_eq!(
            t(
                J::from("2023-11-14T22:13:20.123456789Z"),
                TimestampFormat::Rfc3339
            ),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(
            t(
                J::from("2023-11-15T00:13:20.5+02:00"),
                TimestampFormat::Rfc3339
            ),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339("2000-02-29T12:00:00Z"),
            Some(951_825_600_000_000_000)
        );
        assert_eq!(rfc3339("2023-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339("2023-11-14 22:13:20"), None);
        assert_eq!(t(J::from(true), TimestampFormat::Unix), None);
        assert_eq!(t(J::from(-5), TimestampFormat::Unix), None);
    }

    #[test]
    fn single_values() {
        let p = |k| read("", k, vec![1]);
        assert_eq!(
            decode_value(b" 42.5\n", &p(PointType::F64)),
            Ok(Value::DoubleValue(42.5))
        );
        assert_eq!(
            decode_value(b"-3", &p(PointType::I16)),
            Ok(Value::IntValue(-3))
        );
        assert_eq!(
            decode_value(b"true", &p(PointType::Bool)),
            Ok(Value::BoolValue(true))
        );
        assert_eq!(
            decode_value(b"1", &p(PointType::Bool)),
            Ok(Value::BoolValue(true))
        );
        assert_eq!(
            decode_value(b"weld_3", &p(PointType::String)),
            Ok(Value::StringValue("weld_3".into()))
        );
        assert!(decode_value(b"70000", &p(PointType::U16))
            .unwrap_err()
            .contains("out of the range"));
        assert!(decode_value(b"abc", &p(PointType::F64))
            .unwrap_err()
            .contains("not a number"));
        assert!(decode_value(b"NaN", &p(PointType::F64)).is_err());
        assert!(decode_value(b"\xff", &p(PointType::F64)).is_err());
        assert_eq!(
            decode_value(b"18446744073709551615", &p(PointType::U64)),
            Ok(Value::UintValue(u64::MAX))
        );
    }

    proptest! {
        /// Random bytes and mangled JSON: an error or samples, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), text in "[\\[\\]{}\",:0-9a-z.eE+\\- ]{0,120}") {
            let plan = JsonPlan {
                points: vec![
                    read("/a", PointType::I32, vec![1]),
                    read("/b", PointType::F32, vec![2, 3]),
                    read("/c", PointType::String, vec![4]),
                ],
                timestamp: Some(("/t".into(), TimestampFormat::Rfc3339)),
            };
            let (mut out, mut r) = (Vec::new(), Rejected::default());
            let _ = decode_json(&bytes, &plan, 1, &mut out, &mut r);
            let _ = decode_json(text.as_bytes(), &plan, 1, &mut out, &mut r);
            let _ = decode_value(&bytes, &plan.points[0]);
            let _ = decode_value(text.as_bytes(), &plan.points[1]);
            let _ = rfc3339(&text);
        }
    }
}
