//! Modbus RTU: frames (CRC-16/Modbus, expected lengths) and `RtuLink`, one serial bus (or one
//! RTU-over-TCP connection to a serial device server) with exactly one request in flight.
//!
//! Why not tokio-modbus's RTU client: on a bad CRC its decoder silently drops a byte and
//! tries again, so a corrupted reply is never reported (the caller sees only a timeout and
//! cannot count it), and bytes that arrive after a timeout stay in the stream. Here a reply is
//! framed by the length the request implies; a bad CRC, a reply from the wrong unit or a
//! truncated frame is reported as such, the line is drained until it is quiet, and the port
//! stays open. See docs/decisions/0005-rtu-framer.md.

use super::link::{ReadError, ReadSpec, Words};
use crate::backoff::Backoff;
use crate::config::{Parity, SerialConfig, Table};
use futures_util::FutureExt;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// CRC-16/Modbus (poly 0xA001 reflected, init 0xFFFF); sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= b as u16;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Appends the CRC (low byte first).
pub fn push_crc(frame: &mut Vec<u8>) {
    let c = crc16(frame);
    frame.extend_from_slice(&c.to_le_bytes());
}

/// True when the last two bytes are the CRC of the rest.
pub fn crc_ok(frame: &[u8]) -> bool {
    frame.len() >= 4 && {
        let (body, crc) = frame.split_at(frame.len() - 2);
        crc16(body).to_le_bytes() == [crc[0], crc[1]]
    }
}

pub fn function_code(table: Table) -> u8 {
    match table {
        Table::Coil => 0x01,
        Table::Discrete => 0x02,
        Table::Holding => 0x03,
        Table::Input => 0x04,
    }
}

/// The 8-byte read request frame.
pub fn read_request(unit: u8, table: Table, start: u16, count: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(8);
    f.push(unit);
    f.push(function_code(table));
    f.extend_from_slice(&start.to_be_bytes());
    f.extend_from_slice(&count.to_be_bytes());
    push_crc(&mut f);
    f
}

/// Data bytes of a read response: 2 per register, or the bits packed 8 per byte.
pub fn response_data_bytes(table: Table, count: u16) -> usize {
    if table.is_bits() {
        (count as usize).div_ceil(8)
    } else {
        count as usize * 2
    }
}

/// Bytes of the whole read response frame: unit, function, byte count, data, CRC.
pub fn read_response_len(table: Table, count: u16) -> usize {
    5 + response_data_bytes(table, count)
}

/// What one complete frame in reply to a read says.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Data(Words),
    Exception(u8),
}

/// Where the reply being received stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCheck {
    /// Not enough bytes yet to know (or to hold) the whole reply: keep reading.
    Incomplete,
    /// The reply is the first `n` bytes of the buffer.
    Complete(usize),
    /// Not the reply we asked for (another function, another byte count): its length is
    /// unknown, so it ends at the first silence (t3.5).
    Unframed,
}

/// How far the reply to a request for function `fc` with `data_bytes` data bytes has come.
/// Pure: any prefix of any bytes gives an answer, never a panic.
pub fn check_frame(buf: &[u8], fc: u8, data_bytes: usize) -> FrameCheck {
    let Some(&f) = buf.get(1) else {
        return FrameCheck::Incomplete;
    };
    let want = if f == fc | 0x80 {
        5
    } else if f != fc {
        return FrameCheck::Unframed;
    } else {
        let Some(&n) = buf.get(2) else {
            return FrameCheck::Incomplete;
        };
        if n as usize != data_bytes {
            return FrameCheck::Unframed;
        }
        5 + data_bytes
    };
    if buf.len() >= want {
        FrameCheck::Complete(want)
    } else {
        FrameCheck::Incomplete
    }
}

