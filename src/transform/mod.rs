//! The transform stage: per device, between the source and the buffer. A source hands each
//! poll's batch (one device, one read) to its device's `DeviceOutput`, which runs the device's
//! chain of transforms over it and queues the result for the buffer. A transform may drop,
//! add or rewrite samples: report by exception, derived points (a state from a masked
//! statusword, a joint angle from two registers) and edge derivations (alarm episodes,
//! availability) live here. Transforms see the device's slice of the catalog, and see it again
//! whenever the catalog changes.
//!
//! A device's chain (`Plan::chain`): derived and hidden points (`derive.rs`), then the edge
//! derivations (`derivations.rs`: alarm episodes, time in state, cycle time), then report by
//! exception (`report.rs`). Each step is present only when the device's configuration asks for
//! it; an empty chain costs one branch per batch.

pub mod derivations;
pub mod derive;
pub mod expr;
pub mod report;
#[cfg(test)]
mod tests;

use crate::buffer::BufferInput;
use crate::config::{Config, DeviceConfig};
use crate::model::catalog::Version;
use crate::model::{DeviceDescriptor, PointDescriptor, SampleBatch, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The device's point ids by `point_key` (measurement, field, tags).
pub(crate) fn key_index(view: &DeviceView) -> HashMap<String, u32> {
    view.points
        .iter()
        .map(|p| (crate::model::catalog::point_key(p), p.id))
        .collect()
}

/// A sample's time: its own, or its batch's when it carries 0 (`SampleBatch::stamp`).
pub(crate) fn time_of(s: &crate::model::Sample, batch_ts: i64) -> i64 {
    if s.timestamp_ns == 0 {
        batch_ts
    } else {
        s.timestamp_ns
    }
}

/// Whether every sample of `batch` has one time (one read of its device).
fn one_read(batch: &SampleBatch) -> bool {
    let mut times = batch.samples.iter().map(|s| time_of(s, batch.timestamp_ns));
    match times.next() {
        Some(first) => times.all(|t| t == first),
        None => true,
    }
}

/// A value as a number (bools 0/1; strings have none: NaN).
pub(crate) fn numeric(v: &Value) -> f64 {
    match v {
        Value::DoubleValue(x) => *x,
        Value::IntValue(i) => *i as f64,
        Value::UintValue(u) => *u as f64,
        Value::BoolValue(b) => f64::from(u8::from(*b)),
        Value::StringValue(_) => f64::NAN,
    }
}

/// What a transform knows about its device.
#[derive(Debug, Clone, Default)]
pub struct DeviceView {
    pub device: DeviceDescriptor,
    /// The device's points in the current catalog version.
    pub points: Vec<PointDescriptor>,
}

impl DeviceView {
    /// The device's part of a catalog version (empty when the version lacks the device).
    pub fn of(version: &Version, device: u32) -> DeviceView {
        let c = &version.catalog;
        DeviceView {
            device: c
                .devices
                .iter()
                .find(|d| d.id == device)
                .cloned()
                .unwrap_or_default(),
            points: c
                .points
                .iter()
                .filter(|p| p.device == device)
                .cloned()
                .collect(),
        }
    }
}

/// One step of a device's chain.
pub trait Transform: Send {
    /// The device's catalog changed (and before the first batch).
    fn catalog(&mut self, device: &DeviceView);
    /// One poll's samples of the device; may drop, add or rewrite samples. A sample added
    /// must refer to a point of the device's catalog.
    fn apply(&mut self, batch: &mut SampleBatch);
}

/// A device's transforms, applied in order.
#[derive(Default)]
pub struct Chain {
    steps: Vec<Box<dyn Transform>>,
}

impl Chain {
    pub fn new(steps: Vec<Box<dyn Transform>>) -> Self {
        Chain { steps }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn catalog(&mut self, device: &DeviceView) {
        for s in &mut self.steps {
            s.catalog(device);
        }
    }

    pub fn apply(&mut self, batch: &mut SampleBatch) {
        for s in &mut self.steps {
            s.apply(batch);
        }
    }

    /// Applies the chain to a batch that may hold several reads of the device (a source
    /// that streams, e.g. RTDE at 500 Hz, gathers many packages into one batch): each run of
    /// samples with one time is a read, and the chain sees each read on its own, in order, as
    /// if it had come alone.
    pub fn apply_reads(&mut self, batch: &mut SampleBatch) {
        if one_read(batch) {
            self.apply(batch);
            return;
        }
        let batch_ts = batch.timestamp_ns;
        let samples = std::mem::take(&mut batch.samples);
        let mut out = Vec::with_capacity(samples.len());
        let mut read = SampleBatch {
            device: batch.device,
            seq: batch.seq,
            timestamp_ns: 0,
            samples: Vec::new(),
        };
        let mut rest = samples.into_iter().peekable();
        while let Some(first) = rest.next() {
            let ts = time_of(&first, batch_ts);
            read.timestamp_ns = ts;
            read.samples.clear();
            read.samples.push(first);
            while let Some(s) = rest.next_if(|s| time_of(s, batch_ts) == ts) {
                read.samples.push(s);
            }
            self.apply(&mut read);
            out.extend(read.samples.drain(..).map(|mut s| {
                if s.timestamp_ns == 0 {
                    s.timestamp_ns = ts;
                }
                s
            }));
        }
        batch.samples = out;
    }
}

/// Where a source hands one device's batches: the device's chain, then the buffer.
pub struct DeviceOutput {
    device: u32,
    chain: Chain,
    input: BufferInput,
}

impl DeviceOutput {
    pub fn new(device: u32, mut chain: Chain, version: &Version, input: BufferInput) -> Self {
        if !chain.is_empty() {
            chain.catalog(&DeviceView::of(version, device));
        }
        DeviceOutput {
            device,
            chain,
            input,
        }
    }

    /// The catalog changed (the source changed it, or a reload did).
    pub fn catalog_changed(&mut self, version: &Version) {
        if !self.chain.is_empty() {
            self.chain.catalog(&DeviceView::of(version, self.device));
        }
    }

    /// Runs the chain over one poll's batch and queues what remains for the buffer. Returns
    /// whether the buffer accepted it (see `BufferInput::publish`). The batch is one read of
    /// the device, whatever times its samples carry (a Modbus poll of several requests, a
    /// Sparkplug message with a time per metric).
    pub async fn publish(&mut self, mut batch: SampleBatch) -> bool {
        if !self.chain.is_empty() {
            self.chain.apply(&mut batch);
        }
        self.input.publish(batch).await
    }

    /// As `publish`, for a batch of several reads gathered by a streaming source (RTDE
    /// packages): the chain sees each run of samples with one time as its own read
    /// (`Chain::apply_reads`).
    pub async fn publish_reads(&mut self, mut batch: SampleBatch) -> bool {
        if !self.chain.is_empty() {
            self.chain.apply_reads(&mut batch);
        }
        self.input.publish(batch).await
    }
    /// A ticket covering everything published so far; `durable(ticket)` waits until it is on
    /// disk (an MQTT QoS 1 message is acknowledged only then).
    pub fn ticket(&self) -> u64 {
        self.input.ticket()
    }

    /// The buffer input, for waiting on durability without holding the output.
    pub fn input(&self) -> BufferInput {
        self.input.clone()
    }
}

/// Builds each device's chain from its configuration. Keeps the configuration only of the
/// devices that have a step (a plain device's chain is empty, so its points are not held).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    devices: Arc<HashMap<String, Arc<DeviceConfig>>>,
    /// Where derivations keep their state across restarts (active alarms).
    state_dir: Option<PathBuf>,
    window: Duration,
}

impl Plan {
    pub fn new(config: &Config) -> Plan {
        Plan {
            devices: Arc::new(
                config
                    .devices
                    .iter()
                    .filter(|d| {
                        derive::Derived::applies(d)
                            || derivations::Derivations::applies(d)
                            || report::ReportByException::applies(d)
                    })
                    .map(|d| (d.id.clone(), Arc::new(d.clone())))
                    .collect(),
            ),
            state_dir: Some(config.agent.data_dir.join("derived")),
            window: config.agent.state_window,
        }
    }

    pub fn chain(&self, device: &str) -> Chain {
        match self.devices.get(device) {
            Some(d) => self.chain_for(d.clone()),
            None => Chain::default(),
        }
    }

    /// The chain of a device configured as `d` (a device a source learns at run time).
    pub fn chain_for(&self, d: Arc<DeviceConfig>) -> Chain {
        let mut steps: Vec<Box<dyn Transform>> = Vec::new();
        if let Some(t) = derive::Derived::for_device(d.clone()) {
            steps.push(Box::new(t));
        }
        if let Some(t) =
            derivations::Derivations::for_device(d.clone(), self.state_dir.clone(), self.window)
        {
            steps.push(Box::new(t));
        }
        if let Some(t) = report::ReportByException::for_device(d.clone()) {
            steps.push(Box::new(t));
        }
        Chain::new(steps)
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::model::catalog::Registry;
    use crate::model::{Sample, Value};

    /// Drops samples whose value equals the previous one of the same point.
    struct DropRepeats(std::collections::HashMap<u32, Option<Value>>, usize);

    impl Transform for DropRepeats {
        fn catalog(&mut self, device: &DeviceView) {
            self.1 = device.points.len();
        }
        fn apply(&mut self, batch: &mut SampleBatch) {
            batch.samples.retain(|s| {
                let prev = self.0.insert(s.point, s.value.clone());
                prev.flatten() != s.value
            });
        }
    }

    #[test]
    fn a_chain_sees_its_device_and_may_drop_samples() {
        let mut r = Registry::new("l", "", Vec::new(), None);
        let ids = r.set_device(
            DeviceDescriptor {
                name: "d".into(),
                ..Default::default()
            },
            vec![PointDescriptor {
                name: "x".into(),
                ..Default::default()
            }],
        );
        let v = r.version();
        let mut chain = Chain::new(vec![Box::new(DropRepeats(Default::default(), 0))]);
        chain.catalog(&DeviceView::of(&v, ids.device));
        let sample = |x: f64| Sample {
            point: ids.points[0],
            value: Some(Value::DoubleValue(x)),
            ..Default::default()
        };
        let mut b = SampleBatch {
            samples: vec![sample(1.0)],
            ..Default::default()
        };
        chain.apply(&mut b);
        assert_eq!(b.samples.len(), 1);
        let mut b = SampleBatch {
            samples: vec![sample(1.0)],
            ..Default::default()
        };
        chain.apply(&mut b);
        assert!(b.samples.is_empty());
    }
}
