//! Sources: where readings come from. Each source kind is a folder (`modbus/`) with a `build`
//! that registers its devices in the catalog and returns running components (`Source`);
//! `build` below is the one place that knows every kind. A running source hands each poll's
//! batch to its device's `DeviceOutput` (the transform stage, then the buffer), and may change
//! the catalog at run time through `Catalogs`.

pub mod agent;
pub mod catalogs;
pub mod describe;
pub mod modbus;
pub mod mqtt;
pub mod number;
pub mod opcua;
pub mod rtde;
pub mod stream;

use crate::component::ComponentId;
use crate::config::table::RawTable;
use crate::config::validate::devices::DeviceDraft;
use crate::config::validate::points::{Checked, PointDraft, PointPart};
use crate::config::validate::Ctx;
use crate::config::{Config, Settings};
use crate::model::catalog::{Registry, Version};
use crate::observe::liveness::Beat;
use crate::observe::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::transform::{self, DeviceOutput};
use catalogs::Catalogs;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// A built source: registered in the catalog, ready to run.
pub trait Source: Send {
    /// The component's identity (a Modbus bus, an MQTT broker subscription, ...).
    fn id(&self) -> &ComponentId;
    /// The devices it reads, with their identities.
    fn devices(&self) -> Vec<ComponentId>;
    fn start(self: Box<Self>, ctx: SourceContext) -> JoinHandle<()>;
}

/// What a running source is given.
pub struct SourceContext {
    pub catalogs: Arc<Catalogs>,
    /// The catalog version current when the source starts.
    pub version: Version,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// The agent's data directory (a source's own files, e.g. dead-letter files).
    pub data_dir: std::path::PathBuf,
    pub(crate) input: crate::buffer::BufferInput,
    pub(crate) transforms: transform::Plan,
}

impl SourceContext {
    /// Where the source hands the batches of device `device` (its name and catalog id). A
    /// publish held back by `when_full = "block"` ends when the source is stopped.
    pub fn output(&self, name: &str, device: u32) -> DeviceOutput {
        DeviceOutput::new(
            device,
            self.transforms.chain(name),
            &self.version,
            self.input.clone().until(self.shutdown.clone()),
        )
    }

    /// Makes outputs for devices a source learns at run time (an OPC UA server's motion
    /// devices), each with the chain of the configuration it is given.
    pub fn outputs(&self) -> Outputs {
        Outputs {
            transforms: self.transforms.clone(),
            input: self.input.clone().until(self.shutdown.clone()),
        }
    }

    /// As `output`, for a source that does its work while its beat reads busy: the beat reads
    /// idle while a publish is held back (waiting for the buffer is not being stuck).
    pub fn output_watched(&self, name: &str, device: u32, beat: &Beat) -> DeviceOutput {
        DeviceOutput::new(
            device,
            self.transforms.chain(name),
            &self.version,
            self.input
                .clone()
                .until(self.shutdown.clone())
                .watched_by(beat.clone()),
        )
    }
}

/// Makes `DeviceOutput`s at run time (`SourceContext::outputs`).
#[derive(Clone)]
pub struct Outputs {
    transforms: transform::Plan,
    input: crate::buffer::BufferInput,
}

impl Outputs {
    /// The output of device `device` (catalog id) configured as `config`, in catalog
    /// `version`.
    pub fn output(
        &self,
        config: Arc<crate::config::DeviceConfig>,
        device: u32,
        version: &Version,
    ) -> DeviceOutput {
        DeviceOutput::new(
            device,
            self.transforms.chain_for(config),
            version,
            self.input.clone(),
        )
    }
}

