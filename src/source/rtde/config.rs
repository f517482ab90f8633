//! Validation of RTDE devices (`protocol = "rtde"`): the controller's address, the frequency,
//! the silence after which it is down; and their points' keys (`rtde`, `element`, `optional`),
//! beside the keys every point has (`config/validate/points.rs`).

use super::fields;
use super::protocol::FieldType;
use crate::config::table::RawTable;
use crate::config::units::ConfDuration;
use crate::config::validate::devices::DeviceDraft;
use crate::config::validate::points::{PointDraft, PointPart};
use crate::config::validate::Ctx;
use crate::config::{Config, PointType, Settings};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::time::Duration;

/// RTDE's port on the controller.
pub const DEFAULT_PORT: u16 = 30004;
/// Packages gathered before they go to the buffer when the device sets no `poll`.
pub const DEFAULT_BATCH: Duration = Duration::from_millis(100);

/// The keys of an RTDE device (besides those every device has).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtdeDeviceSection {
    pub address: Option<Spanned<String>>,
    /// Hz: at most 500 (controller major >= 5), 125 on CB3.
    pub frequency: Option<Spanned<f64>>,
    /// Connecting, each setup reply, and the silence after which the device is down.
    pub timeout: Option<ConfDuration>,
}

/// A validated RTDE device's own settings (`DeviceConfig::settings`).
#[derive(Debug, Clone, PartialEq)]
pub struct RtdeDevice {
    /// `host:port`.
    pub address: String,
    pub frequency: f64,
    pub timeout: Duration,
    /// The device's `poll` was written: packages are handed to the buffer that often (else
    /// every `DEFAULT_BATCH`).
    pub poll_given: bool,
}

/// The keys of an RTDE point.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtdePointSection {
    /// The output field.
    pub rtde: Option<Spanned<String>>,
    /// One element (1-based) of a vector field.
    pub element: Option<Spanned<i64>>,
    /// Left out of the recipe when the controller lacks the field (newer fields in profiles).
    pub optional: Option<bool>,
}

/// Where an RTDE point's value is read (`PointConfig::settings`).
#[derive(Debug, Clone, PartialEq)]
pub struct RtdePoint {
    pub field: String,
    /// The field's type as linetap knows it (`None`: a field it does not know, typed by the
    /// point's `type`; the controller's reply decides).
    pub known: Option<FieldType>,
    /// One element (0-based) of a vector field; `None`: from the first, `count` of them.
    pub element: Option<u16>,
    /// A bit of an integer field (a bool point).
    pub bit: Option<u8>,
    pub optional: bool,
}

/// The RTDE source kind (`source::KINDS`).
pub struct Kind;

impl crate::source::SourceKind for Kind {
    fn protocols(&self) -> &'static [&'static str] {
        &["rtde"]
    }
    fn title(&self) -> &'static str {
        "RTDE"
    }
    fn device_keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<RtdeDeviceSection>()
    }
    fn device(&self, cx: &mut Ctx, raw: RawTable, d: &DeviceDraft) -> Option<Settings> {
        let keys: RtdeDeviceSection = raw.finish(cx)?;
        let address = match &keys.address {
            Some(a) => match address(a.get_ref()) {
                Some(full) => full,
                None => {
                    cx.err(
                        a.span(),
                        format!(
                            "address {:?} must be HOST or HOST:PORT, for example \"10.0.3.11\" (port {DEFAULT_PORT})",
                            a.get_ref()
                        ),
                    );
                    String::new()
                }
            },
            None => {
                cx.err(
                    d.span.clone(),
                    format!(
                        "device {:?} needs `address` (the robot's HOST, port {DEFAULT_PORT})",
                        d.id
                    ),
                );
                String::new()
            }
        };
        let frequency = match &keys.frequency {
            Some(f)
                if !(f.get_ref().is_finite() && *f.get_ref() > 0.0 && *f.get_ref() <= 500.0) =>
            {
                cx.err(
                    f.span(),
                    format!(
                        "frequency {} Hz: RTDE streams at most 500 Hz (e-Series) or 125 Hz (CB3)",
                        f.get_ref()
                    ),
                );
                125.0
            }
            Some(f) => *f.get_ref(),
            None => 125.0,
        };
        Some(Settings::new(RtdeDevice {
            address,
            frequency,
            timeout: keys
                .timeout
                .map(|t| t.0)
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_millis(10)),
            poll_given: d.poll.is_some(),
        }))
    }
    fn takes_profiles(&self) -> bool {
        true
    }
    fn point_keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<RtdePointSection>()
    }
    fn point(&self, cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
        point(cx, raw, p)
    }
    fn check(&self, config: &Config, plan: &mut crate::check::Plan) {
        super::check::render(config, plan)
    }
    fn build(
        &self,
        config: &Config,
        registry: &mut crate::model::catalog::Registry,
    ) -> Vec<Box<dyn crate::source::Source>> {
        super::build(config, registry)
    }
}

/// `HOST` or `HOST:PORT` (an IPv6 literal in brackets) as `host:port`.
pub fn address(a: &str) -> Option<String> {
    let a = a.trim();
    if a.is_empty() || a.contains(char::is_whitespace) {
        return None;
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some(format!("[{host}]:{DEFAULT_PORT}")),
            p => p
                .strip_prefix(':')?
                .parse::<u16>()
                .ok()
                .map(|port| format!("[{host}]:{port}")),
        };
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            port.parse::<u16>().ok().map(|p| format!("{host}:{p}"))
        }
        Some(_) => None,
        None => Some(format!("{a}:{DEFAULT_PORT}")),
    }
}

