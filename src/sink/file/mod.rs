//! The file sink: line protocol appended to a local file, rotated by size (`writer.rs`).

pub mod config;
mod writer;

pub use writer::{check_writable, FileWriter};

use super::lines::LineSink;
use crate::config::FileSinkConfig;

/// The running sink for one `[sinks.NAME]` of `type = "file"`. Fails when the file cannot be
/// written.
pub fn build(
    cfg: &FileSinkConfig,
    _ctx: &super::BuildContext,
) -> Result<LineSink<FileWriter>, String> {
    check_writable(cfg)?;
    Ok(LineSink::new(FileWriter::new(cfg.clone())))
}
