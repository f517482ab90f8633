//! What one session of an OPC UA device reads, and as which devices: worked out at each
//! session start, since a server's nodes may have changed (a controller download). `node` and
//! `path` points are resolved; `robotics` points are found by browsing the server's OPC 40010
//! motion devices (`robotics.rs`): one motion device is the configured device itself, several
//! are written as devices `ID-1`, `ID-2`, … (the configured device keeps the `node`/`path`
//! points and its health record). A per-axis point has as many elements as the robot has axes,
//! each tagged with the axis's browse name (`axis_name`). Points without a `type` take their
//! node's DataType. A device with `robotics` points whose server has no robot is down (the
//! session fails, and is tried again with backoff).

use super::config::{opcua_point, Where};
use super::robotics::{self, Motion};
use super::session::{resolve, types};
use super::DevicePlan;
use crate::config::{DeviceConfig, PointConfig};
use opcua::client::Session;
use opcua::types::NodeId;

/// The tag that carries an axis's browse name.
pub const AXIS_NAME_TAG: &str = "axis_name";

/// One node a session reads: elements `first..first + count` of point `point` of device
/// `target`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Read {
    pub target: usize,
    pub point: usize,
    pub first: u16,
    pub count: u16,
    pub node: NodeId,
}

/// What a session reads.
#[derive(Debug)]
pub(crate) struct Shape {
    /// The devices written: the configured one first, then one per motion device when there
    /// are several.
    pub targets: Vec<DeviceConfig>,
    pub reads: Vec<Read>,
    /// Per device: what is not read, and why.
    pub problems: Vec<Vec<String>>,
    /// Standard variables the server does not have (many are optional in OPC 40010).
    pub absent: Vec<String>,
    /// Their elements: device, point, element (0-based).
    pub missing: Vec<(usize, usize, u16)>,
}

impl Shape {
    /// Whether `other` reads the same nodes as the same devices (a browse during a session
    /// found nothing changed).
    pub(crate) fn same_as(&self, other: &Shape) -> bool {
        let same_points = |a: &DeviceConfig, b: &DeviceConfig| {
            a.id == b.id
                && a.points.len() == b.points.len()
                && a.points.iter().zip(&b.points).all(|(p, q)| {
                    p.name == q.name
                        && p.count == q.count
                        && p.kind == q.kind
                        && p.element_tag == q.element_tag
                })
        };
        self.reads == other.reads
            && self.targets.len() == other.targets.len()
            && self
                .targets
                .iter()
                .zip(&other.targets)
                .all(|(a, b)| same_points(a, b))
    }

    /// Whether any of its nodes was found by browsing (`path`, `robotics`).
    pub(crate) fn browsed(plan: &DevicePlan) -> bool {
        plan.config.points.iter().any(|p| {
            matches!(
                opcua_point(p).map(|o| &o.at),
                Some(Where::Path(_) | Where::Robotics(_))
            )
        })
    }
}

/// Works out what a session on `session` reads for `plan`'s device.
pub(crate) async fn of(session: &Session, plan: &DevicePlan) -> Result<Shape, String> {
    let base = &plan.config;
    let robotic = robotic_points(base);
    let plain: Vec<(usize, &Where)> = base
        .points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, &opcua_point(p)?.at)))
        .filter(|(_, w)| !matches!(w, Where::Robotics(_)))
        .collect();
    let wheres: Vec<&Where> = plain.iter().map(|(_, w)| *w).collect();
    let resolved = resolve(session, &wheres).await?;
    let mut plain_nodes: Vec<Option<Result<NodeId, String>>> = vec![None; base.points.len()];
    for ((i, _), r) in plain.iter().zip(resolved) {
        plain_nodes[*i] = Some(r);
    }
    // No robot found where the device expects one is the session's failure (the device is
    // down, and tried again with backoff), not a quiet loss of its robots.
    let motions = if robotic.iter().any(|r| *r) {
        robotics::browse(session)
            .await
            .map_err(|e| format!("OPC 40010 robots: {e}"))?
    } else {
        Vec::new()
    };
    // Each device: its configuration, the base point each of its points comes from, and the
    // motion device its `robotics` points read.
    let mut targets: Vec<(DeviceConfig, Vec<usize>, Option<&Motion>)> = Vec::new();
    if motions.len() <= 1 {
        let m = motions.first();
        targets.push(device(base, &base.id, |_| true, m));
    } else {
        targets.push(device(base, &base.id, |i| !robotic[i], None));
        for (k, m) in motions.iter().enumerate() {
            let id = format!("{}-{}", base.id, k + 1);
            targets.push(device(base, &id, |i| robotic[i], Some(m)));
        }
    }
    let mut problems: Vec<Vec<String>> = vec![Vec::new(); targets.len()];
    let mut absent = Vec::new();
    let mut missing_elements = Vec::new();
    let mut reads = Vec::new();
    for (t, (cfg, origin, motion)) in targets.iter().enumerate() {
        for (pi, p) in cfg.points.iter().enumerate() {
            let Some(op) = opcua_point(p) else {
                continue;
            };
            match &op.at {
                Where::Robotics(role) => {
                    let Some(m) = motion else {
                        continue;
                    };
                    let n = if role.per_axis() { p.count } else { 1 };
                    let mut missing = 0;
                    for e in 0..n {
                        match m.node(role, e as usize) {
                            Some(node) => reads.push(Read {
                                target: t,
                                point: pi,
                                first: e,
                                count: 1,
                                node: node.clone(),
                            }),
                            None => {
                                missing += 1;
                                missing_elements.push((t, pi, e));
                            }
                        }
                    }
                    if missing > 0 {
                        let of = if role.per_axis() {
                            format!(" ({missing} of {n} axes)")
                        } else {
                            String::new()
                        };
                        absent.push(format!("{} {role}{of}", m.name));
                    }
                }
                _ => match &plain_nodes[origin[pi]] {
                    Some(Ok(node)) => reads.push(Read {
                        target: t,
                        point: pi,
                        first: 0,
                        count: p.count,
                        node: node.clone(),
                    }),
                    Some(Err(e)) => problems[t].push(format!("point {:?}: {e}", p.name)),
                    None => {}
                },
            }
        }
    }
    let mut targets: Vec<DeviceConfig> = targets.into_iter().map(|(c, _, _)| c).collect();
    types(session, plan, &mut targets, &mut reads, &mut problems).await?;
    Ok(Shape {
        targets,
        reads,
        problems,
        absent,
        missing: missing_elements,
    })
}

