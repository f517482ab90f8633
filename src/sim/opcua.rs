//! The simulator's OPC UA side: an OPC UA server (async-opcua) for each `opcua` device of a
//! configuration, at its endpoint, without security (anonymous; a device that asks for a
//! security policy is told by the connection error). `robotics` points are served as an OPC
//! 40010 MotionDeviceSystem under `Objects/DeviceSet` (the spec's browse names in the DI and
//! Robotics namespaces; one motion device with as many axes as the per-axis points have
//! elements, each axis's power train and motor in the same order), `path` points at their
//! browse path (objects created along it) and `node` points with a namespace URI (`nsu=`) as a
//! variable of that node id. Values follow the points' `simulate` expressions (or a wave chosen
//! from the point's name, as for every simulated device), updated every `poll`; a text point
//! serves a fixed text, `TotalPowerOnTime` an ISO 8601 duration (OPC 40010's DurationString).

use super::signal::Wave;
use crate::config::{DeviceConfig, PointConfig, PointType};
use crate::source::opcua::address::{split_endpoint, Identifier, Namespace};
use crate::source::opcua::config::{opcua_point, OpcuaDevice, Where};
use crate::source::opcua::robotics::Role;
use opcua::server::address_space::{AddressSpace, ObjectBuilder, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, ServerHandle};
use opcua::types::{DataTypeId, DataValue, NodeId, ObjectId, QualifiedName, Variant};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const DI: &str = "http://opcfoundation.org/UA/DI/";
const ROBOTICS: &str = "http://opcfoundation.org/UA/Robotics/";
/// DurationString (ns=0), the DataType of OPC 40010's TotalPowerOnTime.
const DURATION_STRING: u32 = 12879;

/// How a served variable's value moves.
enum Gen {
    /// A number in the point's unit (its scale and offset undone), as the point's type.
    Number {
        wave: Wave,
        kind: PointType,
        scale: f64,
        offset: f64,
    },
    /// An array of numbers (a `path`/`node` point with `count`).
    Array {
        waves: Vec<Wave>,
        kind: PointType,
        scale: f64,
        offset: f64,
    },
    Text(String),
    /// Seconds since power-on as an ISO 8601 duration.
    PowerOn {
        base_s: f64,
    },
}

/// One variable the server updates.
struct Served {
    node: NodeId,
    gen: Gen,
}

/// The namespaces of a device's server, by URI: the simulator's own (its nodes), DI and
/// Robotics, and every URI its points name.
fn namespaces(d: &DeviceConfig) -> Vec<String> {
    let mut uris = BTreeSet::new();
    for p in &d.points {
        match opcua_point(p).map(|o| &o.at) {
            Some(Where::Node(n)) => {
                if let Namespace::Uri(u) = &n.namespace {
                    uris.insert(u.clone());
                }
            }
            Some(Where::Path(path)) => {
                uris.extend(path.iter().filter_map(|e| e.namespace.clone()));
            }
            _ => {}
        }
    }
    let own = own_namespace(d);
    let mut out = vec![own.clone(), DI.to_string(), ROBOTICS.to_string()];
    out.extend(
        uris.into_iter()
            .filter(|u| *u != own && u != DI && u != ROBOTICS),
    );
    out
}

/// The simulator's namespace of device `d` (not its application URI: that is the server's
/// namespace 1, owned by the server itself).
fn own_namespace(d: &DeviceConfig) -> String {
    format!("urn:linetap:simulator:{}:nodes", d.id)
}

/// The endpoint `endpoint` with its port replaced by `at`'s (a `:0` endpoint was served on an
/// ephemeral port).
pub fn endpoint_at(endpoint: &str, at: SocketAddr) -> String {
    match split_endpoint(endpoint) {
        Some((host, _, path)) => {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("opc.tcp://{host}:{}{path}", at.port())
        }
        None => endpoint.to_string(),
    }
}

