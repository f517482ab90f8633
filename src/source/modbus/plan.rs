//! The read planner (pure): groups a device's points by table and poll interval and merges
//! them into the fewest read requests within `max_registers` (2000 bits for coils and discrete
//! inputs), spanning at most `max_gap` unused registers. Computed once at start-up.

use crate::config::{DeviceConfig, ModbusDevice, PointType, Table, WordOrder};
use std::time::Duration;

/// Most bits one FC01/FC02 request may read (Modbus spec).
pub const MAX_BITS: u16 = 2000;

/// How to turn the words of one request into one value.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The catalog point id the value is reported under.
    pub point: u32,
    /// Offset of the value's first register (or bit) from the request's start.
    pub offset: u16,
    pub kind: PointType,
    pub order: WordOrder,
    pub bit: Option<u8>,
    /// u8 / i8: which byte; strings: one character per register, from this byte.
    pub byte: Option<crate::config::ByteHalf>,
    /// Registers the value spans.
    pub width: u16,
    /// Scaled points only (`scale` or `offset` set): boxed, so the plan of a line of 20,000
    /// plain points keeps 24 bytes a value, not 48 (issue 22).
    pub scaling: Option<Box<Scaling>>,
}

/// `raw * scale + add`, as a scaled point is decoded (`decode::apply_scale`).
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub scale: f64,
    /// `1/scale` when that is a whole number (scale 0.1, 0.001 …): dividing by it gives the
    /// decimal value users expect (62.9, not 62.900000000000006); 0 when not used.
    pub divisor: f64,
    pub add: f64,
}

impl Scaling {
    pub fn new(scale: f64, add: f64) -> Scaling {
        Scaling {
            scale,
            divisor: scale_divisor(scale),
            add,
        }
    }
}

/// The whole-number reciprocal of a decimal scale such as 0.1 or 0.001, if it has one.
pub fn scale_divisor(scale: f64) -> f64 {
    if scale == 0.0 || scale.abs() >= 1.0 {
        return 0.0;
    }
    let r = 1.0 / scale;
    if (r - r.round()).abs() < 1e-9 * r.abs() {
        r.round()
    } else {
        0.0
    }
}

/// One Modbus read request and the values it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRequest {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    pub fields: Vec<Field>,
}

/// Requests that are due together at one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct PollGroup {
    pub interval: Duration,
    pub requests: Vec<ReadRequest>,
}

/// One value to read, before merging.
struct Item {
    table: Table,
    interval: Duration,
    start: u32,
    end: u32,
    field: Field,
}

/// Plans a device's reads. `ids` holds the catalog id of every value: each point's elements
/// in turn, in config order (what `source::describe::points` registers).
pub fn plan_reads(device: &DeviceConfig, bus: &ModbusDevice, ids: &[u32]) -> Vec<PollGroup> {
    let mut items = Vec::new();
    let mut ids = ids.iter().copied();
    for p in &device.points {
        let r = super::config::reg(p);
        for e in 0..p.count {
            let Some(id) = ids.next() else {
                break;
            };
            if !p.is_read() {
                // Derived: computed in the transform stage from the values read.
                continue;
            }
            let start = r.address as u32 + e as u32 * r.width as u32;
            items.push(Item {
                table: r.table,
                interval: p.poll,
                start,
                end: start + r.width as u32,
                field: Field {
                    point: id,
                    offset: 0,
                    kind: p.kind,
                    order: r.order,
                    bit: r.bit,
                    byte: r.byte,
                    width: r.width,
                    scaling: p
                        .is_scaled()
                        .then(|| Box::new(Scaling::new(p.scale, p.offset))),
                },
            });
        }
    }
    items.sort_by_key(|i| (i.interval, i.table, i.start, i.end));

    let mut groups: Vec<PollGroup> = Vec::new();
    let mut current: Option<(Duration, ReadRequest)> = None;
    for item in items {
        let limit = if item.table.is_bits() {
            MAX_BITS as u32
        } else {
            bus.max_registers as u32
        };
        let gap = if item.table.is_bits() {
            // Bits are cheap: a gap of max_gap registers is 16× as many bits.
            bus.max_gap as u32 * 16
        } else {
            bus.max_gap as u32
        };
        if let Some((interval, req)) = &mut current {
            let req_end = req.start as u32 + req.count as u32;
            let fits = *interval == item.interval
                && req.table == item.table
                && item.start <= req_end + gap
                && item.end.max(req_end) - req.start as u32 <= limit;
            if fits {
                req.count = (item.end.max(req_end) - req.start as u32) as u16;
                let mut f = item.field;
                f.offset = (item.start - req.start as u32) as u16;
                req.fields.push(f);
                continue;
            }
            let (interval, req) = current.take().expect("current is Some in this branch");
            push(&mut groups, interval, req);
        }
        let mut f = item.field;
        f.offset = 0;
        current = Some((
            item.interval,
            ReadRequest {
                table: item.table,
                start: item.start as u16,
                count: (item.end - item.start) as u16,
                fields: vec![f],
            },
        ));
    }
    if let Some((interval, req)) = current {
        push(&mut groups, interval, req);
    }
    groups
}

