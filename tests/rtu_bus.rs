//! Modbus RTU end to end: the agent binary polls four simulated drives on one RS-485 bus made of
//! a real pseudo-terminal pair (socat), and an RTU-over-TCP gateway, into a real
//! VictoriaMetrics. Exact values; one silent unit does not starve the other three and is read
//! again once it answers; corrupted frames (bad CRC) are counted and do not desynchronise the
//! bus; a port that disappears is reopened.

mod common;

use common::*;
use linetap::config::{self, Table};
use linetap::sim::{Fault, SimHandle, Simulator};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const UNITS: [u8; 4] = [1, 2, 3, 4];

/// Four drives on one serial port, or behind one RTU-over-TCP gateway address.
fn bus_config(vm: &str, file: &str, bus: &str, extra: &str) -> String {
    let mut s = format!(
        "[line]\nid = \"press-b\"\n\n[agent]\ndata_dir = \"{file}.data\"\n\n\
         [sinks.central]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v2\"\norg = \"p\"\nbucket = \"drives\"\ntoken_env = \"LINETAP_TEST_TOKEN\"\nflush_interval = \"100ms\"\n\n\
         [sinks.local]\ntype = \"file\"\npath = \"{file}\"\nflush_interval = \"100ms\"\n\n"
    );
    for u in UNITS {
        s.push_str(&format!(
            "[[devices]]\nid = \"servo-{u}\"\nkind = \"drive\"\n{bus}\n{extra}unit = {u}\npoll = \"100ms\"\ntimeout = \"100ms\"\nprobe_interval = \"1s\"\n\n\
             [[devices.points]]\nname = \"speed\"\naddress = 10\ntype = \"i16\"\ncount = 4\nindex_tag = \"axis\"\n\n\
             [[devices.points]]\nname = \"position\"\naddress = 20\ntype = \"i32\"\norder = \"CDAB\"\n\n\
             [[devices.points]]\nname = \"ready\"\ntable = \"coil\"\naddress = 3\n\n"
        ));
    }
    s
}

/// The rate assertions measure real time on a 2-core machine: one bus test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Setup {
    vm: VictoriaMetrics,
    sim: SimHandle,
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    pty: Option<PtyPair>,
    config: PathBuf,
    /// Last, so it is released after everything above has stopped.
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn serial_bus(port: &Path) -> String {
    format!(
        "protocol = \"modbus-rtu\"\nserial = {{ port = \"{}\", baud = 115200, parity = \"even\" }}",
        port.display()
    )
}

/// The simulator on one end of a pty pair (or on a TCP port for RTU over TCP), the agent's
/// configuration pointing at the other.
#[derive(Clone, Copy, PartialEq)]
enum Bus {
    Serial,
    RtuOverTcp,
    TcpGateway,
}

fn setup(bus: Bus) -> Setup {
    setup_with(bus, "")
}

fn setup_with(bus: Bus, extra: &str) -> Setup {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("LINETAP_TEST_TOKEN", "secret-token");
    let vm = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.lp").display().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start_sim = |sim_bus: &str| {
        let sim_cfg = config::parse("sim.toml", &bus_config(&vm.url, &file, sim_bus, extra))
            .expect("valid config");
        rt.block_on(Simulator::start(&sim_cfg))
    };
    let tcp = |protocol: &str, address: &str| {
        format!("protocol = \"{protocol}\"\naddress = \"{address}\"")
    };
    let (pty, sim, agent_bus) = match bus {
        Bus::Serial => {
            let pty = PtyPair::start(dir.path());
            let sim = start_sim(&serial_bus(&pty.a)).expect("simulator");
            let agent_bus = serial_bus(&pty.b);
            (Some(pty), sim, agent_bus)
        }
        Bus::RtuOverTcp => {
            // Port 0: the simulator binds once, one listener for the four units (one
            // RTU-over-TCP address), and the agent is pointed at the address it got.
            let sim = start_sim(&tcp("modbus-rtu-over-tcp", "127.0.0.1:0")).expect("simulator");
            let address = sim.addresses["servo-1"].to_string();
            (None, sim, tcp("modbus-rtu-over-tcp", &address))
        }
        Bus::TcpGateway => {
            // Modbus TCP devices with port 0 get a listener each; one gateway for the four
            // units needs one port given: another one if it was taken meanwhile.
            on_free_port("the simulated Modbus TCP gateway", |port| {
                let bus = tcp("modbus-tcp", &format!("127.0.0.1:{port}"));
                let sim = start_sim(&bus).map_err(|e| e.to_string())?;
                Ok((None, sim, bus))
            })
        }
    };
    let config = dir.path().join("line.toml");
    std::fs::write(&config, bus_config(&vm.url, &file, &agent_bus, extra)).unwrap();
    for u in UNITS {
        let dev = format!("servo-{u}");
        let speeds: Vec<u16> = (0..4).map(|i| (-100 * u as i16 + i) as u16).collect();
        sim.set_registers(&dev, Table::Holding, 10, &speeds)
            .unwrap();
        // -70000 - u in CDAB: low word first.
        let p = (-70_000i32 - u as i32) as u32;
        sim.set_registers(
            &dev,
            Table::Holding,
            20,
            &[(p & 0xffff) as u16, (p >> 16) as u16],
        )
        .unwrap();
        sim.set_bits(&dev, Table::Coil, 3, &[u % 2 == 0]).unwrap();
    }
    Setup {
        _turn: turn,
        vm,
        sim,
        _rt: rt,
        dir,
        pty,
        config,
    }
}