/// Cancels a server when its task ends or is aborted (`SimHandle::stop`).
struct CancelOnDrop(ServerHandle, std::path::PathBuf);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// Starts serving device `d`; returns the address it listens on and the server's task.
pub async fn start(
    d: &DeviceConfig,
    o: &OpcuaDevice,
    started: Instant,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let (host, port, path) = split_endpoint(&o.endpoint)
        .ok_or_else(|| bad(format!("device {:?}: endpoint {:?}", d.id, o.endpoint)))?;
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {host}:{port}: {e}")))?;
    let local = listener.local_addr()?;
    let endpoint = endpoint_at(&o.endpoint, local);
    // The server's own certificate (OPC UA servers have one even without security).
    let pki = std::env::temp_dir().join(format!(
        "linetap-sim-opcua-{}-{}",
        std::process::id(),
        crate::model::now_ns()
    ));
    let uris = namespaces(d);
    let mut builder = ServerBuilder::new_anonymous("linetap simulator")
        .application_uri(format!("urn:linetap:simulator:{}", d.id))
        .product_uri("urn:linetap")
        .host(host.clone())
        .port(local.port())
        .pki_dir(&pki)
        .create_sample_keypair(true)
        .trust_client_certs(true)
        .diagnostics_enabled(false)
        .discovery_urls(vec![endpoint.clone()]);
    if path != "/" {
        builder = builder.add_endpoint(
            "none-path",
            opcua::server::ServerEndpoint::new_none(
                &path,
                &[opcua::server::ANONYMOUS_USER_TOKEN_ID.to_string()],
            ),
        );
    }
    for uri in &uris {
        builder = builder.with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: uri.clone(),
                ..Default::default()
            },
            uri,
        ));
    }
    let (server, handle) = builder.build().map_err(bad)?;
    let mut index = HashMap::new();
    let mut managers = HashMap::new();
    for uri in &uris {
        let i = handle
            .get_namespace_index(uri)
            .ok_or_else(|| bad(format!("namespace {uri} not registered")))?;
        let m = handle
            .node_managers()
            .get_by_name::<SimpleNodeManager>(uri)
            .ok_or_else(|| bad(format!("no node manager for {uri}")))?;
        index.insert(uri.clone(), i);
        managers.insert(i, m);
    }
    let served = {
        let mut spaces: HashMap<u16, _> = managers
            .iter()
            .map(|(i, m)| (*i, m.address_space().clone()))
            .collect();
        let mut locks: HashMap<u16, _> = spaces.iter_mut().map(|(i, s)| (*i, s.write())).collect();
        let mut b = Build {
            spaces: &mut locks,
            index: &index,
            own: index[&own_namespace(d)],
            served: Vec::new(),
            device: &d.id,
        };
        b.robot(d);
        b.points(d);
        b.served
    };
    let poll = d.poll.max(Duration::from_millis(50));
    let task = tokio::spawn(async move {
        let guard = CancelOnDrop(handle.clone(), pki);
        let updates = update(handle.clone(), managers, served, poll, started);
        tokio::select! {
            r = server.run_with(listener) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "simulated OPC UA server stopped");
                }
            }
            _ = updates => {}
        }
        drop(guard);
    });
    Ok((local, task))
}

/// Sets every served variable from its generator every `poll`.
async fn update(
    handle: ServerHandle,
    managers: HashMap<u16, Arc<SimpleNodeManager>>,
    served: Vec<Served>,
    poll: Duration,
    started: Instant,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let mut by_ns: HashMap<u16, Vec<(NodeId, DataValue)>> = HashMap::new();
        for s in &served {
            by_ns
                .entry(s.node.namespace)
                .or_default()
                .push((s.node.clone(), DataValue::new_now(value(&s.gen, t))));
        }
        for (ns, values) in by_ns {
            if let Some(m) = managers.get(&ns) {
                let _ = m.set_values(
                    handle.subscriptions(),
                    values.iter().map(|(n, v)| (n, None, v.clone())),
                );
            }
        }
    }
}

