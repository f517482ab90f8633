//! `linetap probe`: reads every point of one device once — a config's device or a profile at
//! an address — and renders a table a person reads at the cabinet: point, raw registers, value,
//! unit, label. The same planner, links, decoder and derived-point transform as the agent, and
//! the sinks' own value formatting (`sink::lineproto::write_field_value`), so what probe shows
//! is what the agent will write. `read_raw` (`--read TABLE START COUNT`) reads registers with no
//! point at all and shows each in the common decodings.

use crate::config::{DeviceConfig, PointConfig, Table, WordOrder};
use crate::model::catalog::Registry;
use crate::model::{DataType, SampleBatch, Value};
use crate::sink::lineproto::{write_field_value, Unwritable};
use crate::source::modbus::decode::combine;
use crate::source::modbus::link::{ReadError, ReadSpec, Words};
use crate::source::modbus::{link_for, poller::decode_into, register};
use crate::transform::{DeviceView, Transform};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

/// What one probe of a device found.
#[derive(Debug, Default)]
pub struct Probed {
    /// The table to print.
    pub table: String,
    pub requests: usize,
    pub answered: usize,
    /// Rows of the table (an array point has one per element).
    pub points: usize,
    /// The points (rows) without a value, each with why.
    pub failed: Vec<(String, String)>,
}

/// Why a row has no value when the device does not have that value at all (an optional
/// OPC 40010 variable): shown in the table, not counted as a failure.
pub const ABSENT: &str = "not on this server (optional)";

/// The Modbus settings of `d`, or why it cannot be probed.
fn modbus(d: &DeviceConfig) -> Result<&crate::config::ModbusDevice, String> {
    d.settings().ok_or_else(|| {
        format!(
            "device {:?} is read over {}: probe reads Modbus, RTDE and OPC UA devices",
            d.id, d.protocol
        )
    })
}

/// Reads `d` once. `Ok` when the device answered at least one request (`Probed::failed` lists
/// the points it did not give); `Err` with the Modbus error when it answered none.
/// `data_dir`: the agent's data directory when the device is a configuration's (an OPC UA
/// device then uses the agent's client certificate and pinned server certificate).
pub async fn probe(d: &DeviceConfig, data_dir: Option<&std::path::Path>) -> Result<Probed, String> {
    if let Some(r) = d.settings::<crate::source::rtde::config::RtdeDevice>() {
        return crate::source::rtde::probe::probe(d, r).await;
    }
    if let Some(o) = d.settings::<crate::source::opcua::config::OpcuaDevice>() {
        return crate::source::opcua::probe::probe(d, o, data_dir).await;
    }
    let m = modbus(d)?;
    let mut registry = Registry::new("probe", "", Vec::new(), None);
    let plan = register(d, m, &mut registry);
    let version = registry.version();
    let view = DeviceView::of(&version, plan.device);
    let mut link = link_for(m, m.timeout);
    let started = Instant::now();
    let mut batch = SampleBatch {
        device: plan.device,
        ..Default::default()
    };
    // Raw registers (hex) or bits of each point id; problems per point id.
    let mut raw: HashMap<u32, String> = HashMap::new();
    let mut failed: HashMap<u32, String> = HashMap::new();
    let mut answered = 0;
    let mut requests = 0;
    let mut first_error = None;
    for group in &plan.groups {
        for req in &group.requests {
            requests += 1;
            let spec = ReadSpec {
                unit: m.unit,
                table: req.table,
                start: req.start,
                count: req.count,
                timeout: m.timeout,
                turnaround: m.turnaround,
            };
            match link.read(&spec).await {
                Ok(words) => {
                    answered += 1;
                    for f in &req.fields {
                        let text = match &words {
                            Words::Registers(r) => r
                                .get(f.offset as usize..(f.offset + f.width) as usize)
                                .map(|w| {
                                    w.iter()
                                        .map(|x| format!("{x:04X}"))
                                        .collect::<Vec<_>>()
                                        .join(" ")
                                })
                                .unwrap_or_default(),
                            Words::Bits(b) => b
                                .get(f.offset as usize)
                                .map(|x| u8::from(*x).to_string())
                                .unwrap_or_default(),
                        };
                        raw.insert(f.point, text);
                    }
                    let ts = crate::model::now_ns();
                    batch.stamp(ts);
                    if let Err(e) = decode_into(req, &words, 0, &mut batch.samples) {
                        for f in &req.fields {
                            failed.insert(f.point, e.clone());
                        }
                    }
                }
                Err(e) => {
                    let reason = format!(
                        "{} unit {} {} {}+{}: {e}",
                        link.address(),
                        m.unit,
                        req.table.as_str(),
                        req.start,
                        req.count
                    );
                    for f in &req.fields {
                        failed.insert(f.point, e.to_string());
                    }
                    first_error.get_or_insert(reason);
                }
            }
        }
    }
    let elapsed = started.elapsed();
    if answered == 0 {
        return Err(first_error.unwrap_or_else(|| "no points to read".into()));
    }
    let header = format!(
        "device {:?} at {} unit {}{}: {} of {} request{} answered in {} ms",
        d.id,
        link.address(),
        m.unit,
        d.profile
            .as_ref()
            .map(|p| format!(" (profile {p})"))
            .unwrap_or_default(),
        answered,
        requests,
        if requests == 1 { "" } else { "s" },
        elapsed.as_millis()
    );
    let mut probed = table(d, &view, batch, &raw, &failed, header);
    probed.requests = requests;
    probed.answered = answered;
    Ok(probed)
}

