//! `linetap check`: the plan of a valid configuration, as text: devices, points, the
//! Modbus requests each poll cycle issues, and the estimated load of each serial bus.

use crate::config::{Config, SerialConfig};
use crate::source::modbus::budget::{bus_budget, BusBudget, DeviceLoad};
use crate::source::modbus::device_plans;
use crate::source::modbus::poller::DevicePlan;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One bus of a configuration: its name, its serial line (when it has one), its devices.
struct Bus<'a> {
    name: String,
    serial: Option<&'a SerialConfig>,
    devices: Vec<(&'a crate::config::ModbusDevice, &'a DevicePlan)>,
}

fn buses<'a>(config: &'a Config, plans: &'a [DevicePlan]) -> Vec<Bus<'a>> {
    let mut by: BTreeMap<String, Bus<'a>> = BTreeMap::new();
    let modbus = crate::source::modbus::devices(config).map(|(_, m)| m);
    for (d, p) in modbus.zip(plans) {
        by.entry(d.bus())
            .or_insert_with(|| Bus {
                name: d.bus(),
                serial: d.serial.as_ref(),
                devices: Vec::new(),
            })
            .devices
            .push((d, p));
    }
    by.into_values().collect()
}

fn budget(serial: &SerialConfig, bus: &Bus<'_>) -> BusBudget {
    let loads: Vec<DeviceLoad> = bus
        .devices
        .iter()
        .map(|(d, p)| DeviceLoad {
            groups: &p.groups,
            turnaround: d.turnaround,
        })
        .collect();
    bus_budget(serial, &loads)
}

fn line_settings(s: &SerialConfig) -> String {
    format!(
        "{} baud {}{}{}",
        s.baud,
        s.data_bits,
        match s.parity {
            crate::config::Parity::None => 'N',
            crate::config::Parity::Even => 'E',
            crate::config::Parity::Odd => 'O',
        },
        s.stop_bits
    )
}

