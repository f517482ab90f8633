//! One MQTT connection's settings (`[brokers.NAME]`, and the same keys on an MQTT sink): the
//! URL, the client identity, credentials from a file or the environment, TLS through rustls
//! (the plant CA or the bundled web roots, an optional client certificate), the session, the
//! keep-alive and the largest packet. Validated with locations; turned into rumqttc options
//! at start (that is where files are read). The live connection of the sinks is
//! `connection.rs`.

use crate::config::units::{ConfDuration, ConfSize};
use crate::config::validate::Ctx;
use crate::config::Secret;
use serde::Deserialize;
use serde_spanned::Spanned;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A validated connection.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// The `[brokers.NAME]` name, or the sink's name.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub clean_session: bool,
    pub keep_alive: Duration,
    pub max_packet_size: usize,
    pub mqtt_version: MqttVersion,
}

/// `mqtt_version`: MQTT 5 (default) announces `max_packet_size` to the broker; 3.1.1 for a
/// broker that has no MQTT 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttVersion {
    #[default]
    V5,
    V311,
}

impl BrokerConfig {
    /// `host:port`, for logs and metrics.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The connection keys of a table, wherever they are (`[brokers.NAME]`, an MQTT sink): taken
/// out of the table by the code that reads it (`RawTable::take`), the rest is its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSection {
    pub url: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub clean_session: Option<Spanned<bool>>,
    pub keep_alive: Option<Spanned<ConfDuration>>,
    pub max_packet_size: Option<Spanned<ConfSize>>,
    /// "5" (default) or "3.1.1".
    pub mqtt_version: Option<Spanned<String>>,
}

/// Validates the connection keys of `[brokers.NAME]` or an MQTT sink; `table` spans the table
/// (for a missing `url`), `default_client_id` applies when `client_id` is absent.
pub(crate) fn validate(
    cx: &mut Ctx,
    keys: &ConnectionSection,
    name: &str,
    table: Range<usize>,
    default_client_id: String,
) -> BrokerConfig {
    let (host, port, tls) = match &keys.url {
        None => {
            cx.err(
                table.clone(),
                format!("{name:?} needs `url`, e.g. \"mqtt://broker.plant-2:1883\" or \"mqtts://broker.plant-2:8883\""),
            );
            (String::new(), 1883, false)
        }
        Some(u) => match parse_url(u.get_ref()) {
            Ok(v) => v,
            Err(e) => {
                cx.err(u.span(), e);
                (String::new(), 1883, false)
            }
        },
    };
    let client_id = match &keys.client_id {
        Some(c) if c.get_ref().is_empty() || c.get_ref().len() > 65535 => {
            cx.err(c.span(), "client_id must not be empty");
            default_client_id
        }
        Some(c) => c.get_ref().clone(),
        None => default_client_id,
    };
    let password = crate::config::validate::credentials(
        cx,
        &keys.username,
        &keys.password,
        &keys.password_file,
        &keys.password_env,
        table.clone(),
    );
    let path = |v: &Option<Spanned<String>>| v.as_ref().map(|p| PathBuf::from(p.get_ref()));
    for (key, v) in [
        ("ca_file", &keys.ca_file),
        ("cert_file", &keys.cert_file),
        ("key_file", &keys.key_file),
    ] {
        if let Some(v) = v {
            if !tls {
                cx.err(
                    v.span(),
                    format!("`{key}` needs a TLS connection: url = \"mqtts://HOST:PORT\""),
                );
            }
        }
    }
    match (&keys.cert_file, &keys.key_file) {
        (Some(c), None) => cx.err(c.span(), "a client certificate needs `key_file`"),
        (None, Some(k)) => cx.err(
            k.span(),
            "`key_file` needs `cert_file` (the client certificate)",
        ),
        _ => {}
    }
    let keep_alive = match &keys.keep_alive {
        Some(k) if k.get_ref().0 < Duration::from_secs(1) && !k.get_ref().0.is_zero() => {
            cx.err(k.span(), "keep_alive is at least 1s (or 0s: no keep-alive)");
            Duration::from_secs(30)
        }
        Some(k) if k.get_ref().0 > Duration::from_secs(65535) => {
            cx.err(k.span(), "keep_alive is at most 65535s");
            Duration::from_secs(30)
        }
        Some(k) => k.get_ref().0,
        None => Duration::from_secs(30),
    };
    let max_packet_size = match &keys.max_packet_size {
        Some(m) if m.get_ref().0 < 1024 || m.get_ref().0 > 256 << 20 => {
            cx.err(m.span(), "max_packet_size must be between 1KiB and 256MiB");
            1 << 20
        }
        Some(m) => m.get_ref().0 as usize,
        None => 1 << 20,
    };
    let mqtt_version = match keys
        .mqtt_version
        .as_ref()
        .map(|v| (v, v.get_ref().as_str()))
    {
        None | Some((_, "5")) => MqttVersion::V5,
        Some((_, "3.1.1")) => MqttVersion::V311,
        Some((v, other)) => {
            cx.err(
                v.span(),
                format!("mqtt_version {other:?}: use \"5\" (the default) or \"3.1.1\""),
            );
            MqttVersion::V5
        }
    };
    if let (MqttVersion::V5, Some(k)) = (mqtt_version, &keys.keep_alive) {
        let d = k.get_ref().0;
        if !d.is_zero() && d < Duration::from_secs(5) {
            cx.err(
                k.span(),
                "with MQTT 5 keep_alive is at least 5s (or 0s); mqtt_version = \"3.1.1\" allows 1s",
            );
        }
    }
    BrokerConfig {
        name: name.to_string(),
        host,
        port,
        tls,
        client_id,
        username: keys.username.as_ref().map(|u| u.get_ref().clone()),
        password,
        ca_file: path(&keys.ca_file),
        cert_file: path(&keys.cert_file),
        key_file: path(&keys.key_file),
        clean_session: keys
            .clean_session
            .as_ref()
            .map(|c| *c.get_ref())
            .unwrap_or(false),
        keep_alive,
        max_packet_size,
        mqtt_version,
    }
}

