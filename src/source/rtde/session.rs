//! One connection to a controller's RTDE server: connect, ask for protocol version 2, read
//! the controller's version, set the output recipe up (leaving out optional fields the
//! controller lacks), start; then read packages as they come. Every wait is bounded by the
//! device's `timeout`; a text message arriving in between is logged, not mistaken for a reply.

use super::protocol::{self as wire, ControllerVersion, FieldType};
use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a session ended (the device is down until the next one is set up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Not connected, or the connection broke.
    Link(String),
    /// The controller said no: a field it lacks, a frequency or recipe it refuses. Retried
    /// (a controller update may bring the field), but logged as an error.
    Refused(String),
    /// The controller stopped sending (paused, or stuck).
    Silent(Duration),
    /// Bytes that are not RTDE.
    Garbage(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Link(e) | Ended::Refused(e) | Ended::Garbage(e) => f.write_str(e),
            Ended::Silent(d) => write!(f, "no data package for {d:?}"),
        }
    }
}

/// A connection and the bytes read but not yet taken.
pub struct Conn {
    stream: TcpStream,
    pub buf: BytesMut,
    timeout: Duration,
    device: String,
}

/// What the controller agreed to.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub version: ControllerVersion,
    pub id: u8,
    /// The fields set up, in order, with their types (optional fields the controller lacks
    /// are left out).
    pub fields: Vec<(String, FieldType)>,
    /// Optional fields the controller lacks.
    pub missing: Vec<String>,
}

