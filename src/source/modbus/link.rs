//! The one link a bus scheduler talks through: a Modbus TCP connection (one device, or many
//! units behind one gateway address) or an RTU bus (a serial port, or RTU frames over TCP to a
//! serial device server). Either way exactly one request is in flight.

use super::rtu::RtuLink;
use super::tcp::{ReadError, ReadSpec, TcpLink, Words};

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

    /// One read.
    pub async fn read(&mut self, spec: &ReadSpec) -> Result<Words, ReadError> {
        match self {
            Link::Tcp(l) => l.read(spec).await,
            Link::Rtu(l) => l.read(spec).await,
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
