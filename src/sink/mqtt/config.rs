//! The `[sinks.NAME]` keys of `type = "mqtt"`: the connection (as `[brokers.NAME]`), the
//! format, the topics and the QoS; validated with locations.

use crate::config::schema::SparkplugSection;
use crate::config::table::RawTable;
use crate::config::validate::sinks::SinkDraft;
use crate::config::validate::Ctx;
use crate::config::Settings;
use crate::mqtt::settings::{self, BrokerConfig, ConnectionSection};
use crate::sink::{settings_of, BuildContext, Start};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttSinkFormat {
    /// One `linetap.v1.SampleBatch` per device per flush, and the retained `Catalog`.
    Linetap,
    /// One JSON object per device per flush.
    Json,
    /// A Sparkplug B 3.0 edge node: births, data by alias, deaths.
    SparkplugB,
}

/// The keys of an mqtt sink besides those every sink has and its connection's
/// (`mqtt::settings::ConnectionSection`, as `[brokers.NAME]`): the format and its topics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkSection {
    pub format: Option<Spanned<String>>,
    pub topic: Option<Spanned<String>>,
    pub qos: Option<Spanned<i64>>,
    /// format linetap: where the retained catalog goes.
    pub catalog_topic: Option<Spanned<String>>,
    /// format sparkplug-b: the edge node's group and node ids.
    pub sparkplug: Option<Spanned<SparkplugSection>>,
    /// format sparkplug-b: the host application whose online STATE births wait for.
    pub primary_host: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttSinkConfig {
    pub broker: BrokerConfig,
    pub format: MqttSinkFormat,
    /// Per device: `{site}`, `{line}`, `{cell}`, `{device}`, `{kind}` expand.
    pub topic: String,
    /// linetap: where the line's catalog is kept (retained).
    pub catalog_topic: String,
    pub qos: u8,
    /// sparkplug-b: (group id, edge node id).
    pub sparkplug: (String, String),
    /// sparkplug-b: the primary host application's id: births wait for its online STATE, and
    /// its offline STATE ends the session (NDEATH) until it is back.
    pub primary_host: Option<String>,
}

pub(crate) fn validate(
    cx: &mut Ctx,
    name: &Spanned<String>,
    span: Range<usize>,
    connection: &ConnectionSection,
    s: &MqttSinkSection,
    line: &str,
    site: &str,
) -> MqttSinkConfig {
    let span = span.clone();
    let broker = settings::validate(
        cx,
        connection,
        name.get_ref(),
        span.clone(),
        format!("linetap-{line}-{}", name.get_ref()),
    );
    let format = match &s.format {
        None => MqttSinkFormat::Linetap,
        Some(f) => match f.get_ref().as_str() {
            "linetap" => MqttSinkFormat::Linetap,
            "json" => MqttSinkFormat::Json,
            "sparkplug-b" => MqttSinkFormat::SparkplugB,
            other => {
                cx.err(
                    f.span(),
                    format!("format {other:?}: use \"linetap\", \"json\" or \"sparkplug-b\""),
                );
                MqttSinkFormat::Linetap
            }
        },
    };
    let template = |cx: &mut Ctx, v: &Option<Spanned<String>>, default: &str| -> String {
        match v {
            Some(t) => {
                let text = t.get_ref();
                if text.is_empty() {
                    cx.err(t.span(), "topic must not be empty");
                } else if text.contains(['+', '#']) {
                    cx.err(t.span(), "a topic to publish to has no wildcards (+, #)");
                } else {
                    let stripped = ["{site}", "{line}", "{cell}", "{device}", "{kind}"]
                        .iter()
                        .fold(text.clone(), |acc, k| acc.replace(k, ""));
                    if stripped.contains('{') || stripped.contains('}') {
                        cx.err(
                            t.span(),
                            "only {site}, {line}, {cell}, {device} and {kind} expand in a topic",
                        );
                    }
                }
                text.clone()
            }
            None => default.to_string(),
        }
    };
    let topic = template(cx, &s.topic, "linetap/{line}/{device}");
    let catalog_topic = template(cx, &s.catalog_topic, "linetap/{line}/catalog");
    if let (Some(c), MqttSinkFormat::Json) = (&s.catalog_topic, format) {
        cx.err(c.span(), "`catalog_topic` applies to format = \"linetap\"");
    }
    if format != MqttSinkFormat::SparkplugB && !topic.contains("{device}") {
        if let Some(t) = &s.topic {
            cx.err(
                t.span(),
                "the topic needs {device}: one message per device per flush",
            );
        }
    }
    let id = |cx: &mut Ctx, v: &Option<Spanned<String>>, default: &str, what: &str| -> String {
        let text = v
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or_else(|| default.to_string());
        if text.is_empty() || text.contains(['+', '/', '#']) {
            let at = v.as_ref().map(|v| v.span()).unwrap_or(span.clone());
            cx.err(
                at,
                format!("Sparkplug {what} {text:?}: not empty, and without +, / or #"),
            );
        }
        text
    };
    let sparkplug = match (&s.sparkplug, format) {
        (Some(sp), MqttSinkFormat::SparkplugB) => {
            let sp_ref = sp.get_ref();
            if let Some(d) = &sp_ref.device {
                cx.err(d.span(), "the edge node's devices are the line's devices: `device` does not apply to a sink");
            }
            (
                id(
                    cx,
                    &sp_ref.group,
                    if site.is_empty() { "linetap" } else { site },
                    "group",
                ),
                id(cx, &sp_ref.node, line, "node"),
            )
        }
        (Some(sp), _) => {
            cx.err(sp.span(), "`sparkplug` applies to format = \"sparkplug-b\"");
            (String::new(), String::new())
        }
        (None, MqttSinkFormat::SparkplugB) => (
            id(
                cx,
                &None,
                if site.is_empty() { "linetap" } else { site },
                "group",
            ),
            id(cx, &None, line, "node"),
        ),
        (None, _) => (String::new(), String::new()),
    };
    if format == MqttSinkFormat::SparkplugB {
        for (v, key) in [(&s.topic, "topic"), (&s.catalog_topic, "catalog_topic")] {
            if let Some(v) = v {
                cx.err(
                    v.span(),
                    format!("`{key}` does not apply to sparkplug-b: Sparkplug defines its topics"),
                );
            }
        }
        if let Some(q) = &s.qos {
            cx.err(q.span(), "`qos` does not apply to sparkplug-b: births and data go at QoS 0, the death at QoS 1");
        }
        if let Some(c) = &connection.clean_session {
            if !*c.get_ref() {
                cx.err(
                    c.span(),
                    "a Sparkplug edge node connects with a clean session",
                );
            }
        }
    }
    let primary_host = match (&s.primary_host, format) {
        (Some(h), MqttSinkFormat::SparkplugB) => {
            let text = h.get_ref().clone();
            if text.is_empty() || text.contains(['+', '/', '#']) {
                cx.err(
                    h.span(),
                    format!("primary_host {text:?}: the host application's id, not empty, and without +, / or #"),
                );
            }
            Some(text)
        }
        (Some(h), _) => {
            cx.err(
                h.span(),
                "`primary_host` applies to format = \"sparkplug-b\"",
            );
            None
        }
        (None, _) => None,
    };
    let qos = match &s.qos {
        Some(q) if !(0..=1).contains(q.get_ref()) => {
            cx.err(q.span(), "qos must be 0 or 1");
            1
        }
        Some(q) => *q.get_ref() as u8,
        None => 1,
    };
    MqttSinkConfig {
        broker,
        format,
        topic,
        catalog_topic,
        qos,
        sparkplug,
        primary_host,
    }
}

