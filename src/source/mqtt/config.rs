//! Validation of `[brokers.NAME]` and of devices that publish (`protocol = "mqtt"`): their
//! broker, topic, format, QoS, payload timestamps and staleness; and their points' keys
//! (`json`, `topic`, `metric`), beside the keys every point has (`config/validate/points.rs`).

use crate::config::schema::SparkplugSection;
use crate::config::table::RawTable;
use crate::config::units::ConfDuration;
use crate::config::validate::devices::DeviceDraft;
use crate::config::validate::points::{PointDraft, PointPart};
use crate::config::validate::Ctx;
use crate::config::{LineConfig, Settings};
use crate::mqtt::settings::{self, BrokerConfig, ConnectionSection};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::time::Duration;

/// The keys of `[brokers.NAME]` besides its connection's (`ConnectionSection`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerSection {
    /// The Sparkplug host id of linetap's STATE on this broker (brokers of sparkplug-b devices).
    sparkplug_host_id: Option<Spanned<String>>,
}

/// Every `[brokers.NAME]`, and per broker the Sparkplug host id of linetap's STATE
/// (`sparkplug_host_id`, default `linetap-{line}`; one topic level, so without `+`, `/` or
/// `#`; only a broker of sparkplug-b devices uses it).
pub(crate) fn brokers(
    cx: &mut Ctx,
    raw: Vec<(Spanned<String>, Spanned<toml::de::DeValue<'_>>)>,
    line: &str,
) -> (Vec<BrokerConfig>, BTreeMap<String, String>) {
    let mut brokers = Vec::new();
    let mut host_ids = BTreeMap::new();
    for (name, v) in raw {
        let mut table = match RawTable::of(v, "a [brokers.NAME] entry") {
            Ok(t) => t,
            Err((at, msg)) => {
                cx.shape(at, msg);
                continue;
            }
        };
        let span = table.span();
        let Some(connection) = table.take::<ConnectionSection>(cx) else {
            continue;
        };
        let Some(own) = table.finish::<BrokerSection>(cx) else {
            continue;
        };
        if !valid_name(name.get_ref()) {
            cx.err(
                name.span(),
                format!(
                    "broker name {:?}: use letters, digits, '-' and '_'",
                    name.get_ref()
                ),
            );
        }
        brokers.push(settings::validate(
            cx,
            &connection,
            name.get_ref(),
            span,
            format!("linetap-{line}-{}", name.get_ref()),
        ));
        let id = match &own.sparkplug_host_id {
            Some(h) => {
                let v = h.get_ref();
                if v.is_empty() || v.contains(['+', '/', '#', '\0']) || v.len() > 1024 {
                    cx.err(
                        h.span(),
                        format!("sparkplug_host_id {v:?}: not empty, and without +, / or # (it is one topic level: spBv1.0/STATE/HOST_ID)"),
                    );
                }
                v.clone()
            }
            None => format!("linetap-{line}").replace(['+', '/', '#', '\0'], "_"),
        };
        host_ids.insert(name.get_ref().clone(), id);
    }
    (brokers, host_ids)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Expands `{site}`, `{line}`, `{cell}` and `{device}` in a topic, and checks it is an exact
/// topic (no wildcards, not empty, no NUL).
pub(crate) fn topic(
    cx: &mut Ctx,
    raw: &Spanned<String>,
    line: &LineConfig,
    cell: &str,
    device: &str,
) -> String {
    let t = raw
        .get_ref()
        .replace("{site}", line.site.as_deref().unwrap_or(""))
        .replace("{line}", &line.id)
        .replace("{cell}", cell)
        .replace("{device}", device);
    if t.is_empty() {
        cx.err(raw.span(), "topic must not be empty");
    } else if t.contains(['+', '#']) {
        cx.err(
            raw.span(),
            "a device reads one exact topic: no wildcards (+, #); give each point its own `topic` if it has several",
        );
    } else if t.contains('\0') || t.len() > 65535 {
        cx.err(raw.span(), "topic is not a valid MQTT topic");
    } else if t.contains('{') && t.contains('}') {
        cx.err(
            raw.span(),
            format!("topic {t:?}: only {{site}}, {{line}}, {{cell}} and {{device}} expand"),
        );
    }
    t
}

/// Metrics a Sparkplug device's births may bring unless `max_metrics` says otherwise.
/// A device that publishes to a broker.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttDevice {
    /// The `[brokers.NAME]` it is read through.
    pub broker: String,
    /// The device's topic, expanded (empty with format value, where each point has a topic).
    pub topic: String,
    pub format: MqttFormat,
    pub qos: u8,
    /// json: a pointer to the sample time in the payload.
    pub timestamp: Option<String>,
    pub timestamp_format: TimestampFormat,
    /// Nothing for this long: the device is down.
    pub stale_after: Duration,
    /// sparkplug-b: (group, edge node, device under it or none for the node's own metrics).
    pub sparkplug: Option<(String, String, Option<String>)>,
    /// sparkplug-b: the most metrics the device's births may bring (default 2,000).
    pub max_metrics: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttFormat {
    Json,
    Value,
    SparkplugB,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampFormat {
    Unix,
    UnixMs,
    UnixUs,
    UnixNs,
    Rfc3339,
}

pub const DEFAULT_MAX_METRICS: usize = 2_000;

/// The MQTT part of a device: its broker, topic, format and the rest. Modbus keys are errors.
/// The keys of an MQTT device (besides those every device has).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttDeviceSection {
    /// The `[brokers.NAME]` it is read through.
    pub broker: Option<Spanned<String>>,
    /// The topic its messages arrive on ({site} {line} {cell} {device} expand).
    pub topic: Option<Spanned<String>>,
    /// json | value | sparkplug-b.
    pub format: Option<Spanned<String>>,
    pub qos: Option<Spanned<i64>>,
    /// json: a JSON pointer to the sample time.
    pub timestamp: Option<Spanned<String>>,
    pub timestamp_format: Option<Spanned<String>>,
    /// Nothing for this long and the device is down.
    pub stale_after: Option<Spanned<ConfDuration>>,
    /// sparkplug-b: the edge node (and device) this device is.
    pub sparkplug: Option<Spanned<SparkplugSection>>,
    /// sparkplug-b: the most metrics the device's births may bring.
    pub max_metrics: Option<Spanned<i64>>,
}

/// The MQTT source kind (`source::KINDS`).
pub struct Kind;

impl crate::source::SourceKind for Kind {
    fn protocols(&self) -> &'static [&'static str] {
        &["mqtt"]
    }
    fn title(&self) -> &'static str {
        "MQTT"
    }
    fn device_keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<MqttDeviceSection>()
    }
    fn device(&self, cx: &mut Ctx, raw: RawTable, d: &DeviceDraft) -> Option<Settings> {
        let section: MqttDeviceSection = raw.finish(cx)?;
        Some(Settings::new(device(cx, &section, d)))
    }
    fn point_keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<MqttPointSection>()
    }
    fn point(&self, cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
        point(cx, raw, p)
    }
    fn check(&self, config: &crate::config::Config, plan: &mut crate::check::Plan) {
        super::check::render(config, plan)
    }
    fn type_from_device(&self, p: &crate::config::PointConfig) -> bool {
        mqtt_point(p).kind_from_birth
    }
    fn points_optional(&self, settings: &Settings) -> bool {
        // A sparkplug-b device without points takes every metric of its birth.
        settings
            .get::<MqttDevice>()
            .is_some_and(|m| m.format == MqttFormat::SparkplugB)
    }
    fn build(
        &self,
        config: &crate::config::Config,
        registry: &mut crate::model::catalog::Registry,
    ) -> Vec<Box<dyn crate::source::Source>> {
        super::build(config, registry)
    }
}

