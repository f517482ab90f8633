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

use crate::component::ComponentId;
use crate::config::Config;
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

/// Builds every source a configuration names, registering their devices and points.
pub fn build(config: &Config, registry: &mut Registry) -> Vec<Box<dyn Source>> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    sources.extend(modbus::build(config, registry));
    sources.extend(mqtt::build(config, registry));
    let sinks = config.sinks.iter().map(|s| s.name.clone()).collect();
    if let Some(a) = agent::build(config.agent.self_interval, sinks, registry) {
        sources.push(Box::new(a));
    }
    sources
}
