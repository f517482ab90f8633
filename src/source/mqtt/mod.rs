//! MQTT sources: devices that publish (`protocol = "mqtt"`). One `Broker` component per
//! `[brokers.NAME]` that devices use: one connection (rumqttc), every device topic subscribed
//! again after each (re)connect, each message routed by topic to its device's decoder
//! (`payload.rs`), the device's transform chain and the buffer. A QoS 1 message is
//! acknowledged to the broker only once what it carried is durable in the buffer (manual
//! acks, in arrival order), so a broker restart or an agent crash loses none. A device whose
//! messages stop for `stale_after` is down.
//!
//! The broker task (`run`) is put together from: `pump.rs` (the client and its event loop in a
//! task of its own), `route.rs` (subscriptions, topic → device and decoder, a message decoded
//! into samples), `acks.rs` (acknowledgements after durability), `health.rs` (health records
//! and the stale tick) and `sparkplug_host/` (Sparkplug B devices, as their host).

mod acks;
pub mod check;
pub mod config;
mod deadletter;
mod health;
pub mod payload;
mod pump;
mod route;
pub mod sparkplug_host;

use super::{describe, Source, SourceContext};
use crate::component::{fingerprint, ComponentId, Kind};
use crate::config::{Config, DeviceConfig, MqttDevice, MqttFormat};
use crate::model::catalog::{health_points, HealthIds, Registry};
use crate::model::now_ns;
use crate::mqtt::client::{Client, Event};
use crate::mqtt::settings::BrokerConfig;
use crate::observe::metrics::{BrokerMetrics, DeviceMetrics};
use crate::shutdown::Shutdown;
use crate::transform::DeviceOutput;
use acks::Ack;
use health::DeviceState;
use payload::{JsonPlan, PointRead};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How the messages of one topic become samples of one device.
enum Decode {
    Json(JsonPlan),
    Value(PointRead),
}

/// One device of a broker: where its messages arrive and how they are read.
pub struct DevicePlan {
    pub device: u32,
    pub name: String,
    qos: u8,
    stale_after: Duration,
    health: HealthIds,
    topics: Vec<(String, Decode)>,
    /// sparkplug-b: the node and device it is, and its points by metric.
    sp: Option<sparkplug_host::SpDevice>,
}

impl DevicePlan {
    /// The topics the device is subscribed to.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.topics.iter().map(|(t, _)| t.clone()).collect();
        if let Some(sp) = &self.sp {
            t.extend(sp.subscriptions());
        }
        t
    }
}

/// Registers an MQTT device's points and health points; returns how its messages are read.
pub fn register(d: &DeviceConfig, registry: &mut Registry) -> Option<DevicePlan> {
    let m = d.settings::<MqttDevice>()?;
    let mut points = describe::points(d);
    let values = points.len();
    points.extend(health_points());
    let ids = registry.set_device(describe::device(d, "", 1), points);
    let h = &ids.points[values..];
    // Each point's elements in turn, as `describe::points` lists them.
    let mut next = ids.points.iter().copied();
    let mut by_topic: Vec<(String, Decode)> = Vec::new();
    let mut sp_points: HashMap<String, PointRead> = HashMap::new();
    let mut from_birth: HashMap<String, sparkplug_host::FromBirth> = HashMap::new();
    for p in &d.points {
        let mp = config::mqtt_point(p);
        let elements: Vec<u32> = next.by_ref().take(p.count as usize).collect();
        if !p.is_read() {
            continue;
        }
        let read = PointRead {
            ids: elements,
            pointer: mp.json.clone().unwrap_or_default(),
            kind: p.kind,
            scaling: p.is_scaled().then_some((p.scale, p.offset)),
        };
        let topic = mp.topic.clone().unwrap_or_else(|| m.topic.clone());
        match m.format {
            MqttFormat::SparkplugB => {
                if let Some(metric) = &mp.metric {
                    if mp.kind_from_birth {
                        from_birth.insert(
                            metric.clone(),
                            sparkplug_host::FromBirth {
                                descriptors: describe::elements(p),
                                scaled: p.is_scaled(),
                            },
                        );
                    }
                    sp_points.insert(metric.clone(), read);
                }
            }
            MqttFormat::Value => by_topic.push((topic, Decode::Value(read))),
            MqttFormat::Json => match by_topic.iter_mut().find(|(t, _)| *t == topic) {
                Some((_, Decode::Json(plan))) => plan.points.push(read),
                _ => by_topic.push((
                    topic,
                    Decode::Json(JsonPlan {
                        points: vec![read],
                        timestamp: m.timestamp.clone().map(|t| (t, m.timestamp_format)),
                    }),
                )),
            },
        }
    }
    Some(DevicePlan {
        device: ids.device,
        name: d.id.clone(),
        qos: m.qos,
        stale_after: m.stale_after,
        health: HealthIds {
            up: h[0],
            latency_ms: h[1],
            errors: h[2],
            last_error: h[3],
        },
        topics: by_topic,
        sp: m
            .sparkplug
            .as_ref()
            .map(|(g, n, dev)| sparkplug_host::SpDevice {
                group: g.clone(),
                node: n.clone(),
                device: dev.clone(),
                measurement: d.kind.as_str().to_string(),
                auto: sp_points.is_empty(),
                by_name: sp_points,
                from_birth,
                max_metrics: m.max_metrics,
            }),
    })
}

