//! The simulator's Modbus TCP server (tokio-modbus): one listener per distinct address of the
//! configuration, serving every unit configured at that address. RTU buses (serial ports,
//! RTU-over-TCP addresses) are served by `sim::rtu`.

use super::bank::{Bank, Fault};
use super::rtu;
use crate::config::{Config, MqttDevice, SerialConfig, Table, Transport};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

type Units = Arc<HashMap<u8, Arc<Mutex<Bank>>>>;
type UnitMap = HashMap<u8, Arc<Mutex<Bank>>>;

/// The simulated devices of one configuration.
pub struct Simulator;

/// Controls a running simulator: faults, exact register values, stop.
#[derive(Clone)]
pub struct SimHandle {
    devices: Arc<HashMap<String, Arc<Mutex<Bank>>>>,
    /// Per device: the listening address it is served on (Modbus TCP and RTU over TCP).
    pub addresses: Arc<HashMap<String, SocketAddr>>,
    /// Per RTU device on a serial line: the port it is served on.
    pub serial_ports: Arc<HashMap<String, String>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

pub(super) fn lock(b: &Mutex<Bank>) -> std::sync::MutexGuard<'_, Bank> {
    // A poisoned lock only means another request panicked mid-update; the bank is still usable.
    b.lock().unwrap_or_else(|e| e.into_inner())
}

impl Simulator {
    /// Binds every Modbus TCP address of `config` and starts serving. Addresses with port 0
    /// get an ephemeral port (see `SimHandle::addresses`).
    pub async fn start(config: &Config) -> io::Result<SimHandle> {
        let started = Instant::now();
        let mut by_address: HashMap<String, HashMap<u8, Arc<Mutex<Bank>>>> = HashMap::new();
        let mut rtu_tcp: HashMap<String, HashMap<u8, Arc<Mutex<Bank>>>> = HashMap::new();
        let mut by_port: HashMap<String, (SerialConfig, UnitMap)> = HashMap::new();
        let mut serial_ports = HashMap::new();
        let mut devices = HashMap::new();
        let mut addresses = HashMap::new();
        let mut tasks = Vec::new();
        // MQTT devices publish to their broker (sim/mqtt.rs); their bank holds the fault.
        let mut publishers: HashMap<String, Vec<super::mqtt::Publisher>> = HashMap::new();
        for d in &config.devices {
            if let Some(m) = d.settings::<MqttDevice>() {
                let bank = Arc::new(Mutex::new(Bank::for_device(d)));
                devices.insert(d.id.clone(), bank.clone());
                publishers
                    .entry(m.broker.clone())
                    .or_default()
                    .push((d.clone(), bank));
            }
        }
        for (name, list) in publishers {
            if let Some(b) = config.brokers.iter().find(|b| b.name == name) {
                tasks.push(tokio::spawn(super::mqtt::run(b.clone(), list, started)));
            }
        }
        for (d, r) in crate::source::rtde::devices(config) {
            let listener = TcpListener::bind(&r.address).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {}: {e}", r.address))
            })?;
            addresses.insert(d.id.clone(), listener.local_addr()?);
            let bank = Arc::new(Mutex::new(Bank::for_device(d)));
            devices.insert(d.id.clone(), bank.clone());
            tasks.push(tokio::spawn(super::rtde::serve(
                listener,
                super::rtde::Controller::for_device(d),
                bank,
                started,
            )));
        }
        for (d, o) in crate::source::opcua::devices(config) {
            let (local, task) = super::opcua::start(d, o, started).await?;
            addresses.insert(d.id.clone(), local);
            tasks.push(task);
        }
        for (d, m) in crate::source::modbus::devices(config) {
            let bank = Arc::new(Mutex::new(Bank::for_device(d)));
            devices.insert(d.id.clone(), bank.clone());
            match (m.transport, &m.serial) {
                (Transport::Rtu, Some(s)) => {
                    serial_ports.insert(d.id.clone(), s.port.clone());
                    by_port
                        .entry(s.port.clone())
                        .or_insert_with(|| (s.clone(), HashMap::new()))
                        .1
                        .insert(m.unit, bank);
                    continue;
                }
                (Transport::RtuOverTcp, _) => {
                    rtu_tcp
                        .entry(m.address.clone())
                        .or_default()
                        .insert(m.unit, bank);
                    continue;
                }
                _ => {}
            }
            // Port 0 asks for an ephemeral port: each such device gets a listener of its own.
            let key = if m.address.ends_with(":0") {
                format!("{}#{}", m.address, d.id)
            } else {
                m.address.clone()
            };
            by_address.entry(key).or_default().insert(m.unit, bank);
        }
        for (_, (serial, units)) in by_port {
            tasks.push(tokio::spawn(rtu::serve_serial(
                serial,
                Arc::new(units),
                started,
            )));
        }
        for (address, units) in rtu_tcp {
            let listener = TcpListener::bind(&address).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {address}: {e}"))
            })?;
            let local = listener.local_addr()?;
            for (d, m) in crate::source::modbus::devices(config) {
                if m.transport == Transport::RtuOverTcp && m.address == address {
                    addresses.insert(d.id.clone(), local);
                }
            }
            tasks.push(tokio::spawn(rtu::serve_tcp(
                listener,
                Arc::new(units),
                started,
            )));
        }
        for (key, units) in by_address {
            let address = key.split('#').next().unwrap_or(&key).to_string();
            let listener = TcpListener::bind(&address).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {address}: {e}"))
            })?;
            let local = listener.local_addr()?;
            for (d, m) in crate::source::modbus::devices(config) {
                let dkey = if m.address.ends_with(":0") {
                    format!("{}#{}", m.address, d.id)
                } else {
                    m.address.clone()
                };
                if dkey == key {
                    addresses.insert(d.id.clone(), local);
                }
            }
            let units: Units = Arc::new(units);
            tasks.push(tokio::spawn(serve(listener, units, started)));
        }
        Ok(SimHandle {
            devices: Arc::new(devices),
            addresses: Arc::new(addresses),
            serial_ports: Arc::new(serial_ports),
            tasks: Arc::new(Mutex::new(tasks)),
        })
    }
}

