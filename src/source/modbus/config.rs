//! Validation of Modbus devices (`protocol = "modbus-tcp" | "modbus-rtu" |
//! "modbus-rtu-over-tcp"`), their serial lines and their points, with locations; and the
//! checks across devices: unique ids, one setting per serial port, unique units per bus.

use crate::config::schema::*;
use crate::config::table::RawTable;
use crate::config::units::ConfDuration;
use crate::config::validate::devices::DeviceDraft;
use crate::config::validate::points::{Checked, PointDraft, PointPart};
use crate::config::validate::{int_in, Ctx};
use crate::config::*;
use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::{BTreeMap, HashMap};
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
    fn left_to_device(&self, point: &RawTable) -> Option<&'static str> {
        (!point.has("address")).then_some("address")
    }
    fn point_keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<RegisterSection>()
    }
    fn point(&self, cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
        register(cx, raw, p)
    }
    fn check_points(&self, cx: &mut Ctx, points: &[Checked], fallback: Range<usize>) {
        overlaps(cx, points, fallback)
    }
    fn check(&self, config: &Config, plan: &mut crate::check::Plan) {
        super::check::render(config, plan)
    }
    fn check_warnings(&self, config: &Config) -> Vec<String> {
        super::check::warnings(config)
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

/// No register belongs to two non-bit points of a device.
fn overlaps(cx: &mut Ctx, points: &[Checked], fallback: Range<usize>) {
    // Register ranges taken by non-bit points, per table.
    let mut taken: BTreeMap<Table, Vec<(u32, u32, &str)>> = BTreeMap::new();
    for c in points {
        let pc = &c.config;
        let Some(r) = pc.settings::<Register>() else {
            continue;
        };
        // Bit points and byte points (u8, i8) share their register with others.
        let shares = r.bit.is_some() || matches!(pc.kind, PointType::U8 | PointType::I8);
        if shares {
            continue;
        }
        let start = r.address as u32;
        let end = start + r.span(pc.count);
        let ranges = taken.entry(r.table).or_default();
        if let Some((_, _, other)) = ranges.iter().find(|(s, e, _)| start < *e && *s < end) {
            let at =
                c.at.as_ref()
                    .map(|a| a.address.clone())
                    .unwrap_or(fallback.clone());
            cx.err(
                at,
                format!(
                    "point {:?} ({} {}..{}) overlaps point {other:?}: a register belongs to at most one non-bit point",
                    pc.name,
                    r.table.as_str(),
                    start,
                    end - 1
                ),
            );
        }
        ranges.push((start, end, &pc.name));
    }
}

/// The keys of a Modbus point (besides those every point has): where its registers are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSection {
    pub table: Option<Spanned<Table>>,
    pub address: Option<Spanned<RegAddress>>,
    pub order: Option<Spanned<WordOrder>>,
    /// u8 / i8: which byte of the register; strings: one character per register, from this byte.
    pub byte: Option<Spanned<ByteHalf>>,
    /// Strings: registers per value.
    pub length: Option<Spanned<i64>>,
}

/// Where a Modbus point's value is (`PointConfig::settings`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Register {
    pub table: Table,
    pub address: u16,
    pub order: WordOrder,
    /// A bool taken from one bit of a register.
    pub bit: Option<u8>,
    /// u8 / i8: which byte; strings: one character per register, from this byte.
    pub byte: Option<ByteHalf>,
    /// Registers per value (the string length for strings; 1 for bits).
    pub width: u16,
}

impl Register {
    /// Registers (or bits) a point of `count` elements spans.
    pub fn span(&self, count: u16) -> u32 {
        self.width as u32 * count as u32
    }
}

/// A point's registers (a derived point, or another kind's, has none: table holding, 0).
pub fn reg(p: &PointConfig) -> Register {
    p.settings::<Register>().copied().unwrap_or(Register {
        table: Table::Holding,
        address: 0,
        order: WordOrder::ABCD,
        bit: None,
        byte: None,
        width: 0,
    })
}

/// A Modbus point's own keys.
fn register(cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
    let r: RegisterSection = raw.finish(cx)?;
    let name = p.name;
    let span = p.span.clone();
    if p.derived {
        for (at, key) in [
            (r.address.as_ref().map(|a| a.span()), "address"),
            (r.table.as_ref().map(|a| a.span()), "table"),
            (r.order.as_ref().map(|a| a.span()), "order"),
            (r.length.as_ref().map(|a| a.span()), "length"),
            (r.byte.as_ref().map(|a| a.span()), "byte"),
        ] {
            if let Some(at) = at {
                cx.err(
                    at,
                    format!("point {name:?} is derived (`from` / `expr`): it has no registers, so `{key}` does not apply"),
                );
            }
        }
        return Some(PointPart {
            kind: PointType::F64,
            settings: None,
        });
    }
    let table = r
        .table
        .as_ref()
        .map(|t| *t.get_ref())
        .unwrap_or(Table::Holding);
    let (address_span, start) = match &r.address {
        Some(a) => (a.span(), a.get_ref().0),
        // A profile may leave the address to the device (a CiA 402 statusword).
        None if p.in_profile => (span.clone(), 0),
        None => {
            cx.err(span, format!("point {name:?} needs `address`"));
            return None;
        }
    };
    let kind = match (p.kind, table.is_bits()) {
        (Some(k), _) => *k.get_ref(),
        (None, true) => PointType::Bool,
        (None, false) => PointType::U16,
    };
    let kind_span = p.kind.map(|k| k.span()).unwrap_or(address_span.clone());
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
    let bit = match p.bit {
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
    let width = match (&r.length, kind) {
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
    let span_regs = width as u32 * p.count as u32;
    if start + span_regs > 65536 {
        cx.err(
            address_span.clone(),
            format!("point {name:?} runs past the end of the address space ({start} + {span_regs} > 65536)"),
        );
    }
    if !table.is_bits() && width > MAX_REGISTERS as u16 {
        cx.err(
            kind_span.clone(),
            "one value cannot be wider than one read request (125 registers)",
        );
    }
    let byte = match &r.byte {
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
    let order = r.order.as_ref().map(|o| *o.get_ref()).unwrap_or_default();
    if let Some(o) = &r.order {
        let why = match kind {
            PointType::Bool => Some("`order` applies to numeric types and strings, not \"bool\""),
            PointType::U8 | PointType::I8 => {
                Some("a u8 / i8 takes one byte: choose it with `byte`, not `order`")
            }
            PointType::String if r.byte.is_some() => {
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
    Some(PointPart {
        kind,
        settings: Some(Settings::new(Register {
            table,
            address: start as u16,
            order,
            bit,
            byte,
            width,
        })),
    })
}