/// `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883); `tcp://`, `ssl://` too.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let bad = || {
        format!("url {url:?}: use mqtt://HOST:PORT (TCP, default port 1883) or mqtts://HOST:PORT (TLS, default 8883)")
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        _ => return Err(bad()),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port(tls),
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (rest.to_string(), default_port(tls)),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host, port, tls))
}

fn default_port(tls: bool) -> u16 {
    if tls {
        8883
    } else {
        1883
    }
}

/// The rumqttc options: reads the password and the TLS files (call on a blocking thread).
pub fn options(cfg: &BrokerConfig) -> Result<rumqttc::MqttOptions, String> {
    let mut o = rumqttc::MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    o.set_clean_session(cfg.clean_session);
    o.set_keep_alive(cfg.keep_alive);
    o.set_max_packet_size(cfg.max_packet_size, cfg.max_packet_size);
    if let Some(user) = &cfg.username {
        let password = match &cfg.password {
            Some(s) => s.resolve()?,
            None => String::new(),
        };
        o.set_credentials(user, password);
    }
    if cfg.tls {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(cfg)?)),
        ));
    }
    Ok(o)
}

pub(crate) fn tls_config(cfg: &BrokerConfig) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("ca_file {}: no certificate in it", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("cert_file {}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cert_file {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("key_file {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://broker:1884"),
            Ok(("broker".into(), 1884, false))
        );
        assert_eq!(
            parse_url("mqtt://broker"),
            Ok(("broker".into(), 1883, false))
        );
        assert_eq!(
            parse_url("mqtts://10.0.0.5"),
            Ok(("10.0.0.5".into(), 8883, true))
        );
        assert_eq!(
            parse_url("mqtts://[::1]:9000/"),
            Ok(("::1".into(), 9000, true))
        );
        assert!(parse_url("http://broker").is_err());
        assert!(parse_url("mqtt://").is_err());
        assert!(parse_url("mqtt://broker:x").is_err());
        assert!(parse_url("mqtt://user@broker").is_err());
        assert!(parse_url("broker:1883").is_err());
    }
}
