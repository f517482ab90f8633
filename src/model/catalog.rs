//! The catalog of a line and how it changes while the agent runs.
//!
//! A `Catalog` describes every device and point once; samples refer to points by a small
//! numeric id. Ids are *stable*: a point keeps its id for as long as its key (device name,
//! measurement, field, tags) exists, whatever is added or removed around it, and new points
//! take ids never used before in this process (seeded at start-up from the newest catalog in
//! the buffer, so a restart with the same points keeps them too). A change (a device added or
//! removed at reload, a Sparkplug birth with new metrics, a test source adding a point) makes a
//! new catalog *version*; its id is a hash of its content, and the buffer stores every version
//! before the first batch that uses it, so data keeps the meaning it was read with.

use super::{Catalog, DataType, DeviceDescriptor, PointDescriptor, Tag};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;

/// The measurement of device health records (PRODUCT.md).
pub const HEALTH_MEASUREMENT: &str = "linetap_device";

/// Ids of one device's health points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthIds {
    pub up: u32,
    pub latency_ms: u32,
    pub errors: u32,
    pub last_error: u32,
}

/// The four health points every device writes to `linetap_device`, in `HealthIds` order.
pub fn health_points() -> Vec<PointDescriptor> {
    [
        ("up", DataType::Boolean, ""),
        ("latency_ms", DataType::Double, "ms"),
        ("errors", DataType::Uint64, ""),
        ("last_error", DataType::String, ""),
    ]
    .into_iter()
    .map(|(name, dt, unit)| PointDescriptor {
        measurement: HEALTH_MEASUREMENT.to_string(),
        name: name.to_string(),
        unit: unit.to_string(),
        data_type: dt as i32,
        ..Default::default()
    })
    .collect()
}

