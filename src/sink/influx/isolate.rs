//! The pure half of refused-line isolation (the writer, `writer.rs`, sends the requests):
//! - lines, series and field keys of a line-protocol body (`lines`, `series_key`,
//!   `measurement`, `field_keys`);
//! - what a refusal names (`parse_hint`): the measurement and field of an InfluxDB 1.x/2.x
//!   field type conflict, the 1-based line numbers of InfluxDB 3 (`"line_number":N`, and
//!   "error parsing line N (1-based)" of the distributed versions);
//! - how a refused group of lines is divided (`split_by_hint`, `by_series`, `halve`);
//! - the memory of (series, field) pairs the store keeps refusing (`Refusals`): their lines
//!   go to the dead-letter file without a request, one line of each is sent again alone at
//!   most every `PROBE_EVERY`, and the pair is forgotten once the store accepts it.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;
use tokio::time::Instant;

/// A line of a body: its byte range, `\n` included (the last line may lack one).
pub type Span = Range<usize>;

/// How often a remembered (series, field) is tried again.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);

/// Most (series, field) pairs remembered; past it the least recently refused is forgotten
/// (its lines are then isolated again, which costs requests, never lines).
pub const MAX_REMEMBERED: usize = 4096;

/// The lines of `body`.
pub fn lines(body: &[u8]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' {
            if i > start {
                out.push(start..i + 1);
            }
            start = i + 1;
        }
    }
    if start < body.len() {
        out.push(start..body.len());
    }
    out
}

/// The text of `spans` of `body`, one after the other (each ends with `\n`).
pub fn join(body: &[u8], spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.iter().map(|s| s.len() + 1).sum());
    for s in spans {
        out.extend_from_slice(&body[s.clone()]);
        if out.last() != Some(&b'\n') {
            out.push(b'\n');
        }
    }
    out
}

/// The series of a line: measurement and tag set, the text before its first unescaped space.
pub fn series_key(line: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b' ' => return &line[..i],
            _ => i += 1,
        }
    }
    trim_newline(line)
}

fn trim_newline(mut s: &[u8]) -> &[u8] {
    while let Some((&last, rest)) = s.split_last() {
        if last == b'\n' || last == b'\r' {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Removes line-protocol escapes (`\,`, `\ `, `\=`, `\"`, `\\`); any other backslash is literal.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() && b", =\"\\".contains(&s[i + 1]) {
            out.push(s[i + 1]);
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// The measurement of a line, unescaped (as a server names it).
pub fn measurement(line: &[u8]) -> Vec<u8> {
    let key = series_key(line);
    let mut i = 0;
    while i < key.len() {
        match key[i] {
            b'\\' => i += 2,
            b',' => break,
            _ => i += 1,
        }
    }
    unescape(&key[..i.min(key.len())])
}

/// The field keys of a line, unescaped, in order.
pub fn field_keys(line: &[u8]) -> Vec<Vec<u8>> {
    let key_len = series_key(line).len();
    let fields = trim_newline(&line[(key_len + 1).min(line.len())..]);
    let mut keys = Vec::new();
    let mut i = 0;
    let mut key_start = 0;
    let mut in_key = true;
    let mut quoted = false;
    while i < fields.len() {
        let b = fields[i];
        if b == b'\\' {
            i += 2;
            continue;
        }
        if in_key {
            if b == b'=' {
                keys.push(unescape(&fields[key_start..i]));
                in_key = false;
            } else if b == b' ' {
                break;
            }
        } else if b == b'"' {
            quoted = !quoted;
        } else if !quoted && b == b',' {
            in_key = true;
            key_start = i + 1;
        } else if !quoted && b == b' ' {
            break;
        }
        i += 1;
    }
    keys
}

/// Whether the line has the field `field` (unescaped).
pub fn has_field(line: &[u8], field: &str) -> bool {
    field_keys(line).iter().any(|k| k == field.as_bytes())
}

/// A field type conflict: the field `field` of measurement `measurement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldHint {
    pub measurement: String,
    pub field: String,
}

impl FieldHint {
    /// Whether `line` is of the named measurement and carries the named field.
    pub fn names(&self, line: &[u8]) -> bool {
        measurement(line) == self.measurement.as_bytes() && has_field(line, &self.field)
    }
}

/// What a refusal names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    Field(FieldHint),
    /// 1-based line numbers of the request's body.
    Lines(Vec<usize>),
}

/// Reads what a 400/422 body names. Only a hint: the caller verifies it.
pub fn parse_hint(body: &str) -> Option<Hint> {
    let lines = line_numbers(body);
    if !lines.is_empty() {
        return Some(Hint::Lines(lines));
    }
    // The message is usually a JSON string (`{"error":"partial write: …"}`), where its quotes
    // arrive as \"; a body cut short is no longer JSON: then unescape by hand.
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let mut texts = Vec::new();
        strings(&v, &mut texts);
        return texts.into_iter().find_map(type_conflict).map(Hint::Field);
    }
    if body.contains("input field \\\"") {
        return type_conflict(&json_unescape(body)).map(Hint::Field);
    }
    type_conflict(body).map(Hint::Field)
}

/// Every string of a JSON value.
fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// `input field "F" on measurement "M"` (Go's %q quoting).
fn type_conflict(text: &str) -> Option<FieldHint> {
    let at = text.find("field type conflict")?;
    let rest = &text[at..];
    let f = rest.find("input field \"")? + "input field \"".len();
    let (field, after) = go_quoted(&rest[f..])?;
    let m = after.find("on measurement \"")? + "on measurement \"".len();
    let (measurement, _) = go_quoted(&after[m..])?;
    Some(FieldHint { measurement, field })
}

/// A Go %q string's content up to its closing quote, and the text after it.
fn go_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, e)) => out.push(e),
                None => return None,
            },
            c => out.push(c),
        }
    }
    None
}

