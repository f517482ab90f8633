//! Configuration: one TOML file per production line (PRODUCT.md). `load` parses and validates
//! the whole file before anything starts and returns either a `Config` the runtime can use
//! as it is, or every error found, each with its file, line and column.

pub mod profiles;
pub mod schema;
pub mod table;
pub mod units;
pub mod validate;
pub use crate::sink::file::config::FileSinkConfig;
pub use crate::sink::influx::config::InfluxConfig;
pub(crate) use validate::is_loopback_url;

pub use crate::source::modbus::config::{ModbusDevice, Parity, SerialConfig, Transport};
pub use crate::source::mqtt::config::{MqttDevice, MqttFormat, TimestampFormat};
pub use schema::{ByteHalf, DeviceKind, InfluxApi, PointType, Table, WhenFull, WordOrder};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use table::Settings;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub line: LineConfig,
    pub agent: AgentConfig,
    pub buffer: BufferConfig,
    pub sinks: Vec<SinkConfig>,
    /// MQTT connections devices are read through.
    pub brokers: Vec<crate::mqtt::settings::BrokerConfig>,
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
    /// Its `type`, the name of its kind (`sink::SinkKind::name`).
    pub kind: &'static str,
    pub batch_size: usize,
    pub flush_interval: Duration,
    /// What its kind read from its own keys (URL, path, broker, ...).
    pub settings: Settings,
}

impl SinkConfig {
    /// The sink kind's own settings, when the sink is of that kind.
    pub fn settings<T: std::any::Any>(&self) -> Option<&T> {
        self.settings.get()
    }
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
        let secrets: Vec<&Secret> = crate::sink::kind(self.kind)
            .map(|k| k.secrets(&self.settings))
            .unwrap_or_default();
        crate::component::fingerprint(&secrets.iter().map(|s| s.digest()).collect::<Vec<_>>())
    }
}

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub id: String,
    pub kind: DeviceKind,
    pub cell: Option<String>,
    /// The profile its points come from (with the device's own points added).
    pub profile: Option<String>,
    /// The `protocol` it is read with, as the file names it (its source kind's).
    pub protocol: &'static str,
    /// How often it is read (sources that poll).
    pub poll: Duration,
    pub tags: Vec<(String, String)>,
    pub points: Vec<PointConfig>,
    /// What its source kind read from its own keys (address, serial line, broker, ...).
    pub settings: Settings,
}

impl DeviceConfig {
    /// The source kind's own settings, when the device is of that kind.
    pub fn settings<T: std::any::Any>(&self) -> Option<&T> {
        self.settings.get()
    }
}

#[derive(Debug, Clone)]
pub struct PointConfig {
    pub name: String,
    pub kind: PointType,
    pub count: u16,
    pub index_tag: Option<String>,
    /// A tag whose value differs per element (an OPC UA robot's axis names, learned by
    /// browsing): element `e` carries `(key, values[e - 1])` beside the `index_tag`.
    pub element_tag: Option<Box<(String, Vec<String>)>>,
    pub scale: f64,
    pub offset: f64,
    /// `as_float = true`: written as a float, as a scaled point is.
    pub as_float: bool,
    pub unit: String,
    pub measurement: String,
    pub tags: Vec<(String, String)>,
    pub poll: Duration,
    pub enum_labels: Vec<(i64, String)>,
    pub writable: bool,
    /// Read (and usable by derived points) but not written.
    pub hidden: bool,
    /// A derived point: computed in the transform stage, not read from registers.
    pub derive: Option<Box<Derive>>,
    /// An alarm code: episodes go to `linetap_alarm`.
    pub alarm: bool,
    /// A cycle counter: writes `cycle_time` and `parts_per_hour`.
    pub cycles: bool,
    /// Report by exception, resolved from the line, the device and the point; `None` when no
    /// level set anything (boxed: most points have none, and a line holds tens of thousands of
    /// these while it starts). Read it with `report()`.
    pub report: Option<Box<Report>>,
    /// What the simulator serves (an expression over `t` and `i`).
    pub simulate: Option<Box<crate::transform::expr::Expr>>,
    /// Where its value is read, as its source kind read it (registers, a JSON pointer, ...);
    /// `None` for a derived point.
    pub settings: Option<Settings>,
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
    /// Scaled points, and integer points with `as_float`, are written as floats (PRODUCT.md).
    pub fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0 || self.as_float
    }
    /// Its report-by-exception settings (`active` false when none).
    pub fn report(&self) -> Report {
        self.report.as_deref().copied().unwrap_or_default()
    }
    /// Where its value is read, as source kind `T` read it (`None`: another kind, or derived).
    pub fn settings<T: std::any::Any>(&self) -> Option<&T> {
        self.settings.as_ref()?.get()
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
    load_with(path, crate::source::KINDS)
}

/// As `load`, with the source kinds to read devices with (the built-in `source::KINDS` and
/// more: a kind outside the crate, e.g. a test's).
pub fn load_with(
    path: &Path,
    kinds: &[&dyn crate::source::SourceKind],
) -> Result<Config, ConfigErrors> {
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
    validate::parse(&name, &text, dir, kinds)
}

/// Parses and validates configuration text; `file` names it in errors. Profiles: the
/// built-in ones, and files in `[agent] profiles_dir` when it is set.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    validate::parse(file, text, None, crate::source::KINDS)
}

/// As `parse`, with the source kinds to read devices with (see `load_with`).
pub fn parse_with(
    file: &str,
    text: &str,
    kinds: &[&dyn crate::source::SourceKind],
) -> Result<Config, ConfigErrors> {
    validate::parse(file, text, None, kinds)
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
#[cfg(test)]
mod size_tests {
    /// A line of 20,000 listed points holds 20,000 of these while its catalog is built
    /// (issue 22): rare parts (derivations, simulations) are boxed.
    #[test]
    fn a_point_config_stays_small() {
        assert!(
            std::mem::size_of::<super::PointConfig>() <= 232,
            "{}",
            std::mem::size_of::<super::PointConfig>()
        );
    }
}
