//! OPC UA devices against a server linetap did not write: Python asyncua (`tests/opcua_server.py`,
//! installed by `.ci/run` in /opt/asyncua-venv; `LINETAP_ASYNCUA_PYTHON` names another
//! interpreter). Every basic type and arrays, by node and by path, exactly into InfluxDB 1.x and
//! VictoriaMetrics with the server's source timestamps; Bad values counted and never stored,
//! Uncertain ones stored; a server restart that changed every node id (a controller download)
//! followed without restarting linetap; Basic256Sha256 SignAndEncrypt with a user and password,
//! and a server whose certificate changed refused with an error that says what to do.

mod common;

use common::*;
use serde_json::Value as J;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// 2026-01-01T00:00:00Z: the counter's source timestamps are this + n × 100 ms.
const EPOCH_NS: i64 = 1_767_225_600_000_000_000;

fn python() -> String {
    std::env::var("LINETAP_ASYNCUA_PYTHON")
        .unwrap_or_else(|_| "/opt/asyncua-venv/bin/python".into())
}

/// The asyncua test server.
struct UaServer {
    child: Child,
    port: u16,
}

impl UaServer {
    /// `flags`: the server's own (`--secure`, `--robots=N`).
    fn start(pki: &Path, generation: u32, flags: &[&str]) -> UaServer {
        on_free_port("asyncua", |port| {
            Self::start_on(port, pki, generation, flags)
        })
    }

    fn start_on(
        port: u16,
        pki: &Path,
        generation: u32,
        flags: &[&str],
    ) -> Result<UaServer, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/opcua_server.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .args([
                "--port",
                &port.to_string(),
                "--generation",
                &generation.to_string(),
            ])
            .arg("--pki")
            .arg(pki)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd.args(flags);
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run {} (Python with asyncua: .ci/run installs it; or set LINETAP_ASYNCUA_PYTHON): {e}",
                python()
            )
        })?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim() == "READY" {
                    let _ = tx.send(());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) if listening(child.id(), port) => Ok(UaServer { child, port }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err("the server did not get ready (or another process has the port)".into())
            }
        }
    }

    fn endpoint(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.port)
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for UaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NODE: &str = "nsu=urn:linetap:test;s=g1.";

