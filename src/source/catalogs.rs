//! The handle through which running components change the line's catalog: add points to a
//! device (a Sparkplug birth, a test source), add or replace a device, remove one (a reload).
//! Each change makes a new catalog version and queues it to the buffer *before* returning, so
//! the batches the caller publishes next are written after it.

use crate::buffer::BufferInput;
use crate::model::catalog::{DeviceIds, Registry, Version};
use crate::model::{DeviceDescriptor, PointDescriptor};
use tokio::sync::Mutex;

pub struct Catalogs {
    registry: Mutex<Registry>,
    /// `None` once the agent stops (the buffer's writer ends when every input is gone).
    input: Mutex<Option<BufferInput>>,
}

impl Catalogs {
    pub fn new(registry: Registry, input: BufferInput) -> Self {
        Catalogs {
            registry: Mutex::new(registry),
            input: Mutex::new(Some(input)),
        }
    }

    /// Lets go of the buffer (at shutdown): later changes are not recorded.
    pub async fn close(&self) {
        self.input.lock().await.take();
    }

    /// Adds points to a registered device; returns their ids and the new version.
    pub async fn add_points(
        &self,
        device: &str,
        points: Vec<PointDescriptor>,
    ) -> Option<(Vec<u32>, Version)> {
        let mut r = self.registry.lock().await;
        let ids = r.add_points(device, points)?;
        Some((ids, self.publish(&mut r).await))
    }

    /// Adds a device, or replaces the one of the same name.
    pub async fn set_device(
        &self,
        device: DeviceDescriptor,
        points: Vec<PointDescriptor>,
    ) -> (DeviceIds, Version) {
        let mut r = self.registry.lock().await;
        let ids = r.set_device(device, points);
        (ids, self.publish(&mut r).await)
    }

    /// Removes a device from the next version.
    pub async fn remove_device(&self, device: &str) -> Version {
        let mut r = self.registry.lock().await;
        r.remove_device(device);
        self.publish(&mut r).await
    }

    /// The current version.
    pub async fn current(&self) -> Version {
        self.registry.lock().await.version()
    }

    async fn publish(&self, r: &mut Registry) -> Version {
        let changed = r.changed();
        let v = r.version();
        if changed {
            // Under the registry lock: versions reach the buffer in the order they were made.
            if let Some(input) = self.input.lock().await.as_ref() {
                input.publish_catalog(v.clone()).await;
            }
        }
        v
    }
}
