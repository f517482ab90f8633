//! The handle through which running components change the line's catalog: add points to a
//! device (a Sparkplug birth, a test source), add or replace a device, remove one (a reload).
//! Each change makes a new catalog version and queues it to the buffer *before* returning, so
//! the batches the caller publishes next are written after it.
//!
//! Between changes nothing of the catalog is kept here (on a large line it is megabytes): a
//! change starts from the current version, still in memory while the buffer or a sink holds
//! it, else read back from the buffer's `catalogs/`, where every version is stored.

use crate::buffer::{catalogs, BufferInput};
use crate::model::catalog::{DeviceIds, Registry, Version};
use crate::model::{Catalog, DeviceDescriptor, PointDescriptor, Tag};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use tokio::sync::Mutex;

struct State {
    current_id: u64,
    current: Weak<Catalog>,
    next_point: u32,
    next_device: u32,
    line: (String, String, Vec<Tag>),
    /// `None` once the agent stops (the buffer's writer ends when every input is gone).
    input: Option<BufferInput>,
}

pub struct Catalogs {
    state: Mutex<State>,
    /// The buffer's `catalogs/` directory.
    dir: PathBuf,
}

impl Catalogs {
    /// Takes over from start-up: `version` is in the buffer already, `next` the next ids
    /// (point, device) its registry would have handed out.
    pub fn new(version: &Version, next: (u32, u32), input: BufferInput, dir: PathBuf) -> Self {
        let (next_point, next_device) = next;
        let c = &version.catalog;
        let (line, site, tags) = (c.line.as_str(), c.site.as_str(), c.tags.as_slice());
        Catalogs {
            state: Mutex::new(State {
                current_id: version.id,
                current: Arc::downgrade(&version.catalog),
                next_point,
                next_device,
                line: (line.to_string(), site.to_string(), tags.to_vec()),
                input: Some(input),
            }),
            dir,
        }
    }

    /// Lets go of the buffer (at shutdown): later changes are not recorded.
    pub async fn close(&self) {
        self.state.lock().await.input.take();
    }

    /// Adds points to a registered device; returns their ids and the new version.
    pub async fn add_points(
        &self,
        device: &str,
        points: Vec<PointDescriptor>,
    ) -> Option<(Vec<u32>, Version)> {
        let (ids, v) = self.change(|r| r.add_points(device, points)).await;
        Some((ids?, v))
    }

    /// Adds a device, or replaces the one of the same name.
    pub async fn set_device(
        &self,
        device: DeviceDescriptor,
        points: Vec<PointDescriptor>,
    ) -> (DeviceIds, Version) {
        self.change(|r| r.set_device(device, points)).await
    }

    /// Removes a device from the next version.
    pub async fn remove_device(&self, device: &str) -> Version {
        self.change(|r| r.remove_device(device)).await.1
    }

    /// The current version.
    pub async fn current(&self) -> Version {
        self.change(|_| ()).await.1
    }

    /// Applies `f` to a registry restored from the current version (a reload registers the
    /// new configuration's devices and removes the ones that are gone); returns what `f`
    /// returned and the version now current.
    pub async fn rebuild<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> (R, Version) {
        self.change(f).await
    }

    /// Applies `f` to a registry restored from the current version, and queues the new
    /// version (if it changed) before returning. Changes are serialized: versions reach the
    /// buffer in the order they were made.
    async fn change<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> (R, Version) {
        let mut st = self.state.lock().await;
        let current = match st.current.upgrade() {
            Some(c) => Some(c),
            None => {
                let (dir, id) = (self.dir.clone(), st.current_id);
                tokio::task::spawn_blocking(move || catalogs::load(&dir, id).map(Arc::new))
                    .await
                    .ok()
                    .flatten()
            }
        };
        let mut registry = match &current {
            Some(c) => Registry::from_catalog(c, st.next_point, st.next_device),
            None => {
                tracing::error!(catalog = format_args!("{:016x}", st.current_id), "the current catalog version is missing from the buffer; the next version starts empty");
                let (line, site, tags) = &st.line;
                // Empty, but never handing out an id already in use.
                let empty = Catalog {
                    line: line.clone(),
                    site: site.clone(),
                    tags: tags.clone(),
                    ..Default::default()
                };
                Registry::from_catalog(&empty, st.next_point, st.next_device)
            }
        };
        drop(current);
        let out = f(&mut registry);
        let changed = registry.changed();
        let v = registry.version();
        (st.next_point, st.next_device) = registry.next_ids();
        drop(registry);
        if changed && v.id != st.current_id {
            st.current_id = v.id;
            st.current = Arc::downgrade(&v.catalog);
            if let Some(input) = st.input.as_ref() {
                input.publish_catalog(v.clone()).await;
            }
        }
        (out, v)
    }
}
