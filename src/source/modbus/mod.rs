//! Modbus sources: the read planner and decoder (pure), the links (TCP, RTU) and the bus
//! scheduler that polls every device of one bus over its link, and the bus budget (pure).
pub mod budget;
pub mod decode;
pub mod link;
pub mod plan;
pub mod poller;
pub mod rtu;
pub mod tcp;
