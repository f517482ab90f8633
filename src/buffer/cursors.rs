//! Per-sink read positions on disk: `cursors/NAME.pos` holds "position crc32", replaced
//! atomically (temp file, fsync, rename, fsync of the directory).

use super::Shared;
use std::path::{Path, PathBuf};

fn path(dir: &Path, sink: &str) -> PathBuf {
    dir.join(format!("{}.pos", file_name(sink)))
}

/// A sink name as a file name: sink names are TOML keys and may hold any character; keep
/// ASCII letters, digits, `-` and `_`, and replace the rest with `_`.
pub fn file_name(sink: &str) -> String {
    sink.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The saved position of `sink`, if it has a valid one.
pub(super) fn read(dir: &Path, sink: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path(dir, sink)).ok()?;
    let (pos, crc) = text.trim().split_once(' ')?;
    (crc32fast::hash(pos.as_bytes()).to_string() == crc)
        .then(|| pos.parse().ok())
        .flatten()
}

/// Writes every changed cursor durably. The state lock is held only to copy the positions,
/// never across an fsync: sinks and sources must not wait for the disk.
pub(super) fn persist(shared: &Shared) {
    let todo: Vec<(usize, String, u64)> = {
        let st = shared.lock();
        st.cursors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.acked != c.persisted)
            .map(|(i, c)| (i, c.name.clone(), c.acked))
            .collect()
    };
    if todo.is_empty() {
        return;
    }
    let cur_dir = shared.dir.join("cursors");
    let mut done = Vec::new();
    for (i, name, pos) in todo {
        let path = path(&cur_dir, &name);
        let tmp = path.with_extension("tmp");
        let text = pos.to_string();
        let body = format!("{text} {}\n", crc32fast::hash(text.as_bytes()));
        let ok = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(body.as_bytes())?;
                f.sync_all()
            })
            .and_then(|_| std::fs::rename(&tmp, &path));
        match ok {
            Ok(()) => done.push((i, pos)),
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "buffer: cannot save the read position")
            }
        }
    }
    super::log::sync_dir(&cur_dir);
    let mut st = shared.lock();
    for (i, pos) in done {
        st.cursors[i].persisted = pos;
    }
}
