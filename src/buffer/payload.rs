//! A record's payload, both ways. Written: a `SampleBatch` as a `StoredBatch` (model.proto), in
//! one pass into bytes sized for the largest samples, where every run of samples of consecutive
//! points with one time, good quality and numbers of one kind — what a poll's response decodes
//! to — is packed (`SampleRun`: an f32 reading in 4 bytes instead of a sample's 14 to 24; the
//! buffer writer's write and sync cost goes with its bytes). Read: prost decodes the
//! `StoredBatch` and `decode_batch` puts the runs' samples back in their places, so a batch
//! comes back as it was given, sample for sample (property-tested below). A payload without
//! runs is prost's encoding of the `SampleBatch` itself, byte for byte, as every record written
//! before runs existed (decisions 0022 and 0024).

use crate::model::{sample::Value, Quality, Sample, SampleBatch, SampleRun, StoredBatch};

/// The most bytes a sample without a string takes: its key, a one-byte length, and point
/// (1 + 5), time (1 + 10), quality (1 + 10) and value (1 + 10). A run takes less than its
/// samples would (at most 33 bytes of its own and 10 a value), so this bounds runs too.
const SAMPLE_MAX: usize = 2 + 6 + 11 + 11 + 11;

/// The fewest samples packed as a run.
const MIN_RUN: usize = 4;

/// Appends `batch` encoded to `out`, in one pass: a sample without a string is shorter than
/// 128 bytes, so its length prefix is one byte, written once the sample is.
pub fn encode_batch(batch: &SampleBatch, out: &mut Vec<u8>) {
    if !try_encode(batch, out) {
        // Not reached (the bound holds, tested); should it not, prost's bytes of the batch
        // (without runs) are a `StoredBatch` too.
        let _ = prost::Message::encode(batch, out);
    }
}

/// A record's payload back into its batch: `None` when it does not decode, or its runs do not
/// fit between its samples (damaged).
pub fn decode_batch(bytes: &[u8]) -> Option<SampleBatch> {
    let stored: StoredBatch = prost::Message::decode(bytes).ok()?;
    let StoredBatch {
        device,
        seq,
        samples,
        timestamp_ns,
        runs,
    } = stored;
    let samples = if runs.is_empty() {
        samples
    } else {
        unpack(samples, runs)?
    };
    Some(SampleBatch {
        device,
        seq,
        samples,
        timestamp_ns,
    })
}

/// The batch's samples in order: `plain` with every run's samples put back at its index.
fn unpack(plain: Vec<Sample>, runs: Vec<SampleRun>) -> Option<Vec<Sample>> {
    let packed: usize = runs.iter().map(run_len_of).sum();
    let mut out = Vec::with_capacity(plain.len() + packed);
    let mut plain = plain.into_iter();
    for run in runs {
        let at = run.at as usize;
        while out.len() < at {
            out.push(plain.next()?);
        }
        if out.len() != at {
            return None;
        }
        let kinds = [
            !run.floats.is_empty(),
            !run.doubles.is_empty(),
            !run.ints.is_empty(),
            !run.uints.is_empty(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return None;
        }
        let mut point = Some(run.first_point);
        let mut push = |value| -> Option<()> {
            let p = point?;
            out.push(Sample {
                point: p,
                timestamp_ns: run.timestamp_ns,
                quality: Quality::Good as i32,
                value: Some(value),
            });
            point = p.checked_add(1);
            Some(())
        };
        let mut values_ok = true;
        for v in &run.floats {
            values_ok &= push(Value::DoubleValue(f64::from(*v))).is_some();
        }
        for v in &run.doubles {
            values_ok &= push(Value::DoubleValue(*v)).is_some();
        }
        for v in &run.ints {
            values_ok &= push(Value::IntValue(*v)).is_some();
        }
        for v in &run.uints {
            values_ok &= push(Value::UintValue(*v)).is_some();
        }
        // A run past the last point id (u32::MAX) is not one this writer makes.
        if !values_ok {
            return None;
        }
    }
    out.extend(plain);
    Some(out)
}

fn run_len_of(r: &SampleRun) -> usize {
    r.floats.len() + r.doubles.len() + r.ints.len() + r.uints.len()
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
    let samples = &batch.samples;
    let mut i = 0;
    let mut whole = true;
    while let Some(s) = samples.get(i) {
        let n = run_at(samples, i);
        if n >= MIN_RUN {
            whole &= w.run(i, &samples[i..i + n]);
            i += n;
            continue;
        }
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
        i += 1;
    }
    w.field(0x20, batch.timestamp_ns as u64);
    let written = w.at;
    let ok = whole && written <= bound;
    out.truncate(start + if ok { written } else { 0 });
    ok
}

/// The kinds of value a run packs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Double,
    Int,
    Uint,
}

