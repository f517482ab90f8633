//! MQTT sources: devices that publish (`protocol = "mqtt"`). One `Broker` component per
//! `[brokers.NAME]` that devices use: one connection (rumqttc), every device topic subscribed
//! again after each (re)connect, each message routed by topic to its device's decoder
//! (`payload.rs`), the device's transform chain and the buffer. A QoS 1 message is
//! acknowledged to the broker only once what it carried is durable in the buffer (manual
//! acks, in arrival order), so a broker restart or an agent crash loses none. A device whose
//! messages stop for `stale_after` is down.

pub mod config;
mod deadletter;
pub mod payload;
pub mod sparkplug;

use super::{describe, Source, SourceContext};
use crate::backoff::Backoff;
use crate::buffer::Durability;
use crate::component::{fingerprint, ComponentId, Kind};
use crate::config::{Config, DeviceConfig, MqttDevice, MqttFormat};
use crate::model::catalog::{health_points, HealthIds, Registry};
use crate::model::{now_ns, Quality, Sample, SampleBatch, Value};
use crate::mqtt::client::{self, Client, Event};
use crate::mqtt::settings::BrokerConfig;
use crate::observe::metrics::{BrokerMetrics, DeviceMetrics};
use crate::shutdown::Shutdown;
use crate::transform::DeviceOutput;
use payload::{decode_json, decode_value, JsonPlan, PointRead, Rejected};
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
    sp: Option<sparkplug::SpDevice>,
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
    let mut from_birth: HashMap<String, sparkplug::FromBirth> = HashMap::new();
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
            scale: p.scale,
            offset: p.offset,
        };
        let topic = mp.topic.clone().unwrap_or_else(|| m.topic.clone());
        match m.format {
            MqttFormat::SparkplugB => {
                if let Some(metric) = &mp.metric {
                    if mp.kind_from_birth {
                        from_birth.insert(
                            metric.clone(),
                            sparkplug::FromBirth {
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
        sp: m.sparkplug.as_ref().map(|(g, n, dev)| sparkplug::SpDevice {
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
                kind: Kind::Bus,
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

/// Per device, what the health record needs.
struct DeviceState {
    seq: u64,
    last_message: Option<Instant>,
    up: Option<bool>,
    last_health: Option<Instant>,
    errors: u64,
    last_error: String,
    /// When a malformed message was last logged (at most once a minute per device).
    logged_at: Option<Instant>,
}

/// How often a malformed message of one device is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

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
    let mut host = sparkplug::Host::new(&host_id, &plans);
    let state_will = host.as_ref().map(|h| h.state.clone());
    let will = |w: &sparkplug::HostState| (w.topic.clone(), w.will(), 1u8, true);
    // The client reads files (password, certificates): on the blocking pool, retried while a
    // person fixes them.
    let (client, mut events) = loop {
        let cfg = config.clone();
        let open = client::Open {
            will: state_will.as_ref().map(will),
            manual_acks: true,
            // A Sparkplug host connects with a clean session (Sparkplug 3.0): rebirths, not
            // the session, recover what it missed.
            clean_session: plans.iter().any(|p| p.sp.is_some()).then_some(true),
        };
        match tokio::task::spawn_blocking(move || client::new(&cfg, open, 1024)).await {
            Ok(Ok(c)) => break c,
            Ok(Err(e)) => {
                tracing::error!(broker = %config.name, error = %e, "cannot set up the MQTT connection; retrying");
            }
            Err(e) => tracing::error!(broker = %config.name, error = %e, "MQTT setup failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.recv() => return,
        }
    };
    // The event loop runs in its own task and is never cancelled mid-packet; its events come
    // through a bounded channel (back-pressure: while the handler is busy, nothing more is
    // read from the socket).
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<Result<Event, String>>(256);
    // The connection's generation (one more at every CONNACK), and a request to renew it: a
    // QoS 1 message the buffer refused is delivered again by the broker only on a new
    // connection (persistent session).
    let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let renew = Arc::new(tokio::sync::Notify::new());
    let pump_generation = generation.clone();
    let pump_renew = renew.clone();
    // Set by the acknowledgements: renewals back off while the buffer keeps refusing.
    let acked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump_acked = acked.clone();
    let pump = tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut renew_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            // Cancelling a poll is safe here: the connection it was reading is dropped.
            let polled = tokio::select! {
                p = events.poll() => p,
                _ = pump_renew.notified() => {
                    events.clean();
                    if let Some(w) = &state_will {
                        let (t, p, q, r) = will(w);
                        events.set_will(t, p, q, r);
                    }
                    let e = "renewing the connection: the buffer refused a QoS 1 message".to_string();
                    if ev_tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    if pump_acked.swap(false, Relaxed) {
                        renew_backoff.reset();
                    }
                    tokio::time::sleep(renew_backoff.next_delay()).await;
                    continue;
                }
            };
            match polled {
                Ok(e) => {
                    if matches!(e, Event::ConnAck) {
                        backoff.reset();
                        pump_generation.fetch_add(1, Relaxed);
                    }
                    let done = matches!(e, Event::Disconnected);
                    if ev_tx.send(Ok(e)).await.is_err() || done {
                        return;
                    }
                }
                Err(e) => {
                    if ev_tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    if let Some(w) = &state_will {
                        let (t, p, q, r) = will(w);
                        events.set_will(t, p, q, r);
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    });

    // Topic → (device, decoder) pairs.
    let mut routes: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (d, plan) in plans.iter().enumerate() {
        for (k, (topic, _)) in plan.topics.iter().enumerate() {
            routes.entry(topic.clone()).or_default().push((d, k));
        }
    }
    let subscriptions: Vec<(String, u8)> = {
        let mut v: Vec<(String, u8)> = Vec::new();
        // The host's own STATE (a late will of an older connection is answered).
        if let Some(h) = &host {
            v.extend(h.subscriptions().into_iter().map(|t| (t, 1)));
        }
        for plan in &plans {
            for t in &plan.topics() {
                match v.iter_mut().find(|(x, _)| x == t) {
                    Some((_, q)) => *q = (*q).max(plan.qos),
                    None => v.push((t.clone(), plan.qos)),
                }
            }
        }
        v
    };

    // Acknowledgements: in arrival order, each once what it carried is durable. A message the
    // buffer refused stays unacknowledged, and so does every later one of the same connection
    // (acknowledgements go in order); the connection is renewed so the broker delivers them
    // again. An acknowledgement that cannot be sent is left to the broker's redelivery too.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<Ack>();
    let ack_client = client.clone();
    let ack_generation = generation.clone();
    let ack_broker = broker.clone();
    let ack_renew = renew.clone();
    let ack_name = config.name.clone();
    let ack_task = tokio::spawn(async move {
        let mut refused_in: Option<u64> = None;
        let mut logged: Option<Instant> = None;
        while let Some(a) = ack_rx.recv().await {
            let durability = match a.accepted {
                true => input.durability(a.from, a.to).await,
                false => Durability::Refused,
            };
            if durability == Durability::Stopped {
                return;
            }
            if refused_in == Some(a.generation) {
                ack_broker.unacked_refused.fetch_add(1, Relaxed);
                continue;
            }
            if ack_generation.load(Relaxed) != a.generation {
                continue;
            }
            if durability == Durability::Refused {
                ack_broker.unacked_refused.fetch_add(1, Relaxed);
                if logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::warn!(broker = %ack_name, "the buffer refused a QoS 1 message: left unacknowledged, and the connection renewed so the broker delivers it again (logged at most once a minute; counted in linetap_mqtt_unacked_refused_total)");
                    logged = Some(Instant::now());
                }
                refused_in = Some(a.generation);
                ack_renew.notify_one();
                continue;
            }
            match ack_client.ack(&a.publish).await {
                Ok(()) => acked.store(true, Relaxed),
                Err(e) => {
                    tracing::debug!(broker = %ack_name, error = %e, "cannot acknowledge; the broker delivers the message again")
                }
            }
        }
    });

    let mut state: Vec<DeviceState> = plans
        .iter()
        .map(|_| DeviceState {
            seq: 0,
            last_message: None,
            up: None,
            last_health: None,
            errors: 0,
            last_error: String::new(),
            logged_at: None,
        })
        .collect();
    let check_every = plans
        .iter()
        .map(|p| p.stale_after / 4)
        .min()
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut tick = tokio::time::interval(check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                let now = Instant::now();
                for (d, plan) in plans.iter().enumerate() {
                    let st = &mut state[d];
                    // Sparkplug devices report by exception: alive from birth to death.
                    let fresh = match &plan.sp {
                        Some(_) => host.as_ref().is_some_and(|h| h.online(d)),
                        None => st.last_message.is_some_and(|t| now.duration_since(t) < plan.stale_after),
                    };
                    let due = st.last_health.is_none_or(|t| now.duration_since(t) >= plan.stale_after);
                    // The first record once a device had its chance to publish.
                    let first_due = st.up.is_none() && now.duration_since(started) >= plan.stale_after;
                    if st.up.is_some_and(|u| u != fresh) || (st.up.is_some() && due) || first_due {
                        if !fresh && st.up != Some(false) {
                            st.last_error = match &plan.sp {
                                Some(_) => "no birth from the edge node yet".to_string(),
                                None => format!("no message for {:?} on {}", plan.stale_after, plan.topics().join(", ")),
                            };
                            tracing::warn!(device = %plan.name, "{}", st.last_error);
                        }
                        health(plan, st, &metrics[d], fresh, &mut outputs[d]).await;
                    }
                }
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
                let from = input_ticket(&outputs);
                let why = format!(
                    "a message of {} bytes on {}: larger than max_packet_size ({} bytes); not read",
                    p.size, p.topic, config.max_packet_size
                );
                for d in targets_of(&p.topic, &routes, &plans) {
                    metrics[d].mqtt_oversized.fetch_add(1, Relaxed);
                    dead.keep(d, &p.topic, &p.payload, "oversized");
                    note(&plans[d], &mut state[d], why.clone());
                }
                if p.qos >= 1 {
                    let _ = ack_tx.send(Ack::new(from, true, &outputs, &generation, p));
                }
            }
            Ok(Event::Publish(p)) if p.topic.starts_with("spBv1.0/") => {
                let from = input_ticket(&outputs);
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
                let from = input_ticket(&outputs);
                let mut accepted = true;
                if let Some(targets) = routes.get(&p.topic) {
                    for &(d, k) in targets {
                        let plan = &plans[d];
                        let st = &mut state[d];
                        let dm = &metrics[d];
                        let mut batch = SampleBatch {
                            device: plan.device,
                            ..Default::default()
                        };
                        let mut rejected = Rejected::default();
                        let result = match &plan.topics[k].1 {
                            Decode::Json(j) => decode_json(
                                &p.payload,
                                j,
                                arrival,
                                &mut batch.samples,
                                &mut rejected,
                            ),
                            Decode::Value(r) => decode_value(&p.payload, r).map(|value| {
                                for &id in &r.ids {
                                    batch.samples.push(Sample {
                                        point: id,
                                        timestamp_ns: arrival,
                                        quality: Quality::Good as i32,
                                        value: Some(value.clone()),
                                    });
                                }
                            }),
                        };
                        let problem = match result {
                            Err(e) => {
                                dm.mqtt_malformed.fetch_add(1, Relaxed);
                                dead.keep(d, &p.topic, &p.payload, &format!("malformed: {e}"));
                                Some(format!("malformed message on {}: {e}", p.topic))
                            }
                            Ok(()) if rejected.total() > 0 => {
                                dm.mqtt_rejected_values.fetch_add(1, Relaxed);
                                let why = format!(
                                    "{} of the wrong type, {} out of range, {} bad timestamps",
                                    rejected.wrong_type,
                                    rejected.out_of_range,
                                    rejected.bad_timestamp
                                );
                                dead.keep(
                                    d,
                                    &p.topic,
                                    &p.payload,
                                    &format!("rejected values: {why}"),
                                );
                                Some(format!("values not written from {}: {why}", p.topic))
                            }
                            Ok(()) => {
                                dm.mqtt_ok.fetch_add(1, Relaxed);
                                None
                            }
                        };
                        if let Some(problem) = problem {
                            st.errors += 1;
                            if st.logged_at.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                                tracing::warn!(device = %plan.name, "{problem} (logged at most once a minute per device; counted in linetap_mqtt_messages_total)");
                                st.logged_at = Some(Instant::now());
                            }
                            st.last_error = problem;
                        }
                        st.last_message = Some(Instant::now());
                        dm.mqtt_ready.store(true, Relaxed);
                        if st.up != Some(true) {
                            health(plan, st, dm, true, &mut outputs[d]).await;
                        }
                        dm.samples.fetch_add(batch.samples.len() as u64, Relaxed);
                        st.seq += 1;
                        batch.seq = st.seq;
                        if !outputs[d].publish(batch).await {
                            dm.mqtt_dropped.fetch_add(1, Relaxed);
                            accepted = false;
                        }
                    }
                }
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

/// A QoS 1 message waiting for its acknowledgement: the buffer tickets of what it carried, and
/// the connection it came on.
struct Ack {
    /// False when the buffer refused it at once (its queue was full).
    accepted: bool,
    from: u64,
    to: u64,
    generation: u64,
    publish: client::Publish,
}

impl Ack {
    fn new(
        from: u64,
        accepted: bool,
        outputs: &[DeviceOutput],
        generation: &std::sync::atomic::AtomicU64,
        publish: client::Publish,
    ) -> Ack {
        Ack {
            accepted,
            from,
            to: input_ticket(outputs),
            generation: generation.load(Relaxed),
            publish,
        }
    }
}

/// The buffer's ticket now (every output shares one buffer input).
fn input_ticket(outputs: &[DeviceOutput]) -> u64 {
    outputs.first().map(|o| o.ticket()).unwrap_or(0)
}

/// Keeps a problem for the health record, logged at most once a minute per device.
fn note(plan: &DevicePlan, st: &mut DeviceState, problem: String) {
    st.errors += 1;
    if st.logged_at.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
        tracing::warn!(device = %plan.name, "{problem} (logged at most once a minute per device)");
        st.logged_at = Some(Instant::now());
    }
    st.last_error = problem;
}

/// Queues a message the Sparkplug host publishes; false when the request queue is full.
fn publish(client: &Client, m: sparkplug::Publish) -> bool {
    client
        .try_publish(m.topic, m.qos1 as u8, m.retain, m.payload)
        .is_ok()
}

/// The devices a message on `topic` is for: those that subscribed to it, or, on a Sparkplug
/// topic, the devices of that edge node.
fn targets_of(
    topic: &str,
    routes: &HashMap<String, Vec<(usize, usize)>>,
    plans: &[DevicePlan],
) -> Vec<usize> {
    if let Some(t) = routes.get(topic) {
        let mut v: Vec<usize> = t.iter().map(|(d, _)| *d).collect();
        v.dedup();
        return v;
    }
    match sparkplug::parse_topic(topic) {
        Some((g, _, n, _)) => plans
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.sp.as_ref()
                    .is_some_and(|sp| sp.group == g && sp.node == n)
            })
            .map(|(d, _)| d)
            .collect(),
        None => Vec::new(),
    }
}

/// Writes the device's health record (and its `up` gauge).
async fn health(
    plan: &DevicePlan,
    st: &mut DeviceState,
    dm: &DeviceMetrics,
    up: bool,
    output: &mut DeviceOutput,
) {
    let now = Instant::now();
    if up && st.up == Some(false) {
        tracing::info!(device = %plan.name, "device is publishing again");
    }
    st.up = Some(up);
    st.last_health = Some(now);
    dm.up.store(up, Relaxed);
    let ts = now_ns();
    let h = plan.health;
    let sample = |point, value| Sample {
        point,
        timestamp_ns: ts,
        quality: Quality::Good as i32,
        value: Some(value),
    };
    let last = if up && st.last_error.starts_with("no message") {
        String::new()
    } else {
        st.last_error.clone()
    };
    st.seq += 1;
    let batch = SampleBatch {
        device: plan.device,
        seq: st.seq,
        timestamp_ns: 0,
        samples: vec![
            sample(h.up, Value::BoolValue(up)),
            sample(h.errors, Value::UintValue(st.errors)),
            sample(h.last_error, Value::StringValue(last)),
        ],
    };
    dm.samples.fetch_add(batch.samples.len() as u64, Relaxed);
    output.publish(batch).await;
}
