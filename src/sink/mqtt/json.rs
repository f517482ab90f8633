//! The MQTT sink's JSON messages (format json): a device's samples as the object PRODUCT.md
//! describes, and the RFC 3339 timestamps they carry (also used by `sim/mqtt.rs`).

use super::Names;
use crate::model::{SampleBatch, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A device's samples as the JSON object PRODUCT.md describes.
pub(super) fn json(names: &Names, batch: &SampleBatch) -> String {
    let dev = names.devices.get(&batch.device);
    let mut o = String::with_capacity(128 + batch.samples.len() * 120);
    o.push('{');
    let field = |o: &mut String, k: &str, v: &str| {
        let _ = write!(o, "{}:{},", quote(k), quote(v));
    };
    if !names.site.is_empty() {
        field(&mut o, "site", &names.site);
    }
    field(&mut o, "line", &names.line);
    if let Some(d) = dev {
        if !d.cell.is_empty() {
            field(&mut o, "cell", &d.cell);
        }
        field(&mut o, "device", &d.name);
        field(&mut o, "kind", &d.kind);
    }
    o.push_str("\"samples\":[");
    let mut first = true;
    for s in &batch.samples {
        let (Some(p), Some(v)) = (names.points.get(&s.point), &s.value) else {
            continue;
        };
        let value = match v {
            Value::DoubleValue(x) if x.is_finite() => format!("{x}"),
            Value::DoubleValue(_) => continue,
            Value::IntValue(i) => i.to_string(),
            Value::UintValue(u) => u.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::StringValue(t) => quote(t),
        };
        if !first {
            o.push(',');
        }
        first = false;
        let tags: BTreeMap<&str, &str> = p
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let _ = write!(
            o,
            "{{\"measurement\":{},\"field\":{},\"tags\":{{",
            quote(&p.measurement),
            quote(&p.field)
        );
        for (i, (k, v)) in tags.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{}:{}", quote(k), quote(v));
        }
        let _ = write!(o, "}},\"value\":{value}");
        let code = match v {
            Value::IntValue(i) => Some(*i),
            Value::UintValue(u) => i64::try_from(*u).ok(),
            _ => None,
        };
        if let (Some(code), false) = (code, p.labels.is_empty()) {
            let label = p
                .labels
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, l)| l.as_str())
                .unwrap_or("unknown");
            let _ = write!(o, ",\"label\":{}", quote(label));
        }
        if !p.unit.is_empty() {
            let _ = write!(o, ",\"unit\":{}", quote(&p.unit));
        }
        let _ = write!(o, ",\"ts\":\"{}\"}}", rfc3339_ns(s.timestamp_ns));
    }
    o.push_str("]}");
    o
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Unix nanoseconds as RFC 3339 UTC with nanoseconds: `2023-11-14T22:13:20.123456789Z`.
pub fn rfc3339_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        for ns in [
            0i64,
            1_700_000_000_123_456_789,
            951_825_600_000_000_000,
            4_102_444_800_000_000_001,
        ] {
            let text = rfc3339_ns(ns);
            assert_eq!(
                crate::source::mqtt::payload::rfc3339(&text),
                Some(ns),
                "{text}"
            );
        }
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
    }
}
