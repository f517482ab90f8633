//! Modbus sources: the read planner and decoder (pure), the links (TCP, RTU) and the bus
//! scheduler that polls every device of one bus over its link, and the bus budget (pure).
//! `build` groups the configured Modbus devices by bus: one `Bus` component per serial port,
//! TCP address or RTU-over-TCP gateway.

pub mod budget;
pub mod check;
pub mod config;
pub mod decode;
pub mod link;
pub mod plan;
pub mod poller;
pub mod rtu;
pub mod tcp;
pub mod timer;

use super::{describe, Source, SourceContext};
use crate::component::{fingerprint, ComponentId, Kind};
use crate::config::{Config, DeviceConfig, ModbusDevice, Transport};
use crate::model::catalog::{health_points, HealthIds, Registry};
use link::Link;
use plan::plan_reads;
use poller::DevicePlan;
use rtu::{RtuLink, RtuTarget};
use std::collections::BTreeMap;
use std::time::Duration;
use tcp::TcpLink;
use tokio::task::JoinHandle;

/// The Modbus devices of a configuration with their Modbus settings, in file order.
pub fn devices(config: &Config) -> impl Iterator<Item = (&DeviceConfig, &ModbusDevice)> {
    config
        .devices
        .iter()
        .filter_map(|d| Some((d, d.settings::<ModbusDevice>()?)))
}

/// Registers a device's points and health points; returns its read plan.
pub fn register(d: &DeviceConfig, m: &ModbusDevice, registry: &mut Registry) -> DevicePlan {
    let mut points = describe::points(d);
    let values = points.len();
    points.extend(health_points());
    let ids = registry.set_device(describe::device(d, &m.address, m.unit as u32), points);
    let h = &ids.points[values..];
    DevicePlan {
        device: ids.device,
        name: d.id.clone(),
        unit: m.unit,
        timeout: m.timeout,
        turnaround: m.turnaround,
        retries: m.retries,
        probe_interval: m.probe_interval,
        groups: plan_reads(d, m, &ids.points[..values]),
        health: HealthIds {
            up: h[0],
            latency_ms: h[1],
            errors: h[2],
            last_error: h[3],
        },
    }
}

/// One bus: the devices sharing a link, polled by one scheduler.
pub struct Bus {
    id: ComponentId,
    devices: Vec<ComponentId>,
    link: Link,
    plans: Vec<DevicePlan>,
}

impl Source for Bus {
    fn id(&self) -> &ComponentId {
        &self.id
    }

    fn devices(&self) -> Vec<ComponentId> {
        self.devices.clone()
    }

    fn start(self: Box<Self>, ctx: SourceContext) -> JoinHandle<()> {
        let outputs = self
            .plans
            .iter()
            .map(|p| ctx.output(&p.name, p.device))
            .collect();
        let metrics = self
            .plans
            .iter()
            .map(|p| ctx.metrics.devices.add(&p.name))
            .collect();
        let beat = ctx
            .metrics
            .liveness
            .register(&format!("bus {}", self.id.name));
        tokio::spawn(poller::run(
            self.link,
            self.plans,
            outputs,
            metrics,
            beat,
            ctx.shutdown,
        ))
    }
}

/// The Modbus devices of a configuration, registered and grouped by bus (in bus-name order).
pub fn buses(config: &Config, registry: &mut Registry) -> Vec<Bus> {
    let mut by_bus: BTreeMap<String, Vec<(&DeviceConfig, &ModbusDevice)>> = BTreeMap::new();
    for (d, m) in devices(config) {
        by_bus.entry(m.bus()).or_default().push((d, m));
    }
    // Register in config order, so ids follow the file on a fresh buffer.
    let mut plans: BTreeMap<String, DevicePlan> = devices(config)
        .map(|(d, m)| (d.id.clone(), register(d, m, registry)))
        .collect();
    by_bus
        .into_iter()
        .map(|(name, devices)| {
            let connect_timeout = devices
                .iter()
                .map(|(_, m)| m.timeout)
                .max()
                .unwrap_or(Duration::from_millis(500));
            let link = link_for(devices[0].1, connect_timeout);
            Bus {
                id: ComponentId {
                    kind: Kind::Source,
                    fingerprint: fingerprint(&devices),
                    name,
                },
                devices: devices
                    .iter()
                    .map(|(d, _)| ComponentId {
                        kind: Kind::Device,
                        name: d.id.clone(),
                        fingerprint: fingerprint(d),
                    })
                    .collect(),
                link,
                plans: devices
                    .iter()
                    .filter_map(|(d, _)| plans.remove(&d.id))
                    .collect(),
            }
        })
        .collect()
}

/// The link a device is reached over (a bus's first device decides for the bus).
pub fn link_for(d: &ModbusDevice, connect_timeout: Duration) -> Link {
    match (d.transport, &d.serial) {
        (Transport::Rtu, Some(s)) => {
            Link::Rtu(RtuLink::new(RtuTarget::Serial(s.clone()), connect_timeout))
        }
        (Transport::RtuOverTcp, _) => Link::Rtu(RtuLink::new(
            RtuTarget::Tcp(d.address.clone()),
            connect_timeout,
        )),
        _ => Link::Tcp(TcpLink::new(d.address.clone(), connect_timeout)),
    }
}

/// The Modbus source kind's components.
pub fn build(config: &Config, registry: &mut Registry) -> Vec<Box<dyn Source>> {
    buses(config, registry)
        .into_iter()
        .map(|b| Box::new(b) as Box<dyn Source>)
        .collect()
}

impl Bus {
    pub fn plans(&self) -> &[DevicePlan] {
        &self.plans
    }
    pub fn name(&self) -> &str {
        &self.id.name
    }
}

/// The read plan of every Modbus device of a configuration, in config order (for `check`).
pub fn device_plans(config: &Config) -> Vec<DevicePlan> {
    let mut registry = Registry::new(&config.line.id, "", Vec::new(), None);
    devices(config)
        .map(|(d, m)| register(d, m, &mut registry))
        .collect()
}
