//! Test harness: real VictoriaMetrics and InfluxDB 1.x servers on free loopback ports,
//! the agent binary as a child process, and small HTTP helpers. Every server is stopped and
//! its data directory removed when its handle drops.
//!
//! Ports: a server that binds its own port (VictoriaMetrics, influxd, Mosquitto, the agent's
//! `metrics_listen`) is given one from `free_port`, and the port can be taken by another
//! process between `free_port` and the server's bind. Every start helper therefore checks
//! that its own process listens on the port (`listening`), and on a failed start (the process
//! exits, or never listens within its deadline) starts again on another port (`on_free_port`):
//! a collision costs a retry, not a failed test. Where the test's own code listens, it binds
//! once (port 0) and hands the listener or its address on.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago, for a server that binds it itself.
///
/// Taken from below the kernel's ephemeral range (`ip_local_port_range`), where the kernel
/// never hands out ports on its own (port 0 binds, the local end of outgoing connections), so
/// only another test process choosing the same port at the same moment can take it; and never
/// the same port twice in one test process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (lo, hi) = below_ephemeral_range();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = lo + (random() % u64::from(hi - lo)) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {lo}..{hi}");
}

/// [lo, hi): loopback ports below the ephemeral range (Linux: 32768-60999 by default).
fn below_ephemeral_range() -> (u16, u16) {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if first_ephemeral > 12_000 {
        (10_000, first_ephemeral)
    } else {
        // An unusual range: the upper end, above it.
        (61_000, 65_000)
    }
}

/// A random number (std only: a fresh `RandomState` is randomly seeded).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Starts something that binds a port of its own: `start(port)` with a port from `free_port`,
/// and again with another port when it fails (another process took the port meanwhile: the
/// server exits with "address in use", or never listens). Panics after 5 failed starts.
pub fn on_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Result<T, String>) -> T {
    const TRIES: u32 = 5;
    let mut failures = Vec::new();
    for _ in 0..TRIES {
        let port = free_port();
        match start(port) {
            Ok(v) => return v,
            Err(e) => {
                eprintln!("{what} did not start on port {port} ({e}); trying another port");
                failures.push(format!("port {port}: {e}"));
            }
        }
    }
    panic!("{what} did not start in {TRIES} tries: {failures:?}");
}

/// Whether process `pid` itself listens on 127.0.0.1:`port` (and not another process that
/// took the port): the listening socket in /proc/net/tcp is one of the process's descriptors.
pub fn listening(pid: u32, port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let inodes: HashSet<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, state (0A: LISTEN), inode.
            (f.len() > 9 && f[1] == want && f[3] == "0A").then(|| f[9].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .any(|target| {
                    let t = target.to_string_lossy();
                    t.strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .is_some_and(|inode| inodes.contains(inode))
                })
        })
        .unwrap_or(false)
}

/// Waits until `child` listens on `port` (and, with `url`, answers it with 2xx), within
/// `timeout`; an error when it exits first or does not get there in time.
fn wait_listening(
    child: &mut Child,
    port: u16,
    url: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let client = http::Client::new();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited at start-up: {status}"));
        }
        if listening(child.id(), port) && url.is_none_or(|u| client.get_ok(u)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("did not listen on port {port} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a child that failed to start.
fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Finds a server binary, or explains how to install it.
fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run `apt-get install -y victoria-metrics influxdb mosquitto socat` (the tests need the real servers)");
}

/// Minimal blocking HTTP over std, so the harness needs no extra client crate.
pub mod http {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub struct Client;

    pub struct Reply {
        pub status: u16,
        pub body: String,
    }

    impl Client {
        pub fn new() -> Self {
            Client
        }
        pub fn get_ok(&self, url: &str) -> bool {
            request("GET", url, None)
                .map(|r| (200..300).contains(&r.status))
                .unwrap_or(false)
        }
    }

    fn split(url: &str) -> (String, String) {
        let rest = url.strip_prefix("http://").expect("http:// url");
        let (host, path) = rest
            .split_once('/')
            .map(|(h, p)| (h, format!("/{p}")))
            .unwrap_or((rest, "/".into()));
        (host.to_string(), path)
    }

    /// One HTTP/1.0 request; returns status and body.
    pub fn request(method: &str, url: &str, body: Option<&str>) -> std::io::Result<Reply> {
        let (host, path) = split(url);
        let host = match host.rsplit_once(':') {
            Some((h, p)) => match p.parse() {
                Ok(port) => format!("{h}:{}", super::moved_port(port)),
                Err(_) => host,
            },
            None => host,
        };
        let mut s = TcpStream::connect(&host)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let body = body.unwrap_or("");
        write!(
                s,
                "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok(Reply {
            status,
            body: body.to_string(),
        })
    }
}

