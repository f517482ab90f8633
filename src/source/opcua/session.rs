//! One OPC UA session of a device, from connecting to its loss: the client (its certificate
//! generated once into `data_dir/pki/DEVICE/`), the server's certificate (the one given, else
//! pinned on first use), the identity, the namespace array, `path` points resolved by
//! browsing, one subscription at the device's `poll` and its monitored items in batches; then
//! data changes into batches until the session ends.

use super::address::{Identifier, Namespace, PathElement};
use super::config::{Mode, Policy, Where};
use super::shape::Read;
use super::{data_value, dropped, DevicePlan, Targets, FAMILIES};
use crate::config::PointType;
use crate::shutdown::Shutdown;
use opcua::client::{ClientBuilder, IdentityToken, MonitoredItem, Session, SubscriptionCallbacks};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, DataChangeFilter,
    DataChangeTrigger, DataValue, DeadbandType, EndpointDescription, ExtensionObject,
    MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId,
    ObjectId, ReadValueId, ReferenceTypeId, StatusChangeNotification, StatusCode,
    TimestampsToReturn, Variant,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Data changes waiting for the device's task; beyond this they are counted as dropped.
const QUEUE: usize = 65_536;
/// Most data changes the server sends in one publish.
const MAX_NOTIFICATIONS: u32 = 5_000;

/// Runs one session; `None` when linetap is stopping, else why it ended.
pub(crate) async fn run(
    plan: &DevicePlan,
    targets: &mut Targets,
    shutdown: &mut Shutdown,
    pki: &Path,
) -> Option<String> {
    let connecting = connect(plan, pki, true);
    let (session, events) = tokio::select! {
        r = connecting => match r {
            Ok(s) => s,
            Err(e) => return Some(e),
        },
        _ = shutdown.recv() => return None,
    };
    let mut live = Live { session, events };
    let result = serve(plan, targets, shutdown, &mut live).await;
    // Close the session (deleting its subscription) when the server is still there.
    let _ = tokio::time::timeout(Duration::from_secs(2), live.session.disconnect()).await;
    live.events.abort();
    result
}

/// The client of a device and the user's password, set up on the blocking pool (it may
/// generate an RSA key, and reads files). `trust_first`: with no server certificate trusted
/// yet, trust the first one the server shows (the agent pins it); a probe passes false.
async fn client(
    plan: &DevicePlan,
    pki: &Path,
    trust_first: bool,
) -> Result<(opcua::client::Client, Option<String>), String> {
    let o = plan.settings.clone();
    let pki = pki.to_path_buf();
    let name = plan.name.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(server_cert) = &o.server_cert_file {
            trust(&pki, server_cert)?;
        }
        let trust_first = trust_first && o.server_cert_file.is_none() && !has_trusted(&pki);
        let password = match &o.password {
            Some(p) => Some(p.resolve()?),
            None => None,
        };
        let mut b = ClientBuilder::new()
            .application_name("linetap")
            .application_uri(format!("urn:linetap:{name}"))
            .product_uri("urn:linetap")
            .pki_dir(&pki)
            .create_sample_keypair(o.cert_file.is_none())
            // Pinned on first use: with nothing trusted yet, the server's certificate is
            // stored in trusted/; a different one later is refused.
            .trust_server_certs(trust_first)
            .verify_server_certs(true)
            // Reconnecting is linetap's: a lost session is set up anew (module doc).
            .session_retry_limit(0)
            .keep_alive_interval(Duration::from_secs(5))
            // Three keep-alives unanswered (a cable pulled: no reset arrives): the session ends.
            .max_failed_keep_alive_count(3)
            .session_timeout(60_000)
            .request_timeout(o.timeout.max(Duration::from_secs(1)))
            .recreate_subscriptions(false)
            // A publish of many items' changes is one array: decodable up to twice
            // MAX_NOTIFICATIONS (the subscription asks for at most that many per publish),
            // in messages of up to 16 MiB.
            .max_array_length(MAX_NOTIFICATIONS as usize * 2)
            .max_message_size(16 * 1024 * 1024)
            .max_chunk_count(512);
        if let (Some(c), Some(k)) = (&o.cert_file, &o.key_file) {
            b = b.certificate_path(c).private_key_path(k);
        }
        let client = b.client().map_err(|e| e.join("; "))?;
        Ok((client, password))
    })
    .await
    .map_err(|e| format!("setting the client up failed: {e}"))?
}