/// One broker connection and the devices read through it.
pub struct Broker {
    id: ComponentId,
    devices: Vec<ComponentId>,
    config: BrokerConfig,
    /// The Sparkplug host id of linetap's STATE on this broker (used with Sparkplug devices).
    host_id: String,
    plans: Vec<DevicePlan>,
}

impl Broker {
    pub fn plans(&self) -> &[DevicePlan] {
        &self.plans
    }
}

impl Source for Broker {
    fn id(&self) -> &ComponentId {
        &self.id
    }

    fn devices(&self) -> Vec<ComponentId> {
        self.devices.clone()
    }

    fn start(self: Box<Self>, ctx: SourceContext) -> JoinHandle<()> {
        let beat = ctx
            .metrics
            .liveness
            .register(&format!("broker {}", self.config.name));
        let outputs = self
            .plans
            .iter()
            .map(|p| ctx.output_watched(&p.name, p.device, &beat))
            .collect();
        let metrics = self
            .plans
            .iter()
            .map(|p| ctx.metrics.devices.add(&p.name))
            .collect();
        let broker = ctx.metrics.brokers.add(&self.config.name);
        let dead = deadletter::DeadLetters::start(
            ctx.data_dir.clone(),
            self.plans.iter().map(|p| p.name.clone()).collect(),
        );
        tokio::spawn(run(
            dead,
            self.config,
            self.host_id,
            self.plans,
            outputs,
            metrics,
            broker,
            beat,
            ctx.catalogs.clone(),
            ctx.shutdown,
        ))
    }
}