/// The kind of a sample that can be in a run (good, a number).
#[inline]
fn kind(s: &Sample) -> Option<Kind> {
    if s.quality != Quality::Good as i32 {
        return None;
    }
    match s.value {
        Some(Value::DoubleValue(_)) => Some(Kind::Double),
        Some(Value::IntValue(_)) => Some(Kind::Int),
        Some(Value::UintValue(_)) => Some(Kind::Uint),
        _ => None,
    }
}

/// How many samples from `i` on make one run: consecutive points, one time, good quality,
/// numbers of one kind (0 when the sample at `i` cannot start one).
#[inline]
fn run_at(samples: &[Sample], i: usize) -> usize {
    let Some(first) = samples.get(i) else {
        return 0;
    };
    let Some(k) = kind(first) else {
        return 0;
    };
    let mut n = 1;
    let mut point = first.point;
    for s in &samples[i + 1..] {
        match point.checked_add(1) {
            Some(next)
                if s.point == next
                    && s.timestamp_ns == first.timestamp_ns
                    && kind(s) == Some(k) =>
            {
                point = next;
                n += 1;
            }
            _ => break,
        }
    }
    n
}

/// Whether `v` is exactly an f32 (read back from 4 bytes, every bit the same).
#[inline]
fn exact_f32(v: f64) -> bool {
    f64::from(v as f32).to_bits() == v.to_bits()
}

