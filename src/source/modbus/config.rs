//! Validation of Modbus devices (`protocol = "modbus-tcp" | "modbus-rtu" |
//! "modbus-rtu-over-tcp"`), their serial lines and their points, with locations; and the
//! checks across devices: unique ids, one setting per serial port, unique units per bus.

use crate::config::schema::*;
use crate::config::validate::{int_in, Ctx, RESERVED_TAGS};
use crate::config::*;
use serde_spanned::Spanned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

/// Most registers one read request can carry (Modbus spec: 125 for FC03/FC04).
pub const MAX_REGISTERS: i64 = 125;
/// How often a unit that stopped answering on a shared bus is probed (`probe_interval`).
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Every `[[devices]]` entry, validated.
pub(crate) fn devices(cx: &mut Ctx, raw: &[Spanned<DeviceSection>]) -> Vec<DeviceConfig> {
    let mut devices = Vec::new();
    let mut ids: HashMap<String, Range<usize>> = HashMap::new();
    // Per serial port: its settings and the device that set them; per RTU bus: units in use.
    let mut ports: HashMap<String, (SerialConfig, String)> = HashMap::new();
    let mut units: HashMap<(String, u8), String> = HashMap::new();
    for d in raw {
        if let Some(dev) = device(cx, d) {
            if let Some(id) = &d.get_ref().id {
                if ids.contains_key(id.get_ref()) {
                    cx.err(id.span(), format!("duplicate device id {:?}", id.get_ref()));
                }
                ids.insert(id.get_ref().clone(), id.span());
            }
            let at = d.span();
            if let (Some(sc), Some(raw_serial)) = (&dev.serial, &d.get_ref().serial) {
                match ports.get(&sc.port) {
                    Some((first, owner)) if first != sc => cx.err(
                        raw_serial.span(),
                        format!(
                            "serial port {:?} is configured differently by device {owner:?}: one port has one baud rate, parity, data and stop bits",
                            sc.port
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        ports.insert(sc.port.clone(), (sc.clone(), dev.id.clone()));
                    }
                }
            }
            if dev.protocol != Protocol::ModbusTcp {
                let unit_at = d.get_ref().unit.as_ref().map(|u| u.span()).unwrap_or(at);
                if let Some(other) = units.insert((dev.bus(), dev.unit), dev.id.clone()) {
                    cx.err(
                        unit_at,
                        format!(
                            "unit {} is already used by device {other:?} on {}: units on one bus must differ",
                            dev.unit,
                            dev.bus()
                        ),
                    );
                }
            }
            devices.push(dev);
        }
    }
    devices
}

fn device(cx: &mut Ctx, d: &Spanned<DeviceSection>) -> Option<DeviceConfig> {
    let span = d.span();
    let d = d.get_ref();
    let id = cx.non_empty(&d.id, span.clone(), "id", "[[devices]]");
    let kind = d
        .kind
        .as_ref()
        .map(|k| *k.get_ref())
        .unwrap_or(DeviceKind::Other);
    if let Some(p) = &d.profile {
        cx.err(
            p.span(),
            format!("profile {:?}: device profiles are not available in this version yet; list the points instead", p.get_ref()),
        );
    }
    let protocol = d
        .protocol
        .as_ref()
        .map(|p| *p.get_ref())
        .unwrap_or(Protocol::ModbusTcp);
    let serial = match (&d.serial, protocol) {
        (Some(s), Protocol::ModbusRtu) => Some(serial(cx, s)),
        (Some(s), _) => {
            cx.err(
                s.span(),
                format!(
                    "`serial` belongs to protocol = \"modbus-rtu\"; {} uses `address`",
                    protocol.as_str()
                ),
            );
            None
        }
        (None, Protocol::ModbusRtu) => {
            cx.err(
                span.clone(),
                format!("device {id:?} uses modbus-rtu and needs `serial = {{ port = \"/dev/ttyUSB0\", baud = 19200 }}`"),
            );
            None
        }
        (None, _) => None,
    };
    let address = match &d.address {
        Some(a) if protocol == Protocol::ModbusRtu => {
            cx.err(
                a.span(),
                "modbus-rtu devices are reached through `serial`, not `address` (use protocol = \"modbus-rtu-over-tcp\" for a serial device server)",
            );
            String::new()
        }
        Some(a) => {
            let ok = a
                .get_ref()
                .rsplit_once(':')
                .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .unwrap_or(false);
            if !ok {
                cx.err(
                    a.span(),
                    format!(
                        "address {:?} must be HOST:PORT, for example \"10.0.3.11:502\"",
                        a.get_ref()
                    ),
                );
            }
            a.get_ref().clone()
        }
        None => {
            if protocol != Protocol::ModbusRtu {
                cx.err(
                    span.clone(),
                    format!("device {id:?} needs `address` (HOST:PORT)"),
                );
            }
            String::new()
        }
    };
    // A serial line addresses units 1..=247 (0 is broadcast, which never answers).
    let unit = if protocol == Protocol::ModbusTcp {
        int_in(cx, &d.unit, 0..=255, 1, "unit")
    } else {
        int_in(cx, &d.unit, 1..=247, 1, "unit on a serial line")
    } as u8;
    let turnaround = d.turnaround.map(|t| t.0).unwrap_or(Duration::ZERO);
    let default_retries = if protocol == Protocol::ModbusTcp {
        0
    } else {
        1
    };
    let retries = int_in(cx, &d.retries, 0..=5, default_retries, "retries") as u8;
    let probe_interval = d
        .probe_interval
        .map(|t| t.0)
        .unwrap_or(DEFAULT_PROBE_INTERVAL);
    let poll = d.poll.map(|p| p.0).unwrap_or(Duration::from_secs(1));
    let timeout = d.timeout.map(|p| p.0).unwrap_or(Duration::from_millis(500));
    let max_registers = int_in(
        cx,
        &d.max_registers,
        1..=MAX_REGISTERS,
        MAX_REGISTERS,
        "max_registers",
    ) as u16;
    let max_gap = int_in(cx, &d.max_gap, 0..=MAX_REGISTERS, 16, "max_gap") as u16;
    let tags = cx.tags(&d.tags, "device");

    let mut points = Vec::new();
    // (measurement, field, tags): two points may not write the same field of the same series.
    type SeriesField = (String, String, Vec<(String, String)>);
    let mut names: HashSet<SeriesField> = HashSet::new();
    // Register ranges taken by non-bit points, per table, to find overlaps.
    let mut taken: BTreeMap<Table, Vec<(u32, u32, String)>> = BTreeMap::new();
    for p in &d.points {
        let pspan = p.span();
        let Some(pc) = point(cx, p, kind, poll) else {
            continue;
        };
        let key = (pc.measurement.clone(), pc.name.clone(), pc.tags.clone());
        if !names.insert(key) {
            let at = p
                .get_ref()
                .name
                .as_ref()
                .map(|n| n.span())
                .unwrap_or(pspan.clone());
            cx.err(
                at,
                format!(
                    "duplicate point {:?} in measurement {:?} of device {id:?}",
                    pc.name, pc.measurement
                ),
            );
        }
        // Bit points and byte points (u8, i8) share their register with others.
        let shares = pc.bit.is_some() || matches!(pc.kind, PointType::U8 | PointType::I8);
        if !shares {
            let start = pc.address as u32;
            let end = start + pc.span();
            let ranges = taken.entry(pc.table).or_default();
            if let Some((_, _, other)) = ranges.iter().find(|(s, e, _)| start < *e && *s < end) {
                let at = p
                    .get_ref()
                    .address
                    .as_ref()
                    .map(|a| a.span())
                    .unwrap_or(pspan.clone());
                cx.err(
                    at,
                    format!(
                        "point {:?} ({} {}..{}) overlaps point {other:?}: a register belongs to at most one non-bit point",
                        pc.name,
                        pc.table.as_str(),
                        start,
                        end - 1
                    ),
                );
            }
            ranges.push((start, end, pc.name.clone()));
        }
        points.push(pc);
    }
    if d.points.is_empty() {
        cx.err(span, format!("device {id:?} has no points"));
    }
    Some(DeviceConfig {
        id,
        kind,
        cell: d.cell.as_ref().map(|c| c.get_ref().clone()),
        protocol,
        address,
        serial,
        unit,
        poll,
        timeout,
        max_registers,
        max_gap,
        turnaround,
        retries,
        probe_interval,
        tags,
        points,
    })
}

fn serial(cx: &mut Ctx, s: &Spanned<SerialSection>) -> SerialConfig {
    let s = s.get_ref();
    if s.port.get_ref().trim().is_empty() {
        cx.err(
            s.port.span(),
            "serial port must not be empty, e.g. \"/dev/ttyUSB0\"",
        );
    }
    let baud = int_in(cx, &s.baud, 300..=4_000_000, 19200, "baud") as u32;
    let parity = match &s.parity {
        None => Parity::Even,
        Some(p) => match p.get_ref().to_ascii_lowercase().as_str() {
            "none" | "n" => Parity::None,
            "even" | "e" => Parity::Even,
            "odd" | "o" => Parity::Odd,
            other => {
                cx.err(
                    p.span(),
                    format!("parity {other:?}: use \"none\", \"even\" or \"odd\""),
                );
                Parity::Even
            }
        },
    };
    let data_bits = int_in(cx, &s.data_bits, 7..=8, 8, "data_bits") as u8;
    let stop_bits = int_in(cx, &s.stop_bits, 1..=2, 1, "stop_bits") as u8;
    SerialConfig {
        port: s.port.get_ref().clone(),
        baud,
        parity,
        data_bits,
        stop_bits,
    }
}

fn point(
    cx: &mut Ctx,
    p: &Spanned<PointSection>,
    dev_kind: DeviceKind,
    dev_poll: Duration,
) -> Option<PointConfig> {
    let span = p.span();
    let p = p.get_ref();
    let errors_before = cx.errors.len();
    let name = cx.non_empty(&p.name, span.clone(), "name", "[[devices.points]]");
    let table = p
        .table
        .as_ref()
        .map(|t| *t.get_ref())
        .unwrap_or(Table::Holding);
    let Some(address) = &p.address else {
        cx.err(span, format!("point {name:?} needs `address`"));
        return None;
    };
    let kind = match (&p.kind, table.is_bits()) {
        (Some(k), _) => *k.get_ref(),
        (None, true) => PointType::Bool,
        (None, false) => PointType::U16,
    };
    let kind_span = p.kind.as_ref().map(|k| k.span()).unwrap_or(address.span());
    if table.is_bits() && kind != PointType::Bool {
        cx.err(
            kind_span.clone(),
            format!(
                "table {:?} holds bits: its points must be type \"bool\", not {:?}",
                table.as_str(),
                kind.as_str()
            ),
        );
    }
    let bit = match &p.bit {
        Some(b) => {
            if table.is_bits() {
                cx.err(
                    b.span(),
                    format!(
                        "`bit` selects a bit of a register; table {:?} already holds single bits",
                        table.as_str()
                    ),
                );
            } else if kind != PointType::Bool {
                cx.err(
                    b.span(),
                    format!("`bit` needs type = \"bool\", not {:?}", kind.as_str()),
                );
            } else if !(0..=15).contains(b.get_ref()) {
                cx.err(
                    b.span(),
                    format!(
                        "bit {} is out of range: a register has bits 0..=15",
                        b.get_ref()
                    ),
                );
            }
            Some((*b.get_ref()).clamp(0, 15) as u8)
        }
        None => None,
    };
    if kind == PointType::Bool && !table.is_bits() && bit.is_none() {
        cx.err(
            kind_span.clone(),
            format!(
                "a bool point in table {:?} needs `bit` (0..=15)",
                table.as_str()
            ),
        );
    }
    let width = match (&p.length, kind) {
        (Some(l), PointType::String) => {
            if !(1..=MAX_REGISTERS).contains(l.get_ref()) {
                cx.err(
                    l.span(),
                    format!(
                        "string length must be 1..={MAX_REGISTERS} registers, not {}",
                        l.get_ref()
                    ),
                );
                1
            } else {
                *l.get_ref() as u16
            }
        }
        (None, PointType::String) => {
            cx.err(
                kind_span.clone(),
                "a string point needs `length` (in registers, two characters each)",
            );
            1
        }
        (Some(l), _) => {
            cx.err(
                l.span(),
                format!("`length` applies to strings only, not {:?}", kind.as_str()),
            );
            kind.registers()
        }
        (None, _) => kind.registers(),
    };
    let count = int_in(cx, &p.count, 1..=2000, 1, "count") as u16;
    let index_tag = match (&p.index_tag, &p.count) {
        (Some(t), _) if RESERVED_TAGS.contains(&t.get_ref().as_str()) || t.get_ref().is_empty() => {
            cx.err(
                t.span(),
                format!(
                    "index_tag {:?} cannot be used: pick a tag name such as \"axis\"",
                    t.get_ref()
                ),
            );
            None
        }
        (Some(t), Some(_)) => Some(t.get_ref().clone()),
        (Some(t), None) => {
            cx.err(
                t.span(),
                "`index_tag` needs `count` (the number of array elements)",
            );
            None
        }
        (None, Some(_)) if count > 1 => Some("index".to_string()),
        (None, _) => None,
    };
    let start = address.get_ref().0;
    let span_regs = width as u32 * count as u32;
    if start + span_regs > 65536 {
        cx.err(address.span(), format!("point {name:?} runs past the end of the address space ({start} + {span_regs} > 65536)"));
    }
    if !table.is_bits() && width > MAX_REGISTERS as u16 {
        cx.err(
            kind_span.clone(),
            "one value cannot be wider than one read request (125 registers)",
        );
    }
    let byte = match &p.byte {
        Some(b) if matches!(kind, PointType::U8 | PointType::I8 | PointType::String) => {
            Some(*b.get_ref())
        }
        Some(b) => {
            cx.err(
                b.span(),
                format!(
                    "`byte` applies to u8, i8 and strings (one character per register), not {:?}",
                    kind.as_str()
                ),
            );
            None
        }
        // A u8 / i8 without `byte` takes the low byte.
        None if matches!(kind, PointType::U8 | PointType::I8) => Some(ByteHalf::Low),
        None => None,
    };
    let order = p.order.as_ref().map(|o| *o.get_ref()).unwrap_or_default();
    if let Some(o) = &p.order {
        let why = match kind {
            PointType::Bool => Some("`order` applies to numeric types and strings, not \"bool\""),
            PointType::U8 | PointType::I8 => {
                Some("a u8 / i8 takes one byte: choose it with `byte`, not `order`")
            }
            PointType::String if p.byte.is_some() => {
                Some("a string with `byte` has one character per register: `order` does not apply")
            }
            PointType::String if matches!(o.get_ref(), WordOrder::CDAB | WordOrder::DCBA) => {
                Some("a string takes order \"ABCD\" (high byte first) or \"BADC\" (low byte first)")
            }
            _ => None,
        };
        if let Some(why) = why {
            cx.err(o.span(), why);
        }
    }
    let scale = p.scale.as_ref().map(|s| *s.get_ref()).unwrap_or(1.0);
    let offset = p.offset.as_ref().map(|s| *s.get_ref()).unwrap_or(0.0);
    for (v, what) in [(&p.scale, "scale"), (&p.offset, "offset")] {
        if let Some(v) = v {
            if !v.get_ref().is_finite() {
                cx.err(v.span(), format!("{what} must be a finite number"));
            } else if matches!(kind, PointType::Bool | PointType::String) {
                cx.err(
                    v.span(),
                    format!("`{what}` applies to numeric types, not {:?}", kind.as_str()),
                );
            }
        }
    }
    if let Some(s) = &p.scale {
        if *s.get_ref() == 0.0 {
            cx.err(s.span(), "scale 0 would turn every reading into the offset");
        }
    }
    let mut enum_labels = Vec::new();
    if let Some(e) = &p.enum_map {
        if !kind.is_integer() {
            cx.err(
                e.span(),
                format!("`enum` needs an integer type, not {:?}", kind.as_str()),
            );
        } else if p.scale.is_some() || p.offset.is_some() {
            cx.err(e.span(), "`enum` cannot be combined with scale or offset");
        }
        for (code, label) in e.get_ref() {
            match code.trim().parse::<i64>() {
                Ok(c) => enum_labels.push((c, label.clone())),
                Err(_) => cx.err(
                    e.span(),
                    format!("enum key {code:?} is not an integer code"),
                ),
            }
        }
        enum_labels.sort();
    }
    let measurement = match &p.measurement {
        Some(m) if m.get_ref().is_empty() => {
            cx.err(m.span(), "measurement must not be empty");
            String::new()
        }
        Some(m) => m.get_ref().clone(),
        None => dev_kind.as_str().to_string(),
    };
    let mut tags = cx.tags(&p.tags, "point");
    if let Some(t) = &index_tag {
        if tags.iter().any(|(k, _)| k == t) {
            cx.err(
                span.clone(),
                format!("index_tag {t:?} is also one of this point's tags"),
            );
        }
        tags.retain(|(k, _)| k != t);
    }
    if cx.errors.len() != errors_before {
        return None;
    }
    Some(PointConfig {
        name,
        table,
        address: start as u16,
        kind,
        count,
        index_tag,
        order,
        bit,
        byte,
        width,
        scale,
        offset,
        unit: p.unit.clone().unwrap_or_default(),
        measurement,
        tags,
        poll: p.poll.map(|d| d.0).unwrap_or(dev_poll),
        enum_labels,
        writable: p.writable.unwrap_or(false),
    })
}
