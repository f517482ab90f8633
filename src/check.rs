//! `linetap check`: the plan of a valid configuration, as text: each source kind's devices
//! and points (`SourceKind::check`: Modbus requests and bus loads, MQTT subscriptions), the
//! sinks, and the line's totals; and the warnings of what is valid but will not work as is.

use crate::config::Config;
use std::fmt::Write;

/// The plan being written: the text, and the totals the kinds add to.
#[derive(Default)]
pub struct Plan {
    pub text: String,
    pub requests_per_s: f64,
    pub values_per_s: f64,
    /// Health records per second (one per device, at most every `HEALTH_EVERY`).
    pub health_per_s: f64,
    /// Poll groups read back to back (no interval).
    pub back_to_back: usize,
}

pub fn render_plan(config: &Config) -> String {
    let mut plan = Plan::default();
    let _ = writeln!(
        plan.text,
        "line {:?}{}",
        config.line.id,
        config
            .line
            .site
            .as_ref()
            .map(|s| format!(" (site {s:?})"))
            .unwrap_or_default()
    );
    for kind in crate::source::KINDS {
        kind.check(config, &mut plan);
    }
    let mut o = std::mem::take(&mut plan.text);
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
    let back_to_back = plan.back_to_back;
    let _ = writeln!(
        o,
        "\ntotal: {} device{}, {:.1} requests/s, {:.0} values/s (+ {} health records/s){}",
        config.devices.len(),
        plural(config.devices.len()),
        plan.requests_per_s,
        plan.values_per_s,
        plan.health_per_s,
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

pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Things that are valid but will not work as is on this machine: each kind's (an overloaded
/// serial line, ...), credentials that cannot be read now, no sinks.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut w = Vec::new();
    for kind in crate::source::KINDS {
        w.extend(kind.check_warnings(config));
    }
    w.extend(crate::check_field_types::warnings(config));
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

/// An array point's element count and index tag (`x3 (axis=1..3)`).
pub fn push_elements(p: &crate::config::PointConfig, d: &mut String) {
    if p.count > 1 {
        d.push_str(&format!(
            " x{} ({}=1..{})",
            p.count,
            p.index_tag.as_deref().unwrap_or("index"),
            p.count
        ));
    }
}

/// A derived point as `check` shows it (`None`: the point is read, its kind describes it).
pub fn describe_derived(p: &crate::config::PointConfig) -> Option<String> {
    use crate::config::Derive;
    let mut d = match p.derive.as_deref()? {
        Derive::States { from, rows } => format!("= states of {from} ({} rows)", rows.len()),
        Derive::Bit { from, bit } => format!("= bit {bit} of {from}"),
        Derive::Expr(e) => format!(
            "= {}",
            e.text.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    };
    d.push_str(&format!(" {}", p.kind.as_str()));
    push_elements(p, &mut d);
    d.push_str(&format!(" -> {}.{}", p.measurement, p.name));
    if !p.enum_labels.is_empty() {
        d.push_str(&format!(" + {}_label", p.name));
    }
    Some(describe_extras(p, d))
}

/// Derivations and report by exception, after a point's description.
pub fn describe_extras(p: &crate::config::PointConfig, mut d: String) -> String {
    if p.alarm {
        d.push_str(", alarm episodes -> linetap_alarm");
    }
    if p.cycles {
        d.push_str(&format!(
            ", cycle counter -> {m}.cycle_time, {m}.parts_per_hour",
            m = p.measurement
        ));
    }
    let r = p.report();
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

/// `linetap check --connect`: every device `linetap probe` reads (Modbus, RTDE, OPC UA) read once, all
/// at once; one line per device saying what it answered or why not, and whether all answered
/// every point.
pub async fn connect(config: &Config) -> (String, bool) {
    // Devices sharing a link (an RS-485 port, a gateway's address, one server) are read one
    // after the other, as the agent would; links at once.
    let mut links: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, d) in config.devices.iter().enumerate() {
        let link = if let Some(m) = d.settings::<crate::config::ModbusDevice>() {
            m.bus()
        } else if let Some(r) = d.settings::<crate::source::rtde::config::RtdeDevice>() {
            r.address.clone()
        } else if let Some(o) = d.settings::<crate::source::opcua::config::OpcuaDevice>() {
            o.endpoint.clone()
        } else {
            format!("device {}", d.id)
        };
        match links.iter_mut().find(|(l, _)| *l == link) {
            Some((_, members)) => members.push(i),
            None => links.push((link, vec![i])),
        }
    }
    let groups = links.iter().map(|(_, members)| async move {
        let mut out = Vec::with_capacity(members.len());
        for &i in members {
            out.push((i, reach(config, &config.devices[i]).await));
        }
        out
    });
    let mut results: Vec<(usize, (String, bool))> = futures_util::future::join_all(groups)
        .await
        .into_iter()
        .flatten()
        .collect();
    results.sort_by_key(|(i, _)| *i);
    let all_ok = results.iter().all(|(_, (_, ok))| *ok);
    let mut text = String::from("\nreached:\n");
    for (_, (line, _)) in results {
        let _ = writeln!(text, "{line}");
    }
    (text, all_ok)
}

/// One device read once: the line `check --connect` prints, and whether every point answered.
async fn reach(config: &Config, d: &crate::config::DeviceConfig) -> (String, bool) {
    let reachable = d.settings::<crate::config::ModbusDevice>().is_some()
        || d.settings::<crate::source::rtde::config::RtdeDevice>()
            .is_some()
        || d.settings::<crate::source::opcua::config::OpcuaDevice>()
            .is_some();
    if !reachable {
        return (
            format!(
                "  device {:?}: {} devices are not reached by check",
                d.id, d.protocol
            ),
            true,
        );
    }
    match crate::probe::probe(d, Some(&config.agent.data_dir)).await {
        Ok(p) if p.failed.is_empty() => (
            format!(
                "  device {:?}: ok, {} value{} read ({})",
                d.id,
                p.points,
                plural(p.points),
                p.table.lines().next().unwrap_or_default()
            ),
            true,
        ),
        Ok(p) => (
            format!(
                "  device {:?}: {} of {} values without a value: {}",
                d.id,
                p.failed.len(),
                p.points,
                p.failed
                    .iter()
                    .take(5)
                    .map(|(n, why)| format!("{n}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            false,
        ),
        Err(e) => (format!("  device {:?}: {e}", d.id), false),
    }
}
