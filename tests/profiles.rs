//! Every built-in profile against the simulator over TCP and a real VictoriaMetrics (InfluxDB
//! v2 write API): known raw registers are served, and what lands in the store is compared with
//! values worked out by hand from the vendors' register maps. Then the derived states are
//! stepped through in the store: every CiA 402 state with unrelated statusword bits set, and
//! the UR `robot.state` rules.

mod common;

use common::*;
use linetap::config::Table;
use std::f64::consts::PI;
use std::time::Duration;

const DEVICES: [&str; 6] = ["ur", "cia", "delta", "inovance", "leadshine", "plc"];

fn line_config(vm: &str, data: &str, a: &[String]) -> String {
    format!(
        "[line]\nid = \"cell-t\"\n\n\
         [agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\n\n\
         [sinks.vm]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v2\"\norg = \"o\"\nbucket = \"b\"\ntoken_env = \"LINETAP_TEST_TOKEN\"\nflush_interval = \"100ms\"\n\n\
         [[devices]]\nid = \"ur\"\nprofile = \"ur\"\naddress = \"{}\"\npoll = \"100ms\"\n\n\
         [[devices]]\nid = \"cia\"\nprofile = \"cia402-statusword\"\naddress = \"{}\"\npoll = \"100ms\"\n\n\
         [[devices.points]]\nname = \"statusword\"\naddress = 0x6041\n\n\
         [[devices]]\nid = \"delta\"\nprofile = \"delta-asda\"\naddress = \"{}\"\npoll = \"100ms\"\n\n\
         [[devices]]\nid = \"inovance\"\nprofile = \"inovance-sv660\"\naddress = \"{}\"\npoll = \"100ms\"\n\n\
         [[devices]]\nid = \"leadshine\"\nprofile = \"leadshine-eld2\"\naddress = \"{}\"\npoll = \"100ms\"\n\n\
         [[devices]]\nid = \"plc\"\nprofile = \"plc-mapped-robot\"\naddress = \"{}\"\npoll = \"100ms\"\n",
        a[0], a[1], a[2], a[3], a[4], a[5]
    )
}

/// Two registers of a 32-bit value, low word first (CDAB).
fn cdab(v: i64) -> [u16; 2] {
    let u = v as u32;
    [(u & 0xFFFF) as u16, (u >> 16) as u16]
}

