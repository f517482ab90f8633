//! Validation of Modbus devices (`protocol = "modbus-tcp" | "modbus-rtu" |
//! "modbus-rtu-over-tcp"`), their serial lines and their points, with locations; and the
//! checks across devices: unique ids, one setting per serial port, unique units per bus.

use crate::config::schema::*;
use crate::config::table::RawTable;
use crate::config::units::ConfDuration;
use crate::config::validate::devices::DeviceDraft;
use crate::config::validate::{int_in, Ctx, RESERVED_TAGS};
use crate::config::*;
use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

/// Most registers one read request can carry (Modbus spec: 125 for FC03/FC04).
pub const MAX_REGISTERS: i64 = 125;
/// How often a unit that stopped answering on a shared bus is probed (`probe_interval`).
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The keys of a Modbus device (besides those every device has).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDeviceSection {
    pub address: Option<Spanned<String>>,
    pub serial: Option<Spanned<SerialSection>>,
    pub unit: Option<Spanned<i64>>,
    pub timeout: Option<ConfDuration>,
    pub max_registers: Option<Spanned<i64>>,
    pub max_gap: Option<Spanned<i64>>,
    /// Extra silence before and after each frame to this unit (RTU drives that need it).
    pub turnaround: Option<ConfDuration>,
    /// Further attempts after a timeout, CRC or framing error, within the same cycle.
    pub retries: Option<Spanned<i64>>,
    /// How often a unit that stopped answering is probed on a shared bus.
    pub probe_interval: Option<ConfDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSection {
    pub port: Spanned<String>,
    pub baud: Option<Spanned<i64>>,
    pub parity: Option<Spanned<String>>,
    pub data_bits: Option<Spanned<i64>>,
    pub stop_bits: Option<Spanned<i64>>,
}

/// How a Modbus device is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP (`modbus-tcp`).
    Tcp,
    /// RTU on a serial line (`modbus-rtu`).
    Rtu,
    /// RTU frames over a TCP connection to a serial device server (`modbus-rtu-over-tcp`).
    RtuOverTcp,
}

/// A validated Modbus device's own settings (`DeviceConfig::settings`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusDevice {
    pub transport: Transport,
    /// `host:port` for the TCP variants (empty for `modbus-rtu`).
    pub address: String,
    /// The serial line, for `modbus-rtu`.
    pub serial: Option<SerialConfig>,
    pub unit: u8,
    pub timeout: Duration,
    pub max_registers: u16,
    pub max_gap: u16,
    /// Extra silence before and after each frame to this unit (default 0).
    pub turnaround: Duration,
    /// Further attempts after a timeout, CRC or framing error, within one cycle.
    pub retries: u8,
    /// On a shared bus, a unit that failed `DEGRADE_AFTER_CYCLES` cycles is only probed this often.
    pub probe_interval: Duration,
}

impl ModbusDevice {
    /// The physical bus the device is on: its serial port, or its TCP address. Devices with
    /// the same bus share one connection and one scheduler.
    pub fn bus(&self) -> String {
        match (self.transport, &self.serial) {
            (Transport::Rtu, Some(s)) => format!("serial {}", s.port),
            (Transport::RtuOverTcp, _) => format!("rtu-over-tcp {}", self.address),
            _ => format!("tcp {}", self.address),
        }
    }
}

/// Serial line parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    pub fn as_str(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

/// One serial line (`serial = { port, baud, parity, data_bits, stop_bits }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    pub port: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl SerialConfig {
    /// Bits on the wire per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + self.data_bits as u32 + u32::from(self.parity != Parity::None) + self.stop_bits as u32
    }
}

/// The Modbus source kind (`source::KINDS`).
pub struct Kind;

/// Across the devices of one file: one setting per serial port, one unit per RTU bus.
#[derive(Default)]
struct Seen {
    ports: HashMap<String, (SerialConfig, String)>,
    units: HashMap<(String, u8), String>,
}