fn device(cx: &mut Ctx, d: &MqttDeviceSection, draft: &DeviceDraft) -> MqttDevice {
    let span = draft.span.clone();
    let id = draft.id;
    let line = draft.line;
    let brokers = draft.brokers;
    if let Some(at) = &draft.poll {
        cx.err(
            at.clone(),
            "an MQTT device is not polled: `poll` does not apply (use `stale_after`)",
        );
    }
    let broker = match &d.broker {
        None => {
            cx.err(
                span.clone(),
                format!("MQTT device {id:?} needs `broker` (a [brokers.NAME] table)"),
            );
            String::new()
        }
        Some(b) => {
            if !brokers.iter().any(|x| &x.name == b.get_ref()) {
                let known: Vec<&str> = brokers.iter().map(|x| x.name.as_str()).collect();
                cx.err(
                    b.span(),
                    if known.is_empty() {
                        format!(
                            "broker {:?} is not defined: add [brokers.{}] with its `url`",
                            b.get_ref(),
                            b.get_ref()
                        )
                    } else {
                        format!(
                            "broker {:?} is not defined; defined: {}",
                            b.get_ref(),
                            known.join(", ")
                        )
                    },
                );
            }
            b.get_ref().clone()
        }
    };
    let format = match &d.format {
        None => MqttFormat::Json,
        Some(f) => match f.get_ref().as_str() {
            "json" => MqttFormat::Json,
            "value" => MqttFormat::Value,
            "sparkplug-b" => MqttFormat::SparkplugB,
            other => {
                cx.err(
                    f.span(),
                    format!("format {other:?}: use \"json\", \"value\" or \"sparkplug-b\""),
                );
                MqttFormat::Json
            }
        },
    };
    let cell = draft.cell;
    let sparkplug = match (&d.sparkplug, format) {
        (Some(sp), MqttFormat::SparkplugB) => {
            let r = sp.get_ref();
            let mut part = |v: &Option<Spanned<String>>, what: &str| -> Option<String> {
                let v = v.as_ref()?;
                if v.get_ref().is_empty() || v.get_ref().contains(['+', '/', '#']) {
                    cx.err(
                        v.span(),
                        format!(
                            "Sparkplug {what} {:?}: not empty, and without +, / or #",
                            v.get_ref()
                        ),
                    );
                }
                Some(v.get_ref().clone())
            };
            let group = part(&r.group, "group");
            let node = part(&r.node, "node");
            let device = part(&r.device, "device");
            match (group, node) {
                (Some(g), Some(n)) => Some((g, n, device)),
                _ => {
                    cx.err(sp.span(), "sparkplug needs `group` and `node` (and `device` for a device under the node)");
                    None
                }
            }
        }
        (None, MqttFormat::SparkplugB) => {
            cx.err(
                span.clone(),
                format!("sparkplug-b device {id:?} needs `sparkplug = {{ group = \"...\", node = \"...\", device = \"...\" }}`"),
            );
            None
        }
        (Some(sp), _) => {
            cx.err(sp.span(), "`sparkplug` applies to format = \"sparkplug-b\"");
            None
        }
        (None, _) => None,
    };
    if format == MqttFormat::SparkplugB {
        if let Some(t) = &d.topic {
            cx.err(
                t.span(),
                "a sparkplug-b device's topics are Sparkplug's (spBv1.0/GROUP/...): remove `topic`",
            );
        }
    }
    let topic = match &d.topic {
        _ if format == MqttFormat::SparkplugB => String::new(),
        Some(t) => topic(cx, t, line, cell, id),
        None if format == MqttFormat::Value => String::new(),
        None => {
            cx.err(
                span.clone(),
                format!("MQTT device {id:?} needs `topic`, e.g. \"cell3/{{device}}/telemetry\""),
            );
            String::new()
        }
    };
    let qos = match &d.qos {
        Some(q) if !(0..=1).contains(q.get_ref()) => {
            cx.err(
                q.span(),
                "qos must be 0 (at most once) or 1 (at least once)",
            );
            1
        }
        Some(q) => *q.get_ref() as u8,
        None => 1,
    };
    let timestamp = match (&d.timestamp, format) {
        (Some(t), MqttFormat::Json) => {
            if !t.get_ref().is_empty() && !t.get_ref().starts_with('/') {
                cx.err(
                    t.span(),
                    "timestamp is a JSON pointer: \"\" or starting with '/', e.g. \"/ts\"",
                );
            }
            Some(t.get_ref().clone())
        }
        (Some(t), _) => {
            cx.err(t.span(), "`timestamp` applies to format = \"json\"");
            None
        }
        (None, _) => None,
    };
    let timestamp_format = match &d.timestamp_format {
        None => TimestampFormat::UnixMs,
        Some(f) => {
            if timestamp.is_none() {
                cx.err(
                    f.span(),
                    "`timestamp_format` needs `timestamp` (where the time is in the payload)",
                );
            }
            match f.get_ref().as_str() {
                "unix" => TimestampFormat::Unix,
                "unix_ms" => TimestampFormat::UnixMs,
                "unix_us" => TimestampFormat::UnixUs,
                "unix_ns" => TimestampFormat::UnixNs,
                "rfc3339" => TimestampFormat::Rfc3339,
                other => {
                    cx.err(
                        f.span(),
                        format!("timestamp_format {other:?}: use unix, unix_ms, unix_us, unix_ns or rfc3339"),
                    );
                    TimestampFormat::UnixMs
                }
            }
        }
    };
    let stale_after = match &d.stale_after {
        Some(s) if s.get_ref().0 < Duration::from_millis(100) => {
            cx.err(s.span(), "stale_after must be at least 100ms");
            Duration::from_secs(10)
        }
        Some(s) => s.get_ref().0,
        None => Duration::from_secs(10),
    };
    let max_metrics = match (&d.max_metrics, format) {
        (Some(m), MqttFormat::SparkplugB) if !(1..=1_000_000).contains(m.get_ref()) => {
            cx.err(m.span(), "max_metrics must be between 1 and 1000000");
            DEFAULT_MAX_METRICS
        }
        (Some(m), MqttFormat::SparkplugB) => *m.get_ref() as usize,
        (Some(m), _) => {
            cx.err(
                m.span(),
                "`max_metrics` applies to format = \"sparkplug-b\"",
            );
            DEFAULT_MAX_METRICS
        }
        (None, _) => DEFAULT_MAX_METRICS,
    };
    MqttDevice {
        broker,
        topic,
        format,
        qos,
        timestamp,
        timestamp_format,
        stale_after,
        sparkplug,
        max_metrics,
    }
}

