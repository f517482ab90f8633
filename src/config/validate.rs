//! Turns the raw file (`schema`) into a `Config`, checking the whole file and collecting every
//! error with its location rather than stopping at the first.

use super::schema::*;
use super::*;
use serde_spanned::Spanned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

/// Tags that linetap sets itself; user tags may not reuse them.
const RESERVED_TAGS: [&str; 5] = ["site", "line", "cell", "device", "kind"];
/// Most registers one read request can carry (Modbus spec: 125 for FC03/FC04).
pub const MAX_REGISTERS: i64 = 125;
/// How often a unit that stopped answering on a shared bus is probed (`probe_interval`).
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<(usize, String)>,
}

impl Ctx<'_> {
    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.errors.push((span.start, msg.into()));
    }

    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|(at, _)| *at);
        ConfigErrors(
            self.errors
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
                .collect(),
        )
    }

    fn tags(&mut self, raw: &Tags, what: &str) -> Vec<(String, String)> {
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

    fn non_empty(
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

pub(super) fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx {
        file,
        text,
        errors: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let at = e.span().unwrap_or(0..0);
            cx.err(at, e.message().trim().to_string());
            return Err(cx.finish());
        }
    };
    let config = build(&mut cx, raw);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(cx.finish())
    }
}

fn build(cx: &mut Ctx, raw: RawConfig) -> Config {
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
    let agent = AgentConfig {
        data_dir,
        metrics_listen,
        shutdown_grace: raw
            .agent
            .shutdown_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
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

    let sinks = raw
        .sinks
        .iter()
        .filter_map(|(name, s)| sink(cx, name, s))
        .collect();

    let mut devices = Vec::new();
    let mut ids: HashMap<String, Range<usize>> = HashMap::new();
    // Per serial port: its settings and the device that set them; per RTU bus: units in use.
    let mut ports: HashMap<String, (SerialConfig, String)> = HashMap::new();
    let mut units: HashMap<(String, u8), String> = HashMap::new();
    for d in &raw.devices {
        if let Some(dev) = device(cx, d) {
            if let Some(id) = &d.get_ref().id {
                if ids.contains_key(id.get_ref()) {
                    cx.err(id.span(), format!("duplicate device id {:?}", id.get_ref()));
                }
                ids.insert(id.get_ref().clone(), id.span());
            }
            let at = d.span();
            if let (Some(sc), Some(raw_serial)) = (&dev.serial, &d.get_ref().serial) {
                match ports.get(&sc.port) {
                    Some((first, owner)) if first != sc => cx.err(
                        raw_serial.span(),
                        format!(
                            "serial port {:?} is configured differently by device {owner:?}: one port has one baud rate, parity, data and stop bits",
                            sc.port
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        ports.insert(sc.port.clone(), (sc.clone(), dev.id.clone()));
                    }
                }
            }
            if dev.protocol != Protocol::ModbusTcp {
                let unit_at = d.get_ref().unit.as_ref().map(|u| u.span()).unwrap_or(at);
                if let Some(other) = units.insert((dev.bus(), dev.unit), dev.id.clone()) {
                    cx.err(
                        unit_at,
                        format!(
                            "unit {} is already used by device {other:?} on {}: units on one bus must differ",
                            dev.unit,
                            dev.bus()
                        ),
                    );
                }
            }
            devices.push(dev);
        }
    }
    if raw.devices.is_empty() {
        cx.err(0..0, "no [[devices]]: the configuration polls nothing");
    }
    Config {
        line,
        agent,
        buffer,
        sinks,
        devices,
    }
}

/// Keys that only some sink types accept: (key present?, its span, key name, allowed types).
fn sink(cx: &mut Ctx, name: &Spanned<String>, s: &Spanned<SinkSection>) -> Option<SinkConfig> {
    let span = s.span();
    let s = s.get_ref();
    let kind = *s.kind.get_ref();
    // Which keys belong to which sink type; a key of another type is an error at its location.
    let present: [(&str, Option<Range<usize>>); 24] = [
        ("url", s.url.as_ref().map(|v| v.span())),
        ("api", s.api.as_ref().map(|v| v.span())),
        ("org", s.org.as_ref().map(|v| v.span())),
        ("bucket", s.bucket.as_ref().map(|v| v.span())),
        ("token", s.token.as_ref().map(|v| v.span())),
        ("token_file", s.token_file.as_ref().map(|v| v.span())),
        ("token_env", s.token_env.as_ref().map(|v| v.span())),
        ("database", s.database.as_ref().map(|v| v.span())),
        (
            "retention_policy",
            s.retention_policy.as_ref().map(|v| v.span()),
        ),
        ("username", s.username.as_ref().map(|v| v.span())),
        ("password", s.password.as_ref().map(|v| v.span())),
        ("password_file", s.password_file.as_ref().map(|v| v.span())),
        ("password_env", s.password_env.as_ref().map(|v| v.span())),
        ("batch_size", s.batch_size.as_ref().map(|v| v.span())),
        ("flush_interval", None),
        ("timeout", s.timeout.as_ref().map(|v| v.span())),
        ("gzip", s.gzip.as_ref().map(|v| v.span())),
        ("format", s.format.as_ref().map(|v| v.span())),
        ("topic", s.topic.as_ref().map(|v| v.span())),
        ("qos", s.qos.as_ref().map(|v| v.span())),
        ("path", s.path.as_ref().map(|v| v.span())),
        (
            "max_file_bytes",
            s.max_file_bytes.as_ref().map(|v| v.span()),
        ),
        ("max_files", s.max_files.as_ref().map(|v| v.span())),
        ("type", None),
    ];
    let allowed: &[&str] = match kind {
        SinkType::Influxdb => &[
            "url",
            "api",
            "org",
            "bucket",
            "token",
            "token_file",
            "token_env",
            "database",
            "retention_policy",
            "username",
            "password",
            "password_file",
            "password_env",
            "batch_size",
            "timeout",
            "gzip",
        ],
        SinkType::File => &["path", "max_file_bytes", "max_files", "batch_size"],
        SinkType::Mqtt => &[
            "url",
            "format",
            "topic",
            "qos",
            "username",
            "password_file",
            "password_env",
            "batch_size",
        ],
    };
    for (key, span) in present {
        if let Some(span) = span {
            if !allowed.contains(&key) {
                cx.err(
                    span,
                    format!("`{key}` is not a key of a {} sink", kind.as_str()),
                );
            }
        }
    }
    let batch_size = match &s.batch_size {
        Some(b) if !(1..=1_000_000).contains(b.get_ref()) => {
            cx.err(b.span(), "batch_size must be between 1 and 1000000");
            5000
        }
        Some(b) => *b.get_ref() as usize,
        None => 5000,
    };
    let flush_interval = s
        .flush_interval
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(1));
    let kind = match kind {
        SinkType::Influxdb => {
            let url = match &s.url {
                Some(u)
                    if u.get_ref().starts_with("http://")
                        || u.get_ref().starts_with("https://") =>
                {
                    u.get_ref().trim_end_matches('/').to_string()
                }
                Some(u) => {
                    cx.err(
                        u.span(),
                        format!("url {:?} must start with http:// or https://", u.get_ref()),
                    );
                    String::new()
                }
                None => {
                    cx.err(s.kind.span(), "an influxdb sink needs `url`");
                    String::new()
                }
            };
            let api = s
                .api
                .as_ref()
                .map(|a| *a.get_ref())
                .unwrap_or(InfluxApi::V2);
            if let Some(t) = &s.token {
                cx.err(t.span(), "a literal token in the configuration file is not allowed: use token_file or token_env");
            }
            if let Some(p) = &s.password {
                cx.err(p.span(), "a literal password in the configuration file is not allowed: use password_file or password_env");
            }
            let secret = |cx: &mut Ctx,
                          file: &Option<Spanned<String>>,
                          env: &Option<Spanned<String>>,
                          what: &str| match (file, env) {
                (Some(f), None) => Some(Secret::File(PathBuf::from(f.get_ref()))),
                (None, Some(e)) => Some(Secret::Env(e.get_ref().clone())),
                (Some(_), Some(e)) => {
                    cx.err(
                        e.span(),
                        format!("give either {what}_file or {what}_env, not both"),
                    );
                    None
                }
                (None, None) => None,
            };
            let token = secret(cx, &s.token_file, &s.token_env, "token");
            let password = secret(cx, &s.password_file, &s.password_env, "password");
            match api {
                InfluxApi::V2 => {
                    for (v, key) in [(&s.org, "org"), (&s.bucket, "bucket")] {
                        if v.is_none() {
                            cx.err(
                                span.clone(),
                                format!("sink {:?}: the v2 API needs `{key}`", name.get_ref()),
                            );
                        }
                    }
                    if token.is_none() && s.token.is_none() {
                        cx.err(
                            span.clone(),
                            format!(
                                "sink {:?}: the v2 API needs credentials: token_file or token_env",
                                name.get_ref()
                            ),
                        );
                    }
                    for (v, key) in [
                        (&s.database, "database"),
                        (&s.retention_policy, "retention_policy"),
                        (&s.username, "username"),
                        (&s.password_file, "password_file"),
                        (&s.password_env, "password_env"),
                    ] {
                        if let Some(v) = v {
                            cx.err(v.span(), format!("`{key}` belongs to api = \"v1\"; the v2 API uses org, bucket and a token"));
                        }
                    }
                }
                InfluxApi::V1 => {
                    if s.database.is_none() {
                        cx.err(
                            span.clone(),
                            format!("sink {:?}: the v1 API needs `database`", name.get_ref()),
                        );
                    }
                    if s.username.is_some() && password.is_none() && s.password.is_none() {
                        cx.err(
                            span.clone(),
                            format!(
                                "sink {:?}: `username` needs password_file or password_env",
                                name.get_ref()
                            ),
                        );
                    }
                    for (v, key) in [
                        (&s.org, "org"),
                        (&s.bucket, "bucket"),
                        (&s.token_file, "token_file"),
                        (&s.token_env, "token_env"),
                    ] {
                        if let Some(v) = v {
                            cx.err(v.span(), format!("`{key}` belongs to api = \"v2\"; the v1 API uses database and username/password"));
                        }
                    }
                }
            }
            SinkKind::Influx(InfluxConfig {
                url,
                api,
                org: s
                    .org
                    .as_ref()
                    .map(|v| v.get_ref().clone())
                    .unwrap_or_default(),
                bucket: s
                    .bucket
                    .as_ref()
                    .map(|v| v.get_ref().clone())
                    .unwrap_or_default(),
                token,
                database: s
                    .database
                    .as_ref()
                    .map(|v| v.get_ref().clone())
                    .unwrap_or_default(),
                retention_policy: s.retention_policy.as_ref().map(|v| v.get_ref().clone()),
                username: s.username.as_ref().map(|v| v.get_ref().clone()),
                password,
                timeout: s
                    .timeout
                    .as_ref()
                    .map(|d| d.get_ref().0)
                    .unwrap_or(Duration::from_secs(10)),
                // Compressing for a store on the same machine only costs CPU.
                gzip: s.gzip.as_ref().map(|g| *g.get_ref()).unwrap_or_else(|| {
                    !is_loopback_url(s.url.as_ref().map(|u| u.get_ref().as_str()).unwrap_or(""))
                }),
            })
        }
        SinkType::File => {
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
            SinkKind::File(FileSinkConfig {
                path,
                max_file_bytes: s
                    .max_file_bytes
                    .as_ref()
                    .map(|s| s.get_ref().0)
                    .unwrap_or(64 << 20),
                max_files,
            })
        }
        SinkType::Mqtt => {
            cx.err(s.kind.span(), "sink type \"mqtt\" is not available in this version yet (supported: influxdb, file)");
            return None;
        }
    };
    Some(SinkConfig {
        name: name.get_ref().clone(),
        kind,
        batch_size,
        flush_interval,
    })
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

fn int_in(
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

fn device(cx: &mut Ctx, d: &Spanned<DeviceSection>) -> Option<DeviceConfig> {
    let span = d.span();
    let d = d.get_ref();
    let id = cx.non_empty(&d.id, span.clone(), "id", "[[devices]]");
    let kind = d
        .kind
        .as_ref()
        .map(|k| *k.get_ref())
        .unwrap_or(DeviceKind::Other);
    if let Some(p) = &d.profile {
        cx.err(
            p.span(),
            format!("profile {:?}: device profiles are not available in this version yet; list the points instead", p.get_ref()),
        );
    }
    let protocol = d
        .protocol
        .as_ref()
        .map(|p| *p.get_ref())
        .unwrap_or(Protocol::ModbusTcp);
    let serial = match (&d.serial, protocol) {
        (Some(s), Protocol::ModbusRtu) => Some(serial(cx, s)),
        (Some(s), _) => {
            cx.err(
                s.span(),
                format!(
                    "`serial` belongs to protocol = \"modbus-rtu\"; {} uses `address`",
                    protocol.as_str()
                ),
            );
            None
        }
        (None, Protocol::ModbusRtu) => {
            cx.err(
                span.clone(),
                format!("device {id:?} uses modbus-rtu and needs `serial = {{ port = \"/dev/ttyUSB0\", baud = 19200 }}`"),
            );
            None
        }
        (None, _) => None,
    };
    let address = match &d.address {
        Some(a) if protocol == Protocol::ModbusRtu => {
            cx.err(
                a.span(),
                "modbus-rtu devices are reached through `serial`, not `address` (use protocol = \"modbus-rtu-over-tcp\" for a serial device server)",
            );
            String::new()
        }
        Some(a) => {
            let ok = a
                .get_ref()
                .rsplit_once(':')
                .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .unwrap_or(false);
            if !ok {
                cx.err(
                    a.span(),
                    format!(
                        "address {:?} must be HOST:PORT, for example \"10.0.3.11:502\"",
                        a.get_ref()
                    ),
                );
            }
            a.get_ref().clone()
        }
        None => {
            if protocol != Protocol::ModbusRtu {
                cx.err(
                    span.clone(),
                    format!("device {id:?} needs `address` (HOST:PORT)"),
                );
            }
            String::new()
        }
    };
    // A serial line addresses units 1..=247 (0 is broadcast, which never answers).
    let unit = if protocol == Protocol::ModbusTcp {
        int_in(cx, &d.unit, 0..=255, 1, "unit")
    } else {
        int_in(cx, &d.unit, 1..=247, 1, "unit on a serial line")
    } as u8;
    let turnaround = d.turnaround.map(|t| t.0).unwrap_or(Duration::ZERO);
    let default_retries = if protocol == Protocol::ModbusTcp {
        0
    } else {
        1
    };
    let retries = int_in(cx, &d.retries, 0..=5, default_retries, "retries") as u8;
    let probe_interval = d
        .probe_interval
        .map(|t| t.0)
        .unwrap_or(DEFAULT_PROBE_INTERVAL);
    let poll = d.poll.map(|p| p.0).unwrap_or(Duration::from_secs(1));
    let timeout = d.timeout.map(|p| p.0).unwrap_or(Duration::from_millis(500));
    let max_registers = int_in(
        cx,
        &d.max_registers,
        1..=MAX_REGISTERS,
        MAX_REGISTERS,
        "max_registers",
    ) as u16;
    let max_gap = int_in(cx, &d.max_gap, 0..=MAX_REGISTERS, 16, "max_gap") as u16;
    let tags = cx.tags(&d.tags, "device");

    let mut points = Vec::new();
    // (measurement, field, tags): two points may not write the same field of the same series.
    type SeriesField = (String, String, Vec<(String, String)>);
    let mut names: HashSet<SeriesField> = HashSet::new();
    // Register ranges taken by non-bit points, per table, to find overlaps.
    let mut taken: BTreeMap<Table, Vec<(u32, u32, String)>> = BTreeMap::new();
    for p in &d.points {
        let pspan = p.span();
        let Some(pc) = point(cx, p, kind, poll) else {
            continue;
        };
        let key = (pc.measurement.clone(), pc.name.clone(), pc.tags.clone());
        if !names.insert(key) {
            let at = p
                .get_ref()
                .name
                .as_ref()
                .map(|n| n.span())
                .unwrap_or(pspan.clone());
            cx.err(
                at,
                format!(
                    "duplicate point {:?} in measurement {:?} of device {id:?}",
                    pc.name, pc.measurement
                ),
            );
        }
        if pc.bit.is_none() {
            let start = pc.address as u32;
            let end = start + pc.span();
            let ranges = taken.entry(pc.table).or_default();
            if let Some((_, _, other)) = ranges.iter().find(|(s, e, _)| start < *e && *s < end) {
                let at = p
                    .get_ref()
                    .address
                    .as_ref()
                    .map(|a| a.span())
                    .unwrap_or(pspan.clone());
                cx.err(
                    at,
                    format!(
                        "point {:?} ({} {}..{}) overlaps point {other:?}: a register belongs to at most one non-bit point",
                        pc.name,
                        pc.table.as_str(),
                        start,
                        end - 1
                    ),
                );
            }
            ranges.push((start, end, pc.name.clone()));
        }
        points.push(pc);
    }
    if d.points.is_empty() {
        cx.err(span, format!("device {id:?} has no points"));
    }
    Some(DeviceConfig {
        id,
        kind,
        cell: d.cell.as_ref().map(|c| c.get_ref().clone()),
        protocol,
        address,
        serial,
        unit,
        poll,
        timeout,
        max_registers,
        max_gap,
        turnaround,
        retries,
        probe_interval,
        tags,
        points,
    })
}

fn serial(cx: &mut Ctx, s: &Spanned<SerialSection>) -> SerialConfig {
    let s = s.get_ref();
    if s.port.get_ref().trim().is_empty() {
        cx.err(
            s.port.span(),
            "serial port must not be empty, e.g. \"/dev/ttyUSB0\"",
        );
    }
    let baud = int_in(cx, &s.baud, 300..=4_000_000, 19200, "baud") as u32;
    let parity = match &s.parity {
        None => Parity::Even,
        Some(p) => match p.get_ref().to_ascii_lowercase().as_str() {
            "none" | "n" => Parity::None,
            "even" | "e" => Parity::Even,
            "odd" | "o" => Parity::Odd,
            other => {
                cx.err(
                    p.span(),
                    format!("parity {other:?}: use \"none\", \"even\" or \"odd\""),
                );
                Parity::Even
            }
        },
    };
    let data_bits = int_in(cx, &s.data_bits, 7..=8, 8, "data_bits") as u8;
    let stop_bits = int_in(cx, &s.stop_bits, 1..=2, 1, "stop_bits") as u8;
    SerialConfig {
        port: s.port.get_ref().clone(),
        baud,
        parity,
        data_bits,
        stop_bits,
    }
}

fn point(
    cx: &mut Ctx,
    p: &Spanned<PointSection>,
    dev_kind: DeviceKind,
    dev_poll: Duration,
) -> Option<PointConfig> {
    let span = p.span();
    let p = p.get_ref();
    let errors_before = cx.errors.len();
    let name = cx.non_empty(&p.name, span.clone(), "name", "[[devices.points]]");
    let table = p
        .table
        .as_ref()
        .map(|t| *t.get_ref())
        .unwrap_or(Table::Holding);
    let Some(address) = &p.address else {
        cx.err(span, format!("point {name:?} needs `address`"));
        return None;
    };
    let kind = match (&p.kind, table.is_bits()) {
        (Some(k), _) => *k.get_ref(),
        (None, true) => PointType::Bool,
        (None, false) => PointType::U16,
    };
    let kind_span = p.kind.as_ref().map(|k| k.span()).unwrap_or(address.span());
    if table.is_bits() && kind != PointType::Bool {
        cx.err(
            kind_span.clone(),
            format!(
                "table {:?} holds bits: its points must be type \"bool\", not {:?}",
                table.as_str(),
                kind.as_str()
            ),
        );
    }
    let bit = match &p.bit {
        Some(b) => {
            if table.is_bits() {
                cx.err(
                    b.span(),
                    format!(
                        "`bit` selects a bit of a register; table {:?} already holds single bits",
                        table.as_str()
                    ),
                );
            } else if kind != PointType::Bool {
                cx.err(
                    b.span(),
                    format!("`bit` needs type = \"bool\", not {:?}", kind.as_str()),
                );
            } else if !(0..=15).contains(b.get_ref()) {
                cx.err(
                    b.span(),
                    format!(
                        "bit {} is out of range: a register has bits 0..=15",
                        b.get_ref()
                    ),
                );
            }
            Some((*b.get_ref()).clamp(0, 15) as u8)
        }
        None => None,
    };
    if kind == PointType::Bool && !table.is_bits() && bit.is_none() {
        cx.err(
            kind_span.clone(),
            format!(
                "a bool point in table {:?} needs `bit` (0..=15)",
                table.as_str()
            ),
        );
    }
    let width = match (&p.length, kind) {
        (Some(l), PointType::String) => {
            if !(1..=MAX_REGISTERS).contains(l.get_ref()) {
                cx.err(
                    l.span(),
                    format!(
                        "string length must be 1..={MAX_REGISTERS} registers, not {}",
                        l.get_ref()
                    ),
                );
                1
            } else {
                *l.get_ref() as u16
            }
        }
        (None, PointType::String) => {
            cx.err(
                kind_span.clone(),
                "a string point needs `length` (in registers, two characters each)",
            );
            1
        }
        (Some(l), _) => {
            cx.err(
                l.span(),
                format!("`length` applies to strings only, not {:?}", kind.as_str()),
            );
            kind.registers()
        }
        (None, _) => kind.registers(),
    };
    let count = int_in(cx, &p.count, 1..=2000, 1, "count") as u16;
    let index_tag = match (&p.index_tag, &p.count) {
        (Some(t), _) if RESERVED_TAGS.contains(&t.get_ref().as_str()) || t.get_ref().is_empty() => {
            cx.err(
                t.span(),
                format!(
                    "index_tag {:?} cannot be used: pick a tag name such as \"axis\"",
                    t.get_ref()
                ),
            );
            None
        }
        (Some(t), Some(_)) => Some(t.get_ref().clone()),
        (Some(t), None) => {
            cx.err(
                t.span(),
                "`index_tag` needs `count` (the number of array elements)",
            );
            None
        }
        (None, Some(_)) if count > 1 => Some("index".to_string()),
        (None, _) => None,
    };
    let start = address.get_ref().0;
    let span_regs = width as u32 * count as u32;
    if start + span_regs > 65536 {
        cx.err(address.span(), format!("point {name:?} runs past the end of the address space ({start} + {span_regs} > 65536)"));
    }
    if !table.is_bits() && width > MAX_REGISTERS as u16 {
        cx.err(
            kind_span.clone(),
            "one value cannot be wider than one read request (125 registers)",
        );
    }
    let order = p.order.as_ref().map(|o| *o.get_ref()).unwrap_or_default();
    if let Some(o) = &p.order {
        if matches!(kind, PointType::Bool | PointType::String) {
            cx.err(
                o.span(),
                format!("`order` applies to numeric types, not {:?}", kind.as_str()),
            );
        }
    }
    let scale = p.scale.as_ref().map(|s| *s.get_ref()).unwrap_or(1.0);
    let offset = p.offset.as_ref().map(|s| *s.get_ref()).unwrap_or(0.0);
    for (v, what) in [(&p.scale, "scale"), (&p.offset, "offset")] {
        if let Some(v) = v {
            if !v.get_ref().is_finite() {
                cx.err(v.span(), format!("{what} must be a finite number"));
            } else if matches!(kind, PointType::Bool | PointType::String) {
                cx.err(
                    v.span(),
                    format!("`{what}` applies to numeric types, not {:?}", kind.as_str()),
                );
            }
        }
    }
    if let Some(s) = &p.scale {
        if *s.get_ref() == 0.0 {
            cx.err(s.span(), "scale 0 would turn every reading into the offset");
        }
    }
    let mut enum_labels = Vec::new();
    if let Some(e) = &p.enum_map {
        if !kind.is_integer() {
            cx.err(
                e.span(),
                format!("`enum` needs an integer type, not {:?}", kind.as_str()),
            );
        } else if p.scale.is_some() || p.offset.is_some() {
            cx.err(e.span(), "`enum` cannot be combined with scale or offset");
        }
        for (code, label) in e.get_ref() {
            match code.trim().parse::<i64>() {
                Ok(c) => enum_labels.push((c, label.clone())),
                Err(_) => cx.err(
                    e.span(),
                    format!("enum key {code:?} is not an integer code"),
                ),
            }
        }
        enum_labels.sort();
    }
    let measurement = match &p.measurement {
        Some(m) if m.get_ref().is_empty() => {
            cx.err(m.span(), "measurement must not be empty");
            String::new()
        }
        Some(m) => m.get_ref().clone(),
        None => dev_kind.as_str().to_string(),
    };
    let mut tags = cx.tags(&p.tags, "point");
    if let Some(t) = &index_tag {
        if tags.iter().any(|(k, _)| k == t) {
            cx.err(
                span.clone(),
                format!("index_tag {t:?} is also one of this point's tags"),
            );
        }
        tags.retain(|(k, _)| k != t);
    }
    if cx.errors.len() != errors_before {
        return None;
    }
    Some(PointConfig {
        name,
        table,
        address: start as u16,
        kind,
        count,
        index_tag,
        order,
        bit,
        width,
        scale,
        offset,
        unit: p.unit.clone().unwrap_or_default(),
        measurement,
        tags,
        poll: p.poll.map(|d| d.0).unwrap_or(dev_poll),
        enum_labels,
        writable: p.writable.unwrap_or(false),
    })
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
                if let Err(errors) = parse("fuzz.toml", input) {
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