/// One level of JSON string escapes removed (`\"`, `\\`, `\n`, `\t`, `\/`).
fn json_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(e @ ('"' | '\\' | '/')) => out.push(e),
            Some(e) => {
                out.push('\\');
                out.push(e);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// InfluxDB 3's rejected lines: `"line_number":N` (Core, Enterprise) and
/// `error parsing line N (1-based)` (Cloud, Clustered); 1-based, sorted, unique.
fn line_numbers(body: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (at, _) in body.match_indices("line_number") {
        let rest = body[at + "line_number".len()..].trim_start_matches(['"', '\\', ':', ' ']);
        if let Some(n) = leading_number(rest) {
            out.push(n);
        }
    }
    for (at, _) in body.match_indices("error parsing line ") {
        let rest = &body[at + "error parsing line ".len()..];
        if let Some(n) = leading_number(rest) {
            let after = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            if after.starts_with(" (1-based)") {
                out.push(n);
            }
        }
    }
    out.retain(|&n| n > 0);
    out.sort_unstable();
    out.dedup();
    out
}

fn leading_number(s: &str) -> Option<usize> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The lines a hint names, and the others, in body order. `spans` are the lines of the
/// request the hint answered (its line numbers count them).
pub fn split_by_hint(body: &[u8], spans: &[Span], hint: &Hint) -> (Vec<Span>, Vec<Span>) {
    let mut named = Vec::new();
    let mut rest = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        let hit = match hint {
            Hint::Field(f) => f.names(&body[s.clone()]),
            Hint::Lines(ns) => ns.binary_search(&(i + 1)).is_ok(),
        };
        if hit {
            named.push(s.clone());
        } else {
            rest.push(s.clone());
        }
    }
    (named, rest)
}

/// The lines grouped by series, in order of first appearance.
pub fn by_series(body: &[u8], spans: &[Span]) -> Vec<Vec<Span>> {
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut groups: Vec<Vec<Span>> = Vec::new();
    for s in spans {
        let key = series_key(&body[s.clone()]);
        let g = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(s.clone());
    }
    groups
}

/// The two halves of `v` (the first one the smaller).
pub fn halve<T>(mut v: Vec<T>) -> (Vec<T>, Vec<T>) {
    let second = v.split_off(v.len() / 2);
    (v, second)
}

