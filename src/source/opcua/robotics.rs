//! OPC UA for Robotics (OPC 40010-1): where a `robotics` point's value is, and finding it on a
//! server by browsing. Every MotionDeviceSystem under `Objects/DeviceSet` (an object there
//! with a `MotionDevices` folder: its instance name and type are the vendor's) is browsed at
//! each session start; each of its motion devices becomes one robot, with its axes (in the
//! order of the Axes folder), the motor of the power train driving each axis (the references
//! between them — IsDrivenBy, Moves — else the order of PowerTrains), and the system's first
//! controller, first task control and first safety state.
//!
//! Browse names are matched by name (vendors put instances in their own namespaces; the
//! standard's components are in the Robotics and DI namespaces).

use opcua::client::Session;
use opcua::types::{
    BrowseDescription, BrowseDirection, BrowseResultMask, NodeClass, NodeId, ObjectId,
    ReferenceTypeId,
};
use std::collections::HashMap;

/// Where a `robotics` point's value is, seen from one motion device (`robotics = "…"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// A variable of the motion device (its ParameterSet: `SpeedOverride`, `InControl`,
    /// `OnPath`; or the device itself: `Manufacturer`, `Model`, `SerialNumber`).
    Motion(String),
    /// One value per axis: a variable of each axis (`Axes/ActualPosition`).
    Axes(String),
    /// One value per axis: a variable of the motor in the power train that drives the axis
    /// (`PowerTrains/MotorTemperature`).
    PowerTrains(String),
    /// A variable of the system's first controller (`Controllers/TotalPowerOnTime`).
    Controllers(String),
    /// A variable of the first controller's first task control
    /// (`TaskControls/TaskProgramName`).
    TaskControls(String),
    /// A variable of the system's first safety state (`SafetyStates/EmergencyStop`).
    SafetyStates(String),
}

/// The scopes a role may start with.
pub const SCOPES: [&str; 5] = [
    "Axes",
    "PowerTrains",
    "Controllers",
    "TaskControls",
    "SafetyStates",
];

impl Role {
    /// `SCOPE/NAME` or `NAME` (a variable of the motion device).
    pub fn parse(s: &str) -> Result<Role, String> {
        let s = s.trim();
        let ok = |n: &str| !n.is_empty() && !n.contains('/');
        match s.split_once('/') {
            None if ok(s) => Ok(Role::Motion(s.to_string())),
            Some((scope, name)) if ok(name) => {
                let name = name.to_string();
                Ok(match scope {
                    "Axes" => Role::Axes(name),
                    "PowerTrains" => Role::PowerTrains(name),
                    "Controllers" => Role::Controllers(name),
                    "TaskControls" => Role::TaskControls(name),
                    "SafetyStates" => Role::SafetyStates(name),
                    other => {
                        let hint = crate::config::validate::closest(other, SCOPES.into_iter(), 4)
                            .map(|c| format!(" (did you mean {c:?}?)"))
                            .unwrap_or_default();
                        return Err(format!(
                            "unknown robotics scope {other:?}{hint}: one of {}, or a variable of the motion device without a scope",
                            SCOPES.join(", ")
                        ));
                    }
                })
            }
            _ => Err(format!(
                "robotics = {s:?}: write SCOPE/VARIABLE (e.g. \"Axes/ActualPosition\") or a variable of the motion device (\"SpeedOverride\")"
            )),
        }
    }

    /// Whether it has one value per axis.
    pub fn per_axis(&self) -> bool {
        matches!(self, Role::Axes(_) | Role::PowerTrains(_))
    }

    /// The variable's browse name.
    pub fn variable(&self) -> &str {
        match self {
            Role::Motion(n)
            | Role::Axes(n)
            | Role::PowerTrains(n)
            | Role::Controllers(n)
            | Role::TaskControls(n)
            | Role::SafetyStates(n) => n,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = match self {
            Role::Motion(_) => "",
            Role::Axes(_) => "Axes/",
            Role::PowerTrains(_) => "PowerTrains/",
            Role::Controllers(_) => "Controllers/",
            Role::TaskControls(_) => "TaskControls/",
            Role::SafetyStates(_) => "SafetyStates/",
        };
        write!(f, "{scope}{}", self.variable())
    }
}

/// A component's variables by browse name.
pub type Vars = HashMap<String, NodeId>;

/// One motion device (a robot) and what it reads from its system.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Motion {
    /// Its browse name.
    pub name: String,
    pub vars: Vars,
    /// Its axes in the Axes folder's order: browse name and variables.
    pub axes: Vec<(String, Vars)>,
    /// Per axis, the variables of the motor driving it (empty: none found).
    pub motors: Vec<Vars>,
    pub controller: Vars,
    pub task: Vars,
    pub safety: Vars,
}