/// The length of the bytes of a batch without runs (prost's).
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
    /// A `SampleRun` (field 5 of `StoredBatch`) of `run`, whose first sample is the batch's
    /// `at`th; false when a sample is not of the run's kind (not reached: `run_at` checked).
    fn run(&mut self, at: usize, run: &[Sample]) -> bool {
        let Some(first) = run.first() else {
            return true;
        };
        let Some(k) = kind(first) else {
            return false;
        };
        let mut floats = k == Kind::Double;
        let mut packed = 0;
        for s in run {
            match (k, &s.value) {
                (Kind::Double, Some(Value::DoubleValue(v))) => floats &= exact_f32(*v),
                (Kind::Int, Some(Value::IntValue(v))) => packed += varint_len(zigzag(*v)),
                (Kind::Uint, Some(Value::UintValue(v))) => packed += varint_len(*v),
                _ => return false,
            }
        }
        let key = match k {
            Kind::Double if floats => {
                packed = 4 * run.len();
                0x22
            }
            Kind::Double => {
                packed = 8 * run.len();
                0x2a
            }
            Kind::Int => 0x32,
            Kind::Uint => 0x3a,
        };
        let len = opt_len(at as u64)
            + opt_len(u64::from(first.point))
            + opt_len(first.timestamp_ns as u64)
            + 1
            + varint_len(packed as u64)
            + packed;
        self.byte(0x2a);
        self.varint(len as u64);
        self.field(0x08, at as u64);
        self.field(0x10, u64::from(first.point));
        self.field(0x18, first.timestamp_ns as u64);
        self.byte(key);
        self.varint(packed as u64);
        for s in run {
            match &s.value {
                Some(Value::DoubleValue(v)) if floats => self.bytes(&(*v as f32).to_le_bytes()),
                Some(Value::DoubleValue(v)) => self.bytes(&v.to_le_bytes()),
                Some(Value::IntValue(v)) => self.varint(zigzag(*v)),
                Some(Value::UintValue(v)) => self.varint(*v),
                _ => return false,
            }
        }
        true
    }

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

    /// Runs as a poll's responses make them: consecutive points from `first`, one time, good
    /// quality, one kind; f32 readings, doubles (NaN, -0, infinities), or integers.
    fn run() -> impl Strategy<Value = Vec<Sample>> {
        let values = prop_oneof![
            proptest::collection::vec(
                any::<f32>().prop_map(|v| Value::DoubleValue(f64::from(v))),
                1..70
            ),
            proptest::collection::vec(
                prop_oneof![
                    any::<f64>(),
                    Just(f64::NAN),
                    Just(-0.0),
                    Just(f64::INFINITY),
                    Just(f64::from(f32::NAN)),
                    Just(f64::from(f32::MAX) * 2.0),
                ]
                .prop_map(Value::DoubleValue),
                1..70
            ),
            proptest::collection::vec(edge_i64().prop_map(Value::IntValue), 1..70),
            proptest::collection::vec(edge_u64().prop_map(Value::UintValue), 1..70),
        ];
        let first = prop_oneof![Just(0u32), Just(u32::MAX - 3), 0..100_000u32, any::<u32>()];
        (first, prop_oneof![Just(0i64), any::<i64>()], values).prop_map(|(first, ts, values)| {
            values
                .into_iter()
                .enumerate()
                .map_while(|(k, v)| {
                    Some(Sample {
                        point: first.checked_add(k as u32)?,
                        timestamp_ns: ts,
                        quality: 0,
                        value: Some(v),
                    })
                })
                .collect()
        })
    }

    /// Samples in no run and runs, interleaved.
    fn mixed() -> impl Strategy<Value = Vec<Sample>> {
        proptest::collection::vec(prop_oneof![sample().prop_map(|s| vec![s]), run(),], 0..8)
            .prop_map(|parts| parts.concat())
    }

    /// Whether the encoder packs anything of `samples`.
    fn has_run(samples: &[Sample]) -> bool {
        (0..samples.len()).any(|i| run_at(samples, i) >= MIN_RUN)
    }

    proptest! {
        /// Without runs the bytes are prost's own, as every record before runs existed.
        #[test]
        fn writes_what_prost_writes(
            device in prop_oneof![Just(0u32), any::<u32>()],
            seq in edge_u64(),
            ts in edge_u64(),
            samples in proptest::collection::vec(sample(), 0..40),
        ) {
            let batch = SampleBatch { device, seq, samples, timestamp_ns: ts as i64 };
            prop_assume!(!has_run(&batch.samples));
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
            let back = decode_batch(&out[1..]).map(|b| b.encode_to_vec());
            prop_assert_eq!(back, Some(out[1..].to_vec()));
        }

        /// Every batch comes back sample for sample (compared as prost's bytes: every bit of
        /// every double, NaN payloads included), in fewer bytes when it has runs.
        #[test]
        fn comes_back_as_it_was_given(
            device in prop_oneof![Just(0u32), any::<u32>()],
            seq in edge_u64(),
            ts in edge_u64(),
            samples in mixed(),
        ) {
            let batch = SampleBatch { device, seq, samples, timestamp_ns: ts as i64 };
            let mut out = vec![0xee];
            prop_assert!(try_encode(&batch, &mut out));
            prop_assert_eq!(out[0], 0xee);
            let back = decode_batch(&out[1..]);
            prop_assert_eq!(back.map(|b| b.encode_to_vec()), Some(batch.encode_to_vec()));
            if has_run(&batch.samples) {
                prop_assert!(out.len() - 1 < batch.encoded_len());
            }
        }

        /// Damaged bytes never panic the reader: each decodes to a batch or to nothing.
        #[test]
        fn damaged_bytes_decode_or_are_refused(
            samples in mixed(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let batch = SampleBatch { device: 3, seq: 9, samples, timestamp_ns: 1 };
            let mut out = Vec::new();
            encode_batch(&batch, &mut out);
            if !out.is_empty() {
                for (at, b) in flips {
                    let i = at.index(out.len());
                    out[i] ^= b;
                }
                let end = cut.index(out.len() + 1);
                let _ = decode_batch(&out[..end]);
            }
        }
    }

    /// A poll of 100 f32 readings in two responses (its second with a time of its own) and the
    /// device's health samples: each response's readings are one run of 4 bytes a value.
    #[test]
    fn a_polls_readings_are_packed_four_bytes_a_value() {
        let reading = |point: u32, ts: i64| Sample {
            point,
            timestamp_ns: ts,
            quality: 0,
            value: Some(Value::DoubleValue(f64::from(point as f32 * 0.37))),
        };
        let mut samples: Vec<Sample> = (1000..1062).map(|p| reading(p, 0)).collect();
        samples.extend((1062..1100).map(|p| reading(p, 1_733_500_000_123_456_789)));
        samples.push(Sample {
            point: 7,
            value: Some(Value::BoolValue(true)),
            ..Default::default()
        });
        samples.push(Sample {
            point: 8,
            value: Some(Value::UintValue(0)),
            ..Default::default()
        });
        samples.push(Sample {
            point: 9,
            value: Some(Value::StringValue(String::new())),
            ..Default::default()
        });
        let batch = SampleBatch {
            device: 4,
            seq: 77,
            samples,
            timestamp_ns: 1_733_500_000_123_000_000,
        };
        let mut out = Vec::new();
        encode_batch(&batch, &mut out);
        let stored = StoredBatch::decode(&out[..]).unwrap();
        assert_eq!(stored.runs.len(), 2);
        assert_eq!((stored.runs[0].at, stored.runs[0].first_point), (0, 1000));
        assert_eq!(stored.runs[0].floats.len(), 62);
        assert_eq!((stored.runs[1].at, stored.runs[1].floats.len()), (62, 38));
        assert_eq!(stored.samples.len(), 3);
        assert!(out.len() <= 4 * 100 + 70, "{} bytes", out.len());
        assert!(batch.encoded_len() > 1_700);
        let back = decode_batch(&out).unwrap();
        assert_eq!(back.encode_to_vec(), batch.encode_to_vec());
    }

    /// Runs that do not fit between the samples are damage, not a batch.
    #[test]
    fn runs_that_do_not_fit_are_refused() {
        let run = |at, first_point| SampleRun {
            at,
            first_point,
            floats: vec![1.0; 4],
            ..Default::default()
        };
        let plain = Sample {
            point: 1,
            value: Some(Value::BoolValue(true)),
            ..Default::default()
        };
        let stored = |samples: Vec<Sample>, runs| StoredBatch {
            samples,
            runs,
            ..Default::default()
        };
        let ok = stored(vec![plain.clone()], vec![run(1, 5), run(5, 20)]);
        assert_eq!(decode_batch(&ok.encode_to_vec()).unwrap().samples.len(), 9);
        for bad in [
            // Past the samples there are.
            stored(vec![plain.clone()], vec![run(2, 5)]),
            // Overlapping the run before it.
            stored(vec![], vec![run(0, 5), run(2, 20)]),
            // Points past u32::MAX.
            stored(vec![], vec![run(0, u32::MAX - 1)]),
            // Two kinds of values in one run.
            stored(
                vec![],
                vec![SampleRun {
                    doubles: vec![1.0],
                    ..run(0, 5)
                }],
            ),
            // No values.
            stored(vec![], vec![SampleRun::default()]),
        ] {
            assert_eq!(decode_batch(&bad.encode_to_vec()), None, "{bad:?}");
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

    /// The shortest runs of the largest values, far into a batch and at the last point ids,
    /// fit the bound too.
    #[test]
    fn the_largest_runs_fit_the_bound() {
        let run = |value: Value| {
            (0..MIN_RUN as u32).map(move |k| Sample {
                point: u32::MAX - 3 + k,
                timestamp_ns: -1,
                quality: 0,
                value: Some(value.clone()),
            })
        };
        let samples: Vec<Sample> = [
            Value::IntValue(i64::MIN),
            Value::UintValue(u64::MAX),
            Value::DoubleValue(f64::MIN),
        ]
        .into_iter()
        .cycle()
        .take(6_000)
        .flat_map(run)
        .collect();
        let batch = SampleBatch {
            device: u32::MAX,
            seq: u64::MAX,
            timestamp_ns: -1,
            samples,
        };
        let mut out = Vec::new();
        assert!(try_encode(&batch, &mut out));
        assert_eq!(
            decode_batch(&out).map(|b| b.encode_to_vec()),
            Some(batch.encode_to_vec())
        );
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