#[test]
fn every_basic_type_by_node_and_by_path_arrives_exactly() {
    let influx = Influx1::start();
    influx.create_database("lt");
    let vm = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let server = UaServer::start(&dir.path().join("server-pki"), 1, &[]);
    let metrics_port = free_port();
    // (name, type, the server's value as InfluxDB returns it): by node.
    let typed: [(&str, &str, J); 12] = [
        ("Boolean", "bool", J::from(true)),
        ("SByte", "i8", J::from(-8)),
        ("Byte", "u8", J::from(200)),
        ("Int16", "i16", J::from(-16000)),
        ("UInt16", "u16", J::from(65000)),
        ("Int32", "i32", J::from(-2_000_000_000i64)),
        ("UInt32", "u32", J::from(4_000_000_000i64)),
        ("Int64", "i64", J::from(-9_000_000_000_000_000_000i64)),
        ("UInt64", "u64", J::from(9_000_000_000_000_000_000i64)),
        ("Float", "f32", J::from(1.5)),
        ("Double", "f64", J::from(2.25)),
        ("String", "string", J::from("hello, robot")),
    ];
    let mut points = String::new();
    for (name, ty, _) in &typed {
        points.push_str(&format!(
            "[[devices.points]]\nname = \"{}\"\nnode = \"{NODE}{name}\"\ntype = \"{ty}\"\n\n",
            name.to_lowercase()
        ));
    }
    // By path: a scalar (untyped: f64), arrays, the counter, Bad and Uncertain values.
    points.push_str(
        "[[devices.points]]\nname = \"double_by_path\"\npath = \"Objects/{urn:linetap:test}Plant/Double\"\n\n\
         [[devices.points]]\nname = \"axis_pos\"\npath = \"Objects/Plant/DoubleArray\"\ncount = 3\nindex_tag = \"axis\"\n\n\
         [[devices.points]]\nname = \"steps\"\npath = \"Objects/Plant/Int32Array\"\ntype = \"i32\"\ncount = 3\nindex_tag = \"axis\"\n\n\
         [[devices.points]]\nname = \"counter\"\npath = \"Objects/Plant/Counter\"\n\n\
         [[devices.points]]\nname = \"broken\"\npath = \"Objects/Plant/Broken\"\n\n\
         [[devices.points]]\nname = \"doubtful\"\npath = \"Objects/Plant/Doubtful\"\n\n\
         [[devices.points]]\nname = \"missing\"\npath = \"Objects/Plant/NoSuchVariable\"\n\n\
         [[devices.points]]\nname = \"int32_by_path\"\npath = \"Objects/Plant/Int32\"\n\n\
         [[devices.points]]\nname = \"string_by_path\"\npath = \"Objects/Plant/String\"\n\n\
         [[devices.points]]\nname = \"text_as_number\"\npath = \"Objects/Plant/String\"\ntype = \"f64\"\n\n",
    );
    let config = dir.path().join("line.toml");
    std::fs::write(
        &config,
        format!(
            "[line]\nid = \"lab\"\n\n[agent]\ndata_dir = \"{data}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nself_interval = \"0s\"\n\n\
             [sinks.db]\ntype = \"influxdb\"\napi = \"v1\"\nurl = \"{influx}\"\ndatabase = \"lt\"\nflush_interval = \"200ms\"\n\n\
             [sinks.vm]\ntype = \"influxdb\"\nurl = \"{vm}\"\norg = \"lab\"\nbucket = \"b\"\ntoken_env = \"VM_TOKEN\"\nflush_interval = \"200ms\"\n\n\
             [[devices]]\nid = \"plc-ua\"\nkind = \"plc\"\nprotocol = \"opcua\"\nendpoint = \"{endpoint}\"\npoll = \"100ms\"\n\n{points}",
            data = dir.path().join("data").display(),
            influx = influx.url,
            vm = vm.url,
            endpoint = server.endpoint(),
        ),
    )
    .unwrap();
    let agent = AgentProcess::start_with_env(&config, &[("VM_TOKEN", "t")]);
    let q = |q: &str| influx_rows(&influx.query("lt", q));
    let counters = wait_for(Duration::from_secs(60), || {
        let r = q("SELECT counter FROM plc WHERE device = 'plc-ua'");
        (r.len() >= 30).then_some(r)
    });
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let bad = metric(
        &metrics_url,
        "linetap_opcua_values_total{device=\"plc-ua\",result=\"bad\"}",
    );
    let (_, log) = agent.stop();
    let counters = counters.unwrap_or_else(|| panic!("no counter values:\n{log}"));
    // Every type, exactly.
    for (name, _, want) in &typed {
        let field = name.to_lowercase();
        let r = q(&format!(
            "SELECT last(\"{field}\") FROM plc WHERE device = 'plc-ua'"
        ));
        assert_eq!(r.first().map(|(_, c)| &c[0]), Some(want), "{field}\n{log}");
    }
    let r = q("SELECT last(double_by_path) FROM plc");
    assert_eq!(r.first().map(|(_, c)| c[0].clone()), Some(J::from(2.25)));
    for (axis, pos, step) in [("1", 1.5, 7), ("2", -2.5, -7), ("3", 3.25, 70000)] {
        let r = q(&format!(
            "SELECT last(axis_pos), last(steps) FROM plc WHERE axis = '{axis}'"
        ));
        assert_eq!(
            r.first().map(|(_, c)| c.clone()),
            Some(vec![J::from(pos), J::from(step)]),
            "axis {axis}"
        );
    }
    // The counter at its source timestamps: n at EPOCH + n × 100 ms, each exactly.
    for (t, c) in &counters {
        let n = c[0].as_f64().unwrap() as i64;
        assert_eq!(*t, EPOCH_NS + n * 100_000_000, "counter {n}");
    }
    // Bad never stored, counted; Uncertain stored.
    assert!(q("SELECT count(broken) FROM plc").is_empty());
    assert!(bad.is_some_and(|b| b >= 1.0), "bad values counted: {bad:?}");
    assert!(q("SELECT count(doubtful) FROM plc")
        .first()
        .is_some_and(|(_, c)| c[0].as_i64() >= Some(10)));
    // The missing path is named in the health record; the other points ran.
    let errors = q("SELECT last_error FROM linetap_device WHERE device = 'plc-ua'");
    assert!(
        errors.iter().any(|(_, c)| c[0]
            .as_str()
            .is_some_and(|e| e.contains("point \"missing\"") && e.contains("NoSuchVariable"))),
        "{errors:?}"
    );
    // Untyped points took their node's DataType: an integer and a text field.
    let field_types = influx.query("lt", "SHOW FIELD KEYS FROM plc");
    let types: std::collections::HashMap<String, String> = field_types["results"][0]["series"][0]
        ["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r[0].as_str()?.to_string(), r[1].as_str()?.to_string())))
        .collect();
    assert_eq!(
        types.get("int32_by_path").map(String::as_str),
        Some("integer"),
        "{types:?}"
    );
    assert_eq!(
        types.get("string_by_path").map(String::as_str),
        Some("string"),
        "{types:?}"
    );
    assert_eq!(
        types.get("counter").map(String::as_str),
        Some("float"),
        "{types:?}"
    );
    let r = q("SELECT last(int32_by_path), last(string_by_path) FROM plc");
    assert_eq!(
        r.first().map(|(_, c)| c.clone()),
        Some(vec![J::from(-2_000_000_000i64), J::from("hello, robot")])
    );
    // A text node for a number point is named, not read.
    assert!(
        errors.iter().any(|(_, c)| c[0].as_str().is_some_and(|e| e
            .contains("point \"text_as_number\": the node's data type (i=12) cannot become f64"))),
        "{errors:?}"
    );
    // VictoriaMetrics got the same values.
    let vm_last = |selector: &str| -> Option<f64> {
        vm.export(selector)
            .into_iter()
            .flat_map(|(_, v, _)| v)
            .last()
    };
    let in_vm = wait_for(Duration::from_secs(30), || {
        Some((
            vm_last("plc_int32")?,
            vm_last("plc_double")?,
            vm_last("plc_counter")?,
        ))
    });
    let (i32_vm, double_vm, _) = in_vm.expect("values in VictoriaMetrics");
    assert_eq!(i32_vm, -2_000_000_000.0);
    assert_eq!(double_vm, 2.25);
    drop(server);
}

#[test]
fn a_server_restart_with_new_node_ids_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("server-pki");
    let server = UaServer::start(&pki, 1, &[]);
    let out = dir.path().join("out.lp");
    let text = format!(
        "[line]\nid = \"lab\"\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\n\
         [sinks.local]\ntype = \"file\"\npath = \"{}\"\nflush_interval = \"100ms\"\n\
         [[devices]]\nid = \"plc-ua\"\nkind = \"plc\"\nprotocol = \"opcua\"\nendpoint = \"{}\"\npoll = \"100ms\"\ntimeout = \"2s\"\n\
         [[devices.points]]\nname = \"counter\"\npath = \"Objects/Plant/Counter\"\n",
        dir.path().join("data").display(),
        out.display(),
        server.endpoint()
    );
    let cfg = linetap::config::parse("ua.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = rt
        .block_on(async { linetap::run::Agent::start(&cfg) })
        .expect("agent");
    let counters = || -> Vec<i64> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" counter="))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    wait_for(Duration::from_secs(60), || {
        (counters().len() >= 10).then_some(())
    })
    .expect("counter values before the restart");
    // A controller download: the server goes away and comes back with every node id changed.
    let port = server.stop();
    let before = counters().len();
    let again = on_free_port_fixed(port, || UaServer::start_on(port, &pki, 2, &[]));
    let ready = Instant::now();
    let resumed = wait_for(Duration::from_secs(30), || {
        (counters().len() >= before + 10).then(|| ready.elapsed())
    });
    let up = agent
        .metrics
        .devices
        .get("plc-ua")
        .map(|d| d.up.load(std::sync::atomic::Ordering::Relaxed));
    rt.block_on(agent.stop());
    drop(again);
    let resumed = resumed.expect("values again after the restart, without restarting linetap");
    assert!(
        resumed < Duration::from_secs(10) + Duration::from_secs(1),
        "recovered in {resumed:?}"
    );
    assert_eq!(up, Some(true));
    let t = counters();
    assert!(t.windows(2).all(|w| w[1] >= w[0]), "stored times went back");
}

