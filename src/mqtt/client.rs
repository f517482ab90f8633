//! One MQTT client over either protocol version, 5 (the default) or 3.1.1 (`mqtt_version`),
//! both through rumqttc: the sources and sinks see one `Client`, one `EventLoop` and the few
//! events they act on, whatever the version (decision 0017).
//!
//! The difference that matters: MQTT 5 announces `max_packet_size` to the broker (Maximum
//! Packet Size), which then never sends a larger message (it drops it, as the spec says). 3.1.1
//! has no way to say so: a broker sends whatever it has, and a client that refuses a packet
//! must drop the connection, after which a persistent session delivers the same message again,
//! for ever. So on 3.1.1 the client reads packets up to the protocol's limit and the source
//! refuses an oversized message itself (acknowledged, counted, dead-lettered).

use super::settings::{BrokerConfig, MqttVersion};
use bytes::Bytes;
use std::time::Duration;

/// The largest packet MQTT can carry (its remaining length is at most 268,435,455 bytes).
const PROTOCOL_MAX: usize = 268_435_455;

/// What a connection is opened with besides its settings.
#[derive(Default)]
pub struct Open {
    /// The last will (a Sparkplug NDEATH or STATE death): (topic, payload, qos, retain).
    pub will: Option<(String, Vec<u8>, u8, bool)>,
    /// Acknowledge received QoS 1 messages only on `Client::ack`.
    pub manual_acks: bool,
    /// Overrides the configured session (Sparkplug needs a clean one).
    pub clean_session: Option<bool>,
}

/// A client handle (cheap to clone).
#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The connection's event loop: poll it from one task, never cancelled mid-packet except to
/// drop the connection (`clean`).
pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    /// 0 or 1 (2 is treated as 1).
    pub qos: u8,
    pub retain: bool,
    /// The whole packet's size (for the packet limit).
    pub size: usize,
    raw: Raw,
}

#[derive(Debug, Clone)]
enum Raw {
    V4(rumqttc::Publish),
    V5(rumqttc::v5::mqttbytes::v5::Publish),
}

/// What a source or sink acts on; everything else is `Other`. A message is the common event and
/// the others are small: not boxed (an allocation per message would cost more than the move).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Event {
    ConnAck,
    /// A SUBACK: the indexes (in the SUBSCRIBE) of the filters the broker refused.
    SubAck {
        refused: Vec<usize>,
    },
    Publish(Publish),
    /// The broker acknowledged our QoS 1 publish (its packet id).
    PubAck(u16),
    /// The broker sent a DISCONNECT (MQTT 5).
    BrokerDisconnected,
    /// A publish of ours went out (packet id; 0 for QoS 0).
    Sent(u16),
    /// Our DISCONNECT went out.
    Disconnected,
    Other,
}

/// Opens a client for `cfg` (reads the password and TLS files: call on a blocking thread).
pub fn new(cfg: &BrokerConfig, open: Open, cap: usize) -> Result<(Client, EventLoop), String> {
    let clean = open.clean_session.unwrap_or(cfg.clean_session);
    let password = match (&cfg.username, &cfg.password) {
        (Some(_), Some(s)) => Some(s.resolve()?),
        (Some(_), None) => Some(String::new()),
        _ => None,
    };
    let transport = match cfg.tls {
        true => Some(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(super::settings::tls_config(
                cfg,
            )?)),
        )),
        false => None,
    };
    match cfg.mqtt_version {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
            o.set_clean_session(clean);
            o.set_keep_alive(cfg.keep_alive);
            // Incoming: whatever MQTT allows (the source refuses an oversized message itself;
            // refusing the packet here would drop the connection and bring it back, for ever).
            // Outgoing: the configured limit.
            o.set_max_packet_size(PROTOCOL_MAX, cfg.max_packet_size);
            o.set_manual_acks(open.manual_acks);
            if let (Some(user), Some(p)) = (&cfg.username, password) {
                o.set_credentials(user, p);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            if let Some((topic, payload, qos, retain)) = open.will {
                o.set_last_will(rumqttc::LastWill::new(topic, payload, qos4(qos), retain));
            }
            let (c, e) = rumqttc::AsyncClient::new(o, cap);
            Ok((Client::V4(c), EventLoop::V4(Box::new(e))))
        }
        MqttVersion::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
            o.set_clean_start(clean);
            if !clean {
                // MQTT 5 ends a session at the disconnect unless it is given an expiry: keep
                // it as 3.1.1 keeps a persistent session.
                o.set_session_expiry_interval(Some(u32::MAX));
            }
            // rumqttc's MQTT 5 client takes 0 or at least 5 s (validation says so; never panic).
            let keep_alive = match cfg.keep_alive {
                k if k.is_zero() => k,
                k => k.max(Duration::from_secs(5)),
            };
            o.set_keep_alive(keep_alive);
            // Announced to the broker (Maximum Packet Size): it sends nothing larger.
            o.set_max_packet_size(Some(cfg.max_packet_size.min(PROTOCOL_MAX) as u32));
            o.set_manual_acks(open.manual_acks);
            if let (Some(user), Some(p)) = (&cfg.username, password) {
                o.set_credentials(user, p);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            if let Some((topic, payload, qos, retain)) = open.will {
                o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    topic,
                    payload,
                    qos5(qos),
                    retain,
                    None,
                ));
            }
            let (c, e) = rumqttc::v5::AsyncClient::new(o, cap);
            Ok((Client::V5(c), EventLoop::V5(Box::new(e))))
        }
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        _ => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    }
}