fn set(line: &SimulatedLine, device: &str, address: u16, words: &[u16]) {
    line.sim
        .set_registers(device, Table::Holding, address, words)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The last value of the one series `selector` names.
fn last(vm: &VictoriaMetrics, selector: &str) -> Option<f64> {
    let series = vm.export(selector);
    let (_, values, ts) = series.first()?;
    let i = ts.iter().enumerate().max_by_key(|(_, t)| **t)?.0;
    values.get(i).copied()
}

/// Waits until `selector`'s last value is `want` (within 1e-9); returns what it last saw.
fn arrives(vm: &VictoriaMetrics, selector: &str, want: f64) -> Result<(), Option<f64>> {
    let mut seen = None;
    let ok = wait_for(Duration::from_secs(20), || {
        seen = last(vm, selector);
        seen.filter(|v| (v - want).abs() < 1e-9).map(|_| ())
    });
    ok.ok_or(seen)
}

#[test]
fn every_builtin_profile_lands_in_the_store_as_worked_out_by_hand() {
    let vm = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let line = SimulatedLine::start(dir.path(), &DEVICES, |a| {
        line_config(&vm.url, &data.display().to_string(), a)
    });

    // UR: running (robot mode 7, safety mode normal); joints through the revolution counter.
    set(&line, "ur", 258, &[7, 0, 1, 0, 0, 0, 0, 0, 1]);
    let angles = [1234u16, 6000, 0, 3141, 500, 6283];
    let revs = [0u16, 65535, 0, 65535, 65534, 65535];
    let speeds = [-1500i16, 0, 250, 1, -1, 32767];
    set(&line, "ur", 270, &angles);
    set(&line, "ur", 280, &speeds.map(|s| s as u16));
    set(&line, "ur", 290, &[2100, 0xFFFF, 0, 0, 0, 0]);
    set(&line, "ur", 300, &[35, 36, 37, 38, 39, 40]);
    set(&line, "ur", 310, &[253; 6]);
    set(&line, "ur", 320, &revs);
    set(
        &line,
        "ur",
        400,
        &[(-12345i16) as u16, 4000, 3000, 3141, 0, (-1571i16) as u16],
    );
    // CiA 402: operation enabled with remote, target reached and voltage bits set.
    set(&line, "cia", 0x6041, &[0x0637]);
    // Delta ASDA: alarm 19 (AL013 e-stop as the drive codes it), -1500.0 rpm, 57 % load,
    // 312 V, position -123456 PUU, 41 degC, SRDY + SON.
    set(&line, "delta", 0x0002, &cdab(19));
    let mut monitors = Vec::new();
    for v in [-15000i64, 57, 312, -123456, 41] {
        monitors.extend(cdab(v));
    }
    set(&line, "delta", 0x0012, &monitors);
    set(&line, "delta", 0x005C, &[0x0003]);
    // Inovance SV660: -1200 rpm, torque 45.5 %, position 1,000,000, 2.56 A, 540.2 V, 39 degC,
    // alarm 0x0610 (Er.610 overload).
    set(&line, "inovance", 0x0B00, &[(-1200i16) as u16, 0, 455]);
    set(&line, "inovance", 0x0B07, &cdab(1_000_000));
    set(&line, "inovance", 0x0B18, &[256, 0, 5402, 39]);
    set(&line, "inovance", 0x0B2D, &[0x0610]);
    // Leadshine ELD2: alarm 0x100 (overload), -900 rpm, 48.25 V, following error -17, 3 rpm.
    set(
        &line,
        "leadshine",
        0x1F2,
        &[0x0100, (-900i16) as u16, 4825, (-17i16) as u16, 3],
    );
    // The PLC-mapped robot block.
    set(
        &line,
        "plc",
        0,
        &[
            3, 4, 12, 85, 0b0101, 0, 0x0001, 0x1170, 0x0001, 0xE240, 0x5745, 0x4C44, 0x5F41, 0, 0,
        ],
    );

    let agent = AgentProcess::start_with_env(&line.config, &[("LINETAP_TEST_TOKEN", "t")]);
    let tau = 2.0 * PI;
    let d = |dev: &str| format!("device=\"{dev}\"");
    let mut expected: Vec<(String, f64)> = vec![
        (format!("{{__name__=\"robot_state\",{}}}", d("ur")), 3.0),
        (
            format!("{{__name__=\"robot_vendor_mode\",{}}}", d("ur")),
            7.0,
        ),
        (
            format!("{{__name__=\"robot_safety_mode\",{}}}", d("ur")),
            1.0,
        ),
        (format!("{{__name__=\"tcp_x\",{}}}", d("ur")), -1.2345),
        (format!("{{__name__=\"tcp_y\",{}}}", d("ur")), 0.4),
        (format!("{{__name__=\"tcp_rz\",{}}}", d("ur")), -1.571),
        (format!("{{__name__=\"drive_state\",{}}}", d("cia")), 4.0),
        (
            format!("{{__name__=\"drive_alarm_code\",{}}}", d("delta")),
            19.0,
        ),
        (
            format!("{{__name__=\"drive_speed_rpm\",{}}}", d("delta")),
            -1500.0,
        ),
        (
            format!("{{__name__=\"drive_load_pct\",{}}}", d("delta")),
            57.0,
        ),
        (
            format!("{{__name__=\"drive_dc_bus_voltage\",{}}}", d("delta")),
            312.0,
        ),
        (
            format!("{{__name__=\"drive_position_counts\",{}}}", d("delta")),
            -123456.0,
        ),
        (
            format!("{{__name__=\"drive_temperature\",{}}}", d("delta")),
            41.0,
        ),
        (format!("{{__name__=\"drive_state\",{}}}", d("delta")), 4.0),
        (
            format!("{{__name__=\"drive_speed_rpm\",{}}}", d("inovance")),
            -1200.0,
        ),
        (
            format!("{{__name__=\"drive_torque_pct\",{}}}", d("inovance")),
            45.5,
        ),
        (
            format!("{{__name__=\"drive_position_counts\",{}}}", d("inovance")),
            1_000_000.0,
        ),
        (
            format!("{{__name__=\"drive_current\",{}}}", d("inovance")),
            2.56,
        ),
        (
            format!("{{__name__=\"drive_dc_bus_voltage\",{}}}", d("inovance")),
            540.2,
        ),
        (
            format!("{{__name__=\"drive_temperature\",{}}}", d("inovance")),
            39.0,
        ),
        (
            format!("{{__name__=\"drive_alarm_code\",{}}}", d("inovance")),
            1552.0,
        ),
        (
            format!("{{__name__=\"drive_alarm_code\",{}}}", d("leadshine")),
            256.0,
        ),
        (
            format!("{{__name__=\"drive_speed_rpm\",{}}}", d("leadshine")),
            -900.0,
        ),
        (
            format!("{{__name__=\"drive_dc_bus_voltage\",{}}}", d("leadshine")),
            48.25,
        ),
        (
            format!(
                "{{__name__=\"drive_following_error_counts\",{}}}",
                d("leadshine")
            ),
            -17.0,
        ),
        (format!("{{__name__=\"robot_state\",{}}}", d("plc")), 3.0),
        (
            format!("{{__name__=\"robot_operational_mode\",{}}}", d("plc")),
            4.0,
        ),
        (
            format!("{{__name__=\"robot_speed_override_pct\",{}}}", d("plc")),
            85.0,
        ),
        (
            format!("{{__name__=\"robot_emergency_stop\",{}}}", d("plc")),
            1.0,
        ),
        (
            format!("{{__name__=\"robot_protective_stop\",{}}}", d("plc")),
            0.0,
        ),
        (format!("{{__name__=\"robot_power_on\",{}}}", d("plc")), 1.0),
        (
            format!("{{__name__=\"robot_cycle_count\",{}}}", d("plc")),
            70000.0,
        ),
        (
            format!("{{__name__=\"robot_power_on_s\",{}}}", d("plc")),
            123456.0,
        ),
    ];
    // Joint angles: raw / 1000 + 2 pi x revolutions (as i16); speeds in rad/s; currents in A.
    for axis in 1..=6usize {
        let q = angles[axis - 1] as f64 / 1000.0 + tau * (revs[axis - 1] as i16) as f64;
        expected.push((
            format!(
                "{{__name__=\"joint_position\",{},axis=\"{axis}\"}}",
                d("ur")
            ),
            q,
        ));
        expected.push((
            format!("{{__name__=\"joint_speed\",{},axis=\"{axis}\"}}", d("ur")),
            speeds[axis - 1] as f64 / 1000.0,
        ));
    }
    expected.push((
        format!("{{__name__=\"joint_current\",{},axis=\"2\"}}", d("ur")),
        -0.001,
    ));
    for (selector, want) in &expected {
        if let Err(seen) = arrives(&vm, selector, *want) {
            panic!(
                "{selector}: want {want}, store has {seen:?}\nagent log:\n{}",
                agent.stderr()
            );
        }
    }
    // Negative angles through the revolution counter (VictoriaMetrics keeps 12 significant
    // digits).
    let q6 = last(
        &vm,
        &format!("{{__name__=\"joint_position\",{},axis=\"6\"}}", d("ur")),
    );
    assert!(
        q6.is_some_and(|q| (q - (f64::from(angles[5]) / 1000.0 - tau)).abs() < 1e-12),
        "{q6:?}"
    );
    // Hidden points are read but never written.
    for hidden in [
        "joint_angle_in_revolution",
        "joint_revolutions",
        "drive_statusword",
        "drive_do_status",
    ] {
        assert!(
            vm.export(&format!("{{__name__=\"{hidden}\"}}")).is_empty(),
            "{hidden} was written"
        );
    }

    // CiA 402: every state, each with unrelated bits (remote, target reached, internal limit,
    // manufacturer bits 14-15) set, in the store.
    let noise = 0xC000 | 0x0800 | 0x0400 | 0x0200;
    for (statusword, code) in [
        (0x0000u16, 0.0),
        (0x0040 | 0x0010, 1.0),
        (0x0021 | 0x0010, 2.0),
        (0x0023 | 0x0010, 3.0),
        (0x0027 | 0x0010, 4.0),
        (0x0007 | 0x0010, 5.0),
        (0x000F | 0x0010, 6.0),
        (0x0008, 7.0),
    ] {
        set(&line, "cia", 0x6041, &[statusword | noise]);
        let selector = format!("{{__name__=\"drive_state\",{}}}", d("cia"));
        if let Err(seen) = arrives(&vm, &selector, code) {
            panic!(
                "statusword {:#06x}: want state {code}, store has {seen:?}",
                statusword | noise
            );
        }
        let warning = format!("{{__name__=\"drive_warning\",{}}}", d("cia"));
        assert_eq!(arrives(&vm, &warning, 0.0), Ok(()), "bit 7 clear");
    }
    set(&line, "cia", 0x6041, &[0x0088 | noise]);
    assert_eq!(
        arrives(
            &vm,
            &format!("{{__name__=\"drive_warning\",{}}}", d("cia")),
            1.0
        ),
        Ok(()),
        "bit 7: warning"
    );

    // UR robot.state: one case per rule, in the order the rules are tried.
    for (mode, estop, safety, state) in [
        (7u16, 1u16, 1u16, 6.0),
        (7, 0, 9, 7.0),
        (7, 0, 7, 6.0),
        (7, 0, 5, 5.0),
        (6, 0, 1, 4.0),
        (5, 0, 1, 2.0),
        (3, 0, 1, 1.0),
        (0, 0, 1, 0.0),
        (7, 0, 1, 3.0),
    ] {
        set(&line, "ur", 258, &[mode, 0, 1, 0, estop, 0, 0, 0, safety]);
        let selector = format!("{{__name__=\"robot_state\",{}}}", d("ur"));
        if let Err(seen) = arrives(&vm, &selector, state) {
            panic!("robot mode {mode}, e-stop {estop}, safety mode {safety}: want {state}, store has {seen:?}");
        }
    }
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
}