fn point(cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
    let keys: RtdePointSection = raw.finish(cx)?;
    let name = p.name;
    if let Some(part) = p.derived_part(
        cx,
        &[
            (keys.rtde.as_ref().map(|a| a.span()), "rtde"),
            (keys.element.as_ref().map(|a| a.span()), "element"),
        ],
    ) {
        return Some(part);
    }
    let Some(field) = keys.rtde else {
        cx.err(
            p.span.clone(),
            format!(
                "point {name:?} needs `rtde = \"FIELD\"` (an RTDE output field, e.g. \"actual_q\")"
            ),
        );
        return None;
    };
    let given = p.kind.map(|k| *k.get_ref());
    let known = fields::lookup(field.get_ref());
    if known.is_none() && given.is_none() {
        let hint = match fields::closest(field.get_ref()) {
            Some(c) if c.ends_with('_') => format!(" (did you mean {c}N?)"),
            Some(c) => format!(" (did you mean {c:?}?)"),
            None => String::new(),
        };
        cx.err(
            field.span(),
            format!(
                "{:?} is not an RTDE output field linetap knows{hint}; a field of a newer controller needs the point's `type`",
                field.get_ref()
            ),
        );
        return None;
    }
    let elements = known.map(|t| t.elements()).unwrap_or(1);
    let element = match &keys.element {
        Some(e) if elements == 1 => {
            cx.err(
                e.span(),
                format!(
                    "`element` picks one value of a vector field; {:?} holds one value",
                    field.get_ref()
                ),
            );
            None
        }
        Some(e) if !(1..=elements as i64).contains(e.get_ref()) => {
            cx.err(
                e.span(),
                format!(
                    "element {} of {:?}: it has elements 1..={elements}",
                    e.get_ref(),
                    field.get_ref()
                ),
            );
            None
        }
        Some(e) => Some(*e.get_ref() as u16 - 1),
        None => None,
    };
    if elements > 1 && keys.element.is_none() && p.count != elements {
        cx.err(
            field.span(),
            format!(
                "{:?} is a {} of {elements} values: give `count = {elements}` and `index_tag = \"axis\"` for all of them, or `element = N` for one",
                field.get_ref(),
                known.map(|t| t.name()).unwrap_or("vector"),
            ),
        );
    }
    if keys.element.is_some() && p.count != 1 {
        cx.err(
            field.span(),
            format!("point {name:?} reads one element: `count` does not apply"),
        );
    }
    let natural = known.map(|t| t.point_type());
    let bit = match p.bit {
        Some(b) => {
            let width = match known {
                Some(FieldType::Uint64) => 64,
                Some(FieldType::Uint8) => 8,
                Some(FieldType::Bool) | Some(FieldType::Double) => 0,
                Some(FieldType::Vector3d) | Some(FieldType::Vector6d) => 0,
                _ => 32,
            };
            if width == 0 {
                cx.err(
                    b.span(),
                    format!(
                        "`bit` selects a bit of an integer field; {:?} is not one",
                        field.get_ref()
                    ),
                );
            } else if !(0..width).contains(b.get_ref()) {
                cx.err(
                    b.span(),
                    format!(
                        "bit {} of {:?}: it has bits 0..={}",
                        b.get_ref(),
                        field.get_ref(),
                        width - 1
                    ),
                );
            }
            if given.is_some_and(|k| k != PointType::Bool) {
                cx.err(
                    b.span(),
                    format!(
                        "`bit` makes a bool point, not {:?}",
                        given.map(|k| k.as_str()).unwrap_or("")
                    ),
                );
            }
            Some((*b.get_ref()).clamp(0, 63) as u8)
        }
        None => None,
    };
    let kind = match (bit, given, natural) {
        (Some(_), _, _) => PointType::Bool,
        (None, Some(k), _) => k,
        (None, None, Some(n)) => n,
        (None, None, None) => PointType::F64,
    };
    if kind == PointType::String {
        cx.err(
            p.kind.map(|k| k.span()).unwrap_or(field.span()),
            "RTDE fields are numbers: a point cannot be a string",
        );
    }
    Some(PointPart {
        kind,
        settings: Some(Settings::new(RtdePoint {
            field: field.get_ref().clone(),
            known,
            element,
            bit,
            optional: keys.optional.unwrap_or(false),
        })),
    })
}

/// An RTDE point's settings (`None` for a derived point).
pub fn rtde_point(p: &crate::config::PointConfig) -> Option<&RtdePoint> {
    p.settings.as_ref()?.get::<RtdePoint>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(address("10.0.3.11").as_deref(), Some("10.0.3.11:30004"));
        assert_eq!(address("ur5:30004").as_deref(), Some("ur5:30004"));
        assert_eq!(address("[::1]").as_deref(), Some("[::1]:30004"));
        assert_eq!(address("[::1]:7").as_deref(), Some("[::1]:7"));
        assert_eq!(address("::1"), None);
        assert_eq!(address("host:port"), None);
        assert_eq!(address(""), None);
    }
}