/// The MQTT sink kind (`sink::KINDS`).
pub struct Kind;

impl crate::sink::SinkKind for Kind {
    fn name(&self) -> &'static str {
        "mqtt"
    }
    fn keys(&self) -> &'static [&'static str] {
        static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            let mut k = crate::config::table::fields_of::<ConnectionSection>().to_vec();
            k.extend(crate::config::table::fields_of::<MqttSinkSection>());
            k
        })
    }
    fn validate(&self, cx: &mut Ctx, mut raw: RawTable, d: &SinkDraft) -> Option<Settings> {
        let connection: ConnectionSection = raw.take(cx)?;
        let s: MqttSinkSection = raw.finish(cx)?;
        let c = validate(cx, d.name, d.span.clone(), &connection, &s, d.line, d.site);
        Some(Settings::new(c))
    }
    fn build(&self, settings: &Settings, ctx: &BuildContext) -> Result<Box<dyn Start>, String> {
        let c: &MqttSinkConfig = settings_of(settings, self.name())?;
        if c.format == MqttSinkFormat::SparkplugB {
            Ok(Box::new(super::edge_node::build(c, ctx)?))
        } else {
            Ok(Box::new(super::build(c, ctx)?))
        }
    }
    fn describe(&self, settings: &Settings) -> String {
        let Some(m) = settings.get::<MqttSinkConfig>() else {
            return String::new();
        };
        match m.format {
            MqttSinkFormat::SparkplugB => format!(
                "mqtt {}://{} sparkplug-b edge node {}/{} (births and data at QoS 0, NDEATH as the will)",
                if m.broker.tls { "mqtts" } else { "mqtt" },
                m.broker.address(),
                m.sparkplug.0,
                m.sparkplug.1
            ),
            f => format!(
                "mqtt {}://{} format {}, topic {}, qos {}",
                if m.broker.tls { "mqtts" } else { "mqtt" },
                m.broker.address(),
                if f == MqttSinkFormat::Json {
                    "json"
                } else {
                    "linetap"
                },
                m.topic,
                m.qos
            ),
        }
    }
    fn secrets<'a>(&self, settings: &'a Settings) -> Vec<&'a crate::config::Secret> {
        settings
            .get::<MqttSinkConfig>()
            .map(|c| c.broker.password.iter().collect())
            .unwrap_or_default()
    }
}
