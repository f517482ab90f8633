//! `[[devices]]`: the keys every device has (`schema::DeviceCommon`: id, kind, cell, profile,
//! protocol, poll, report, tags, points), the choice of its source kind by `protocol`, and the
//! hand-off of the other keys to that kind (`source::SourceKind::device`, in the kind's
//! folder). Points and profiles: `points.rs`, `profile.rs`.

use super::points::{check_points, PointCtx};
use super::Ctx;
use crate::config::schema::DeviceCommon;
use crate::config::table::{fields_of, RawTable};
use crate::config::*;
use crate::source::SourceKind;
use serde_spanned::Spanned;
use std::collections::HashMap;
use std::ops::Range;
use toml::de::DeValue;

/// The `protocol` of a device that does not say.
pub const DEFAULT_PROTOCOL: &str = "modbus-tcp";

/// What a source kind is told about the device whose keys it reads.
pub struct DeviceDraft<'a> {
    pub id: &'a str,
    /// The `protocol` as written (one of the kind's).
    pub protocol: &'static str,
    /// The whole `[[devices]]` table (for "needs KEY" errors).
    pub span: Range<usize>,
    pub cell: &'a str,
    /// Where `poll` is written, when it is.
    pub poll: Option<Range<usize>>,
    pub line: &'a LineConfig,
    pub brokers: &'a [crate::mqtt::settings::BrokerConfig],
}

/// Validates `[[devices]]` tables one at a time (a large file hands them over as it parses).
pub(crate) struct Devices<'k> {
    kinds: &'k [&'k dyn SourceKind],
    line_report: Report,
    ids: HashMap<String, Range<usize>>,
    pub devices: Vec<DeviceConfig>,
    pub seen: usize,
}

impl<'k> Devices<'k> {
    pub fn new(kinds: &'k [&'k dyn SourceKind], line_report: Report) -> Devices<'k> {
        Devices {
            kinds,
            line_report,
            ids: HashMap::new(),
            devices: Vec::new(),
            seen: 0,
        }
    }

    pub fn add(
        &mut self,
        cx: &mut Ctx,
        v: Spanned<DeValue<'_>>,
        line: &LineConfig,
        brokers: &[crate::mqtt::settings::BrokerConfig],
    ) {
        self.seen += 1;
        let raw = match RawTable::of(v, "a [[devices]] entry") {
            Ok(t) => t,
            Err((at, msg)) => return cx.shape(at, msg),
        };
        if let Some(dev) = self.device(cx, raw, line, brokers) {
            self.devices.push(dev);
        }
    }

    fn device(
        &mut self,
        cx: &mut Ctx,
        mut raw: RawTable,
        line: &LineConfig,
        brokers: &[crate::mqtt::settings::BrokerConfig],
    ) -> Option<DeviceConfig> {
        let span = raw.span();
        // The kind first: which keys are shared and which are the kind's does not depend on it,
        // but the messages about keys of another kind do.
        let (p, at) = raw
            .peek_str("protocol")
            .unwrap_or((DEFAULT_PROTOCOL, span.clone()));
        let (kind, protocol) = match self
            .kinds
            .iter()
            .find_map(|k| k.protocols().iter().find(|q| **q == p).map(|q| (*k, *q)))
        {
            Some((k, q)) => (Some(k), q),
            None => {
                let known: Vec<&str> = self
                    .kinds
                    .iter()
                    .flat_map(|k| k.protocols().iter().copied())
                    .collect();
                cx.err(
                    at,
                    format!(
                        "unknown protocol {p:?}: one of {}",
                        known
                            .iter()
                            .map(|k| format!("{k:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                (None, "")
            }
        };
        // Keys of another kind: say whose they are (the kind's own struct would only say
        // "unknown field").
        if let Some(kind) = kind {
            raw.take_foreign(
                cx,
                |key| {
                    fields_of::<DeviceCommon>().contains(&key) || kind.device_keys().contains(&key)
                },
                |key| {
                    let owner = self.kinds.iter().find(|k| k.device_keys().contains(&key))?;
                    Some(format!(
                        "`{key}` belongs to {} devices (protocol = {}); this device is {protocol}",
                        owner.title(),
                        protocols(*owner)
                    ))
                },
            );
        }
        let own_points = raw.take_array("points");
        let d: DeviceCommon = raw.take(cx)?;
        let id = cx.non_empty(&d.id, span.clone(), "id", "[[devices]]");
        if let Some(i) = &d.id {
            if self.ids.contains_key(i.get_ref()) {
                cx.err(i.span(), format!("duplicate device id {:?}", i.get_ref()));
            }
            self.ids.insert(i.get_ref().clone(), i.span());
        }
        let kind = kind?;
        let profile = match &d.profile {
            Some(p) if !kind.takes_profiles() => {
                cx.err(
                    p.span(),
                    format!(
                        "profiles describe register maps and RTDE recipes: a {} device lists its points",
                        kind.title()
                    ),
                );
                None
            }
            Some(p) => super::profile::load(cx, p, kind, self.kinds),
            None => None,
        };
        let device_kind = d
            .kind
            .as_ref()
            .map(|k| *k.get_ref())
            .or(profile.as_ref().and_then(|p| p.kind))
            .unwrap_or(DeviceKind::Other);
        let cell = d
            .cell
            .as_ref()
            .map(|c| c.get_ref().clone())
            .unwrap_or_default();
        let draft = DeviceDraft {
            id: &id,
            protocol,
            span: span.clone(),
            cell: &cell,
            poll: d.poll.as_ref().map(|p| p.span()),
            line,
            brokers,
        };
        let settings = kind.device(cx, raw, &draft);
        let poll = d
            .poll
            .as_ref()
            .map(|p| p.get_ref().0)
            .unwrap_or(Duration::from_secs(1));
        let tags = cx.tags(&d.tags, "device");
        let report = super::report(cx, &d.report, self.line_report);
        let pc = PointCtx {
            kind: device_kind,
            poll,
            report,
            source: kind,
            kinds: self.kinds,
            device: settings.as_ref(),
            line: Some(line),
            cell: &cell,
            id: &id,
            in_profile: false,
        };
        let profile_at = d.profile.as_ref().map(|p| p.span()).unwrap_or(span.clone());
        let listed = !own_points.is_empty();
        let checked = super::profile::device_points(
            cx,
            own_points,
            profile.as_deref().map(|p| (p, profile_at.clone())),
            &pc,
        );
        check_points(cx, &checked, profile_at, &id, kind);
        let settings = settings?;
        if !listed && d.profile.is_none() && !kind.points_optional(&settings) {
            cx.err(span, format!("device {id:?} has no points"));
        }
        // Exactly as many as there are: a collect in place keeps the larger `Checked` buffer
        // (and growth leaves up to a third spare), on a line of 20,000 listed points megabytes.
        let mut points: Vec<PointConfig> = checked.into_iter().map(|c| c.config).collect();
        points.shrink_to_fit();
        Some(DeviceConfig {
            id,
            kind: device_kind,
            cell: d.cell.as_ref().map(|c| c.get_ref().clone()),
            profile: d.profile.as_ref().map(|p| p.get_ref().clone()),
            protocol,
            poll,
            tags,
            points,
            settings,
        })
    }
}

/// A kind's `protocol` values, as a message lists them.
pub(crate) fn protocols(kind: &dyn SourceKind) -> String {
    kind.protocols()
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(" | ")
}
