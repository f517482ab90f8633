//! Parsing a large file a device at a time. The TOML parser builds a spanned tree of the whole
//! document before our structures are filled: for a line of 20,000 individually listed points
//! (1.6 MB of TOML) that tree is ~60 MB, three times the agent's steady state. A large file
//! whose devices are plain `[[devices]]` blocks is therefore parsed as its head (everything
//! before the first `[[devices]]`) and then one block at a time, each on its own with its
//! spans then moved by the block's offset, so every span (and every error's line and column)
//! is exactly what the whole document gives. Anything unusual (another table after the devices,
//! a multi-line string, a header-like line inside an array) falls back to the whole document.
//!
//! The blocks are parsed lazily, as validation asks for the next device (`split`, then
//! `parse_block`): the raw structures of a 20,000-point file (~1 KB a point, 20 MB) never
//! exist at once, only one device's, beside the validated configuration.

use serde_spanned::Spanned;
use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// Smaller files are parsed whole (the tree is small).
const CHUNK_ABOVE: usize = 256 << 10;

/// The file parsed whole (small or unusual: the blocks are empty), or its head parsed and the
/// byte ranges of its `[[devices]]` blocks, for `parse_block`.
pub(super) fn split(
    text: &str,
) -> Result<(Spanned<DeTable<'_>>, Vec<Range<usize>>), toml::de::Error> {
    if text.len() < CHUNK_ABOVE {
        return Ok((DeTable::parse(text)?, Vec::new()));
    }
    let Some(blocks) = device_blocks(text) else {
        return Ok((DeTable::parse(text)?, Vec::new()));
    };
    let head_end = blocks.first().map(|b| b.start).unwrap_or(text.len());
    let head = DeTable::parse(&text[..head_end])?;
    if head.get_ref().iter().any(|(k, _)| k.get_ref() == "devices") {
        // `devices = [...]` in the head: only the whole document says what that means.
        return Ok((DeTable::parse(text)?, Vec::new()));
    }
    Ok((head, blocks))
}

/// The `[[devices]]` tables of one block of `split`, located in the whole text: the block is
/// parsed on its own (so the parser sizes its buffers by the block, not by the file) and every
/// span is then moved by the block's offset. A syntax error: its place in the whole text, and
/// its message.
pub(super) fn parse_block(
    text: &str,
    block: Range<usize>,
) -> Result<Vec<Spanned<DeValue<'_>>>, (Range<usize>, String)> {
    let by = block.start;
    let part = DeTable::parse(&text[block]).map_err(|e| {
        let at = e.span().unwrap_or(0..0);
        (at.start + by..at.end + by, e.message().to_string())
    })?;
    let mut part = shift_table(part.into_inner(), by);
    Ok(take_devices(&mut part))
}

/// `v` with every span in it moved `by` bytes.
fn shift<'i>(v: Spanned<DeValue<'i>>, by: usize) -> Spanned<DeValue<'i>> {
    let at = v.span();
    let inner = match v.into_inner() {
        DeValue::Table(t) => DeValue::Table(shift_table(t, by)),
        DeValue::Array(mut a) => {
            for item in a.iter_mut() {
                let old = std::mem::replace(item, Spanned::new(0..0, DeValue::Boolean(false)));
                *item = shift(old, by);
            }
            DeValue::Array(a)
        }
        other => other,
    };
    Spanned::new(at.start + by..at.end + by, inner)
}

fn shift_table(t: DeTable<'_>, by: usize) -> DeTable<'_> {
    let mut out = DeTable::new();
    for (k, v) in t {
        let at = k.span();
        out.insert(
            Spanned::new(at.start + by..at.end + by, k.into_inner()),
            shift(v, by),
        );
    }
    out
}

/// Takes the `devices` array out of a document's root table.
pub(super) fn take_devices<'i>(root: &mut DeTable<'i>) -> Vec<Spanned<DeValue<'i>>> {
    let key = root
        .iter()
        .find(|(k, _)| k.get_ref() == "devices")
        .map(|(k, _)| k.clone());
    let Some(v) = key.and_then(|k| root.remove(&k)) else {
        return Vec::new();
    };
    let span = v.span();
    match v.into_inner() {
        DeValue::Array(a) => a.into_iter().collect(),
        // Not an array: handed on as it is, so validation says what it should be.
        other => vec![Spanned::new(span, other)],
    }
}