/// Starts on exactly `port` (a server restarted where the device expects it), retrying while
/// the old one's socket lingers.
fn on_free_port_fixed<T>(port: u16, mut start: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match start() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("no server on port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn basic256sha256_with_a_password_and_a_changed_certificate_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = UaServer::start(&dir.path().join("server-pki"), 1, &["--secure"]);
    let out = dir.path().join("out.lp");
    let text = |endpoint: &str| {
        format!(
            "[line]\nid = \"lab\"\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\n\
             [sinks.local]\ntype = \"file\"\npath = \"{}\"\nflush_interval = \"100ms\"\n\
             [[devices]]\nid = \"plc-ua\"\nkind = \"plc\"\nprotocol = \"opcua\"\nendpoint = \"{endpoint}\"\n\
             security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\nusername = \"linetap\"\npassword_env = \"UA_TEST_PASSWORD\"\npoll = \"100ms\"\ntimeout = \"3s\"\n\
             [[devices.points]]\nname = \"counter\"\npath = \"Objects/Plant/Counter\"\n",
            dir.path().join("data").display(),
            out.display(),
        )
    };
    std::env::set_var("UA_TEST_PASSWORD", "secret");
    let cfg = linetap::config::parse("ua.toml", &text(&server.endpoint()))
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let agent = rt
        .block_on(async { linetap::run::Agent::start(&cfg) })
        .expect("agent");
    let got = wait_for(Duration::from_secs(60), || {
        (lines().iter().filter(|l| l.contains(" counter=")).count() >= 10).then_some(())
    });
    // The server comes back with a new certificate (a new PKI): refused, saying what to do.
    let port = server.stop();
    let other = on_free_port_fixed(port, || {
        UaServer::start_on(port, &dir.path().join("other-pki"), 1, &["--secure"])
    });
    // The counter's source times follow the wall clock: none may come from the new server.
    let restarted = linetap::model::now_ns();
    let counters_since = || {
        lines()
            .iter()
            .filter(|l| l.contains(" counter="))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .filter(|t| *t > restarted)
            .count()
    };
    let refused = wait_for(Duration::from_secs(60), || {
        lines()
            .iter()
            .rev()
            .find(|l| l.contains("last_error=") && l.contains("trusted"))
            .cloned()
    });
    let after = counters_since();
    rt.block_on(agent.stop());
    drop(other);
    got.expect("values over Basic256Sha256 SignAndEncrypt with user and password");
    let refused = refused.expect("a changed server certificate refused");
    assert!(refused.contains("BadCertificateUntrusted"), "{refused}");
    assert_eq!(after, 0, "values from a server whose certificate changed");
    let _: PathBuf = dir.path().join("data/pki/plc-ua/trusted");
}

#[test]
fn probe_browses_a_server_and_check_connect_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let server = UaServer::start(&dir.path().join("server-pki"), 1, &[]);
    let linetap = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_linetap"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The commissioning browse: node id, browse path, data type, value.
    let (code, text, err) = linetap(&[
        "probe",
        "--opcua",
        &server.endpoint(),
        "--path",
        "Objects/Plant",
        "--depth",
        "1",
    ]);
    assert_eq!(code, Some(0), "{text}{err}");
    // The natural order of browse names: Boolean, Broken, Byte … (not the server's order).
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("Objects/Plant/{urn:linetap:test}").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    assert_eq!(
        names.get(..3),
        Some(&["Boolean", "Broken", "Byte"][..]),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.contains("s=g1.Int32 "))
        .unwrap_or_else(|| panic!("{text}"));
    for want in [
        "Objects/Plant/{urn:linetap:test}Int32",
        "i32 (i=6)",
        "-2000000000",
    ] {
        assert!(row.contains(want), "{want} in {row}");
    }
    assert!(text.contains("status BadSensorFailure"), "{text}");
    // check --connect reads each point once: the missing one is named, exit 1.
    let config = dir.path().join("ua.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[line]\nid = \"lab\"\n[agent]\ndata_dir = \"{}\"\n[sinks.local]\ntype = \"file\"\npath = \"{}\"\n\
                 [[devices]]\nid = \"plc-ua\"\nprotocol = \"opcua\"\nendpoint = \"{}\"\n\
                 [[devices.points]]\nname = \"counter\"\npath = \"Objects/Plant/Counter\"\n{extra}",
                dir.path().join("data").display(),
                dir.path().join("out.lp").display(),
                server.endpoint()
            ),
        )
        .unwrap();
    };
    write(
        "[[devices.points]]\nname = \"gone\"\nnode = \"nsu=urn:linetap:test;s=g1.Gone\"\n\
           [[devices.points]]\nname = \"elsewhere\"\nnode = \"nsu=urn:nope;s=X\"\n",
    );
    let path = config.display().to_string();
    let (code, text, err) = linetap(&["check", "--connect", "--config", &path]);
    assert_eq!(code, Some(1), "{text}{err}");
    assert!(
        text.contains(
            "device \"plc-ua\": 2 of 3 values without a value: other.gone: status BadNodeIdUnknown"
        ) && text.contains("other.elsewhere: the server has no namespace \"urn:nope\""),
        "{text}"
    );
    write("");
    let (code, text, err) = linetap(&["check", "--connect", "--config", &path]);
    assert_eq!(code, Some(0), "{text}{err}");
    // A server that serves no OPC 40010 robot, read as one: said, not an empty table.
    let (robot_code, robot_text, robot_err) = linetap(&[
        "probe",
        "--opcua",
        &server.endpoint(),
        "--profile",
        "opcua-robotics",
    ]);
    assert_eq!(robot_code, Some(1), "{robot_text}{robot_err}");
    assert!(
        robot_err.contains("OPC 40010 robots: the server has no Objects/DeviceSet"),
        "{robot_err}"
    );
    assert!(
        text.contains("device \"plc-ua\": ok, 1 value read"),
        "{text}"
    );
}