/// A generator's value at `t` seconds.
fn value(g: &Gen, t: f64) -> Variant {
    match g {
        Gen::Number {
            wave,
            kind,
            scale,
            offset,
        } => number((wave.value(t) - offset) / scale, *kind),
        Gen::Array {
            waves,
            kind,
            scale,
            offset,
        } => {
            let values: Vec<Variant> = waves
                .iter()
                .map(|w| number((w.value(t) - offset) / scale, *kind))
                .collect();
            // Every element has the point's type: an array of it.
            let element = values
                .first()
                .and_then(|v| v.scalar_type_id())
                .unwrap_or(opcua::types::VariantScalarTypeId::Double);
            match opcua::types::Array::new(element, values) {
                Ok(a) => Variant::Array(Box::new(a)),
                Err(_) => Variant::Empty,
            }
        }
        Gen::Text(s) => Variant::from(s.as_str()),
        Gen::PowerOn { base_s } => {
            let s = (base_s + t).max(0.0) as u64;
            Variant::from(format!(
                "P{}DT{}H{}M{}S",
                s / 86_400,
                s % 86_400 / 3600,
                s % 3600 / 60,
                s % 60
            ))
        }
    }
}

/// A number as a variant of `kind` (integers rounded and saturated).
fn number(x: f64, kind: PointType) -> Variant {
    let x = if x.is_finite() { x } else { 0.0 };
    let r = x.round();
    match kind {
        PointType::Bool => Variant::Boolean(x != 0.0),
        PointType::I8 => Variant::SByte(r as i8),
        PointType::U8 => Variant::Byte(r as u8),
        PointType::I16 => Variant::Int16(r as i16),
        PointType::U16 => Variant::UInt16(r as u16),
        PointType::I32 => Variant::Int32(r as i32),
        PointType::U32 => Variant::UInt32(r as u32),
        PointType::I64 => Variant::Int64(r as i64),
        PointType::U64 => Variant::UInt64(r as u64),
        PointType::F16 | PointType::F32 => Variant::Float(x as f32),
        PointType::F64 | PointType::String => Variant::Double(x),
    }
}

fn data_type(kind: PointType) -> DataTypeId {
    match kind {
        PointType::Bool => DataTypeId::Boolean,
        PointType::I8 => DataTypeId::SByte,
        PointType::U8 => DataTypeId::Byte,
        PointType::I16 => DataTypeId::Int16,
        PointType::U16 => DataTypeId::UInt16,
        PointType::I32 => DataTypeId::Int32,
        PointType::U32 => DataTypeId::UInt32,
        PointType::I64 => DataTypeId::Int64,
        PointType::U64 => DataTypeId::UInt64,
        PointType::F16 | PointType::F32 => DataTypeId::Float,
        PointType::F64 => DataTypeId::Double,
        PointType::String => DataTypeId::String,
    }
}

/// Builds a device's address space.
struct Build<'a, L> {
    spaces: &'a mut HashMap<u16, L>,
    index: &'a HashMap<String, u16>,
    /// The simulator's namespace: its nodes live here.
    own: u16,
    served: Vec<Served>,
    device: &'a str,
}