/// The byte ranges of the `[[devices]]` blocks, or `None` when the file is not simply a head
/// followed by such blocks.
fn device_blocks(text: &str) -> Option<Vec<Range<usize>>> {
    let mut starts = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.contains("\"\"\"") || line.contains("'''") {
            return None;
        }
        let t = line.trim_start();
        if t.starts_with('[') {
            let header = t.split('#').next().unwrap_or("").trim_end();
            if header == "[[devices]]" {
                starts.push(at);
            } else {
                let inside_a_device =
                    header.starts_with("[[devices.") || header.starts_with("[devices.");
                if !starts.is_empty() && !inside_a_device {
                    return None;
                }
            }
        }
        at += line.len();
    }
    let ends = starts.iter().skip(1).copied().chain([text.len()]);
    Some(starts.iter().zip(ends).map(|(s, e)| *s..e).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(bad_at: Option<usize>) -> String {
        let mut s = String::from(
            "[line]\nid = \"big\"\n\n[sinks.out]\ntype = \"file\"\npath = \"x.lp\"\n\n",
        );
        for d in 0..150 {
            s.push_str(&format!(
                "[[devices]]\nid = \"dev-{d}\"\naddress = \"10.0.0.{d}:502\"\nserial = {{ port = \"/dev/ttyS0\" }}\n[devices.tags]\nbay = \"{d}\"\n"
            ));
            for p in 0..30 {
                // The bad point's name is an unterminated string.
                let end = if bad_at == Some(d * 30 + p) { "" } else { "\"" };
                s.push_str(&format!(
                    "[[devices.points]]\nname = \"v{p}{end} # value {p}\naddress = {p}\ntype = \"u16\"\n"
                ));
            }
        }
        assert!(s.len() > CHUNK_ABOVE);
        s
    }

    /// Every device of the file, parsed whole or a block at a time, as debug text.
    fn devices(text: &str) -> Result<Vec<String>, (Option<Range<usize>>, String)> {
        let (mut head, blocks) = split(text).map_err(|e| (e.span(), e.message().to_string()))?;
        let mut out: Vec<String> = take_devices(head.get_mut())
            .iter()
            .map(|d| format!("{d:?}"))
            .collect();
        for b in blocks {
            out.extend(
                parse_block(text, b)
                    .map_err(|(at, m)| (Some(at), m))?
                    .iter()
                    .map(|d| format!("{d:?}")),
            );
        }
        Ok(out)
    }

    #[test]
    fn a_large_file_parses_the_same_a_device_at_a_time() {
        let text = big(None);
        assert_eq!(device_blocks(&text).map(|b| b.len()), Some(150));
        let mut whole = DeTable::parse(&text).unwrap().into_inner();
        let whole: Vec<String> = take_devices(&mut whole)
            .iter()
            .map(|d| format!("{d:?}"))
            .collect();
        assert_eq!(whole, devices(&text).unwrap());
    }

    #[test]
    fn errors_keep_their_place() {
        // A syntax error deep in the file (device 120): same message, same span.
        let text = big(Some(120 * 30 + 7));
        let whole = DeTable::parse(&text).unwrap_err();
        let chunked = devices(&text).unwrap_err();
        assert_eq!(whole.span(), chunked.0);
        assert_eq!(whole.message(), chunked.1);
    }

    #[test]
    fn unusual_files_are_parsed_whole() {
        let mut text = big(None);
        text.push_str("[sinks.late]\ntype = \"file\"\npath = \"y.lp\"\n");
        assert!(device_blocks(&text).is_none());
        assert_eq!(devices(&text).unwrap().len(), 150);
        let text = big(None).replacen("id = \"dev-3\"", "id = \"\"\"dev-3\"\"\"", 1);
        assert!(device_blocks(&text).is_none());
    }
}
