//! Catalog versions in the buffer: one file per version in `data_dir/buffer/catalogs/`, named by
//! its content id, written (synced) before any segment refers to it; and the newest versions
//! in memory, each until every sink has built its encoder from it (on a large line a catalog
//! is megabytes, so it is not kept for the life of the process).

use crate::model::catalog::Version;
use crate::model::Catalog;
use prost::Message;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.pb"))
}

/// Reads catalog `id` from `dir`, or `None` when it is missing or damaged.
pub fn load(dir: &Path, id: u64) -> Option<Catalog> {
    let bytes = std::fs::read(path(dir, id)).ok()?;
    Catalog::decode(bytes.as_slice()).ok()
}

pub struct CatalogStore {
    dir: PathBuf,
    /// How many sinks take each version (changes at a reload).
    sinks: std::sync::atomic::AtomicUsize,
    /// Versions not yet taken by every sink: (catalog, sinks that still have to take it).
    fresh: Mutex<HashMap<u64, (Arc<Catalog>, usize)>>,
}

impl CatalogStore {
    pub fn open(dir: &Path, sinks: usize) -> io::Result<CatalogStore> {
        std::fs::create_dir_all(dir)?;
        Ok(CatalogStore {
            dir: dir.to_path_buf(),
            sinks: sinks.into(),
            fresh: Mutex::new(HashMap::new()),
        })
    }

    /// Keeps a new version in memory for the sinks (only the newest: an older one is read
    /// back from disk by a sink that still needs it) and writes it durably, unless it is there
    /// already. Runs on the writer thread (or at start-up), never on the runtime thread. Even
    /// when the write fails the sinks get the version from memory.
    pub fn store(&self, v: &Version) -> io::Result<()> {
        let sinks = self.sinks.load(std::sync::atomic::Ordering::Relaxed);
        if sinks > 0 {
            let mut fresh = self.lock();
            fresh.clear();
            fresh.insert(v.id, (v.catalog.clone(), sinks));
        }
        let p = path(&self.dir, v.id);
        if !p.exists() {
            let tmp = p.with_extension("tmp");
            let bytes = v.catalog.encode_to_vec();
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &p)?;
            super::log::sync_dir(&self.dir);
        }
        Ok(())
    }

    /// The number of sinks changed (a reload). A version kept for a removed sink is let go
    /// when the next one comes; a sink added reads the current one from disk.
    pub fn set_sinks(&self, n: usize) {
        self.sinks.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Catalog `id` for one sink from memory, while some sink has not taken it yet.
    pub fn take_fresh(&self, id: u64) -> Option<Arc<Catalog>> {
        let mut fresh = self.lock();
        let (cat, users) = fresh.get_mut(&id)?;
        let cat = cat.clone();
        *users = users.saturating_sub(1);
        if *users == 0 {
            fresh.remove(&id);
        }
        Some(cat)
    }

    /// Catalog `id` from disk (blocking: call it on the blocking pool); `None` when missing.
    pub fn load(&self, id: u64) -> Option<Arc<Catalog>> {
        load(&self.dir, id).map(Arc::new)
    }

    /// Deletes the catalog files no segment refers to any more (keeping `keep`).
    pub fn prune(&self, referenced: &[u64]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pb"))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            if !referenced.contains(&id) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<Catalog>, usize)>> {
        self.fresh.lock().unwrap_or_else(|e| e.into_inner())
    }
}
