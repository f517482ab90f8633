//! Universal Robots over RTDE, against the simulator's RTDE server over real TCP: a 500 Hz
//! robot with the `ur-rtde` recipe package for package in a real InfluxDB 1.x (values exact,
//! spacing the controller's 2 ms, no package missing); a CB3 that refuses 500 Hz and streams
//! at 125 Hz without the field its firmware lacks; a field the controller does not have,
//! named with the controller's version; and the faults: a dropped connection, a paused stream,
//! garbage, and a controller restart, each followed by recovery without restarting linetap.

mod common;

use common::*;
use linetap::sim::bank::{Bank, Fault};
use linetap::sim::rtde::Controller;
use linetap::source::rtde::protocol::ControllerVersion;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn a_500_hz_robot_arrives_package_for_package_in_influxdb_v1() {
    let influx = Influx1::start();
    influx.create_database("lt");
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The whole ur-rtde recipe, with three points told exactly what to serve: the package
    // number in an integrator register, the controller's clock, and joint positions that are
    // a function of it.
    let text = |address: &str| {
        format!(
            "[line]\nid = \"lab\"\n\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\n\n\
             [sinks.db]\ntype = \"influxdb\"\napi = \"v1\"\nurl = \"{}\"\ndatabase = \"lt\"\nflush_interval = \"200ms\"\nbatch_size = 20000\n\n\
             [[devices]]\nid = \"robot-01\"\nprotocol = \"rtde\"\naddress = \"{address}\"\nprofile = \"ur-rtde\"\nfrequency = 500\n\n\
             [[devices.points]]\nname = \"package\"\nrtde = \"output_int_register_0\"\nsimulate = \"floor(t * 500 + 0.5)\"\n\n\
             [[devices.points]]\nname = \"controller_time\"\nrtde = \"timestamp\"\n\n\
             [[devices.points]]\nname = \"position\"\nmeasurement = \"joint\"\nsimulate = \"t * 1000 + i\"\n",
            data.path().display(),
            influx.url
        )
    };
    let line = SimulatedLine::start(dir.path(), &["robot-01"], |a| text(&a[0]));
    let agent = AgentProcess::start(&line.config);
    // 20 s of packages.
    let count = |q: &str| {
        influx_rows(&influx.query("lt", q))
            .first()
            .and_then(|(_, c)| c.first().and_then(|v| v.as_i64()))
            .unwrap_or(0)
    };
    let stored = wait_for(Duration::from_secs(120), || {
        let n = count("SELECT count(package) FROM robot WHERE device = 'robot-01'");
        (n >= 10_000).then_some(n)
    });
    let (_, log) = agent.stop();
    assert!(
        stored.is_some(),
        "fewer than 10,000 packages stored:\n{log}"
    );
    // The controller's text message, logged with its source.
    assert!(
        log.lines()
            .any(|l| l.contains("controller: RTDE client streaming")
                && l.contains("linetap simulator")),
        "{log}"
    );
    let packages = influx_rows(&influx.query(
        "lt",
        "SELECT package, controller_time FROM robot WHERE device = 'robot-01'",
    ));
    let positions: std::collections::HashMap<i64, f64> = influx_rows(&influx.query(
        "lt",
        "SELECT position FROM joint WHERE device = 'robot-01' AND axis = '3'",
    ))
    .into_iter()
    .filter_map(|(t, c)| Some((t, c.first()?.as_f64()?)))
    .collect();
    assert!(packages.len() >= 10_000, "{}", packages.len());
    let mut previous: Option<(i64, i64)> = None;
    let mut checked = 0;
    for (t, c) in &packages {
        let n = c[0].as_i64().expect("package number");
        let ct = c[1].as_f64().expect("controller time");
        // Each package's values, exactly as served for its controller time.
        assert_eq!(n, (ct * 500.0 + 0.5).floor() as i64, "at {t}");
        assert_eq!(positions.get(t), Some(&(ct * 1000.0 + 3.0)), "at {t}");
        if let Some((pt, pn)) = previous {
            // No package missing, and the controller's spacing, not the network's.
            assert_eq!(n, pn + 1, "package {pn} then {n}");
            let spacing = t - pt;
            assert!(
                (1_900_000..=2_100_000).contains(&spacing),
                "packages {pn} and {n} stored {spacing} ns apart"
            );
        }
        previous = Some((*t, n));
        checked += 1;
    }
    assert!(checked >= 10_000);
    // The rest of the recipe arrived too: the TCP and the state (derived for every package).
    for m in [
        "SELECT count(x) FROM tcp WHERE device = 'robot-01'",
        "SELECT count(state) FROM robot WHERE device = 'robot-01'",
    ] {
        assert!(count(m) >= 10_000, "{m}: {}", count(m));
    }
}

/// A controller served by the test on a port of its own, with its fault switch.
struct Served {
    address: String,
    bank: Arc<Mutex<Bank>>,
    task: tokio::task::JoinHandle<()>,
}

