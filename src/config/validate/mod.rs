//! Turns the raw file (`schema`) into a `Config`, checking the whole file and collecting every
//! error with its location rather than stopping at the first. This module validates the
//! sections every line has (`[line]`, `[agent]`, `[buffer]`) and the keys every sink shares
//! (`sinks.rs`); each sink kind and source kind validates its own keys in its folder
//! (`sink/influx/config.rs`, `sink/file/config.rs`, `source/modbus/config.rs`).

mod chunked;
pub mod devices;
pub mod points;
pub(crate) mod profile;
pub mod sinks;

use super::schema::*;
use super::*;
use serde_spanned::Spanned;
use std::ops::Range;

/// Tags that linetap sets itself; user tags may not reuse them.
pub(crate) const RESERVED_TAGS: [&str; 5] = ["site", "line", "cell", "device", "kind"];

/// Validation of one file: its text, and the errors found so far with their places.
pub struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    pub(crate) errors: Vec<(usize, String)>,
    /// Errors in the shape of the file (an unknown key, a value of the wrong type): when there
    /// are any, only they are reported (what follows from them would only confuse).
    shapes: Vec<(usize, String)>,
    /// What a kind remembers from device to device (ports, units in use, ...).
    state: std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any>>,
    /// Errors located in other files (the profiles this file uses).
    pub(crate) extra: Vec<ConfigError>,
    /// Every profile available, and those validated so far (`None`: it has errors).
    pub(crate) profiles: std::collections::BTreeMap<String, profiles::ProfileText>,
    pub(crate) loaded: std::collections::HashMap<String, Option<std::rc::Rc<profile::Loaded>>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Ctx<'a> {
        Ctx {
            file,
            text,
            errors: Vec::new(),
            shapes: Vec::new(),
            state: Default::default(),
            extra: Vec::new(),
            profiles: Default::default(),
            loaded: Default::default(),
        }
    }

    /// The byte range of `span`'s text (to find a position inside a string value).
    pub(crate) fn source(&self, span: Range<usize>) -> &str {
        self.text.get(span).unwrap_or("")
    }

    /// Whether any error was found (here or in a profile).
    pub fn failed(&self) -> bool {
        !self.errors.is_empty() || !self.extra.is_empty() || !self.shapes.is_empty()
    }

    /// An error at `span` of the file.
    pub fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.errors.push((span.start, msg.into()));
    }

    /// An error in the shape of the file (what the TOML reader refused).
    pub fn shape(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.shapes.push((span.start, msg.into()));
    }

    /// What a kind keeps between the devices of one file (taken out; `put` it back).
    pub fn take_state<T: Default + 'static>(&mut self) -> T {
        self.state
            .remove(&std::any::TypeId::of::<T>())
            .and_then(|b| b.downcast::<T>().ok())
            .map(|b| *b)
            .unwrap_or_default()
    }

    pub fn put_state<T: 'static>(&mut self, state: T) {
        self.state
            .insert(std::any::TypeId::of::<T>(), Box::new(state));
    }

    /// Every error, this file's in file order, then those of its profiles.
    pub(crate) fn finish(mut self) -> ConfigErrors {
        if !self.shapes.is_empty() {
            self.errors = std::mem::take(&mut self.shapes);
            self.extra.clear();
        }
        self.errors.sort_by_key(|(at, _)| *at);
        let mut out: Vec<ConfigError> = self
            .errors
            .into_iter()
            .map(|(at, message)| {
                let (line, column) = locate(self.text, at);
                ConfigError {
                    file: self.file.to_string(),
                    line,
                    column,
                    message,
                }
            })
            .collect();
        out.extend(self.extra);
        ConfigErrors(out)
    }

    pub fn tags(&mut self, raw: &Tags, what: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in raw {
            if RESERVED_TAGS.contains(&k.get_ref().as_str()) {
                self.err(
                    k.span(),
                    format!(
                        "tag {:?} is set by linetap itself and cannot be used in {what} tags",
                        k.get_ref()
                    ),
                );
            } else if k.get_ref().is_empty() || v.get_ref().is_empty() {
                self.err(k.span(), "tag keys and values must not be empty");
            }
            out.push((k.get_ref().clone(), v.get_ref().clone()));
        }
        out
    }

    pub fn non_empty(
        &mut self,
        s: &Option<Spanned<String>>,
        parent: Range<usize>,
        what: &str,
        table: &str,
    ) -> String {
        match s {
            Some(v) if !v.get_ref().trim().is_empty() => v.get_ref().clone(),
            Some(v) => {
                self.err(v.span(), format!("{what} must not be empty"));
                String::new()
            }
            None => {
                self.err(parent, format!("{table} needs `{what}`"));
                String::new()
            }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn locate(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

pub(super) fn parse(
    file: &str,
    text: &str,
    dir: Option<&std::path::Path>,
    kinds: &[&dyn crate::source::SourceKind],
) -> Result<Config, ConfigErrors> {
    let syntax = |e: toml::de::Error| {
        let mut cx = Ctx::new(file, text);
        let at = e.span().unwrap_or(0..0);
        cx.err(at, e.message().trim().to_string());
        cx.finish()
    };
    let (head, blocks) = chunked::split(text).map_err(syntax)?;
    let mut cx = Ctx::new(file, text);
    let span = head.span();
    let mut root = head.into_inner();
    let head_devices = chunked::take_devices(&mut root);
    let raw_sinks = take_named(&mut cx, &mut root, "sinks");
    let raw_brokers = take_named(&mut cx, &mut root, "brokers");
    let Some(raw) = crate::config::table::RawTable::new(span, root).finish::<RawConfig>(&mut cx)
    else {
        return Err(cx.finish());
    };
    let (mut config, line_report) = build(&mut cx, raw, raw_sinks, raw_brokers, dir);
    let mut devices = devices::Devices::new(kinds, line_report);
    for d in head_devices {
        devices.add(&mut cx, d, &config.line, &config.brokers);
    }
    // A large file's devices: each block parsed when validation reaches it and dropped once
    // validated. A syntax error stops there and is the only error reported (as a whole parse
    // reports it).
    for b in blocks {
        match chunked::parse_block(text, b) {
            Ok(part) => {
                for d in part {
                    devices.add(&mut cx, d, &config.line, &config.brokers);
                }
            }
            Err((at, message)) => {
                let mut cx = Ctx::new(file, text);
                cx.err(at, message.trim().to_string());
                return Err(cx.finish());
            }
        }
    }
    if devices.seen == 0 {
        cx.err(0..0, "no [[devices]]: the configuration polls nothing");
    }
    config.devices = devices.devices;
    if !cx.failed() {
        Ok(config)
    } else {
        Err(cx.finish())
    }
}

/// Takes the `[KEY.NAME]` tables (sinks, brokers) out of a document's root table, in name order.
fn take_named<'i>(
    cx: &mut Ctx,
    root: &mut toml::de::DeTable<'i>,
    table: &str,
) -> Vec<(Spanned<String>, Spanned<toml::de::DeValue<'i>>)> {
    let key = root
        .iter()
        .find(|(k, _)| k.get_ref() == table)
        .map(|(k, _)| k.clone());
    let Some(v) = key.and_then(|k| root.remove(&k)) else {
        return Vec::new();
    };
    let span = v.span();
    match v.into_inner() {
        toml::de::DeValue::Table(t) => t
            .into_iter()
            .map(|(k, v)| (Spanned::new(k.span(), k.into_inner().into_owned()), v))
            .collect(),
        other => {
            cx.shape(
                span,
                format!(
                    "`{table}` is a table of [{table}.NAME] tables, not a {}",
                    other.type_str()
                ),
            );
            Vec::new()
        }
    }
}

/// Validates everything but the devices; the line's report settings are the devices' defaults.
fn build(
    cx: &mut Ctx,
    raw: RawConfig,
    raw_sinks: Vec<(Spanned<String>, Spanned<toml::de::DeValue<'_>>)>,
    raw_brokers: Vec<(Spanned<String>, Spanned<toml::de::DeValue<'_>>)>,
    dir: Option<&std::path::Path>,
) -> (Config, Report) {
    let line = match &raw.line {
        Some(l) => {
            let span = l.span();
            let l = l.get_ref();
            LineConfig {
                id: cx.non_empty(&l.id, span.clone(), "id", "[line]"),
                site: l.site.as_ref().map(|s| s.get_ref().clone()),
                tags: cx.tags(&l.tags, "line"),
            }
        }
        None => {
            cx.err(0..0, "missing required table [line] (with at least `id`)");
            LineConfig {
                id: String::new(),
                site: None,
                tags: Vec::new(),
            }
        }
    };

    let data_dir = raw
        .agent
        .data_dir
        .clone()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./linetap-data"));
    let metrics_listen = match &raw.agent.metrics_listen {
        Some(s) if s.get_ref().is_empty() => None,
        Some(s) => {
            if s.get_ref().parse::<std::net::SocketAddr>().is_err() {
                cx.err(
                    s.span(),
                    format!("metrics_listen {:?} is not an IP:port address", s.get_ref()),
                );
            }
            Some(s.get_ref().clone())
        }
        None => None,
    };
    // Profiles: `profiles_dir` (relative to the file's folder), else `profiles/` beside the
    // file when there is a file.
    let profiles_dir = match (&raw.agent.profiles_dir, dir) {
        (Some(p), Some(base)) => Some(base.join(p.get_ref())),
        (Some(p), None) => Some(PathBuf::from(p.get_ref())),
        (None, Some(base)) => Some(base.join("profiles")),
        (None, None) => None,
    };
    let (available, unreadable) = profiles::available(profiles_dir.as_deref());
    cx.profiles = available;
    for (file, message) in unreadable {
        cx.extra.push(ConfigError {
            file,
            line: 0,
            column: 0,
            message,
        });
    }
    let state_window = match &raw.agent.state_window {
        Some(w) if w.get_ref().0 < Duration::from_secs(1) => {
            cx.err(w.span(), "state_window must be at least 1s");
            Duration::from_secs(60)
        }
        Some(w) => w.get_ref().0,
        None => Duration::from_secs(60),
    };
    let agent = AgentConfig {
        data_dir,
        metrics_listen,
        shutdown_grace: raw
            .agent
            .shutdown_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
        stuck_after: raw
            .agent
            .stuck_after
            .map(|d| d.0)
            .unwrap_or(crate::observe::systemd::STUCK_AFTER),
        self_interval: raw
            .agent
            .self_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
        profiles_dir,
        state_window,
    };
    let max_bytes = raw
        .buffer
        .max_bytes
        .as_ref()
        .map(|s| s.get_ref().0)
        .unwrap_or(256 << 20);
    if let Some(m) = &raw.buffer.max_bytes {
        if max_bytes < 1 << 20 {
            cx.err(m.span(), "buffer max_bytes must be at least 1MiB");
        }
    }
    let sync_interval = raw
        .buffer
        .sync_interval
        .as_ref()
        .map(|d| d.get_ref().0)
        .unwrap_or(Duration::from_secs(1));
    if let Some(d) = &raw.buffer.sync_interval {
        if sync_interval > Duration::from_secs(60) {
            cx.err(
                d.span(),
                "sync_interval above 60s would risk a minute of data at every power cut",
            );
        }
    }
    let live_share = raw
        .buffer
        .live_share
        .as_ref()
        .map(|s| *s.get_ref())
        .unwrap_or(0.25);
    if let Some(s) = &raw.buffer.live_share {
        if !(0.0..=1.0).contains(&live_share) {
            cx.err(s.span(), "live_share is a fraction from 0.0 to 1.0");
        }
    }
    let buffer = BufferConfig {
        max_bytes,
        when_full: raw.buffer.when_full.unwrap_or_default(),
        sync_interval,
        live_share,
    };

    // A sink's buffer cursor and dead-letter file are named after it with every character but
    // letters, digits, '-' and '_' replaced: two names must not meet there.
    let mut files: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for (name, _) in &raw_sinks {
        let file = crate::buffer::cursors::file_name(name.get_ref());
        match files.get(&file) {
            Some(other) => cx.err(
                name.span(),
                format!(
                    "sinks {other:?} and {:?} would share their buffer position and dead-letter file ({file}); rename one (letters, digits, '-' and '_' keep a name distinct)",
                    name.get_ref()
                ),
            ),
            None => {
                files.insert(file, name.get_ref());
            }
        }
    }

    let sinks = raw_sinks
        .into_iter()
        .filter_map(|(name, s)| {
            sinks::sink(cx, name, s, &line.id, line.site.as_deref().unwrap_or(""))
        })
        .collect();

    let line_report = report(cx, &raw.report, Report::default());
    let (brokers, sparkplug_host_ids) =
        crate::source::mqtt::config::brokers(cx, raw_brokers, &line.id);
    let config = Config {
        line,
        agent,
        buffer,
        sinks,
        brokers,
        sparkplug_host_ids,
        devices: Vec::new(),
    };
    (config, line_report)
}

/// Whether an http(s) URL points at this machine (127.0.0.0/8, ::1, localhost).
pub(crate) fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A `report` table over the settings it inherits (key by key).
pub(crate) fn report(cx: &mut Ctx, raw: &Option<Spanned<ReportSection>>, parent: Report) -> Report {
    let Some(raw) = raw else {
        return parent;
    };
    let r = raw.get_ref();
    let mut out = parent;
    out.active = true;
    for (v, slot, what) in [
        (&r.deadband, &mut out.deadband, "deadband"),
        (&r.deadband_pct, &mut out.deadband_pct, "deadband_pct"),
    ] {
        if let Some(v) = v {
            if !v.get_ref().is_finite() || *v.get_ref() < 0.0 {
                cx.err(v.span(), format!("{what} must be a number of 0 or more"));
            } else {
                *slot = *v.get_ref();
            }
        }
    }
    if let Some(d) = &r.min_interval {
        out.min_interval = d.get_ref().0;
    }
    if let Some(d) = &r.max_interval {
        out.max_interval = d.get_ref().0;
    }
    if !out.max_interval.is_zero() && out.min_interval > out.max_interval {
        let at = r
            .min_interval
            .as_ref()
            .or(r.max_interval.as_ref())
            .map(|d| d.span())
            .unwrap_or(raw.span());
        cx.err(
            at,
            format!(
                "min_interval ({:?}) is longer than max_interval ({:?}): a point could never be written at its heartbeat",
                out.min_interval, out.max_interval
            ),
        );
    }
    out
}

/// A user's password, from `password_file` or `password_env` (a literal `password` in the file
/// is an error), and the checks tying it to `username`; `table` locates a missing key.
pub fn credentials(
    cx: &mut Ctx,
    username: &Option<Spanned<String>>,
    password: &Option<Spanned<String>>,
    password_file: &Option<Spanned<String>>,
    password_env: &Option<Spanned<String>>,
    table: std::ops::Range<usize>,
) -> Option<crate::config::Secret> {
    use crate::config::Secret;
    if let Some(p) = password {
        cx.err(
            p.span(),
            "a password in the file is not allowed: use password_file (e.g. a systemd credential) or password_env",
        );
    }
    let secret = match (password_file, password_env) {
        (Some(_), Some(e)) => {
            cx.err(
                e.span(),
                "give either password_file or password_env, not both",
            );
            None
        }
        (Some(f), None) => Some(Secret::File(std::path::PathBuf::from(f.get_ref()))),
        (None, Some(e)) => Some(Secret::Env(e.get_ref().clone())),
        (None, None) => None,
    };
    if secret.is_some() && username.is_none() {
        let at = password_file
            .as_ref()
            .or(password_env.as_ref())
            .map(|s| s.span())
            .unwrap_or(table);
        cx.err(at, "a password needs `username`");
    }
    secret
}

/// The name of `names` closest to a misspelt `s` (case-insensitive edit distance at most
/// `max`), for "did you mean".
pub fn closest<'a>(s: &str, names: impl Iterator<Item = &'a str>, max: usize) -> Option<&'a str> {
    let s = s.to_ascii_lowercase();
    names
        .map(|n| (distance(&s, &n.to_ascii_lowercase()), n))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

pub(crate) fn int_in(
    cx: &mut Ctx,
    v: &Option<Spanned<i64>>,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
    what: &str,
) -> i64 {
    match v {
        Some(n) if !range.contains(n.get_ref()) => {
            cx.err(
                n.span(),
                format!(
                    "{what} must be between {} and {}, not {}",
                    range.start(),
                    range.end(),
                    n.get_ref()
                ),
            );
            default
        }
        Some(n) => *n.get_ref(),
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any text, including a real configuration with random bytes changed, gives a config
        /// or located errors; never a panic.
        #[test]
        fn never_panics_and_always_locates(noise in proptest::collection::vec((0usize..4000, proptest::prelude::any::<u8>()), 0..6), junk in "\\PC{0,200}") {
            let mut text = crate::sim::demo::DEMO_CONFIG.as_bytes().to_vec();
            for (at, b) in noise {
                if !text.is_empty() {
                    let i = at % text.len();
                    text[i] = b;
                }
            }
            let text = String::from_utf8_lossy(&text).into_owned();
            for input in [text.as_str(), junk.as_str()] {
                if let Err(errors) = parse("fuzz.toml", input, None, crate::source::KINDS) {
                    proptest::prop_assert!(!errors.0.is_empty());
                    for e in &errors.0 {
                        proptest::prop_assert!(e.line >= 1 && e.column >= 1, "unlocated: {}", e);
                    }
                }
            }
        }
    }

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("http://127.0.0.1:8086"));
        assert!(is_loopback_url("http://localhost:8086/"));
        assert!(is_loopback_url("https://[::1]:8086"));
        assert!(is_loopback_url("http://127.3.4.5"));
        assert!(!is_loopback_url("http://influx.plant-2:8086"));
        assert!(!is_loopback_url("http://10.0.0.5:8086"));
    }

    #[test]
    fn locates_offsets() {
        let text = "a\nbc\ndéf";
        assert_eq!(locate(text, 0), (1, 1));
        assert_eq!(locate(text, 3), (2, 2));
        assert_eq!(locate(text, text.len()), (3, 4));
    }
}