/// More items than one publish used to carry (the client's default array limit is 1,000; a
/// larger publish closed the connection), created in batches of 400: every item's first value
/// arrives.
#[test]
fn fifteen_hundred_items_in_batches_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/opcua_server.py");
    let server = on_free_port("asyncua (bench)", |port| {
        let mut child = Command::new(python())
            .arg(&script)
            .args([
                "--port",
                &port.to_string(),
                "--items",
                "1500",
                "--every",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim() == "READY" && listening(child.id(), port) {
            Ok(UaServer { child, port })
        } else {
            let _ = child.kill();
            let _ = child.wait();
            Err("not ready".to_string())
        }
    });
    let out = dir.path().join("out.lp");
    let mut text = format!(
        "[line]\nid = \"lab\"\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\n\
         [sinks.local]\ntype = \"file\"\npath = \"{}\"\nflush_interval = \"200ms\"\n\
         [[devices]]\nid = \"ua\"\nprotocol = \"opcua\"\nendpoint = \"{}\"\npoll = \"500ms\"\ntimeout = \"20s\"\nmax_items_per_call = 400\n",
        dir.path().join("data").display(),
        out.display(),
        server.endpoint()
    );
    for i in 0..1500 {
        text.push_str(&format!(
            "[[devices.points]]\nname = \"v{i}\"\nmeasurement = \"bench\"\nnode = \"nsu=urn:linetap:bench;s=v{i}\"\n"
        ));
    }
    let cfg = linetap::config::parse("ua.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = rt
        .block_on(async { linetap::run::Agent::start(&cfg) })
        .expect("agent");
    let seen = || -> std::collections::HashSet<String> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| Some(l.split(' ').nth(1)?.split('=').next()?.to_string()))
            .filter(|f| f.starts_with('v'))
            .collect()
    };
    let all = wait_for(Duration::from_secs(90), || {
        (seen().len() == 1500).then_some(())
    });
    let n = seen().len();
    rt.block_on(agent.stop());
    drop(server);
    assert!(all.is_some(), "{n} of 1500 items delivered values");
}