/// Checks one complete frame against the request and decodes it. Any bytes give a result,
/// never a panic.
pub fn parse_reply(frame: &[u8], unit: u8, table: Table, count: u16) -> Result<Reply, ReadError> {
    if frame.len() < 5 {
        return Err(ReadError::Frame(format!(
            "short reply ({} bytes)",
            frame.len()
        )));
    }
    if !crc_ok(frame) {
        return Err(ReadError::Crc);
    }
    if frame[0] != unit {
        return Err(ReadError::Frame(format!(
            "reply from unit {} (asked unit {unit})",
            frame[0]
        )));
    }
    let fc = function_code(table);
    if frame[1] == fc | 0x80 {
        return Ok(Reply::Exception(frame[2]));
    }
    if frame[1] != fc {
        return Err(ReadError::Frame(format!(
            "function {:#04x} in reply to {fc:#04x}",
            frame[1]
        )));
    }
    let data = &frame[3..frame.len() - 2];
    if data.len() != frame[2] as usize || data.len() != response_data_bytes(table, count) {
        return Err(ReadError::Frame(format!(
            "{} data bytes for {count} {}",
            data.len(),
            table.as_str()
        )));
    }
    Ok(Reply::Data(decode_words(table, count, data)))
}

/// The registers or bits of a read response's data bytes (`data` holds at least
/// `response_data_bytes(table, count)` bytes). Shared by RTU and TCP.
pub fn decode_words(table: Table, count: u16, data: &[u8]) -> Words {
    if table.is_bits() {
        Words::Bits(
            (0..count as usize)
                .map(|i| data.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
                .collect(),
        )
    } else {
        Words::Registers(
            data.chunks_exact(2)
                .take(count as usize)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect(),
        )
    }
}

/// Silence that ends a frame (t3.5): 3.5 character times, fixed at 1.75 ms above 19200 baud
/// (Modbus over Serial Line V1.02, 2.5.1.1).
pub fn t35(serial: &SerialConfig) -> Duration {
    if serial.baud > 19200 {
        Duration::from_micros(1750)
    } else {
        Duration::from_secs_f64(3.5 * serial.bits_per_char() as f64 / serial.baud as f64)
    }
}

/// Where the bus is.
#[derive(Debug, Clone)]
pub enum RtuTarget {
    Serial(SerialConfig),
    /// RTU frames over a TCP connection to a serial device server (`host:port`).
    Tcp(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens a serial port (no libudev; any path, ptys included).
pub fn open_serial(s: &SerialConfig) -> std::io::Result<tokio_serial::SerialStream> {
    let builder = tokio_serial::new(&s.port, s.baud)
        .parity(match s.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(if s.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        })
        .stop_bits(if s.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(tokio_serial::FlowControl::None);
    tokio_serial::SerialStream::open(&builder).map_err(std::io::Error::from)
}

/// One RTU bus. `&mut self` keeps exactly one request in flight.
pub struct RtuLink {
    target: RtuTarget,
    name: String,
    connect_timeout: Duration,
    io: Option<Box<dyn Io>>,
    backoff: Backoff,
    retry_at: Option<(Instant, String)>,
    /// Inter-frame silence enforced between frames (zero over TCP: the gateway keeps it).
    t35: Duration,
    /// When the bus last went quiet, and the turnaround of the unit it last talked to.
    last_end: Instant,
    last_turnaround: Duration,
    /// A request to this unit timed out; its reply may still arrive.
    pending_late: Option<u8>,
    /// A late reply (bytes from a timed-out request) was found and discarded: for that unit.
    late: Option<u8>,
}

impl RtuLink {
    pub fn new(target: RtuTarget, connect_timeout: Duration) -> Self {
        let (name, t35) = match &target {
            RtuTarget::Serial(s) => (s.port.clone(), t35(s)),
            RtuTarget::Tcp(a) => (format!("rtu-over-tcp {a}"), Duration::ZERO),
        };
        RtuLink {
            target,
            name,
            connect_timeout,
            io: None,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            retry_at: None,
            t35,
            last_end: Instant::now(),
            last_turnaround: Duration::ZERO,
            pending_late: None,
            late: None,
        }
    }

    pub fn address(&self) -> &str {
        &self.name
    }

    /// The unit whose late reply was discarded since the last call, if any.
    pub fn take_late(&mut self) -> Option<u8> {
        self.late.take()
    }

    async fn open(&mut self) -> Result<(), ReadError> {
        if let Some((at, reason)) = &self.retry_at {
            if Instant::now() < *at {
                return Err(ReadError::Connect(reason.clone()));
            }
        }
        let opened: Result<Box<dyn Io>, String> = match &self.target {
            RtuTarget::Serial(s) => open_serial(s)
                .map(|p| Box::new(p) as Box<dyn Io>)
                .map_err(|e| format!("cannot open {}: {e}", s.port)),
            RtuTarget::Tcp(a) => {
                match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(a))
                    .await
                {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        Ok(Box::new(s) as Box<dyn Io>)
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_string()),
                }
            }
        };
        match opened {
            Ok(io) => {
                if self.retry_at.take().is_some() {
                    tracing::info!(bus = %self.name, "bus open again");
                }
                self.io = Some(io);
                self.last_end = Instant::now();
                Ok(())
            }
            Err(reason) => {
                let delay = self.backoff.next_delay();
                tracing::debug!(bus = %self.name, %reason, ?delay, "open failed");
                self.retry_at = Some((Instant::now() + delay, reason.clone()));
                Err(ReadError::Connect(reason))
            }
        }
    }

    /// Reads `count` registers or bits of `table` at `start` from `unit`, within `timeout`,
    /// keeping t3.5 plus the larger of this unit's and the previous unit's `turnaround` of
    /// silence before the request.
    pub async fn read(&mut self, spec: &ReadSpec) -> Result<Words, ReadError> {
        let (unit, turnaround) = (spec.unit, spec.turnaround);
        if self.io.is_none() {
            self.open().await?;
        }
        let gap = self.t35 + self.last_turnaround.max(turnaround);
        tokio::time::sleep_until(self.last_end + gap).await;
        let result = self.exchange(spec).await;
        self.last_end = Instant::now();
        self.last_turnaround = turnaround;
        match &result {
            Ok(_) | Err(ReadError::Exception(_)) => self.backoff.reset(),
            Err(ReadError::Timeout) => self.pending_late = Some(unit),
            Err(ReadError::Link(reason)) => {
                tracing::debug!(bus = %self.name, %reason, "closing the bus; it is reopened with backoff");
                self.io = None;
                let delay = self.backoff.next_delay();
                self.retry_at = Some((Instant::now() + delay, reason.clone()));
            }
            Err(_) => {}
        }
        result
    }

    async fn exchange(&mut self, spec: &ReadSpec) -> Result<Words, ReadError> {
        let ReadSpec {
            unit,
            table,
            start,
            count,
            timeout,
            ..
        } = *spec;
        let Some(io) = self.io.as_mut() else {
            return Err(ReadError::Connect("not open".into()));
        };
        // Whatever is already waiting is left over from an earlier exchange (a late reply).
        let mut scratch = [0u8; 256];
        let mut stale = 0usize;
        while let Some(r) = io.read(&mut scratch).now_or_never() {
            match r {
                Ok(0) => return Err(ReadError::Link("connection closed by the device".into())),
                Ok(n) => stale += n,
                Err(e) => return Err(ReadError::Link(e.to_string())),
            }
        }
        if stale > 0 {
            tracing::debug!(bus = %self.name, bytes = stale, "discarded a late reply");
            self.late = self.pending_late.or(Some(unit));
        }
        self.pending_late = None;

        let request = read_request(unit, table, start, count);
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, async {
            io.write_all(&request).await?;
            io.flush().await
        })
        .await
        {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Link(format!("write: {e}"))),
            Ok(Ok(())) => {}
        }
        let fc = function_code(table);
        let data_bytes = response_data_bytes(table, count);
        let mut buf: Vec<u8> = Vec::with_capacity(read_response_len(table, count));
        // Silence that ends a frame whose length is unknown (a reply we did not ask for).
        let quiet = self.t35.max(Duration::from_millis(5));
        loop {
            let check = check_frame(&buf, fc, data_bytes);
            if let FrameCheck::Complete(want) = check {
                let extra = buf.len() > want;
                let reply = parse_reply(&buf[..want], unit, table, count);
                if extra || reply.is_err() {
                    self.drain(deadline, quiet).await?;
                }
                return match reply? {
                    Reply::Data(words) => Ok(words),
                    Reply::Exception(code) => {
                        Err(ReadError::Exception(tokio_modbus::ExceptionCode::new(code)))
                    }
                };
            }
            // An incomplete reply waits for its bytes however they are chunked (USB adapters
            // deliver a frame in pieces up to 16 ms apart); only a reply whose length cannot
            // be known ends at the first silence.
            let read_until = if check == FrameCheck::Unframed {
                (Instant::now() + quiet).min(deadline)
            } else {
                deadline
            };
            let Some(io) = self.io.as_mut() else {
                return Err(ReadError::Connect("not open".into()));
            };
            match tokio::time::timeout_at(read_until, io.read(&mut scratch)).await {
                Err(_) if read_until < deadline => {
                    let reply = parse_reply(&buf, unit, table, count);
                    return Err(match reply {
                        Err(e) => e,
                        Ok(_) => ReadError::Frame("unexpected reply".into()),
                    });
                }
                Err(_) => {
                    if !buf.is_empty() {
                        self.pending_late = Some(unit);
                        return Err(ReadError::Frame(format!(
                            "incomplete reply ({} bytes) before the timeout",
                            buf.len()
                        )));
                    }
                    return Err(ReadError::Timeout);
                }
                Ok(Ok(0)) => return Err(ReadError::Link("connection closed by the device".into())),
                Ok(Ok(n)) => buf.extend_from_slice(&scratch[..n]),
                Ok(Err(e)) => return Err(ReadError::Link(format!("read: {e}"))),
            }
        }
    }

    /// Reads and discards until the line has been quiet for `quiet` (or `deadline`), so the
    /// next request starts on a clean bus.
    async fn drain(&mut self, deadline: Instant, quiet: Duration) -> Result<(), ReadError> {
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        let mut scratch = [0u8; 256];
        loop {
            let until = (Instant::now() + quiet).min(deadline);
            match tokio::time::timeout_at(until, io.read(&mut scratch)).await {
                Err(_) => return Ok(()),
                Ok(Ok(0)) => return Err(ReadError::Link("connection closed by the device".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ReadError::Link(format!("read: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_example() {
        // Modbus over Serial Line: 01 03 00 00 00 0A → CRC C5 CD.
        let f = read_request(1, Table::Holding, 0, 10);
        assert_eq!(f, [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]);
        assert!(crc_ok(&f));
        let mut bad = f.clone();
        bad[7] ^= 0xFF;
        assert!(!crc_ok(&bad));
    }

    #[test]
    fn replies_are_checked_and_decoded() {
        let mut f = vec![7, 0x03, 4, 0x12, 0x34, 0xAB, 0xCD];
        push_crc(&mut f);
        assert_eq!(
            parse_reply(&f, 7, Table::Holding, 2),
            Ok(Reply::Data(Words::Registers(vec![0x1234, 0xABCD])))
        );
        assert!(matches!(
            parse_reply(&f, 8, Table::Holding, 2),
            Err(ReadError::Frame(_))
        ));
        assert!(matches!(
            parse_reply(&f, 7, Table::Holding, 3),
            Err(ReadError::Frame(_))
        ));
        let mut bad = f.clone();
        bad[3] ^= 1;
        assert_eq!(parse_reply(&bad, 7, Table::Holding, 2), Err(ReadError::Crc));
        let mut ex = vec![7, 0x83, 2];
        push_crc(&mut ex);
        assert_eq!(
            parse_reply(&ex, 7, Table::Holding, 2),
            Ok(Reply::Exception(2))
        );
        let mut bits = vec![7, 0x01, 2, 0b0000_0101, 0b1];
        push_crc(&mut bits);
        let Ok(Reply::Data(Words::Bits(b))) = parse_reply(&bits, 7, Table::Coil, 9) else {
            panic!("bits");
        };
        assert_eq!(
            b,
            [true, false, true, false, false, false, false, false, true]
        );
        assert_eq!(check_frame(&f[..3], 0x03, 4), FrameCheck::Incomplete);
        assert_eq!(check_frame(&f, 0x03, 4), FrameCheck::Complete(9));
        assert_eq!(check_frame(&f[..2], 0x03, 4), FrameCheck::Incomplete);
        assert_eq!(check_frame(&ex[..2], 0x03, 4), FrameCheck::Incomplete);
        assert_eq!(check_frame(&ex, 0x03, 4), FrameCheck::Complete(5));
        assert_eq!(check_frame(&f, 0x04, 4), FrameCheck::Unframed);
        assert_eq!(check_frame(&f, 0x03, 6), FrameCheck::Unframed);
        // A four-byte frame with a valid CRC used to panic.
        let mut short = vec![7, 0x03];
        push_crc(&mut short);
        assert!(matches!(
            parse_reply(&short, 7, Table::Holding, 2),
            Err(ReadError::Frame(_))
        ));
    }

    /// A valid reply of `count` registers (or bits) from `unit`, with arbitrary data.
    fn reply(unit: u8, table: Table, count: u16, data: &[u8]) -> Vec<u8> {
        let n = response_data_bytes(table, count);
        let mut f = vec![unit, function_code(table), n as u8];
        f.extend((0..n).map(|i| data.get(i).copied().unwrap_or(i as u8)));
        push_crc(&mut f);
        f
    }

    proptest::proptest! {
        /// Every prefix of a valid reply is incomplete, the whole reply is complete, and at no
        /// split point is it taken for anything else.
        #[test]
        fn every_split_point_of_a_valid_reply_is_incomplete_until_it_is_whole(
            unit in 1u8..=247,
            bits in proptest::bool::ANY,
            count in 1u16..=125,
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..250),
            exception in proptest::bool::ANY,
        ) {
            let table = if bits { Table::Coil } else { Table::Holding };
            let fc = function_code(table);
            let n = response_data_bytes(table, count);
            let frame = if exception {
                let mut e = vec![unit, fc | 0x80, 2];
                push_crc(&mut e);
                e
            } else {
                reply(unit, table, count, &data)
            };
            for cut in 0..frame.len() {
                proptest::prop_assert_eq!(check_frame(&frame[..cut], fc, n), FrameCheck::Incomplete, "cut at {}", cut);
            }
            proptest::prop_assert_eq!(check_frame(&frame, fc, n), FrameCheck::Complete(frame.len()));
            let parsed = parse_reply(&frame, unit, table, count);
            proptest::prop_assert!(parsed.is_ok(), "{:?}", parsed);
        }

        /// Random bytes never panic the framer or the parser.
        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            fc in 1u8..=4,
            count in 1u16..=125,
            unit in proptest::num::u8::ANY,
        ) {
            let table = match fc { 1 => Table::Coil, 2 => Table::Discrete, 3 => Table::Holding, _ => Table::Input };
            let n = response_data_bytes(table, count);
            for cut in 0..=bytes.len() {
                if let FrameCheck::Complete(w) = check_frame(&bytes[..cut], fc, n) {
                    proptest::prop_assert!(w <= cut);
                    let _ = parse_reply(&bytes[..w], unit, table, count);
                }
                let _ = parse_reply(&bytes[..cut], unit, table, count);
            }
        }
    }

    #[test]
    fn t35_is_fixed_above_19200_baud() {
        let s = |baud| SerialConfig {
            port: String::new(),
            baud,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
        };
        assert_eq!(t35(&s(115200)), Duration::from_micros(1750));
        let at9600 = t35(&s(9600)).as_secs_f64() * 1000.0;
        assert!((at9600 - 4.01).abs() < 0.01, "{at9600}");
    }
}
