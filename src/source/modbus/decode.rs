//! Register decoding (pure): words of one response → typed values, following PRODUCT.md's
//! encoding rules (word orders, bit numbering, strings, scale and offset).

use super::plan::{Field, Scaling};
use crate::config::{ByteHalf, PointType, WordOrder};
use crate::model::Value;

/// Combines up to four registers into one integer of `words.len() * 16` bits, in `order`.
/// ABCD: registers in order, high byte first; CDAB: registers reversed; BADC: bytes swapped
/// inside each register; DCBA: both.
pub fn combine(words: &[u16], order: WordOrder) -> u64 {
    let (reverse, swap) = match order {
        WordOrder::ABCD => (false, false),
        WordOrder::CDAB => (true, false),
        WordOrder::BADC => (false, true),
        WordOrder::DCBA => (true, true),
    };
    let mut v = 0u64;
    let mut add = |w: u16| {
        let w = if swap { w.swap_bytes() } else { w };
        v = (v << 16) | w as u64;
    };
    if reverse {
        words.iter().rev().for_each(|&w| add(w));
    } else {
        words.iter().for_each(|&w| add(w));
    }
    v
}

/// Decodes one register-table field from the words of its request.
/// Returns `None` when the response is too short for the field (a malformed response).
pub fn decode_field(words: &[u16], f: &Field) -> Option<Value> {
    let start = f.offset as usize;
    let raw = words.get(start..start + f.width as usize)?;
    let value = match f.kind {
        PointType::Bool => {
            let bit = f.bit.unwrap_or(0);
            return Some(Value::BoolValue((raw[0] >> bit) & 1 == 1));
        }
        PointType::String => return Some(Value::StringValue(decode_string(raw, f.order, f.byte))),
        PointType::U8 => Num::Int(f.byte.unwrap_or(ByteHalf::Low).of(raw[0]) as i64),
        PointType::I8 => Num::Int(f.byte.unwrap_or(ByteHalf::Low).of(raw[0]) as i8 as i64),
        PointType::F16 => Num::Float(half::f16::from_bits(combine(raw, f.order) as u16).to_f64()),
        PointType::U16 => Num::Int(combine(raw, f.order) as u16 as i64),
        PointType::I16 => Num::Int(combine(raw, f.order) as u16 as i16 as i64),
        PointType::U32 => Num::Int(combine(raw, f.order) as u32 as i64),
        PointType::I32 => Num::Int(combine(raw, f.order) as u32 as i32 as i64),
        PointType::U64 => Num::Uint(combine(raw, f.order)),
        PointType::I64 => Num::Int(combine(raw, f.order) as i64),
        PointType::F32 => Num::Float(f32::from_bits(combine(raw, f.order) as u32) as f64),
        PointType::F64 => Num::Float(f64::from_bits(combine(raw, f.order))),
    };
    Some(if let Some(scaling) = &f.scaling {
        Value::DoubleValue(apply_scale(value.as_f64(), scaling))
    } else {
        match value {
            Num::Int(i) => Value::IntValue(i),
            Num::Uint(u) => Value::UintValue(u),
            Num::Float(x) => Value::DoubleValue(x),
        }
    })
}

/// `raw * scale + offset`, computed so decimal scales stay decimal: with scale 0.1 and offset
/// -40, raw 401 gives 0.1 (as (401 - 400) / 10), not 0.10000000000000142.
pub fn apply_scale(x: f64, f: &Scaling) -> f64 {
    if f.divisor == 0.0 {
        return x * f.scale + f.add;
    }
    let steps = f.add * f.divisor;
    if (steps - steps.round()).abs() < 1e-9 {
        (x + steps.round()) / f.divisor
    } else {
        x / f.divisor + f.add
    }
}

