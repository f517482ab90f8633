//! The one link a bus scheduler talks through: a Modbus TCP connection (one device, or many
//! units behind one gateway address) or an RTU bus (a serial port, or RTU frames over TCP to a
//! serial device server). Either way exactly one request is in flight.

use super::rtu::RtuLink;
use super::tcp::{ReadError, TcpLink, Words};
use crate::config::Table;
use std::time::Duration;

pub enum Link {
    Tcp(TcpLink),
    Rtu(RtuLink),
}

impl Link {
    pub fn address(&self) -> &str {
        match self {
            Link::Tcp(l) => l.address(),
            Link::Rtu(l) => l.address(),
        }
    }

    /// One read; `turnaround` is the unit's extra silence (RTU only).
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        timeout: Duration,
        turnaround: Duration,
    ) -> Result<Words, ReadError> {
        match self {
            Link::Tcp(l) => l.read(unit, table, start, count, timeout).await,
            Link::Rtu(l) => l.read(unit, table, start, count, timeout, turnaround).await,
        }
    }

    /// The unit whose late reply was discarded since the last call (RTU only).
    pub fn take_late(&mut self) -> Option<u8> {
        match self {
            Link::Tcp(_) => None,
            Link::Rtu(l) => l.take_late(),
        }
    }
}
