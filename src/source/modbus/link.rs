//! The one link a bus scheduler talks through: a Modbus TCP connection (one device, or many
//! units behind one gateway address) or an RTU bus (a serial port, or RTU frames over TCP to a
//! serial device server). Either way exactly one request is in flight. The contract both
//! sides keep (`ReadSpec` in, `Words` or a `ReadError` out) is defined here.

use super::rtu::RtuLink;
use super::tcp::TcpLink;
use crate::config::Table;
use std::time::Duration;
use tokio_modbus::ExceptionCode;

/// One read request on a link: which unit, which registers, how long to wait, and (RTU) the
/// unit's extra silence around each frame.
#[derive(Debug, Clone, Copy)]
pub struct ReadSpec {
    pub unit: u8,
    pub table: Table,
    pub start: u16,
    pub count: u16,
    pub timeout: Duration,
    pub turnaround: Duration,
}

/// What a read returns.
#[derive(Debug, PartialEq)]
pub enum Words {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// Why a read failed. Everything but `Exception` costs the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Could not connect (or still waiting out the reconnect backoff after such a failure).
    Connect(String),
    Timeout,
    /// The device answered with a Modbus exception code.
    Exception(ExceptionCode),
    /// Transport or protocol error (connection reset, transaction id or function mismatch).
    Link(String),
    /// RTU: a reply whose CRC does not match (the bus is drained, the port stays open).
    Crc,
    /// RTU: a reply from another unit, with another function, truncated or too long.
    Frame(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Connect(e) => write!(f, "connect: {e}"),
            ReadError::Timeout => f.write_str("timeout"),
            ReadError::Exception(code) => {
                write!(f, "exception {:#04x} ({code})", u8::from(*code))
            }
            ReadError::Link(e) => write!(f, "link: {e}"),
            ReadError::Crc => f.write_str("bad CRC"),
            ReadError::Frame(e) => write!(f, "framing: {e}"),
        }
    }
}

impl ReadError {
    /// The label used in `linetap_modbus_requests_total{result}`.
    pub fn result_label(&self) -> &'static str {
        match self {
            ReadError::Connect(_) => "connect_error",
            ReadError::Timeout => "timeout",
            ReadError::Exception(_) => "exception",
            ReadError::Link(_) => "link_error",
            ReadError::Crc => "crc_error",
            ReadError::Frame(_) => "frame_error",
        }
    }
}

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
