//! One type per field. InfluxDB keeps a single type for a field of a measurement (per shard,
//! across every series): once `joint,device=r1 temperature=31i` is stored, a line with
//! `temperature=31.5` for another robot is refused (a field type conflict), and its samples
//! end in the dead letters. Points of different devices that write the same field of the same
//! measurement with different types are therefore found before they run: `check` warns and
//! `run` logs it at start. A warning, not an error: VictoriaMetrics and files take both.

use crate::config::{Config, DeviceConfig, PointConfig};
use crate::model::DataType;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The type a field has in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FieldType {
    Float,
    Integer,
    /// A `u64` (unsigned through the InfluxDB v2 API, an integer elsewhere).
    Unsigned,
    Boolean,
    String,
}

impl FieldType {
    pub fn of(data_type: DataType) -> Option<FieldType> {
        Some(match data_type {
            DataType::Float | DataType::Double => FieldType::Float,
            DataType::Uint64 => FieldType::Unsigned,
            DataType::Boolean => FieldType::Boolean,
            DataType::String => FieldType::String,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Uint8
            | DataType::Uint16
            | DataType::Uint32 => FieldType::Integer,
            _ => return None,
        })
    }

    fn text(self) -> &'static str {
        match self {
            FieldType::Float => "a float",
            FieldType::Integer => "an integer",
            FieldType::Unsigned => "an unsigned integer (u64)",
            FieldType::Boolean => "a boolean",
            FieldType::String => "a string",
        }
    }
}

/// Where a field's type comes from: the first point (of the first device) that writes it so.
struct Writer {
    device: String,
    /// `point "temperature", u16, as_float`.
    what: String,
}

/// `check`'s warnings: one per field written with more than one type, naming a point of each.
pub fn warnings(config: &Config) -> Vec<String> {
    // (measurement, field) -> type -> its first writer.
    let mut fields: BTreeMap<(&str, Cow<str>), BTreeMap<FieldType, Writer>> = BTreeMap::new();
    let mut record = |measurement, field, t, writer: &dyn Fn() -> Writer| {
        fields
            .entry((measurement, field))
            .or_default()
            .entry(t)
            .or_insert_with(writer);
    };
    for d in &config.devices {
        for p in written(d) {
            let Some(t) = FieldType::of(crate::source::describe::data_type(p)) else {
                continue;
            };
            let writer = || Writer {
                device: d.id.clone(),
                what: format!(
                    "point {:?}, {}{}",
                    p.name,
                    p.kind.as_str(),
                    if p.as_float {
                        ", as_float"
                    } else if p.is_scaled() && p.kind.is_integer() {
                        ", scaled"
                    } else {
                        ""
                    }
                ),
            };
            let m = p.measurement.as_str();
            record(m, Cow::Borrowed(p.name.as_str()), t, &writer);
            if !p.enum_labels.is_empty() {
                let label = Cow::Owned(format!("{}_label", p.name));
                record(m, label, FieldType::String, &writer);
            }
        }
        // What the edge derivations write into a point's own measurement.
        for p in d.points.iter().filter(|p| p.cycles) {
            for field in ["cycle_time", "parts_per_hour"] {
                let writer = || Writer {
                    device: d.id.clone(),
                    what: format!("`counter = \"cycles\"` of point {:?}", p.name),
                };
                record(
                    &p.measurement,
                    Cow::Borrowed(field),
                    FieldType::Float,
                    &writer,
                );
            }
        }
    }
    fields
        .into_iter()
        .filter(|(_, types)| types.len() > 1)
        .map(|((measurement, field), types)| {
            let by: Vec<String> = types
                .iter()
                .map(|(t, w)| format!("{} by device {:?} ({})", t.text(), w.device, w.what))
                .collect();
            let float_hint = if types.contains_key(&FieldType::Float)
                && (types.contains_key(&FieldType::Integer)
                    || types.contains_key(&FieldType::Unsigned))
            {
                " (`as_float = true` writes an integer point as a float)"
            } else {
                ""
            };
            format!(
                "field {field:?} of measurement {measurement:?} is written as {}: InfluxDB keeps one type per field and refuses the lines of the other; give these points one type{float_hint}",
                by.join(" and as ")
            )
        })
        .collect()
}

