//! The InfluxDB line-protocol encoder (pure). Everything that does not change between readings
//! (measurement, tag set, field key, enum labels) is escaped once, when the encoder is built
//! from the catalog; encoding a sample is then a copy of that prefix plus the formatted value
//! and timestamp, with no allocation once the output buffer has grown.

use crate::model::{Catalog, DataType, SampleBatch, Value};

/// Why a sample was not encoded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// NaN or ±Inf: line protocol cannot carry them.
    pub not_finite: u64,
    /// Not encodable in the store's types: a u64 above i64::MAX for a store without an
    /// unsigned type (InfluxDB 1.x, files; decision 0016). Never written as another value.
    pub out_of_range: u64,
    /// A sample whose point id is not in the catalog.
    pub unknown_point: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.not_finite + self.out_of_range + self.unknown_point
    }
}

/// One point's fixed text. Compact: a large line has tens of thousands of points, and every
/// sink keeps an encoder per catalog version it writes.
struct PointLine {
    /// `measurement,tag=v,... field=`: `LineEncoder::text[start..start + len]`; when the
    /// series (`measurement,tag=v,... `) is the previous point's, only the series, and
    /// `field=` is `text[field..field + field_len]` (a device's listed points share one
    /// series text: 1.2 MB less on a line of 20,000 points).
    start: u32,
    /// Never 0 (a prefix has a measurement and a field): the niche that keeps an
    /// `Option<PointLine>` 24 bytes.
    len: std::num::NonZeroU32,
    field: u32,
    /// 0: not shared (a field name too long for it is not shared either).
    field_len: u16,
    /// A `DataType` (one byte, so a point's line is 24 bytes): integers are written with an
    /// `i` suffix, whether the value came in as int or uint; u64 points with `u` where the
    /// store has an unsigned type (`LineEncoder::unsigned`).
    data_type: u8,
    /// Enum points only.
    labels: Option<Box<EnumLine>>,
}

/// An enum point's label text.
struct EnumLine {
    /// `,field_label=`; `labels[i]` is the escaped, quoted label of code `codes[i]`.
    label_key: Box<[u8]>,
    codes: Box<[i64]>,
    labels: Box<[Box<[u8]>]>,
}

impl EnumLine {
    /// `,NAME_label="label"` (`"unknown"` for a code the map lacks).
    fn write_label(&self, code: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.label_key);
        match self.codes.binary_search(&code) {
            Ok(k) => out.extend_from_slice(&self.labels[k]),
            Err(_) => out.extend_from_slice(b"\"unknown\""),
        }
    }
}

/// Encodes sample batches to line protocol for one catalog version.
pub struct LineEncoder {
    /// Every point's prefix, one after the other.
    text: Vec<u8>,
    /// By point id (ids are stable, not necessarily dense; holes are `None`).
    points: Vec<Option<PointLine>>,
    /// The store has an unsigned integer type (InfluxDB 2 and 3, VictoriaMetrics): u64 points
    /// are written with the `u` suffix, exact over their whole range.
    unsigned: bool,
}

/// Escapes a measurement name (commas and spaces).
pub fn escape_measurement(s: &str, out: &mut Vec<u8>) {
    escape(s, b", ", out)
}

/// Escapes a tag key, tag value or field key (commas, equals signs and spaces).
pub fn escape_key(s: &str, out: &mut Vec<u8>) {
    escape(s, b",= ", out)
}

fn escape(s: &str, special: &[u8], out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'\n' | b'\r' | b'\t' => {
                out.push(b'\\');
                out.push(b' ');
            }
            _ => {
                if special.contains(&b) {
                    out.push(b'\\');
                }
                out.push(b);
            }
        }
    }
}

