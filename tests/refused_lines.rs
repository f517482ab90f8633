//! One device whose lines the store refuses costs the other devices nothing. Five simulated
//! devices × 5 f32 at 10 Hz, dev4 refused on every line:
//! - through a proxy in front of VictoriaMetrics that answers 400 with InfluxDB's "field type
//!   conflict" message to any write holding a line of dev4 and forwards nothing of it (a store
//!   that writes nothing of a refused request);
//! - against a real InfluxDB 1.x where dev4's field already exists with another type (it
//!   writes the good lines of the request itself: a partial write).
//!
//! Either way every line of the four good devices is in the store (exactly what their
//! successful polls read), ≥ 99 % of dev4's refused lines are in the dead-letter file with the
//! server's reason, and the requests per batch are printed.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

const DEVICES: [&str; 5] = ["dev0", "dev1", "dev2", "dev3", "dev4"];

/// The agent's configuration: `field(device)` names each device's five values.
fn config(
    url: &str,
    data: &str,
    port: u16,
    addrs: &[String],
    field: impl Fn(&str) -> &'static str,
) -> String {
    let mut s = format!(
        "[line]\nid = \"refused\"\n\n[agent]\ndata_dir = \"{data}\"\nmetrics_listen = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\"\nself_interval = \"0s\"\n\n\
         [sinks.store]\ntype = \"influxdb\"\nurl = \"{url}\"\napi = \"v1\"\ndatabase = \"lt\"\ngzip = false\nflush_interval = \"200ms\"\n\n"
    );
    for (id, a) in DEVICES.iter().zip(addrs) {
        s.push_str(&format!(
            "[[devices]]\nid = \"{id}\"\nkind = \"robot\"\naddress = \"{a}\"\npoll = \"100ms\"\ntimeout = \"300ms\"\n\n\
             [[devices.points]]\nname = \"{}\"\nmeasurement = \"m\"\naddress = 0\ntype = \"f32\"\ncount = 5\nindex_tag = \"i\"\n\n",
            field(id)
        ));
    }
    s
}

/// Whether a line is one of `device`'s.
fn of(line: &str, device: &str) -> bool {
    line.contains(&format!("device={device},")) || line.contains(&format!("device={device} "))
}

/// An HTTP/1.1 proxy on loopback: a write holding a line of dev4 is answered 400 with
/// InfluxDB's type-conflict message and nothing of it is forwarded; any other is forwarded to
/// `upstream` and its status returned.
struct RefusingProxy {
    url: String,
    refused: Arc<AtomicU64>,
}

impl RefusingProxy {
    fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let refused = Arc::new(AtomicU64::new(0));
        let count = refused.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (up, count) = (upstream.clone(), count.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &count);
                });
            }
        });
        RefusingProxy { url, refused }
    }
}

fn serve(conn: TcpStream, upstream: &str, refused: &AtomicU64) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let target = request.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            assert!(!lower.starts_with("content-encoding"), "gzip is off: {h}");
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        let text = String::from_utf8_lossy(&body);
        let dropped = text.lines().filter(|l| of(l, "dev4")).count();
        let (status, reply) = if dropped > 0 {
            refused.fetch_add(1, Relaxed);
            (
                400,
                format!(
                    "{{\"error\":\"partial write: field type conflict: input field \\\"value\\\" on measurement \\\"m\\\" is type float, already exists as type integer dropped={dropped}\"}}"
                ),
            )
        } else {
            match request_with_body("POST", &format!("{upstream}{target}"), &text) {
                Ok(r) => (r.status, r.body),
                Err(e) => (503, e.to_string()),
            }
        };
        let head = match status {
            204 => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            s => format!(
                "HTTP/1.1 {s} Status\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                reply.len()
            ),
        };
        out.write_all(head.as_bytes())?;
    }
}

fn request_with_body(method: &str, url: &str, body: &str) -> std::io::Result<http::Reply> {
    request(method, url, Some(body))
}

/// Polls that read the device's values (`linetap_modbus_requests_total{result="ok"}`): one
/// request reads all five.
fn ok_polls(metrics: &str, device: &str) -> u64 {
    metric(
        metrics,
        &format!("linetap_modbus_requests_total{{device=\"{device}\",result=\"ok\"}}"),
    )
    .unwrap_or(0.0) as u64
}

/// Stops every device answering with data (they answer each read with an exception), then
/// waits until each has failed a few polls and returns the successful polls of each.
fn freeze(line: &SimulatedLine, metrics: &str) -> Vec<u64> {
    let failed = |d: &str| {
        metric(
            metrics,
            &format!("linetap_modbus_requests_total{{device=\"{d}\",result=\"exception\"}}"),
        )
        .unwrap_or(0.0)
    };
    let before: Vec<f64> = DEVICES.iter().map(|d| failed(d)).collect();
    for d in DEVICES {
        line.sim
            .set_fault(d, linetap::sim::Fault::Exception(4))
            .unwrap();
    }
    wait_for(Duration::from_secs(10), || {
        DEVICES
            .iter()
            .zip(&before)
            .all(|(d, b)| failed(d) >= b + 3.0)
            .then_some(())
    })
    .expect("the devices answer with exceptions");
    DEVICES.iter().map(|d| ok_polls(metrics, d)).collect()
}

