//! One simulated unit's register map, its signals and its injected fault.

use super::signal::{Signal, Wave};
use crate::config::{DeviceConfig, Table};
use std::time::Duration;
use tokio_modbus::{ExceptionCode, Request, Response};

/// A fault injected into a simulated device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Answer, but only after this delay.
    Slow(Duration),
    /// Never answer (the request is swallowed).
    Silent,
    /// Answer every read with this Modbus exception code.
    Exception(u8),
    /// Close the connection when the next request arrives (and every connection after).
    /// On a serial bus there is no connection: the request goes unanswered.
    Drop,
    /// RTU: answer with a corrupted CRC (over Modbus TCP, which has no CRC: answer normally).
    BadCrc,
    /// Modbus TCP: answer with mangled frames (random bytes, truncated, or longer than their
    /// header says), to fuzz the client's response path (on RTU: like `badcrc`).
    Garbage,
    /// RTU: write each reply in random pieces with random pauses up to this long between
    /// them, the way USB–RS-485 adapters deliver a frame (over Modbus TCP: answer normally).
    Chunked(Duration),
}

impl std::str::FromStr for Fault {
    type Err = String;
    /// `none`, `slow 300ms`, `silent`, `exception 4`, `drop`, `badcrc`, `garbage`, `chunked 16ms`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("none"), None) => Ok(Fault::None),
            (Some("silent"), None) => Ok(Fault::Silent),
            (Some("drop"), None) => Ok(Fault::Drop),
            (Some("badcrc"), None) => Ok(Fault::BadCrc),
            (Some("garbage"), None) => Ok(Fault::Garbage),
            (Some("slow"), Some(d)) => crate::config::units::parse_duration(d).map(Fault::Slow),
            (Some("chunked"), Some(d)) => {
                crate::config::units::parse_duration(d).map(Fault::Chunked)
            }
            (Some("exception"), Some(c)) => c
                .parse::<u8>()
                .map(Fault::Exception)
                .map_err(|_| format!("bad exception code {c:?}")),
            _ => Err(format!(
                "unknown fault {s:?}: use none | slow DURATION | silent | exception CODE | drop | badcrc | garbage | chunked DURATION"
            )),
        }
    }
}

/// A unit's four tables, sized to the highest address its points use.
#[derive(Debug)]
pub struct Bank {
    pub holding: Vec<u16>,
    pub input: Vec<u16>,
    pub coils: Vec<bool>,
    pub discrete: Vec<bool>,
    pub signals: Vec<Signal>,
    /// A frozen bank keeps the registers it was given (tests write exact values).
    pub frozen: bool,
    pub fault: Fault,
    /// TCP connections accepted for this unit so far (a reload test checks that an unchanged
    /// device keeps its connection).
    pub connections: u64,
}

impl Bank {
    pub fn for_device(d: &DeviceConfig) -> Bank {
        let mut size = [1usize; 4];
        let mut signals = Vec::new();
        for p in d.points.iter().filter(|p| p.is_read()) {
            let r = crate::source::modbus::config::reg(p);
            let end = r.address as usize + r.span(p.count) as usize;
            let i = table_index(r.table);
            size[i] = size[i].max(end);
            for e in 0..p.count {
                signals.push(Signal {
                    table: r.table,
                    address: r.address + e * r.width,
                    kind: p.kind,
                    order: r.order,
                    bit: r.bit,
                    byte: r.byte,
                    width: r.width,
                    scale: p.scale,
                    offset: p.offset,
                    wave: Wave::of(p, e + 1, &d.id),
                });
            }
        }
        Bank {
            holding: vec![0; size[0]],
            input: vec![0; size[1]],
            coils: vec![false; size[2]],
            discrete: vec![false; size[3]],
            signals,
            frozen: false,
            fault: Fault::None,
            connections: 0,
        }
    }

    /// Moves every signal to time `t` (seconds since start).
    pub fn update(&mut self, t: f64) {
        if self.frozen {
            return;
        }
        for s in &self.signals {
            let v = s.wave.value(t);
            let a = s.address as usize;
            match s.table {
                Table::Holding | Table::Input => {
                    let regs = if s.table == Table::Holding {
                        &mut self.holding
                    } else {
                        &mut self.input
                    };
                    if let Some(slot) = regs.get_mut(a..a + s.width as usize) {
                        s.encode(v, slot);
                    }
                }
                Table::Coil | Table::Discrete => {
                    let bits = if s.table == Table::Coil {
                        &mut self.coils
                    } else {
                        &mut self.discrete
                    };
                    if let Some(b) = bits.get_mut(a) {
                        *b = v != 0.0;
                    }
                }
            }
        }
    }

    /// Answers one request from the bank (reads, and writes for tests and future write support).
    pub fn serve(&mut self, req: &Request<'_>) -> Result<Response, ExceptionCode> {
        fn slice<T: Clone>(v: &[T], a: u16, n: u16) -> Result<Vec<T>, ExceptionCode> {
            v.get(a as usize..a as usize + n as usize)
                .map(|s| s.to_vec())
                .ok_or(ExceptionCode::IllegalDataAddress)
        }
        match req {
            Request::ReadHoldingRegisters(a, n) => {
                slice(&self.holding, *a, *n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, n) => {
                slice(&self.input, *a, *n).map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(a, n) => slice(&self.coils, *a, *n).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => {
                slice(&self.discrete, *a, *n).map(Response::ReadDiscreteInputs)
            }
            Request::WriteSingleRegister(a, v) => {
                let slot = self
                    .holding
                    .get_mut(*a as usize)
                    .ok_or(ExceptionCode::IllegalDataAddress)?;
                *slot = *v;
                Ok(Response::WriteSingleRegister(*a, *v))
            }
            Request::WriteMultipleRegisters(a, vs) => {
                let slots = self
                    .holding
                    .get_mut(*a as usize..*a as usize + vs.len())
                    .ok_or(ExceptionCode::IllegalDataAddress)?;
                slots.copy_from_slice(vs);
                Ok(Response::WriteMultipleRegisters(*a, vs.len() as u16))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    /// Sets registers directly (tests); freezes the bank so the motion does not overwrite them.
    pub fn set_registers(&mut self, table: Table, address: u16, words: &[u16]) -> bool {
        self.frozen = true;
        let regs = match table {
            Table::Holding => &mut self.holding,
            Table::Input => &mut self.input,
            _ => return false,
        };
        match regs.get_mut(address as usize..address as usize + words.len()) {
            Some(s) => {
                s.copy_from_slice(words);
                true
            }
            None => false,
        }
    }

    pub fn set_bits(&mut self, table: Table, address: u16, bits: &[bool]) -> bool {
        self.frozen = true;
        let v = match table {
            Table::Coil => &mut self.coils,
            Table::Discrete => &mut self.discrete,
            _ => return false,
        };
        match v.get_mut(address as usize..address as usize + bits.len()) {
            Some(s) => {
                s.copy_from_slice(bits);
                true
            }
            None => false,
        }
    }
}

fn table_index(t: Table) -> usize {
    match t {
        Table::Holding => 0,
        Table::Input => 1,
        Table::Coil => 2,
        Table::Discrete => 3,
    }
}
