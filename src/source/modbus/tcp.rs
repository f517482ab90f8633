//! One Modbus TCP connection to one endpoint (`host:port`): connect with a timeout, reconnect
//! with exponential backoff and jitter, and a fresh connection after any timeout or protocol
//! error (a late reply must never be taken as the answer to the next request).
//!
//! The framing is our own (decision 0011): one 12-byte write per request and, usually, one
//! read per reply, into a fixed 260-byte buffer owned by the link, so a request allocates
//! nothing but its result and a connection costs a few hundred bytes instead of the 16 KiB of
//! a general framed codec (3 MB at 200 devices). The reply is checked against the request:
//! transaction id, protocol id, unit, function, byte count; anything else is a framing error.

use super::link::{ReadError, ReadSpec, Words};
use super::rtu::{decode_words, function_code, response_data_bytes};
use crate::backoff::Backoff;
use crate::config::Table;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// MBAP header (7 bytes) + the longest PDU (253 bytes).
const MAX_ADU: usize = 260;

/// A Modbus TCP client for one endpoint; requests are serialized by `&mut self`.
pub struct TcpLink {
    address: String,
    connect_timeout: Duration,
    stream: Option<TcpStream>,
    backoff: Backoff,
    /// While connecting is failing: no new attempt before this instant.
    retry_at: Option<(Instant, String)>,
    /// The transaction id of the last request.
    tid: u16,
    buf: [u8; MAX_ADU],
}

impl TcpLink {
    pub fn new(address: String, connect_timeout: Duration) -> Self {
        TcpLink {
            address,
            connect_timeout,
            stream: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            retry_at: None,
            tid: 0,
            buf: [0; MAX_ADU],
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    async fn connect(&mut self) -> Result<(), ReadError> {
        if let Some((at, reason)) = &self.retry_at {
            if Instant::now() < *at {
                return Err(ReadError::Connect(reason.clone()));
            }
        }
        let attempt =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address)).await;
        let stream = match attempt {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.connect_failed(e.to_string())),
            Err(_) => return Err(self.connect_failed("timed out".to_string())),
        };
        // Nagle + delayed ACK would cap a request/response loop near 20-40 ms per request.
        let _ = stream.set_nodelay(true);
        self.retry_at = None;
        self.stream = Some(stream);
        Ok(())
    }

    fn connect_failed(&mut self, reason: String) -> ReadError {
        let delay = self.backoff.next_delay();
        tracing::debug!(address = %self.address, %reason, ?delay, "connect failed");
        self.retry_at = Some((Instant::now() + delay, reason.clone()));
        ReadError::Connect(reason)
    }

    /// Drops the connection; the next read connects afresh.
    pub fn disconnect(&mut self) {
        self.stream = None;
    }

    /// Reads `count` registers or bits of `table` at `start` from `unit`, within `timeout`
    /// (`turnaround` does not apply to TCP).
    pub async fn read(&mut self, spec: &ReadSpec) -> Result<Words, ReadError> {
        let deadline = Instant::now() + spec.timeout;
        if self.stream.is_none() {
            self.connect().await?;
        }
        self.tid = self.tid.wrapping_add(1);
        let request = request(self.tid, spec.unit, spec.table, spec.start, spec.count);
        let result = match self.stream.as_mut() {
            None => Err(ReadError::Link("not connected".to_string())),
            Some(stream) => {
                let exchange = exchange(stream, &request, &mut self.buf);
                match tokio::time::timeout_at(deadline, exchange).await {
                    Err(_) => Err(ReadError::Timeout),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                        Err(ReadError::Frame(e.to_string()))
                    }
                    Ok(Err(e)) => Err(ReadError::Link(describe(&e))),
                    Ok(Ok(len)) => parse_reply(&self.buf[..len], self.tid, spec),
                }
            }
        };
        match &result {
            Ok(_) | Err(ReadError::Exception(_)) => self.backoff.reset(),
            Err(_) => self.disconnect(),
        }
        result
    }
}

/// The 12-byte read request: MBAP header (transaction, protocol 0, length 6, unit) and PDU.
pub fn request(tid: u16, unit: u8, table: Table, start: u16, count: u16) -> [u8; 12] {
    let [t0, t1] = tid.to_be_bytes();
    let [s0, s1] = start.to_be_bytes();
    let [c0, c1] = count.to_be_bytes();
    [
        t0,
        t1,
        0,
        0,
        0,
        6,
        unit,
        function_code(table),
        s0,
        s1,
        c0,
        c1,
    ]
}

/// Sends `request` and reads one whole reply into `buf`; returns its length. A reply whose
/// length field is impossible, or bytes beyond the reply, are an error (the connection is
/// then dropped: its byte stream can no longer be trusted).
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut [u8; MAX_ADU],
) -> std::io::Result<usize> {
    stream.write_all(request).await?;
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        match frame_len(&buf[..filled]) {
            FrameLen::Incomplete => continue,
            FrameLen::Complete(len) if len == filled => return Ok(len),
            FrameLen::Complete(_) => return Err(invalid("bytes beyond the reply")),
            FrameLen::Invalid(why) => return Err(invalid(why)),
        }
    }
}