/// Turns `(key, value)` pairs into tags.
pub fn tags(pairs: &[(String, String)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(k, v)| Tag {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// What identifies a point within its device: measurement, field and tags (sorted). Two
/// descriptors with the same key are the same series in the store.
pub fn point_key(p: &PointDescriptor) -> String {
    let mut tags: Vec<(&str, &str)> = p
        .tags
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect();
    tags.sort_unstable();
    let mut k = String::with_capacity(p.measurement.len() + p.name.len() + 16 * tags.len() + 2);
    k.push_str(&p.measurement);
    k.push('\u{1}');
    k.push_str(&p.name);
    for (key, value) in tags {
        k.push('\u{1}');
        k.push_str(key);
        k.push('=');
        k.push_str(value);
    }
    k
}

/// The content id of a catalog version (what segments and sinks refer to) and its encoding.
pub fn catalog_id(catalog: &Catalog) -> (u64, Vec<u8>) {
    let bytes = catalog.encode_to_vec();
    (
        (crc32fast::hash(&bytes) as u64) << 32 | (bytes.len() as u64 & 0xffff_ffff),
        bytes,
    )
}

/// A catalog version: its content id and the catalog.
#[derive(Debug, Clone)]
pub struct Version {
    pub id: u64,
    pub catalog: Arc<Catalog>,
}

/// The ids a device's points were given, in the order they were registered.
#[derive(Debug, Clone, Default)]
pub struct DeviceIds {
    pub device: u32,
    pub points: Vec<u32>,
}

struct DeviceEntry {
    descriptor: DeviceDescriptor,
    /// Where its points are in `Registry::points`.
    start: usize,
    len: usize,
}

impl DeviceEntry {
    fn range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

/// Hands out stable ids and builds catalog versions. One per agent; sources reach it through
/// `run::Catalogs`, which also hands each new version to the buffer.
pub struct Registry {
    line: String,
    site: String,
    line_tags: Vec<Tag>,
    /// Devices in registration order.
    devices: Vec<DeviceEntry>,
    /// Every device's points, a device after the other in `devices`' order: one allocation,
    /// which becomes the catalog's without a copy (on a large line, megabytes).
    points: Vec<PointDescriptor>,
    device_ids: HashMap<String, u32>,
    /// `(device id, point key)` → id, for every point seen in this process (device ids are
    /// as stable as names: `device_ids`). The key is a boxed `str`, not a `String`: on a line
    /// of 20,000 points this map is megabytes at start-up (issue 22).
    point_ids: HashMap<(u32, Box<str>), u32>,
    next_device: u32,
    next_point: u32,
    /// The id of the current version; `None` after a change. The catalog itself is not kept
    /// here (the entries above are its one copy; on a large line it is megabytes).
    current: Option<u64>,
}

impl Registry {
    /// An empty registry for a line; ids of `previous` (the newest catalog in the buffer) are
    /// kept for the same devices and points.
    pub fn new(
        line: &str,
        site: &str,
        line_tags: Vec<Tag>,
        previous: Option<&Catalog>,
    ) -> Registry {
        let mut r = Registry {
            line: line.to_string(),
            site: site.to_string(),
            line_tags,
            devices: Vec::new(),
            points: Vec::new(),
            device_ids: HashMap::new(),
            point_ids: HashMap::new(),
            next_device: 0,
            next_point: 0,
            current: None,
        };
        if let Some(prev) = previous {
            for d in &prev.devices {
                r.device_ids.insert(d.name.clone(), d.id);
                r.next_device = r.next_device.max(d.id + 1);
            }
            let devices: std::collections::HashSet<u32> =
                prev.devices.iter().map(|d| d.id).collect();
            r.point_ids.reserve(prev.points.len());
            for p in &prev.points {
                if devices.contains(&p.device) {
                    r.point_ids
                        .insert((p.device, point_key(p).into_boxed_str()), p.id);
                }
                r.next_point = r.next_point.max(p.id + 1);
            }
        }
        r
    }

    /// A registry holding `catalog` (its devices, points and ids), as it was when that version
    /// was made: what a run-time change starts from. Ids below `next_point` / `next_device`
    /// are never handed out again.
    pub fn from_catalog(catalog: &Catalog, next_point: u32, next_device: u32) -> Registry {
        let mut r = Registry::new(
            &catalog.line,
            &catalog.site,
            catalog.tags.clone(),
            Some(catalog),
        );
        r.next_point = r.next_point.max(next_point);
        r.next_device = r.next_device.max(next_device);
        for d in &catalog.devices {
            let start = r.points.len();
            r.points
                .extend(catalog.points.iter().filter(|p| p.device == d.id).cloned());
            r.devices.push(DeviceEntry {
                descriptor: d.clone(),
                start,
                len: r.points.len() - start,
            });
        }
        r.current = Some(catalog_id(catalog).0);
        r
    }

    /// Room for `points` more points (a hint: the registry's point array grows by doubling
    /// otherwise, and on a large line the slack is megabytes at start-up).
    pub fn reserve(&mut self, points: usize) {
        self.points.reserve_exact(points);
        self.point_ids.reserve(points);
    }

    /// Room left in the point array (tests: `reserve` was enough).
    #[cfg(test)]
    pub fn room_left(&self) -> usize {
        self.points.capacity() - self.points.len()
    }

    /// The next ids to hand out: (point, device).
    pub fn next_ids(&self) -> (u32, u32) {
        (self.next_point, self.next_device)
    }

    /// The line's identity: (line, site, tags).
    pub fn line(&self) -> (&str, &str, &[Tag]) {
        (&self.line, &self.site, &self.line_tags)
    }

    /// Adds a device, or replaces the device of the same name with these points; returns the
    /// ids given (points whose key existed before keep their id). `descriptor.id` and the
    /// points' `id` and `device` are filled in here.
    pub fn set_device(
        &mut self,
        mut descriptor: DeviceDescriptor,
        points: Vec<PointDescriptor>,
    ) -> DeviceIds {
        let device = self.device_id(&descriptor.name);
        descriptor.id = device;
        let name = descriptor.name.clone();
        let mut placed = Vec::with_capacity(points.len());
        let ids = self.place(device, points, &mut placed);
        match self.devices.iter().position(|d| d.descriptor.name == name) {
            Some(i) => {
                self.devices[i].descriptor = descriptor;
                self.replace_points(i, placed);
            }
            None => {
                let start = self.points.len();
                let len = placed.len();
                self.points.extend(placed);
                self.devices.push(DeviceEntry {
                    descriptor,
                    start,
                    len,
                });
            }
        }
        self.current = None;
        DeviceIds {
            device,
            points: ids,
        }
    }

    /// Adds points to a registered device (a point whose key it has already is replaced, keeping
    /// its id); returns their ids, or `None` when the device is unknown.
    pub fn add_points(&mut self, device: &str, points: Vec<PointDescriptor>) -> Option<Vec<u32>> {
        let index = self
            .devices
            .iter()
            .position(|d| d.descriptor.name == device)?;
        let dev_id = self.devices[index].descriptor.id;
        let mut placed = Vec::new();
        let ids = self.place(dev_id, points, &mut placed);
        let mut merged: Vec<PointDescriptor> = self.points[self.devices[index].range()].to_vec();
        for p in placed {
            match merged.iter_mut().find(|q| q.id == p.id) {
                Some(q) => *q = p,
                None => merged.push(p),
            }
        }
        self.replace_points(index, merged);
        self.current = None;
        Some(ids)
    }

    /// Removes a device and its points from the next version (old data keeps them).
    pub fn remove_device(&mut self, device: &str) -> bool {
        let Some(i) = self
            .devices
            .iter()
            .position(|d| d.descriptor.name == device)
        else {
            return false;
        };
        self.replace_points(i, Vec::new());
        self.devices.remove(i);
        self.current = None;
        true
    }

    /// The device names, in registration order.
    pub fn device_names(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().map(|d| d.descriptor.name.as_str())
    }

    /// The current version, built from the registered devices.
    pub fn version(&mut self) -> Version {
        let catalog = Catalog {
            line: self.line.clone(),
            site: self.site.clone(),
            tags: self.line_tags.clone(),
            devices: self.devices.iter().map(|d| d.descriptor.clone()).collect(),
            points: self.points.clone(),
            parts: 0,
        };
        let (id, _) = catalog_id(&catalog);
        self.current = Some(id);
        Version {
            id,
            catalog: Arc::new(catalog),
        }
    }

    /// The current version, built by moving the registered devices into it (no copy: on a
    /// large line the catalog is megabytes), with what a later change needs to go on from it:
    /// the next ids (point, device).
    pub fn into_version(self) -> (Version, (u32, u32)) {
        let next = (self.next_point, self.next_device);
        drop(self.point_ids);
        drop(self.device_ids);
        let devices = self.devices.into_iter().map(|d| d.descriptor).collect();
        let mut points = self.points;
        points.shrink_to_fit();
        let catalog = Catalog {
            line: self.line,
            site: self.site,
            tags: self.line_tags,
            devices,
            points,
            parts: 0,
        };
        let (id, _) = catalog_id(&catalog);
        (
            Version {
                id,
                catalog: Arc::new(catalog),
            },
            next,
        )
    }

    /// Whether the catalog changed since the last `version()`.
    pub fn changed(&self) -> bool {
        self.current.is_none()
    }

    /// Device `i`'s points become `new` (in place, so the order stays the devices' order).
    fn replace_points(&mut self, i: usize, new: Vec<PointDescriptor>) {
        let old = self.devices[i].range();
        let (old_len, new_len) = (old.len(), new.len());
        self.points.splice(old, new);
        self.devices[i].len = new_len;
        for d in &mut self.devices[i + 1..] {
            d.start = d.start + new_len - old_len;
        }
    }

    fn device_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.device_ids.get(name) {
            return id;
        }
        let id = self.next_device;
        self.next_device += 1;
        self.device_ids.insert(name.to_string(), id);
        id
    }

    fn place(
        &mut self,
        device: u32,
        points: Vec<PointDescriptor>,
        out: &mut Vec<PointDescriptor>,
    ) -> Vec<u32> {
        let mut ids = Vec::with_capacity(points.len());
        for mut p in points {
            let key = (device, point_key(&p).into_boxed_str());
            let id = match self.point_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.next_point;
                    self.next_point += 1;
                    self.point_ids.insert(key, id);
                    id
                }
            };
            p.id = id;
            p.device = device;
            ids.push(id);
            out.push(p);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(name: &str) -> PointDescriptor {
        PointDescriptor {
            measurement: "m".into(),
            name: name.into(),
            data_type: DataType::Double as i32,
            ..Default::default()
        }
    }

    fn device(name: &str) -> DeviceDescriptor {
        DeviceDescriptor {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_are_stable_across_changes_and_never_reused() {
        let mut r = Registry::new("l", "", Vec::new(), None);
        let a = r.set_device(device("a"), vec![point("x"), point("y")]);
        let b = r.set_device(device("b"), vec![point("x")]);
        assert_eq!((a.device, a.points.clone()), (0, vec![0, 1]));
        assert_eq!((b.device, b.points.clone()), (1, vec![2]));
        let v1 = r.version();
        // Removing a point of `a` and adding one: `y` keeps its id, the new one is fresh.
        let a2 = r.set_device(device("a"), vec![point("y"), point("z")]);
        assert_eq!(a2.points, vec![1, 3]);
        let v2 = r.version();
        assert_ne!(v1.id, v2.id);
        assert_eq!(v2.catalog.points.len(), 3);
        // A point added at run time.
        assert_eq!(r.add_points("b", vec![point("w")]), Some(vec![4]));
        assert_eq!(r.add_points("nope", vec![point("w")]), None);
        assert!(r.remove_device("a"));
        let v3 = r.version();
        assert_eq!(
            v3.catalog.points.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![2, 4]
        );
        // Unchanged: the same version.
        assert_eq!(r.version().id, v3.id);
    }

    /// The points are one array, a device after the other: a change in the middle (a device
    /// replaced with more points, points added, a device removed) keeps every device's points
    /// together and in order, and `into_version` hands the array over as the catalog's.
    #[test]
    fn changes_keep_each_devices_points_together_in_order() {
        let mut r = Registry::new("l", "", Vec::new(), None);
        r.set_device(device("a"), vec![point("a1")]);
        r.set_device(device("b"), vec![point("b1"), point("b2")]);
        r.set_device(device("c"), vec![point("c1")]);
        r.set_device(device("b"), vec![point("b2"), point("b3"), point("b4")]);
        assert_eq!(r.add_points("a", vec![point("a2")]), Some(vec![6]));
        assert_eq!(r.add_points("c", vec![point("c2")]), Some(vec![7]));
        let names = |c: &Catalog| -> Vec<String> {
            c.points
                .iter()
                .map(|p| format!("{}:{}", p.device, p.name))
                .collect()
        };
        let v = r.version();
        assert_eq!(
            names(&v.catalog),
            ["0:a1", "0:a2", "1:b2", "1:b3", "1:b4", "2:c1", "2:c2"]
        );
        assert!(r.remove_device("b"));
        r.set_device(device("a"), vec![point("a2")]);
        let (v, next) = r.into_version();
        assert_eq!(names(&v.catalog), ["0:a2", "2:c1", "2:c2"]);
        assert_eq!(next, (8, 3));
    }

    #[test]
    fn a_restart_keeps_the_ids_of_the_previous_catalog() {
        let mut r = Registry::new("l", "", Vec::new(), None);
        r.set_device(device("a"), vec![point("x"), point("y")]);
        r.set_device(device("b"), vec![point("x")]);
        let prev = r.version();
        // The next start: device `a` is gone from the config, `b` gains a point.
        let mut r = Registry::new("l", "", Vec::new(), Some(&prev.catalog));
        let b = r.set_device(device("b"), vec![point("v"), point("x")]);
        assert_eq!(b.device, 1);
        assert_eq!(b.points, vec![3, 2]);
        let c = r.set_device(device("c"), vec![point("x")]);
        assert_eq!(c.device, 2);
    }

    #[test]
    fn a_registry_restored_from_its_catalog_changes_it_as_the_original_would() {
        let mut r = Registry::new("l", "s", Vec::new(), None);
        r.set_device(device("a"), vec![point("x"), point("y")]);
        r.set_device(device("b"), vec![point("x")]);
        let v1 = r.version();
        let (np, nd) = r.next_ids();
        let mut restored = Registry::from_catalog(&v1.catalog, np, nd);
        let (moved, next) = Registry::from_catalog(&v1.catalog, np, nd).into_version();
        assert_eq!((moved.id, next), (v1.id, (np, nd)));
        assert!(!restored.changed());
        assert_eq!(restored.version().id, v1.id);
        assert_eq!(restored.add_points("a", vec![point("z")]), Some(vec![3]));
        assert_eq!(r.add_points("a", vec![point("z")]), Some(vec![3]));
        assert_eq!(restored.version().id, r.version().id);
    }

    #[test]
    fn the_point_key_ignores_tag_order() {
        let mut p = point("x");
        p.tags = vec![
            Tag {
                key: "b".into(),
                value: "1".into(),
            },
            Tag {
                key: "a".into(),
                value: "2".into(),
            },
        ];
        let mut q = p.clone();
        q.tags.reverse();
        assert_eq!(point_key(&p), point_key(&q));
        q.tags[0].value = "3".into();
        assert_ne!(point_key(&p), point_key(&q));
    }
}