/// Writes a string field value with quotes; `"` and `\` are escaped. Line breaks would end
/// the line, so they are written as spaces.
pub fn write_string_value(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' | b'\r' => out.push(b' '),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

impl LineEncoder {
    pub fn new(catalog: &Catalog) -> Self {
        let devices: std::collections::HashMap<u32, &crate::model::DeviceDescriptor> =
            catalog.devices.iter().map(|d| (d.id, d)).collect();
        let size = catalog
            .points
            .iter()
            .map(|p| p.id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut points: Vec<Option<PointLine>> = Vec::new();
        points.resize_with(size, || None);
        let mut text = Vec::new();
        let mut prefix = Vec::new();
        // Where the previous point's series text is in `text`.
        let mut last_series: Option<(usize, usize)> = None;
        for p in &catalog.points {
            let line = {
                let dev = devices.get(&p.device).copied();
                let mut tags: Vec<(&str, &str)> = Vec::new();
                if !catalog.site.is_empty() {
                    tags.push(("site", &catalog.site));
                }
                tags.push(("line", &catalog.line));
                if let Some(d) = dev {
                    if !d.cell.is_empty() {
                        tags.push(("cell", &d.cell));
                    }
                    // The agent's own records (`linetap_agent`) have neither.
                    if !d.name.is_empty() {
                        tags.push(("device", &d.name));
                    }
                    if !d.kind.is_empty() {
                        tags.push(("kind", &d.kind));
                    }
                }
                for t in catalog
                    .tags
                    .iter()
                    .chain(dev.iter().flat_map(|d| d.tags.iter()))
                    .chain(p.tags.iter())
                {
                    // Later (more specific) tags override earlier ones with the same key.
                    tags.retain(|(k, _)| *k != t.key);
                    tags.push((&t.key, &t.value));
                }
                // Sorted tags are what InfluxDB stores; sending them sorted saves it the work.
                tags.sort_by(|a, b| a.0.cmp(b.0));
                prefix.clear();
                escape_measurement(&p.measurement, &mut prefix);
                for (k, v) in tags {
                    prefix.push(b',');
                    escape_key(k, &mut prefix);
                    prefix.push(b'=');
                    escape_key(v, &mut prefix);
                }
                prefix.push(b' ');
                let series_len = prefix.len();
                escape_key(&p.name, &mut prefix);
                prefix.push(b'=');
                let labels = (!p.enum_labels.is_empty()).then(|| {
                    let mut label_key = Vec::new();
                    label_key.push(b',');
                    escape_key(&p.name, &mut label_key);
                    label_key.extend_from_slice(b"_label=");
                    let mut pairs: Vec<(i64, Box<[u8]>)> = p
                        .enum_labels
                        .iter()
                        .map(|e| {
                            let mut l = Vec::new();
                            write_string_value(&e.label, &mut l);
                            (e.code, l.into_boxed_slice())
                        })
                        .collect();
                    pairs.sort_by_key(|(code, _)| *code);
                    let (codes, labels): (Vec<i64>, Vec<Box<[u8]>>) = pairs.into_iter().unzip();
                    Box::new(EnumLine {
                        label_key: label_key.into_boxed_slice(),
                        codes: codes.into_boxed_slice(),
                        labels: labels.into_boxed_slice(),
                    })
                });
                let (series, field) = prefix.split_at(series_len);
                let shared = last_series
                    .filter(|&(at, len)| text.get(at..at + len) == Some(series))
                    .filter(|_| u16::try_from(field.len()).is_ok());
                let (start, len, field_at, field_len) = match shared {
                    Some((at, len)) => {
                        let field_at = text.len();
                        text.extend_from_slice(field);
                        (at, len, field_at, field.len())
                    }
                    None => {
                        let at = text.len();
                        text.extend_from_slice(&prefix);
                        last_series = Some((at, series_len));
                        (at, prefix.len(), 0, 0)
                    }
                };
                std::num::NonZeroU32::new(len as u32).map(|len| PointLine {
                    start: start as u32,
                    len,
                    field: field_at as u32,
                    field_len: field_len as u16,
                    data_type: u8::try_from(p.data_type).unwrap_or(0),
                    labels,
                })
            };
            points[p.id as usize] = line;
        }
        text.shrink_to_fit();
        LineEncoder {
            text,
            points,
            unsigned: false,
        }
    }

    /// Writes u64 points as unsigned integers (`5u`): for stores that have the type.
    pub fn with_unsigned(mut self, unsigned: bool) -> Self {
        self.unsigned = unsigned;
        self
    }

    /// Appends the prefix of a point (`measurement,tag=v,... field=`).
    #[inline]
    fn write_prefix(&self, p: &PointLine, out: &mut Vec<u8>) {
        let start = p.start as usize;
        out.extend_from_slice(
            self.text
                .get(start..start + p.len.get() as usize)
                .unwrap_or_default(),
        );
        if p.field_len > 0 {
            let field = p.field as usize;
            out.extend_from_slice(
                self.text
                    .get(field..field + p.field_len as usize)
                    .unwrap_or_default(),
            );
        }
    }

    /// Appends one line per sample of `batch` to `out`; returns how many lines were written and
    /// adds what was skipped (and why) to `skipped`.
    pub fn encode(&self, batch: &SampleBatch, out: &mut Vec<u8>, skipped: &mut Skipped) -> usize {
        let mut written = 0;
        let mut ibuf = itoa::Buffer::new();
        // A poll's samples share one time: its text is formatted once (` 1767225600000000000\n`).
        let mut time: Option<i64> = None;
        let mut time_text = [0u8; 24];
        let mut time_len = 0usize;
        for s in &batch.samples {
            let Some(Some(p)) = self.points.get(s.point as usize) else {
                skipped.unknown_point += 1;
                continue;
            };
            let Some(value) = &s.value else { continue };
            let mark = out.len();
            self.write_prefix(p, out);
            let data_type = DataType::try_from(i32::from(p.data_type)).unwrap_or(DataType::Unknown);
            let unsigned = self.unsigned && data_type == DataType::Uint64;
            if let Err(why) = write_field_value(value, data_type, unsigned, out) {
                out.truncate(mark);
                match why {
                    Unwritable::NotFinite => skipped.not_finite += 1,
                    Unwritable::OutOfRange => skipped.out_of_range += 1,
                }
                continue;
            }
            if let Some(l) = &p.labels {
                match value {
                    Value::IntValue(i) => l.write_label(*i, out),
                    Value::UintValue(u) => {
                        l.write_label(i64::try_from(*u).unwrap_or(i64::MAX), out)
                    }
                    _ => {}
                }
            }
            let t = batch.time_of(s);
            if time != Some(t) {
                let digits = ibuf.format(t).as_bytes();
                time_text[0] = b' ';
                time_text[1..1 + digits.len()].copy_from_slice(digits);
                time_text[1 + digits.len()] = b'\n';
                time_len = digits.len() + 2;
                time = Some(t);
            }
            out.extend_from_slice(&time_text[..time_len]);
            written += 1;
        }
        written
    }
}

/// Why a value has no line-protocol text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritable {
    /// NaN or ±Inf.
    NotFinite,
    /// A u64 above i64::MAX where the store has no unsigned integer type.
    OutOfRange,
}

/// Appends the field value of `value` for a point of `data_type` exactly as the line-protocol
/// sinks write it: `562.3`, `41i`, `7u` (`unsigned`: a u64 point on a store with an unsigned
/// type), `true`, `"text"`. `linetap probe` prints the same text (without the integer suffix),
/// so what it shows is what the store holds.
pub fn write_field_value(
    value: &Value,
    data_type: DataType,
    unsigned: bool,
    out: &mut Vec<u8>,
) -> Result<(), Unwritable> {
    let mut ibuf = itoa::Buffer::new();
    match value {
        Value::DoubleValue(x) => {
            if !x.is_finite() {
                return Err(Unwritable::NotFinite);
            }
            // An f32 reading widened to f64 prints as 12.869999885559082; the shortest
            // text that reads back as the same f32 is 12.87, which is what the device
            // holds, and a third shorter on the wire.
            // A value a half float holds (an f16 register) is written exactly
            // (-0.509765625, not -0.5097656): its exact text is short, and it reads
            // back as the same f32 too.
            let narrow = *x as f32;
            if data_type == DataType::Float && narrow as f64 == *x && !is_half(narrow) {
                write_float(narrow, narrow.abs() < 1e13, out);
            } else {
                write_float(*x, x.abs() < 1e13, out);
            }
        }
        Value::IntValue(i) => {
            if data_type == DataType::Double || data_type == DataType::Float {
                let x = *i as f64;
                write_float(x, x.abs() < 1e13, out);
            } else {
                out.extend_from_slice(ibuf.format(*i).as_bytes());
                out.push(b'i');
            }
        }
        Value::UintValue(u) if unsigned => {
            out.extend_from_slice(ibuf.format(*u).as_bytes());
            out.push(b'u');
        }
        Value::UintValue(u) => {
            // No unsigned type: a value above i64::MAX has no exact text here, and a
            // clamped one would be a value the device never had.
            let i = i64::try_from(*u).map_err(|_| Unwritable::OutOfRange)?;
            out.extend_from_slice(ibuf.format(i).as_bytes());
            out.push(b'i');
        }
        Value::BoolValue(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::StringValue(v) => write_string_value(v, out),
    }
    Ok(())
}

/// Appends the shortest text that reads back as the finite `x`: `12.87`, `1e-7`, `1e21`. `zmij`
/// finds the digits (a third faster than `ryu`, whose text the sinks wrote before and which
/// it matches digit for digit) but writes a positive exponent with its sign (`1e+21`); the
/// sign is dropped, so the text stays what it was. Below 1e13 no exponent is positive, and
/// `small` (the caller's `abs() < 1e13`) skips looking for it.
fn write_float<F: zmij::Float>(x: F, small: bool, out: &mut Vec<u8>) {
    let mut buf = zmij::Buffer::new();
    let text = buf.format_finite(x).as_bytes();
    let plus = if small {
        None
    } else {
        text.iter().position(|&b| b == b'+')
    };
    match plus {
        Some(plus) => {
            out.extend_from_slice(&text[..plus]);
            out.extend_from_slice(&text[plus + 1..]);
        }
        None => out.extend_from_slice(text),
    }
}

/// Whether an f32 is exactly a normal IEEE 754 half float (its 13 lowest mantissa bits are zero
/// and its exponent is within binary16's), or zero.
fn is_half(x: f32) -> bool {
    let b = x.to_bits();
    let exp = ((b >> 23) & 0xFF) as i32 - 127;
    b & 0x1FFF == 0 && (-14..=15).contains(&exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceDescriptor, EnumLabel, PointDescriptor, Sample, Tag};

    /// What `write_float` writes for `x`.
    fn float_text<F: zmij::Float>(x: F, small: bool) -> String {
        let mut out = Vec::new();
        write_float(x, small, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    proptest::proptest! {
        /// The float text is ryu's, as the sinks wrote it before (zmij finds the digits),
        /// for every f64 and f32, and reads back as the same number.
        #[test]
        fn float_text_is_ryus(bits64 in proptest::prelude::any::<u64>(), bits32 in proptest::prelude::any::<u32>()) {
            let (x, y) = (f64::from_bits(bits64), f32::from_bits(bits32));
            let mut ryu_buf = ryu::Buffer::new();
            if x.is_finite() {
                let text = float_text(x, x.abs() < 1e13);
                proptest::prop_assert_eq!(&text, ryu_buf.format_finite(x));
                proptest::prop_assert_eq!(text.parse::<f64>().ok(), Some(x));
            }
            if y.is_finite() {
                let text = float_text(y, y.abs() < 1e13);
                proptest::prop_assert_eq!(&text, ryu_buf.format_finite(y));
                proptest::prop_assert_eq!(text.parse::<f32>().ok(), Some(y));
            }
        }
    }

    #[test]
    fn float_text_at_the_edges_of_exponents() {
        for (x, text) in [
            (1e13, "10000000000000.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e16"),
            (1.7976931348623157e308, "1.7976931348623157e308"),
            (-1e21, "-1e21"),
            (1e-7, "1e-7"),
            (5e-324, "5e-324"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (12.87, "12.87"),
        ] {
            assert_eq!(float_text(x, f64::abs(x) < 1e13), text, "{x:e}");
        }
        assert_eq!(float_text(1.0001032e13f32, false), "1.0001032e13");
        for t in [9.999999e12f32, -9.999999e12] {
            let text = float_text(t, true);
            assert!(!text.contains(['+', 'e']), "{t}: {text}");
        }
    }

    /// Tens of thousands of these per encoder (issue 22).
    #[test]
    fn a_point_line_stays_small() {
        assert_eq!(std::mem::size_of::<Option<PointLine>>(), 24);
        assert!(
            DataType::try_from(u8::MAX as i32).is_err(),
            "data types fit a byte"
        );
    }

    fn catalog() -> Catalog {
        Catalog {
            line: "weld-a".into(),
            site: "plant-2".into(),
            tags: vec![Tag {
                key: "workshop".into(),
                value: "ws 3".into(),
            }],
            devices: vec![DeviceDescriptor {
                id: 0,
                name: "robot-01".into(),
                kind: "robot".into(),
                cell: "cell-3".into(),
                ..Default::default()
            }],
            points: vec![
                PointDescriptor {
                    id: 0,
                    device: 0,
                    measurement: "joint".into(),
                    name: "temperature".into(),
                    tags: vec![Tag {
                        key: "axis".into(),
                        value: "2".into(),
                    }],
                    data_type: DataType::Uint16 as i32,
                    ..Default::default()
                },
                PointDescriptor {
                    id: 1,
                    device: 0,
                    measurement: "robot,x".into(),
                    name: "state".into(),
                    data_type: DataType::Uint16 as i32,
                    enum_labels: vec![
                        EnumLabel {
                            code: 0,
                            label: "idle".into(),
                        },
                        EnumLabel {
                            code: 1,
                            label: "run \"ok\"".into(),
                        },
                    ],
                    ..Default::default()
                },
                PointDescriptor {
                    id: 2,
                    device: 0,
                    measurement: "robot".into(),
                    name: "speed=x".into(),
                    data_type: DataType::Double as i32,
                    ..Default::default()
                },
            ],
            parts: 0,
        }
    }

    fn sample(point: u32, value: Value) -> Sample {
        Sample {
            point,
            timestamp_ns: 1795785404087000000,
            quality: 0,
            value: Some(value),
        }
    }

    /// Listed points of one device share their series text (`measurement,tags `); a point
    /// between them with other tags, and the next device, start a text of their own; every
    /// line is still the whole line.
    #[test]
    fn points_of_one_series_share_its_text() {
        let mut c = catalog();
        c.devices.push(DeviceDescriptor {
            id: 1,
            name: "plc-02".into(),
            ..Default::default()
        });
        let point = |id: u32, device: u32, name: &str, tag: Option<&str>| PointDescriptor {
            id,
            device,
            measurement: "io".into(),
            name: name.into(),
            tags: tag
                .map(|v| {
                    vec![Tag {
                        key: "bank".into(),
                        value: v.into(),
                    }]
                })
                .unwrap_or_default(),
            data_type: DataType::Double as i32,
            ..Default::default()
        };
        c.points = vec![
            point(0, 0, "v0", None),
            point(1, 0, "v1", None),
            point(2, 0, "v2", Some("b")),
            point(3, 0, "v3", None),
            point(4, 0, "v4", None),
            point(5, 1, "v0", None),
            point(6, 1, "v1", None),
        ];
        let enc = LineEncoder::new(&c);
        let shared: Vec<u32> = enc
            .points
            .iter()
            .flatten()
            .map(|p| u32::from(p.field_len > 0))
            .collect();
        assert_eq!(shared, [0, 1, 0, 0, 1, 0, 1]);
        let batch = SampleBatch {
            device: 0,
            seq: 1,
            timestamp_ns: 5,
            samples: (0..7)
                .map(|i| Sample {
                    point: i,
                    value: Some(Value::DoubleValue(i as f64 + 0.5)),
                    ..Default::default()
                })
                .collect(),
        };
        let mut out = Vec::new();
        assert_eq!(enc.encode(&batch, &mut out, &mut Skipped::default()), 7);
        let tags = "line=weld-a,site=plant-2,workshop=ws\\ 3";
        let dev0 = format!("io,cell=cell-3,device=robot-01,kind=robot,{tags}");
        let dev1 = format!("io,device=plc-02,{tags}");
        let want = [
            format!("{dev0} v0=0.5 5"),
            format!("{dev0} v1=1.5 5"),
            format!("io,bank=b,cell=cell-3,device=robot-01,kind=robot,{tags} v2=2.5 5"),
            format!("{dev0} v3=3.5 5"),
            format!("{dev0} v4=4.5 5"),
            format!("{dev1} v0=5.5 5"),
            format!("{dev1} v1=6.5 5"),
        ];
        assert_eq!(String::from_utf8(out).unwrap(), want.join("\n") + "\n");
    }

    #[test]
    fn encodes_like_the_product_example() {
        let enc = LineEncoder::new(&catalog());
        let batch = SampleBatch {
            device: 0,
            seq: 1,
            timestamp_ns: 0,
            samples: vec![
                sample(0, Value::IntValue(41)),
                sample(1, Value::IntValue(1)),
                sample(1, Value::IntValue(9)),
                sample(2, Value::DoubleValue(1.5)),
                sample(2, Value::DoubleValue(f64::NAN)),
                sample(7, Value::DoubleValue(1.0)),
            ],
        };
        let mut out = Vec::new();
        let mut skipped = Skipped::default();
        assert_eq!(enc.encode(&batch, &mut out, &mut skipped), 4);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "joint,axis=2,cell=cell-3,device=robot-01,kind=robot,line=weld-a,site=plant-2,workshop=ws\\ 3 temperature=41i 1795785404087000000\n\
             robot\\,x,cell=cell-3,device=robot-01,kind=robot,line=weld-a,site=plant-2,workshop=ws\\ 3 state=1i,state_label=\"run \\\"ok\\\"\" 1795785404087000000\n\
             robot\\,x,cell=cell-3,device=robot-01,kind=robot,line=weld-a,site=plant-2,workshop=ws\\ 3 state=9i,state_label=\"unknown\" 1795785404087000000\n\
             robot,cell=cell-3,device=robot-01,kind=robot,line=weld-a,site=plant-2,workshop=ws\\ 3 speed\\=x=1.5 1795785404087000000\n"
        );
        assert_eq!(
            skipped,
            Skipped {
                not_finite: 1,
                out_of_range: 0,
                unknown_point: 1
            }
        );
    }

    /// u64 values: unsigned where the store has the type; else a value above i64::MAX is not
    /// written (no exact text for it) and counted as out of range.
    #[test]
    fn u64_values_over_the_whole_range() {
        let mut c = catalog();
        c.points.push(PointDescriptor {
            id: 3,
            device: 0,
            measurement: "drive".into(),
            name: "energy_wh".into(),
            data_type: DataType::Uint64 as i32,
            ..Default::default()
        });
        let batch = SampleBatch {
            device: 0,
            seq: 1,
            timestamp_ns: 0,
            samples: vec![
                sample(3, Value::UintValue(5)),
                sample(3, Value::UintValue(u64::MAX)),
            ],
        };
        let fields = |unsigned: bool| {
            let enc = LineEncoder::new(&c).with_unsigned(unsigned);
            let mut out = Vec::new();
            let mut skipped = Skipped::default();
            let written = enc.encode(&batch, &mut out, &mut skipped);
            let text = String::from_utf8(out).unwrap();
            let values: Vec<String> = text
                .lines()
                .map(|l| l.rsplit(' ').nth(1).unwrap_or("").to_string())
                .collect();
            assert_eq!(written, values.len());
            (values, skipped.out_of_range, skipped.total())
        };
        assert_eq!(
            fields(true),
            (
                vec![
                    "energy_wh=5u".into(),
                    "energy_wh=18446744073709551615u".into()
                ],
                0,
                0
            )
        );
        assert_eq!(fields(false), (vec!["energy_wh=5i".into()], 1, 1));
    }

    /// Half floats (f16 registers, Telegraf's FLOAT16 cases) are written as their exact value;
    /// other f32 readings as the shortest text that reads back as the same f32.
    #[test]
    fn half_floats_are_written_exactly() {
        let mut c = catalog();
        c.points.push(PointDescriptor {
            id: 3,
            device: 0,
            measurement: "drive".into(),
            name: "v".into(),
            data_type: DataType::Float as i32,
            ..Default::default()
        });
        let enc = LineEncoder::new(&c);
        let text = |x: f64| {
            let batch = SampleBatch {
                device: 0,
                seq: 1,
                timestamp_ns: 0,
                samples: vec![sample(3, Value::DoubleValue(x))],
            };
            let mut out = Vec::new();
            enc.encode(&batch, &mut out, &mut Skipped::default());
            let line = String::from_utf8(out).unwrap();
            line.rsplit(' ')
                .nth(1)
                .unwrap()
                .trim_start_matches("v=")
                .to_string()
        };
        let half = |bits: u16| half::f16::from_bits(bits).to_f64();
        assert_eq!(text(half(0xB814)), "-0.509765625");
        // Every normal half float (both signs) reads back as exactly itself.
        for bits in (0x0400u16..0x7C00).flat_map(|b| [b, b | 0x8000]) {
            let x = half(bits);
            assert_eq!(text(x).parse::<f64>().unwrap(), x, "{bits:#06x}");
        }
        assert_eq!(text(12.87f32 as f64), "12.87");
        assert_eq!(text(0.1f32 as f64), "0.1");
        assert_eq!(text(1.5), "1.5");
        assert_eq!(text(-0.0), "-0.0");
    }

    #[test]
    fn a_sample_without_its_own_time_takes_the_batch_time() {
        let enc = LineEncoder::new(&catalog());
        let mut batch = SampleBatch {
            device: 0,
            seq: 1,
            samples: Vec::new(),
            timestamp_ns: 0,
        };
        let t0 = batch.stamp(1_000);
        let t1 = batch.stamp(2_000);
        batch.samples.push(Sample {
            point: 2,
            timestamp_ns: t0,
            quality: 0,
            value: Some(Value::DoubleValue(1.0)),
        });
        batch.samples.push(Sample {
            point: 2,
            timestamp_ns: t1,
            quality: 0,
            value: Some(Value::DoubleValue(2.0)),
        });
        assert_eq!((t0, t1), (0, 2_000));
        let mut out = Vec::new();
        enc.encode(&batch, &mut out, &mut Skipped::default());
        let text = String::from_utf8(out).unwrap();
        let times: Vec<&str> = text
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(times, ["1000", "2000"]);
    }

    #[test]
    fn escapes_strings_and_keys() {
        let mut out = Vec::new();
        write_string_value("a\"b\\c\nd", &mut out);
        assert_eq!(out, b"\"a\\\"b\\\\c d\"");
        let mut out = Vec::new();
        escape_key("a b,c=d", &mut out);
        assert_eq!(out, b"a\\ b\\,c\\=d");
    }
}