fn serve(
    rt: &tokio::runtime::Runtime,
    cfg: &linetap::config::Config,
    version: ControllerVersion,
    lacks: &[&str],
    port: u16,
) -> Served {
    let d = &cfg.devices[0];
    let mut c = Controller::for_device(d).with_version(version);
    for f in lacks {
        c = c.without(f);
    }
    let bank = Arc::new(Mutex::new(Bank::for_device(d)));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("bind");
    let address = listener.local_addr().unwrap().to_string();
    let task = rt.spawn(linetap::sim::rtde::serve(
        listener,
        c,
        bank.clone(),
        Instant::now(),
    ));
    Served {
        address,
        bank,
        task,
    }
}

fn config(
    dir: &std::path::Path,
    address: &str,
    frequency: u32,
    extra: &str,
) -> linetap::config::Config {
    let text = format!(
        "[line]\nid = \"lab\"\n\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\nshutdown_grace = \"2s\"\n\n\
         [sinks.local]\ntype = \"file\"\npath = \"{}\"\nflush_interval = \"100ms\"\n\n\
         [[devices]]\nid = \"robot-01\"\nprotocol = \"rtde\"\naddress = \"{address}\"\nprofile = \"ur-rtde\"\nfrequency = {frequency}\ntimeout = \"500ms\"\n{extra}",
        dir.join("data").display(),
        dir.join("out.lp").display(),
    );
    linetap::config::parse("robot.toml", &text).unwrap_or_else(|e| panic!("{e}"))
}

/// The file sink's lines of measurement `m`.
fn lines(dir: &std::path::Path, m: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("out.lp"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&format!("{m},")))
        .map(str::to_string)
        .collect()
}