/// The points of `d` whose values are written with the type the configuration gives them: not
/// hidden; not typed by the device at run time (an OPC UA variable without `type`), unless
/// scaled, which makes any type a float.
fn written(d: &DeviceConfig) -> impl Iterator<Item = &PointConfig> {
    let kind = crate::source::kind_of(d.protocol);
    d.points.iter().filter(move |p| {
        !p.hidden && (p.is_scaled() || !kind.is_some_and(|k| k.type_from_device(p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("line.toml");
        std::fs::write(&path, text).unwrap();
        crate::config::load(&path).unwrap()
    }

    const HEAD: &str = "[line]\nid = 'l'\n[sinks.f]\ntype = 'file'\npath = '/tmp/l.lp'\n";

    #[test]
    fn an_integer_and_a_float_of_one_field_are_named_with_their_devices() {
        let cfg = load(&format!(
            "{HEAD}\
             [[devices]]\nid = 'r1'\nkind = 'robot'\naddress = '127.0.0.1:502'\n\
             [[devices.points]]\nname = 'temperature'\nmeasurement = 'joint'\naddress = 0\ntype = 'u16'\n\
             [[devices.points]]\nname = 'speed'\naddress = 1\ntype = 'i16'\n\
             [[devices]]\nid = 'r2'\nkind = 'robot'\naddress = '127.0.0.1:503'\n\
             [[devices.points]]\nname = 'temperature'\nmeasurement = 'joint'\naddress = 0\ntype = 'f32'\n\
             [[devices.points]]\nname = 'speed'\naddress = 2\ntype = 'u16'\nscale = 0.1\n\
             [[devices.points]]\nname = 'temperature'\naddress = 4\ntype = 'u16'\n"
        ));
        let w = warnings(&cfg);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert_eq!(
            w[0],
            "field \"temperature\" of measurement \"joint\" is written as a float by device \"r2\" (point \"temperature\", f32) and as an integer by device \"r1\" (point \"temperature\", u16): InfluxDB keeps one type per field and refuses the lines of the other; give these points one type (`as_float = true` writes an integer point as a float)"
        );
        assert!(
            w[1].starts_with("field \"speed\" of measurement \"robot\" is written as a float by device \"r2\" (point \"speed\", u16, scaled) and as an integer by device \"r1\""),
            "{}",
            w[1]
        );
    }

    #[test]
    fn one_type_per_field_is_quiet_and_as_float_settles_it() {
        let cfg = load(&format!(
            "{HEAD}\
             [[devices]]\nid = 'r1'\naddress = '127.0.0.1:502'\n\
             [[devices.points]]\nname = 'temperature'\naddress = 0\ntype = 'u16'\nas_float = true\n\
             [[devices.points]]\nname = 'raw'\naddress = 1\ntype = 'f32'\nhidden = true\n\
             [[devices]]\nid = 'r2'\naddress = '127.0.0.1:503'\n\
             [[devices.points]]\nname = 'temperature'\naddress = 0\ntype = 'f32'\nas_float = true\n\
             [[devices.points]]\nname = 'raw'\naddress = 2\ntype = 'u16'\n"
        ));
        assert_eq!(warnings(&cfg), Vec::<String>::new());
        // On a float type (a device overriding a profile point's `type`) it changes nothing.
        assert!(!cfg.devices[1].points[0].as_float);
    }

    #[test]
    fn an_enum_label_is_a_string_field() {
        let cfg = load(&format!(
            "{HEAD}\
             [[devices]]\nid = 'r1'\naddress = '127.0.0.1:502'\n\
             [[devices.points]]\nname = 'mode'\naddress = 0\nenum = {{ 0 = 'idle' }}\n\
             [[devices]]\nid = 'r2'\naddress = '127.0.0.1:503'\n\
             [[devices.points]]\nname = 'mode_label'\naddress = 0\n"
        ));
        let w = warnings(&cfg);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].starts_with("field \"mode_label\" of measurement \"other\" is written as an integer by device \"r2\" (point \"mode_label\", u16) and as a string by device \"r1\" (point \"mode\""),
            "{}",
            w[0]
        );
    }

    #[test]
    fn what_a_cycle_counter_derives_is_a_float_field_too() {
        let cfg = load(&format!(
            "{HEAD}\
             [[devices]]\nid = 'r1'\naddress = '127.0.0.1:502'\n\
             [[devices.points]]\nname = 'count'\naddress = 0\ntype = 'u32'\ncounter = 'cycles'\n\
             [[devices]]\nid = 'r2'\naddress = '127.0.0.1:503'\n\
             [[devices.points]]\nname = 'cycle_time'\naddress = 0\n"
        ));
        assert_eq!(
            warnings(&cfg),
            ["field \"cycle_time\" of measurement \"other\" is written as a float by device \"r1\" (`counter = \"cycles\"` of point \"count\") and as an integer by device \"r2\" (point \"cycle_time\", u16): InfluxDB keeps one type per field and refuses the lines of the other; give these points one type (`as_float = true` writes an integer point as a float)"]
        );
    }

    /// Every built-in profile, one device each, on one line: robots over Modbus, RTDE and
    /// OPC UA, drives of three makers write the same measurements, so they must agree on each
    /// field's type, or a workshop that mixes them loses one maker's lines in InfluxDB.
    #[test]
    fn the_built_in_profiles_agree_on_every_field_type() {
        let mut text = HEAD.to_string();
        for (i, (name, _)) in crate::config::profiles::BUILTIN.iter().enumerate() {
            let at = match *name {
                "ur-rtde" => "protocol = 'rtde'\naddress = '127.0.0.1'\n".to_string(),
                "opcua-robotics" => {
                    "protocol = 'opcua'\nendpoint = 'opc.tcp://127.0.0.1:4840'\n".to_string()
                }
                _ => format!("address = '127.0.0.1:{}'\n", 1000 + i),
            };
            text.push_str(&format!(
                "[[devices]]\nid = 'd{i}'\nprofile = '{name}'\n{at}"
            ));
            if *name == "cia402-statusword" {
                text.push_str("[[devices.points]]\nname = 'statusword'\naddress = 0\n");
            }
        }
        let cfg = load(&text);
        assert_eq!(cfg.devices.len(), crate::config::profiles::BUILTIN.len());
        assert_eq!(warnings(&cfg), Vec::<String>::new());
    }
}
