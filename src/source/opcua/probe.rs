//! `linetap probe` for OPC UA: a config's device read once (each point's node, value, unit and
//! label, as the sinks write it; `check --connect` uses the same), and `--opcua ENDPOINT`: a
//! commissioning browse of a server — node id, browse path, data type and value of every
//! variable under a path, to a depth.

use super::config::OpcuaDevice;
use super::session::{child, connect};
use super::{data_value, described, items, register, Item, State, FAMILIES};
use crate::config::DeviceConfig;
use crate::model::catalog::Registry;
use crate::probe::{table, Probed};
use crate::source::describe;
use crate::transform::DeviceView;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, NodeClass, NodeId, ObjectId,
    ReadValueId, ReferenceTypeId, TimestampsToReturn, Variant,
};
use std::collections::HashMap;
use std::fmt::Write;
use std::time::Instant;

/// A scratch directory for the probe's client certificate.
fn scratch_pki() -> Result<tempfile_dir::Dir, String> {
    tempfile_dir::Dir::new()
}

/// The PKI directory a probe uses: the agent's for a configured device (its client
/// certificate, the server certificate it pinned: a probe trusts and presents what the agent
/// would), else a scratch one.
enum Pki {
    Agent(std::path::PathBuf),
    Scratch(tempfile_dir::Dir),
}

impl Pki {
    fn of(data_dir: Option<&std::path::Path>, device: &str) -> Result<Pki, String> {
        Ok(match data_dir {
            Some(d) => Pki::Agent(super::session::pki_dir(d, device)),
            None => Pki::Scratch(scratch_pki()?),
        })
    }
    fn path(&self) -> &std::path::Path {
        match self {
            Pki::Agent(p) => p,
            Pki::Scratch(d) => d.path(),
        }
    }
}