impl Conn {
    pub async fn connect(address: &str, timeout: Duration, device: &str) -> Result<Conn, Ended> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Ended::Link(format!("cannot connect to {address}: {e}"))),
            Err(_) => {
                return Err(Ended::Link(format!(
                    "cannot connect to {address}: no answer within {timeout:?}"
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            timeout,
            device: device.to_string(),
        })
    }

    async fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), Ended> {
        let mut out = Vec::with_capacity(payload.len() + wire::HEADER);
        wire::frame(kind, payload, &mut out).map_err(|e| Ended::Refused(e.to_string()))?;
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| Ended::Link(format!("connection lost: {e}")))
    }

    /// Reads more bytes into `buf`; cancel-safe (a `select!` may drop it).
    pub async fn fill(&mut self) -> Result<(), Ended> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(Ended::Link("the controller closed the connection".into())),
            Ok(_) => Ok(()),
            Err(e) => Err(Ended::Link(format!("connection lost: {e}"))),
        }
    }

    /// Waits for the reply of type `kind` (logging text messages meanwhile).
    async fn reply(&mut self, kind: u8, what: &str) -> Result<Vec<u8>, Ended> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            while let Some((k, payload, n)) =
                wire::next_package(&self.buf).map_err(|e| Ended::Garbage(format!("{what}: {e}")))?
            {
                let payload = payload.to_vec();
                self.buf.advance(n);
                if k == kind {
                    return Ok(payload);
                }
                if k == wire::TEXT_MESSAGE {
                    log_text(&self.device, &payload);
                }
                // Anything else (a data package of an earlier recipe) is skipped.
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Ended::Link(format!(
                        "no {what} reply within {:?}",
                        self.timeout
                    )))
                }
            }
        }
    }

    /// Negotiates, sets up `fields` (each with whether it is optional) at `frequency`, starts.
    pub async fn start(
        &mut self,
        frequency: f64,
        fields: &[(&str, bool)],
    ) -> Result<Recipe, Ended> {
        self.send(
            wire::REQUEST_PROTOCOL_VERSION,
            &wire::PROTOCOL_VERSION.to_be_bytes(),
        )
        .await?;
        let p = self
            .reply(wire::REQUEST_PROTOCOL_VERSION, "protocol version")
            .await?;
        if !wire::decode_accepted("protocol version reply", &p).map_err(garbage)? {
            return Err(Ended::Refused(
                "the controller does not speak RTDE protocol version 2 (software 3.2 or newer has it)".into(),
            ));
        }
        self.send(wire::GET_URCONTROL_VERSION, &[]).await?;
        let p = self
            .reply(wire::GET_URCONTROL_VERSION, "controller version")
            .await?;
        let version = wire::decode_controller_version(&p).map_err(garbage)?;
        if frequency > version.max_frequency() {
            return Err(Ended::Refused(format!(
                "frequency {frequency} Hz: controller {version} ({}) streams at most {} Hz",
                if version.major >= 5 {
                    "e-Series"
                } else {
                    "CB3"
                },
                version.max_frequency()
            )));
        }
        let mut asked: Vec<(&str, bool)> = fields.to_vec();
        let mut missing = Vec::new();
        // At most twice: once more without the optional fields the controller lacks.
        for _ in 0..2 {
            let names: Vec<&str> = asked.iter().map(|(n, _)| *n).collect();
            self.send(
                wire::SETUP_OUTPUTS,
                &wire::encode_setup_outputs(frequency, &names),
            )
            .await?;
            let p = self.reply(wire::SETUP_OUTPUTS, "output setup").await?;
            let setup = wire::decode_setup_outputs(&p).map_err(garbage)?;
            if setup.types.len() != names.len() {
                return Err(Ended::Garbage(format!(
                    "the controller answered {} types for {} fields",
                    setup.types.len(),
                    names.len()
                )));
            }
            let not_found: Vec<(&str, bool)> = asked
                .iter()
                .zip(&setup.types)
                .filter(|(_, t)| t.as_str() == "NOT_FOUND")
                .map(|(f, _)| *f)
                .collect();
            let required: Vec<String> = not_found
                .iter()
                .filter(|(_, optional)| !optional)
                .map(|(n, _)| format!("{n:?}"))
                .collect();
            if !required.is_empty() {
                return Err(Ended::Refused(format!(
                    "RTDE field{} {} not found on controller {version}: check the name (`linetap check`) or whether this controller version has it",
                    if required.len() == 1 { "" } else { "s" },
                    required.join(", ")
                )));
            }
            if !not_found.is_empty() {
                missing.extend(not_found.iter().map(|(n, _)| n.to_string()));
                asked.retain(|(n, _)| !not_found.iter().any(|(m, _)| m == n));
                continue;
            }
            if setup.recipe == 0 {
                return Err(Ended::Refused(format!(
                    "controller {version} refused the output recipe ({} fields at {frequency} Hz)",
                    names.len()
                )));
            }
            let mut typed = Vec::with_capacity(names.len());
            for (n, t) in names.iter().zip(&setup.types) {
                match FieldType::parse(t) {
                    Some(ft) => typed.push((n.to_string(), ft)),
                    None => {
                        return Err(Ended::Refused(format!(
                        "the controller answered {t:?} for field {n:?} (not a type linetap reads)"
                    )))
                    }
                }
            }
            self.send(wire::START, &[]).await?;
            let p = self.reply(wire::START, "start").await?;
            if !wire::decode_accepted("start reply", &p).map_err(garbage)? {
                return Err(Ended::Refused(format!(
                    "controller {version} refused to start the output recipe"
                )));
            }
            return Ok(Recipe {
                version,
                id: setup.recipe,
                fields: typed,
                missing,
            });
        }
        Err(Ended::Refused(
            "the controller kept answering NOT_FOUND for fields it did not name before".into(),
        ))
    }
}

fn garbage(e: wire::WireError) -> Ended {
    Ended::Garbage(e.to_string())
}

/// Logs a controller's text message at its level.
pub fn log_text(device: &str, payload: &[u8]) {
    match wire::decode_text(payload) {
        Ok(t) => match t.level {
            0 | 1 => {
                tracing::error!(device, source = %t.source, "controller: {}", t.message)
            }
            2 => tracing::warn!(device, source = %t.source, "controller: {}", t.message),
            _ => tracing::info!(device, source = %t.source, "controller: {}", t.message),
        },
        Err(e) => tracing::debug!(device, error = %e, "unreadable text message"),
    }
}
