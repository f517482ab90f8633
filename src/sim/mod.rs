//! The simulated robot cell: serves the Modbus TCP devices a configuration describes, with
//! registers that move like a working cell (joint angles following a trajectory, speeds and
//! currents that follow it, slowly drifting temperatures, a state code cycling
//! running/idle/fault, a cycle counter), and faults injected on demand: slow responses, no
//! response, exception codes, dropped connections, corrupted CRCs (RTU). RTU units are served
//! on a serial device or pty (`serial.port`) or, for `modbus-rtu-over-tcp`, on a TCP address.
//!
//! Devices that publish (`protocol = "mqtt"`) publish to their broker instead (`mqtt.rs`);
//! robots read over RTDE (`protocol = "rtde"`) are served by an RTDE server (`rtde.rs`); OPC UA
//! devices by an OPC UA server each (`opcua.rs`: an OPC 40010 robot for `robotics` points).
//!
//! What a point does is chosen from its name (`signal::Wave::for_point`), so any config gets a
//! plausible simulation without extra keys. Tests freeze a device and write exact registers.

pub mod bank;
pub mod demo;
pub mod mqtt;
pub mod opcua;
pub mod rtde;
pub mod rtu;
pub mod server;
pub mod signal;
pub mod view;

pub use bank::Fault;
pub use server::{SimHandle, Simulator};
