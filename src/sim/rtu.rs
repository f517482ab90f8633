//! The simulator's Modbus RTU side: the units of one bus served on a serial device (a pty in
//! tests) or, as a serial device server would, RTU frames over TCP. Same banks and faults as
//! over TCP, plus `Fault::BadCrc` (replies with a corrupted CRC). Requests for units not on
//! the bus go unanswered, as on a real RS-485 line.

use super::bank::{Bank, Fault};
use super::server::lock;
use crate::config::SerialConfig;
use crate::source::modbus::rtu::{crc_ok, open_serial, push_crc};
use rand::Rng;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_modbus::{Request, Response};

pub type Units = Arc<HashMap<u8, Arc<Mutex<Bank>>>>;

/// Serves the units of one serial port until the task is aborted; reopens the port if it
/// fails.
pub async fn serve_serial(serial: SerialConfig, units: Units, started: Instant) {
    loop {
        match open_serial(&serial) {
            Ok(port) => {
                let end = serve_stream(port, &units, started).await;
                tracing::debug!(port = %serial.port, ?end, "simulated bus ended");
            }
            Err(e) => {
                tracing::warn!(port = %serial.port, error = %e, "simulator cannot open the port")
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Serves RTU-over-TCP connections (a serial device server) to the units of one address.
pub async fn serve_tcp(listener: TcpListener, units: Units, started: Instant) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let units = units.clone();
                tokio::spawn(async move {
                    let end = serve_stream(stream, &units, started).await;
                    tracing::debug!(?end, "simulated rtu-over-tcp connection ended");
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "simulator accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Length of the request frame at the start of `buf`, when it can be known yet.
/// `Err(())` for a function code the simulator does not serve (the buffer is dropped).
fn request_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    let Some(&fc) = buf.get(1) else {
        return Ok(None);
    };
    match fc {
        1..=6 => Ok(Some(8)),
        15 | 16 => Ok(buf.get(6).map(|n| 9 + *n as usize)),
        _ => Err(()),
    }
}

async fn serve_stream<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    units: &Units,
    started: Instant,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut scratch = [0u8; 256];
    loop {
        let n = io.read(&mut scratch).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&scratch[..n]);
        loop {
            let len = match request_len(&buf) {
                Ok(Some(len)) if buf.len() >= len => len,
                Ok(_) => break,
                Err(()) => {
                    buf.clear();
                    break;
                }
            };
            let frame: Vec<u8> = buf.drain(..len).collect();
            if !crc_ok(&frame) {
                // Noise or a frame we joined halfway: wait for the next clean one.
                buf.clear();
                break;
            }
            let Some(bank) = units.get(&frame[0]).cloned() else {
                continue;
            };
            let fault = lock(&bank).fault.clone();
            let reply = match fault {
                Fault::Silent => continue,
                Fault::Drop => return Ok(()),
                Fault::Exception(code) => {
                    let mut r = vec![frame[0], frame[1] | 0x80, code];
                    push_crc(&mut r);
                    r
                }
                Fault::Slow(d) => {
                    tokio::time::sleep(d).await;
                    answer(&bank, &frame, started)
                }
                Fault::None => answer(&bank, &frame, started),
                Fault::Chunked(max) => {
                    let reply = answer(&bank, &frame, started);
                    write_chunked(&mut io, &reply, max).await?;
                    continue;
                }
                Fault::BadCrc | Fault::Garbage => {
                    let mut r = answer(&bank, &frame, started);
                    if let Some(last) = r.last_mut() {
                        *last ^= 0x5A;
                    }
                    r
                }
            };
            io.write_all(&reply).await?;
            io.flush().await?;
        }
    }
}

/// Writes `reply` in random pieces with random pauses of up to `max` between them.
async fn write_chunked<W: AsyncWrite + Unpin>(
    io: &mut W,
    reply: &[u8],
    max: Duration,
) -> std::io::Result<()> {
    let mut at = 0;
    while at < reply.len() {
        let (n, pause) = {
            let mut rng = rand::rng();
            (
                rng.random_range(1..=reply.len() - at),
                Duration::from_micros(rng.random_range(0..=max.as_micros() as u64)),
            )
        };
        io.write_all(&reply[at..at + n]).await?;
        io.flush().await?;
        at += n;
        if at < reply.len() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(())
}

/// The reply frame to one request frame (CRC already checked).
fn answer(bank: &Mutex<Bank>, frame: &[u8], started: Instant) -> Vec<u8> {
    let unit = frame[0];
    let fc = frame[1];
    let word = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
    let (a, n) = (word(2), word(4));
    let request = match fc {
        1 => Request::ReadCoils(a, n),
        2 => Request::ReadDiscreteInputs(a, n),
        3 => Request::ReadHoldingRegisters(a, n),
        4 => Request::ReadInputRegisters(a, n),
        6 => Request::WriteSingleRegister(a, n),
        16 => Request::WriteMultipleRegisters(
            a,
            Cow::Owned(
                frame[7..frame.len() - 2]
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect(),
            ),
        ),
        _ => Request::Custom(fc, Cow::Borrowed(&[])),
    };
    let result = {
        let mut b = lock(bank);
        b.update(started.elapsed().as_secs_f64());
        b.serve(&request)
    };
    let mut r = vec![unit];
    match result {
        Ok(Response::ReadCoils(bits)) | Ok(Response::ReadDiscreteInputs(bits)) => {
            r.push(fc);
            let mut packed = vec![0u8; bits.len().div_ceil(8)];
            for (i, b) in bits.iter().enumerate() {
                if *b {
                    packed[i / 8] |= 1 << (i % 8);
                }
            }
            r.push(packed.len() as u8);
            r.extend_from_slice(&packed);
        }
        Ok(Response::ReadHoldingRegisters(regs)) | Ok(Response::ReadInputRegisters(regs)) => {
            r.push(fc);
            r.push((regs.len() * 2) as u8);
            for w in regs {
                r.extend_from_slice(&w.to_be_bytes());
            }
        }
        Ok(Response::WriteSingleRegister(a, v)) | Ok(Response::WriteMultipleRegisters(a, v)) => {
            r.push(fc);
            r.extend_from_slice(&a.to_be_bytes());
            r.extend_from_slice(&v.to_be_bytes());
        }
        Ok(_) => {
            r.push(fc | 0x80);
            r.push(0x01);
        }
        Err(code) => {
            r.push(fc | 0x80);
            r.push(u8::from(code));
        }
    }
    push_crc(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lengths() {
        assert_eq!(request_len(&[1]), Ok(None));
        assert_eq!(request_len(&[1, 3]), Ok(Some(8)));
        assert_eq!(request_len(&[1, 16, 0, 0, 0, 2]), Ok(None));
        assert_eq!(request_len(&[1, 16, 0, 0, 0, 2, 4]), Ok(Some(13)));
        assert_eq!(request_len(&[1, 0x2B]), Err(()));
    }
}