impl crate::source::SourceKind for Kind {
    fn protocols(&self) -> &'static [&'static str] {
        &["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"]
    }
    fn title(&self) -> &'static str {
        "Modbus"
    }
    fn device_keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<ModbusDeviceSection>()
    }
    fn device(&self, cx: &mut Ctx, raw: RawTable, d: &DeviceDraft) -> Option<Settings> {
        let dev = device(cx, raw, d)?;
        Some(Settings::new(dev))
    }
    fn takes_profiles(&self) -> bool {
        true
    }
    fn reads_registers(&self) -> bool {
        true
    }
    fn build(
        &self,
        config: &Config,
        registry: &mut crate::model::catalog::Registry,
    ) -> Vec<Box<dyn crate::source::Source>> {
        super::build(config, registry)
    }
}

fn device(cx: &mut Ctx, raw: RawTable, draft: &DeviceDraft) -> Option<ModbusDevice> {
    let span = draft.span.clone();
    let id = draft.id;
    let d: ModbusDeviceSection = raw.finish(cx)?;
    let transport = match draft.protocol {
        "modbus-rtu" => Transport::Rtu,
        "modbus-rtu-over-tcp" => Transport::RtuOverTcp,
        _ => Transport::Tcp,
    };
    let serial = match (&d.serial, transport) {
        (Some(s), Transport::Rtu) => Some(serial(cx, s)),
        (Some(s), _) => {
            cx.err(
                s.span(),
                format!(
                    "`serial` belongs to protocol = \"modbus-rtu\"; {} uses `address`",
                    draft.protocol
                ),
            );
            None
        }
        (None, Transport::Rtu) => {
            cx.err(
                span.clone(),
                format!("device {id:?} uses modbus-rtu and needs `serial = {{ port = \"/dev/ttyUSB0\", baud = 19200 }}`"),
            );
            None
        }
        (None, _) => None,
    };
    let address = match &d.address {
        Some(a) if transport == Transport::Rtu => {
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
            if transport != Transport::Rtu {
                cx.err(
                    span.clone(),
                    format!("device {id:?} needs `address` (HOST:PORT)"),
                );
            }
            String::new()
        }
    };
    // A serial line addresses units 1..=247 (0 is broadcast, which never answers).
    let unit = if transport == Transport::Tcp {
        int_in(cx, &d.unit, 0..=255, 1, "unit")
    } else {
        int_in(cx, &d.unit, 1..=247, 1, "unit on a serial line")
    } as u8;
    let default_retries = if transport == Transport::Tcp { 0 } else { 1 };
    let dev = ModbusDevice {
        transport,
        address,
        serial,
        unit,
        timeout: d.timeout.map(|p| p.0).unwrap_or(Duration::from_millis(500)),
        max_registers: int_in(
            cx,
            &d.max_registers,
            1..=MAX_REGISTERS,
            MAX_REGISTERS,
            "max_registers",
        ) as u16,
        max_gap: int_in(cx, &d.max_gap, 0..=MAX_REGISTERS, 16, "max_gap") as u16,
        turnaround: d.turnaround.map(|t| t.0).unwrap_or(Duration::ZERO),
        retries: int_in(cx, &d.retries, 0..=5, default_retries, "retries") as u8,
        probe_interval: d
            .probe_interval
            .map(|t| t.0)
            .unwrap_or(DEFAULT_PROBE_INTERVAL),
    };
    // Across devices: one setting per serial port, one unit per RTU bus.
    let mut seen: Seen = cx.take_state();
    if let (Some(sc), Some(raw_serial)) = (&dev.serial, &d.serial) {
        match seen.ports.get(&sc.port) {
            Some((first, owner)) if first != sc => cx.err(
                raw_serial.span(),
                format!(
                    "serial port {:?} is configured differently by device {owner:?}: one port has one baud rate, parity, data and stop bits",
                    sc.port
                ),
            ),
            Some(_) => {}
            None => {
                seen.ports.insert(sc.port.clone(), (sc.clone(), id.to_string()));
            }
        }
    }
    if transport != Transport::Tcp {
        let unit_at = d.unit.as_ref().map(|u| u.span()).unwrap_or(span);
        if let Some(other) = seen.units.insert((dev.bus(), dev.unit), id.to_string()) {
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
    cx.put_state(seen);
    Some(dev)
}

/// A validated point and where errors about it go (`None`: a profile's point, checked with its
/// profile; errors that only arise on a device go to the device's `profile` key).
pub(crate) struct Checked {
    pub config: PointConfig,
    pub at: Option<PointAt>,
}

/// Locations in the file a point was written in.
pub(crate) struct PointAt {
    name: Range<usize>,
    address: Range<usize>,
    derive: Range<usize>,
}

impl PointAt {
    pub(crate) fn of(p: &Spanned<PointSection>) -> PointAt {
        let r = p.get_ref();
        let whole = p.span();
        PointAt {
            name: r.name.as_ref().map(|n| n.span()).unwrap_or(whole.clone()),
            address: r
                .address
                .as_ref()
                .map(|a| a.span())
                .unwrap_or(whole.clone()),
            derive: r
                .expr
                .as_ref()
                .or(r.from.as_ref())
                .map(|e| e.span())
                .unwrap_or(whole),
        }
    }
}

/// The checks across a device's points: no two write the same field of the same series, no
/// register belongs to two non-bit points, and every derived point reads points that exist,
/// come before it when derived themselves, and fit its element count.
pub(crate) fn check_points(
    cx: &mut Ctx,
    points: &[Checked],
    fallback: Range<usize>,
    id: &str,
    registers: bool,
) {
    // (measurement, field, tags): two points may not write the same field of the same series.
    type SeriesField<'a> = (&'a str, &'a str, &'a [(String, String)]);
    let mut names: HashSet<SeriesField> = HashSet::new();
    // Register ranges taken by non-bit points, per table, to find overlaps.
    let mut taken: BTreeMap<Table, Vec<(u32, u32, &str)>> = BTreeMap::new();
    for (i, c) in points.iter().enumerate() {
        let pc = &c.config;
        let at = |f: fn(&PointAt) -> &Range<usize>| {
            c.at.as_ref()
                .map(|a| f(a).clone())
                .unwrap_or(fallback.clone())
        };
        if !names.insert((&pc.measurement, &pc.name, &pc.tags)) {
            cx.err(
                at(|a| &a.name),
                format!(
                    "duplicate point {:?} in measurement {:?} of device {id:?}",
                    pc.name, pc.measurement
                ),
            );
        }
        // Bit points and byte points (u8, i8) share their register with others.
        let shares = pc.bit.is_some() || matches!(pc.kind, PointType::U8 | PointType::I8);
        if registers && pc.is_read() && !shares {
            let start = pc.address as u32;
            let end = start + pc.span();
            let ranges = taken.entry(pc.table).or_default();
            if let Some((_, _, other)) = ranges.iter().find(|(s, e, _)| start < *e && *s < end) {
                cx.err(
                    at(|a| &a.address),
                    format!(
                        "point {:?} ({} {}..{}) overlaps point {other:?}: a register belongs to at most one non-bit point",
                        pc.name,
                        pc.table.as_str(),
                        start,
                        end - 1
                    ),
                );
            }
            ranges.push((start, end, &pc.name));
        }
        let Some(derive) = &pc.derive else {
            continue;
        };
        for (input, element) in derive.inputs() {
            let found: Vec<usize> = points
                .iter()
                .enumerate()
                .filter(|(_, q)| {
                    crate::transform::expr::names(input, &q.config.measurement, &q.config.name)
                })
                .map(|(j, _)| j)
                .collect();
            let problem = match found.as_slice() {
                [] => Some(format!(
                    "point {:?} reads {input:?}, which is not a point of this device",
                    pc.name
                )),
                [j] => {
                    let q = &points[*j].config;
                    if *j == i {
                        Some(format!("point {input:?} cannot read itself"))
                    } else if q.derive.is_some() && *j > i {
                        Some(format!(
                            "point {:?} reads {input:?}, which is computed after it: list {input:?} first",
                            pc.name
                        ))
                    } else if q.kind == PointType::String {
                        Some(format!(
                            "point {:?} reads {input:?}, a string: derived points compute with numbers",
                            pc.name
                        ))
                    } else {
                        match element {
                            Some(k) if k > q.count => Some(format!(
                                "{input}[{k}]: {input:?} has {} element(s)",
                                q.count
                            )),
                            None if q.count > 1 && q.count != pc.count => Some(format!(
                                "{input:?} has {} elements and {:?} {}: an array point reads arrays of its own length element by element; pick one element with {input}[k]",
                                q.count, pc.name, pc.count
                            )),
                            _ => None,
                        }
                    }
                }
                many => Some(format!(
                    "{input:?} names {} points of this device (in measurements {}): write MEASUREMENT.{input}",
                    many.len(),
                    many.iter().map(|j| format!("{:?}", points[*j].config.measurement)).collect::<Vec<_>>().join(", ")
                )),
            };
            if let Some(problem) = problem {
                cx.err(at(|a| &a.derive), problem);
            }
        }
    }
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

/// What a point's validation needs from its device.
pub(crate) struct PointCtx {
    pub kind: DeviceKind,
    pub poll: Duration,
    pub report: Report,
    /// Validating a profile: a register point may leave `address` to the device.
    pub in_profile: bool,
    /// The device publishes to a broker: its points take `json` / `topic`, not registers.
    pub mqtt: Option<PointMqtt>,
}

/// What an MQTT device's point needs to know.
pub(crate) struct PointMqtt {
    pub format: MqttFormat,
    pub line: LineConfig,
    pub cell: String,
    pub device: String,
}

/// Whether a raw point is derived (computed from other points, no registers).
pub(crate) fn is_derived(p: &PointSection) -> bool {
    p.from.is_some() || p.expr.is_some() || p.states.is_some()
}

/// The byte offset of character `at` of a string value whose (quoted) text is at `span`.
fn inside(cx: &Ctx, span: &Range<usize>, at: usize) -> usize {
    let src = cx.source(span.clone());
    let open = if src.starts_with("\"\"\"") || src.starts_with("'''") {
        3 + usize::from(src[3..].starts_with('\n'))
    } else if src.starts_with('"') || src.starts_with('\'') {
        1
    } else {
        0
    };
    (span.start + open + at).min(span.end.saturating_sub(1).max(span.start))
}

/// Parses an expression key, reporting a syntax error at its character.
fn expression(cx: &mut Ctx, raw: &Spanned<String>) -> Option<crate::transform::expr::Expr> {
    match crate::transform::expr::Expr::parse(raw.get_ref()) {
        Ok(e) => Some(e),
        Err(e) => {
            let at = inside(cx, &raw.span(), e.at);
            cx.err(at..at, e.message);
            None
        }
    }
}

pub(crate) fn point(cx: &mut Ctx, p: &Spanned<PointSection>, pc: &PointCtx) -> Option<PointConfig> {
    let span = p.span();
    let p = p.get_ref();
    let errors_before = cx.errors.len();
    let name = cx.non_empty(&p.name, span.clone(), "name", "[[devices.points]]");
    let derived = is_derived(p);
    let mqtt = pc.mqtt.as_ref();
    if mqtt.is_none() {
        for (at, key) in [
            (p.json.as_ref().map(|v| v.span()), "json"),
            (p.topic.as_ref().map(|v| v.span()), "topic"),
            (p.metric.as_ref().map(|v| v.span()), "metric"),
        ] {
            if let Some(at) = at {
                cx.err(
                    at,
                    format!("`{key}` belongs to points of MQTT devices (protocol = \"mqtt\")"),
                );
            }
        }
    }
    let table = p
        .table
        .as_ref()
        .map(|t| *t.get_ref())
        .unwrap_or(Table::Holding);
    let (address_span, start) = if derived {
        let registers_only = [
            (p.address.as_ref().map(|a| a.span()), "address"),
            (p.table.as_ref().map(|a| a.span()), "table"),
            (p.order.as_ref().map(|a| a.span()), "order"),
            (p.length.as_ref().map(|a| a.span()), "length"),
            (p.byte.as_ref().map(|a| a.span()), "byte"),
            (p.scale.as_ref().map(|a| a.span()), "scale"),
            (p.offset.as_ref().map(|a| a.span()), "offset"),
            (p.simulate.as_ref().map(|a| a.span()), "simulate"),
        ];
        for (at, key) in registers_only {
            if let Some(at) = at {
                cx.err(
                    at,
                    format!("point {name:?} is derived (`from` / `expr`): it has no registers, so `{key}` does not apply"),
                );
            }
        }
        if p.writable == Some(true) {
            cx.err(
                span.clone(),
                format!("point {name:?} is derived and cannot be writable"),
            );
        }
        (span.clone(), 0)
    } else if mqtt.is_some() {
        let registers_only = [
            (p.address.as_ref().map(|a| a.span()), "address"),
            (p.table.as_ref().map(|a| a.span()), "table"),
            (p.order.as_ref().map(|a| a.span()), "order"),
            (p.length.as_ref().map(|a| a.span()), "length"),
            (p.byte.as_ref().map(|a| a.span()), "byte"),
        ];
        for (at, key) in registers_only {
            if let Some(at) = at {
                cx.err(
                    at,
                    format!(
                        "point {name:?} of an MQTT device has no registers: `{key}` does not apply"
                    ),
                );
            }
        }
        (span.clone(), 0)
    } else {
        match &p.address {
            Some(a) => (a.span(), a.get_ref().0),
            // A profile may leave the address to the device (a CiA 402 statusword).
            None if pc.in_profile => (span.clone(), 0),
            None => {
                cx.err(span, format!("point {name:?} needs `address`"));
                return None;
            }
        }
    };
    let kind = match (&p.kind, derived, table.is_bits()) {
        (Some(k), _, _) => *k.get_ref(),
        (None, true, _) if p.states.is_some() => PointType::I32,
        (None, true, _) if p.bit.is_some() => PointType::Bool,
        (None, true, _) => PointType::F64,
        (None, false, _) if mqtt.is_some() => PointType::F64,
        (None, false, true) => PointType::Bool,
        (None, false, false) => PointType::U16,
    };
    let kind_span = p
        .kind
        .as_ref()
        .map(|k| k.span())
        .unwrap_or(address_span.clone());
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
        Some(b) if derived => {
            if p.from.is_none() {
                cx.err(
                    b.span(),
                    "a derived `bit` needs `from` (the point it is taken from)",
                );
            } else if kind != PointType::Bool {
                cx.err(
                    b.span(),
                    format!("`bit` gives a bool, not {:?}", kind.as_str()),
                );
            } else if !(0..=63).contains(b.get_ref()) {
                cx.err(
                    b.span(),
                    format!("bit {} is out of range 0..=63", b.get_ref()),
                );
            }
            Some((*b.get_ref()).clamp(0, 63) as u8)
        }
        Some(b) if mqtt.is_some() => {
            cx.err(
                b.span(),
                "`bit` of an MQTT point: declare a derived point with `from` and `bit`",
            );
            None
        }
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
    if !derived && mqtt.is_none() && kind == PointType::Bool && !table.is_bits() && bit.is_none() {
        cx.err(
            kind_span.clone(),
            format!(
                "a bool point in table {:?} needs `bit` (0..=15)",
                table.as_str()
            ),
        );
    }
    let width = match (&p.length, kind) {
        _ if derived || mqtt.is_some() => 0,
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
    let span_regs = width as u32 * count as u32;
    if start + span_regs > 65536 {
        cx.err(address_span.clone(), format!("point {name:?} runs past the end of the address space ({start} + {span_regs} > 65536)"));
    }
    if !table.is_bits() && width > MAX_REGISTERS as u16 {
        cx.err(
            kind_span.clone(),
            "one value cannot be wider than one read request (125 registers)",
        );
    }
    let byte = match &p.byte {
        Some(_) if derived || mqtt.is_some() => None,
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
        None if !derived && mqtt.is_none() && matches!(kind, PointType::U8 | PointType::I8) => {
            Some(ByteHalf::Low)
        }
        None => None,
    };
    let order = p.order.as_ref().map(|o| *o.get_ref()).unwrap_or_default();
    if let (Some(o), false) = (&p.order, derived || mqtt.is_some()) {
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
    let (scale, offset) = if derived {
        (1.0, 0.0)
    } else {
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
        (scale, offset)
    };
    let mut enum_labels = Vec::new();
    if let Some(e) = &p.enum_map {
        if p.states.is_some() {
            cx.err(
                e.span(),
                "a `states` point takes its labels from its rows: remove `enum`",
            );
        } else if !kind.is_integer() {
            cx.err(
                e.span(),
                format!("`enum` needs an integer type, not {:?}", kind.as_str()),
            );
        } else if p.scale.is_some() || p.offset.is_some() {
            cx.err(e.span(), "`enum` cannot be combined with scale or offset");
        }
        for (code, label) in e.get_ref() {
            let code_text = code.trim();
            let parsed = match code_text
                .strip_prefix("0x")
                .or_else(|| code_text.strip_prefix("0X"))
            {
                Some(hex) => i64::from_str_radix(hex, 16),
                None => code_text.parse::<i64>(),
            };
            match parsed {
                Ok(c) => enum_labels.push((c, label.clone())),
                Err(_) => cx.err(
                    e.span(),
                    format!("enum key {code:?} is not an integer code (decimal or 0x hex)"),
                ),
            }
        }
        enum_labels.sort();
    }
    let derive = if derived {
        derive(cx, p, kind, &kind_span, bit, &mut enum_labels)
    } else {
        None
    };
    let measurement = match &p.measurement {
        Some(m) if m.get_ref().is_empty() => {
            cx.err(m.span(), "measurement must not be empty");
            String::new()
        }
        Some(m) => m.get_ref().clone(),
        None => pc.kind.as_str().to_string(),
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
    let alarm = match &p.alarm {
        Some(a) if *a.get_ref() => {
            if !kind.is_integer() {
                cx.err(
                    a.span(),
                    format!(
                        "`alarm` marks an integer alarm or error code (0 = none), not a {:?} point",
                        kind.as_str()
                    ),
                );
            }
            true
        }
        _ => false,
    };
    let cycles = match &p.counter {
        Some(c) if c.get_ref() == "cycles" => {
            if matches!(kind, PointType::Bool | PointType::String) {
                cx.err(
                    c.span(),
                    format!(
                        "a cycle counter is a number, not a {:?} point",
                        kind.as_str()
                    ),
                );
            }
            true
        }
        Some(c) => {
            cx.err(
                c.span(),
                format!(
                    "counter {:?}: the only kind is \"cycles\" (a cycle or part counter)",
                    c.get_ref()
                ),
            );
            false
        }
        None => false,
    };
    let report = crate::config::validate::report(cx, &p.report, pc.report);
    let simulate = match &p.simulate {
        Some(raw) => {
            let e = expression(cx, raw);
            if let Some((n, _, at)) = e.as_ref().and_then(|e| e.references().first().copied()) {
                let at = inside(cx, &raw.span(), at);
                cx.err(
                    at..at,
                    format!("`simulate` is a function of `t` (seconds) and `i` (the element); it cannot read point {n:?}"),
                );
            }
            e
        }
        None => None,
    };
    let metric = match (mqtt, &p.metric) {
        (Some(m), Some(v)) if m.format == MqttFormat::SparkplugB => {
            if v.get_ref().is_empty() {
                cx.err(v.span(), "metric must not be empty");
            }
            Some(v.get_ref().clone())
        }
        (Some(_), Some(v)) => {
            cx.err(v.span(), "`metric` applies to format = \"sparkplug-b\"");
            None
        }
        _ => None,
    };
    let (json, topic) = match mqtt {
        None => (None, None),
        Some(m) if m.format == MqttFormat::SparkplugB => {
            for (at, key) in [
                (p.json.as_ref().map(|v| v.span()), "json"),
                (p.topic.as_ref().map(|v| v.span()), "topic"),
            ] {
                if let Some(at) = at {
                    cx.err(at, format!("`{key}` does not apply to a sparkplug-b point: it reads a birth `metric`"));
                }
            }
            if !derived && metric.is_none() {
                cx.err(
                    span.clone(),
                    format!("point {name:?} needs `metric`, the name of a metric in the device's birth (e.g. \"Joint/1/Temperature\")"),
                );
            }
            (None, None)
        }
        Some(m) => {
            let topic = p
                .topic
                .as_ref()
                .map(|t| crate::source::mqtt::config::topic(cx, t, &m.line, &m.cell, &m.device));
            let json = p.json.as_ref().map(|j| {
                if !j.get_ref().is_empty() && !j.get_ref().starts_with('/') {
                    cx.err(
                        j.span(),
                        "json is an RFC 6901 pointer: \"\" (the whole message) or starting with '/', e.g. \"/sensors/temp\"",
                    );
                }
                if m.format == MqttFormat::Value {
                    cx.err(j.span(), "`json` applies to format = \"json\"; with format = \"value\" the payload is the value");
                }
                j.get_ref().clone()
            });
            if derived {
                if let Some(j) = &p.json {
                    cx.err(
                        j.span(),
                        format!("point {name:?} is derived: it has no `json`"),
                    );
                }
                if let Some(t) = &p.topic {
                    cx.err(
                        t.span(),
                        format!("point {name:?} is derived: it has no `topic`"),
                    );
                }
            } else {
                match m.format {
                    MqttFormat::Json if json.is_none() => cx.err(
                        span.clone(),
                        format!("point {name:?} needs `json`, a JSON pointer such as \"/sensors/temp\""),
                    ),
                    MqttFormat::Value if topic.is_none() => cx.err(
                        span.clone(),
                        format!("with format = \"value\" every point needs its own `topic`: point {name:?} has none"),
                    ),
                    _ => {}
                }
            }
            (json, topic)
        }
    };
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
        bit: if derived { None } else { bit },
        byte,
        width,
        scale,
        offset,
        unit: p.unit.clone().unwrap_or_default(),
        measurement,
        tags,
        poll: p.poll.map(|d| d.0).unwrap_or(pc.poll),
        enum_labels,
        writable: p.writable.unwrap_or(false),
        hidden: p.hidden.unwrap_or(false),
        derive,
        alarm,
        cycles,
        report,
        simulate,
        json,
        topic,
        kind_from_birth: metric.is_some() && p.kind.is_none() && !derived,
        metric,
    })
}

/// How a derived point is computed (`from` + `states`, `from` + `bit`, or `expr`).
fn derive(
    cx: &mut Ctx,
    p: &PointSection,
    kind: PointType,
    kind_span: &Range<usize>,
    bit: Option<u8>,
    enum_labels: &mut Vec<(i64, String)>,
) -> Option<Derive> {
    if kind == PointType::String {
        cx.err(
            kind_span.clone(),
            "a derived point is a number or a bool, not a string",
        );
        return None;
    }
    if let Some(e) = &p.expr {
        if let Some(f) = &p.from {
            cx.err(f.span(), "a point takes either `expr` or `from`, not both");
        }
        if let Some(s) = &p.states {
            cx.err(
                s.span(),
                "`states` maps `from`; with `expr`, write the rule in the expression",
            );
        }
        return expression(cx, e).map(Derive::Expr);
    }
    let Some(from) = &p.from else {
        if let Some(s) = &p.states {
            cx.err(
                s.span(),
                "`states` needs `from` (the point whose value is masked)",
            );
        }
        return None;
    };
    if from.get_ref().is_empty() {
        cx.err(from.span(), "`from` names another point of the device");
        return None;
    }
    match (&p.states, bit) {
        (Some(states), None) => {
            if !kind.is_integer() {
                cx.err(
                    kind_span.clone(),
                    format!(
                        "a `states` point writes an integer code, not {:?}",
                        kind.as_str()
                    ),
                );
            }
            let mut rows = Vec::new();
            for r in states.get_ref() {
                let mask = r.mask.as_ref().map(|m| *m.get_ref()).unwrap_or(-1);
                if r.label.get_ref().is_empty() {
                    cx.err(r.label.span(), "a state needs a label");
                }
                if let Some(m) = &r.mask {
                    if *m.get_ref() < 0 {
                        cx.err(m.span(), "mask must not be negative");
                    }
                }
                let code = *r.code.get_ref();
                match enum_labels.iter().find(|(c, _)| *c == code) {
                    Some((_, l)) if l != r.label.get_ref() => {
                        let l = l.clone();
                        cx.err(
                            r.code.span(),
                            format!("code {code} already has label {l:?}"),
                        );
                    }
                    Some(_) => {}
                    None => enum_labels.push((code, r.label.get_ref().clone())),
                }
                rows.push(StateRule {
                    mask,
                    value: *r.value.get_ref(),
                    code,
                });
            }
            if rows.is_empty() {
                cx.err(states.span(), "`states` needs at least one row");
            }
            enum_labels.sort();
            Some(Derive::States {
                from: from.get_ref().clone(),
                rows,
            })
        }
        (None, Some(bit)) => Some(Derive::Bit {
            from: from.get_ref().clone(),
            bit,
        }),
        (Some(s), Some(_)) => {
            cx.err(
                s.span(),
                "a point takes `states` or `bit` of its `from`, not both",
            );
            None
        }
        (None, None) => {
            cx.err(
                from.span(),
                "`from` needs `states` (a masked state table) or `bit`; for arithmetic use `expr`",
            );
            None
        }
    }
}