fn push(groups: &mut Vec<PollGroup>, interval: Duration, req: ReadRequest) {
    match groups.iter_mut().find(|g| g.interval == interval) {
        Some(g) => g.requests.push(req),
        None => groups.push(PollGroup {
            interval,
            requests: vec![req],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn device(points: &str, extra: &str) -> DeviceConfig {
        let text = format!("[line]\nid='l'\n[[devices]]\nid='d'\naddress='127.0.0.1:502'\npoll='1s'\n{extra}\n{points}");
        config::parse("t.toml", &text).unwrap().devices.remove(0)
    }

    fn ids(d: &DeviceConfig) -> Vec<u32> {
        let n: u32 = d.points.iter().map(|p| p.count as u32).sum();
        (0..n).collect()
    }

    fn shape(groups: &[PollGroup]) -> Vec<(u64, Table, u16, u16, usize)> {
        groups
            .iter()
            .flat_map(|g| {
                g.requests.iter().map(move |r| {
                    (
                        g.interval.as_millis() as u64,
                        r.table,
                        r.start,
                        r.count,
                        r.fields.len(),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn merges_within_gap_and_splits_beyond() {
        let d = device(
            "[[devices.points]]\nname='a'\naddress=0\n\
             [[devices.points]]\nname='b'\naddress=10\ntype='f32'\n\
             [[devices.points]]\nname='c'\naddress=40\n",
            "max_gap=16",
        );
        let g = plan_reads(&d, d.settings().unwrap(), &ids(&d));
        assert_eq!(
            shape(&g),
            vec![
                (1000, Table::Holding, 0, 12, 2),
                (1000, Table::Holding, 40, 1, 1)
            ]
        );
        assert_eq!(g[0].requests[0].fields[1].offset, 10);
    }

    #[test]
    fn splits_at_max_registers_and_by_table_and_interval() {
        let d = device(
            "[[devices.points]]\nname='arr'\naddress=0\ntype='f32'\ncount=100\nindex_tag='i'\n\
             [[devices.points]]\nname='in'\ntable='input'\naddress=0\n\
             [[devices.points]]\nname='slow'\naddress=500\npoll='5s'\n\
             [[devices.points]]\nname='c1'\ntable='coil'\naddress=0\n\
             [[devices.points]]\nname='c2'\ntable='coil'\naddress=100\n",
            "",
        );
        let g = plan_reads(&d, d.settings().unwrap(), &ids(&d));
        assert_eq!(
            shape(&g),
            vec![
                (1000, Table::Holding, 0, 124, 62),
                (1000, Table::Holding, 124, 76, 38),
                (1000, Table::Input, 0, 1, 1),
                (1000, Table::Coil, 0, 101, 2),
                (5000, Table::Holding, 500, 1, 1),
            ]
        );
        // Array elements get consecutive ids.
        assert_eq!(g[0].requests[1].fields[0].point, 62);
    }

    #[test]
    fn bit_points_share_a_register() {
        let d = device(
            "[[devices.points]]\nname='word'\naddress=7\n\
             [[devices.points]]\nname='b0'\naddress=7\ntype='bool'\nbit=0\n\
             [[devices.points]]\nname='b15'\naddress=7\ntype='bool'\nbit=15\n",
            "",
        );
        let g = plan_reads(&d, d.settings().unwrap(), &ids(&d));
        assert_eq!(shape(&g), vec![(1000, Table::Holding, 7, 1, 3)]);
    }

    #[test]
    fn respects_small_max_registers() {
        let d = device(
            "[[devices.points]]\nname='a'\naddress=0\ncount=10\n",
            "max_registers=4",
        );
        let g = plan_reads(&d, d.settings().unwrap(), &ids(&d));
        assert_eq!(
            shape(&g),
            vec![
                (1000, Table::Holding, 0, 4, 4),
                (1000, Table::Holding, 4, 4, 4),
                (1000, Table::Holding, 8, 2, 2)
            ]
        );
    }
}
