//! `linetap probe` against the simulator: a profile at a Modbus TCP address, a profile on an
//! RS-485 bus made of a socat pseudo-terminal pair, a device of a configuration file, and a
//! device that does not answer (exit 1 with the Modbus error).

mod common;

use common::*;
use linetap::config::{self, Table};
use linetap::sim::Simulator;

use std::process::{Command, Output};

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_linetap"))
        .arg("probe")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run linetap probe")
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
    let out = probe(&["--profile", "ur", "--address", &address]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
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
            &format!("{}", (q2 * 1e9).round() / 1e9),
            "rad"
        ]
    );
    assert_eq!(row(&stdout, "tcp.x"), ["tcp.x", "CFC7", "-1.2345", "m"]);

    // The same device from a configuration file.
    let out = probe(&[
        "--config",
        line.config.to_str().unwrap(),
        "--device",
        "ur-3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let out = probe(&[
        "--profile",
        "leadshine-eld2",
        "--serial",
        &port,
        "--baud",
        "115200",
        "--unit",
        "5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        row(&stdout, "drive.alarm_code"),
        ["drive.alarm_code", "0100", "256", "overload"]
    );
    assert_eq!(
        row(&stdout, "drive.speed_rpm"),
        ["drive.speed_rpm", "FC7C", "-900", "rpm"]
    );
    assert_eq!(
        row(&stdout, "drive.dc_bus_voltage"),
        ["drive.dc_bus_voltage", "12D9", "48.25", "V"]
    );
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
