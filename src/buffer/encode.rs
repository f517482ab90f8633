//! A `SampleBatch` as the protobuf bytes of a record's payload, written in one pass into bytes
//! sized for the largest samples: the same bytes prost writes (property-tested below; the
//! reader decodes them with prost), in fewer instructions. prost's `encode` measures every sample twice (once for the
//! whole message, once for each sample's length prefix) and pushes a varint byte by byte
//! through a generic buffer; it was the buffer writer's largest cost per sample (decision
//! 0022).

use crate::model::{sample::Value, Sample, SampleBatch};

/// The most bytes a sample without a string takes: its key, a one-byte length, and point
/// (1 + 5), time (1 + 10), quality (1 + 10) and value (1 + 10).
const SAMPLE_MAX: usize = 2 + 6 + 11 + 11 + 11;

/// Appends `batch` encoded to `out`, in one pass: a sample without a string is shorter than
/// 128 bytes, so its length prefix is one byte, written once the sample is.
pub fn encode_batch(batch: &SampleBatch, out: &mut Vec<u8>) {
    if !try_encode(batch, out) {
        // Not reached (the bound holds, tested); should it not, prost's bytes are the right
        // ones.
        let _ = prost::Message::encode(batch, out);
    }
}

/// `encode_batch` without the fallback: false (and `out` as it was) when the bytes would not
/// fit the bound computed for them.
fn try_encode(batch: &SampleBatch, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let bound = 33
        + batch
            .samples
            .iter()
            .map(|s| match &s.value {
                Some(Value::StringValue(v)) => SAMPLE_MAX + 10 + v.len(),
                _ => SAMPLE_MAX,
            })
            .sum::<usize>();
    out.resize(start + bound, 0);
    let mut w = Cursor {
        buf: &mut out[start..],
        at: 0,
    };
    w.field(0x08, u64::from(batch.device));
    w.field(0x10, batch.seq);
    for s in &batch.samples {
        w.byte(0x1a);
        if let Some(Value::StringValue(_)) = &s.value {
            w.varint(sample_len(s) as u64);
            w.sample(s);
        } else {
            let len_at = w.at;
            w.at += 1;
            w.sample(s);
            let len = w.at - len_at - 1;
            if let Some(slot) = w.buf.get_mut(len_at) {
                *slot = len as u8;
            }
        }
    }
    w.field(0x20, batch.timestamp_ns as u64);
    let written = w.at;
    out.truncate(start + if written <= bound { written } else { 0 });
    written <= bound
}

/// The length of `encode_batch(batch)`'s bytes.
#[cfg(test)]
fn batch_len(batch: &SampleBatch) -> usize {
    let mut n =
        opt_len(u64::from(batch.device)) + opt_len(batch.seq) + opt_len(batch.timestamp_ns as u64);
    for s in &batch.samples {
        let len = sample_len(s);
        n += 1 + varint_len(len as u64) + len;
    }
    n
}

/// The length of `Cursor::sample(s)`'s bytes.
#[inline]
fn sample_len(s: &Sample) -> usize {
    opt_len(u64::from(s.point))
        + opt_len(s.timestamp_ns as u64)
        + opt_len(i64::from(s.quality) as u64)
        + match &s.value {
            None => 0,
            Some(Value::DoubleValue(_)) => 9,
            Some(Value::IntValue(v)) => 1 + varint_len(zigzag(*v)),
            Some(Value::UintValue(v)) => 1 + varint_len(*v),
            Some(Value::BoolValue(_)) => 2,
            Some(Value::StringValue(v)) => 1 + varint_len(v.len() as u64) + v.len(),
        }
}

/// A proto3 scalar field's length: nothing for 0, else its key (one byte here) and varint.
#[inline]
fn opt_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + varint_len(v)
    }
}

