//! A number read by a source as a value of its point's type: range-checked against the type
//! (a value outside it is not written: decision 0016), then scaled. Shared by every source
//! whose values arrive as numbers of their own kind (MQTT JSON and Sparkplug, RTDE, OPC UA).

use crate::config::PointType;
use crate::model::Value;

/// A number as it arrived.
#[derive(Debug, Clone, Copy)]
pub enum Num {
    U(u64),
    I(i64),
    F(f64),
}

/// Why a number is not a value of the point's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not a number of that kind (2 for a bool, any number for a string).
    WrongType,
    /// Outside the type (300 for a u8, 1.5 for an integer).
    OutOfRange,
}

/// `n` as a value of a point of `kind`, then `* scale + offset` (a scaled point is a float).
pub fn number(n: Num, kind: PointType, scale: f64, offset: f64) -> Result<Value, Reject> {
    let as_f = match n {
        Num::U(u) => u as f64,
        Num::I(i) => i as f64,
        Num::F(x) => x,
    };
    let int = |lo: i128, hi: i128| -> Result<i128, Reject> {
        let v: i128 = match n {
            Num::U(u) => u as i128,
            Num::I(i) => i as i128,
            Num::F(x) if x.fract() == 0.0 && x.is_finite() && x.abs() < 1.8e19 => x as i128,
            Num::F(_) => return Err(Reject::OutOfRange),
        };
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(Reject::OutOfRange)
        }
    };
    let raw: Value = match kind {
        PointType::Bool => match n {
            Num::U(0) | Num::I(0) => Value::BoolValue(false),
            Num::U(1) | Num::I(1) => Value::BoolValue(true),
            _ => return Err(Reject::WrongType),
        },
        PointType::String => return Err(Reject::WrongType),
        PointType::U8 => Value::IntValue(int(0, 255)? as i64),
        PointType::I8 => Value::IntValue(int(-128, 127)? as i64),
        PointType::U16 => Value::IntValue(int(0, 65535)? as i64),
        PointType::I16 => Value::IntValue(int(-32768, 32767)? as i64),
        PointType::U32 => Value::IntValue(int(0, u32::MAX as i128)? as i64),
        PointType::I32 => Value::IntValue(int(i32::MIN as i128, i32::MAX as i128)? as i64),
        PointType::I64 => Value::IntValue(int(i64::MIN as i128, i64::MAX as i128)? as i64),
        PointType::U64 => Value::UintValue(int(0, u64::MAX as i128)? as u64),
        PointType::F16 => {
            if as_f.is_finite() && as_f.abs() > 65504.0 {
                return Err(Reject::OutOfRange);
            }
            Value::DoubleValue(as_f)
        }
        PointType::F32 => {
            if as_f.is_finite() && as_f.abs() > f32::MAX as f64 {
                return Err(Reject::OutOfRange);
            }
            Value::DoubleValue(as_f)
        }
        PointType::F64 => Value::DoubleValue(as_f),
    };
    if (scale != 1.0 || offset != 0.0) && !matches!(raw, Value::BoolValue(_)) {
        return Ok(Value::DoubleValue(as_f * scale + offset));
    }
    Ok(raw)
}