impl<L: std::ops::DerefMut<Target = AddressSpace>> Build<'_, L> {
    fn ns(&self, uri: &str) -> u16 {
        self.index.get(uri).copied().unwrap_or(self.own)
    }

    /// An object `name` (browse name in namespace `ns`) under `parent`, node id `key` in the
    /// simulator's namespace; an existing one is reused.
    fn object(&mut self, key: &str, ns: u16, name: &str, parent: &NodeId) -> NodeId {
        let id = NodeId::new(self.own, key.to_string());
        if let Some(space) = self.spaces.get_mut(&self.own) {
            if !space.node_exists(&id) {
                ObjectBuilder::new(&id, QualifiedName::new(ns, name), name)
                    .organized_by(parent.clone())
                    .insert(&mut **space);
            }
        }
        id
    }

    /// A variable `id` (browse name `name` in namespace `ns`) under `parent`, served from `gen`.
    fn variable(&mut self, id: NodeId, ns: u16, name: &str, parent: &NodeId, gen: Gen, dt: NodeId) {
        let Some(space) = self.spaces.get_mut(&id.namespace) else {
            tracing::warn!(device = %self.device, node = %id, "the simulator has no namespace for this node; not served");
            return;
        };
        if space.node_exists(&id) {
            return;
        }
        let initial = value(&gen, 0.0);
        VariableBuilder::new(&id, QualifiedName::new(ns, name), name)
            .data_type(dt)
            .value(initial)
            .component_of(parent.clone())
            .insert(&mut **space);
        self.served.push(Served { node: id, gen });
    }

    fn gen(&self, p: &PointConfig, element: u16) -> (Gen, NodeId) {
        if p.kind == PointType::String {
            let text = format!("{}_MAIN", self.device.to_uppercase().replace('-', "_"));
            return (Gen::Text(text), DataTypeId::String.into());
        }
        let (scale, offset) = if p.scale == 0.0 {
            (1.0, 0.0)
        } else {
            (p.scale, p.offset)
        };
        (
            Gen::Number {
                wave: Wave::of(p, element, self.device),
                kind: p.kind,
                scale,
                offset,
            },
            data_type(p.kind).into(),
        )
    }

    /// The OPC 40010 structure for the device's `robotics` points.
    fn robot(&mut self, d: &DeviceConfig) {
        let roles: Vec<(&PointConfig, &Role)> = d
            .points
            .iter()
            .filter_map(|p| match opcua_point(p).map(|o| &o.at) {
                Some(Where::Robotics(r)) => Some((p, r)),
                _ => None,
            })
            .collect();
        if roles.is_empty() {
            return;
        }
        let (di, r) = (self.ns(DI), self.ns(ROBOTICS));
        let own = self.own;
        let axes = roles
            .iter()
            .filter(|(_, role)| role.per_axis())
            .map(|(p, _)| p.count)
            .max()
            .unwrap_or(6)
            .max(1);
        let objects: NodeId = ObjectId::ObjectsFolder.into();
        let set = self.object("DeviceSet", di, "DeviceSet", &objects);
        let system = self.object("DeviceSet.System", own, self.device, &set);
        let devices = self.object("System.MotionDevices", r, "MotionDevices", &system);
        let robot = self.object("Robot", own, "Robot", &devices);
        let axes_folder = self.object("Robot.Axes", r, "Axes", &robot);
        let trains_folder = self.object("Robot.PowerTrains", r, "PowerTrains", &robot);
        let mut axis_params = Vec::new();
        let mut motor_params = Vec::new();
        for a in 1..=axes {
            let axis = self.object(&format!("Robot.A{a}"), own, &format!("A{a}"), &axes_folder);
            axis_params.push(self.object(
                &format!("Robot.A{a}.ParameterSet"),
                di,
                "ParameterSet",
                &axis,
            ));
            let train = self.object(
                &format!("Robot.PowerTrain{a}"),
                own,
                &format!("PowerTrain{a}"),
                &trains_folder,
            );
            let motor = self.object(&format!("Robot.PowerTrain{a}.Motor"), own, "Motor", &train);
            motor_params.push(self.object(
                &format!("Robot.PowerTrain{a}.Motor.ParameterSet"),
                di,
                "ParameterSet",
                &motor,
            ));
        }
        let robot_params = self.object("Robot.ParameterSet", di, "ParameterSet", &robot);
        let controllers = self.object("System.Controllers", r, "Controllers", &system);
        let controller = self.object("Controller", own, "Controller", &controllers);
        let controller_params =
            self.object("Controller.ParameterSet", di, "ParameterSet", &controller);
        let tasks = self.object("Controller.TaskControls", r, "TaskControls", &controller);
        let task = self.object("Task", own, "Task", &tasks);
        let task_params = self.object("Task.ParameterSet", di, "ParameterSet", &task);
        let states = self.object("System.SafetyStates", r, "SafetyStates", &system);
        let safety = self.object("SafetyState", own, "SafetyState", &states);
        let safety_params = self.object("SafetyState.ParameterSet", di, "ParameterSet", &safety);
        for (p, role) in roles {
            let name = role.variable();
            let (parents, key): (Vec<&NodeId>, &str) = match role {
                Role::Motion(_) => (vec![&robot_params], "Robot"),
                Role::Axes(_) => (axis_params.iter().collect(), "Axis"),
                Role::PowerTrains(_) => (motor_params.iter().collect(), "Motor"),
                Role::Controllers(_) => (vec![&controller_params], "Controller"),
                Role::TaskControls(_) => (vec![&task_params], "Task"),
                Role::SafetyStates(_) => (vec![&safety_params], "SafetyState"),
            };
            for (e, parent) in parents.into_iter().enumerate() {
                let id = NodeId::new(own, format!("{key}{}.{name}", e + 1));
                let (gen, dt) = if matches!(role, Role::Controllers(n) if n == "TotalPowerOnTime") {
                    (
                        Gen::PowerOn {
                            base_s: 3_600.0 * 1_200.0,
                        },
                        NodeId::new(0, DURATION_STRING),
                    )
                } else {
                    self.gen(p, e as u16 + 1)
                };
                let parent = parent.clone();
                self.variable(id, r, name, &parent, gen, dt);
            }
        }
    }

    /// The device's `path` and `node` points.
    fn points(&mut self, d: &DeviceConfig) {
        let objects: NodeId = ObjectId::ObjectsFolder.into();
        for p in &d.points {
            let Some(at) = opcua_point(p).map(|o| &o.at) else {
                continue;
            };
            let (gen, dt) = if p.count > 1 && p.kind != PointType::String {
                let (scale, offset) = if p.scale == 0.0 {
                    (1.0, 0.0)
                } else {
                    (p.scale, p.offset)
                };
                (
                    Gen::Array {
                        waves: (1..=p.count).map(|e| Wave::of(p, e, self.device)).collect(),
                        kind: p.kind,
                        scale,
                        offset,
                    },
                    data_type(p.kind).into(),
                )
            } else {
                self.gen(p, 1)
            };
            match at {
                Where::Path(path) => {
                    let Some((first, rest)) = path.split_first() else {
                        continue;
                    };
                    let Some((last, between)) = rest.split_last() else {
                        continue;
                    };
                    if first.name != "Objects" {
                        tracing::warn!(device = %d.id, point = %p.name, "the simulator serves paths under Objects/ only");
                        continue;
                    }
                    let mut parent = objects.clone();
                    let mut key = String::from("path");
                    for e in between {
                        key.push('/');
                        key.push_str(&e.name);
                        let ns = e.namespace.as_deref().map_or(self.own, |u| self.ns(u));
                        parent = self.object(&key, ns, &e.name, &parent);
                    }
                    key.push('/');
                    key.push_str(&last.name);
                    let ns = last.namespace.as_deref().map_or(self.own, |u| self.ns(u));
                    let id = NodeId::new(self.own, key);
                    self.variable(id, ns, &last.name, &parent, gen, dt);
                }
                Where::Node(n) => {
                    let ns = match &n.namespace {
                        Namespace::Uri(u) => self.ns(u),
                        Namespace::Index(i) if *i == self.own => *i,
                        Namespace::Index(i) => {
                            tracing::warn!(device = %d.id, point = %p.name, "the simulator serves node ids in ns={} or with nsu=URI, not ns={i}", self.own);
                            continue;
                        }
                    };
                    let text = match &n.identifier {
                        Identifier::Numeric(i) => format!("ns={ns};i={i}"),
                        Identifier::String(s) => format!("ns={ns};s={s}"),
                        Identifier::Guid(g) => format!("ns={ns};g={g}"),
                        Identifier::Opaque(b) => format!("ns={ns};b={b}"),
                    };
                    let Ok(id) = NodeId::from_str(&text) else {
                        continue;
                    };
                    let folder = self.object(&format!("nodes.{}", d.id), self.own, &d.id, &objects);
                    let name = p.name.clone();
                    self.variable(id, ns, &name, &folder, gen, dt);
                }
                Where::Robotics(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_and_move_to_the_served_port() {
        assert_eq!(
            split_endpoint("opc.tcp://127.0.0.1:0/robot"),
            Some(("127.0.0.1".into(), 0, "/robot".into()))
        );
        assert_eq!(
            split_endpoint("opc.tcp://[::1]:4840"),
            Some(("::1".into(), 4840, "/".into()))
        );
        let at: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(
            endpoint_at("opc.tcp://127.0.0.1:0/robot", at),
            "opc.tcp://127.0.0.1:40001/robot"
        );
        assert_eq!(
            endpoint_at("opc.tcp://[::1]:0", at),
            "opc.tcp://[::1]:40001/"
        );
    }

    #[test]
    fn power_on_time_is_an_iso_duration() {
        let v = value(&Gen::PowerOn { base_s: 90_061.0 }, 0.0);
        assert_eq!(v, Variant::from("P1DT1H1M1S"));
        assert_eq!(
            crate::source::opcua::iso_duration("P1DT1H1M1S"),
            Some(90_061.0)
        );
    }
}