enum Num {
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl Num {
    fn as_f64(&self) -> f64 {
        match *self {
            Num::Int(i) => i as f64,
            Num::Uint(u) => u as f64,
            Num::Float(x) => x,
        }
    }
}

/// Two characters per register, high byte first (`BADC`: low byte first), or with `byte` one
/// character per register from that byte; trailing NULs (and NUL padding) removed.
pub fn decode_string(words: &[u16], order: WordOrder, byte: Option<ByteHalf>) -> String {
    let mut bytes = Vec::with_capacity(words.len() * 2);
    for &w in words {
        match (byte, order) {
            (Some(b), _) => bytes.push(b.of(w)),
            (None, WordOrder::BADC | WordOrder::DCBA) => bytes.extend_from_slice(&w.to_le_bytes()),
            (None, _) => bytes.extend_from_slice(&w.to_be_bytes()),
        }
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An independent encoder: the registers a device would hold for `bytes` (the value's
    /// big-endian bytes, A first) under each order, written from the definition in PRODUCT.md.
    fn encode(bytes: &[u8], order: WordOrder) -> Vec<u16> {
        let n = bytes.len() / 2;
        let mut regs = Vec::with_capacity(n);
        for i in 0..n {
            // Word i as it appears in register i.
            let (hi, lo) = match order {
                WordOrder::ABCD => (bytes[2 * i], bytes[2 * i + 1]),
                WordOrder::BADC => (bytes[2 * i + 1], bytes[2 * i]),
                WordOrder::CDAB => (bytes[2 * (n - 1 - i)], bytes[2 * (n - 1 - i) + 1]),
                WordOrder::DCBA => (
                    bytes[bytes.len() - 1 - 2 * i],
                    bytes[bytes.len() - 2 - 2 * i],
                ),
            };
            regs.push(u16::from_be_bytes([hi, lo]));
        }
        regs
    }

    fn field(kind: PointType, order: WordOrder, width: u16) -> Field {
        Field {
            point: 0,
            offset: 0,
            kind,
            order,
            bit: None,
            byte: None,
            width,
            scaling: None,
        }
    }

    fn order() -> impl Strategy<Value = WordOrder> {
        prop_oneof![
            Just(WordOrder::ABCD),
            Just(WordOrder::CDAB),
            Just(WordOrder::BADC),
            Just(WordOrder::DCBA)
        ]
    }

    #[test]
    fn known_examples() {
        // 0x11223344 in the four orders, as the registers show them.
        let f = field(PointType::U32, WordOrder::ABCD, 2);
        assert_eq!(
            decode_field(&[0x1122, 0x3344], &f),
            Some(Value::IntValue(0x11223344))
        );
        let f = field(PointType::U32, WordOrder::CDAB, 2);
        assert_eq!(
            decode_field(&[0x3344, 0x1122], &f),
            Some(Value::IntValue(0x11223344))
        );
        let f = field(PointType::U32, WordOrder::BADC, 2);
        assert_eq!(
            decode_field(&[0x2211, 0x4433], &f),
            Some(Value::IntValue(0x11223344))
        );
        let f = field(PointType::U32, WordOrder::DCBA, 2);
        assert_eq!(
            decode_field(&[0x4433, 0x2211], &f),
            Some(Value::IntValue(0x11223344))
        );
        // 64-bit CDAB: the four words in reverse order (GH EF CD AB).
        let f = field(PointType::U64, WordOrder::CDAB, 4);
        assert_eq!(
            decode_field(&[0x7788, 0x5566, 0x3344, 0x1122], &f),
            Some(Value::UintValue(0x1122334455667788))
        );
        let f = field(PointType::F32, WordOrder::ABCD, 2);
        assert_eq!(
            decode_field(&[0x4049, 0x0fdb], &f),
            Some(Value::DoubleValue(std::f32::consts::PI as f64))
        );
        let f = field(PointType::I16, WordOrder::ABCD, 1);
        assert_eq!(decode_field(&[0xfffe], &f), Some(Value::IntValue(-2)));
    }

    #[test]
    fn bits_strings_scale() {
        let mut f = field(PointType::Bool, WordOrder::ABCD, 1);
        f.bit = Some(15);
        assert_eq!(decode_field(&[0x8000], &f), Some(Value::BoolValue(true)));
        f.bit = Some(0);
        assert_eq!(decode_field(&[0x8000], &f), Some(Value::BoolValue(false)));
        let f = field(PointType::String, WordOrder::ABCD, 3);
        assert_eq!(
            decode_field(&[0x5552, 0x3500, 0x0000], &f),
            Some(Value::StringValue("UR5".into()))
        );
        let mut f = field(PointType::I16, WordOrder::ABCD, 1);
        f.scaling = Some(Box::new(Scaling::new(0.1, -40.0)));
        assert_eq!(
            decode_field(&[650], &f),
            Some(Value::DoubleValue(650.0 * 0.1 - 40.0))
        );
        // A short response is reported, not a panic.
        let f = field(PointType::F64, WordOrder::ABCD, 4);
        assert_eq!(decode_field(&[1, 2], &f), None);
    }

    /// Bytes, half floats and the other string layouts, against values worked out by hand
    /// from the register contents.
    #[test]
    fn bytes_halves_and_string_layouts() {
        let reg = [0xFE07u16];
        for (kind, byte, want) in [
            (PointType::U8, ByteHalf::Low, 7),
            (PointType::U8, ByteHalf::High, 254),
            (PointType::I8, ByteHalf::Low, 7),
            (PointType::I8, ByteHalf::High, -2),
        ] {
            let mut f = field(kind, WordOrder::ABCD, 1);
            f.byte = Some(byte);
            assert_eq!(
                decode_field(&reg, &f),
                Some(Value::IntValue(want)),
                "{kind:?} {byte:?}"
            );
        }
        // IEEE 754 binary16: 0x3C00 = 1.0, 0xC000 = -2.0, 0x7BFF = 65504 (largest), 0x3555 ≈
        // 0.33325, 0x0001 = 2^-24 (smallest subnormal); BADC swaps the two bytes.
        for (regs, order, want) in [
            (0x3C00u16, WordOrder::ABCD, 1.0),
            (0xC000, WordOrder::ABCD, -2.0),
            (0x7BFF, WordOrder::ABCD, 65504.0),
            (0x3555, WordOrder::ABCD, 0.333251953125),
            (0x0001, WordOrder::ABCD, 5.960464477539063e-8),
            (0x003C, WordOrder::BADC, 1.0),
        ] {
            assert_eq!(
                decode_field(&[regs], &field(PointType::F16, order, 1)),
                Some(Value::DoubleValue(want)),
                "{regs:#06x} {order:?}"
            );
        }
        let inf = decode_field(&[0x7C00], &field(PointType::F16, WordOrder::ABCD, 1));
        assert_eq!(inf, Some(Value::DoubleValue(f64::INFINITY)));
        // "UR5e" byte-swapped (low byte first): 0x5255 = 'R','U' as stored.
        let f = field(PointType::String, WordOrder::BADC, 2);
        assert_eq!(
            decode_field(&[0x5255, 0x6535], &f),
            Some(Value::StringValue("UR5e".into()))
        );
        // One character per register, low byte or high byte.
        let mut f = field(PointType::String, WordOrder::ABCD, 4);
        f.byte = Some(ByteHalf::Low);
        assert_eq!(
            decode_field(&[0xFF55, 0x0052, 0x1235, 0x0000], &f),
            Some(Value::StringValue("UR5".into()))
        );
        f.byte = Some(ByteHalf::High);
        assert_eq!(
            decode_field(&[0x55FF, 0x5200, 0x3512, 0x0000], &f),
            Some(Value::StringValue("UR5".into()))
        );
    }

    proptest! {
        #[test]
        fn u8_i8_f16_roundtrip(v: u16) {
            for byte in [ByteHalf::Low, ByteHalf::High] {
                let mut f = field(PointType::U8, WordOrder::ABCD, 1);
                f.byte = Some(byte);
                let b = if byte == ByteHalf::High { v >> 8 } else { v & 0xff };
                prop_assert_eq!(decode_field(&[v], &f), Some(Value::IntValue(b as i64)));
                f.kind = PointType::I8;
                prop_assert_eq!(decode_field(&[v], &f), Some(Value::IntValue(b as u8 as i8 as i64)));
            }
            let h = half::f16::from_bits(v).to_f64();
            match decode_field(&[v], &field(PointType::F16, WordOrder::ABCD, 1)) {
                Some(Value::DoubleValue(d)) => prop_assert!(d.to_bits() == h.to_bits() || (d.is_nan() && h.is_nan())),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn u32_i32_f32_roundtrip(v: u32, o in order()) {
            let regs = encode(&v.to_be_bytes(), o);
            prop_assert_eq!(decode_field(&regs, &field(PointType::U32, o, 2)), Some(Value::IntValue(v as i64)));
            prop_assert_eq!(decode_field(&regs, &field(PointType::I32, o, 2)), Some(Value::IntValue(v as i32 as i64)));
            let f = f32::from_bits(v);
            match decode_field(&regs, &field(PointType::F32, o, 2)) {
                Some(Value::DoubleValue(d)) => prop_assert!(d.to_bits() == (f as f64).to_bits() || (d.is_nan() && f.is_nan())),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn u64_i64_f64_roundtrip(v: u64, o in order()) {
            let regs = encode(&v.to_be_bytes(), o);
            prop_assert_eq!(decode_field(&regs, &field(PointType::U64, o, 4)), Some(Value::UintValue(v)));
            prop_assert_eq!(decode_field(&regs, &field(PointType::I64, o, 4)), Some(Value::IntValue(v as i64)));
            match decode_field(&regs, &field(PointType::F64, o, 4)) {
                Some(Value::DoubleValue(d)) => prop_assert_eq!(d.to_bits(), v),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn u16_i16_roundtrip(v: u16) {
            let regs = encode(&v.to_be_bytes(), WordOrder::ABCD);
            prop_assert_eq!(decode_field(&regs, &field(PointType::U16, WordOrder::ABCD, 1)), Some(Value::IntValue(v as i64)));
            prop_assert_eq!(decode_field(&regs, &field(PointType::I16, WordOrder::ABCD, 1)), Some(Value::IntValue(v as i16 as i64)));
        }

        #[test]
        fn strings_roundtrip(s in "[ -~]{0,16}") {
            let mut bytes = s.as_bytes().to_vec();
            bytes.resize(16, 0);
            let regs: Vec<u16> = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            prop_assert_eq!(decode_field(&regs, &field(PointType::String, WordOrder::ABCD, 8)), Some(Value::StringValue(s.trim_end_matches('\0').to_string())));
        }

        #[test]
        fn never_panics_on_short_or_odd_input(words in proptest::collection::vec(any::<u16>(), 0..6), offset in 0u16..8, width in 1u16..5) {
            let mut f = field(PointType::U64, WordOrder::DCBA, width.min(4));
            f.offset = offset;
            let _ = decode_field(&words, &f);
        }
    }
}