/// `server_cert_file`: the server's certificate given (DER, as asyncua writes it) is trusted
/// from the first connection, nothing pinned on first use.
#[test]
fn a_given_server_certificate_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = dir.path().join("server-pki");
    let server = UaServer::start(&server_pki, 1, &["--secure"]);
    let out = dir.path().join("out.lp");
    std::env::set_var("UA_TEST_PASSWORD_2", "secret");
    let text = format!(
        "[line]\nid = \"lab\"\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\n\
         [sinks.local]\ntype = \"file\"\npath = \"{}\"\nflush_interval = \"100ms\"\n\
         [[devices]]\nid = \"plc-ua\"\nprotocol = \"opcua\"\nendpoint = \"{}\"\n\
         security_policy = \"Basic256Sha256\"\nusername = \"linetap\"\npassword_env = \"UA_TEST_PASSWORD_2\"\n\
         server_cert_file = \"{}\"\npoll = \"100ms\"\ntimeout = \"3s\"\n\
         [[devices.points]]\nname = \"counter\"\npath = \"Objects/Plant/Counter\"\n",
        dir.path().join("data").display(),
        out.display(),
        server.endpoint(),
        server_pki.join("server_cert.der").display(),
    );
    let cfg = linetap::config::parse("ua.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = rt
        .block_on(async { linetap::run::Agent::start(&cfg) })
        .expect("agent");
    let got = wait_for(Duration::from_secs(60), || {
        let n = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" counter="))
            .count();
        (n >= 5).then_some(())
    });
    let log_hint = std::fs::read_to_string(&out).unwrap_or_default();
    rt.block_on(agent.stop());
    drop(server);
    assert!(
        got.is_some(),
        "no values with server_cert_file:\n{log_hint}"
    );
}

