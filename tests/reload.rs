//! SIGHUP reloads the configuration file: only what changed restarts. One device changed and
//! one unchanged (the simulator counts connections: the unchanged one keeps its connection and
//! its series has no gap), a sink removed and one added (it starts at the head), then an
//! invalid file (logged with its location; the running configuration keeps running).

mod common;

use common::*;
use linetap::config::Table;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The line: robot-01 (point `a`), robot-02 (point `b`, and `c` when `changed`), the VM sink
/// and one file sink named `file_sink` writing `file`.
fn config(
    vm: &str,
    dir: &str,
    addrs: &[String],
    port: u16,
    changed: bool,
    file_sink: &str,
) -> String {
    let mut s = format!(
        "[line]\nid = \"reload\"\n\n[agent]\ndata_dir = \"{dir}/data\"\nmetrics_listen = \"127.0.0.1:{port}\"\nself_interval = \"300ms\"\n\n\
         [sinks.central]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v2\"\norg = \"o\"\nbucket = \"b\"\ntoken_env = \"LINETAP_TEST_TOKEN\"\nflush_interval = \"100ms\"\n\n\
         [sinks.{file_sink}]\ntype = \"file\"\npath = \"{dir}/{file_sink}.lp\"\nflush_interval = \"100ms\"\n\n\
         [[devices]]\nid = \"robot-01\"\nkind = \"robot\"\naddress = \"{a1}\"\npoll = \"100ms\"\n\n\
         [[devices.points]]\nname = \"a\"\naddress = 0\ntype = \"u16\"\n\n\
         [[devices]]\nid = \"robot-02\"\nkind = \"robot\"\naddress = \"{a2}\"\npoll = \"100ms\"\n\n\
         [[devices.points]]\nname = \"b\"\naddress = 0\ntype = \"u16\"\n\n",
        a1 = addrs[0],
        a2 = addrs[1],
    );
    if changed {
        s.push_str("[[devices.points]]\nname = \"c\"\naddress = 1\ntype = \"u16\"\n\n");
    }
    s
}

fn line_timestamps(path: &std::path::Path, device: &str) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("robot,") && l.contains(&format!("device={device}")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .map(|ns| ns / 1_000_000)
        .collect()
}

