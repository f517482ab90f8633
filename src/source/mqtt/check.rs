//! What `linetap check` shows of MQTT devices: each device's subscriptions and points, and
//! the brokers they are read through.

use crate::check::{describe_derived, describe_extras, plural, Plan};
use crate::config::{Config, PointConfig};
use std::fmt::Write;

/// The MQTT part of `linetap check`'s plan.
pub fn render(config: &Config, plan: &mut Plan) {
    let o = &mut plan.text;
    for d in config
        .devices
        .iter()
        .filter(|d| d.settings::<crate::config::MqttDevice>().is_some())
    {
        render_device(o, d);
    }
    if !config.brokers.is_empty() {
        let _ = writeln!(o, "\nbrokers:");
        for b in &config.brokers {
            let users = config
                .devices
                .iter()
                .filter(|d| {
                    d.settings::<crate::config::MqttDevice>()
                        .is_some_and(|m| m.broker == b.name)
                })
                .count();
            let _ = writeln!(
                o,
                "  {:?}: {}://{} MQTT {}, client id {:?}, {} session, keep-alive {:?}, max packet {} bytes, {} device{}",
                b.name,
                if b.tls { "mqtts" } else { "mqtt" },
                b.address(),
                match b.mqtt_version {
                    crate::mqtt::settings::MqttVersion::V5 => "5",
                    crate::mqtt::settings::MqttVersion::V311 => "3.1.1",
                },
                b.client_id,
                if b.clean_session {
                    "clean"
                } else {
                    "persistent"
                },
                b.keep_alive,
                b.max_packet_size,
                users,
                plural(users)
            );
        }
    }
}

/// An MQTT device: its broker, subscriptions and points.
fn render_device(o: &mut String, d: &crate::config::DeviceConfig) {
    let Some(m) = d.settings::<crate::config::MqttDevice>() else {
        return;
    };
    let mut topics: Vec<String> = Vec::new();
    if !m.topic.is_empty() {
        topics.push(m.topic.clone());
    }
    for p in &d.points {
        if let Some(t) = &super::config::mqtt_point(p).topic {
            if !topics.contains(t) {
                topics.push(t.clone());
            }
        }
    }
    if let Some((g, n, _)) = &m.sparkplug {
        // Everything the edge node sends (its seq runs through every device's messages).
        topics.extend(crate::source::mqtt::sparkplug_host::node_subscriptions(
            g, n,
        ));
        if !d.points.iter().any(|p| p.is_read()) {
            topics.push("(every metric of the births becomes a point)".into());
        }
    }
    let _ = writeln!(
        o,
        "\ndevice {:?} ({}, mqtt via broker {:?}): format {}, qos {}, down after {:?} without a message",
        d.id,
        d.kind.as_str(),
        m.broker,
        match m.format {
            crate::config::MqttFormat::Json => "json",
            crate::config::MqttFormat::SparkplugB => "sparkplug-b",
            crate::config::MqttFormat::Value => "value",
        },
        m.qos,
        m.stale_after
    );
    for t in topics {
        let _ = writeln!(o, "  subscribes {t}");
    }
    if let Some(ts) = &m.timestamp {
        let format = match m.timestamp_format {
            crate::config::TimestampFormat::Unix => "unix",
            crate::config::TimestampFormat::UnixMs => "unix_ms",
            crate::config::TimestampFormat::UnixUs => "unix_us",
            crate::config::TimestampFormat::UnixNs => "unix_ns",
            crate::config::TimestampFormat::Rfc3339 => "rfc3339",
        };
        let _ = writeln!(o, "  sample time from {ts:?} ({format})");
    }
    for p in &d.points {
        let _ = writeln!(o, "  point {:<24} {}", p.name, describe(p));
    }
}

/// One point as `check` shows it: where it is read, how, where it is written.
fn describe(p: &PointConfig) -> String {
    if let Some(d) = describe_derived(p) {
        return d;
    }
    let m = super::config::mqtt_point(p);
    let mut d = String::new();
    if let Some(j) = &m.json {
        d.push_str(&format!("json {j:?}"));
    }
    if let Some(t) = &m.topic {
        d.push_str(&format!(
            "{}topic {t}",
            if d.is_empty() { "" } else { " on " }
        ));
    }
    if let Some(metric) = &m.metric {
        d.push_str(&format!(
            "{}metric {metric:?}",
            if d.is_empty() { "" } else { " " }
        ));
    }
    d.push_str(&format!(" {}", p.kind.as_str()));
    if p.count > 1 {
        d.push_str(&format!(" x{} array", p.count));
    }
    if p.scale != 1.0 {
        d.push_str(&format!(" scale {}", p.scale));
    }
    if p.offset != 0.0 {
        d.push_str(&format!(" offset {}", p.offset));
    }
    if p.as_float {
        d.push_str(" as float");
    }
    d.push_str(&format!(" -> {}.{}", p.measurement, p.name));
    if !p.enum_labels.is_empty() {
        d.push_str(&format!(" + {}_label", p.name));
    }
    describe_extras(p, d)
}
