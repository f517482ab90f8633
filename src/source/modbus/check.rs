//! What `linetap check` shows of Modbus devices: each device's points and the requests each
//! poll cycle issues, and each bus with its estimated load; and its warnings (overloaded
//! serial lines, addresses that look like reference numbers).

use super::budget::{bus_budget, BusBudget, DeviceLoad};
use super::config::{reg, ModbusDevice};
use super::poller::DevicePlan;
use super::{device_plans, devices};
use crate::check::{describe_derived, describe_extras, plural, push_elements, Plan};
use crate::config::{Config, PointConfig, SerialConfig};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One bus of a configuration: its name, its serial line (when it has one), its devices.
struct Bus<'a> {
    name: String,
    serial: Option<&'a SerialConfig>,
    devices: Vec<(&'a ModbusDevice, &'a DevicePlan)>,
}

fn buses<'a>(config: &'a Config, plans: &'a [DevicePlan]) -> Vec<Bus<'a>> {
    let mut by: BTreeMap<String, Bus<'a>> = BTreeMap::new();
    let modbus = devices(config).map(|(_, m)| m);
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

/// The Modbus part of `linetap check`'s plan.
pub fn render(config: &Config, plan: &mut Plan) {
    let plans = device_plans(config);
    for ((d, m), dp) in devices(config).zip(&plans) {
        let values: u32 = d.points.iter().map(|p| p.count as u32).sum();
        let _ = writeln!(
            plan.text,
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
            let _ = writeln!(plan.text, "  point {:<24} {}", p.name, describe(p));
        }
        for g in &dp.groups {
            let values: usize = g.requests.iter().map(|r| r.fields.len()).sum();
            let every = if g.interval.is_zero() {
                plan.back_to_back += 1;
                "back to back (as fast as the device answers)".to_string()
            } else {
                let per_s = 1.0 / g.interval.as_secs_f64();
                plan.requests_per_s += per_s * g.requests.len() as f64;
                plan.values_per_s += per_s * values as f64;
                format!("every {:?}", g.interval)
            };
            let _ = writeln!(
                plan.text,
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
                    plan.text,
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
        let _ = writeln!(plan.text, "\nbuses:");
    }
    for bus in buses(config, &plans) {
        let n = bus.devices.len();
        match bus.serial {
            Some(serial) => {
                let b = budget(serial, &bus);
                let _ = writeln!(
                    plan.text,
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
                    plan.text,
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
    plan.health_per_s += plans
        .iter()
        .map(|p| {
            p.groups
                .iter()
                .map(|g| 1.0 / g.interval.max(super::poller::HEALTH_EVERY).as_secs_f64())
                .fold(0.0, f64::max)
        })
        .fold(0.0, |a, b| a + b);
}

/// `check`'s warnings about Modbus devices: overloaded serial lines, addresses that look like
/// reference numbers.
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
    w
}

/// One point as `check` shows it: where it is read, how it is decoded, where it is written.
fn describe(p: &PointConfig) -> String {
    if let Some(d) = describe_derived(p) {
        return d;
    }
    let r = reg(p);
    let mut d = format!("{} {}", r.table.as_str(), r.address);
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
    push_elements(p, &mut d);
    if p.scale != 1.0 {
        d.push_str(&format!(" scale {}", p.scale));
    }
    if p.offset != 0.0 {
        d.push_str(&format!(" offset {}", p.offset));
    }
    if p.as_float {
        d.push_str(" as float");
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