/// The dead-letter file's lines (without comments) and its comments.
fn dead_letter(data: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(data.join("dead-letter/store.lp")).unwrap_or_default();
    let (comments, lines): (Vec<String>, Vec<String>) = text
        .lines()
        .map(str::to_string)
        .partition(|l| l.starts_with('#'));
    (lines, comments)
}

/// Requests per batch: HTTP write requests over flushes.
fn requests_per_batch(metrics: &str) -> (f64, f64) {
    let requests = metric(metrics, "linetap_sink_requests_total{sink=\"store\"}").unwrap_or(0.0);
    let batches = metric(
        metrics,
        "linetap_sink_write_duration_seconds_count{sink=\"store\"}",
    )
    .unwrap_or(0.0);
    (requests, batches)
}

/// Runs the line for about 12 s of deliveries, freezes it, and checks the store and the
/// dead-letter file: `stored(device)` counts the device's values in the store.
fn run_and_check(
    line: &SimulatedLine,
    data: &std::path::Path,
    port: u16,
    refused_field: &str,
    stored: impl Fn(&str) -> u64,
) {
    let metrics = format!("http://127.0.0.1:{port}");
    let agent = AgentProcess::start(&line.config);
    // About 12 s of four good devices' lines (9 per poll, 10 polls a second each).
    wait_for(Duration::from_secs(40), || {
        metric(&metrics, "linetap_samples_delivered_total{sink=\"store\"}")
            .filter(|n| *n >= 4.0 * 9.0 * 10.0 * 12.0)
    })
    .unwrap_or_else(|| panic!("too little delivered:\n{}", agent.stderr()));
    let ok = freeze(line, &metrics);
    // Every value of every good poll reaches the store; exactly.
    for (d, polls) in DEVICES.iter().zip(&ok).take(4) {
        let want = polls * 5;
        let got = wait_for(Duration::from_secs(20), || {
            let n = stored(d);
            (n == want).then_some(n)
        })
        .unwrap_or_else(|| stored(d));
        assert_eq!(got, want, "{d}: values in the store != 5 × its good polls");
    }
    // dev4's values are in the dead-letter file, with the reason.
    let want4 = ok[4] * 5;
    let dev4_dead = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| of(l, "dev4") && l.contains(&format!(" {refused_field}=")))
            .count() as u64
    };
    let dead4 = wait_for(Duration::from_secs(20), || {
        let n = dev4_dead(&dead_letter(data).0);
        (n >= want4).then_some(n)
    })
    .unwrap_or_else(|| dev4_dead(&dead_letter(data).0));
    let (requests, batches) = requests_per_batch(&metrics);
    let (code, log) = agent.stop();
    let (dead, comments) = dead_letter(data);
    println!(
        "polls {ok:?}; dev4 values dead-lettered {dead4} of {want4}; dead-letter lines {}; \
         HTTP requests {requests} over {batches} batches = {:.2} per batch",
        dead.len(),
        requests / batches.max(1.0)
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(
        dead4 as f64 >= 0.99 * want4 as f64,
        "only {dead4} of dev4's {want4} values dead-lettered"
    );
    assert!(
        dead.iter().all(|l| of(l, "dev4")),
        "only dev4's lines are refused: {:?}",
        dead.iter().find(|l| !of(l, "dev4"))
    );
    assert!(
        comments.iter().all(|c| c.contains("field type conflict")),
        "the server's reason is kept: {comments:?}"
    );
    // Nothing lost: every collected line was delivered or dead-lettered.
    let collected = stopped_field(&log, "collected");
    let delivered = stopped_field(&log, "delivered");
    assert_eq!(delivered + dead.len() as u64, collected, "{log}");
}

#[test]
fn a_store_that_refuses_one_devices_requests_whole_costs_the_others_nothing() {
    let vm = VictoriaMetrics::start();
    let proxy = RefusingProxy::start(vm.url.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let line = SimulatedLine::start(dir.path(), &DEVICES, |a| {
        config(&proxy.url, &data.display().to_string(), port, a, |_| {
            "value"
        })
    });
    run_and_check(&line, &data, port, "value", |d| {
        vm.export(&format!("{{__name__=\"m_value\",device=\"{d}\"}}"))
            .iter()
            .map(|(_, v, _)| v.len() as u64)
            .sum()
    });
    assert!(proxy.refused.load(Relaxed) > 0, "the proxy refused nothing");
}

#[test]
fn a_real_type_conflict_in_influxdb_1_costs_the_other_devices_nothing() {
    let influx = Influx1::start();
    influx.query("", "CREATE DATABASE lt");
    // `m.level` exists as a string in this shard (and in the next minutes', in case the test
    // runs across a shard boundary): dev4 writes it as a float, every such line is refused.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let r = request(
        "POST",
        &format!("{}/write?db=lt", influx.url),
        Some(&format!(
            "m,device=seed level=\"text\" {now_ns}\nm,device=seed level=\"text\" {}",
            now_ns + 120_000_000_000
        )),
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let line = SimulatedLine::start(dir.path(), &DEVICES, |a| {
        config(&influx.url, &data.display().to_string(), port, a, |d| {
            if d == "dev4" {
                "level"
            } else {
                "value"
            }
        })
    });
    run_and_check(&line, &data, port, "level", |d| {
        let v = influx.query(
            "lt",
            &format!("SELECT count(value) FROM m WHERE device = '{d}'"),
        );
        v["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0)
    });
}