/// The table of one read of `d`: each point's row (an array's per element) with its raw
/// text (`raw` by point id), value as the sinks write it, unit and label; derived points
/// computed from `batch` as the agent computes them; `failed` says why a point has no value.
pub fn table(
    d: &DeviceConfig,
    view: &DeviceView,
    mut batch: SampleBatch,
    raw: &HashMap<u32, String>,
    failed: &HashMap<u32, String>,
    header: String,
) -> Probed {
    // Derived points, computed as the agent computes them (hidden ones are shown here too).
    let mut values: HashMap<u32, Value> = batch
        .samples
        .iter()
        .filter_map(|s| Some((s.point, s.value.clone()?)))
        .collect();
    if let Some(mut derived) = crate::transform::derive::Derived::for_device(Arc::new(d.clone())) {
        derived.catalog(view);
        derived.apply(&mut batch);
        for s in &batch.samples {
            if let Some(v) = &s.value {
                values.entry(s.point).or_insert_with(|| v.clone());
            }
        }
    }

    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut missing: Vec<(String, String)> = Vec::new();
    let types: HashMap<u32, DataType> = view
        .points
        .iter()
        .map(|p| {
            (
                p.id,
                DataType::try_from(p.data_type).unwrap_or(DataType::Unknown),
            )
        })
        .collect();
    let by_key: HashMap<String, u32> = view
        .points
        .iter()
        .map(|p| (crate::model::catalog::point_key(p), p.id))
        .collect();
    for p in &d.points {
        for (e, desc) in crate::source::describe::elements(p).iter().enumerate() {
            let Some(&id) = by_key.get(&crate::model::catalog::point_key(desc)) else {
                continue;
            };
            let mut name = format!("{}.{}", p.measurement, p.name);
            if p.count > 1 {
                name.push_str(&format!(
                    "[{}={}",
                    p.index_tag.as_deref().unwrap_or("index"),
                    e + 1
                ));
                if let Some((key, values)) = p.element_tag.as_deref() {
                    if let Some(v) = values.get(e) {
                        name.push_str(&format!(",{key}={v}"));
                    }
                }
                name.push(']');
            }
            if p.hidden {
                name.push_str(" (hidden)");
            }
            let raw_text = if p.is_read() {
                raw.get(&id).cloned().unwrap_or_default()
            } else {
                "derived".to_string()
            };
            let data_type = types.get(&id).copied().unwrap_or(DataType::Unknown);
            let (value, label) = match (values.get(&id), failed.get(&id)) {
                (Some(v), _) => (value_text(v, data_type), label(p, v)),
                (None, Some(err)) if err == ABSENT => ("-".to_string(), err.clone()),
                (None, Some(err)) => {
                    missing.push((name.clone(), err.clone()));
                    (format!("error: {err}"), String::new())
                }
                (None, None) => {
                    missing.push((name.clone(), "no value".to_string()));
                    ("-".to_string(), String::new())
                }
            };
            rows.push([name, raw_text, value, p.unit.clone(), label]);
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let header = ["point", "raw", "value", "unit", "label"].map(String::from);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (k, (w, c)) in widths.iter().zip(r).enumerate() {
            if k == 4 {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    Probed {
        table: out,
        requests: 0,
        answered: 0,
        points: rows.len(),
        failed: missing,
    }
}

/// A value as the sinks write it for a point of `data_type` (`562.3` for an f32 register that
/// holds 562.3, not 562.299987793), without line protocol's integer suffix.
pub fn value_text(v: &Value, data_type: DataType) -> String {
    let mut buf = Vec::new();
    match write_field_value(v, data_type, true, &mut buf) {
        Ok(()) => {
            if matches!(v, Value::IntValue(_) | Value::UintValue(_))
                && matches!(buf.last(), Some(b'i' | b'u'))
            {
                buf.pop();
            }
            String::from_utf8_lossy(&buf).into_owned()
        }
        Err(Unwritable::NotFinite) => match v {
            Value::DoubleValue(x) => format!("{x} (not written: not finite)"),
            _ => "not finite (not written)".to_string(),
        },
        Err(Unwritable::OutOfRange) => "out of range (not written)".to_string(),
    }
}

fn label(p: &PointConfig, v: &Value) -> String {
    let code = match v {
        Value::IntValue(i) => *i,
        Value::UintValue(u) => *u as i64,
        _ => return String::new(),
    };
    p.enum_labels
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, l)| l.clone())
        .unwrap_or_default()
}

/// `--read TABLE START COUNT`: a table by the name an engineer types (the config's names, and
/// the plural `coils`).
pub fn parse_table(name: &str) -> Result<Table, String> {
    match name.to_ascii_lowercase().as_str() {
        "holding" => Ok(Table::Holding),
        "input" => Ok(Table::Input),
        "coil" | "coils" => Ok(Table::Coil),
        "discrete" => Ok(Table::Discrete),
        _ => Err(format!(
            "--read {name:?}: the table is one of holding, input, coils, discrete"
        )),
    }
}

/// Checks `--read`'s START and COUNT against what one Modbus request can carry.
pub fn read_range(table: Table, start: &str, count: &str) -> Result<(u16, u16), String> {
    let number = |what: &str, v: &str| -> Result<u32, String> {
        let parsed = match v.strip_prefix("0x").or(v.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => v.parse::<u32>(),
        };
        parsed.map_err(|_| format!("--read: {what} {v:?} is not a number (decimal, or 0x hex)"))
    };
    let start = number("START", start)?;
    let count = number("COUNT", count)?;
    let most = if table.is_bits() { 2000 } else { 125 };
    if count == 0 || count > most {
        return Err(format!(
            "--read: COUNT is 1 to {most} for the {} table (one Modbus request)",
            table.as_str()
        ));
    }
    if start > 65535 {
        return Err(format!(
            "--read: START {start} is out of range: a 0-based address is 0..=65535{}",
            crate::check_addresses::reference_hint(start)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default()
        ));
    }
    if start + count > 65536 {
        return Err(format!(
            "--read: {start} + {count} runs past the end of the address space (65536)"
        ));
    }
    Ok((start as u16, count as u16))
}

/// Reads `count` registers (or bits) of `table` from `start` on `d`'s link, once, and prints
/// each register as u16, i16, hex and ASCII, and each pair of registers (N, N+1) as f32, u32
/// and i32 in the four word orders. `Err` with the Modbus error when the device did not answer.
pub async fn read_raw(
    d: &DeviceConfig,
    table: Table,
    start: u16,
    count: u16,
) -> Result<String, String> {
    let m = modbus(d)?;
    let mut link = link_for(m, m.timeout);
    let spec = ReadSpec {
        unit: m.unit,
        table,
        start,
        count,
        timeout: m.timeout,
        turnaround: m.turnaround,
    };
    let started = Instant::now();
    let words = link.read(&spec).await.map_err(|e| {
        let hint = match &e {
            ReadError::Exception(c) if u8::from(*c) == 2 => {
                " (the device has no such registers: fewer, another START or another table)"
            }
            ReadError::Exception(c) if u8::from(*c) == 0x0B => {
                " (a gateway found no device at this --unit)"
            }
            ReadError::Timeout => " (wrong --unit, or on RS-485 wrong --baud or --parity?)",
            _ => "",
        };
        format!(
            "{} unit {} {} {start}+{count}: {e}{hint}",
            link.address(),
            m.unit,
            table.as_str()
        )
    })?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {start}+{count} at {} unit {}: answered in {} ms",
        table.as_str(),
        link.address(),
        m.unit,
        started.elapsed().as_millis()
    );
    match words {
        Words::Bits(bits) => {
            let mut rows = vec![vec!["address".to_string(), "value".to_string()]];
            for (k, b) in bits.iter().enumerate() {
                rows.push(vec![
                    (start as usize + k).to_string(),
                    u8::from(*b).to_string(),
                ]);
            }
            out.push_str(&columns(&rows));
        }
        Words::Registers(regs) => out.push_str(&registers_text(start, &regs)),
    }
    Ok(out)
}

/// The decodings of registers read from `start` (pure; `read_raw`'s output after its first
/// line).
pub fn registers_text(start: u16, regs: &[u16]) -> String {
    let mut out = String::new();
    let mut rows = vec![["address", "u16", "i16", "hex", "ascii"]
        .map(String::from)
        .to_vec()];
    for (k, &r) in regs.iter().enumerate() {
        let ascii: String = r
            .to_be_bytes()
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        rows.push(vec![
            (start as usize + k).to_string(),
            r.to_string(),
            (r as i16).to_string(),
            format!("{r:04X}"),
            format!("\"{ascii}\""),
        ]);
    }
    out.push_str(&columns(&rows));
    if regs.len() < 2 {
        return out;
    }
    const ORDERS: [WordOrder; 4] = [
        WordOrder::ABCD,
        WordOrder::CDAB,
        WordOrder::BADC,
        WordOrder::DCBA,
    ];
    type Show = fn(u32) -> String;
    let kinds: [(&str, Show); 3] = [
        ("f32", |bits| {
            let x = f32::from_bits(bits);
            if x.is_finite() {
                value_text(&Value::DoubleValue(x as f64), DataType::Float)
            } else {
                x.to_string()
            }
        }),
        ("u32", |bits| bits.to_string()),
        ("i32", |bits| (bits as i32).to_string()),
    ];
    for (k, (kind, show)) in kinds.into_iter().enumerate() {
        let _ = writeln!(
            out,
            "\n{kind} of registers N and N+1{}",
            if k == 0 {
                " (ABCD: N is the high word; CDAB: N+1 is; BADC, DCBA: the same with the two bytes of each register swapped)"
            } else {
                ""
            }
        );
        let mut rows = vec![std::iter::once("N".to_string())
            .chain(ORDERS.iter().map(|o| format!("{o:?}")))
            .collect::<Vec<_>>()];
        for (k, pair) in regs.windows(2).enumerate() {
            let mut row = vec![(start as usize + k).to_string()];
            for o in ORDERS {
                row.push(show(combine(pair, o) as u32));
            }
            rows.push(row);
        }
        out.push_str(&columns(&rows));
    }
    out
}

/// Left-aligned columns two spaces apart, the first row a header.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; n];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (w, c) in widths.iter().zip(r) {
            let _ = write!(line, "{c:<w$}  ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_the_sinks_write_them() {
        // (value, point type, what probe prints, the line-protocol field value)
        let cases: &[(Value, DataType, &str, &str)] = &[
            (
                Value::DoubleValue(562.3f32 as f64),
                DataType::Float,
                "562.3",
                "562.3",
            ),
            (
                Value::DoubleValue(-1.2345f32 as f64),
                DataType::Float,
                "-1.2345",
                "-1.2345",
            ),
            (
                Value::DoubleValue(562.3),
                DataType::Double,
                "562.3",
                "562.3",
            ),
            (
                Value::DoubleValue(0.1 + 0.2),
                DataType::Double,
                "0.30000000000000004",
                "0.30000000000000004",
            ),
            // A scaled u16 (4825 × 0.01) is a double.
            (
                Value::DoubleValue(4825.0 * 0.01),
                DataType::Double,
                "48.25",
                "48.25",
            ),
            (Value::DoubleValue(12.0), DataType::Double, "12.0", "12.0"),
            (Value::IntValue(-900), DataType::Int16, "-900", "-900i"),
            (
                Value::UintValue(u64::MAX),
                DataType::Uint64,
                "18446744073709551615",
                "18446744073709551615u",
            ),
            (Value::BoolValue(true), DataType::Boolean, "true", "true"),
            (
                Value::StringValue("AB\"C".into()),
                DataType::String,
                "\"AB\\\"C\"",
                "\"AB\\\"C\"",
            ),
        ];
        for (v, t, shown, written) in cases {
            assert_eq!(value_text(v, *t), *shown, "{v:?} {t:?}");
            let mut lp = Vec::new();
            write_field_value(v, *t, true, &mut lp).unwrap();
            assert_eq!(String::from_utf8_lossy(&lp), *written, "{v:?} {t:?}");
        }
    }

    #[test]
    fn registers_in_every_decoding() {
        // 562.3 as f32 is 0x440C9333: ABCD in registers 0, 1; CDAB in registers 2, 3.
        let text = registers_text(10, &[0x440C, 0x9333, 0x9333, 0x440C, 0x4142]);
        let line = |prefix: &str, skip: usize| {
            text.lines()
                .filter(|l| l.split_whitespace().next() == Some(prefix))
                .nth(skip)
                .unwrap_or_else(|| panic!("no row {prefix} in\n{text}"))
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(line("14", 0), ["14", "16706", "16706", "4142", "\"AB\""]);
        // f32 table: first data row after the register table's row of 10.
        assert_eq!(line("10", 1)[1], "562.3");
        assert_eq!(line("12", 1)[2], "562.3");
        // u32 and i32 of registers 10 and 11, ABCD.
        assert_eq!(line("10", 2)[1], 0x440C9333u32.to_string());
        assert_eq!(line("10", 3)[1], (0x440C9333u32 as i32).to_string());
        // DCBA of 0x440C, 0x9333 is 0x33930C44.
        assert_eq!(line("10", 2)[4], 0x33930C44u32.to_string());
    }
}