#[test]
fn sighup_restarts_only_what_changed_and_keeps_running_on_an_invalid_file() {
    std::env::set_var("LINETAP_TEST_TOKEN", "t");
    let vm = VictoriaMetrics::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let port = free_port();
    let metrics_url = format!("http://127.0.0.1:{port}");
    // Both devices need registers 0 and 1 in the simulator: render it with `c`.
    let line = SimulatedLine::start(tmp.path(), &["robot-01", "robot-02"], |addrs| {
        config(&vm.url, &dir, addrs, port, true, "local")
    });
    line.sim
        .set_registers("robot-01", Table::Holding, 0, &[11])
        .unwrap();
    line.sim
        .set_registers("robot-02", Table::Holding, 0, &[21, 22])
        .unwrap();
    let addrs = line.addresses.clone();
    std::fs::write(
        &line.config,
        config(&vm.url, &dir, &addrs, port, false, "local"),
    )
    .unwrap();
    let agent = AgentProcess::start(&line.config);
    wait_for(Duration::from_secs(30), || {
        (vm.export(r#"{__name__="robot_b"}"#).len() == 1
            && vm.export(r#"{__name__="robot_a"}"#).len() == 1)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no data before the reload:\n{}", agent.stderr()));
    assert_eq!(line.sim.connections("robot-01").unwrap(), 1);
    assert_eq!(line.sim.connections("robot-02").unwrap(), 1);

    // Reload: robot-02 gains point `c`, sink `local` goes, sink `local2` comes.
    std::fs::write(
        &line.config,
        config(&vm.url, &dir, &addrs, port, true, "local2"),
    )
    .unwrap();
    let hup_at = now_ms();
    agent.signal("HUP");
    wait_for(Duration::from_secs(30), || {
        agent
            .stderr()
            .contains("configuration reloaded")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no reload logged:\n{}", agent.stderr()));
    let reloaded_at = now_ms();
    // The changed device delivers its new point.
    let c = wait_for(Duration::from_secs(30), || {
        let c = vm.export(r#"{__name__="robot_c",device="robot-02"}"#);
        (!c.is_empty()).then_some(c)
    })
    .unwrap_or_else(|| panic!("the new point never arrived:\n{}", agent.stderr()));
    assert!(c[0].1.iter().all(|v| *v == 22.0), "{c:?}");
    // The new sink starts at the head and writes; the removed one has stopped.
    let local2 = tmp.path().join("local2.lp");
    let local = tmp.path().join("local.lp");
    wait_for(Duration::from_secs(30), || {
        (line_timestamps(&local2, "robot-01").len() >= 10).then_some(())
    })
    .unwrap_or_else(|| panic!("the added sink wrote nothing:\n{}", agent.stderr()));
    let first_new = *line_timestamps(&local2, "robot-01").iter().min().unwrap();
    assert!(
        first_new >= hup_at - 1000,
        "the added sink started before the head: {first_new} < {hup_at}"
    );
    let local_len = std::fs::metadata(&local).unwrap().len();
    // The agent's own records follow the new set of sinks.
    wait_for(Duration::from_secs(30), || {
        (!vm.export(r#"{__name__="linetap_agent_samples_delivered",sink="local2"}"#)
            .is_empty())
        .then_some(())
    })
    .unwrap_or_else(|| panic!("no linetap_agent record for the new sink"));

    // Only the changed device reconnected.
    assert_eq!(
        line.sim.connections("robot-01").unwrap(),
        1,
        "the unchanged device's connection was reopened"
    );
    assert_eq!(line.sim.connections("robot-02").unwrap(), 2);
    assert_eq!(
        metric(&metrics_url, "linetap_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );

    // An invalid file: logged with its location, the running configuration keeps running.
    let good = std::fs::read_to_string(&line.config).unwrap();
    std::fs::write(
        &line.config,
        good.replacen("poll = \"100ms\"", "poll = \"often\"", 1),
    )
    .unwrap();
    let before = vm.export(r#"{__name__="robot_c"}"#)[0].1.len();
    agent.signal("HUP");
    wait_for(Duration::from_secs(30), || {
        agent.stderr().contains("reload refused").then_some(())
    })
    .unwrap_or_else(|| panic!("the invalid file was not reported:\n{}", agent.stderr()));
    let log = agent.stderr();
    let bad_line = std::fs::read_to_string(&line.config)
        .unwrap()
        .lines()
        .position(|l| l.contains("often"))
        .unwrap()
        + 1;
    let location = format!("{}:{bad_line}:8: ", line.config.display());
    assert!(
        log.contains(&location),
        "the error names file, line and column ({location}):\n{log}"
    );
    wait_for(Duration::from_secs(30), || {
        (vm.export(r#"{__name__="robot_c"}"#)[0].1.len() >= before + 10).then_some(())
    })
    .unwrap_or_else(|| panic!("polling stopped after an invalid reload:\n{log}"));
    assert_eq!(
        metric(
            &metrics_url,
            "linetap_config_reloads_total{result=\"error\"}"
        ),
        Some(1.0)
    );

    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        std::fs::metadata(&local).unwrap().len(),
        local_len,
        "the removed sink kept writing"
    );
    // robot-01's series has no gap across the reload: one record per 100 ms poll.
    let ts = line_timestamps(&tmp.path().join("local2.lp"), "robot-01");
    let mut all = line_timestamps(&local, "robot-01");
    all.extend(ts);
    all.sort_unstable();
    all.dedup();
    let around: Vec<i64> = all
        .iter()
        .copied()
        .filter(|t| *t >= hup_at - 2000 && *t <= reloaded_at + 2000)
        .collect();
    let gap = around
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(i64::MAX);
    assert!(
        around.len() >= 20 && gap < 400,
        "robot-01 across the reload: {} samples, largest gap {gap} ms",
        around.len()
    );
    let vm_a = vm.export(r#"{__name__="robot_a"}"#);
    let mut vts = vm_a[0].2.clone();
    vts.retain(|t| *t >= hup_at - 2000 && *t <= reloaded_at + 2000);
    let vgap = vts
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(i64::MAX);
    assert!(vgap < 400, "robot-01 in the store: largest gap {vgap} ms");
}
