//! The dead-letter file of a sink: lines the store refused for good (HTTP 400 for a line, a
//! single line too large to send, lines of a series the store keeps refusing), each group
//! after a comment with the time and the server's reason,
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

    /// The dead-letter file of an MQTT device: messages it sent that could not be used
    /// (malformed, oversized, no usable value), `data_dir/dead-letter/mqtt-DEVICE.log`.
    pub fn for_mqtt_device(data_dir: &Path, device: &str) -> Self {
        let safe = crate::buffer::cursors::file_name(device);
        DeadLetter {
            path: data_dir
                .join("dead-letter")
                .join(format!("mqtt-{safe}.log")),
            max_bytes: MAX_BYTES,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `lines` (complete lines) with `reason`, on the blocking pool.
    pub async fn write(&self, reason: &str, lines: &[u8]) -> std::io::Result<()> {
        self.write_all(vec![(reason.to_string(), lines.to_vec())])
            .await
    }

    /// Appends several `(reason, lines)` entries (a batch's refused lines, by reason) with
    /// one write and one sync, on the blocking pool.
    pub async fn write_all(&self, entries: Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        let me = self.clone();
        let now = crate::model::now_ns();
        let mut out = Vec::with_capacity(entries.iter().map(|(r, l)| r.len() + l.len() + 32).sum());
        for (reason, lines) in entries {
            out.extend_from_slice(format!("# {now} {}\n", reason.replace('\n', " ")).as_bytes());
            out.extend_from_slice(&lines);
            if out.last() != Some(&b'\n') {
                out.push(b'\n');
            }
        }
        tokio::task::spawn_blocking(move || me.append(&out))
            .await
            .map_err(std::io::Error::other)?
    }

    fn append(&self, entry: &[u8]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if len > 0 && len + entry.len() as u64 > self.max_bytes {
            let ext = self
                .path
                .extension()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            std::fs::rename(&self.path, self.path.with_extension(format!("{ext}.1")))?;
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
        d.max_bytes = MAX_BYTES;
        d.write_all(vec![
            ("first".into(), b"a f=1 1\n".to_vec()),
            ("second".into(), b"b f=1 1".to_vec()),
        ])
        .await
        .unwrap();
        let text = std::fs::read_to_string(d.path()).unwrap();
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        assert_eq!(tail[0], "b f=1 1");
        assert!(tail[1].ends_with(" second"), "{text}");
        assert_eq!(tail[2], "a f=1 1");
        assert!(tail[3].ends_with(" first"), "{text}");
    }
}
