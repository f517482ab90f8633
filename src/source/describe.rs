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
pub fn device(d: &DeviceConfig, address: &str, unit: u32) -> DeviceDescriptor {
    DeviceDescriptor {
        id: 0,
        name: d.id.clone(),
        kind: d.kind.as_str().to_string(),
        cell: d.cell.clone().unwrap_or_default(),
        tags: tags(&d.tags),
        protocol: d.protocol.to_string(),
        address: address.to_string(),
        unit,
    }
}

/// One descriptor per value of the device's points: each point's array elements in turn (an
/// array's elements carry the `index_tag`, 1-based); then the points the edge derivations
/// write (`derived_outputs`).
pub fn points(d: &DeviceConfig) -> Vec<PointDescriptor> {
    let mut out = Vec::with_capacity(d.points.iter().map(|p| p.count as usize).sum());
    for p in &d.points {
        out.extend(elements(p));
    }
    out.extend(derived_outputs(d));
    out
}

/// The tags of element `element` (1-based) of `p`.
pub fn element_tags(p: &PointConfig, element: u16) -> Vec<Tag> {
    let mut t = tags(&p.tags);
    if let Some(key) = &p.index_tag {
        t.push(Tag {
            key: key.clone(),
            value: element.to_string(),
        });
    }
    if let Some((key, values)) = p.element_tag.as_deref() {
        if let Some(v) = values.get(usize::from(element).wrapping_sub(1)) {
            t.push(Tag {
                key: key.clone(),
                value: v.clone(),
            });
        }
    }
    t
}

/// Measurement of alarm episodes.
pub const ALARM_MEASUREMENT: &str = "linetap_alarm";
/// Measurement of time in state and availability.
pub const STATE_TIME_MEASUREMENT: &str = "linetap_state_time";

/// The point a device's time in state is computed from: `state`, one value, with labels.
pub fn state_point(d: &DeviceConfig) -> Option<&PointConfig> {
    d.points
        .iter()
        .find(|p| p.name == "state" && p.count == 1 && !p.enum_labels.is_empty())
}

/// The `linetap_state_time` field of a state label.
pub fn state_field(label: &str) -> String {
    format!("{label}_s")
}

/// What the edge derivations write for a device: per alarm point (and element)
/// `linetap_alarm` code, code_label, active, duration with tag `point`; for the state point
/// `linetap_state_time` seconds per label, `unknown_s` and `availability`; per cycle counter
/// `cycle_time` and `parts_per_hour` in its measurement.
pub fn derived_outputs(d: &DeviceConfig) -> Vec<PointDescriptor> {
    let mut out = Vec::new();
    let desc =
        |measurement: &str, name: &str, tags: Vec<Tag>, dt: DataType, unit: &str| PointDescriptor {
            id: 0,
            device: 0,
            measurement: measurement.to_string(),
            name: name.to_string(),
            tags,
            unit: unit.to_string(),
            data_type: dt as i32,
            enum_labels: Vec::new(),
            writable: false,
        };
    for p in d.points.iter().filter(|p| p.alarm) {
        for e in 1..=p.count {
            let mut t = element_tags(p, e);
            t.push(Tag {
                key: "point".into(),
                value: p.name.clone(),
            });
            for (name, dt, unit) in alarm_fields() {
                out.push(desc(ALARM_MEASUREMENT, name, t.clone(), dt, unit));
            }
        }
    }
    if let Some(p) = state_point(d) {
        for f in state_fields(p) {
            out.push(desc(
                STATE_TIME_MEASUREMENT,
                &f,
                Vec::new(),
                DataType::Double,
                "s",
            ));
        }
        out.push(desc(
            STATE_TIME_MEASUREMENT,
            "availability",
            Vec::new(),
            DataType::Double,
            "",
        ));
    }
    for p in d.points.iter().filter(|p| p.cycles) {
        for e in 1..=p.count {
            let t = element_tags(p, e);
            out.push(desc(
                &p.measurement,
                "cycle_time",
                t.clone(),
                DataType::Double,
                "s",
            ));
            out.push(desc(
                &p.measurement,
                "parts_per_hour",
                t,
                DataType::Double,
                "1/h",
            ));
        }
    }
    out
}

/// The fields of an alarm episode.
pub fn alarm_fields() -> [(&'static str, DataType, &'static str); 4] {
    [
        ("code", DataType::Int64, ""),
        ("code_label", DataType::String, ""),
        ("active", DataType::Boolean, ""),
        ("duration", DataType::Double, "s"),
    ]
}

/// The seconds fields of `linetap_state_time`: one per label, and `unknown_s` (time the
/// device did not answer) when no label is "unknown".
pub fn state_fields(p: &PointConfig) -> Vec<String> {
    let mut f: Vec<String> = p.enum_labels.iter().map(|(_, l)| state_field(l)).collect();
    if !p.enum_labels.iter().any(|(_, l)| l == "unknown") {
        f.push(state_field("unknown"));
    }
    f
}

/// One descriptor per element of `p`.
pub fn elements(p: &PointConfig) -> Vec<PointDescriptor> {
    let mut out = Vec::with_capacity(p.count as usize);
    {
        for element in 1..=p.count {
            let t = element_tags(p, element);
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
