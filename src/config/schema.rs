//! The configuration file as written by the user (PRODUCT.md, "Configuration file"), before
//! validation. Every struct denies unknown keys; fields that validation needs to point at
//! are wrapped in `Spanned` so an error can name their line and column.

use super::units::{ConfDuration, ConfInterval, ConfSize};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::BTreeMap;

pub type Tags = BTreeMap<Spanned<String>, Spanned<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub line: Option<Spanned<LineSection>>,
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub buffer: BufferSection,
    // `[sinks.NAME]` tables are taken out of the document before it is read (`SinkCommon`).
    // `[brokers.NAME]` tables are taken out of the document before it is read (the MQTT
    // source kind reads them: `source/mqtt/config.rs::brokers`).
    /// Line-wide report-by-exception defaults.
    pub report: Option<Spanned<ReportSection>>,
    // `[[devices]]` are taken out of the document before it is read (`DeviceCommon`).
}

/// `sparkplug = { group, node, device }`: a Sparkplug B edge node (and a device under it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugSection {
    pub group: Option<Spanned<String>>,
    pub node: Option<Spanned<String>>,
    pub device: Option<Spanned<String>>,
}

/// `[report]`, a device's `report = {…}` or a point's: report by exception (PRODUCT.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    pub deadband: Option<Spanned<f64>>,
    pub deadband_pct: Option<Spanned<f64>>,
    pub min_interval: Option<Spanned<ConfInterval>>,
    pub max_interval: Option<Spanned<ConfInterval>>,
}

/// One row of a masked state table: the first row with `(raw & mask) == value` wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRow {
    pub mask: Option<Spanned<i64>>,
    pub value: Spanned<i64>,
    pub code: Spanned<i64>,
    pub label: Spanned<String>,
}

/// A profile file (`NAME.toml`): a header and points with the device point schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub profile: Spanned<ProfileHeader>,
    // `[[points]]` are taken out of the file and read one at a time (`PointCommon`).
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileHeader {
    pub name: Option<Spanned<String>>,
    pub kind: Option<Spanned<DeviceKind>>,
    pub description: Option<String>,
    /// Where the register map comes from (manual, chapter).
    pub source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSection {
    pub id: Option<Spanned<String>>,
    pub site: Option<Spanned<String>>,
    #[serde(default)]
    pub tags: Tags,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub data_dir: Option<String>,
    pub metrics_listen: Option<Spanned<String>>,
    /// How long a stop may take to flush the sinks (default 10s).
    pub shutdown_grace: Option<ConfDuration>,
    /// A task busy this long without finishing a piece of work is stuck (default 60s): the
    /// systemd watchdog is then no longer fed.
    pub stuck_after: Option<ConfDuration>,
    /// How often the agent writes its own counters to the sinks as `linetap_agent`
    /// (default 10s; "0s" turns it off).
    pub self_interval: Option<ConfInterval>,
    /// Where profile files (`NAME.toml`) are looked up (default: `profiles/` beside the
    /// configuration file).
    pub profiles_dir: Option<Spanned<String>>,
    /// The window of `linetap_state_time` and `parts_per_hour` (default 1m).
    pub state_window: Option<Spanned<ConfDuration>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    #[default]
    DropOldest,
    DropNewest,
    Block,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferSection {
    pub max_bytes: Option<Spanned<ConfSize>>,
    pub when_full: Option<WhenFull>,
    pub sync_interval: Option<Spanned<ConfDuration>>,
    pub live_share: Option<Spanned<f64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    V1,
    V2,
}

/// The keys every `[sinks.NAME]` table has, whatever its `type`. The other keys belong to the
/// sink's kind, which reads them with its own struct (`sink::SinkKind`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkCommon {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub batch_size: Option<Spanned<i64>>,
    pub flush_interval: Option<ConfDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Robot,
    Drive,
    Plc,
    Sensor,
    Other,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Robot => "robot",
            DeviceKind::Drive => "drive",
            DeviceKind::Plc => "plc",
            DeviceKind::Sensor => "sensor",
            DeviceKind::Other => "other",
        }
    }
}

/// The keys every `[[devices]]` table has, whatever its `protocol`. The other keys belong to
/// the device's source kind, which reads them with its own struct (`source::SourceKind`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCommon {
    pub id: Option<Spanned<String>>,
    pub kind: Option<Spanned<DeviceKind>>,
    pub cell: Option<Spanned<String>>,
    pub profile: Option<Spanned<String>>,
    /// Which source kind reads the device (default "modbus-tcp").
    pub protocol: Option<Spanned<String>>,
    pub poll: Option<Spanned<ConfInterval>>,
    pub report: Option<Spanned<ReportSection>>,
    #[serde(default)]
    pub tags: Tags,
    // `points` are taken out of the table and read one at a time (`PointCommon`).
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        }
    }
    /// Coils and discrete inputs hold bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointType {
    Bool,
    /// One byte of a register (`byte` says which).
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// IEEE 754 half precision (binary16), one register.
    F16,
    String,
}

