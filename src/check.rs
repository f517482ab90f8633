//! `linetap check`: the plan of a valid configuration, as text: devices, points and the
//! Modbus requests each poll cycle issues.

use crate::config::{Config, SinkKind};
use crate::model::catalog;
use crate::run::device_plans;
use std::fmt::Write;

pub fn render_plan(config: &Config) -> String {
    let built = catalog::build(config);
    let plans = device_plans(config, &built);
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
    let mut total_values_per_s = 0.0;
    for (d, plan) in config.devices.iter().zip(&plans) {
        let values: u32 = d.points.iter().map(|p| p.count as u32).sum();
        let _ = writeln!(
            o,
            "\ndevice {:?} ({}, {} {} unit {}): {} points, {} values, timeout {:?}",
            d.id,
            d.kind.as_str(),
            d.protocol.as_str(),
            d.address,
            d.unit,
            d.points.len(),
            values,
            d.timeout
        );
        for p in &d.points {
            let _ = writeln!(
                o,
                "  point {:<24} {:<8} {:>5}{} {:<6}{}{} -> {}.{}",
                p.name,
                p.table.as_str(),
                p.address,
                p.bit.map(|b| format!(".{b}")).unwrap_or_default(),
                p.kind.as_str(),
                if p.count > 1 {
                    format!(" x{}", p.count)
                } else {
                    String::new()
                },
                if p.is_scaled() {
                    format!(" *{}+{}", p.scale, p.offset)
                } else {
                    String::new()
                },
                p.measurement,
                p.name
            );
        }
        for g in &plan.groups {
            let per_s = 1.0 / g.interval.as_secs_f64();
            let values: usize = g.requests.iter().map(|r| r.fields.len()).sum();
            total_requests_per_s += per_s * g.requests.len() as f64;
            total_values_per_s += per_s * values as f64;
            let _ = writeln!(
                o,
                "  every {:?}: {} request(s), {} values",
                g.interval,
                g.requests.len(),
                values
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
                    "    {fc} {:<8} start {:>5} count {:>4} ({} values)",
                    r.table.as_str(),
                    r.start,
                    r.count,
                    r.fields.len()
                );
            }
        }
    }
    let _ = writeln!(o, "\nsinks:");
    for s in &config.sinks {
        let what = match &s.kind {
            SinkKind::Influx(i) => format!("influxdb {:?} {}", i.api, i.url),
            SinkKind::File(f) => format!("file {}", f.path.display()),
        };
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
        "\ntotal: {} devices, {:.1} requests/s, {:.0} values/s (+ {} health records/s)",
        config.devices.len(),
        total_requests_per_s,
        total_values_per_s,
        plans
            .iter()
            .map(|p| p
                .groups
                .iter()
                .map(|g| 1.0 / g.interval.as_secs_f64())
                .fold(0.0, f64::max))
            .sum::<f64>()
    );
    o
}