/// (b) An OPC 40010 MotionDeviceSystem built by the test server with the spec's browse names
/// (tests/opcua_server.py `robots()`), read by `profile = "opcua-robotics"` into InfluxDB 1.x,
/// every value worked out by hand: one motion device is the device itself; the server back
/// with two is written as robot-05-1 and robot-05-2, without restarting linetap.
#[test]
fn opcua_robotics_reads_a_motion_device_system_by_browsing() {
    let influx = Influx1::start();
    influx.create_database("lt");
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("server-pki");
    let server = UaServer::start(&pki, 1, &["--robots=1"]);
    let config = dir.path().join("line.toml");
    std::fs::write(
        &config,
        format!(
            "[line]\nid = \"lab\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\n\n\
             [sinks.db]\ntype = \"influxdb\"\napi = \"v1\"\nurl = \"{influx}\"\ndatabase = \"lt\"\nflush_interval = \"200ms\"\n\n\
             [[devices]]\nid = \"robot-05\"\nprotocol = \"opcua\"\nendpoint = \"{endpoint}\"\npoll = \"100ms\"\ntimeout = \"2s\"\n\
             profile = \"opcua-robotics\"\n\n\
             [[devices.points]]\nname = \"cell_double\"\npath = \"Objects/Plant/Double\"\n",
            data = dir.path().join("data").display(),
            influx = influx.url,
            endpoint = server.endpoint(),
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&config);
    let q = |q: &str| influx_rows(&influx.query("lt", q));
    let last = |field: &str, from: &str, filter: &str| -> Option<J> {
        q(&format!(
            "SELECT last(\"{field}\") FROM {from} WHERE {filter}"
        ))
        .first()
        .map(|(_, c)| c[0].clone())
    };
    let num = |field: &str, from: &str, filter: &str| -> Option<f64> {
        last(field, from, filter).and_then(|v| v.as_f64())
    };
    let one = wait_for(Duration::from_secs(60), || {
        last("state", "robot", "device = 'robot-05'")
    });
    assert_eq!(one, Some(J::from(3)), "running (in control, on path)");
    // Joints by axis position, tagged with the axis's browse name; the motor temperature is
    // the one of the power train the axis IsDrivenBy (the power trains are listed J2 first).
    for (axis, name, position, speed, temperature) in
        [("1", "J1", 0.5, 0.1, 39.0), ("2", "J2", -1.25, -0.2, 42.5)]
    {
        let at = format!("device = 'robot-05' AND axis = '{axis}' AND axis_name = '{name}'");
        assert_eq!(num("position", "joint", &at), Some(position), "{at}");
        assert_eq!(num("speed", "joint", &at), Some(speed), "{at}");
        assert_eq!(num("temperature", "joint", &at), Some(temperature), "{at}");
    }
    // ActualAcceleration is optional: J1 has it, J2 does not.
    assert_eq!(
        last(
            "acceleration",
            "joint",
            "device = 'robot-05' AND axis = '1'"
        ),
        Some(J::from(0.01))
    );
    assert_eq!(
        last(
            "acceleration",
            "joint",
            "device = 'robot-05' AND axis = '2'"
        ),
        None
    );
    let robot = "device = 'robot-05'";
    for (field, want) in [
        ("speed_override_pct", 75.0),
        // P12DT3H25M7S
        (
            "power_on_s",
            12.0 * 86_400.0 + 3.0 * 3600.0 + 25.0 * 60.0 + 7.0,
        ),
        ("controller_temperature", 36.5),
        // A vendor node beside the standard ones.
        ("cell_double", 2.25),
    ] {
        assert_eq!(num(field, "robot", robot), Some(want), "{field}");
    }
    for (field, want) in [
        ("operational_mode", J::from(3)),
        ("operational_mode_label", J::from("automatic")),
        ("emergency_stop", J::from(false)),
        ("protective_stop", J::from(false)),
        ("program", J::from("WELD_A7")),
        ("execution_mode", J::from(1)),
        ("execution_mode_label", J::from("continuous")),
        ("state_label", J::from("running")),
    ] {
        assert_eq!(last(field, "robot", robot), Some(want), "{field}");
    }
    for (field, want) in [
        ("speed_override_pct", 75.0),
        // P12DT3H25M7S
        (
            "power_on_s",
            12.0 * 86_400.0 + 3.0 * 3600.0 + 25.0 * 60.0 + 7.0,
        ),
        ("controller_temperature", 36.5),
        // A vendor node beside the standard ones.
        ("cell_double", 2.25),
    ] {
        assert_eq!(num(field, "robot", robot), Some(want), "{field}");
    }
    // The server back with two motion devices: each its own device, the configured one keeps
    // the vendor node and the session's health.
    let port = server.stop();
    let again = on_free_port_fixed(port, || UaServer::start_on(port, &pki, 1, &["--robots=2"]));
    let two = wait_for(Duration::from_secs(60), || {
        Some((
            last("state", "robot", "device = 'robot-05-1'")?,
            last("state", "robot", "device = 'robot-05-2'")?,
        ))
    });
    let (_, log) = agent.stop();
    drop(again);
    assert_eq!(
        two,
        Some((J::from(3), J::from(2))),
        "Arm1 runs, Arm2 stands (not in control)\n{log}"
    );
    let at = "device = 'robot-05-2' AND axis = '2' AND axis_name = 'J2'";
    assert_eq!(num("position", "joint", at), Some(-2.5));
    let axis1 = "device = 'robot-05-2' AND axis = '1'";
    assert_eq!(num("temperature", "joint", axis1), Some(40.0));
    let arm2 = "device = 'robot-05-2'";
    assert_eq!(num("speed_override_pct", "robot", arm2), Some(20.0));
    assert_eq!(
        last("up", "linetap_device", "device = 'robot-05'"),
        Some(J::from(true))
    );
    assert!(
        log.contains("devices=robot-05, robot-05-1, robot-05-2"),
        "{log}"
    );
}

/// `linetap simulate`'s OPC UA server (in process: `Simulator`) serves an OPC 40010 robot for
/// an `opcua-robotics` device and a vendor variable at its path, with the points' `simulate`
/// values; the agent reads it by browsing (six axes A1…A6, tagged), and a reload that leaves
/// the device unchanged (a sink added) keeps the axes it learned: values go on arriving in
/// both sinks.
#[test]
fn the_simulated_opc_40010_robot_is_read_and_a_reload_keeps_its_axes() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one.lp"), dir.path().join("two.lp"));
    let text = |sinks: &str| {
        format!(
            "[line]\nid = \"lab\"\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\n{sinks}\
             [[devices]]\nid = \"robot-07\"\nprotocol = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:0/\"\n\
             profile = \"opcua-robotics\"\npoll = \"100ms\"\n\
             [[devices.points]]\nname = \"speed_override_pct\"\nrobotics = \"SpeedOverride\"\ntype = \"f64\"\nunit = \"%\"\nsimulate = \"55\"\n\
             [[devices.points]]\nname = \"gripper_force\"\npath = \"Objects/{{urn:acme:gripper}}Gripper/Force\"\nsimulate = \"12.5\"\n",
            dir.path().join("data").display()
        )
    };
    let sink = |name: &str, path: &Path| {
        format!(
            "[sinks.{name}]\ntype = \"file\"\npath = \"{}\"\nflush_interval = \"100ms\"\n",
            path.display()
        )
    };
    let mut cfg = linetap::config::parse("ua.toml", &text(&sink("one", &one)))
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(linetap::sim::Simulator::start(&cfg))
        .expect("simulator");
    sim.rewire(&mut cfg);
    let mut agent = rt
        .block_on(async { linetap::run::Agent::start(&cfg) })
        .expect("agent");
    let lines = |file: &Path, pattern: &str| -> usize {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(pattern))
            .count()
    };
    let a6 = "joint,axis=6,axis_name=A6,device=robot-07,";
    let first = wait_for(Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&one).unwrap_or_default();
        (text.contains(a6)
            && text.contains("speed_override_pct=55")
            && text.contains("gripper_force=12.5")
            && text.contains("state=3i"))
        .then_some(())
    });
    assert!(
        first.is_some(),
        "robot values from the simulator:\n{}",
        std::fs::read_to_string(&one).unwrap_or_default()
    );
    // Six axes, no seventh; the profile's default count is what the robot has here.
    assert_eq!(lines(&one, "axis=7"), 0);
    // A reload that adds a sink: the device is unchanged, its session goes on.
    let mut again = linetap::config::parse(
        "ua.toml",
        &text(&format!("{}{}", sink("one", &one), sink("two", &two))),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    sim.rewire(&mut again);
    let report = rt.block_on(agent.reload(&again)).expect("reload");
    assert!(
        report.restarted.is_empty() && report.stopped.is_empty() && report.started.len() == 1,
        "{report:?}"
    );
    let before = lines(&one, a6);
    let after = wait_for(Duration::from_secs(30), || {
        (lines(&one, a6) >= before + 10 && lines(&two, a6) >= 10).then_some(())
    });
    rt.block_on(agent.stop());
    sim.stop();
    assert!(
        after.is_some(),
        "axis values after the reload: {} before, {} in one, {} in two",
        before,
        lines(&one, a6),
        lines(&two, a6)
    );
}