async fn serve(listener: TcpListener, units: Units, started: Instant) {
    let server = Server::new(listener);
    let on_connected = |stream: TcpStream, _addr: SocketAddr| {
        let units = units.clone();
        for bank in units.values() {
            lock(bank).connections += 1;
        }
        async move {
            let _ = stream.set_nodelay(true);
            let service = SimService {
                units: units.clone(),
                started,
            };
            Ok(Some((
                service,
                Droppable {
                    inner: stream,
                    units,
                    mangled: None,
                },
            )))
        }
    };
    if let Err(e) = server
        .serve(
            &on_connected,
            |e| tracing::debug!(error = %e, "simulator connection ended"),
        )
        .await
    {
        tracing::warn!(error = %e, "simulator listener stopped");
    }
}

struct SimService {
    units: Units,
    started: Instant,
}

impl Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let Some(bank) = self.units.get(&req.slave).cloned() else {
            // No such unit behind this address: what a gateway answers.
            return Box::pin(async { Err(ExceptionCode::GatewayTargetDevice) });
        };
        let t = self.started.elapsed().as_secs_f64();
        let fault = lock(&bank).fault.clone();
        let answer = move || {
            let mut b = lock(&bank);
            b.update(t);
            b.serve(&req.request).map(Some)
        };
        match fault {
            Fault::None | Fault::Drop | Fault::BadCrc | Fault::Chunked(_) | Fault::Garbage => {
                Box::pin(std::future::ready(answer()))
            }
            Fault::Slow(d) => Box::pin(async move {
                tokio::time::sleep(d).await;
                answer()
            }),
            Fault::Silent => Box::pin(std::future::ready(Ok(None))),
            Fault::Exception(code) => Box::pin(std::future::ready(Err(ExceptionCode::new(code)))),
        }
    }
}

/// The connection's stream; reads end it (EOF) while any unit at the address has `Fault::Drop`,
/// and replies are mangled while any has `Fault::Garbage`.
struct Droppable {
    inner: TcpStream,
    units: Units,
    /// A mangled reply being written, and how much of it is out.
    mangled: Option<(Vec<u8>, usize)>,
}

