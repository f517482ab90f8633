//! Modbus sources: the read planner and decoder (pure), the TCP link (I/O), and the poller
//! that schedules a device's poll groups over its link.
pub mod decode;
pub mod plan;
pub mod poller;
pub mod tcp;