/// One source kind: the `protocol` values it reads, its own keys of a `[[devices]]` table, and
/// how its devices run. The keys every device has (id, kind, cell, profile, poll, report, tags,
/// points) are read by shared code (`config/validate/devices.rs`) before the kind is asked.
pub trait SourceKind: Sync {
    /// The `protocol` values it reads.
    fn protocols(&self) -> &'static [&'static str];
    /// How messages name its devices ("Modbus", "MQTT").
    fn title(&self) -> &'static str;
    /// The device keys it reads (`config::table::fields_of` its device struct): a key of
    /// another kind is then reported as that kind's.
    fn device_keys(&self) -> &'static [&'static str];
    /// Reads and checks its keys of one device (`raw` holds only those), errors at their
    /// locations in `cx`; the settings become `DeviceConfig::settings`.
    fn device(&self, cx: &mut Ctx, raw: RawTable, device: &DeviceDraft) -> Option<Settings>;
    /// Whether its devices may take their points from a profile (register maps).
    fn takes_profiles(&self) -> bool {
        false
    }
    /// A key a profile's point may leave to the device that uses the profile (a CiA 402
    /// statusword's `address`): the key, when `point` (a profile point the device does not
    /// list) lacks it.
    fn left_to_device(&self, _point: &RawTable) -> Option<&'static str> {
        None
    }
    /// The point keys it reads (`fields_of` its point struct).
    fn point_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Reads its keys of one point (`raw` holds only those: the shared keys are taken) and
    /// the point's type when none is given; for a derived point, says that none apply. The
    /// default reads no keys and takes f64.
    fn point(&self, cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NoKeys {}
        let _: NoKeys = raw.finish(cx)?;
        Some(PointPart {
            kind: p
                .kind
                .map(|k| *k.get_ref())
                .unwrap_or(crate::config::PointType::F64),
            settings: None,
        })
    }
    /// Checks across one device's points, beyond the shared ones (e.g. overlapping registers).
    fn check_points(&self, _cx: &mut Ctx, _points: &[Checked], _fallback: std::ops::Range<usize>) {}
    /// Whether the device gives `p`'s values their type at run time (an OPC UA variable or a
    /// Sparkplug metric without `type`), so the configured type says nothing of it.
    fn type_from_device(&self, _p: &crate::config::PointConfig) -> bool {
        false
    }
    /// Whether a device may list no points (it learns them at run time).
    fn points_optional(&self, _settings: &Settings) -> bool {
        false
    }
    /// The metric families its devices have besides the shared ones (`linetap_device_up`,
    /// samples, poll durations): its components count into them through
    /// `DeviceMetrics::kind_counters`, and `/metrics` shows them.
    fn device_metrics(&self) -> &'static [crate::observe::metrics::DeviceFamily] {
        &[]
    }
    /// What `linetap check` shows of its devices of `config` (and adds to the line's totals).
    fn check(&self, _config: &Config, _plan: &mut crate::check::Plan) {}
    /// `check`'s warnings about its devices: valid, but will not work as is.
    fn check_warnings(&self, _config: &Config) -> Vec<String> {
        Vec::new()
    }
    /// Registers its devices of `config` in the catalog and returns their components.
    fn build(&self, config: &Config, registry: &mut Registry) -> Vec<Box<dyn Source>>;
}

/// Every built-in source kind: a new kind is its folder and one line here.
pub static KINDS: &[&dyn SourceKind] = &[
    &modbus::config::Kind,
    &mqtt::config::Kind,
    &rtde::config::Kind,
    &opcua::config::Kind,
];

/// The kind that reads `protocol`.
pub fn kind_of(protocol: &str) -> Option<&'static dyn SourceKind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.protocols().contains(&protocol))
}

/// Every configured value, each device's four health points and the agent's own: the
/// registry's arrays are sized once instead of doubling (on a line of 20,000 points, a copy
/// of megabytes at start-up; sources that learn points later add to them).
fn configured_points(config: &Config) -> usize {
    let devices: usize = config
        .devices
        .iter()
        .map(|d| 4 + d.points.iter().map(|p| p.count as usize).sum::<usize>())
        .sum();
    devices + agent::point_count(config)
}

/// Builds every source a configuration names, registering their devices and points.
pub fn build(config: &Config, registry: &mut Registry) -> Vec<Box<dyn Source>> {
    registry.reserve(configured_points(config));
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    for kind in KINDS {
        sources.extend(kind.build(config, registry));
    }
    let sinks = config.sinks.iter().map(|s| s.name.clone()).collect();
    if let Some(a) = agent::build(config.agent.self_interval, sinks, registry) {
        sources.push(Box::new(a));
    }
    sources
}

#[cfg(test)]
mod tests {
    use crate::model::catalog::Registry;

    /// The registry is sized once for what a configuration registers, the agent's own points
    /// included: a line of many listed points is not copied while it grows (issue 22).
    #[test]
    fn the_registry_is_sized_for_every_point_up_front() {
        for self_interval in ["0s", "10s"] {
            let mut text = format!(
                "[line]\nid = 'l'\n[agent]\nself_interval = '{self_interval}'\n[sinks.f]\ntype = 'file'\npath = '/tmp/x.lp'\n"
            );
            for d in 0..30 {
                text.push_str(&format!(
                    "[[devices]]\nid = 'd{d}'\naddress = '127.0.0.1:502'\npoll = '1s'\n"
                ));
                for p in 0..20 {
                    text.push_str(&format!(
                        "[[devices.points]]\nname = 'v{p}'\naddress = {}\ntype = 'f32'\n",
                        p * 2
                    ));
                }
                text.push_str(
                    "[[devices.points]]\nname = 'a'\naddress = 100\ntype = 'u16'\ncount = 7\n",
                );
            }
            let config = crate::config::parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
            let mut registry = Registry::new("l", "", Vec::new(), None);
            let sources = super::build(&config, &mut registry);
            assert!(!sources.is_empty());
            assert_eq!(registry.room_left(), 0, "self_interval {self_interval}");
            let (version, _) = registry.into_version();
            let values = 30 * (20 + 7 + 4);
            if self_interval == "0s" {
                assert_eq!(version.catalog.points.len(), values);
            } else {
                assert!(version.catalog.points.len() > values + 30);
            }
        }
    }
}