/// Reads every point of `d` once (an `opcua-robotics` device: each motion device found).
pub async fn probe(
    d: &DeviceConfig,
    o: &OpcuaDevice,
    data_dir: Option<&std::path::Path>,
) -> Result<Probed, String> {
    let mut registry = Registry::new("probe", "", Vec::new(), None);
    let plan = register(d, o, &mut registry);
    let started = Instant::now();
    let pki = Pki::of(data_dir, &plan.name)?;
    let (session, _events) = connect(&plan, pki.path(), true).await?;
    let shape = super::shape::of(&session, &plan).await?;
    let registered: Vec<(u32, Vec<u32>)> = shape
        .targets
        .iter()
        .map(|t| {
            let ids = registry.set_device(describe::device(t, &o.endpoint, 0), described(t));
            (ids.device, ids.points)
        })
        .collect();
    let ids: Vec<Vec<u32>> = registered.iter().map(|(_, p)| p.clone()).collect();
    let items = items(&shape, &ids);
    let version = registry.version();
    let metrics = crate::observe::metrics::Metrics::new();
    let dm = metrics.devices.add(&plan.name);
    let kc = dm.kind_counters(&FAMILIES);
    let mut states: Vec<State> = registered.iter().map(|(d, _)| State::new(*d)).collect();
    let mut raw: HashMap<u32, String> = HashMap::new();
    let mut failed: HashMap<u32, String> = HashMap::new();
    for (item, r) in items.iter().zip(&shape.reads) {
        for id in &item.ids {
            raw.insert(*id, r.node.to_string());
        }
    }
    for (t, list) in shape.problems.iter().enumerate() {
        for p in list {
            // "point \"name\": why" → every element of that point.
            let Some(rest) = p.strip_prefix("point ") else {
                continue;
            };
            let target = &shape.targets[t];
            let mut offset = 0usize;
            for q in &target.points {
                if let Some(why) = rest.strip_prefix(&format!("{:?}: ", q.name)) {
                    for id in ids[t].iter().skip(offset).take(q.count as usize) {
                        failed.insert(*id, why.to_string());
                    }
                }
                offset += q.count as usize;
            }
        }
    }
    // Optional standard variables the server lacks: shown, not failures.
    use crate::probe::ABSENT;
    for (t, point, element) in &shape.missing {
        let target = &shape.targets[*t];
        let offset: usize = target.points[..*point]
            .iter()
            .map(|q| q.count as usize)
            .sum();
        if let Some(id) = ids[*t].get(offset + *element as usize) {
            failed.insert(*id, ABSENT.to_string());
        }
    }
    let indexed: Vec<(usize, &Item)> = items.iter().enumerate().collect();
    for chunk in indexed.chunks(o.max_items_per_call) {
        let ids: Vec<ReadValueId> = chunk
            .iter()
            .map(|(i, _)| ReadValueId::from(shape.reads[*i].node.clone()))
            .collect();
        let values = session
            .read(&ids, TimestampsToReturn::Both, 0.0)
            .await
            .map_err(|e| format!("reading failed: {}", e.status()))?;
        for ((_, item), dv) in chunk.iter().zip(values) {
            let st = &mut states[item.target];
            let before = st.batch.samples.len();
            data_value(item, &dv, st, kc);
            if st.batch.samples.len() == before {
                for id in &item.ids {
                    failed.insert(*id, format!("status {}", dv.status()));
                }
            }
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), session.disconnect()).await;
    let security = match o.policy {
        super::config::Policy::None => "no security".to_string(),
        p => format!("{} {}", p.name(), o.mode.name()),
    };
    let mut out = Probed::default();
    let many = shape.targets.len() > 1;
    for (t, target) in shape.targets.iter().enumerate() {
        let device = states[t].batch.device;
        let view = DeviceView::of(&version, device);
        let reads = items.iter().filter(|i| i.target == t).count();
        let header = if t == 0 {
            format!(
                "device {:?} at {} (opcua, {security}): {} nodes read in {} ms{}",
                d.id,
                o.endpoint,
                items.len(),
                started.elapsed().as_millis(),
                if many {
                    format!(
                        "; {} motion devices, written as {}",
                        shape.targets.len() - 1,
                        shape.targets[1..]
                            .iter()
                            .map(|t| t.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                }
            )
        } else {
            format!(
                "\nmotion device {} of {:?}: written as device {:?}",
                t, d.id, target.id
            )
        };
        let batch = std::mem::take(&mut states[t].batch);
        let probed = table(target, &view, batch, &raw, &failed, header);
        out.table.push_str(&probed.table);
        out.points += probed.points;
        out.failed.extend(probed.failed);
        out.requests += reads;
        out.answered += reads;
    }
    Ok(out)
}

/// `linetap probe --opcua`: every node under `path` to `depth` levels: node id, browse path,
/// data type and value of the variables (objects and folders as the path's steps).
pub async fn browse(
    d: &DeviceConfig,
    o: &OpcuaDevice,
    path: Option<&str>,
    depth: usize,
) -> Result<String, String> {
    let mut registry = Registry::new("probe", "", Vec::new(), None);
    let plan = register(d, o, &mut registry);
    // No security and no user (`--opcua ENDPOINT`): nothing to pin or to protect.
    let pki = scratch_pki()?;
    let (session, _events) = connect(&plan, pki.path(), true).await?;
    let namespaces = session
        .read_namespace_array()
        .await
        .map_err(|e| format!("cannot read the namespace array: {}", e.status()))?;
    let (start, start_text): (NodeId, String) = match path {
        None => (ObjectId::ObjectsFolder.into(), "Objects".to_string()),
        Some(p) => {
            let elements = super::address::parse_path(p)?;
            let mut node: NodeId = ObjectId::RootFolder.into();
            for e in &elements {
                let ns = match &e.namespace {
                    Some(u) => Some(
                        namespaces
                            .get_index(u)
                            .ok_or_else(|| format!("the server has no namespace {u:?}"))?,
                    ),
                    None => None,
                };
                node = child(&session, &node, &e.name, ns).await?;
            }
            (node, p.trim_end_matches('/').to_string())
        }
    };
    let uris: HashMap<u16, String> = namespaces
        .known_namespaces()
        .iter()
        .map(|(u, i)| (*i, u.clone()))
        .collect();
    let mut rows: Vec<[String; 4]> = Vec::new();
    // Depth first, each node's children in the natural order of their browse names; a
    // variable's row when it is reached.
    let mut stack: Vec<(NodeId, String, usize, bool)> = vec![(start, start_text, 0, false)];
    let mut variables: Vec<(NodeId, usize)> = Vec::new();
    while let Some((node, text, level, variable)) = stack.pop() {
        if rows.len() >= 10_000 {
            break;
        }
        if variable {
            variables.push((node.clone(), rows.len()));
            rows.push([node.to_string(), text.clone(), String::new(), String::new()]);
        }
        if level >= depth {
            continue;
        }
        let desc = BrowseDescription {
            node_id: node.clone(),
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: 0,
            result_mask: BrowseResultMask::All as u32,
        };
        let mut results = session
            .browse(&[desc], 1000, None)
            .await
            .map_err(|e| format!("browsing {node} failed: {}", e.status()))?;
        let mut children = Vec::new();
        while let Some(r) = results.pop() {
            children.extend(r.references.unwrap_or_default());
            if r.continuation_point.is_null() {
                break;
            }
            results = session
                .browse_next(false, &[r.continuation_point])
                .await
                .map_err(|e| format!("browsing {node} failed: {}", e.status()))?;
        }
        children.sort_by(|a, b| {
            super::robotics::natural(a.browse_name.name.as_ref(), b.browse_name.name.as_ref())
        });
        for rd in children.into_iter().rev() {
            if rd.node_class != NodeClass::Object && rd.node_class != NodeClass::Variable {
                continue;
            }
            let q = &rd.browse_name;
            let name = match uris.get(&q.namespace_index) {
                Some(u) if q.namespace_index != 0 => format!("{{{u}}}{}", q.name),
                _ => q.name.to_string(),
            };
            stack.push((
                rd.node_id.node_id.clone(),
                format!("{text}/{name}"),
                level + 1,
                rd.node_class == NodeClass::Variable,
            ));
        }
    }
    // Data types and values, in batches.
    for chunk in variables.chunks(500) {
        let mut ids = Vec::with_capacity(chunk.len() * 2);
        for (n, _) in chunk {
            ids.push(ReadValueId::new(n.clone(), AttributeId::DataType));
            ids.push(ReadValueId::from(n.clone()));
        }
        let values = session
            .read(&ids, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| format!("reading failed: {}", e.status()))?;
        for ((_, row), pair) in chunk.iter().zip(values.chunks_exact(2)) {
            if let Some(Variant::NodeId(t)) = &pair[0].value {
                rows[*row][2] = match super::point_type(t) {
                    Some(k) => format!("{} ({})", k.as_str(), t),
                    None => t.to_string(),
                };
            }
            let dv = &pair[1];
            rows[*row][3] = if dv.status().is_good() {
                dv.value.as_ref().map(show).unwrap_or_default()
            } else {
                format!("status {}", dv.status())
            };
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), session.disconnect()).await;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} variables under {} on {} (depth {depth}); a point reads one with node = \"…\" (ns= is the server's index: prefer nsu=URI) or path = \"…\"",
        variables.len(),
        path.unwrap_or("Objects"),
        o.endpoint
    );
    let header = ["node", "path", "type", "value"].map(String::from);
    let mut widths = [0usize; 4];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count().min(70));
        }
    }
    for r in std::iter::once(&header).chain(rows.iter()) {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    Ok(out)
}

/// A value as a person reads it.
fn show(v: &Variant) -> String {
    match v {
        Variant::Array(a) => {
            let items: Vec<String> = a.values.iter().take(8).map(show).collect();
            let more = if a.values.len() > 8 { ", …" } else { "" };
            format!("[{}{more}] ({} values)", items.join(", "), a.values.len())
        }
        Variant::String(s) => format!("{:?}", s.as_ref()),
        Variant::LocalizedText(t) => format!("{:?}", t.text.as_ref()),
        other => {
            let t = other.to_string();
            if t.len() > 60 {
                format!(
                    "{}…",
                    &t[..t.char_indices().nth(60).map(|(i, _)| i).unwrap_or(t.len())]
                )
            } else {
                t
            }
        }
    }
}

/// A temporary directory removed on drop (the probe's client certificate lives there).
mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Result<Dir, String> {
            let p = std::env::temp_dir().join(format!(
                "linetap-probe-{}-{}",
                std::process::id(),
                crate::model::now_ns()
            ));
            std::fs::create_dir_all(&p)
                .map_err(|e| format!("cannot create {}: {e}", p.display()))?;
            Ok(Dir(p))
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