fn wait_all_up(s: &Setup, agent: &AgentProcess) {
    assert!(
        wait_for(Duration::from_secs(30), || (s
            .vm
            .export(r#"{__name__="linetap_device_up"}"#)
            .len()
            == 4)
            .then_some(()))
        .is_some(),
        "no health records for all four units; log:\n{}",
        agent.stderr()
    );
}

fn assert_exact_values(s: &Setup) {
    let speeds = s.vm.export(r#"{__name__="drive_speed"}"#);
    assert_eq!(speeds.len(), 16, "4 units x 4 axes");
    for (labels, values, _) in &speeds {
        let u: i64 = labels["device"]
            .as_str()
            .unwrap()
            .trim_start_matches("servo-")
            .parse()
            .unwrap();
        let axis: i64 = labels["axis"].as_str().unwrap().parse().unwrap();
        let want = (-100 * u + axis - 1) as f64;
        assert!(
            !values.is_empty() && values.iter().all(|v| *v == want),
            "servo-{u} axis {axis}: {values:?} != {want}"
        );
    }
    let positions = s.vm.export(r#"{__name__="drive_position"}"#);
    assert_eq!(positions.len(), 4);
    for (labels, values, _) in &positions {
        let u: f64 = labels["device"]
            .as_str()
            .unwrap()
            .trim_start_matches("servo-")
            .parse()
            .unwrap();
        assert!(values.iter().all(|v| *v == -70_000.0 - u), "{values:?}");
    }
    let ready = s.vm.export(r#"{__name__="drive_ready"}"#);
    assert_eq!(ready.len(), 4);
    for (labels, values, _) in &ready {
        let u: u8 = labels["device"]
            .as_str()
            .unwrap()
            .trim_start_matches("servo-")
            .parse()
            .unwrap();
        let want = if u.is_multiple_of(2) { 1.0 } else { 0.0 };
        assert!(values.iter().all(|v| *v == want), "servo-{u}: {values:?}");
    }
}

/// The health records of `dev` in the line-protocol file that carry a `last_error`.
fn error_lines<'a>(lp: &'a str, dev: &str) -> Vec<&'a str> {
    lp.lines()
        .filter(|l| {
            l.contains(&format!("device={dev},"))
                && l.contains("last_error=\"")
                && !l.contains("last_error=\"\"")
        })
        .collect()
}

/// (timestamp_ms, up) health records of one unit.
fn health(s: &Setup, dev: &str) -> Vec<(i64, f64)> {
    let up = s.vm.export(r#"{__name__="linetap_device_up"}"#);
    let (_, values, ts) = up
        .iter()
        .find(|(l, _, _)| l["device"] == dev)
        .cloned()
        .unwrap_or_else(|| panic!("no health for {dev}"));
    ts.into_iter().zip(values).collect()
}

/// Waits (up to 20 s) until the stored health records of `dev` satisfy `done`; the assertions
/// after it say what is missing if they never do.
fn wait_health(s: &Setup, dev: &str, done: impl Fn(&[(i64, f64)]) -> bool) {
    let _ = wait_for(Duration::from_secs(20), || {
        done(&health(s, dev)).then_some(())
    });
}

/// Whether `dev` reported up at or after `t`.
fn up_since(h: &[(i64, f64)], t: i64) -> bool {
    h.iter().any(|(ts, v)| *ts >= t && *v == 1.0)
}

/// The healthy units kept at least 90 % of their configured 10 polls/s in [w0, w1), all up.
fn assert_healthy_rate(s: &Setup, healthy: &[&str], w0: i64, w1: i64) {
    let expected = (w1 - w0) as f64 / 100.0;
    for dev in healthy {
        let h = health(s, dev);
        let n = h.iter().filter(|(t, _)| *t >= w0 && *t < w1).count() as f64;
        eprintln!("{dev}: {n} polls in {} ms (configured {expected})", w1 - w0);
        assert!(
            n >= expected * 0.9,
            "{dev}: {n} polls in the window, configured {expected}"
        );
        assert!(h.iter().all(|(_, v)| *v == 1.0), "{dev} was reported down");
    }
}

#[test]
fn four_units_on_one_serial_bus_decode_exactly() {
    let s = setup(Bus::Serial);
    let agent = AgentProcess::start(&s.config);
    wait_all_up(&s, &agent);
    // A wall-clock window: the poll rate below is measured over these 2 s.
    std::thread::sleep(Duration::from_secs(2));
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_exact_values(&s);
    for u in UNITS {
        let h = health(&s, &format!("servo-{u}"));
        assert!(h.iter().all(|(_, v)| *v == 1.0), "servo-{u}: {h:?}");
        // About 10 polls per second each since the first.
        let (first, last) = (h[0].0, h[h.len() - 1].0);
        let rate = (h.len() - 1) as f64 / ((last - first) as f64 / 1000.0);
        assert!(rate >= 9.0, "servo-{u}: {rate:.1} polls/s");
    }
}

#[test]
fn a_silent_unit_does_not_starve_the_bus_and_is_read_again_once_it_answers() {
    let s = setup(Bus::Serial);
    let agent = AgentProcess::start(&s.config);
    wait_all_up(&s, &agent);
    let fault_start = now_ms();
    s.sim.set_fault("servo-2", Fault::Silent).unwrap();
    // A wall-clock window: the fault lasts 6 s, the others' poll rate is measured in it.
    std::thread::sleep(Duration::from_secs(6));
    let fault_end = now_ms();
    s.sim.set_fault("servo-2", Fault::None).unwrap();
    // Until servo-2 is back and has 10 health records since.
    wait_health(&s, "servo-2", |h| {
        h.iter()
            .filter(|(t, v)| *t >= fault_end && *v == 1.0)
            .count()
            >= 10
    });
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    // After the first cycles (timeouts and a retry each) the silent unit is only probed once a
    // second, so the others keep their rate for the rest of the fault.
    assert_healthy_rate(
        &s,
        &["servo-1", "servo-3", "servo-4"],
        fault_start + 1000,
        fault_end,
    );
    let h = health(&s, "servo-2");
    let during: Vec<f64> = h
        .iter()
        .filter(|(t, _)| *t >= fault_start + 400 && *t < fault_end)
        .map(|(_, v)| *v)
        .collect();
    assert!(
        !during.is_empty() && during.iter().all(|v| *v == 0.0),
        "servo-2 during the fault: {during:?}"
    );
    let back = h
        .iter()
        .find(|(t, v)| *t >= fault_end && *v == 1.0)
        .map(|(t, _)| *t)
        .expect("servo-2 never came back up");
    // Probed every second: back within one probe interval (plus a poll).
    assert!(
        back - fault_end < 1500,
        "servo-2 came back {} ms after it answered again",
        back - fault_end
    );
    let after: Vec<f64> = h
        .iter()
        .filter(|(t, _)| *t >= back)
        .map(|(_, v)| *v)
        .collect();
    assert!(after.len() >= 10 && after.iter().all(|v| *v == 1.0));
    assert!(
        log.contains("servo-2") && log.contains("probing it only every probe_interval"),
        "the degradation is logged:\n{log}"
    );
    let lp = std::fs::read_to_string(s.dir.path().join("out.lp")).unwrap();
    assert!(
        lp.lines().any(|l| l.starts_with("linetap_device,")
            && l.contains("device=servo-2")
            && l.contains("last_error=\"")
            && l.contains("timeout")),
        "no last_error with the reason for servo-2"
    );
}

#[test]
fn bad_crc_replies_are_counted_and_do_not_desynchronise_the_bus() {
    let s = setup(Bus::Serial);
    let agent = AgentProcess::start(&s.config);
    wait_all_up(&s, &agent);
    let fault_start = now_ms();
    s.sim.set_fault("servo-3", Fault::BadCrc).unwrap();
    // A wall-clock window: the fault lasts 3 s, the others' poll rate is measured in it.
    std::thread::sleep(Duration::from_secs(3));
    let fault_end = now_ms();
    s.sim.set_fault("servo-3", Fault::None).unwrap();
    // Until servo-3 is back.
    wait_health(&s, "servo-3", |h| up_since(h, fault_end));
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    // Every value that reached the store is exact: no reply was taken for another request.
    assert_exact_values(&s);
    assert_healthy_rate(
        &s,
        &["servo-1", "servo-2", "servo-4"],
        fault_start + 1000,
        fault_end,
    );
    let h = health(&s, "servo-3");
    assert!(
        h.iter()
            .any(|(t, v)| *t >= fault_start && *t < fault_end && *v == 0.0),
        "servo-3 was not reported down during the bad-CRC fault"
    );
    let back = h
        .iter()
        .find(|(t, v)| *t >= fault_end && *v == 1.0)
        .map(|(t, _)| *t)
        .expect("servo-3 never came back up");
    assert!(
        back - fault_end < 1500,
        "servo-3 back after {} ms",
        back - fault_end
    );
    // Counted: the error counter of the health record grows, and the reason says CRC.
    let errors =
        s.vm.export(r#"{__name__="linetap_device_errors",device="servo-3"}"#);
    let max = errors
        .iter()
        .flat_map(|(_, v, _)| v.iter().copied())
        .fold(0.0, f64::max);
    assert!(max >= 6.0, "servo-3 errors counted: {max}");
    let lp = std::fs::read_to_string(s.dir.path().join("out.lp")).unwrap();
    // The other units never saw a frame that was not theirs: no CRC or framing error (a
    // reply taken for the wrong request would show up here or as a wrong value above).
    for dev in ["servo-1", "servo-2", "servo-4"] {
        let reasons = error_lines(&lp, dev);
        assert!(
            !reasons
                .iter()
                .any(|r| r.contains("CRC") || r.contains("framing")),
            "{dev}: {reasons:?}"
        );
    }
    assert!(
        lp.lines()
            .any(|l| l.contains("device=servo-3") && l.contains("bad CRC")),
        "no bad CRC reason for servo-3"
    );
}

#[test]
fn a_port_that_disappears_is_reopened() {
    let mut s = setup(Bus::Serial);
    let agent = AgentProcess::start(&s.config);
    wait_all_up(&s, &agent);
    // Unplug: the pty pair goes away (both ends), then comes back under the same names.
    drop(s.pty.take());
    // Unplugged until the agent has found the port gone: a poll failed to open it again.
    let noticed = wait_for(Duration::from_secs(10), || {
        agent
            .stderr()
            .lines()
            .any(|l| l.contains("poll failed") && l.contains("connect:"))
            .then_some(())
    });
    assert!(
        noticed.is_some(),
        "the agent never tried to reopen the port:\n{}",
        agent.stderr()
    );
    let unplugged = now_ms();
    s.pty = Some(PtyPair::start(s.dir.path()));
    let replugged = Instant::now();
    let back = wait_for(Duration::from_secs(20), || {
        let h = health(&s, "servo-1");
        h.iter()
            .any(|(t, v)| *t > unplugged + 200 && *v == 1.0)
            .then_some(())
    });
    let (code, log) = agent.stop();
    assert!(back.is_some(), "no data after the port came back:\n{log}");
    assert!(
        replugged.elapsed() < Duration::from_secs(20),
        "took too long"
    );
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn rtu_over_tcp_to_a_gateway_with_four_units() {
    let s = setup(Bus::RtuOverTcp);
    let agent = AgentProcess::start(&s.config);
    wait_all_up(&s, &agent);
    let fault_start = now_ms();
    s.sim.set_fault("servo-4", Fault::Silent).unwrap();
    // A wall-clock window: the fault lasts 3 s, the others' poll rate is measured in it.
    std::thread::sleep(Duration::from_secs(3));
    let fault_end = now_ms();
    s.sim.set_fault("servo-4", Fault::None).unwrap();
    // Until servo-4 is back.
    wait_health(&s, "servo-4", |h| up_since(h, fault_end));
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_exact_values(&s);
    assert_healthy_rate(
        &s,
        &["servo-1", "servo-2", "servo-3"],
        fault_start + 1000,
        fault_end,
    );
    let h = health(&s, "servo-4");
    assert!(h
        .iter()
        .any(|(t, v)| *t >= fault_end && *v == 1.0 && *t - fault_end < 1500));
}

#[test]
fn a_modbus_tcp_gateway_with_four_units_shares_one_connection() {
    let s = setup(Bus::TcpGateway);
    let agent = AgentProcess::start(&s.config);
    wait_all_up(&s, &agent);
    let fault_start = now_ms();
    s.sim.set_fault("servo-1", Fault::Silent).unwrap();
    // A wall-clock window: the fault lasts 4 s, the others' poll rate is measured in it.
    std::thread::sleep(Duration::from_secs(4));
    let fault_end = now_ms();
    s.sim.set_fault("servo-1", Fault::None).unwrap();
    // Until servo-1 is back.
    wait_health(&s, "servo-1", |h| up_since(h, fault_end));
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_exact_values(&s);
    assert_healthy_rate(
        &s,
        &["servo-2", "servo-3", "servo-4"],
        fault_start + 1000,
        fault_end,
    );
    let h = health(&s, "servo-1");
    assert!(h
        .iter()
        .any(|(t, v)| *t >= fault_start + 400 && *t < fault_end && *v == 0.0));
    assert!(h
        .iter()
        .any(|(t, v)| *t >= fault_end && *v == 1.0 && *t - fault_end < 1500));
}

#[test]
fn the_turnaround_gap_is_kept_around_every_frame() {
    // 20 ms turnaround + t3.5 before each of a unit's two requests: a cycle takes > 43 ms.
    let s = setup_with(Bus::Serial, "turnaround = \"20ms\"\n");
    let agent = AgentProcess::start(&s.config);
    wait_all_up(&s, &agent);
    // Until every unit has 10 latencies stored.
    let _ = wait_for(Duration::from_secs(20), || {
        let latency = s.vm.export(r#"{__name__="linetap_device_latency_ms"}"#);
        (latency.len() == 4 && latency.iter().all(|(_, v, _)| v.len() >= 10)).then_some(())
    });
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let latency = s.vm.export(r#"{__name__="linetap_device_latency_ms"}"#);
    assert_eq!(latency.len(), 4);
    for (labels, values, _) in &latency {
        assert!(
            !values.is_empty() && values.iter().all(|v| *v >= 43.5),
            "{}: {values:?}",
            labels["device"]
        );
    }
    assert_exact_values(&s);
}

#[test]
fn replies_that_arrive_in_pieces_are_reassembled() {
    let s = setup(Bus::Serial);
    let agent = AgentProcess::start(&s.config);
    wait_all_up(&s, &agent);
    // USB–RS-485 adapters hand over a frame in pieces, up to their latency timer apart.
    for u in UNITS {
        s.sim
            .set_fault(
                &format!("servo-{u}"),
                Fault::Chunked(Duration::from_millis(10)),
            )
            .unwrap();
    }
    // The faults apply from the next reply on (set_fault returns once they are set).
    let w0 = now_ms();
    // A wall-clock window: the polls in these 4 s are counted.
    std::thread::sleep(Duration::from_secs(4));
    let w1 = now_ms();
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_exact_values(&s);
    let lp = std::fs::read_to_string(s.dir.path().join("out.lp")).unwrap();
    for u in UNITS {
        let dev = format!("servo-{u}");
        let h = health(&s, &dev);
        let polls: Vec<_> = h.iter().filter(|(t, _)| *t >= w0 && *t < w1).collect();
        assert!(
            polls.len() >= 10,
            "{dev}: {} polls in 4 s with chunked replies",
            polls.len()
        );
        assert!(
            polls.iter().all(|(_, up)| *up == 1.0),
            "{dev} was reported down while its replies came in pieces"
        );
        let errors = error_lines(&lp, &dev);
        assert!(errors.is_empty(), "{dev}: {errors:?}");
    }
}
