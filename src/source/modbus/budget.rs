//! The bus budget (pure): how long each request occupies an RTU bus, and whether the poll
//! intervals configured for a bus fit in what it can carry.
//!
//! One request = request frame + t3.5 + the unit's turnaround + response frame + t3.5, each
//! frame taking bytes × bits per character / baud (reference: robots-drives-modbus.md §6.3).

use super::plan::PollGroup;
use super::rtu::{read_response_len, t35};
use crate::config::{SerialConfig, Table};
use std::time::Duration;

/// Bytes of an RTU read request: unit, function, start, count, CRC.
pub const READ_REQUEST_BYTES: usize = 8;

/// Wire time of one read of `count` registers or bits on `serial`.
pub fn request_time(
    serial: &SerialConfig,
    table: Table,
    count: u16,
    turnaround: Duration,
) -> Duration {
    let bytes = READ_REQUEST_BYTES + read_response_len(table, count);
    let frames =
        Duration::from_secs_f64(bytes as f64 * serial.bits_per_char() as f64 / serial.baud as f64);
    frames + t35(serial) * 2 + turnaround
}

/// One device's share of a bus: its poll groups and turnaround.
pub struct DeviceLoad<'a> {
    pub groups: &'a [PollGroup],
    pub turnaround: Duration,
}

/// What a bus must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct BusBudget {
    /// Wire time of one cycle: every request of every group of every device once.
    pub cycle: Duration,
    /// Wire time needed per second at the configured intervals (1.0 = the bus is full).
    pub load: f64,
    /// The shortest poll interval on the bus.
    pub shortest: Duration,
}

impl BusBudget {
    /// True when the configured rates need more than the bus can carry.
    pub fn overloaded(&self) -> bool {
        self.load > 1.0
    }
}

pub fn bus_budget(serial: &SerialConfig, devices: &[DeviceLoad<'_>]) -> BusBudget {
    let mut cycle = Duration::ZERO;
    let mut load = 0.0;
    let mut shortest = Duration::MAX;
    for d in devices {
        for g in d.groups {
            let per_cycle: Duration = g
                .requests
                .iter()
                .map(|r| request_time(serial, r.table, r.count, d.turnaround))
                .sum();
            cycle += per_cycle;
            // A group polled back to back (interval 0) takes the whole bus.
            load += per_cycle.as_secs_f64() / g.interval.max(per_cycle).as_secs_f64().max(1e-9);
            shortest = shortest.min(g.interval);
        }
    }
    BusBudget {
        cycle,
        load,
        shortest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Parity;
    use crate::source::modbus::plan::ReadRequest;

    fn line(baud: u32) -> SerialConfig {
        SerialConfig {
            port: "/dev/ttyS0".into(),
            baud,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
        }
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    #[test]
    fn worked_examples_of_the_reference_table() {
        let t = Duration::from_millis(2);
        // (baud, registers, turnaround, cycle in ms) from robots-drives-modbus.md §6.3.
        let cases = [
            (9600, 10, t, 47.8),
            (9600, 30, t, 93.7),
            (9600, 125, t, 311.0),
            (19200, 10, t, 24.9),
            (19200, 10, Duration::from_millis(10), 32.9),
            (38400, 10, t, 15.0),
            (57600, 10, t, 11.8),
            (115200, 10, t, 8.65),
            (115200, 10, Duration::from_millis(10), 16.7),
            (115200, 125, t, 30.6),
        ];
        for (baud, regs, turnaround, want) in cases {
            let got = ms(request_time(&line(baud), Table::Holding, regs, turnaround));
            assert!(
                (got - want).abs() <= want * 0.01,
                "{baud} baud, {regs} registers: {got:.2} ms, want {want} ms"
            );
        }
    }

    #[test]
    fn eight_n_one_is_ten_bits_per_character() {
        let mut s = line(9600);
        s.parity = Parity::None;
        assert_eq!(s.bits_per_char(), 10);
        // 33 bytes x 10 bits at 9600 = 34.4 ms + 2 x t3.5 (3.65 ms) + 2 ms.
        let got = ms(request_time(
            &s,
            Table::Holding,
            10,
            Duration::from_millis(2),
        ));
        assert!((got - 43.7).abs() < 0.1, "{got}");
    }

    #[test]
    fn load_is_wire_time_over_interval() {
        let group = |interval_ms: u64, count: u16| PollGroup {
            interval: Duration::from_millis(interval_ms),
            requests: vec![ReadRequest {
                table: Table::Holding,
                start: 0,
                count,
                fields: Vec::new(),
            }],
        };
        let fast = [group(100, 10)];
        let slow = [group(1000, 10)];
        let two_ms = Duration::from_millis(2);
        let devices: Vec<DeviceLoad> = (0..6)
            .map(|i| DeviceLoad {
                groups: if i < 3 { &fast } else { &slow },
                turnaround: two_ms,
            })
            .collect();
        // 9600 baud: 47.8 ms per request; 3 at 10/s + 3 at 1/s = 33 requests/s = 158 % of the bus.
        let b = bus_budget(&line(9600), &devices);
        assert!((ms(b.cycle) - 6.0 * 47.84).abs() < 1.0, "{:?}", b.cycle);
        assert!((b.load - 33.0 * 0.04784).abs() < 0.01, "{}", b.load);
        assert!(b.overloaded());
        assert_eq!(b.shortest, Duration::from_millis(100));
        // 115200 baud: 8.65 ms per request: 29 % of the bus.
        let b = bus_budget(&line(115200), &devices);
        assert!((b.load - 33.0 * 0.00865).abs() < 0.01, "{}", b.load);
        assert!(!b.overloaded());
    }
}
