//! `linetap probe` against the simulator: a profile at a Modbus TCP address, a profile on an
//! RS-485 bus made of a socat pseudo-terminal pair, a device of a configuration file, and a
//! device that does not answer (exit 1 with the Modbus error); values printed exactly as the
//! agent's file sink writes them; exit codes (all answered, one point failing, nobody there,
//! usage errors); `--read` over Modbus TCP, RTU over TCP and RTU on a serial bus.

mod common;

use common::*;
use linetap::config::{self, Table};
use linetap::sim::Simulator;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_linetap"))
        .arg("probe")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run linetap probe")
}

/// Runs `linetap probe` expecting exit 0 (every point answered); its stdout.
fn probe_ok(args: &[&str]) -> String {
    let out = probe(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The table's row of `point`: its columns (point, raw, value, unit, label).
fn row(stdout: &str, point: &str) -> Vec<String> {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(point))
        .unwrap_or_else(|| panic!("no row {point} in:\n{stdout}"))
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn a_profile_at_a_tcp_address_and_a_config_device() {
    let dir = tempfile::tempdir().unwrap();
    let line = SimulatedLine::start(dir.path(), &["ur-3"], |a| {
        format!(
            "[line]\nid = \"p\"\n[[devices]]\nid = \"ur-3\"\nprofile = \"ur\"\naddress = \"{}\"\n",
            a[0]
        )
    });
    let sim = &line.sim;
    // Running, e-stop clear; joint 2 at 6.000 rad into revolution -1.
    sim.set_registers("ur-3", Table::Holding, 258, &[7, 0, 1, 0, 0, 0, 0, 0, 1])
        .unwrap();
    sim.set_registers("ur-3", Table::Holding, 270, &[1234, 6000, 0, 0, 0, 0])
        .unwrap();
    sim.set_registers("ur-3", Table::Holding, 320, &[0, 65535, 0, 0, 0, 0])
        .unwrap();
    sim.set_registers("ur-3", Table::Holding, 400, &[(-12345i16) as u16])
        .unwrap();

    let address = line.addresses[0].clone();
    let stdout = probe_ok(&["--profile", "ur", "--address", &address]);
    assert!(stdout.contains("2 of 2 requests answered"), "{stdout}");
    assert_eq!(
        row(&stdout, "robot.vendor_mode"),
        ["robot.vendor_mode", "0007", "7", "running"]
    );
    assert_eq!(
        row(&stdout, "robot.state"),
        ["robot.state", "derived", "3", "running"]
    );
    assert_eq!(
        row(&stdout, "joint.revolutions[axis=2]"),
        ["joint.revolutions[axis=2] (hidden)", "FFFF", "-1"]
    );
    let q2 = 6.0 - 2.0 * std::f64::consts::PI;
    assert_eq!(
        row(&stdout, "joint.position[axis=2]"),
        [
            "joint.position[axis=2]",
            "derived",
            // As the sinks write an f64: the shortest text that reads back as the same value.
            &format!("{q2}"),
            "rad"
        ]
    );
    assert_eq!(row(&stdout, "tcp.x"), ["tcp.x", "CFC7", "-1.2345", "m"]);

    // The same device from a configuration file.
    let stdout = probe_ok(&[
        "--config",
        line.config.to_str().unwrap(),
        "--device",
        "ur-3",
    ]);
    assert!(
        stdout.starts_with("device \"ur-3\" at 127.0.0.1:"),
        "{stdout}"
    );
    assert_eq!(
        row(&stdout, "robot.safety_mode"),
        ["robot.safety_mode", "0001", "1", "normal"]
    );

    // Nobody at this address: exit 1 with the error.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = probe(&["--profile", "ur", "--address", &dead, "--timeout", "300ms"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not answer") && stderr.contains(&dead),
        "{stderr}"
    );
}

#[test]
fn a_profile_on_an_rs485_bus() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let text = format!(
        "[line]\nid = \"p\"\n[[devices]]\nid = \"x-axis\"\nprofile = \"leadshine-eld2\"\nprotocol = \"modbus-rtu\"\nserial = {{ port = \"{}\", baud = 115200, parity = \"even\" }}\nunit = 5\n",
        pty.a.display()
    );
    let cfg = config::parse("sim.toml", &text).expect("valid config");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt.block_on(Simulator::start(&cfg)).expect("simulator");
    sim.set_registers(
        "x-axis",
        Table::Holding,
        0x1F2,
        &[0x0100, (-900i16) as u16, 4825, (-17i16) as u16, 3],
    )
    .unwrap();
    let port = pty.b.display().to_string();
    let stdout = probe_ok(&[
        "--profile",
        "leadshine-eld2",
        "--serial",
        &port,
        "--baud",
        "115200",
        "--unit",
        "5",
    ]);
    assert_eq!(
        row(&stdout, "drive.alarm_code"),
        ["drive.alarm_code", "0100", "256", "overload"]
    );
    // A float (`as_float`, as every drive profile writes speed), shown as the sinks write it.
    assert_eq!(
        row(&stdout, "drive.speed_rpm"),
        ["drive.speed_rpm", "FC7C", "-900.0", "rpm"]
    );
    assert_eq!(
        row(&stdout, "drive.dc_bus_voltage"),
        ["drive.dc_bus_voltage", "12D9", "48.25", "V"]
    );
    // Raw registers over the same bus.
    let stdout = probe_ok(&[
        "--read", "holding", "498", "3", "--serial", &port, "--baud", "115200", "--unit", "5",
    ]);
    assert_eq!(
        read_row(&stdout, 0, 0x1F3),
        ["499", "64636", "-900", "FC7C", "\".|\""]
    );
    assert_eq!(read_row(&stdout, 2, 0x1F2)[1], 0x0100FC7Cu32.to_string());
    // Another unit on the same bus does not answer: exit 1.
    let out = probe(&[
        "--profile",
        "leadshine-eld2",
        "--serial",
        &port,
        "--baud",
        "115200",
        "--unit",
        "9",
        "--timeout",
        "200ms",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.stop();
}

/// A drive the project did not write: an f32 voltage, a CDAB u32 position, an i16 speed, an f64
/// energy counter, scaled u16 and i16 values, a scaled CDAB f32 and a 16-character nameplate.
fn drive_config(address: &str, data: &str, out: &str) -> String {
    format!(
        "[line]\nid = \"t\"\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\n\
         [sinks.f]\ntype = \"file\"\npath = \"{out}\"\nflush_interval = \"100ms\"\n\
         [[devices]]\nid = \"drv\"\nkind = \"drive\"\naddress = \"{address}\"\npoll = \"100ms\"\n\
         [[devices.points]]\nname = \"voltage\"\naddress = 0\ntype = \"f32\"\n\
         [[devices.points]]\nname = \"position\"\naddress = 2\ntype = \"u32\"\norder = \"CDAB\"\n\
         [[devices.points]]\nname = \"speed\"\naddress = 4\ntype = \"i16\"\n\
         [[devices.points]]\nname = \"energy\"\naddress = 5\ntype = \"f64\"\n\
         [[devices.points]]\nname = \"temperature\"\naddress = 9\nscale = 0.1\n\
         [[devices.points]]\nname = \"torque\"\naddress = 10\ntype = \"i16\"\nscale = 0.001\n\
         [[devices.points]]\nname = \"current\"\naddress = 11\ntype = \"f32\"\norder = \"CDAB\"\nscale = 0.5\n\
         [[devices.points]]\nname = \"nameplate\"\naddress = 13\ntype = \"string\"\nlength = 8\n"
    )
}

fn f32_words(x: f32) -> [u16; 2] {
    let b = x.to_bits();
    [(b >> 16) as u16, b as u16]
}

/// The registers of `drive_config`'s device.
fn drive_registers() -> Vec<u16> {
    let mut r = Vec::new();
    r.extend(f32_words(562.3));
    let pos = 123_456_789u32;
    r.extend([pos as u16, (pos >> 16) as u16]);
    r.push((-900i16) as u16);
    let e = 12345.678f64.to_bits();
    r.extend([
        (e >> 48) as u16,
        (e >> 32) as u16,
        (e >> 16) as u16,
        e as u16,
    ]);
    r.push(253);
    r.push((-12345i16) as u16);
    let [hi, lo] = f32_words(-1.2345);
    r.extend([lo, hi]);
    for pair in b"LT-DRIVE-0042-AB".chunks(2) {
        r.push(u16::from_be_bytes([pair[0], pair[1]]));
    }
    r
}

/// field name -> value text of the newest line of each field in a line-protocol file.
fn line_values(lp: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for l in lp.lines() {
        let parts: Vec<&str> = l.split(' ').collect();
        if parts.len() == 3 && parts[0].starts_with("drive,") {
            if let Some((k, v)) = parts[1].split_once('=') {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

#[test]
fn probe_prints_what_the_sinks_write_and_exits_by_what_answered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.lp");
    let data = dir.path().join("data");
    let (out_s, data_s) = (out.display().to_string(), data.display().to_string());
    let line = SimulatedLine::start(dir.path(), &["drv"], |a| {
        drive_config(&a[0], &data_s, &out_s)
    });
    line.sim
        .set_registers("drv", Table::Holding, 0, &drive_registers())
        .unwrap();
    let config = line.config.to_str().unwrap().to_string();

    // Every point answered: exit 0.
    let stdout = probe_ok(&["--config", &config, "--device", "drv"]);
    assert_eq!(row(&stdout, "drive.voltage")[2], "562.3", "{stdout}");

    // The agent writes the same device into a file.
    let agent = AgentProcess::start(&line.config);
    let names = [
        "voltage",
        "position",
        "speed",
        "energy",
        "temperature",
        "torque",
        "current",
        "nameplate",
    ];
    let written = wait_for(Duration::from_secs(20), || {
        let v = line_values(&std::fs::read_to_string(&out).unwrap_or_default());
        names.iter().all(|n| v.contains_key(*n)).then_some(v)
    });
    let (_, log) = agent.stop();
    let written = written.unwrap_or_else(|| panic!("not every field written; agent log:\n{log}"));
    // (point, what probe printed, what the file sink wrote)
    let mut table = Vec::new();
    for n in names {
        let shown = row(&stdout, &format!("drive.{n}"))[2].clone();
        let lp = written[n].clone();
        table.push((n, shown, lp));
    }
    for (n, shown, lp) in &table {
        assert_eq!(
            shown,
            lp.trim_end_matches('i'),
            "{n}: probe vs line protocol {table:?}"
        );
    }
    // The figures themselves, as a person reads them on the device's display.
    let shown: BTreeMap<&str, &str> = table.iter().map(|(n, s, _)| (*n, s.as_str())).collect();
    assert_eq!(shown["voltage"], "562.3");
    assert_eq!(shown["position"], "123456789");
    assert_eq!(shown["speed"], "-900");
    assert_eq!(shown["energy"], "12345.678");
    assert_eq!(shown["temperature"], format!("{}", 253.0 * 0.1));
    assert_eq!(shown["torque"], format!("{}", -12345.0 * 0.001));
    assert_eq!(shown["current"], format!("{}", -1.2345f32 as f64 * 0.5));
    assert_eq!(shown["nameplate"], "\"LT-DRIVE-0042-AB\"");

    // One point the device does not have (exception 0x02): the table, and exit 1.
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "{}[[devices.points]]\nname = \"missing\"\naddress = 2000\n",
            std::fs::read_to_string(&line.config).unwrap()
        ),
    )
    .unwrap();
    let probed = probe(&["--config", broken.to_str().unwrap(), "--device", "drv"]);
    let stdout = String::from_utf8_lossy(&probed.stdout);
    let stderr = String::from_utf8_lossy(&probed.stderr);
    assert_eq!(probed.status.code(), Some(1), "{stderr}\n{stdout}");
    assert_eq!(row(&stdout, "drive.voltage")[2], "562.3");
    assert!(
        row(&stdout, "drive.missing")[1].contains("exception 0x02"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of 9 points without a value (1 of 2 requests answered)")
            && stderr.contains("drive.missing: exception 0x02"),
        "{stderr}"
    );

    // Usage errors: exit 2, nothing read.
    for args in [
        vec!["--address", &line.addresses[0]],
        vec!["--profile", "ur"],
        vec![
            "--profile",
            "cia402-statusword",
            "--address",
            &line.addresses[0],
        ],
        vec!["--read", "holding", "0", "--address", &line.addresses[0]],
        vec![
            "--read",
            "holding",
            "0",
            "200",
            "--address",
            &line.addresses[0],
        ],
        vec![
            "--read",
            "registers",
            "0",
            "2",
            "--address",
            &line.addresses[0],
        ],
        vec![
            "--read",
            "holding",
            "0",
            "2",
            "--address",
            &line.addresses[0],
            "--protocol",
            "modbus-rtu",
        ],
    ] {
        let probed = probe(&args);
        assert_eq!(
            probed.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&probed.stderr)
        );
    }
    // A profile that leaves an address open says which flag gives it.
    let probed = probe(&[
        "--profile",
        "cia402-statusword",
        "--address",
        &line.addresses[0],
    ]);
    let stderr = String::from_utf8_lossy(&probed.stderr);
    assert!(
        stderr.contains("--point statusword=ADDRESS") && !stderr.contains("(probe)"),
        "{stderr}"
    );
}

/// The decodings `--read` prints: `section` 0 is the register table, 1 f32, 2 u32, 3 i32; the
/// row of register `n`, split into its columns.
fn read_row(stdout: &str, section: usize, n: u16) -> Vec<String> {
    stdout
        .split("\n\n")
        .nth(section)
        .unwrap_or_else(|| panic!("no section {section} in\n{stdout}"))
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&n.to_string()))
        .unwrap_or_else(|| panic!("no row {n} in section {section} of\n{stdout}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn read_raw_registers_over_tcp_and_rtu_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let line = SimulatedLine::start(dir.path(), &["drv", "gw"], |a| {
        format!(
            "[line]\nid = \"t\"\n\
             [[devices]]\nid = \"drv\"\naddress = \"{}\"\n[[devices.points]]\nname = \"x\"\naddress = 20\n\
             [[devices.points]]\nname = \"c\"\ntable = \"coil\"\naddress = 3\n\
             [[devices]]\nid = \"gw\"\nprotocol = \"modbus-rtu-over-tcp\"\naddress = \"{}\"\nunit = 7\n[[devices.points]]\nname = \"x\"\ntable = \"input\"\naddress = 20\n",
            a[0], a[1]
        )
    });
    let mut regs = drive_registers();
    regs.truncate(4);
    regs.push(0x4142);
    for d in ["drv", "gw"] {
        let table = if d == "drv" {
            Table::Holding
        } else {
            Table::Input
        };
        line.sim.set_registers(d, table, 0, &regs).unwrap();
    }
    line.sim
        .set_bits("drv", Table::Coil, 0, &[true, false, false, true])
        .unwrap();
    let check = |stdout: &str| {
        // 562.3 as f32 is 0x440C9333, in registers 0 and 1.
        assert_eq!(
            read_row(stdout, 0, 0),
            ["0", "17420", "17420", "440C", "\"D.\""]
        );
        assert_eq!(
            read_row(stdout, 0, 4),
            ["4", "16706", "16706", "4142", "\"AB\""]
        );
        assert_eq!(read_row(stdout, 1, 0)[1], "562.3", "f32 ABCD of 0, 1");
        // 123456789 = 0x075BCD15, low word first (CDAB) in registers 2 and 3.
        assert_eq!(read_row(stdout, 2, 2)[2], "123456789", "u32 CDAB of 2, 3");
        assert_eq!(read_row(stdout, 3, 2)[2], "123456789", "i32 CDAB of 2, 3");
        assert_eq!(read_row(stdout, 2, 0)[1], 0x440C9333u32.to_string());
    };
    let stdout = probe_ok(&[
        "--read",
        "holding",
        "0",
        "5",
        "--address",
        &line.addresses[0],
    ]);
    assert!(stdout.starts_with("holding 0+5 at 127.0.0.1:"), "{stdout}");
    check(&stdout);

    let stdout = probe_ok(&[
        "--read",
        "input",
        "0",
        "5",
        "--address",
        &line.addresses[1],
        "--protocol",
        "modbus-rtu-over-tcp",
        "--unit",
        "7",
    ]);
    check(&stdout);

    // Bits, and a config's device.
    let stdout = probe_ok(&[
        "--read",
        "coils",
        "0",
        "4",
        "--config",
        line.config.to_str().unwrap(),
        "--device",
        "drv",
    ]);
    let bits: Vec<String> = stdout
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
        .collect();
    assert_eq!(bits, ["1", "0", "0", "1"], "{stdout}");

    // Past the device's registers: exception 0x02, exit 1.
    let probed = probe(&[
        "--read",
        "holding",
        "100",
        "2",
        "--address",
        &line.addresses[0],
    ]);
    let stderr = String::from_utf8_lossy(&probed.stderr);
    assert_eq!(probed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exception 0x02"), "{stderr}");
}