/// A device written by the session: `base`'s points that `keep` keeps, named `id`, per-axis
/// points sized to `motion`'s axes.
fn device<'m>(
    base: &DeviceConfig,
    id: &str,
    keep: impl Fn(usize) -> bool,
    motion: Option<&'m Motion>,
) -> (DeviceConfig, Vec<usize>, Option<&'m Motion>) {
    let mut d = base.clone();
    d.id = id.to_string();
    let mut origin = Vec::new();
    d.points = base
        .points
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(i, p)| {
            origin.push(i);
            sized(p, motion)
        })
        .collect();
    (d, origin, motion)
}

/// A per-axis `robotics` point with one element per axis of `motion` (tagged with the axes'
/// browse names); any other point as it is.
fn sized(p: &PointConfig, motion: Option<&Motion>) -> PointConfig {
    let mut p = p.clone();
    let per_axis =
        matches!(opcua_point(&p).map(|o| &o.at), Some(Where::Robotics(r)) if r.per_axis());
    if let (true, Some(m)) = (per_axis, motion) {
        if !m.axes.is_empty() {
            p.count = m.axes.len().min(u16::MAX as usize) as u16;
            if p.index_tag.is_none() {
                p.index_tag = Some("axis".into());
            }
            p.element_tag = Some(Box::new((AXIS_NAME_TAG.to_string(), m.axis_names())));
        }
    }
    p
}

/// Per point of `d`: whether it belongs to a robot (a `robotics` point, or a derived point
/// that reads one).
fn robotic_points(d: &DeviceConfig) -> Vec<bool> {
    let mut robotic: Vec<bool> = d
        .points
        .iter()
        .map(|p| matches!(opcua_point(p).map(|o| &o.at), Some(Where::Robotics(_))))
        .collect();
    loop {
        let mut changed = false;
        for (i, p) in d.points.iter().enumerate() {
            let Some(derive) = &p.derive else {
                continue;
            };
            if robotic[i] {
                continue;
            }
            let reads_robot = derive.inputs().iter().any(|(name, _)| {
                d.points.iter().enumerate().any(|(j, q)| {
                    robotic[j] && crate::transform::expr::names(name, &q.measurement, &q.name)
                })
            });
            if reads_robot {
                robotic[i] = true;
                changed = true;
            }
        }
        if !changed {
            return robotic;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Derive;

    /// `opcua-robotics`' `robot.state`, by hand: (emergency stop, protective stop, operational
    /// mode, in control, on path) → state; NaN: the server lacks that variable.
    #[test]
    fn the_robot_state_rules_of_opcua_robotics() {
        let text = "[line]\nid = \"l\"\n[sinks.f]\ntype = \"file\"\npath = \"/tmp/x.lp\"\n\
                    [[devices]]\nid = \"r\"\nprotocol = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:4840\"\nprofile = \"opcua-robotics\"\n";
        let cfg = crate::config::parse("t.toml", text).unwrap_or_else(|e| panic!("{e}"));
        let d = &cfg.devices[0];
        let state = d.points.iter().find(|p| p.name == "state").unwrap();
        let Some(Derive::Expr(e)) = state.derive.as_deref() else {
            panic!("state is an expression");
        };
        let names = [
            "emergency_stop",
            "protective_stop",
            "operational_mode",
            "in_control",
            "on_path",
        ];
        let bound = e
            .bind(1, &mut |n, _, _| names.iter().position(|x| *x == n))
            .expect("every input is one of the five");
        let n = f64::NAN;
        for (inputs, want) in [
            ([1.0, 1.0, 4.0, 1.0, 1.0], 6.0), // emergency stop first
            ([0.0, 1.0, 1.0, 1.0, 1.0], 5.0), // then a protective stop
            ([0.0, 0.0, 1.0, 1.0, 1.0], 4.0), // manual, reduced speed
            ([0.0, 0.0, 2.0, 1.0, 1.0], 4.0), // manual, high speed
            ([0.0, 0.0, 3.0, 1.0, 1.0], 3.0), // automatic, in control, on its path
            ([0.0, 0.0, 4.0, 1.0, 0.0], 2.0), // off its path: idle
            ([0.0, 0.0, 4.0, 0.0, 1.0], 2.0), // not in control: idle
            ([0.0, 0.0, 3.0, 1.0, n], 3.0),   // no OnPath on the server: InControl decides
            ([0.0, 0.0, 3.0, n, 1.0], 3.0),   // no InControl: OnPath decides
            ([0.0, 0.0, 3.0, n, n], 2.0),     // neither: idle
            ([n, n, n, n, n], 2.0),
        ] {
            assert_eq!(bound.eval(&inputs, 0.0), want, "{inputs:?}");
        }
    }
}
