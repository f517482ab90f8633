//! Configured devices and points as catalog descriptors: what every source kind whose points
//! come from the configuration file registers (Modbus today; MQTT JSON devices next).

use crate::config::{DeviceConfig, PointConfig, PointType};
use crate::model::catalog::tags;
use crate::model::{DataType, DeviceDescriptor, EnumLabel, PointDescriptor, Tag};

/// The Sparkplug-coded data type a point's values carry.
pub fn data_type(p: &PointConfig) -> DataType {
    if p.is_scaled() {
        return DataType::Double;
    }
    match p.kind {
        PointType::Bool => DataType::Boolean,
        PointType::U8 => DataType::Uint8,
        PointType::I8 => DataType::Int8,
        PointType::F16 => DataType::Float,
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

/// The device's descriptor (its id is given by the registry).
pub fn device(d: &DeviceConfig) -> DeviceDescriptor {
    DeviceDescriptor {
        id: 0,
        name: d.id.clone(),
        kind: d.kind.as_str().to_string(),
        cell: d.cell.clone().unwrap_or_default(),
        tags: tags(&d.tags),
        protocol: d.protocol.as_str().to_string(),
        address: d.address.clone(),
        unit: d.unit as u32,
    }
}

/// One descriptor per value of the device's points: each point's array elements in turn (an
/// array's elements carry the `index_tag`, 1-based).
pub fn points(d: &DeviceConfig) -> Vec<PointDescriptor> {
    let mut out = Vec::with_capacity(d.points.iter().map(|p| p.count as usize).sum());
    for p in &d.points {
        for element in 1..=p.count {
            let mut t = tags(&p.tags);
            if let Some(key) = &p.index_tag {
                t.push(Tag {
                    key: key.clone(),
                    value: element.to_string(),
                });
            }
            out.push(PointDescriptor {
                id: 0,
                device: 0,
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
    out
}