/// An online change on a server that stays up: the counter's node is deleted and created
/// again under the same path with a new node id, and the server tells its subscribers nothing
/// (asyncua). The path is browsed again every `browse_interval`: the new node is found and
/// read, without restarting linetap.
#[test]
fn a_variable_recreated_under_its_path_with_a_new_node_id_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = UaServer::start(&dir.path().join("server-pki"), 1, &["--recreate-after=3"]);
    let out = dir.path().join("out.lp");
    let config = dir.path().join("ua.toml");
    std::fs::write(
        &config,
        format!(
            "[line]\nid = \"lab\"\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\n\
             [sinks.local]\ntype = \"file\"\npath = \"{}\"\nflush_interval = \"100ms\"\n\
             [[devices]]\nid = \"plc-ua\"\nkind = \"plc\"\nprotocol = \"opcua\"\nendpoint = \"{}\"\npoll = \"100ms\"\n\
             browse_interval = \"1s\"\n\
             [[devices.points]]\nname = \"counter\"\npath = \"Objects/Plant/Counter\"\n",
            dir.path().join("data").display(),
            out.display(),
            server.endpoint()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&config);
    let counters = || -> usize {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" counter="))
            .count()
    };
    // 10 values a second: the old node stops after 3 s (about 30 values); 100 need the new one.
    let read_again = wait_for(Duration::from_secs(40), || {
        (counters() >= 100).then_some(())
    });
    let (_, log) = agent.stop();
    assert!(
        read_again.is_some(),
        "{} counter values: the re-created node was not read\n{log}",
        counters()
    );
    assert!(log.contains("the server's nodes changed"), "{log}");
    drop(server);
}

/// `linetap demo --opcua`: two OPC 40010 robot controllers served by the simulator and read by
/// browsing, with vendor nodes beside the standard ones (an array among them); the run ends
/// with everything delivered.
#[test]
fn the_opcua_demo_line_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_linetap"))
        .args(["demo", "--opcua", "--duration", "6s"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("nothing left undelivered"),
        "{stdout}{stderr}"
    );
    let lp = std::fs::read_to_string(dir.path().join("linetap-out/demo-opcua.lp")).unwrap();
    for want in [
        "joint,axis=6,axis_name=A6,cell=cell-2,device=robot-03,",
        "joint,axis=6,cell=cell-2,device=robot-03,",
        " current=",
        "device=robot-04,",
        " state=3i,state_label=\"running\"",
        "tcp,cell=cell-2,device=robot-03,",
    ] {
        assert!(lp.contains(want), "{want:?} in the demo's output");
    }
}
