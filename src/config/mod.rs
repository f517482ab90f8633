//! Configuration: one TOML file per production line (PRODUCT.md). `load` parses and validates
//! the whole file before anything starts and returns either a `Config` the runtime can use
//! as it is, or every error found, each with its file, line and column.

pub mod profiles;
pub mod schema;
pub mod units;
pub(crate) mod validate;
pub use crate::sink::file::config::FileSinkConfig;
pub use crate::sink::influx::config::InfluxConfig;
pub(crate) use validate::is_loopback_url;

pub use schema::{
    ByteHalf, DeviceKind, InfluxApi, PointType, Protocol, Table, WhenFull, WordOrder,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub line: LineConfig,
    pub agent: AgentConfig,
    pub buffer: BufferConfig,
    pub sinks: Vec<SinkConfig>,
    /// MQTT connections devices are read through.
    pub brokers: Vec<crate::mqtt::connection::BrokerConfig>,
    /// Per broker name: the Sparkplug host id of linetap's STATE there.
    pub sparkplug_host_ids: std::collections::BTreeMap<String, String>,
    pub devices: Vec<DeviceConfig>,
}

impl Config {
    /// Everything but the devices: what a running agent keeps for its next reload (a reload
    /// compares devices and buses by their components' fingerprints, taken from the new
    /// file, so the running devices' point configurations need not stay in memory).
    pub fn without_devices(&self) -> Config {
        Config {
            line: self.line.clone(),
            agent: self.agent.clone(),
            buffer: self.buffer.clone(),
            sinks: self.sinks.clone(),
            brokers: self.brokers.clone(),
            sparkplug_host_ids: self.sparkplug_host_ids.clone(),
            devices: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LineConfig {
    pub id: String,
    pub site: Option<String>,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub metrics_listen: Option<String>,
    pub shutdown_grace: Duration,
    /// A task busy this long is stuck (systemd watchdog).
    pub stuck_after: Duration,
    /// How often the agent writes `linetap_agent` records; zero: never.
    pub self_interval: Duration,
    /// Where profile files are looked up (`None`: built-in profiles only).
    pub profiles_dir: Option<PathBuf>,
    /// The window of `linetap_state_time` and `parts_per_hour`.
    pub state_window: Duration,
}

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub max_bytes: u64,
    pub when_full: WhenFull,
    /// Group commit: the log is synced to disk at least this often.
    pub sync_interval: Duration,
    /// While a sink replays a backlog, the share of each flush given to new data.
    pub live_share: f64,
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The table name: the sink's identity.
    pub name: String,
    pub kind: SinkKind,
    pub batch_size: usize,
    pub flush_interval: Duration,
}

/// Where a secret comes from; literal secrets in the config file are rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    File(PathBuf),
    Env(String),
}

impl Secret {
    /// Reads the secret now (at start-up, at a reload, after a 401/403), trimming a trailing
    /// newline.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Secret::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read {}: {e}", p.display())),
            Secret::Env(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
        }
    }
}

impl Secret {
    /// A digest of the secret's current content (or of why it cannot be read), for the
    /// sink's fingerprint: a reload restarts a sink whose token or password changed. Keyed
    /// with a per-process random key, so the fingerprints in the log reveal nothing of it.
    /// Reads a small local file or an environment variable, as building the sink does.
    pub fn digest(&self) -> u64 {
        use std::hash::BuildHasher;
        static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        KEY.get_or_init(Default::default).hash_one(self.resolve())
    }
}

impl SinkConfig {
    /// The digest of every secret the sink uses (see `Secret::digest`).
    pub fn secrets_digest(&self) -> u64 {
        let secrets: Vec<&Secret> = match &self.kind {
            SinkKind::Influx(c) => c.token.iter().chain(c.password.iter()).collect(),
            SinkKind::Mqtt(c) => c.broker.password.iter().collect(),
            SinkKind::File(_) => Vec::new(),
        };
        crate::component::fingerprint(&secrets.iter().map(|s| s.digest()).collect::<Vec<_>>())
    }
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    Influx(InfluxConfig),
    File(FileSinkConfig),
    Mqtt(crate::sink::mqtt::config::MqttSinkConfig),
}

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub id: String,
    pub kind: DeviceKind,
    pub cell: Option<String>,
    /// The profile its points come from (with the device's own points added).
    pub profile: Option<String>,
    pub protocol: Protocol,
    /// `host:port` for the TCP variants (empty for `modbus-rtu`).
    pub address: String,
    /// The serial line, for `modbus-rtu`.
    pub serial: Option<SerialConfig>,
    pub unit: u8,
    pub poll: Duration,
    pub timeout: Duration,
    pub max_registers: u16,
    pub max_gap: u16,
    /// Extra silence before and after each frame to this unit (default 0).
    pub turnaround: Duration,
    /// Further attempts after a timeout, CRC or framing error, within one cycle.
    pub retries: u8,
    /// On a shared bus, a unit that failed `DEGRADE_AFTER_CYCLES` cycles is only probed this often.
    pub probe_interval: Duration,
    pub tags: Vec<(String, String)>,
    pub points: Vec<PointConfig>,
    /// `protocol = "mqtt"`: how its messages arrive.
    pub mqtt: Option<MqttDevice>,
}