pub use self::http::request;

/// Percent-encodes a query parameter value.
pub fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// One exported series: labels, values, timestamps in ms.
pub type Series = (
    serde_json::Map<String, serde_json::Value>,
    Vec<f64>,
    Vec<i64>,
);

pub struct VictoriaMetrics {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    pub url: String,
}

impl VictoriaMetrics {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut vm = VictoriaMetrics {
            child: None,
            dir,
            port: 0,
            url: String::new(),
        };
        on_free_port("victoria-metrics", |port| {
            vm.port = port;
            vm.url = format!("http://127.0.0.1:{port}");
            vm.spawn()
        });
        vm
    }

    /// Stops the server the way an operator restarting it would (SIGTERM: it saves what it
    /// has acknowledged; a SIGKILLed VictoriaMetrics loses its last second of writes).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("victoria-metrics on port {}: {e}", self.port);
        }
    }

    /// Starts the server on `self.port` and waits until it listens and answers /health.
    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(binary("victoria-metrics"))
            .arg(format!("-storageDataPath={}", self.dir.path().display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg("-retentionPeriod=100y")
            .arg("-search.disableCache")
            .arg("-search.latencyOffset=0s")
            // Replays after an outage or a crash send some points twice (at-least-once);
            // InfluxDB overwrites identical points, VictoriaMetrics needs to be told to.
            .arg("-dedup.minScrapeInterval=1ms")
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start victoria-metrics");
        let health = format!("{}/health", self.url);
        match wait_listening(
            &mut child,
            self.port,
            Some(&health),
            Duration::from_secs(30),
        ) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                reap(child);
                Err(e)
            }
        }
    }

    /// Every sample of the series matching `selector` (e.g. `{__name__="joint_position"}`),
    /// as (labels, values, timestamps_ms) per series.
    pub fn export(&self, selector: &str) -> Vec<Series> {
        let _ = request("GET", &format!("{}/internal/force_flush", self.url), None);
        let r = request(
            "GET",
            &format!("{}/api/v1/export?match[]={}", self.url, enc(selector)),
            None,
        )
        .expect("export");
        assert_eq!(r.status, 200, "export failed: {}", r.body);
        r.body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("export json line");
                let labels = v["metric"].as_object().cloned().unwrap_or_default();
                let values = v["values"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                    .unwrap_or_default();
                let ts = v["timestamps"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
                    .unwrap_or_default();
                (labels, values, ts)
            })
            .collect()
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Influx1 {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Influx1 {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// With extra keys for the `[http]` section (e.g. `auth-enabled = true`).
    pub fn start_with(http_extra: &str) -> Self {
        on_free_port("influxd", |http| Self::start_on(http, http_extra))
    }

    /// influxd with its HTTP API on `http` (and its RPC port from `free_port`).
    fn start_on(http: u16, http_extra: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let rpc = free_port();
        let d = dir.path().display();
        let conf = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n[meta]\ndir = \"{d}/meta\"\n[data]\ndir = \"{d}/data\"\nwal-dir = \"{d}/wal\"\nquery-log-enabled = false\n[monitor]\nstore-enabled = false\n[http]\nbind-address = \"127.0.0.1:{http}\"\nlog-enabled = false\n{http_extra}\n[logging]\nlevel = \"error\"\n"
        );
        let conf_path = dir.path().join("influxdb.conf");
        std::fs::write(&conf_path, conf).expect("write influxdb.conf");
        let mut child = Command::new(binary("influxd"))
            .arg("-config")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start influxd");
        let url = format!("http://127.0.0.1:{http}");
        if let Err(e) = wait_listening(
            &mut child,
            http,
            Some(&format!("{url}/ping")),
            Duration::from_secs(30),
        ) {
            reap(child);
            return Err(e);
        }
        Ok(Influx1 {
            child,
            _dir: dir,
            url,
        })
    }

    /// Creates database `db` (panics, with the server's answer, when it cannot).
    pub fn create_database(&self, db: &str) {
        let r = request(
            "POST",
            &format!("{}/query", self.url),
            Some(&format!("q={}", enc(&format!("CREATE DATABASE {db}")))),
        )
        .expect("create database");
        assert_eq!(r.status, 200, "CREATE DATABASE {db}: {}", r.body);
    }

    pub fn query(&self, db: &str, q: &str) -> serde_json::Value {
        self.query_as("", "", db, q)
    }

    /// A query with credentials (`auth-enabled`); empty `user` sends none.
    pub fn query_as(&self, user: &str, password: &str, db: &str, q: &str) -> serde_json::Value {
        let auth = if user.is_empty() {
            String::new()
        } else {
            format!("&u={}&p={}", enc(user), enc(password))
        };
        let r = request(
            "POST",
            &format!("{}/query?db={}&epoch=ns{auth}", self.url, enc(db)),
            Some(&format!("q={}", enc(q))),
        )
        .expect("query");
        assert_eq!(r.status, 200, "query {q:?} failed: {}", r.body);
        serde_json::from_str(&r.body).expect("query json")
    }
}

impl Drop for Influx1 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent binary running `linetap run --config FILE`; SIGTERM on `stop`, kill on drop.
pub struct AgentProcess {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread that drains stderr; it ends when the agent has exited and closed the pipe.
    drain: Option<std::thread::JoinHandle<()>>,
}

/// Ports whose agent had to be moved to another port (`metrics_listen` taken by another
/// process at start-up): old -> new. `request` (and so `metric`) follows them, so a test keeps
/// the URL it built from the port it wrote into the configuration.
static MOVED: Mutex<Option<HashMap<u16, u16>>> = Mutex::new(None);

/// The port a test's `port` now stands for (itself, unless an agent was moved from it).
pub fn moved_port(port: u16) -> u16 {
    let moved = MOVED.lock().unwrap_or_else(|e| e.into_inner());
    moved
        .as_ref()
        .and_then(|m| m.get(&port).copied())
        .unwrap_or(port)
}

fn record_move(from: u16, to: u16) {
    let mut moved = MOVED.lock().unwrap_or_else(|e| e.into_inner());
    let moved = moved.get_or_insert_with(HashMap::new);
    for v in moved.values_mut() {
        if *v == from {
            *v = to;
        }
    }
    moved.insert(from, to);
}

/// The port of `metrics_listen = "127.0.0.1:PORT"` in a configuration file, if any.
fn metrics_listen_port(config: &Path) -> Option<u16> {
    std::fs::read_to_string(config).ok()?.lines().find_map(|l| {
        l.trim()
            .strip_prefix("metrics_listen = \"127.0.0.1:")?
            .strip_suffix('"')?
            .parse()
            .ok()
    })
}

impl AgentProcess {
    /// SIGKILL: a crash.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drained();
        self.stderr()
    }

    pub fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    /// As `start`, with extra environment variables (e.g. `NOTIFY_SOCKET`).
    ///
    /// With a `metrics_listen` on 127.0.0.1, waits until the agent listens there (or exits);
    /// when its port was taken by another process meanwhile, the configuration file is
    /// rewritten with another port and the agent started again (see `moved_port`).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        const TRIES: u32 = 5;
        for _ in 1..TRIES {
            let mut agent = Self::spawn(config, env);
            let Some(port) = metrics_listen_port(config) else {
                return agent;
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            let exited = loop {
                if let Ok(Some(_)) = agent.child.try_wait() {
                    break true;
                }
                if listening(agent.child.id(), port) || Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if !exited {
                return agent;
            }
            agent.drained();
            let log = agent.stderr();
            if !(log.contains("metrics_listen") && log.contains("in use")) {
                // Exited for another reason: the test sees it.
                return agent;
            }
            let to = free_port();
            eprintln!("the agent's metrics port {port} was taken; moving it to {to}");
            let text = std::fs::read_to_string(config).expect("read the configuration");
            let text = text.replace(
                &format!("metrics_listen = \"127.0.0.1:{port}\""),
                &format!("metrics_listen = \"127.0.0.1:{to}\""),
            );
            std::fs::write(config, text).expect("rewrite the configuration");
            record_move(port, to);
        }
        Self::spawn(config, env)
    }

    fn spawn(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_linetap"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("LINETAP_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start linetap");
        // Drain stderr on a thread so a chatty agent never blocks on a full pipe.
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let drain = child.stderr.take().map(|mut pipe| {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        });
        AgentProcess {
            child,
            stderr,
            drain,
        }
    }

    /// After the agent has exited: waits until everything it wrote to stderr has been read
    /// (the pipe's end), up to 5 s.
    fn drained(&mut self) {
        if let Some(drain) = self.drain.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !drain.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// SIGTERM, wait, and return (exit code, stderr).
    pub fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let code = self.child.wait().ok().and_then(|s| s.code());
        self.drained();
        (code, self.stderr())
    }

    /// Sends a signal (e.g. "HUP") to the agent.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// What the agent has logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A counter or gauge from the agent's /metrics.
pub fn metric(url: &str, name: &str) -> Option<f64> {
    let r = request("GET", &format!("{url}/metrics"), None).ok()?;
    r.body
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A `key=value` field of the agent's last "stopped" log line; for a per-sink field
/// (`delivered="central=10 local=10"`), the sum over the sinks (with one sink: its value).
pub fn stopped_field(log: &str, key: &str) -> u64 {
    let line = stop_line(log);
    match quoted_field(line, key) {
        Some(per_sink) => per_sink_values(per_sink).values().sum(),
        None => line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in {line:?}")),
    }
}

/// A per-sink field of the agent's last "stopped" log line: sink name -> value.
pub fn stopped_per_sink(log: &str, key: &str) -> std::collections::BTreeMap<String, u64> {
    let line = stop_line(log);
    per_sink_values(
        quoted_field(line, key).unwrap_or_else(|| panic!("no {key}=\"...\" in {line:?}")),
    )
}

fn stop_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| l.contains("stopped"))
        .unwrap_or_else(|| panic!("no stop line in:\n{log}"))
}

/// The text of `key="..."` in `line`.
fn quoted_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}=\""))? + key.len() + 3;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn per_sink_values(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A simulated line: the simulator serving the devices of a configuration, and that
/// configuration written to a file with the simulator's real addresses, ready for the agent.
/// `text` renders the configuration for the device addresses given, in device order; it is
/// called once with placeholders (to learn the devices) and once with the real addresses.
pub struct SimulatedLine {
    pub sim: linetap::sim::SimHandle,
    /// The file the agent runs from.
    pub config: PathBuf,
    /// The simulator's address of each device, in the order `text` takes them.
    pub addresses: Vec<String>,
    _rt: tokio::runtime::Runtime,
}

impl SimulatedLine {
    pub fn start(
        dir: &Path,
        devices: &[&str],
        text: impl Fn(&[String]) -> String,
    ) -> SimulatedLine {
        let placeholders = vec!["127.0.0.1:0".to_string(); devices.len()];
        let cfg = linetap::config::parse("sim.toml", &text(&placeholders)).expect("valid config");
        let rt = tokio::runtime::Runtime::new().expect("a runtime for the simulator");
        let sim = rt
            .block_on(linetap::sim::Simulator::start(&cfg))
            .expect("simulator");
        let addresses: Vec<String> = devices
            .iter()
            .map(|d| sim.addresses[*d].to_string())
            .collect();
        let config = dir.join("line.toml");
        std::fs::write(&config, text(&addresses)).expect("write the config");
        SimulatedLine {
            sim,
            config,
            addresses,
            _rt: rt,
        }
    }
}

/// A real Mosquitto broker on an ephemeral loopback port, with persistence (a restart keeps
/// persistent sessions and their queued QoS 1 messages).
pub struct Mosquitto {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
}

impl Mosquitto {
    pub fn start() -> Self {
        Self::start_with(|_, _| String::new())
    }

    /// With more configuration: `extra(dir, port)` returns lines appended to the file (e.g.
    /// a TLS listener with files written into `dir`); called again for each try on another
    /// port.
    pub fn start_with(mut extra: impl FnMut(&Path, u16) -> String) -> Self {
        on_free_port("mosquitto", |port| Self::start_on(port, &mut extra))
    }

    fn start_on(port: u16, extra: &mut impl FnMut(&Path, u16) -> String) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let more = extra(dir.path(), port);
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // As root (CI), mosquitto would drop to user `mosquitto`, which cannot write the
                // test's private directory (persistence, log): keep the test's user.
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 max_inflight_messages 1000\nmax_queued_messages 1000000\nqueue_qos0_messages true\nlog_dest file {}/mosquitto.log\nlog_type all\n{more}",
                dir.path().display(),
                dir.path().display()
            ),
        )
        .expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            dir,
            port,
            url: format!("mqtt://127.0.0.1:{port}"),
        };
        m.spawn()?;
        Ok(m)
    }

    /// The broker's log (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker with SIGTERM (it saves its sessions and queued messages).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("mosquitto on port {}: {e}\n{}", self.port, self.log());
        }
    }

    /// Starts the broker and waits until it listens on its port.
    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(binary("mosquitto"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install -y mosquitto)");
        match wait_listening(&mut child, self.port, None, Duration::from_secs(15)) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                reap(child);
                Err(e)
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A socat pseudo-terminal pair (an RS-485 bus without hardware): `a` and `b` are symlinks to
/// the two ends; killed on drop.
pub struct PtyPair {
    child: Child,
    pub a: PathBuf,
    pub b: PathBuf,
}

impl PtyPair {
    pub fn start(dir: &Path) -> PtyPair {
        let (a, b) = (dir.join("a"), dir.join("b"));
        let child = Command::new("/usr/bin/socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed (/usr/bin/socat)");
        let ready = wait_for(Duration::from_secs(10), || {
            (a.exists() && b.exists()).then_some(())
        });
        assert!(ready.is_some(), "socat did not create the pty links");
        PtyPair { child, a, b }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod mqtt_client;

/// A tmpfs mounted for one test (a small disk that fills up), unmounted on drop. Needs root,
/// as CI runs the tests.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "mount -t tmpfs failed: these tests need root (CI runs them as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Rows of an InfluxDB 1.x query result (`epoch=ns`): (time ns, the columns after time).
pub fn influx_rows(result: &serde_json::Value) -> Vec<(i64, Vec<serde_json::Value>)> {
    result["results"][0]["series"][0]["values"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|r| {
                    let r = r.as_array()?;
                    Some((r.first()?.as_i64()?, r[1..].to_vec()))
                })
                .collect()
        })
        .unwrap_or_default()
}
