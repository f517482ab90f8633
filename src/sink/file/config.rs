//! The `[sinks.NAME]` keys of `type = "file"`: path and rotation; validated with locations.

use crate::config::table::RawTable;
use crate::config::units::ConfSize;
use crate::config::validate::sinks::SinkDraft;
use crate::config::validate::Ctx;
use crate::config::Settings;
use crate::sink::{settings_of, BuildContext, Start};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::path::PathBuf;

/// The keys of a file sink (besides those every sink has).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSection {
    pub path: Option<Spanned<String>>,
    pub max_file_bytes: Option<Spanned<ConfSize>>,
    pub max_files: Option<Spanned<i64>>,
}

#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    pub max_file_bytes: u64,
    pub max_files: usize,
}

pub(crate) fn validate(
    cx: &mut Ctx,
    type_at: std::ops::Range<usize>,
    s: &FileSinkSection,
) -> FileSinkConfig {
    let path = match &s.path {
        Some(p) if !p.get_ref().is_empty() => PathBuf::from(p.get_ref()),
        _ => {
            cx.err(type_at, "a file sink needs `path`");
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

/// The file sink kind (`sink::KINDS`).
pub struct Kind;

impl crate::sink::SinkKind for Kind {
    fn name(&self) -> &'static str {
        "file"
    }
    fn keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<FileSinkSection>()
    }
    fn validate(&self, cx: &mut Ctx, raw: RawTable, d: &SinkDraft) -> Option<Settings> {
        let s: FileSinkSection = raw.finish(cx)?;
        Some(Settings::new(validate(cx, d.type_at.clone(), &s)))
    }
    fn build(&self, settings: &Settings, ctx: &BuildContext) -> Result<Box<dyn Start>, String> {
        let c: &FileSinkConfig = settings_of(settings, self.name())?;
        Ok(Box::new(super::build(c, ctx)?))
    }
    fn describe(&self, settings: &Settings) -> String {
        settings
            .get::<FileSinkConfig>()
            .map(|f| format!("file {}", f.path.display()))
            .unwrap_or_default()
    }
}