/// Trusts `cert` (DER or PEM) in `pki`: stored in `trusted/` under the name the client's
/// certificate store looks it up by.
fn trust(pki: &Path, cert: &Path) -> Result<(), String> {
    use opcua::crypto::{CertificateStore, X509};
    let bytes = std::fs::read(cert)
        .map_err(|e| format!("cannot read server_cert_file {}: {e}", cert.display()))?;
    let x509 = X509::from_der(&bytes)
        .or_else(|_| X509::from_pem(&bytes))
        .map_err(|_| {
            format!(
                "server_cert_file {} is not a certificate (DER or PEM)",
                cert.display()
            )
        })?;
    let trusted = pki.join("trusted");
    std::fs::create_dir_all(&trusted)
        .map_err(|e| format!("cannot create {}: {e}", trusted.display()))?;
    let to = trusted.join(CertificateStore::cert_file_name(&x509));
    let der = x509
        .to_der()
        .map_err(|_| format!("server_cert_file {}: cannot encode it", cert.display()))?;
    std::fs::write(&to, der).map_err(|e| format!("cannot write {}: {e}", to.display()))
}

/// Whether a server certificate is already trusted in `pki`.
fn has_trusted(pki: &Path) -> bool {
    std::fs::read_dir(pki.join("trusted"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// A running session's event loop.
pub(crate) struct Events(tokio::task::JoinHandle<StatusCode>);

impl Drop for Events {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A session and its event loop.
pub(crate) struct Live {
    session: Arc<Session>,
    events: Events,
}

impl Events {
    pub(crate) fn abort(&self) {
        self.0.abort();
    }
}

/// Connects and activates a session.
pub(crate) async fn connect(
    plan: &DevicePlan,
    pki: &Path,
    trust_first: bool,
) -> Result<(Arc<Session>, Events), String> {
    let o = &plan.settings;
    let (mut client, password) = client(plan, pki, trust_first).await?;
    let identity = match (&o.username, password) {
        (Some(u), Some(p)) => IdentityToken::new_user_name(u.clone(), p),
        _ => IdentityToken::Anonymous,
    };
    let policy = match o.policy {
        Policy::None => SecurityPolicy::None,
        Policy::Basic128Rsa15 => SecurityPolicy::Basic128Rsa15,
        Policy::Basic256 => SecurityPolicy::Basic256,
        Policy::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
        Policy::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
        Policy::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss,
    };
    let mode = match o.mode {
        Mode::None => MessageSecurityMode::None,
        Mode::Sign => MessageSecurityMode::Sign,
        Mode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    };
    let endpoint: EndpointDescription = (o.endpoint.as_str(), policy.to_uri(), mode).into();
    let (session, event_loop) = match tokio::time::timeout(
        o.timeout,
        client.connect_to_matching_endpoint(endpoint, identity),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(format!(
                "cannot connect to {} ({} {}): {}",
                o.endpoint,
                o.policy.name(),
                o.mode.name(),
                explain(e.status())
            ))
        }
        Err(_) => {
            return Err(format!(
                "cannot connect to {}: no answer within {:?}",
                o.endpoint, o.timeout
            ))
        }
    };
    let mut events = Events(event_loop.spawn());
    match tokio::time::timeout(o.timeout, session.wait_for_connection()).await {
        Ok(true) => {
            // The first connection only: a lost one ends the event loop, and the device task
            // sets a new session up (a client-side reconnect would come back without the
            // subscription, silently).
            session.disable_reconnects();
            Ok((session, events))
        }
        Ok(false) | Err(_) => {
            // The event loop's own status says why (it ends: no retries).
            let why = match tokio::time::timeout(Duration::from_millis(500), &mut events.0).await {
                Ok(Ok(code)) => explain(code),
                _ => format!("no session within {:?}", o.timeout),
            };
            Err(format!(
                "cannot open a session on {} ({} {}): {why}",
                o.endpoint,
                o.policy.name(),
                o.mode.name()
            ))
        }
    }
}

/// A status code with what a person can do about it.
fn explain(code: StatusCode) -> String {
    let hint = match code {
        StatusCode::BadUserAccessDenied | StatusCode::BadIdentityTokenRejected | StatusCode::BadIdentityTokenInvalid => {
            ": the server refused the user name or password"
        }
        StatusCode::BadCertificateUntrusted => {
            ": the server's certificate is not the one trusted (data_dir/pki/DEVICE/trusted/): if it was renewed, move the new one from rejected/ to trusted/, or give server_cert_file"
        }
        StatusCode::BadSecurityChecksFailed => {
            ": the server refused linetap's certificate (trust data_dir/pki/DEVICE/own/cert.der on the server)"
        }
        StatusCode::BadCertificateHostNameInvalid => {
            ": the server's certificate does not name the host in `endpoint`"
        }
        _ => "",
    };
    format!("{code}{hint}")
}

/// Resolves the node of each `node` and `path` point; per point the node or why not.
pub(crate) async fn resolve(
    session: &Session,
    points: &[&Where],
) -> Result<Vec<Result<NodeId, String>>, String> {
    let namespaces = session
        .read_namespace_array()
        .await
        .map_err(|e| format!("cannot read the namespace array: {}", e.status()))?;
    let index = |ns: &Namespace| -> Result<u16, String> {
        match ns {
            Namespace::Index(i) => Ok(*i),
            Namespace::Uri(u) => namespaces
                .get_index(u)
                .ok_or_else(|| format!("the server has no namespace {u:?}")),
        }
    };
    let mut browsed: HashMap<Vec<PathElement>, Result<NodeId, String>> = HashMap::new();
    let mut out = Vec::new();
    for at in points {
        let r = match *at {
            Where::Node(n) => index(&n.namespace).and_then(|ns| {
                let id = match &n.identifier {
                    Identifier::Numeric(i) => format!("ns={ns};i={i}"),
                    Identifier::String(s) => format!("ns={ns};s={s}"),
                    Identifier::Guid(g) => format!("ns={ns};g={g}"),
                    Identifier::Opaque(b) => format!("ns={ns};b={b}"),
                };
                NodeId::from_str(&id).map_err(|_| format!("{id:?} is not a NodeId"))
            }),
            Where::Path(p) => {
                let mut node: Result<NodeId, String> = Ok(ObjectId::RootFolder.into());
                for depth in 1..=p.len() {
                    let prefix = p[..depth].to_vec();
                    if let Some(known) = browsed.get(&prefix) {
                        node = known.clone();
                        continue;
                    }
                    let step = match &node {
                        Ok(parent) => {
                            let wanted = &p[depth - 1];
                            let ns = match &wanted.namespace {
                                Some(u) => namespaces
                                    .get_index(u)
                                    .map(Some)
                                    .ok_or_else(|| format!("the server has no namespace {u:?}")),
                                None => Ok(None),
                            };
                            match ns {
                                Ok(ns) => child(session, parent, &wanted.name, ns).await,
                                Err(e) => Err(e),
                            }
                        }
                        Err(e) => Err(e.clone()),
                    };
                    browsed.insert(prefix, step.clone());
                    node = step;
                }
                node.map_err(|e| format!("path {}: {e}", path_text(p)))
            }
            Where::Robotics(r) => Err(format!("robotics = {r:?} is found by browsing")),
        };
        out.push(r);
    }
    Ok(out)
}

/// A browse path as written in a point's `path` (`{URI}` before a name in a namespace).
pub(crate) fn path_text(p: &[PathElement]) -> String {
    p.iter()
        .map(|e| match &e.namespace {
            Some(u) => format!("{{{u}}}{}", e.name),
            None => e.name.clone(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The child of `parent` with browse name `name` (in namespace `ns`, or any).
pub(crate) async fn child(
    session: &Session,
    parent: &NodeId,
    name: &str,
    ns: Option<u16>,
) -> Result<NodeId, String> {
    let desc = BrowseDescription {
        node_id: parent.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: BrowseResultMask::BrowseName as u32,
    };
    let mut results = session
        .browse(&[desc], 1000, None)
        .await
        .map_err(|e| format!("browsing {parent} failed: {}", e.status()))?;
    loop {
        let Some(r) = results.pop() else {
            return Err(format!("browsing {parent} returned nothing"));
        };
        if !r.status_code.is_good() {
            return Err(format!("browsing {parent}: {}", r.status_code));
        }
        for rd in r.references.unwrap_or_default() {
            let q = &rd.browse_name;
            if q.name.as_ref() == name && ns.is_none_or(|n| n == q.namespace_index) {
                return Ok(rd.node_id.node_id);
            }
        }
        if r.continuation_point.is_null() {
            return Err(format!("{name:?} is not a child of {parent}"));
        }
        results = session
            .browse_next(false, &[r.continuation_point])
            .await
            .map_err(|e| format!("browsing {parent} failed: {}", e.status()))?;
    }
}

/// Works out what to read, subscribes, and moves data changes into batches until the session
/// ends.
async fn serve(
    plan: &DevicePlan,
    targets: &mut Targets,
    shutdown: &mut Shutdown,
    live: &mut Live,
) -> Option<String> {
    let dm = targets.list[0].dm.clone();
    let kc = dm.kind_counters(&FAMILIES);
    let session = &live.session;
    let shape = match super::shape::of(session, plan).await {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    let ids = targets.adopt(plan, &shape).await;
    let items = super::items(&shape, &ids);
    let (tx, mut rx) = mpsc::channel::<(u32, DataValue)>(QUEUE);
    let full = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = full.clone();
    // The server ending the subscription (its lifetime ran out, it was deleted) while the
    // session lives: the session ends too, and a new one subscribes again.
    let (ended_tx, mut ended_rx) = mpsc::channel::<StatusCode>(4);
    let poll = plan.poll.max(Duration::from_millis(10));
    // At least a minute without a publish before the server gives up on the subscription.
    let lifetime = ((60.0 / poll.as_secs_f64()).ceil() as u32).clamp(30, 60_000);
    let subscription = session
        .create_subscription(
            poll,
            lifetime,
            10,
            MAX_NOTIFICATIONS,
            0,
            true,
            SubscriptionCallbacks::new(
                move |n: StatusChangeNotification| {
                    if !n.status.is_good() {
                        let _ = ended_tx.try_send(n.status);
                    }
                },
                move |dv: DataValue, item: &MonitoredItem| {
                    // Inside the session's event loop: never block.
                    if tx.try_send((item.client_handle(), dv)).is_err() {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                },
                |_, _| {},
            ),
        )
        .await;
    let subscription = match subscription {
        Ok(s) => s,
        Err(e) => return Some(format!("cannot create a subscription: {}", e.status())),
    };
    let sampling = plan.poll.as_secs_f64() * 1000.0;
    let requests: Vec<MonitoredItemCreateRequest> = items
        .iter()
        .zip(&shape.reads)
        .enumerate()
        .map(|(i, (item, read))| {
            // A deadband applies to numbers only (a server answers BadFilterNotAllowed for
            // others), on the node's raw value: the point's deadband over its scale.
            let numeric = !matches!(item.kind, PointType::Bool | PointType::String);
            let raw_deadband = match item.scale {
                Some((s, _)) if s != 0.0 => item.deadband / s.abs(),
                _ => item.deadband,
            };
            let filter = if item.deadband > 0.0 && numeric {
                ExtensionObject::from_message(DataChangeFilter {
                    trigger: DataChangeTrigger::StatusValue,
                    deadband_type: DeadbandType::Absolute as u32,
                    deadband_value: raw_deadband,
                })
            } else {
                ExtensionObject::null()
            };
            MonitoredItemCreateRequest::new(
                ReadValueId::from(read.node.clone()),
                MonitoringMode::Reporting,
                MonitoringParameters {
                    // Handles from 1: the item's index + 1.
                    client_handle: i as u32 + 1,
                    sampling_interval: sampling,
                    filter,
                    queue_size: 10,
                    discard_oldest: true,
                },
            )
        })
        .collect();
    let mut problems = shape.problems.clone();
    let mut created = 0usize;
    for chunk in requests.chunks(plan.settings.max_items_per_call) {
        let results = match session
            .create_monitored_items(subscription, TimestampsToReturn::Both, chunk.to_vec())
            .await
        {
            Ok(r) => r,
            Err(e) => return Some(format!("cannot create monitored items: {}", e.status())),
        };
        for r in results {
            if r.result.status_code.is_good() {
                created += 1;
            } else {
                let h = r.requested_parameters.client_handle as usize;
                if let Some(item) = items.get(h.wrapping_sub(1)) {
                    let p = format!("point {:?}: {}", item.name, r.result.status_code);
                    if let Some(list) = problems.get_mut(item.target) {
                        if !list.contains(&p) {
                            list.push(p);
                        }
                    }
                }
            }
        }
    }
    for (t, list) in targets.list.iter_mut().zip(&problems) {
        t.st.h.problems = list.join("; ");
        if !list.is_empty() {
            tracing::warn!(device = %t.name, "{} points are not read: {}", list.len(), t.st.h.problems);
        }
    }
    if !shape.absent.is_empty() {
        tracing::info!(device = %plan.name, "not on this server (optional in OPC 40010): {}", shape.absent.join(", "));
    }
    let devices: Vec<&str> = targets.list.iter().map(|t| t.name.as_str()).collect();
    tracing::info!(device = %plan.name, endpoint = %plan.settings.endpoint, items = created, devices = %devices.join(", "), "OPC UA session up");
    targets.flush(Some(true)).await;
    let mut tick = tokio::time::interval(plan.poll.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Paths and robots browsed again now and then: a download may renumber nodes without
    // restarting the server (and a server need not tell its subscribers that a node went).
    let every = plan.settings.browse_interval;
    let mut browse = (!every.is_zero() && super::shape::Shape::browsed(plan)).then(|| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    // The browse runs beside the session's loop (many round trips on a robot): data changes
    // go on meanwhile. A browse that fails is tried again at the next interval; only a
    // browse that finds other nodes ends the session.
    let mut browsing = Browse(None);
    let mut browse_failed: Option<String> = None;
    let take = |targets: &mut Targets, handle: u32, dv: &DataValue| {
        if let Some(item) = items.get((handle as usize).wrapping_sub(1)) {
            if let Some(t) = targets.list.get_mut(item.target) {
                let kc = t.dm.kind_counters(&FAMILIES);
                data_value(item, dv, &mut t.st, kc);
            }
        }
    };
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some((handle, dv)) = got else {
                    return Some("the subscription ended".into());
                };
                take(targets, handle, &dv);
                // Take what else is queued without waiting.
                while let Ok((handle, dv)) = rx.try_recv() {
                    take(targets, handle, &dv);
                }
            }
            _ = tick.tick() => {
                let n = full.swap(0, std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    dropped(kc, n);
                }
                targets.flush(None).await;
            }
            _ = async {
                match browse.as_mut() {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }, if browsing.0.is_none() => {
                let (session, plan) = (session.clone(), plan.clone());
                browsing.0 = Some(tokio::spawn(async move { super::shape::of(&session, &plan).await }));
            }
            done = async {
                match browsing.0.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => {
                browsing.0 = None;
                match done {
                    Ok(Ok(now)) if now.same_as(&shape) => browse_failed = None,
                    Ok(Ok(_)) => {
                        targets.flush(None).await;
                        return Some("the server's nodes changed (a download?): a new session subscribes to them".into());
                    }
                    Ok(Err(e)) => {
                        if browse_failed.as_deref() != Some(e.as_str()) {
                            tracing::warn!(device = %plan.name, "browsing the server again failed: {e}; tried again in {every:?}");
                            browse_failed = Some(e);
                        }
                    }
                    Err(_) => {}
                }
            }
            Some(status) = ended_rx.recv() => {
                targets.flush(None).await;
                return Some(format!("the server ended the subscription: {}", explain(status)));
            }
            code = &mut live.events.0 => {
                targets.flush(None).await;
                return Some(match code {
                    Ok(c) if c.is_good() => {
                        "session lost: the connection was closed (the server stopped, or the network)".into()
                    }
                    Ok(c) => format!("session lost: {}", explain(c)),
                    Err(_) => "session lost".into(),
                });
            }
            _ = shutdown.recv() => {
                targets.flush(None).await;
                return None;
            }
        }
    }
}

/// A browse running beside a session's loop; stopped with the session.
struct Browse(Option<tokio::task::JoinHandle<Result<super::shape::Shape, String>>>);

impl Drop for Browse {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// The type of each read's point: its `type`, else its node's DataType (f64 when linetap has
/// none for it), set in `targets`. A read whose node's type cannot become its point's `type`
/// (text into a number, a number into text) is dropped, with a problem saying why.
pub(crate) async fn types(
    session: &Session,
    plan: &DevicePlan,
    targets: &mut [crate::config::DeviceConfig],
    reads: &mut Vec<Read>,
    problems: &mut [Vec<String>],
) -> Result<(), String> {
    let mut found: Vec<Option<(PointType, String)>> = vec![None; reads.len()];
    let indexed: Vec<(usize, &Read)> = reads.iter().enumerate().collect();
    for chunk in indexed.chunks(plan.settings.max_items_per_call) {
        let ids: Vec<ReadValueId> = chunk
            .iter()
            .map(|(_, r)| ReadValueId::new(r.node.clone(), AttributeId::DataType))
            .collect();
        let values = session
            .read(&ids, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| format!("cannot read the points' data types: {}", e.status()))?;
        for ((i, _), dv) in chunk.iter().zip(values) {
            if let Some(Variant::NodeId(t)) = dv.value {
                found[*i] = super::point_type(&t).map(|k| (k, t.to_string()));
            }
        }
    }
    let mut keep = vec![true; reads.len()];
    let mut decided = std::collections::HashSet::new();
    for (i, r) in reads.iter().enumerate() {
        let Some((node_kind, type_name)) = &found[i] else {
            continue;
        };
        let Some(p) = targets
            .get_mut(r.target)
            .and_then(|d| d.points.get_mut(r.point))
        else {
            continue;
        };
        let typed = super::config::opcua_point(p).is_none_or(|o| o.typed);
        // OPC 40010 fixes its variables' types; a vendor's text for a duration
        // (TotalPowerOnTime as String, not DurationString) is still read as one.
        let robotic = matches!(
            super::config::opcua_point(p).map(|o| &o.at),
            Some(Where::Robotics(_))
        );
        if typed {
            let text = |k: PointType| k == PointType::String;
            let duration = robotic && text(*node_kind) && !text(p.kind);
            if text(*node_kind) != text(p.kind) && !duration {
                keep[i] = false;
                let why = format!(
                    "point {:?}: the node's data type ({type_name}) cannot become {}",
                    p.name,
                    p.kind.as_str()
                );
                if let Some(list) = problems.get_mut(r.target) {
                    if !list.contains(&why) {
                        list.push(why);
                    }
                }
            }
        } else if decided.insert((r.target, r.point)) {
            p.kind = *node_kind;
        }
    }
    let mut i = 0;
    reads.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    Ok(())
}

/// Where a device's client keeps its certificates.
pub fn pki_dir(data_dir: &Path, device: &str) -> PathBuf {
    let name: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    data_dir.join("pki").join(name)
}