fn last_error(dir: &std::path::Path) -> Option<String> {
    lines(dir, "linetap_device").iter().rev().find_map(|l| {
        let v = l.split(" last_error=\"").nth(1)?;
        let v = v.rsplit_once("\" ")?.0;
        (!v.is_empty()).then(|| v.replace(r#"\""#, "\""))
    })
}

const CB3: ControllerVersion = ControllerVersion {
    major: 3,
    minor: 15,
    bugfix: 7,
    build: 106_331,
};

#[test]
fn a_cb3_refuses_500_hz_streams_125_and_a_missing_field_is_named() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A CB3 without the newer torque field (optional in the profile).
    let cfg = config(dir.path(), "127.0.0.1:1", 125, "");
    let served = serve(&rt, &cfg, CB3, &["actual_current_as_torque"], 0);

    // 500 Hz: refused by name and version, the device is down.
    let cfg500 = config(dir.path(), &served.address, 500, "");
    let agent = rt
        .block_on(async { linetap::run::Agent::start(&cfg500) })
        .expect("agent");
    let why = wait_for(Duration::from_secs(20), || last_error(dir.path()));
    rt.block_on(agent.stop());
    let why = why.expect("a health record saying why");
    assert!(
        why.contains("frequency 500 Hz")
            && why.contains("3.15.7.106331")
            && why.contains("at most 125 Hz"),
        "{why}"
    );
    assert!(lines(dir.path(), "joint").is_empty());

    // 125 Hz: streams, 8 ms apart, without the torque it lacks.
    let _ = std::fs::remove_file(dir.path().join("out.lp"));
    let cfg125 = config(dir.path(), &served.address, 125, "");
    let agent = rt
        .block_on(async { linetap::run::Agent::start(&cfg125) })
        .expect("agent");
    let stamps = wait_for(Duration::from_secs(30), || {
        let t: Vec<i64> = lines(dir.path(), "joint")
            .iter()
            .filter(|l| l.contains("axis=1,") && l.contains(" position="))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (t.len() >= 250).then_some(t)
    });
    rt.block_on(agent.stop());
    let stamps = stamps.expect("250 packages at 125 Hz");
    assert!(
        stamps.windows(2).all(|w| w[1] - w[0] == 8_000_000),
        "spacing: {:?}",
        stamps
            .windows(2)
            .map(|w| w[1] - w[0])
            .filter(|d| *d != 8_000_000)
            .take(5)
            .collect::<Vec<_>>()
    );
    let joint = lines(dir.path(), "joint");
    assert!(joint.iter().any(|l| l.contains(" current=")));
    assert!(
        !joint.iter().any(|l| l.contains(" torque=")),
        "torque from a CB3 that lacks it"
    );

    // A field the controller does not have: named, with the controller's version.
    let _ = std::fs::remove_file(dir.path().join("out.lp"));
    let extra =
        "\n[[devices.points]]\nname = \"gripper\"\nrtde = \"tool_gripper_width\"\ntype = \"f64\"\n";
    let cfgx = config(dir.path(), &served.address, 125, extra);
    let mut lacking = Controller::for_device(&cfgx.devices[0]).with_version(CB3);
    lacking = lacking.without("tool_gripper_width");
    served.task.abort();
    let bank = Arc::new(Mutex::new(Bank::for_device(&cfgx.devices[0])));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap().to_string();
    rt.spawn(linetap::sim::rtde::serve(
        listener,
        lacking,
        bank,
        Instant::now(),
    ));
    let cfgx = config(dir.path(), &address, 125, extra);
    let agent = rt
        .block_on(async { linetap::run::Agent::start(&cfgx) })
        .expect("agent");
    let why = wait_for(Duration::from_secs(20), || last_error(dir.path()));
    rt.block_on(agent.stop());
    let why = why.expect("a health record saying why");
    assert!(
        why.contains("\"tool_gripper_width\" not found on controller 3.15.7.106331"),
        "{why}"
    );

    // `linetap check --connect` says the same before the line runs, and exits 1; without the
    // missing field, the robot is reached and the command exits 0.
    let file = dir.path().join("robot.toml");
    let check = |extra: &str| {
        let text = format!(
            "[line]\nid = \"lab\"\n[agent]\ndata_dir = \"{}\"\n[sinks.local]\ntype = \"file\"\npath = \"{}\"\n\
             [[devices]]\nid = \"robot-01\"\nprotocol = \"rtde\"\naddress = \"{address}\"\nprofile = \"ur-rtde\"\n{extra}",
            dir.path().join("data").display(),
            dir.path().join("out.lp").display(),
        );
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_linetap"))
            .args(["check", "--connect", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = check(extra);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("device \"robot-01\": RTDE field \"tool_gripper_width\" not found on controller 3.15.7.106331"),
        "{text}"
    );
    let (code, text) = check("");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("device \"robot-01\": ok, "), "{text}");
}

#[test]
fn drops_pauses_garbage_and_a_restart_are_survived() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "127.0.0.1:1", 500, "");
    let e_series = Controller::for_device(&cfg.devices[0]).version;
    let served = serve(&rt, &cfg, e_series, &[], 0);
    let cfg = config(dir.path(), &served.address, 500, "");
    let agent = rt
        .block_on(async { linetap::run::Agent::start(&cfg) })
        .expect("agent");
    let up = || {
        agent
            .metrics
            .devices
            .get("robot-01")
            .map(|d| d.up.load(std::sync::atomic::Ordering::Relaxed))
    };
    let packages = || {
        agent
            .metrics
            .render_prometheus()
            .lines()
            .find_map(|l| {
                l.strip_prefix("linetap_rtde_packages_total{device=\"robot-01\"} ")?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    // Streaming, then more packages after `since`.
    let streams_again = |what: &str| {
        let since = packages();
        wait_for(Duration::from_secs(30), || {
            (up() == Some(true) && packages() > since + 500.0).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "not streaming again after {what}: up {:?}, {} packages",
                up(),
                packages()
            )
        });
    };
    streams_again("start");
    let fault = |f: Fault| served.bank.lock().unwrap().fault = f;
    for (what, f) in [
        ("a dropped connection", Fault::Drop),
        ("a paused stream", Fault::Silent),
        ("garbage", Fault::Garbage),
    ] {
        fault(f);
        wait_for(Duration::from_secs(20), || {
            (up() == Some(false)).then_some(())
        })
        .unwrap_or_else(|| panic!("{what}: the robot is not down"));
        let why = wait_for(Duration::from_secs(10), || last_error(dir.path())).unwrap_or_default();
        assert!(!why.is_empty(), "{what}: no reason recorded");
        fault(Fault::None);
        streams_again(what);
    }
    // The controller restarts: gone, then back on the same port with its clock from zero.
    let port: u16 = served.address.rsplit(':').next().unwrap().parse().unwrap();
    served.task.abort();
    wait_for(Duration::from_secs(20), || {
        (up() == Some(false)).then_some(())
    })
    .expect("down while the controller is off");
    let again = serve(&rt, &cfg, e_series, &[], port);
    streams_again("a controller restart");
    rt.block_on(agent.stop());
    again.task.abort();
    // The stored times never went back: the new clock was anchored afresh.
    let t: Vec<i64> = lines(dir.path(), "joint")
        .iter()
        .filter(|l| l.contains("axis=1,") && l.contains(" position="))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(t.len() > 2000, "{}", t.len());
    assert!(t.windows(2).all(|w| w[1] > w[0]), "stored times went back");
}

/// `linetap probe --rtde`: the profile's recipe set up as the agent would, one package shown,
/// each point with the field it came from.
#[test]
fn probe_reads_one_package() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "127.0.0.1:1",
        125,
        "\n[[devices.points]]\nname = \"cycles\"\nrtde = \"output_int_register_24\"\nsimulate = \"42\"\n",
    );
    let served = serve(&rt, &cfg, CB3, &[], 0);
    let probe = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_linetap"))
            .args(["probe", "--rtde", &served.address])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = probe(&["--point", "cycles=output_int_register_24"]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("(rtde, controller 3.15.7.106331)"), "{text}");
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
            .to_string()
    };
    assert!(row("robot.cycles ").contains("output_int_register_24"));
    assert!(row("robot.cycles ").contains(" 42"));
    assert!(row("joint.position[axis=1]").contains("actual_q[1]"));
    assert!(row("robot.state ").contains("derived"));
    assert!(row("robot.emergency_stop ").contains("safety_status_bits bit 7"));
    drop(served);
}