/// One reply frame, mangled: random bytes, a truncated frame, or a frame longer than its
/// MBAP header says (or a header that promises more than comes).
fn mangle(frame: &[u8]) -> Vec<u8> {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut out = frame.to_vec();
    match rng.random_range(0..4) {
        0 => {
            let n = rng.random_range(1..=frame.len().max(1) * 2);
            out = (0..n).map(|_| rng.random()).collect();
        }
        1 => out.truncate(rng.random_range(0..frame.len().max(1))),
        2 => {
            let extra = rng.random_range(1..300usize);
            out.extend((0..extra).map(|_| rng.random::<u8>()));
            if out.len() >= 6 {
                let len = u16::from_be_bytes([out[4], out[5]]).wrapping_add(extra as u16);
                out[4..6].copy_from_slice(&len.to_be_bytes());
            }
        }
        _ => {
            if out.len() >= 6 {
                let len: u16 = rng.random_range(0..=u16::MAX);
                out[4..6].copy_from_slice(&len.to_be_bytes());
            }
        }
    }
    out
}

impl AsyncRead for Droppable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && self.units.values().any(|b| lock(b).fault == Fault::Drop)
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "simulated connection drop",
            )));
        }
        r
    }
}

impl AsyncWrite for Droppable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.mangled.is_none() {
            if !self.units.values().any(|b| lock(b).fault == Fault::Garbage) {
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
            self.mangled = Some((mangle(buf), 0));
        }
        // Write the whole mangled frame, then report the original as written.
        loop {
            let this = &mut *self;
            let Some((bytes, at)) = this.mangled.as_mut() else {
                return Poll::Ready(Ok(buf.len()));
            };
            if *at >= bytes.len() {
                this.mangled = None;
                return Poll::Ready(Ok(buf.len()));
            }
            match Pin::new(&mut this.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(n)) => *at += n,
                Poll::Ready(Err(e)) => {
                    this.mangled = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl SimHandle {
    fn bank(&self, device: &str) -> Result<&Arc<Mutex<Bank>>, String> {
        self.devices
            .get(device)
            .ok_or_else(|| format!("no simulated device {device:?}"))
    }

    pub fn set_fault(&self, device: &str, fault: Fault) -> Result<(), String> {
        lock(self.bank(device)?).fault = fault;
        Ok(())
    }

    /// Writes exact registers (and freezes the device's motion).
    pub fn set_registers(
        &self,
        device: &str,
        table: Table,
        address: u16,
        words: &[u16],
    ) -> Result<(), String> {
        if lock(self.bank(device)?).set_registers(table, address, words) {
            Ok(())
        } else {
            Err(format!(
                "{device}: {} {address}+{} is outside the simulated map",
                table.as_str(),
                words.len()
            ))
        }
    }

    pub fn set_bits(
        &self,
        device: &str,
        table: Table,
        address: u16,
        bits: &[bool],
    ) -> Result<(), String> {
        if lock(self.bank(device)?).set_bits(table, address, bits) {
            Ok(())
        } else {
            Err(format!(
                "{device}: {} {address}+{} is outside the simulated map",
                table.as_str(),
                bits.len()
            ))
        }
    }

    /// Points `cfg`'s devices at the addresses they are served on (a `:0` address got an
    /// ephemeral port): Modbus TCP, RTU over TCP, RTDE and OPC UA devices.
    pub fn rewire(&self, cfg: &mut Config) {
        use crate::config::{ModbusDevice, Settings};
        use crate::source::opcua::config::OpcuaDevice;
        use crate::source::rtde::config::RtdeDevice;
        for d in &mut cfg.devices {
            let Some(a) = self.addresses.get(&d.id).map(|a| a.to_string()) else {
                continue;
            };
            if let Some(m) = d.settings::<ModbusDevice>() {
                d.settings = Settings::new(ModbusDevice {
                    address: a,
                    ..m.clone()
                });
            } else if let Some(r) = d.settings::<RtdeDevice>() {
                d.settings = Settings::new(RtdeDevice {
                    address: a,
                    ..r.clone()
                });
            } else if let (Some(o), Some(at)) =
                (d.settings::<OpcuaDevice>(), self.addresses.get(&d.id))
            {
                d.settings = Settings::new(OpcuaDevice {
                    endpoint: super::opcua::endpoint_at(&o.endpoint, *at),
                    ..o.clone()
                });
            }
        }
    }

    /// TCP connections the simulator has accepted for `device` so far.
    pub fn connections(&self, device: &str) -> Result<u64, String> {
        Ok(lock(self.bank(device)?).connections)
    }

    pub fn stop(&self) {
        for t in lock_tasks(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

fn lock_tasks(t: &Mutex<Vec<JoinHandle<()>>>) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}