#[inline]
fn varint_len(v: u64) -> usize {
    (70 - (v | 1).leading_zeros() as usize) / 7
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Writes into bytes already sized: no capacity check or copy call per field. Writing past
/// the end is not done (and shows as `at` beyond the length).
struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    #[inline]
    fn byte(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.at) {
            *slot = b;
        }
        self.at += 1;
    }

    #[inline]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    #[inline]
    fn bytes(&mut self, b: &[u8]) {
        if let Some(slot) = self.buf.get_mut(self.at..self.at + b.len()) {
            slot.copy_from_slice(b);
        }
        self.at += b.len();
    }

    /// A proto3 scalar field (key `key`, a varint), left out when 0.
    #[inline]
    fn field(&mut self, key: u8, v: u64) {
        if v != 0 {
            self.byte(key);
            self.varint(v);
        }
    }

    /// Field by field in tag order, proto3 defaults (0) left out; a oneof value is always
    /// written.
    #[inline]
    fn sample(&mut self, s: &Sample) {
        self.field(0x08, u64::from(s.point));
        self.field(0x10, s.timestamp_ns as u64);
        self.field(0x18, i64::from(s.quality) as u64);
        match &s.value {
            None => {}
            Some(Value::DoubleValue(v)) => {
                self.byte(0x51);
                self.bytes(&v.to_le_bytes());
            }
            Some(Value::IntValue(v)) => {
                self.byte(0x58);
                self.varint(zigzag(*v));
            }
            Some(Value::UintValue(v)) => {
                self.byte(0x60);
                self.varint(*v);
            }
            Some(Value::BoolValue(v)) => {
                self.byte(0x68);
                self.byte(u8::from(*v));
            }
            Some(Value::StringValue(v)) => {
                self.byte(0x72);
                self.varint(v.len() as u64);
                self.bytes(v.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn value() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(|v| Some(Value::DoubleValue(v))),
            edge_i64().prop_map(|v| Some(Value::IntValue(v))),
            edge_u64().prop_map(|v| Some(Value::UintValue(v))),
            any::<bool>().prop_map(|v| Some(Value::BoolValue(v))),
            prop_oneof![
                2 => Just(String::new()),
                6 => ".{0,200}",
                1 => (8192usize..8300).prop_map(|n| "é".repeat(n)),
            ]
            .prop_map(|v| Some(Value::StringValue(v))),
        ]
    }

    fn edge_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(127),
            Just(128),
            Just(1 << 63),
            Just(u64::MAX),
            0..1u64 << 21,
            any::<u64>()
        ]
    }

    fn edge_i64() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(-1),
            Just(i64::MIN),
            Just(i64::MAX),
            -100_000..100_000i64,
            any::<i64>()
        ]
    }

    fn sample() -> impl Strategy<Value = Sample> {
        let point = prop_oneof![Just(0u32), Just(128), any::<u32>()];
        (point, edge_u64(), -3i32..10, value()).prop_map(|(point, ts, quality, value)| Sample {
            point,
            timestamp_ns: ts as i64,
            quality,
            value,
        })
    }

    proptest! {
        #[test]
        fn writes_what_prost_writes(
            device in prop_oneof![Just(0u32), any::<u32>()],
            seq in edge_u64(),
            ts in edge_u64(),
            samples in proptest::collection::vec(sample(), 0..40),
        ) {
            let batch = SampleBatch { device, seq, samples, timestamp_ns: ts as i64 };
            // The lengths are prost's (else the bytes would only match through the fallback).
            for s in &batch.samples {
                prop_assert_eq!(sample_len(s), s.encoded_len());
            }
            prop_assert_eq!(batch_len(&batch), batch.encoded_len());
            let mut out = vec![0xee];
            // Written by the one pass itself, not by prost through the fallback.
            prop_assert!(try_encode(&batch, &mut out));
            prop_assert_eq!(out[0], 0xee);
            prop_assert_eq!(&out[1..], &batch.encode_to_vec()[..]);
            let again = SampleBatch::decode(&out[1..]).map(|b| b.encode_to_vec());
            prop_assert_eq!(again.ok(), Some(out[1..].to_vec()));
        }
    }

    /// The bound is tight for the largest samples: a batch of nothing else is still written by
    /// the one pass, and such a sample is exactly `SAMPLE_MAX` bytes with its key and length.
    #[test]
    fn the_largest_samples_fit_the_bound() {
        let largest = |value| Sample {
            point: u32::MAX,
            timestamp_ns: -1,
            quality: -1,
            value: Some(value),
        };
        let samples = vec![
            largest(Value::IntValue(i64::MIN)),
            largest(Value::UintValue(u64::MAX)),
            largest(Value::DoubleValue(f64::MIN)),
        ];
        assert_eq!(1 + 1 + sample_len(&samples[0]), SAMPLE_MAX);
        let batch = SampleBatch {
            device: u32::MAX,
            seq: u64::MAX,
            timestamp_ns: -1,
            samples: samples.into_iter().cycle().take(300).collect(),
        };
        let mut out = Vec::new();
        assert!(try_encode(&batch, &mut out));
        assert_eq!(out, batch.encode_to_vec());
    }

    #[test]
    fn varint_lengths() {
        for (v, n) in [(0, 1), (1, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3)] {
            assert_eq!(varint_len(v), n, "{v}");
        }
        assert_eq!(varint_len(u64::MAX), 10);
        assert_eq!(varint_len(i64::MAX as u64), 9);
    }
}
