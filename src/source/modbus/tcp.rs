//! One Modbus TCP connection to one endpoint (`host:port`), with a timeout on connect and on
//! every request, reconnect with exponential backoff and jitter, and a fresh connection after
//! any timeout or protocol error: tokio-modbus recovers from neither by itself (a late reply
//! would otherwise be taken as the answer to the next request).

use super::link::{ReadError, ReadSpec, Words};
use crate::backoff::Backoff;
use crate::config::Table;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::Slave;

/// A Modbus TCP client for one endpoint; requests are serialized by `&mut self`.
pub struct TcpLink {
    address: String,
    connect_timeout: Duration,
    ctx: Option<Context>,
    backoff: Backoff,
    /// While connecting is failing: no new attempt before this instant.
    retry_at: Option<(Instant, String)>,
}

impl TcpLink {
    pub fn new(address: String, connect_timeout: Duration) -> Self {
        TcpLink {
            address,
            connect_timeout,
            ctx: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            retry_at: None,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    async fn connect(&mut self) -> Result<&mut Context, ReadError> {
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
        Ok(self
            .ctx
            .insert(tokio_modbus::client::tcp::attach_slave(stream, Slave(1))))
    }

    fn connect_failed(&mut self, reason: String) -> ReadError {
        let delay = self.backoff.next_delay();
        tracing::debug!(address = %self.address, %reason, ?delay, "connect failed");
        self.retry_at = Some((Instant::now() + delay, reason.clone()));
        ReadError::Connect(reason)
    }

    /// Drops the connection; the next read connects afresh.
    pub fn disconnect(&mut self) {
        self.ctx = None;
    }

    /// Reads `count` registers or bits of `table` at `start` from `unit`, within `timeout`
    /// (`turnaround` does not apply to TCP).
    pub async fn read(&mut self, spec: &ReadSpec) -> Result<Words, ReadError> {
        let ReadSpec {
            unit,
            table,
            start,
            count,
            timeout,
            ..
        } = *spec;
        let deadline = Instant::now() + timeout;
        let ctx = match self.ctx.as_mut() {
            Some(ctx) => ctx,
            None => self.connect().await?,
        };
        ctx.set_slave(Slave(unit));
        let request = async {
            match table {
                Table::Holding => ctx
                    .read_holding_registers(start, count)
                    .await
                    .map(|r| r.map(Words::Registers)),
                Table::Input => ctx
                    .read_input_registers(start, count)
                    .await
                    .map(|r| r.map(Words::Registers)),
                Table::Coil => ctx
                    .read_coils(start, count)
                    .await
                    .map(|r| r.map(Words::Bits)),
                Table::Discrete => ctx
                    .read_discrete_inputs(start, count)
                    .await
                    .map(|r| r.map(Words::Bits)),
            }
        };
        let result = match tokio::time::timeout_at(deadline, request).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Link(describe_link_error(&e))),
            Ok(Ok(Err(code))) => Err(ReadError::Exception(code)),
            // A reply must carry what was asked: never more (a peer does not decide how much
            // we keep), never less.
            Ok(Ok(Ok(Words::Registers(r)))) if r.len() != count as usize => Err(ReadError::Frame(
                format!("{} registers in reply to {count}", r.len()),
            )),
            Ok(Ok(Ok(Words::Bits(b))))
                if b.len() < count as usize || b.len() > count as usize + 7 =>
            {
                Err(ReadError::Frame(format!(
                    "{} bits in reply to {count}",
                    b.len()
                )))
            }
            Ok(Ok(Ok(words))) => Ok(words),
        };
        match &result {
            Ok(_) => self.backoff.reset(),
            Err(ReadError::Exception(_)) => self.backoff.reset(),
            Err(_) => self.disconnect(),
        }
        result
    }
}

/// tokio-modbus reports a connection the device closed as `io::Error::last_os_error()`,
/// whose text is whatever errno happened to be ("Operation now in progress"). Say what it is.
fn describe_link_error(e: &tokio_modbus::Error) -> String {
    if let tokio_modbus::Error::Transport(io) = e {
        // 0: no error; 11: EAGAIN; 115: EINPROGRESS: the leftovers of an end-of-stream.
        if matches!(io.raw_os_error(), Some(0) | Some(11) | Some(115))
            || io.kind() == std::io::ErrorKind::UnexpectedEof
        {
            return "connection closed by the device".to_string();
        }
        if io.kind() == std::io::ErrorKind::ConnectionReset {
            return "connection reset by the device".to_string();
        }
    }
    e.to_string()
}
