//! The keys every `[sinks.NAME]` table shares (type, batch_size, flush_interval), which keys
//! belong to which sink type, and the hand-off to the kind's own validation.

use super::Ctx;
use crate::config::schema::*;
use crate::config::*;
use serde_spanned::Spanned;
use std::ops::Range;

/// Keys that only some sink types accept: (key present?, its span, key name, allowed types).
pub(super) fn sink(
    cx: &mut Ctx,
    name: &Spanned<String>,
    s: &Spanned<SinkSection>,
    line: &str,
    site: &str,
) -> Option<SinkConfig> {
    let span = s.span();
    let s = s.get_ref();
    let kind = *s.kind.get_ref();
    // Which keys belong to which sink type; a key of another type is an error at its location.
    let present: [(&str, Option<Range<usize>>); 35] = [
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
        ("catalog_topic", s.catalog_topic.as_ref().map(|v| v.span())),
        ("sparkplug", s.sparkplug.as_ref().map(|v| v.span())),
        ("primary_host", s.primary_host.as_ref().map(|v| v.span())),
        ("mqtt_version", s.mqtt_version.as_ref().map(|v| v.span())),
        ("client_id", s.client_id.as_ref().map(|v| v.span())),
        ("ca_file", s.ca_file.as_ref().map(|v| v.span())),
        ("cert_file", s.cert_file.as_ref().map(|v| v.span())),
        ("key_file", s.key_file.as_ref().map(|v| v.span())),
        ("clean_session", s.clean_session.as_ref().map(|v| v.span())),
        ("keep_alive", s.keep_alive.as_ref().map(|v| v.span())),
        (
            "max_packet_size",
            s.max_packet_size.as_ref().map(|v| v.span()),
        ),
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
            "catalog_topic",
            "sparkplug",
            "primary_host",
            "mqtt_version",
            "qos",
            "client_id",
            "username",
            "password",
            "password_file",
            "password_env",
            "ca_file",
            "cert_file",
            "key_file",
            "clean_session",
            "keep_alive",
            "max_packet_size",
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
        SinkType::Influxdb => SinkKind::Influx(crate::sink::influx::config::validate(
            cx,
            name,
            span.clone(),
            s,
        )),
        SinkType::File => SinkKind::File(crate::sink::file::config::validate(cx, s)),
        SinkType::Mqtt => SinkKind::Mqtt(crate::sink::mqtt::config::validate(
            cx,
            name,
            span.clone(),
            s,
            line,
            site,
        )),
    };
    Some(SinkConfig {
        name: name.get_ref().clone(),
        kind,
        batch_size,
        flush_interval,
    })
}