/// The MQTT source kind's components: one per broker that devices use.
pub fn build(config: &Config, registry: &mut Registry) -> Vec<Box<dyn Source>> {
    let mut out: Vec<Box<dyn Source>> = Vec::new();
    for b in &config.brokers {
        let devices: Vec<&DeviceConfig> = config
            .devices
            .iter()
            .filter(|d| {
                d.settings::<MqttDevice>()
                    .is_some_and(|m| m.broker == b.name)
            })
            .collect();
        if devices.is_empty() {
            continue;
        }
        let plans = devices
            .iter()
            .filter_map(|d| register(d, registry))
            .collect();
        let host_id = config
            .sparkplug_host_ids
            .get(&b.name)
            .cloned()
            .unwrap_or_else(|| format!("linetap-{}", config.line.id));
        out.push(Box::new(Broker {
            id: ComponentId {
                kind: Kind::Source,
                name: format!("mqtt {}", b.name),
                fingerprint: fingerprint(&(b, &devices, &host_id)),
            },
            devices: devices
                .iter()
                .map(|d| ComponentId {
                    kind: Kind::Device,
                    name: d.id.clone(),
                    fingerprint: fingerprint(d),
                })
                .collect(),
            config: b.clone(),
            host_id,
            plans,
        }));
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn run(
    dead: deadletter::DeadLetters,
    config: BrokerConfig,
    host_id: String,
    mut plans: Vec<DevicePlan>,
    mut outputs: Vec<DeviceOutput>,
    metrics: Vec<Arc<DeviceMetrics>>,
    broker: Arc<BrokerMetrics>,
    beat: crate::observe::liveness::Beat,
    catalogs: Arc<super::catalogs::Catalogs>,
    mut shutdown: Shutdown,
) {
    let Some(input) = outputs.first().map(|o| o.input()) else {
        return;
    };
    // As a Sparkplug host: the STATE death is the connection's will, with the timestamp of
    // each CONNECT (renewed before every reconnect).
    let mut host = sparkplug_host::Host::new(&host_id, &plans);
    let state_will = host.as_ref().map(|h| h.state.clone());
    let sparkplug = plans.iter().any(|p| p.sp.is_some());
    let Some((client, events)) =
        pump::open(&config, state_will.as_ref(), sparkplug, &mut shutdown).await
    else {
        return;
    };
    // The event loop runs in its own task (`pump.rs`); its events come through a bounded
    // channel.
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<Result<Event, String>>(256);
    // The connection's generation (one more at every CONNACK), and a request to renew it: a
    // QoS 1 message the buffer refused is delivered again by the broker only on a new
    // connection (persistent session).
    let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let renew = Arc::new(tokio::sync::Notify::new());
    // Set by the acknowledgements: renewals back off while the buffer keeps refusing.
    let acked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump = pump::spawn(
        events,
        state_will,
        ev_tx,
        generation.clone(),
        renew.clone(),
        acked.clone(),
    );

    let routes = route::routes(&plans);
    let subscriptions = route::subscriptions(host.as_ref(), &plans);

    // Acknowledgements: in arrival order, each once what it carried is durable (`acks.rs`).
    let (ack_tx, ack_task) = acks::spawn(
        input,
        client.clone(),
        generation.clone(),
        broker.clone(),
        renew.clone(),
        acked,
        config.name.clone(),
    );

    let mut state: Vec<DeviceState> = plans.iter().map(|_| DeviceState::default()).collect();
    let mut tick = health::interval(&plans);
    let mut logged_error: Option<String> = None;
    // Subscriptions still to send (the request queue was full at the CONNACK), and the STATE
    // birth that follows them.
    let mut resubscribe = false;
    let mut state_due = false;
    let started = Instant::now();
    loop {
        beat.idle();
        let event = tokio::select! {
            _ = shutdown.recv() => break,
            _ = tick.tick() => {
                if resubscribe {
                    resubscribe = client.try_subscribe_many(&subscriptions).is_err();
                }
                if state_due && !resubscribe {
                    state_due = host.as_ref().is_some_and(|h| !publish(&client, h.birth()));
                }
                health::tick(&plans, &mut state, host.as_ref(), &metrics, &mut outputs, started).await;
                continue;
            }
            e = ev_rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
        };
        beat.busy();
        match event {
            Ok(Event::ConnAck) => {
                broker.connected.store(true, Relaxed);
                broker.connects.fetch_add(1, Relaxed);
                if logged_error.take().is_some() {
                    tracing::info!(broker = %config.name, address = %config.address(), "MQTT connection back");
                } else {
                    tracing::info!(broker = %config.name, address = %config.address(), "MQTT connected");
                }
                // Again after every connect: a broker without our session has forgotten them.
                // Never waiting on the client's request queue here: the event loop that
                // drains it may itself be waiting for this handler.
                resubscribe = !subscriptions.is_empty();
                resubscribe = resubscribe && client.try_subscribe_many(&subscriptions).is_err();
                // The STATE birth, after the subscriptions (Sparkplug 3.0).
                state_due = host.is_some();
                if !resubscribe {
                    state_due = host.as_ref().is_some_and(|h| !publish(&client, h.birth()));
                }
            }
            Ok(Event::SubAck { refused }) => {
                for i in refused {
                    let topic = subscriptions.get(i).map(|s| s.0.as_str()).unwrap_or("?");
                    tracing::error!(broker = %config.name, topic, "the broker refused the subscription (check its ACL)");
                }
            }
            // Larger than `max_packet_size` (MQTT 3.1.1: the broker could not be told): a
            // message that can never be used. Acknowledged, counted, kept.
            Ok(Event::Publish(p)) if p.size > config.max_packet_size => {
                let from = acks::input_ticket(&outputs);
                let why = format!(
                    "a message of {} bytes on {}: larger than max_packet_size ({} bytes); not read",
                    p.size, p.topic, config.max_packet_size
                );
                for d in route::targets_of(&p.topic, &routes, &plans) {
                    metrics[d].mqtt_oversized.fetch_add(1, Relaxed);
                    dead.keep(d, &p.topic, &p.payload, "oversized");
                    health::note(&plans[d], &mut state[d], why.clone());
                }
                if p.qos >= 1 {
                    let _ = ack_tx.send(Ack::new(from, true, &outputs, &generation, p));
                }
            }
            Ok(Event::Publish(p)) if p.topic.starts_with("spBv1.0/") => {
                let from = acks::input_ticket(&outputs);
                let mut accepted = true;
                if let Some(h) = host.as_mut() {
                    let (ok, sends) = h
                        .message(
                            &p.topic,
                            &p.payload,
                            p.retain,
                            now_ns(),
                            &mut plans,
                            &mut state,
                            &metrics,
                            &mut outputs,
                            &catalogs,
                            &dead,
                        )
                        .await;
                    accepted = ok;
                    for s in sends {
                        publish(&client, s);
                    }
                }
                if p.qos >= 1 {
                    let _ = ack_tx.send(Ack::new(from, accepted, &outputs, &generation, p));
                }
            }
            Ok(Event::Publish(p)) => {
                let arrival = now_ns();
                let from = acks::input_ticket(&outputs);
                let accepted = route::deliver(
                    &p,
                    arrival,
                    &routes,
                    &plans,
                    &mut state,
                    &metrics,
                    &mut outputs,
                    &dead,
                )
                .await;
                if p.qos >= 1 {
                    // Accepted or not, in order: a refused message renews the connection.
                    let _ = ack_tx.send(Ack::new(from, accepted, &outputs, &generation, p));
                }
            }
            Ok(_) => {}
            Err(text) => {
                broker.connected.store(false, Relaxed);
                broker.connection_errors.fetch_add(1, Relaxed);
                if logged_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(broker = %config.name, address = %config.address(), error = %text, "MQTT connection failed; reconnecting with backoff (logged again when it changes)");
                    logged_error = Some(text);
                }
            }
        }
    }
    broker.connected.store(false, Relaxed);
    ack_task.abort();
    // As a Sparkplug host: the STATE death first (a clean disconnect suppresses the will).
    if let Some(h) = &host {
        publish(&client, h.death());
    }
    // A clean disconnect (a persistent session, with its subscriptions, stays at the broker).
    let _ = client.try_disconnect();
    // Until the event loop has sent what was queued and the DISCONNECT (it ends then).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, ev_rx.recv()).await {}
    drop(ev_rx);
    let mut pump = pump;
    if tokio::time::timeout(Duration::from_millis(500), &mut pump)
        .await
        .is_err()
    {
        pump.abort();
    }
}

/// Queues a message the Sparkplug host publishes; false when the request queue is full.
fn publish(client: &Client, m: sparkplug_host::Publish) -> bool {
    client
        .try_publish(m.topic, m.qos1 as u8, m.retain, m.payload)
        .is_ok()
}