impl Motion {
    /// The node of `role`'s value for element `axis` (0-based; ignored by roles of one value).
    pub fn node(&self, role: &Role, axis: usize) -> Option<&NodeId> {
        let vars = match role {
            Role::Motion(_) => &self.vars,
            Role::Axes(_) => &self.axes.get(axis)?.1,
            Role::PowerTrains(_) => self.motors.get(axis)?,
            Role::Controllers(_) => &self.controller,
            Role::TaskControls(_) => &self.task,
            Role::SafetyStates(_) => &self.safety,
        };
        vars.get(role.variable())
    }

    /// Its axes' browse names.
    pub fn axis_names(&self) -> Vec<String> {
        self.axes.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// One child of a node.
#[derive(Clone)]
struct Child {
    name: String,
    id: NodeId,
    class: NodeClass,
}

/// Every motion device of every MotionDeviceSystem under `Objects/DeviceSet`, in browse
/// order; an error when the server has none.
pub async fn browse(session: &Session) -> Result<Vec<Motion>, String> {
    let top = kids(session, &ObjectId::ObjectsFolder.into()).await?;
    let set = find(&top, "DeviceSet")
        .ok_or("the server has no Objects/DeviceSet (OPC UA DI): it serves no OPC 40010 robot")?;
    let mut out = Vec::new();
    for candidate in objects(&kids(session, &set.id).await?) {
        // An object this client may not browse is not a robot of ours.
        let Ok(parts) = kids(session, &candidate.id).await else {
            continue;
        };
        let Some(devices) = find(&parts, "MotionDevices") else {
            continue;
        };
        // Every controller: its id, its variables and its first task control's.
        let mut controllers: Vec<(NodeId, Vars, Vars)> = Vec::new();
        if let Some(f) = find(&parts, "Controllers") {
            for c in objects(&kids(session, &f.id).await?) {
                let (own, children) = vars(session, &c.id).await?;
                let task = match find(&children, "TaskControls") {
                    Some(t) => match objects(&kids(session, &t.id).await?).into_iter().next() {
                        Some(t) => vars(session, &t.id).await?.0,
                        None => Vars::new(),
                    },
                    None => Vars::new(),
                };
                controllers.push((c.id.clone(), own, task));
            }
        }
        let safety = match find(&parts, "SafetyStates") {
            Some(f) => match objects(&kids(session, &f.id).await?).into_iter().next() {
                Some(s) => vars(session, &s.id).await?.0,
                None => Vars::new(),
            },
            None => Vars::new(),
        };
        for md in objects(&kids(session, &devices.id).await?) {
            let (own, children) = vars(session, &md.id).await?;
            let mut axes = Vec::new();
            let mut axis_ids = Vec::new();
            if let Some(f) = find(&children, "Axes") {
                for a in objects(&kids(session, &f.id).await?) {
                    axes.push((a.name.clone(), vars(session, &a.id).await?.0));
                    axis_ids.push(a.id.clone());
                }
            }
            // Each power train: its id and its motor's variables.
            let mut trains: Vec<(NodeId, Vars)> = Vec::new();
            if let Some(f) = find(&children, "PowerTrains") {
                for pt in objects(&kids(session, &f.id).await?) {
                    let mut motor = Vars::new();
                    for part in objects(&kids(session, &pt.id).await?) {
                        let (v, _) = vars(session, &part.id).await?;
                        if v.contains_key("MotorTemperature") {
                            motor = v;
                            break;
                        }
                        if motor.is_empty() && part.name.to_ascii_lowercase().contains("motor") {
                            motor = v;
                        }
                    }
                    trains.push((pt.id.clone(), motor));
                }
            }
            let mut motors = Vec::with_capacity(axes.len());
            for (i, axis) in axis_ids.iter().enumerate() {
                let linked = linked(session, axis, &trains).await?;
                let train = linked.or((i < trains.len()).then_some(i));
                motors.push(train.map(|t| trains[t].1.clone()).unwrap_or_default());
            }
            // Its controller: the one that Controls it (a reference either way), else the
            // system's first.
            let (controller, task) = match controllers.len() {
                0 => (Vars::new(), Vars::new()),
                1 => (controllers[0].1.clone(), controllers[0].2.clone()),
                _ => {
                    let ids: Vec<(NodeId, Vars)> = controllers
                        .iter()
                        .map(|(id, _, _)| (id.clone(), Vars::new()))
                        .collect();
                    let k = linked(session, &md.id, &ids).await?.unwrap_or(0);
                    (controllers[k].1.clone(), controllers[k].2.clone())
                }
            };
            out.push(Motion {
                name: md.name.clone(),
                vars: own,
                axes,
                motors,
                controller,
                task,
                safety: safety.clone(),
            });
        }
    }
    if out.is_empty() {
        return Err("no MotionDeviceSystem under Objects/DeviceSet (no object there has a MotionDevices folder with a motion device)".into());
    }
    Ok(out)
}

/// Which of `others` `node` is linked to by a non-hierarchical reference either way (an
/// axis and the power train that drives it: IsDrivenBy / Moves; a motion device and its
/// controller: Controls).
async fn linked(
    session: &Session,
    node: &NodeId,
    trains: &[(NodeId, Vars)],
) -> Result<Option<usize>, String> {
    if trains.is_empty() {
        return Ok(None);
    }
    let refs = browse_all(
        session,
        node,
        ReferenceTypeId::NonHierarchicalReferences,
        BrowseDirection::Both,
    )
    .await?;
    Ok(refs
        .iter()
        .find_map(|c| trains.iter().position(|(t, _)| *t == c.id)))
}

/// A node's variables: its own variable children, and those of its `ParameterSet` (DI);
/// with its children.
async fn vars(session: &Session, node: &NodeId) -> Result<(Vars, Vec<Child>), String> {
    let children = kids(session, node).await?;
    let mut out: Vars = children
        .iter()
        .filter(|c| c.class == NodeClass::Variable)
        .map(|c| (c.name.clone(), c.id.clone()))
        .collect();
    if let Some(p) = find(&children, "ParameterSet") {
        for c in kids(session, &p.id).await? {
            if c.class == NodeClass::Variable {
                out.insert(c.name, c.id);
            }
        }
    }
    Ok((out, children))
}

fn find<'a>(children: &'a [Child], name: &str) -> Option<&'a Child> {
    children.iter().find(|c| c.name == name)
}

