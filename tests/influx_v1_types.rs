//! Every type, word order, array, enum, scale/offset, coil and bit, read from the simulator
//! over real TCP by the agent binary and written to a real InfluxDB 1.x through the v1 API:
//! the exact decoded value and the stored field type are checked for each.

mod common;

use common::*;
use linetap::config::Table;
use serde_json::Value as J;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Clone, Copy)]
enum Order {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

/// The registers a device holds for big-endian `bytes` under `order` (PRODUCT.md's rules).
fn regs(bytes: &[u8], order: Order) -> Vec<u16> {
    let words: Vec<[u8; 2]> = bytes.chunks(2).map(|c| [c[0], c[1]]).collect();
    let mut out: Vec<[u8; 2]> = match order {
        Order::Abcd | Order::Badc => words.clone(),
        Order::Cdab | Order::Dcba => words.iter().rev().cloned().collect(),
    };
    if matches!(order, Order::Badc | Order::Dcba) {
        for w in &mut out {
            w.swap(0, 1);
        }
    }
    out.into_iter().map(u16::from_be_bytes).collect()
}

const ORDERS: [(Order, &str); 4] = [
    (Order::Abcd, "ABCD"),
    (Order::Cdab, "CDAB"),
    (Order::Badc, "BADC"),
    (Order::Dcba, "DCBA"),
];

#[test]
fn every_type_and_order_arrives_exactly_in_influxdb_v1() {
    let influx = Influx1::start();
    influx.create_database("lt");

    // Points: (name, type, order, address) for the multi-register types.
    let mut points = String::new();
    let mut writes: Vec<(Table, u16, Vec<u16>)> = Vec::new();
    let mut expected: HashMap<String, J> = HashMap::new();
    let mut addr = 0u16;
    let u32v: u32 = 3_000_000_001;
    let i32v: i32 = -2_000_000_001;
    let u64v: u64 = 0x0123_4567_89AB_CDEF;
    let i64v: i64 = -0x0123_4567_89AB_CDEF;
    let f32v: f32 = -123.25;
    let f64v: f64 = 98765.4321;
    for (order, oname) in ORDERS {
        let cases: [(&str, Vec<u8>, J); 6] = [
            ("u32", u32v.to_be_bytes().to_vec(), J::from(u32v as i64)),
            ("i32", i32v.to_be_bytes().to_vec(), J::from(i32v as i64)),
            ("u64", u64v.to_be_bytes().to_vec(), J::from(u64v as i64)),
            ("i64", i64v.to_be_bytes().to_vec(), J::from(i64v)),
            ("f32", f32v.to_be_bytes().to_vec(), J::from(f32v as f64)),
            ("f64", f64v.to_be_bytes().to_vec(), J::from(f64v)),
        ];
        for (ty, bytes, want) in cases {
            let name = format!("{ty}_{}", oname.to_lowercase());
            points.push_str(&format!("[[devices.points]]\nname = \"{name}\"\naddress = {addr}\ntype = \"{ty}\"\norder = \"{oname}\"\n\n"));
            let words = regs(&bytes, order);
            let n = words.len() as u16;
            writes.push((Table::Holding, addr, words));
            expected.insert(name, want);
            addr += n;
        }
    }
    // A u64 above i64::MAX: InfluxDB 1.x has no unsigned type, and a clamped value would be
    // one the device never had: not written, counted as out of range (decision 0016).
    let big: u64 = u64::MAX - 5;
    points.push_str(&format!(
        "[[devices.points]]\nname = \"u64_big\"\naddress = {addr}\ntype = \"u64\"\n\n"
    ));
    let words = regs(&big.to_be_bytes(), ORDERS[0].0);
    let n = words.len() as u16;
    writes.push((Table::Holding, addr, words));
    addr += n;
    // A half float, one of Telegraf's FLOAT16 cases: stored exactly, -0.509765625.
    points.push_str(&format!(
        "[[devices.points]]\nname = \"f16\"\naddress = {addr}\ntype = \"f16\"\n\n"
    ));
    writes.push((Table::Holding, addr, vec![0xB814]));
    expected.insert("f16".into(), J::from(-0.509765625f64));
    addr += 1;
    // 16-bit types, a string, scale/offset, an enum and bits.
    points.push_str(&format!(
        "[[devices.points]]\nname = \"u16\"\naddress = {a0}\ntype = \"u16\"\n\n\
         [[devices.points]]\nname = \"i16\"\naddress = {a1}\ntype = \"i16\"\n\n\
         [[devices.points]]\nname = \"model\"\naddress = {a2}\ntype = \"string\"\nlength = 5\n\n\
         [[devices.points]]\nname = \"temp\"\naddress = {a3}\ntype = \"i16\"\nscale = 0.1\noffset = -40.0\n\n\
         [[devices.points]]\nname = \"state\"\naddress = {a4}\ntype = \"u16\"\nenum = {{ 2 = \"idle\", 3 = \"running\", 7 = \"fault\" }}\n\n\
         [[devices.points]]\nname = \"estop\"\naddress = {a5}\ntype = \"bool\"\nbit = 0\n\n\
         [[devices.points]]\nname = \"door\"\naddress = {a5}\ntype = \"bool\"\nbit = 3\n\n\
         [[devices.points]]\nname = \"ready\"\naddress = {a5}\ntype = \"bool\"\nbit = 15\n\n\
         [[devices.points]]\nname = \"in_reg\"\ntable = \"input\"\naddress = 3\ntype = \"u16\"\n\n\
         [[devices.points]]\nname = \"coil_a\"\ntable = \"coil\"\naddress = 0\n\n\
         [[devices.points]]\nname = \"coil_b\"\ntable = \"coil\"\naddress = 1\n\n\
         [[devices.points]]\nname = \"di\"\ntable = \"discrete\"\naddress = 9\n\n\
         [[devices.points]]\nname = \"position\"\nmeasurement = \"joint\"\naddress = {a6}\ntype = \"f32\"\norder = \"CDAB\"\ncount = 3\nindex_tag = \"axis\"\n\n\
         [[devices.points]]\nname = \"mode_hi\"\naddress = {a7}\ntype = \"u8\"\nbyte = \"high\"\n\n\
         [[devices.points]]\nname = \"mode_lo\"\naddress = {a7}\ntype = \"u8\"\n\n\
         [[devices.points]]\nname = \"steps\"\naddress = {a8}\ntype = \"i8\"\nbyte = \"high\"\n\n\
         [[devices.points]]\nname = \"load\"\naddress = {a9}\ntype = \"f16\"\norder = \"BADC\"\n\n\
         [[devices.points]]\nname = \"model_swapped\"\naddress = {a10}\ntype = \"string\"\nlength = 3\norder = \"BADC\"\n\n\
         [[devices.points]]\nname = \"serial\"\naddress = {a13}\ntype = \"string\"\nlength = 4\nbyte = \"low\"\n\n\
         [[devices.points]]\nname = \"u16_as_float\"\naddress = {a14}\ntype = \"u16\"\nas_float = true\n\n",
        a7 = addr + 16,
        a8 = addr + 17,
        a9 = addr + 18,
        a10 = addr + 19,
        a13 = addr + 22,
        a14 = addr + 26,
        a0 = addr,
        a1 = addr + 1,
        a2 = addr + 2,
        a3 = addr + 7,
        a4 = addr + 8,
        a5 = addr + 9,
        a6 = addr + 10,
    ));
    writes.push((Table::Holding, addr, vec![54321]));
    writes.push((Table::Holding, addr + 1, vec![(-1234i16) as u16]));
    writes.push((Table::Holding, addr + 2, vec![0x5552, 0x3130, 0x6500, 0, 0])); // "UR10e"
    writes.push((Table::Holding, addr + 7, vec![650]));
    writes.push((Table::Holding, addr + 8, vec![3]));
    writes.push((Table::Holding, addr + 9, vec![0x8001]));
    let mut arr = Vec::new();
    for v in [1.5f32, -2.5, 3.25] {
        arr.extend(regs(&v.to_be_bytes(), Order::Cdab));
    }
    writes.push((Table::Holding, addr + 10, arr));
    writes.push((Table::Input, 3, vec![777]));
    // u8 halves 0xC8 / 0x05, i8 high byte 0xF6 (-10), f16 -1.5 (0xBE00) byte-swapped,
    // "UR10e" low byte first, "AB12" one character per register in the low byte.
    writes.push((Table::Holding, addr + 16, vec![0xC805]));
    writes.push((Table::Holding, addr + 17, vec![0xF6AA]));
    writes.push((Table::Holding, addr + 18, vec![0x00BE]));
    writes.push((Table::Holding, addr + 19, vec![0x5255, 0x3031, 0x0065]));
    writes.push((
        Table::Holding,
        addr + 22,
        vec![0xFF41, 0x0042, 0x7731, 0x0032],
    ));
    writes.push((Table::Holding, addr + 26, vec![4321]));
    expected.insert("u16_as_float".into(), J::from(4321.0));
    expected.insert("mode_hi".into(), J::from(200));
    expected.insert("mode_lo".into(), J::from(5));
    expected.insert("steps".into(), J::from(-10));
    expected.insert("load".into(), J::from(-1.5));
    expected.insert("model_swapped".into(), J::from("UR10e"));
    expected.insert("serial".into(), J::from("AB12"));
    expected.insert("u16".into(), J::from(54321));
    expected.insert("i16".into(), J::from(-1234));
    expected.insert("model".into(), J::from("UR10e"));
    expected.insert("temp".into(), J::from(25.0));
    expected.insert("state".into(), J::from(3));
    expected.insert("state_label".into(), J::from("running"));
    expected.insert("estop".into(), J::from(true));
    expected.insert("door".into(), J::from(false));
    expected.insert("ready".into(), J::from(true));
    expected.insert("in_reg".into(), J::from(777));
    expected.insert("coil_a".into(), J::from(true));
    expected.insert("coil_b".into(), J::from(false));
    expected.insert("di".into(), J::from(true));

    let data_dir = tempfile::tempdir().unwrap();
    let device = |address: &str| {
        format!(
            "[line]\nid = \"line-t\"\nsite = \"plant-t\"\ntags = {{ workshop = \"ws 9\" }}\n\n\
             [agent]\ndata_dir = \"{}\"\n\n\
             [sinks.db]\ntype = \"influxdb\"\napi = \"v1\"\nurl = \"{}\"\ndatabase = \"lt\"\nflush_interval = \"200ms\"\n\n\
             [[devices]]\nid = \"plc-01\"\nkind = \"plc\"\ncell = \"cell-9\"\naddress = \"{address}\"\nunit = 7\npoll = \"200ms\"\ntags = {{ station = \"st-10\" }}\n\n{points}",
            data_dir.path().display(),
            influx.url
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let line = SimulatedLine::start(dir.path(), &["plc-01"], |a| device(&a[0]));
    let sim = &line.sim;
    for (table, a, words) in &writes {
        sim.set_registers("plc-01", *table, *a, words).unwrap();
    }
    sim.set_bits("plc-01", Table::Coil, 0, &[true, false])
        .unwrap();
    sim.set_bits("plc-01", Table::Discrete, 9, &[true]).unwrap();
    let path = line.config.clone();
    let agent = AgentProcess::start(&path);

    // Wait until the last-planned values (the array) have arrived.
    let arrived = wait_for(Duration::from_secs(30), || {
        let r = influx.query("lt", "SELECT count(*) FROM joint");
        r["results"][0]["series"].as_array().map(|_| ())
    });
    assert!(
        arrived.is_some(),
        "no data reached InfluxDB; agent log:\n{}",
        agent.stderr()
    );
    // Until the u64 out of range has been refused (the stop line then counts it).
    let _ = wait_for(Duration::from_secs(30), || {
        agent
            .stderr()
            .contains("cannot be written to this store")
            .then_some(())
    });
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "agent exit status; log:\n{log}");
    assert!(
        log.contains("cannot be written to this store"),
        "the u64 out of range is logged; agent log:\n{log}"
    );
    assert!(
        log.contains("out_of_range=") && !log.contains("out_of_range=0"),
        "counted as out of range; agent log:\n{log}"
    );

    // Values: the last value of every field of measurement plc.
    let r = influx.query("lt", "SELECT last(*) FROM plc");
    let series = &r["results"][0]["series"][0];
    let cols: Vec<&str> = series["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let row = series["values"][0].as_array().unwrap();
    let got: HashMap<&str, &J> = cols
        .iter()
        .zip(row)
        .map(|(c, v)| (c.trim_start_matches("last_"), v))
        .collect();
    assert!(
        !got.contains_key("u64_big"),
        "a u64 above i64::MAX was written: {:?}",
        got.get("u64_big")
    );
    for (field, want) in &expected {
        let have = got
            .get(field.as_str())
            .unwrap_or_else(|| panic!("field {field} missing; have {cols:?}"));
        match (want.as_f64(), have.as_f64()) {
            (Some(w), Some(h)) if want.is_f64() => {
                assert_eq!(w.to_bits(), h.to_bits(), "{field}: want {w}, have {h}")
            }
            _ => assert_eq!(*have, want, "field {field}"),
        }
    }

    // Stored field types: unscaled integers as integer (u64 too), scaled (or `as_float`) as
    // float.
    let r = influx.query("lt", "SHOW FIELD KEYS FROM plc");
    let types: HashMap<String, String> = r["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v[0].as_str().unwrap().to_string(),
                v[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (field, ty) in [
        ("u16", "integer"),
        ("i16", "integer"),
        ("u32_abcd", "integer"),
        ("u64_dcba", "integer"),
        ("f16", "float"),
        ("i64_cdab", "integer"),
        ("f32_badc", "float"),
        ("f64_abcd", "float"),
        ("temp", "float"),
        ("u16_as_float", "float"),
        ("state", "integer"),
        ("state_label", "string"),
        ("model", "string"),
        ("estop", "boolean"),
        ("coil_a", "boolean"),
        ("mode_hi", "integer"),
        ("steps", "integer"),
        ("load", "float"),
        ("serial", "string"),
    ] {
        assert_eq!(
            types.get(field).map(String::as_str),
            Some(ty),
            "type of {field}: {types:?}"
        );
    }

    // Tags: identity, line/device tags; arrays one series per element with index_tag.
    let r = influx.query("lt", "SELECT last(position) FROM joint GROUP BY *");
    let series = r["results"][0]["series"].as_array().expect("joint series");
    assert_eq!(series.len(), 3, "{series:?}");
    let mut by_axis: Vec<(String, f64)> = series
        .iter()
        .map(|s| {
            let tags = &s["tags"];
            assert_eq!(tags["device"], "plc-01");
            assert_eq!(tags["kind"], "plc");
            assert_eq!(tags["line"], "line-t");
            assert_eq!(tags["site"], "plant-t");
            assert_eq!(tags["cell"], "cell-9");
            assert_eq!(tags["station"], "st-10");
            assert_eq!(tags["workshop"], "ws 9");
            (
                tags["axis"].as_str().unwrap().to_string(),
                s["values"][0][1].as_f64().unwrap(),
            )
        })
        .collect();
    by_axis.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        by_axis,
        vec![("1".into(), 1.5), ("2".into(), -2.5), ("3".into(), 3.25)]
    );

    // The health record: up, with an empty last_error.
    let r = influx.query("lt", "SELECT last(up), last(last_error), last(errors) FROM linetap_device WHERE device = 'plc-01'");
    let row = &r["results"][0]["series"][0]["values"][0];
    assert_eq!(row[1], J::from(true), "{r}");
    assert_eq!(row[2], J::from(""), "{r}");
    assert_eq!(row[3], J::from(0), "{r}");
    sim.stop();
}
