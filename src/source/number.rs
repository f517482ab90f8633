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

/// `n` as a value of a point of `kind`; with `scaling` (`(scale, offset)`, `Some` for a scaled
/// or `as_float` point: `PointConfig::is_scaled`), then `* scale + offset`, always a float.
pub fn number(n: Num, kind: PointType, scaling: Option<(f64, f64)>) -> Result<Value, Reject> {
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
    if let Some((scale, offset)) = scaling {
        if !matches!(raw, Value::BoolValue(_)) {
            return Ok(Value::DoubleValue(as_f * scale + offset));
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scaled or `as_float` point is a float whatever its type and the number's kind (a u64
    /// too: written as an unsigned integer, it would conflict with the float the catalog
    /// declares); without scaling, the point's type decides.
    #[test]
    fn scaling_makes_a_float_and_only_scaling_does() {
        let float = Some((1.0, 0.0));
        for (n, kind) in [
            (Num::U(7), PointType::U64),
            (Num::U(7), PointType::U16),
            (Num::I(7), PointType::I32),
            (Num::F(7.0), PointType::I64),
        ] {
            assert_eq!(
                number(n, kind, float),
                Ok(Value::DoubleValue(7.0)),
                "{kind:?}"
            );
        }
        assert_eq!(
            number(Num::U(7), PointType::U64, None),
            Ok(Value::UintValue(7))
        );
        assert_eq!(
            number(Num::I(-3), PointType::I16, Some((0.5, 1.0))),
            Ok(Value::DoubleValue(-0.5))
        );
        assert_eq!(
            number(Num::U(1), PointType::Bool, float),
            Ok(Value::BoolValue(true))
        );
        assert_eq!(
            number(Num::U(70000), PointType::U16, float),
            Err(Reject::OutOfRange)
        );
    }
}