/// The keys of an MQTT device's point (besides those every point has).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttPointSection {
    /// json: an RFC 6901 pointer into the payload.
    pub json: Option<Spanned<String>>,
    /// The point's own topic (required with format = "value").
    pub topic: Option<Spanned<String>>,
    /// sparkplug-b: the birth metric this point reads.
    pub metric: Option<Spanned<String>>,
}

/// Where an MQTT point's value is (`PointConfig::settings`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MqttPoint {
    /// json: the RFC 6901 pointer to the value in each message.
    pub json: Option<String>,
    /// The point's own topic (expanded).
    pub topic: Option<String>,
    /// sparkplug-b: the birth metric it reads.
    pub metric: Option<String>,
    /// sparkplug-b, no `type` given: the birth's datatype decides what it is written as.
    pub kind_from_birth: bool,
}

/// A point's MQTT keys (a derived point, or another kind's, has none).
pub fn mqtt_point(p: &crate::config::PointConfig) -> &MqttPoint {
    static NONE: MqttPoint = MqttPoint {
        json: None,
        topic: None,
        metric: None,
        kind_from_birth: false,
    };
    p.settings::<MqttPoint>().unwrap_or(&NONE)
}

fn point(cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
    let r: MqttPointSection = raw.finish(cx)?;
    let name = p.name;
    let span = p.span.clone();
    if p.derived {
        for (v, key) in [
            (&r.json, "json"),
            (&r.topic, "topic"),
            (&r.metric, "metric"),
        ] {
            if let Some(v) = v {
                cx.err(
                    v.span(),
                    format!("point {name:?} is derived: it has no `{key}`"),
                );
            }
        }
        return Some(PointPart {
            kind: crate::config::PointType::F64,
            settings: None,
        });
    }
    if let Some(b) = p.bit {
        cx.err(
            b.span(),
            "`bit` of an MQTT point: declare a derived point with `from` and `bit`",
        );
    }
    let format = p
        .device
        .and_then(|s| s.get::<MqttDevice>())
        .map(|m| m.format)
        .unwrap_or(MqttFormat::Json);
    let metric = match &r.metric {
        Some(v) if format == MqttFormat::SparkplugB => {
            if v.get_ref().is_empty() {
                cx.err(v.span(), "metric must not be empty");
            }
            Some(v.get_ref().clone())
        }
        Some(v) => {
            cx.err(v.span(), "`metric` applies to format = \"sparkplug-b\"");
            None
        }
        None => None,
    };
    let (json, topic) = if format == MqttFormat::SparkplugB {
        for (v, key) in [(&r.json, "json"), (&r.topic, "topic")] {
            if let Some(v) = v {
                cx.err(
                    v.span(),
                    format!(
                        "`{key}` does not apply to a sparkplug-b point: it reads a birth `metric`"
                    ),
                );
            }
        }
        if metric.is_none() {
            cx.err(
                span.clone(),
                format!("point {name:?} needs `metric`, the name of a metric in the device's birth (e.g. \"Joint/1/Temperature\")"),
            );
        }
        (None, None)
    } else {
        let empty = LineConfig {
            id: String::new(),
            site: None,
            tags: Vec::new(),
        };
        let line = p.line.unwrap_or(&empty);
        let topic = r.topic.as_ref().map(|t| topic(cx, t, line, p.cell, p.id));
        let json = r.json.as_ref().map(|j| {
            if !j.get_ref().is_empty() && !j.get_ref().starts_with('/') {
                cx.err(
                    j.span(),
                    "json is an RFC 6901 pointer: \"\" (the whole message) or starting with '/', e.g. \"/sensors/temp\"",
                );
            }
            if format == MqttFormat::Value {
                cx.err(j.span(), "`json` applies to format = \"json\"; with format = \"value\" the payload is the value");
            }
            j.get_ref().clone()
        });
        match format {
            MqttFormat::Json if json.is_none() => cx.err(
                span.clone(),
                format!("point {name:?} needs `json`, a JSON pointer such as \"/sensors/temp\""),
            ),
            MqttFormat::Value if topic.is_none() => cx.err(
                span.clone(),
                format!("with format = \"value\" every point needs its own `topic`: point {name:?} has none"),
            ),
            _ => {}
        }
        (json, topic)
    };
    Some(PointPart {
        kind: p
            .kind
            .map(|k| *k.get_ref())
            .unwrap_or(crate::config::PointType::F64),
        settings: Some(Settings::new(MqttPoint {
            kind_from_birth: metric.is_some() && p.kind.is_none(),
            json,
            topic,
            metric,
        })),
    })
}
