//! `[sinks.NAME]`: the keys every sink has (`schema::SinkCommon`: type, batch_size,
//! flush_interval), the choice of its kind by `type`, and the hand-off of the other keys to
//! that kind (`sink::SinkKind::validate`, in the kind's folder).

use super::Ctx;
use crate::config::schema::SinkCommon;
use crate::config::table::{fields_of, RawTable};
use crate::config::*;
use crate::sink::SinkKind;
use serde_spanned::Spanned;
use std::ops::Range;
use toml::de::DeValue;

/// What a sink kind is told about the sink whose keys it reads.
pub struct SinkDraft<'a> {
    /// The table's name (the sink's identity).
    pub name: &'a Spanned<String>,
    /// The whole table.
    pub span: Range<usize>,
    /// Where `type` is written ("needs KEY" errors point there).
    pub type_at: Range<usize>,
    pub line: &'a str,
    pub site: &'a str,
}

pub(super) fn sink(
    cx: &mut Ctx,
    name: Spanned<String>,
    v: Spanned<DeValue<'_>>,
    line: &str,
    site: &str,
) -> Option<SinkConfig> {
    let mut raw = match RawTable::of(v, "a [sinks.NAME] entry") {
        Ok(t) => t,
        Err((at, msg)) => {
            cx.shape(at, msg);
            return None;
        }
    };
    let span = raw.span();
    let kinds = crate::sink::KINDS;
    let kind: Option<&dyn SinkKind> = match raw.peek_str("type") {
        None => {
            cx.shape(
                span.clone(),
                format!("missing field `type`: one of {}", names(kinds)),
            );
            None
        }
        Some((t, at)) => match kinds.iter().find(|k| k.name() == t) {
            Some(k) => Some(*k),
            None => {
                cx.shape(
                    at,
                    format!("unknown variant `{t}`, expected one of {}", names(kinds)),
                );
                None
            }
        },
    };
    // Keys of another sink type: say so where they are written.
    if let Some(kind) = kind {
        raw.take_foreign(
            cx,
            |key| fields_of::<SinkCommon>().contains(&key) || kind.keys().contains(&key),
            |key| {
                kinds
                    .iter()
                    .any(|k| k.keys().contains(&key))
                    .then(|| format!("`{key}` is not a key of a {} sink", kind.name()))
            },
        );
    }
    let common: SinkCommon = raw.take(cx)?;
    let kind = kind?;
    let batch_size = match &common.batch_size {
        Some(b) if !(1..=1_000_000).contains(b.get_ref()) => {
            cx.err(b.span(), "batch_size must be between 1 and 1000000");
            5000
        }
        Some(b) => *b.get_ref() as usize,
        None => 5000,
    };
    let flush_interval = common
        .flush_interval
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(1));
    let draft = SinkDraft {
        name: &name,
        span: span.clone(),
        type_at: common.kind.as_ref().map(|k| k.span()).unwrap_or(span),
        line,
        site,
    };
    let settings = kind.validate(cx, raw, &draft)?;
    Some(SinkConfig {
        name: name.get_ref().clone(),
        kind: kind.name(),
        batch_size,
        flush_interval,
        settings,
    })
}

fn names(kinds: &[&dyn SinkKind]) -> String {
    kinds
        .iter()
        .map(|k| format!("`{}`", k.name()))
        .collect::<Vec<_>>()
        .join(", ")
}