pub fn render_plan(config: &Config) -> String {
    let plans = device_plans(config);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "line {:?}{}",
        config.line.id,
        config
            .line
            .site
            .as_ref()
            .map(|s| format!(" (site {s:?})"))
            .unwrap_or_default()
    );
    let mut total_requests_per_s = 0.0;
    let mut back_to_back = 0usize;
    let mut total_values_per_s = 0.0;
    for ((d, m), plan) in crate::source::modbus::devices(config).zip(&plans) {
        let values: u32 = d.points.iter().map(|p| p.count as u32).sum();
        let _ = writeln!(
            o,
            "\ndevice {:?} ({}{}, {} {} unit {}): {} point{}, {} value{}, timeout {:?}",
            d.id,
            d.kind.as_str(),
            d.profile
                .as_ref()
                .map(|p| format!(", profile {p}"))
                .unwrap_or_default(),
            d.protocol,
            m.serial
                .as_ref()
                .map(|s| format!("{} {}", s.port, line_settings(s)))
                .unwrap_or_else(|| m.address.clone()),
            m.unit,
            d.points.len(),
            plural(d.points.len()),
            values,
            plural(values as usize),
            m.timeout
        );
        for p in &d.points {
            let _ = writeln!(o, "  point {:<24} {}", p.name, describe_point(p));
        }
        for g in &plan.groups {
            let values: usize = g.requests.iter().map(|r| r.fields.len()).sum();
            let every = if g.interval.is_zero() {
                back_to_back += 1;
                "back to back (as fast as the device answers)".to_string()
            } else {
                let per_s = 1.0 / g.interval.as_secs_f64();
                total_requests_per_s += per_s * g.requests.len() as f64;
                total_values_per_s += per_s * values as f64;
                format!("every {:?}", g.interval)
            };
            let _ = writeln!(
                o,
                "  {every}: {} request{}, {} value{}",
                g.requests.len(),
                plural(g.requests.len()),
                values,
                plural(values)
            );
            for r in &g.requests {
                let fc = match r.table {
                    crate::config::Table::Coil => "FC01",
                    crate::config::Table::Discrete => "FC02",
                    crate::config::Table::Holding => "FC03",
                    crate::config::Table::Input => "FC04",
                };
                let _ = writeln!(
                    o,
                    "    {fc} {:<8} start {:>5} count {:>4} ({} value{})",
                    r.table.as_str(),
                    r.start,
                    r.count,
                    r.fields.len(),
                    plural(r.fields.len())
                );
            }
        }
    }
    // No Modbus device: no buses to show.
    if !plans.is_empty() {
        let _ = writeln!(o, "\nbuses:");
    }
    for bus in buses(config, &plans) {
        let n = bus.devices.len();
        match bus.serial {
            Some(serial) => {
                let b = budget(serial, &bus);
                let _ = writeln!(
                    o,
                    "  {} ({}): {n} unit{}, wire time {:.1} ms per cycle of every group, load {:.0}% of the bus (shortest interval {:?}){}",
                    bus.name,
                    line_settings(serial),
                    plural(n),
                    b.cycle.as_secs_f64() * 1000.0,
                    b.load * 100.0,
                    b.shortest,
                    if b.overloaded() { " OVERLOADED" } else { "" }
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "  {}: {n} unit{}, one request at a time{}",
                    bus.name,
                    plural(n),
                    if bus.name.starts_with("rtu-over-tcp") {
                        " (the serial speed behind the gateway is unknown: no load estimate)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    for d in config
        .devices
        .iter()
        .filter(|d| d.settings::<crate::config::MqttDevice>().is_some())
    {
        render_mqtt_device(&mut o, d);
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
    let _ = writeln!(o, "\nsinks:");
    for s in &config.sinks {
        let what = crate::sink::kind(s.kind)
            .map(|k| k.describe(&s.settings))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {:?}: {what} (batch {}, flush {:?})",
            s.name, s.batch_size, s.flush_interval
        );
    }
    if config.sinks.is_empty() {
        let _ = writeln!(o, "  none: readings are polled but go nowhere");
    }
    let _ = writeln!(
        o,
        "\ntotal: {} device{}, {:.1} requests/s, {:.0} values/s (+ {} health records/s){}",
        config.devices.len(),
        plural(config.devices.len()),
        total_requests_per_s,
        total_values_per_s,
        plans
            .iter()
            .map(|p| p
                .groups
                .iter()
                .map(|g| 1.0
                    / g.interval
                        .max(crate::source::modbus::poller::HEALTH_EVERY)
                        .as_secs_f64())
                .fold(0.0, f64::max))
            .fold(0.0, |a, b| a + b),
        if back_to_back > 0 {
            format!(
                ", plus {back_to_back} group{} polled back to back",
                plural(back_to_back)
            )
        } else {
            String::new()
        }
    );
    o
}

/// An MQTT device: its broker, subscriptions and points.
fn render_mqtt_device(o: &mut String, d: &crate::config::DeviceConfig) {
    let Some(m) = d.settings::<crate::config::MqttDevice>() else {
        return;
    };
    let mut topics: Vec<String> = Vec::new();
    if !m.topic.is_empty() {
        topics.push(m.topic.clone());
    }
    for p in &d.points {
        if let Some(t) = &crate::source::mqtt::config::mqtt_point(p).topic {
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
        let _ = writeln!(o, "  point {:<24} {}", p.name, describe_point(p));
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Things that are valid but will not work as is on this machine: credentials that cannot be
/// read now, no sinks.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut w = Vec::new();
    let plans = device_plans(config);
    for bus in buses(config, &plans) {
        if let Some(serial) = bus.serial {
            let b = budget(serial, &bus);
            if b.overloaded() {
                w.push(format!(
                    "{} needs {:.0}% of what {} can carry at the configured poll intervals ({:.1} ms of wire time per cycle): polls will be skipped; lengthen `poll`, raise the baud rate, or split the units over more ports",
                    bus.name,
                    b.load * 100.0,
                    line_settings(serial),
                    b.cycle.as_secs_f64() * 1000.0
                ));
            }
        }
    }
    w.extend(crate::check_addresses::warnings(config));
    if config.sinks.is_empty() {
        w.push("no [sinks]: readings would be polled but delivered nowhere".to_string());
    }
    for s in &config.sinks {
        if let Some(kind) = crate::sink::kind(s.kind) {
            for secret in kind.secrets(&s.settings) {
                if let Err(e) = secret.resolve() {
                    w.push(format!(
                        "sink {:?}: {e} (here and now; `run` needs it)",
                        s.name
                    ));
                }
            }
        }
    }
    w
}

/// One point as `check` shows it: where it is read, how it is decoded, where it is written.
fn describe_point(p: &crate::config::PointConfig) -> String {
    use crate::config::Derive;
    let r = crate::source::modbus::config::reg(p);
    let m = crate::source::mqtt::config::mqtt_point(p);
    let mut d = match &p.derive {
        None if m.json.is_some() || m.topic.is_some() || m.metric.is_some() => {
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
            d.push_str(&format!(" -> {}.{}", p.measurement, p.name));
            if !p.enum_labels.is_empty() {
                d.push_str(&format!(" + {}_label", p.name));
            }
            return describe_extras(p, d);
        }
        None => format!("{} {}", r.table.as_str(), r.address),
        Some(Derive::States { from, rows }) => format!("= states of {from} ({} rows)", rows.len()),
        Some(Derive::Bit { from, bit }) => format!("= bit {bit} of {from}"),
        Some(Derive::Expr(e)) => format!(
            "= {}",
            e.text.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    };
    if p.derive.is_some() {
        d.push_str(&format!(" {}", p.kind.as_str()));
        if p.count > 1 {
            d.push_str(&format!(
                " x{} ({}=1..{})",
                p.count,
                p.index_tag.as_deref().unwrap_or("index"),
                p.count
            ));
        }
        d.push_str(&format!(" -> {}.{}", p.measurement, p.name));
        if !p.enum_labels.is_empty() {
            d.push_str(&format!(" + {}_label", p.name));
        }
        return describe_extras(p, d);
    }
    if let Some(b) = r.bit {
        d.push_str(&format!(" bit {b}"));
    }
    d.push_str(&format!(" {}", p.kind.as_str()));
    let is_string = p.kind == crate::config::PointType::String;
    if let (Some(b), false) = (r.byte, is_string) {
        d.push_str(&format!(" {} byte", b.as_str()));
    }
    let swapped = matches!(
        r.order,
        crate::config::WordOrder::BADC | crate::config::WordOrder::DCBA
    );
    if p.kind == crate::config::PointType::String {
        d.push_str(&format!("({} registers)", r.width));
        if let Some(b) = r.byte {
            d.push_str(&format!(" one character per register, {} byte", b.as_str()));
        } else if swapped {
            d.push_str(" BADC (low byte first)");
        }
    } else if p.kind.registers() > 1 || (p.kind.registers() == 1 && swapped) {
        d.push_str(&format!(" {:?}", r.order));
    }
    if p.count > 1 {
        d.push_str(&format!(
            " x{} ({}=1..{})",
            p.count,
            p.index_tag.as_deref().unwrap_or("index"),
            p.count
        ));
    }
    if p.scale != 1.0 {
        d.push_str(&format!(" scale {}", p.scale));
    }
    if p.offset != 0.0 {
        d.push_str(&format!(" offset {}", p.offset));
    }
    if !p.enum_labels.is_empty() {
        d.push_str(&format!(" enum of {} codes", p.enum_labels.len()));
    }
    if p.hidden {
        d.push_str(" (hidden: read for derived points, not written)");
        return describe_extras(p, d);
    }
    d.push_str(&format!(" -> {}.{}", p.measurement, p.name));
    if !p.enum_labels.is_empty() {
        d.push_str(&format!(" + {}_label", p.name));
    }
    describe_extras(p, d)
}

/// Derivations and report by exception, after a point's description.
fn describe_extras(p: &crate::config::PointConfig, mut d: String) -> String {
    if p.alarm {
        d.push_str(", alarm episodes -> linetap_alarm");
    }
    if p.cycles {
        d.push_str(&format!(
            ", cycle counter -> {m}.cycle_time, {m}.parts_per_hour",
            m = p.measurement
        ));
    }
    let r = &p.report;
    if r.active {
        d.push_str(", on change");
        if r.deadband > 0.0 {
            d.push_str(&format!(" beyond {}", r.deadband));
        }
        if r.deadband_pct > 0.0 {
            d.push_str(&format!(" or {}%", r.deadband_pct));
        }
        if !r.min_interval.is_zero() {
            d.push_str(&format!(", at most every {:?}", r.min_interval));
        }
        if !r.max_interval.is_zero() {
            d.push_str(&format!(", heartbeat {:?}", r.max_interval));
        }
    }
    d
}
