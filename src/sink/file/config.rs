//! The `[sinks.NAME]` keys of `type = "file"`: path and rotation; validated with locations.

use crate::config::schema::SinkSection;
use crate::config::validate::Ctx;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    pub max_file_bytes: u64,
    pub max_files: usize,
}

pub(crate) fn validate(cx: &mut Ctx, s: &SinkSection) -> FileSinkConfig {
    let path = match &s.path {
        Some(p) if !p.get_ref().is_empty() => PathBuf::from(p.get_ref()),
        _ => {
            cx.err(s.kind.span(), "a file sink needs `path`");
            PathBuf::new()
        }
    };
    let max_files = match &s.max_files {
        Some(n) if *n.get_ref() < 1 => {
            cx.err(n.span(), "max_files must be at least 1");
            1
        }
        Some(n) => *n.get_ref() as usize,
        None => 5,
    };
    FileSinkConfig {
        path,
        max_file_bytes: s
            .max_file_bytes
            .as_ref()
            .map(|s| s.get_ref().0)
            .unwrap_or(64 << 20),
        max_files,
    }
}