impl Client {
    pub async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c.publish(topic, qos4(qos), retain, payload).await,
            Client::V5(c) => {
                return c
                    .publish(topic, qos5(qos), retain, payload)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
        .map_err(|e| e.to_string())
    }

    /// Publishes without waiting for room in the request queue (an error when it is full).
    pub fn try_publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos4(qos), retain, payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_publish(topic, qos5(qos), retain, payload)
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn subscribe(&self, topic: String, qos: u8) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe(topic, qos4(qos))
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe(topic, qos5(qos))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Subscribes without waiting for room in the request queue (an error when it is full).
    pub fn try_subscribe_many(&self, filters: &[(String, u8)]) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|(t, q)| rumqttc::SubscribeFilter::new(t.clone(), qos4(*q))),
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|(t, q)| rumqttc::v5::mqttbytes::v5::Filter::new(t.clone(), qos5(*q))),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Acknowledges a received QoS 1 message (manual acknowledgements).
    pub async fn ack(&self, p: &Publish) -> Result<(), String> {
        match (self, &p.raw) {
            (Client::V4(c), Raw::V4(r)) => c.ack(r).await.map_err(|e| e.to_string()),
            (Client::V5(c), Raw::V5(r)) => c.ack(r).await.map_err(|e| e.to_string()),
            _ => Err("a message of another protocol version".into()),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

impl EventLoop {
    /// The next event; an error means the connection dropped (the next poll reconnects).
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            EventLoop::V4(e) => e.poll().await.map(event4).map_err(|e| e.to_string()),
            EventLoop::V5(e) => e.poll().await.map(event5).map_err(|e| e.to_string()),
        }
    }

    /// The will of the next CONNECT (e.g. a STATE death with a new timestamp).
    pub fn set_will(&mut self, topic: String, payload: Vec<u8>, qos: u8, retain: bool) {
        match self {
            EventLoop::V4(e) => {
                e.mqtt_options.set_last_will(rumqttc::LastWill::new(
                    topic,
                    payload,
                    qos4(qos),
                    retain,
                ));
            }
            EventLoop::V5(e) => {
                e.options
                    .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                        topic,
                        payload,
                        qos5(qos),
                        retain,
                        None,
                    ));
            }
        }
    }

    /// Drops the connection; unacknowledged messages are delivered again on the next one.
    pub fn clean(&mut self) {
        match self {
            EventLoop::V4(e) => e.clean(),
            EventLoop::V5(e) => e.clean(),
        }
    }
}

fn outgoing(o: rumqttc::Outgoing) -> Event {
    match o {
        rumqttc::Outgoing::Publish(pkid) => Event::Sent(pkid),
        rumqttc::Outgoing::Disconnect => Event::Disconnected,
        _ => Event::Other,
    }
}

fn event4(e: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Packet as P};
    match e {
        E::Incoming(P::ConnAck(_)) => Event::ConnAck,
        E::Incoming(P::SubAck(a)) => Event::SubAck {
            refused: a
                .return_codes
                .iter()
                .enumerate()
                .filter(|(_, c)| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                .map(|(i, _)| i)
                .collect(),
        },
        E::Incoming(P::Publish(p)) => Event::Publish(Publish {
            size: p.size(),
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            qos: p.qos as u8,
            retain: p.retain,
            raw: Raw::V4(p),
        }),
        E::Incoming(P::PubAck(a)) => Event::PubAck(a.pkid),
        E::Incoming(P::Disconnect) => Event::BrokerDisconnected,
        E::Outgoing(o) => outgoing(o),
        E::Incoming(_) => Event::Other,
    }
}

fn event5(e: rumqttc::v5::Event) -> Event {
    use rumqttc::v5::mqttbytes::v5::{Packet as P, SubscribeReasonCode as R};
    use rumqttc::v5::Event as E;
    match e {
        E::Incoming(P::ConnAck(_)) => Event::ConnAck,
        E::Incoming(P::SubAck(a)) => Event::SubAck {
            refused: a
                .return_codes
                .iter()
                .enumerate()
                .filter(|(_, c)| !matches!(c, R::Success(_)))
                .map(|(i, _)| i)
                .collect(),
        },
        E::Incoming(P::Publish(p)) => Event::Publish(Publish {
            size: p.size(),
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.clone(),
            qos: p.qos as u8,
            retain: p.retain,
            raw: Raw::V5(p),
        }),
        E::Incoming(P::PubAck(a)) => Event::PubAck(a.pkid),
        E::Incoming(P::Disconnect(_)) => Event::BrokerDisconnected,
        E::Outgoing(o) => outgoing(o),
        E::Incoming(_) => Event::Other,
    }
}

/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
