//! Sparkplug B 3.0 (shared/reference/sparkplug-b.md): the payload types compiled from
//! `proto/sparkplug_b/sparkplug_b.proto`, the topic namespace, and how linetap's values become
//! metric values (datatype codes are the model's, which are Sparkplug's).

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/org.eclipse.tahu.protobuf.rs"));
}

pub use generated::payload::{metric, property_value, Metric, PropertySet, PropertyValue};
pub use generated::Payload;

use crate::model::Value;

/// `spBv1.0/GROUP/TYPE/NODE[/DEVICE]`.
pub fn topic(group: &str, kind: &str, node: &str, device: Option<&str>) -> String {
    match device {
        Some(d) => format!("spBv1.0/{group}/{kind}/{node}/{d}"),
        None => format!("spBv1.0/{group}/{kind}/{node}"),
    }
}

/// Datatype codes used here (Sparkplug 3.0, "Data Types").
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
}

/// A value as the metric value field its datatype uses. Signed 8/16/32-bit integers travel
/// sign-extended in the uint32 field (as Tahu Java and C encode them); 64-bit ones as their
/// two's-complement bit pattern. `None` when the value does not fit the datatype.
pub fn metric_value(datatype: u32, v: &Value) -> Option<metric::Value> {
    use datatype::*;
    use metric::Value as M;
    let as_i = || -> Option<i64> {
        match v {
            Value::IntValue(i) => Some(*i),
            Value::UintValue(u) => i64::try_from(*u).ok(),
            Value::DoubleValue(x) if x.fract() == 0.0 && x.is_finite() => Some(*x as i64),
            Value::BoolValue(b) => Some(i64::from(*b)),
            _ => None,
        }
    };
    let as_f = || -> Option<f64> {
        match v {
            Value::IntValue(i) => Some(*i as f64),
            Value::UintValue(u) => Some(*u as f64),
            Value::DoubleValue(x) => Some(*x),
            _ => None,
        }
    };
    Some(match datatype {
        INT8 | INT16 | INT32 => M::IntValue(as_i()? as i32 as u32),
        UINT8 | UINT16 | UINT32 => M::IntValue(as_i()? as u32),
        INT64 => M::LongValue(as_i()? as u64),
        UINT64 => match v {
            Value::UintValue(u) => M::LongValue(*u),
            _ => M::LongValue(as_i()? as u64),
        },
        FLOAT => M::FloatValue(as_f()? as f32),
        DOUBLE => M::DoubleValue(as_f()?),
        BOOLEAN => match v {
            Value::BoolValue(b) => M::BooleanValue(*b),
            _ => M::BooleanValue(as_i()? != 0),
        },
        STRING => match v {
            Value::StringValue(s) => M::StringValue(s.clone()),
            _ => return None,
        },
        _ => return None,
    })
}

/// The `bdSeq` metric of an NBIRTH or NDEATH (Int64, by name).
pub fn bd_seq(value: u64) -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        datatype: Some(datatype::INT64),
        value: Some(metric::Value::LongValue(value)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn values_by_datatype() {
        use metric::Value as M;
        assert_eq!(
            metric_value(datatype::INT16, &Value::IntValue(-1)),
            Some(M::IntValue(0xFFFF_FFFF))
        );
        assert_eq!(
            metric_value(datatype::UINT16, &Value::IntValue(65535)),
            Some(M::IntValue(65535))
        );
        assert_eq!(
            metric_value(datatype::INT64, &Value::IntValue(-2)),
            Some(M::LongValue(u64::MAX - 1))
        );
        assert_eq!(
            metric_value(datatype::UINT64, &Value::UintValue(u64::MAX)),
            Some(M::LongValue(u64::MAX))
        );
        assert_eq!(
            metric_value(datatype::DOUBLE, &Value::DoubleValue(41.5)),
            Some(M::DoubleValue(41.5))
        );
        assert_eq!(
            metric_value(datatype::BOOLEAN, &Value::BoolValue(true)),
            Some(M::BooleanValue(true))
        );
        assert_eq!(
            metric_value(datatype::STRING, &Value::StringValue("x".into())),
            Some(M::StringValue("x".into()))
        );
        assert_eq!(metric_value(datatype::STRING, &Value::IntValue(1)), None);
    }

    #[test]
    fn a_payload_round_trips() {
        let p = Payload {
            timestamp: Some(1),
            seq: Some(255),
            metrics: vec![bd_seq(3)],
            ..Default::default()
        };
        let back = Payload::decode(p.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, p);
        assert_eq!(topic("g", "DDATA", "n", Some("d")), "spBv1.0/g/DDATA/n/d");
    }
}