fn invalid(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// How much of a reply has arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameLen {
    Incomplete,
    /// The reply is this many bytes.
    Complete(usize),
    Invalid(&'static str),
}

/// The length of the reply at the start of `buf`, from its MBAP length field. Pure: any bytes
/// give an answer, never a panic.
pub fn frame_len(buf: &[u8]) -> FrameLen {
    let Some(len) = buf.get(4..6) else {
        return FrameLen::Incomplete;
    };
    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
    // Unit + function + at least one more byte, and no more than the largest PDU.
    if !(3..=MAX_ADU - 6).contains(&len) {
        return FrameLen::Invalid("impossible length field");
    }
    if buf.len() >= 6 + len {
        FrameLen::Complete(6 + len)
    } else {
        FrameLen::Incomplete
    }
}

/// Checks a whole reply against the request (transaction `tid`, `spec`) and decodes it. Any
/// bytes give a result, never a panic.
pub fn parse_reply(adu: &[u8], tid: u16, spec: &ReadSpec) -> Result<Words, ReadError> {
    let frame = |why: String| Err(ReadError::Frame(why));
    if adu.len() < 9 {
        return frame(format!("short reply ({} bytes)", adu.len()));
    }
    let got_tid = u16::from_be_bytes([adu[0], adu[1]]);
    if got_tid != tid {
        return frame(format!("transaction {got_tid} in reply to {tid}"));
    }
    if adu[2] != 0 || adu[3] != 0 {
        return frame("not a Modbus reply (protocol id is not 0)".to_string());
    }
    if adu[6] != spec.unit {
        return frame(format!(
            "reply from unit {} (asked unit {})",
            adu[6], spec.unit
        ));
    }
    let fc = function_code(spec.table);
    let pdu = &adu[7..];
    if pdu[0] == fc | 0x80 {
        return Err(ReadError::Exception(tokio_modbus::ExceptionCode::new(
            pdu[1],
        )));
    }
    if pdu[0] != fc {
        return frame(format!("function {:#04x} in reply to {fc:#04x}", pdu[0]));
    }
    let want = response_data_bytes(spec.table, spec.count);
    let data = &pdu[2..];
    if pdu[1] as usize != want || data.len() != want {
        return frame(format!(
            "{} data bytes for {} {}",
            data.len(),
            spec.count,
            spec.table.as_str()
        ));
    }
    Ok(decode_words(spec.table, spec.count, data))
}

/// What an I/O error on the connection means, in words a person can act on.
fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "connection closed by the device".to_string(),
        std::io::ErrorKind::ConnectionReset => "connection reset by the device".to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(table: Table, count: u16) -> ReadSpec {
        ReadSpec {
            unit: 7,
            table,
            start: 100,
            count,
            timeout: Duration::from_secs(1),
            turnaround: Duration::ZERO,
        }
    }

    fn reply(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut a = tid.to_be_bytes().to_vec();
        a.extend_from_slice(&[0, 0]);
        a.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
        a.push(unit);
        a.extend_from_slice(pdu);
        a
    }

    #[test]
    fn the_request_is_the_spec_example() {
        // Modbus Messaging on TCP/IP V1.0b, read holding registers 108.. (3) from unit 0x11.
        assert_eq!(
            request(0x0001, 0x11, Table::Holding, 0x006B, 3),
            [0, 1, 0, 0, 0, 6, 0x11, 3, 0, 0x6B, 0, 3]
        );
        assert_eq!(request(9, 1, Table::Coil, 0, 16)[7], 1);
        assert_eq!(request(9, 1, Table::Discrete, 0, 16)[7], 2);
        assert_eq!(request(9, 1, Table::Input, 0, 16)[7], 4);
    }

    #[test]
    fn replies_are_checked_against_the_request() {
        let s = spec(Table::Holding, 2);
        let ok = reply(5, 7, &[3, 4, 0x12, 0x34, 0xAB, 0xCD]);
        assert_eq!(frame_len(&ok), FrameLen::Complete(ok.len()));
        assert_eq!(
            parse_reply(&ok, 5, &s),
            Ok(Words::Registers(vec![0x1234, 0xABCD]))
        );
        for (bad, what) in [
            (reply(6, 7, &[3, 4, 0, 0, 0, 0]), "transaction"),
            (reply(5, 8, &[3, 4, 0, 0, 0, 0]), "unit 8"),
            (reply(5, 7, &[4, 4, 0, 0, 0, 0]), "function"),
            (reply(5, 7, &[3, 2, 0, 0]), "data bytes"),
        ] {
            match parse_reply(&bad, 5, &s) {
                Err(ReadError::Frame(why)) => assert!(why.contains(what), "{why}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        assert_eq!(
            parse_reply(&reply(5, 7, &[0x83, 2]), 5, &s),
            Err(ReadError::Exception(tokio_modbus::ExceptionCode::new(2)))
        );
        let bits = reply(5, 7, &[1, 2, 0b0000_0101, 0b1]);
        assert_eq!(
            parse_reply(&bits, 5, &spec(Table::Coil, 9)),
            Ok(Words::Bits(vec![
                true, false, true, false, false, false, false, false, true
            ]))
        );
    }

    #[test]
    fn lengths_are_read_from_the_header() {
        let ok = reply(1, 7, &[3, 2, 0, 1]);
        for cut in 0..ok.len() {
            assert_eq!(frame_len(&ok[..cut]), FrameLen::Incomplete, "{cut}");
        }
        assert_eq!(
            frame_len(&[0, 1, 0, 0, 0, 1, 7]),
            FrameLen::Invalid("impossible length field")
        );
        assert_eq!(
            frame_len(&[0, 1, 0, 0, 1, 0, 7]),
            FrameLen::Invalid("impossible length field")
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), count in 1u16..200) {
            let _ = frame_len(&bytes);
            let _ = parse_reply(&bytes, 1, &spec(Table::Holding, count));
            let _ = parse_reply(&bytes, 1, &spec(Table::Coil, count));
        }
    }
}
