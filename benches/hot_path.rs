//! The hot path without I/O: decode Modbus registers → normalized samples → line protocol.
//! Run: `cargo bench --bench hot_path`. Throughput is reported in values (samples) per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use linetap::config;
use linetap::model::catalog::{tags, Registry};
use linetap::model::{Quality, Sample, SampleBatch};
use linetap::sink::lineproto::{LineEncoder, Skipped};
use linetap::source::modbus;
use linetap::source::modbus::decode::decode_field;
use std::hint::black_box;

/// One device with 100 f32 values (the bench/e2e workload): 200 registers, two requests.
fn workload() -> (config::Config, Vec<u16>) {
    let text =
        "[line]\nid='bench'\nsite='lab'\n[[devices]]\nid='robot-01'\nkind='robot'\ncell='cell-1'\naddress='127.0.0.1:502'\npoll='100ms'\n\
                [[devices.points]]\nname='value'\nmeasurement='joint'\naddress=0\ntype='f32'\ncount=100\nindex_tag='axis'\n";
    let cfg = config::parse("bench.toml", text).expect("bench config");
    let regs: Vec<u16> = (0..250u32)
        .flat_map(|i| {
            let b = (i as f32 * 0.37 + 12.5).to_bits();
            [(b >> 16) as u16, b as u16]
        })
        .collect();
    (cfg, regs)
}

fn hot_path(c: &mut Criterion) {
    let (cfg, regs) = workload();
    let mut registry = Registry::new("bench", "lab", tags(&cfg.line.tags), None);
    let (device, bus) = modbus::devices(&cfg).next().expect("the workload's device");
    let plan = modbus::register(device, bus, &mut registry);
    let groups = plan.groups;
    let encoder = LineEncoder::new(&registry.version().catalog);
    let values: usize = groups
        .iter()
        .flat_map(|g| &g.requests)
        .map(|r| r.fields.len())
        .sum();
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(values as u64));
    let mut out = Vec::with_capacity(64 * 1024);
    let mut batch = SampleBatch {
        device: 0,
        seq: 0,
        samples: Vec::with_capacity(values),
        timestamp_ns: 0,
    };
    g.bench_function("decode_normalize_encode_100_f32", |b| {
        b.iter(|| {
            batch.samples.clear();
            batch.timestamp_ns = 0;
            let ts = batch.stamp(1_795_785_404_087_000_000i64);
            for r in groups.iter().flat_map(|g| &g.requests) {
                let words = &regs[r.start as usize..r.start as usize + r.count as usize];
                for f in &r.fields {
                    if let Some(v) = decode_field(words, f) {
                        batch.samples.push(Sample {
                            point: f.point,
                            timestamp_ns: ts,
                            quality: Quality::Good as i32,
                            value: Some(v),
                        });
                    }
                }
            }
            out.clear();
            let mut skipped = Skipped::default();
            black_box(encoder.encode(black_box(&batch), &mut out, &mut skipped));
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
