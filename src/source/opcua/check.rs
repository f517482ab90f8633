//! What `linetap check` shows of OPC UA devices: the endpoint, security and identity, the
//! subscription, and each point's node or path.

use super::config::{opcua_point, OpcuaDevice, Where};
use crate::check::{describe_derived, describe_extras, plural, Plan};
use crate::config::{Config, PointConfig};
use std::fmt::Write;

/// The OPC UA part of `linetap check`'s plan.
pub fn render(config: &Config, plan: &mut Plan) {
    for d in &config.devices {
        let Some(o) = d.settings::<OpcuaDevice>() else {
            continue;
        };
        let items = d.points.iter().filter(|p| p.is_read()).count();
        let values: usize = d
            .points
            .iter()
            .filter(|p| p.is_read())
            .map(|p| p.count as usize)
            .sum();
        let o_text = &mut plan.text;
        let _ = writeln!(
            o_text,
            "\ndevice {:?} ({}, opcua {}): {}, {}; one subscription, {} monitored item{} sampled and published every {:?} (created {} per call)",
            d.id,
            d.kind.as_str(),
            o.endpoint,
            match o.policy {
                super::config::Policy::None => "no security".to_string(),
                p => format!("{} {}", p.name(), o.mode.name()),
            },
            match &o.username {
                Some(u) => format!("user {u:?}"),
                None => "anonymous".to_string(),
            },
            items,
            plural(items),
            d.poll,
            o.max_items_per_call,
        );
        for p in &d.points {
            let _ = writeln!(o_text, "  point {:<24} {}", p.name, describe(p));
        }
        // At most: every value changes every publishing interval.
        plan.values_per_s += values as f64 / d.poll.as_secs_f64().max(0.001);
        plan.health_per_s += 4.0;
    }
}

fn describe(p: &PointConfig) -> String {
    if let Some(d) = describe_derived(p) {
        return d;
    }
    let Some(o) = opcua_point(p) else {
        return String::new();
    };
    let mut d = match &o.at {
        Where::Node(n) => format!("node {n}"),
        Where::Path(path) => format!("path {}", super::session::path_text(path)),
        Where::Robotics(r) => {
            let per = if r.per_axis() {
                format!(" (one per axis: {} until browsed)", p.count)
            } else {
                String::new()
            };
            format!("robotics {r}{per} of each OPC 40010 motion device")
        }
    };
    if o.typed {
        d.push_str(&format!(" {}", p.kind.as_str()));
    } else {
        d.push_str(" (type from the node's DataType)");
    }
    if p.count > 1 && !matches!(o.at, Where::Robotics(_)) {
        d.push_str(&format!(" x{} array", p.count));
    }
    if let Some(r) = p.report.as_ref().filter(|r| r.deadband > 0.0) {
        d.push_str(&format!(" (server-side deadband {})", r.deadband));
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
    d.push_str(&format!(" -> {}", p.measurement));
    describe_extras(p, d)
}