/// The objects among `children`, in the natural order of their browse names (A1, A2, …,
/// A10: a server's browse order is its own, and may change from one session to the next);
/// owned, as they are held across awaits.
fn objects(children: &[Child]) -> Vec<Child> {
    let mut out: Vec<Child> = children
        .iter()
        .filter(|c| c.class == NodeClass::Object)
        .cloned()
        .collect();
    out.sort_by(|a, b| natural(&a.name, &b.name));
    out
}

/// Compares names with their digit runs as numbers ("A2" < "A10").
pub(crate) fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let o = match (x, y) {
            ((true, p), (true, q)) => {
                let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                p.len().cmp(&q.len()).then_with(|| p.cmp(q))
            }
            ((_, p), (_, q)) => p.cmp(q),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len()).then_with(|| a.cmp(b))
}

/// A node's children (hierarchical references, forward).
async fn kids(session: &Session, node: &NodeId) -> Result<Vec<Child>, String> {
    browse_all(
        session,
        node,
        ReferenceTypeId::HierarchicalReferences,
        BrowseDirection::Forward,
    )
    .await
}

async fn browse_all(
    session: &Session,
    node: &NodeId,
    references: ReferenceTypeId,
    direction: BrowseDirection,
) -> Result<Vec<Child>, String> {
    let desc = BrowseDescription {
        node_id: node.clone(),
        browse_direction: direction,
        reference_type_id: references.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: BrowseResultMask::All as u32,
    };
    let failed = |e: opcua::types::Error| format!("browsing {node} failed: {}", e.status());
    let mut results = session.browse(&[desc], 1000, None).await.map_err(failed)?;
    let mut out = Vec::new();
    while let Some(r) = results.pop() {
        if !r.status_code.is_good() {
            return Err(format!("browsing {node}: {}", r.status_code));
        }
        out.extend(
            r.references
                .unwrap_or_default()
                .into_iter()
                .map(|rd| Child {
                    name: rd.browse_name.name.as_ref().to_string(),
                    id: rd.node_id.node_id,
                    class: rd.node_class,
                }),
        );
        if r.continuation_point.is_null() {
            break;
        }
        results = session
            .browse_next(false, &[r.continuation_point])
            .await
            .map_err(failed)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_with_their_scope() {
        assert_eq!(
            Role::parse("Axes/ActualPosition"),
            Ok(Role::Axes("ActualPosition".into()))
        );
        assert_eq!(
            Role::parse("SpeedOverride"),
            Ok(Role::Motion("SpeedOverride".into()))
        );
        assert_eq!(
            Role::parse("TaskControls/TaskProgramName").map(|r| r.to_string()),
            Ok("TaskControls/TaskProgramName".into())
        );
        let e = Role::parse("Axis/ActualPosition").unwrap_err();
        assert!(e.contains("did you mean \"Axes\"?"), "{e}");
        assert!(Role::parse("Axes/").is_err());
        assert!(Role::parse("Axes/A/B").is_err());
        assert!(Role::parse("").is_err());
        assert!(Role::PowerTrains("x".into()).per_axis());
        let mut names = vec!["A10", "A2", "A1", "J", "A02x", "B1", ""];
        names.sort_by(|a, b| natural(a, b));
        assert_eq!(names, ["", "A1", "A2", "A02x", "A10", "B1", "J"]);
        assert!(!Role::SafetyStates("x".into()).per_axis());
    }
}
