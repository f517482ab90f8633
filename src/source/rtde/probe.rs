//! `linetap probe` for an RTDE device (`--rtde HOST[:PORT]`, or a config's `rtde` device):
//! sets the device's recipe up as the agent would, reads one data package and shows each
//! point's field, value, unit and label, with derived points (the robot's state) computed as
//! the agent computes them. A field the controller lacks, a refused frequency or recipe is
//! the agent's error, said here at once.

use super::config::RtdeDevice;
use super::session::Conn;
use super::{asked, layout, package, protocol, register, State};
use crate::config::DeviceConfig;
use crate::model::catalog::Registry;
use crate::probe::{table, Probed};
use crate::transform::DeviceView;
use bytes::Buf;
use std::collections::HashMap;
use std::time::Instant;

/// Reads one package of `d`.
pub async fn probe(d: &DeviceConfig, r: &RtdeDevice) -> Result<Probed, String> {
    let mut registry = Registry::new("probe", "", Vec::new(), None);
    let plan = register(d, r, &mut registry);
    let version = registry.version();
    let view = DeviceView::of(&version, plan.device);
    let started = Instant::now();
    let mut conn = Conn::connect(&plan.address, plan.timeout, &plan.name)
        .await
        .map_err(|e| e.to_string())?;
    let recipe = conn
        .start(plan.frequency, &asked(&plan))
        .await
        .map_err(|e| e.to_string())?;
    let layout = layout(&plan, &recipe);
    let types: Vec<protocol::FieldType> = layout.iter().map(|(_, t)| *t).collect();
    let mut st = State::new(plan.device);
    let deadline = tokio::time::Instant::now() + plan.timeout;
    loop {
        let found = protocol::next_package(&conn.buf).map_err(|e| format!("not RTDE: {e}"))?;
        match found {
            Some((protocol::DATA_PACKAGE, payload, n)) => {
                protocol::decode_data(payload, recipe.id, &types, &mut st.raws)
                    .map_err(|e| format!("unreadable data package: {e}"))?;
                conn.buf.advance(n);
                let c = package(&layout, &mut st, 1.0 / plan.frequency);
                if c.rejected > 0 {
                    tracing::warn!("{} values out of their point's range", c.rejected);
                }
                break;
            }
            Some((kind, payload, n)) => {
                if kind == protocol::TEXT_MESSAGE {
                    super::session::log_text(&plan.name, payload);
                }
                conn.buf.advance(n);
            }
            None => match tokio::time::timeout_at(deadline, conn.fill()).await {
                Ok(r) => r.map_err(|e| e.to_string())?,
                Err(_) => {
                    return Err(format!(
                        "the controller set the recipe up but sent no data package within {:?}",
                        plan.timeout
                    ))
                }
            },
        }
    }
    let elapsed = started.elapsed();
    // The raw column: the field (and element) each value came from.
    let mut raw: HashMap<u32, String> = HashMap::new();
    for (f, t) in &layout {
        for target in &f.targets {
            let text = if t.elements() > 1 {
                format!("{}[{}]", f.name, target.element + 1)
            } else {
                f.name.clone()
            };
            let text = match target.bit {
                Some(b) => format!("{text} bit {b}"),
                None => text,
            };
            raw.insert(target.point, text);
        }
    }
    let mut failed = HashMap::new();
    for f in &plan.fields {
        if recipe.missing.contains(&f.name) {
            for t in &f.targets {
                failed.insert(
                    t.point,
                    format!(
                        "{} is not on controller {} (optional: not written)",
                        f.name, recipe.version
                    ),
                );
            }
        }
    }
    let header = format!(
        "device {:?} at {} (rtde, controller {}){}: {} fields at {} Hz, first package in {} ms",
        d.id,
        plan.address,
        recipe.version,
        d.profile
            .as_ref()
            .map(|p| format!(" (profile {p})"))
            .unwrap_or_default(),
        recipe.fields.len(),
        plan.frequency,
        elapsed.as_millis()
    );
    let mut probed = table(
        d,
        &view,
        std::mem::take(&mut st.batch),
        &raw,
        &failed,
        header,
    );
    probed.requests = 1;
    probed.answered = 1;
    Ok(probed)
}
