//! Builds the `Catalog` of a line from its configuration: one `DeviceDescriptor` per device,
//! one `PointDescriptor` per value (array elements each get their own), plus the four health
//! points every device writes to `linetap_device`. Ids are dense indexes, assigned in config
//! order, so sinks can look descriptors up by index.

use super::{Catalog, DataType, DeviceDescriptor, EnumLabel, PointDescriptor, Tag};
use crate::config::{Config, DeviceConfig, PointConfig, PointType};

/// The measurement of device health records (PRODUCT.md).
pub const HEALTH_MEASUREMENT: &str = "linetap_device";

/// Ids of one device's health points, in catalog order.
#[derive(Debug, Clone, Copy)]
pub struct HealthIds {
    pub up: u32,
    pub latency_ms: u32,
    pub errors: u32,
    pub last_error: u32,
}

/// The catalog plus, for each configured point, the ids of its elements.
#[derive(Debug, Clone)]
pub struct BuiltCatalog {
    pub catalog: Catalog,
    /// `point_ids[device][point]` = id of element 1; the others follow consecutively.
    pub point_ids: Vec<Vec<u32>>,
    pub health: Vec<HealthIds>,
}

fn tags(pairs: &[(String, String)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(k, v)| Tag {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// The Sparkplug-coded data type a point's values carry.
pub fn data_type(p: &PointConfig) -> DataType {
    if p.is_scaled() {
        return DataType::Double;
    }
    match p.kind {
        PointType::Bool => DataType::Boolean,
        PointType::U16 => DataType::Uint16,
        PointType::I16 => DataType::Int16,
        PointType::U32 => DataType::Uint32,
        PointType::I32 => DataType::Int32,
        PointType::U64 => DataType::Uint64,
        PointType::I64 => DataType::Int64,
        PointType::F32 => DataType::Float,
        PointType::F64 => DataType::Double,
        PointType::String => DataType::String,
    }
}

fn device_descriptor(id: u32, d: &DeviceConfig) -> DeviceDescriptor {
    DeviceDescriptor {
        id,
        name: d.id.clone(),
        kind: d.kind.as_str().to_string(),
        cell: d.cell.clone().unwrap_or_default(),
        tags: tags(&d.tags),
        protocol: d.protocol.as_str().to_string(),
        address: d.address.clone(),
        unit: d.unit as u32,
    }
}

pub fn build(config: &Config) -> BuiltCatalog {
    let mut catalog = Catalog {
        line: config.line.id.clone(),
        site: config.line.site.clone().unwrap_or_default(),
        tags: tags(&config.line.tags),
        devices: Vec::new(),
        points: Vec::new(),
    };
    let mut point_ids = Vec::new();
    let mut health = Vec::new();
    for (di, d) in config.devices.iter().enumerate() {
        let dev = di as u32;
        catalog.devices.push(device_descriptor(dev, d));
        let mut ids = Vec::new();
        for p in &d.points {
            ids.push(catalog.points.len() as u32);
            for element in 1..=p.count {
                let mut t = tags(&p.tags);
                if let Some(key) = &p.index_tag {
                    t.push(Tag {
                        key: key.clone(),
                        value: element.to_string(),
                    });
                }
                let id = catalog.points.len() as u32;
                catalog.points.push(PointDescriptor {
                    id,
                    device: dev,
                    measurement: p.measurement.clone(),
                    name: p.name.clone(),
                    tags: t,
                    unit: p.unit.clone(),
                    data_type: data_type(p) as i32,
                    enum_labels: p
                        .enum_labels
                        .iter()
                        .map(|(code, label)| EnumLabel {
                            code: *code,
                            label: label.clone(),
                        })
                        .collect(),
                    writable: p.writable,
                });
            }
        }
        point_ids.push(ids);
        let mut add = |name: &str, dt: DataType, unit: &str| {
            let id = catalog.points.len() as u32;
            catalog.points.push(PointDescriptor {
                id,
                device: dev,
                measurement: HEALTH_MEASUREMENT.to_string(),
                name: name.to_string(),
                tags: Vec::new(),
                unit: unit.to_string(),
                data_type: dt as i32,
                enum_labels: Vec::new(),
                writable: false,
            });
            id
        };
        health.push(HealthIds {
            up: add("up", DataType::Boolean, ""),
            latency_ms: add("latency_ms", DataType::Double, "ms"),
            errors: add("errors", DataType::Uint64, ""),
            last_error: add("last_error", DataType::String, ""),
        });
    }
    BuiltCatalog {
        catalog,
        point_ids,
        health,
    }
}