/// A device that publishes to a broker.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttDevice {
    /// The `[brokers.NAME]` it is read through.
    pub broker: String,
    /// The device's topic, expanded (empty with format value, where each point has a topic).
    pub topic: String,
    pub format: MqttFormat,
    pub qos: u8,
    /// json: a pointer to the sample time in the payload.
    pub timestamp: Option<String>,
    pub timestamp_format: TimestampFormat,
    /// Nothing for this long: the device is down.
    pub stale_after: Duration,
    /// sparkplug-b: (group, edge node, device under it or none for the node's own metrics).
    pub sparkplug: Option<(String, String, Option<String>)>,
    /// sparkplug-b: the most metrics the device's births may bring (default 2,000).
    pub max_metrics: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttFormat {
    Json,
    Value,
    SparkplugB,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampFormat {
    Unix,
    UnixMs,
    UnixUs,
    UnixNs,
    Rfc3339,
}

impl DeviceConfig {
    /// The physical bus this device is on: its serial port, or its TCP address. Devices with
    /// the same bus share one connection and one scheduler.
    pub fn bus(&self) -> String {
        match (&self.protocol, &self.serial) {
            (Protocol::ModbusRtu, Some(s)) => format!("serial {}", s.port),
            (Protocol::ModbusRtuOverTcp, _) => format!("rtu-over-tcp {}", self.address),
            (Protocol::Mqtt, _) => format!(
                "mqtt {}",
                self.mqtt.as_ref().map(|m| m.broker.as_str()).unwrap_or("")
            ),
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

#[derive(Debug, Clone)]
pub struct PointConfig {
    pub name: String,
    pub table: Table,
    pub address: u16,
    pub kind: PointType,
    pub count: u16,
    pub index_tag: Option<String>,
    pub order: WordOrder,
    pub bit: Option<u8>,
    /// u8 / i8: which byte; strings: one character per register, from this byte.
    pub byte: Option<ByteHalf>,
    /// Registers per value (the string length for strings; 1 for bits).
    pub width: u16,
    pub scale: f64,
    pub offset: f64,
    pub unit: String,
    pub measurement: String,
    pub tags: Vec<(String, String)>,
    pub poll: Duration,
    pub enum_labels: Vec<(i64, String)>,
    pub writable: bool,
    /// Read (and usable by derived points) but not written.
    pub hidden: bool,
    /// A derived point: computed in the transform stage, not read from registers.
    pub derive: Option<Derive>,
    /// An alarm code: episodes go to `linetap_alarm`.
    pub alarm: bool,
    /// A cycle counter: writes `cycle_time` and `parts_per_hour`.
    pub cycles: bool,
    /// Report by exception, resolved from the line, the device and the point.
    pub report: Report,
    /// What the simulator serves (an expression over `t` and `i`).
    pub simulate: Option<crate::transform::expr::Expr>,
    /// MQTT json: the RFC 6901 pointer to the value in each message.
    pub json: Option<String>,
    /// MQTT: the point's own topic (expanded).
    pub topic: Option<String>,
    /// MQTT sparkplug-b: the birth metric it reads.
    pub metric: Option<String>,
    /// MQTT sparkplug-b, no `type` given: the birth's datatype decides what it is written as.
    pub kind_from_birth: bool,
}

/// How a derived point is computed.
#[derive(Debug, Clone, PartialEq)]
pub enum Derive {
    /// The code of the first row of `states` whose `(from & mask) == value`.
    States { from: String, rows: Vec<StateRule> },
    /// One bit of `from`.
    Bit { from: String, bit: u8 },
    /// Arithmetic over other points of the device.
    Expr(crate::transform::expr::Expr),
}

impl Derive {
    /// The points it reads: `(name, explicit element)`.
    pub fn inputs(&self) -> Vec<(&str, Option<u16>)> {
        match self {
            Derive::States { from, .. } | Derive::Bit { from, .. } => vec![(from.as_str(), None)],
            Derive::Expr(e) => e.references().into_iter().map(|(n, k, _)| (n, k)).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRule {
    pub mask: i64,
    pub value: i64,
    pub code: i64,
}

/// Report by exception for one point (PRODUCT.md): `active` once any level set anything.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Report {
    pub active: bool,
    pub deadband: f64,
    pub deadband_pct: f64,
    pub min_interval: Duration,
    pub max_interval: Duration,
}

impl PointConfig {
    /// Whether the value comes from registers (not computed from other points).
    pub fn is_read(&self) -> bool {
        self.derive.is_none()
    }
    /// Scaled points are written as floats (PRODUCT.md).
    pub fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }
    /// Registers (or bits) the whole point spans, all array elements included.
    pub fn span(&self) -> u32 {
        self.width as u32 * self.count as u32
    }
}

/// One configuration error with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// All the errors of one file, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let dir = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    validate::parse(&name, &text, dir)
}

/// Parses and validates configuration text; `file` names it in errors. Profiles: the
/// built-in ones, and files in `[agent] profiles_dir` when it is set.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    validate::parse(file, text, None)
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn the_digest_follows_the_content_not_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").unwrap();
        let s = Secret::File(path.clone());
        let first = s.digest();
        assert_eq!(s.digest(), first);
        assert_eq!(s.resolve().unwrap(), "one");
        std::fs::write(&path, "two\n").unwrap();
        assert_ne!(s.digest(), first);
        std::fs::remove_file(&path).unwrap();
        assert!(s.resolve().is_err());
        assert_ne!(s.digest(), first);
    }
}
