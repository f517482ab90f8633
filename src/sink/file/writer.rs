//! A line-protocol file sink, rotated by size: `metrics.lp` is renamed to `metrics.lp.1` (and
//! older files shift up to `max_files`) once it passes `max_file_bytes`. For the demo,
//! debugging, and air-gapped lines.

use crate::config::FileSinkConfig;
use crate::sink::lines::LineWriter;
use crate::sink::{Outcome, RetryCtl};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub struct FileWriter {
    cfg: FileSinkConfig,
    file: Option<tokio::fs::File>,
    size: u64,
}

impl FileWriter {
    pub fn new(cfg: FileSinkConfig) -> Self {
        FileWriter {
            cfg,
            file: None,
            size: 0,
        }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.cfg.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    async fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.cfg.path.parent() {
            if !dir.as_os_str().is_empty() {
                tokio::fs::create_dir_all(dir).await?;
            }
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.path)
            .await?;
        self.size = file.metadata().await?.len();
        self.file = Some(file);
        Ok(())
    }

    /// `max_files` counts every file, the one being written included: `metrics.lp`,
    /// `metrics.lp.1` … `metrics.lp.{max_files - 1}`; the oldest is removed.
    async fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let keep = self.cfg.max_files.saturating_sub(1);
        if keep == 0 {
            tokio::fs::remove_file(&self.cfg.path).await?;
        } else {
            let _ = tokio::fs::remove_file(self.rotated(keep)).await;
            for n in (1..keep).rev() {
                let _ = tokio::fs::rename(self.rotated(n), self.rotated(n + 1)).await;
            }
            tokio::fs::rename(&self.cfg.path, self.rotated(1)).await?;
        }
        self.open().await
    }

    async fn try_write(&mut self, body: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.open().await?;
        }
        if self.size > 0 && self.size + body.len() as u64 > self.cfg.max_file_bytes {
            self.rotate().await?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("file not open"));
        };
        file.write_all(body).await?;
        file.flush().await?;
        self.size += body.len() as u64;
        Ok(())
    }
}

/// Checks at start-up that the file can be created and appended to, so a wrong path is a
/// start-up error rather than a warning every second.
pub fn check_writable(cfg: &FileSinkConfig) -> Result<(), String> {
    if let Some(dir) = cfg.path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.path)
        .map(|_| ())
        .map_err(|e| format!("cannot write {}: {e}", cfg.path.display()))
}

impl LineWriter for FileWriter {
    async fn write(&mut self, body: &bytes::Bytes, _lines: usize, retry: &mut RetryCtl) -> Outcome {
        loop {
            match self.try_write(body).await {
                Ok(()) => return Outcome::Delivered,
                Err(e) => {
                    tracing::warn!(path = %self.cfg.path.display(), error = %e, "file sink write failed; retrying");
                    self.file = None;
                    if !retry.wait(Duration::from_secs(1)).await {
                        return Outcome::Abandoned(e.to_string());
                    }
                }
            }
        }
    }
}