/// Whether a refusal is about the line's time (outside the retention period): such a line
/// is refused for itself, not for its series, so its series is not remembered.
pub fn about_time(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    // A type conflict names a field, which may well be called `timestamp`.
    !r.contains("type conflict")
        && [
            "beyond retention",
            "outside the retention",
            "retention period",
            "too old",
            "timestamp value",
            "timestamp out of",
        ]
        .iter()
        .any(|p| r.contains(p))
}

/// A (series, field) the store refused.
#[derive(Debug, Clone)]
pub struct Refused {
    pub field: Vec<u8>,
    pub reason: String,
    /// Wall-clock ns of the first refusal (for the dead-letter comment).
    pub since_ns: i64,
    pub next_probe: Instant,
    /// For eviction: the last time it was refused.
    last: Instant,
}

/// The (series, field) pairs the store keeps refusing.
#[derive(Debug)]
pub struct Refusals {
    by_series: HashMap<Vec<u8>, Vec<Refused>>,
    len: usize,
    /// `PROBE_EVERY` (shorter in tests).
    pub probe_every: Duration,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            by_series: HashMap::new(),
            len: 0,
            probe_every: PROBE_EVERY,
        }
    }
}

impl Refusals {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records that the store refused `field` of `series` for `reason` (again); returns
    /// whether it is new.
    pub fn remember(
        &mut self,
        series: &[u8],
        field: &[u8],
        reason: &str,
        now: Instant,
        now_ns: i64,
    ) -> bool {
        if let Some(r) = self
            .by_series
            .get_mut(series)
            .and_then(|v| v.iter_mut().find(|r| r.field == field))
        {
            r.next_probe = now + self.probe_every;
            r.last = now;
            reason.clone_into(&mut r.reason);
            return false;
        }
        if self.len >= MAX_REMEMBERED {
            self.evict_oldest();
        }
        self.by_series
            .entry(series.to_vec())
            .or_default()
            .push(Refused {
                field: field.to_vec(),
                reason: reason.to_string(),
                since_ns: now_ns,
                next_probe: now + self.probe_every,
                last: now,
            });
        self.len += 1;
        true
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .by_series
            .iter()
            .flat_map(|(s, v)| v.iter().map(move |r| (r.last, s, r.field.clone())))
            .min_by_key(|(last, _, _)| *last)
            .map(|(_, s, f)| (s.clone(), f));
        if let Some((s, f)) = oldest {
            self.forget(&s, &f);
        }
    }

    /// The store accepted `field` of `series` again.
    pub fn forget(&mut self, series: &[u8], field: &[u8]) -> Option<Refused> {
        let v = self.by_series.get_mut(series)?;
        let i = v.iter().position(|r| r.field == field)?;
        let r = v.swap_remove(i);
        if v.is_empty() {
            self.by_series.remove(series);
        }
        self.len -= 1;
        Some(r)
    }

    /// The remembered refusal a line falls under, if any.
    pub fn matching(&self, line: &[u8]) -> Option<&Refused> {
        let v = self.by_series.get(series_key(line))?;
        let keys = field_keys(line);
        v.iter().find(|r| keys.contains(&r.field))
    }

    /// Per remembered pair due for a probe at `now`: the first of `spans` that falls under it
    /// (`(series, field, span)`); a pair without a line in `spans` waits for a later batch.
    pub fn due(&self, body: &[u8], spans: &[Span], now: Instant) -> Vec<(Vec<u8>, Vec<u8>, Span)> {
        let mut out: Vec<(Vec<u8>, Vec<u8>, Span)> = Vec::new();
        if self.is_empty() {
            return out;
        }
        for s in spans {
            let line = &body[s.clone()];
            let Some(v) = self.by_series.get(series_key(line)) else {
                continue;
            };
            let keys = field_keys(line);
            for r in v {
                if r.next_probe <= now
                    && keys.contains(&r.field)
                    && !out
                        .iter()
                        .any(|(se, f, _)| se == series_key(line) && *f == r.field)
                {
                    out.push((series_key(line).to_vec(), r.field.clone(), s.clone()));
                }
            }
        }
        out
    }