/// Which byte of a register a `u8`/`i8` point (or a one-character-per-register string) takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteHalf {
    Low,
    High,
}

impl ByteHalf {
    pub fn as_str(self) -> &'static str {
        match self {
            ByteHalf::Low => "low",
            ByteHalf::High => "high",
        }
    }
    /// The byte of register `w`.
    pub fn of(self, w: u16) -> u8 {
        match self {
            ByteHalf::Low => (w & 0xff) as u8,
            ByteHalf::High => (w >> 8) as u8,
        }
    }
}

impl PointType {
    /// Registers one value of this type occupies (strings: see `length`).
    pub fn registers(self) -> u16 {
        match self {
            PointType::Bool
            | PointType::U8
            | PointType::I8
            | PointType::U16
            | PointType::I16
            | PointType::F16 => 1,
            PointType::U32 | PointType::I32 | PointType::F32 => 2,
            PointType::U64 | PointType::I64 | PointType::F64 => 4,
            PointType::String => 1,
        }
    }
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            PointType::U8
                | PointType::I8
                | PointType::U16
                | PointType::I16
                | PointType::U32
                | PointType::I32
                | PointType::U64
                | PointType::I64
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PointType::Bool => "bool",
            PointType::U8 => "u8",
            PointType::I8 => "i8",
            PointType::U16 => "u16",
            PointType::I16 => "i16",
            PointType::U32 => "u32",
            PointType::I32 => "i32",
            PointType::U64 => "u64",
            PointType::I64 => "i64",
            PointType::F32 => "f32",
            PointType::F64 => "f64",
            PointType::F16 => "f16",
            PointType::String => "string",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
pub enum WordOrder {
    #[default]
    #[serde(alias = "abcd")]
    ABCD,
    #[serde(alias = "cdab")]
    CDAB,
    #[serde(alias = "badc")]
    BADC,
    #[serde(alias = "dcba")]
    DCBA,
}

/// A point's address: a non-negative integer, or a string in decimal or `0x` hex.
#[derive(Debug, Clone, Copy)]
pub struct RegAddress(pub u32);

impl<'de> Deserialize<'de> for RegAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RegAddress;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a register address from 0 to 65535 (decimal, or 0x hex)")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RegAddress, E> {
                if (0..=65535).contains(&v) {
                    Ok(RegAddress(v as u32))
                } else {
                    let hint = u32::try_from(v)
                        .ok()
                        .and_then(crate::check_addresses::reference_hint)
                        .map(|h| format!("; {h}"))
                        .unwrap_or_default();
                    Err(E::custom(format!(
                        "address {v} is out of range: a 0-based PDU address is 0..=65535{hint}"
                    )))
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RegAddress, E> {
                let parsed = if let Some(hex) = v.strip_prefix("0x").or(v.strip_prefix("0X")) {
                    i64::from_str_radix(hex, 16)
                } else {
                    v.parse::<i64>()
                };
                match parsed {
                    Ok(n) => self.visit_i64(n),
                    Err(_) => Err(E::custom(format!("address {v:?} is not a number"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The keys every point has (`[[devices.points]]`, a profile's `[[points]]`). The keys that
/// say where its value is read belong to the device's source kind (`SourceKind::point`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointCommon {
    pub name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub kind: Option<Spanned<PointType>>,
    pub count: Option<Spanned<i64>>,
    pub index_tag: Option<Spanned<String>>,
    pub bit: Option<Spanned<i64>>,
    pub scale: Option<Spanned<f64>>,
    pub offset: Option<Spanned<f64>>,
    /// Written as a float though its type is an integer (as a scale would make it).
    pub as_float: Option<Spanned<bool>>,
    pub unit: Option<String>,
    pub measurement: Option<Spanned<String>>,
    #[serde(default)]
    pub tags: Tags,
    pub poll: Option<ConfInterval>,
    #[serde(rename = "enum")]
    pub enum_map: Option<Spanned<BTreeMap<String, String>>>,
    pub writable: Option<bool>,
    /// Read (and usable by derived points) but not written.
    pub hidden: Option<bool>,
    /// A derived point: computed from this other point of the device (with `states` or `bit`).
    pub from: Option<Spanned<String>>,
    /// Masked states of `from`.
    pub states: Option<Spanned<Vec<StateRow>>>,
    /// A derived point: arithmetic over other points of the device (docs/PROFILES.md).
    pub expr: Option<Spanned<String>>,
    /// An alarm or error code (0 = no alarm): episodes go to `linetap_alarm`.
    pub alarm: Option<Spanned<bool>>,
    /// `"cycles"`: a cycle or part counter (writes `cycle_time` and `parts_per_hour`).
    pub counter: Option<Spanned<String>>,
    pub report: Option<Spanned<ReportSection>>,
    /// What `linetap simulate` serves for this point: an expression over `t` (seconds) and
    /// `i` (the element), in the point's engineering unit.
    pub simulate: Option<Spanned<String>>,
}
