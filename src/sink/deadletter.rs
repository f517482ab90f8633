//! The dead-letter file of a sink: lines the store refused for good (HTTP 400 for a line, a
//! single line too large to send), each after a comment with the time and the server's reason,
//! so nothing accepted is dropped silently and a person can fix and replay them.
//! `data_dir/dead-letter/SINK.lp`, rotated to `SINK.lp.1` at `MAX_BYTES`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Size at which the file is rotated (one older file is kept).
pub const MAX_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct DeadLetter {
    path: PathBuf,
    max_bytes: u64,
}

impl DeadLetter {
    pub fn new(data_dir: &Path, sink: &str) -> Self {
        let safe = crate::buffer::cursors::file_name(sink);
        DeadLetter {
            path: data_dir.join("dead-letter").join(format!("{safe}.lp")),
            max_bytes: MAX_BYTES,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `lines` (complete lines) with `reason`, on the blocking pool.
    pub async fn write(&self, reason: &str, lines: &[u8]) -> std::io::Result<()> {
        let me = self.clone();
        let mut entry = format!(
            "# {} {}\n",
            crate::model::now_ns(),
            reason.replace('\n', " ")
        )
        .into_bytes();
        entry.extend_from_slice(lines);
        if entry.last() != Some(&b'\n') {
            entry.push(b'\n');
        }
        tokio::task::spawn_blocking(move || me.append(&entry))
            .await
            .map_err(std::io::Error::other)?
    }

    fn append(&self, entry: &[u8]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if len > 0 && len + entry.len() as u64 > self.max_bytes {
            std::fs::rename(&self.path, self.path.with_extension("lp.1"))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(entry)?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_with_the_reason_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetter::new(dir.path(), "cen tral");
        d.max_bytes = 100;
        d.write("HTTP 400: bad", b"m f=1 1\n").await.unwrap();
        let text = std::fs::read_to_string(d.path()).unwrap();
        assert!(text.starts_with("# "), "{text}");
        assert!(text.contains("HTTP 400: bad\nm f=1 1\n"), "{text}");
        assert!(d.path().ends_with("dead-letter/cen_tral.lp"));
        d.write("again", &[b'x'; 90]).await.unwrap();
        assert!(d.path().with_extension("lp.1").exists());
        assert!(std::fs::read_to_string(d.path()).unwrap().contains("again"));
    }
}