    /// Splits `spans` into the lines to send and, per remembered refusal, the lines that go
    /// to the dead-letter file without a request (`(reason, lines)`).
    pub fn sort(&self, body: &[u8], spans: Vec<Span>) -> (Vec<Span>, Vec<(String, Vec<Span>)>) {
        if self.is_empty() {
            return (spans, Vec::new());
        }
        let mut send = Vec::with_capacity(spans.len());
        let mut dead: Vec<(String, Vec<Span>)> = Vec::new();
        for s in spans {
            match self.matching(&body[s.clone()]) {
                Some(r) => {
                    let reason = format!(
                        "{} (refused since {}; sent here without a request, tried again every {} s)",
                        r.reason,
                        r.since_ns,
                        self.probe_every.as_secs()
                    );
                    match dead.iter_mut().find(|(why, _)| *why == reason) {
                        Some((_, v)) => v.push(s),
                        None => dead.push((reason, vec![s])),
                    }
                }
                None => send.push(s),
            }
        }
        (send, dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"m,device=dev0,i=0 value=1 10\n\
m,device=dev4,i=0 value=2 10\n\
linetap_device,device=dev4 up=true 10\n\
m\\ x,device=a\\,b f\\=1=1i,s=\"a b,c=d\" 10\n\
m,device=dev4,i=1 value=3,value_label=\"x\" 10\n";

    fn text(body: &[u8], spans: &[Span]) -> Vec<String> {
        spans
            .iter()
            .map(|s| String::from_utf8_lossy(&body[s.clone()]).trim().to_string())
            .collect()
    }

    #[test]
    fn lines_series_measurements_and_fields() {
        let ls = lines(BODY);
        assert_eq!(ls.len(), 5);
        assert_eq!(lines(b"a 1\n\nb 2"), vec![0..4, 5..8]);
        let l = |i: usize| &BODY[ls[i].clone()];
        assert_eq!(series_key(l(0)), b"m,device=dev0,i=0");
        assert_eq!(series_key(l(3)), b"m\\ x,device=a\\,b");
        assert_eq!(measurement(l(3)), b"m x");
        assert_eq!(measurement(l(2)), b"linetap_device");
        assert_eq!(field_keys(l(3)), vec![b"f=1".to_vec(), b"s".to_vec()]);
        assert_eq!(
            field_keys(l(4)),
            vec![b"value".to_vec(), b"value_label".to_vec()]
        );
        assert!(has_field(l(1), "value"));
        assert!(!has_field(l(2), "value"));
        assert_eq!(series_key(b"m f=1"), b"m");
        assert_eq!(join(BODY, &ls[..2]), BODY[..ls[1].end].to_vec());
        assert_eq!(join(b"a 1", &lines(b"a 1")), b"a 1\n");
    }

    #[test]
    fn reads_a_type_conflict_json_escaped_or_cut_short() {
        let v1 = r#"{"error":"partial write: field type conflict: input field \"value\" on measurement \"m\" is type float, already exists as type integer dropped=5"}"#;
        let want = Some(Hint::Field(FieldHint {
            measurement: "m".into(),
            field: "value".into(),
        }));
        assert_eq!(parse_hint(v1), want);
        // 2.x: 422 with a message; a body cut at 4096 bytes is no longer JSON.
        let v2 = r#"{"code":"unprocessable entity","message":"failure writing points to database: partial write: field type conflict: input field \"value\" on measurement \"m\" is type float, already exists as type integer dropped=1"#;
        assert_eq!(parse_hint(v2), want);
        // Plain text, with quotes inside the names (Go %q).
        let plain = r#"partial write: field type conflict: input field "a\"b" on measurement "m x" is type float"#;
        assert_eq!(
            parse_hint(plain),
            Some(Hint::Field(FieldHint {
                measurement: "m x".into(),
                field: "a\"b".into()
            }))
        );
        assert_eq!(
            parse_hint(r#"{"error":"unable to parse 'x': missing fields"}"#),
            None
        );
        assert_eq!(parse_hint(""), None);
    }

    #[test]
    fn reads_influxdb3_line_numbers() {
        let core = r#"{"error":"partial write of line protocol occurred","data":[{"original_line":"home,room=Sunroom temp=hi 1735549200","line_number":2,"error_message":"invalid column type"},{"original_line":"x","line_number": 7,"error_message":"y"}]}"#;
        assert_eq!(parse_hint(core), Some(Hint::Lines(vec![2, 7])));
        let rejected_all = r#"{"error":"parsing failed for write_lp endpoint","data":{"original_line":"a","line_number":3,"error_message":"b"}}"#;
        assert_eq!(parse_hint(rejected_all), Some(Hint::Lines(vec![3])));
        let distributed = r#"{"code":"invalid","line":2,"message":"failed to parse line protocol:\n  errors encountered on line(s):\n  error parsing line 2 (1-based): Invalid measurement was provided\n  error parsing line 4 (1-based): Unable to parse timestamp value '123'"}"#;
        assert_eq!(parse_hint(distributed), Some(Hint::Lines(vec![2, 4])));
    }

    #[test]
    fn splits_by_hint_and_series() {
        let ls = lines(BODY);
        let field = Hint::Field(FieldHint {
            measurement: "m".into(),
            field: "value".into(),
        });
        let (named, rest) = split_by_hint(BODY, &ls, &field);
        assert_eq!(named.len(), 3);
        assert_eq!(text(BODY, &rest).len(), 2);
        let (named, rest) = split_by_hint(BODY, &ls, &Hint::Lines(vec![2, 5, 9]));
        assert_eq!(named, vec![ls[1].clone(), ls[4].clone()]);
        assert_eq!(rest.len(), 3);
        let body = b"a,d=1 f=1 1\nb f=1 1\na,d=1 f=2 2\nc f=1 1\n";
        let groups = by_series(body, &lines(body));
        assert_eq!(groups.len(), 3);
        assert_eq!(text(body, &groups[0]), vec!["a,d=1 f=1 1", "a,d=1 f=2 2"]);
        let (a, b) = halve(groups);
        assert_eq!((a.len(), b.len()), (1, 2));
        assert!(about_time(
            "partial write: points beyond retention policy dropped=1"
        ));
        assert!(!about_time("partial write: field type conflict"));
        assert!(!about_time(
            r#"field type conflict: input field "timestamp" on measurement "retention period""#
        ));
        assert!(about_time(
            "error parsing line 4 (1-based): Unable to parse timestamp value '1'"
        ));
    }

    #[test]
    fn remembers_refused_fields_and_probes_them() {
        let body = b"m,device=dev4 value=1 1\nm,device=dev4 other=1 1\nm,device=dev0 value=1 1\nm,device=dev4 value=2 2\n";
        let ls = lines(body);
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert!(r.remember(b"m,device=dev4", b"value", "HTTP 400: conflict", t0, 5));
        assert!(!r.remember(b"m,device=dev4", b"value", "HTTP 400: conflict", t0, 6));
        assert_eq!(r.len(), 1);
        let (send, dead) = r.sort(body, ls.clone());
        assert_eq!(send, vec![ls[1].clone(), ls[2].clone()]);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1, vec![ls[0].clone(), ls[3].clone()]);
        assert!(dead[0]
            .0
            .starts_with("HTTP 400: conflict (refused since 5;"));
        // Not due yet; due after PROBE_EVERY, with one line per pair.
        assert!(r.due(body, &ls, t0).is_empty());
        let due = r.due(body, &ls, t0 + PROBE_EVERY);
        assert_eq!(
            due,
            vec![(b"m,device=dev4".to_vec(), b"value".to_vec(), ls[0].clone())]
        );
        assert!(r.forget(b"m,device=dev4", b"value").is_some());
        assert!(r.is_empty());
        assert_eq!(r.sort(body, ls.clone()).0, ls);
    }

    #[test]
    fn forgets_the_least_recently_refused_when_full() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        for i in 0..MAX_REMEMBERED {
            let series = format!("m,i={i}");
            r.remember(
                series.as_bytes(),
                b"f",
                "r",
                t0 + Duration::from_millis(i as u64),
                0,
            );
        }
        r.remember(b"m,i=new", b"f", "r", t0 + Duration::from_secs(60), 0);
        assert_eq!(r.len(), MAX_REMEMBERED);
        assert!(r.matching(b"m,i=0 f=1 1\n").is_none());
        assert!(r.matching(b"m,i=1 f=1 1\n").is_some());
        assert!(r.matching(b"m,i=new f=1 1\n").is_some());
    }
}
