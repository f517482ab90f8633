//! `poll = "0s"`: a device polled back to back (the next request as soon as the reply is in)
//! reaches many times the rate of a 1 ms interval, loses nothing, and does not slow devices
//! on other connections.

mod common;

use common::*;
use std::time::Duration;

fn text(data: &str, out: &str, port: u16, addrs: &[String], dead: u16) -> String {
    let mut s = format!(
        "[line]\nid = \"lab\"\n\n[agent]\ndata_dir = \"{data}\"\nmetrics_listen = \"127.0.0.1:{port}\"\n\n\
         [sinks.local]\ntype = \"file\"\npath = \"{out}\"\nflush_interval = \"100ms\"\nmax_file_bytes = \"1GiB\"\n\n"
    );
    // dev-3 is polled back to back at a port where nothing listens (the simulator, which
    // reads the placeholder version of this config, serves it somewhere else).
    let dead = if addrs[0].ends_with(":0") {
        "127.0.0.1:0".to_string()
    } else {
        format!("127.0.0.1:{dead}")
    };
    for (i, a) in addrs.iter().chain([&dead]).enumerate() {
        let poll = if i == 0 || i == 3 { "0s" } else { "100ms" };
        s.push_str(&format!(
            "[[devices]]\nid = \"dev-{i}\"\naddress = \"{a}\"\npoll = \"{poll}\"\ntimeout = \"500ms\"\n\n\
             [[devices.points]]\nname = \"value\"\naddress = 0\ntype = \"u16\"\ncount = 4\nindex_tag = \"i\"\n\n"
        ));
    }
    s
}

#[test]
fn a_device_polled_back_to_back_loses_nothing_and_does_not_slow_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let out = dir.path().join("out.lp").display().to_string();
    let port = free_port();
    let dead = free_port();
    let line = SimulatedLine::start(dir.path(), &["dev-0", "dev-1", "dev-2"], |a| {
        text(&data, &out, port, a, dead)
    });
    let url = format!("http://127.0.0.1:{port}");
    let agent = AgentProcess::start(&line.config);
    let polls = |dev: &str| {
        metric(
            &url,
            &format!("linetap_poll_duration_seconds_count{{device=\"{dev}\"}}"),
        )
        .unwrap_or(0.0)
    };
    wait_for(Duration::from_secs(30), || {
        (polls("dev-2") >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("not polling:\n{}", agent.stderr()));
    let connects = |dev: &str| {
        metric(
            &url,
            &format!("linetap_modbus_requests_total{{device=\"{dev}\",result=\"connect_error\"}}"),
        )
        .unwrap_or(0.0)
    };
    let dead_before = connects("dev-3");
    let before = [polls("dev-0"), polls("dev-1"), polls("dev-2")];
    let t0 = std::time::Instant::now();
    // A wall-clock window: the poll rates are measured over these 3 s.
    std::thread::sleep(Duration::from_secs(3));
    let after = [polls("dev-0"), polls("dev-1"), polls("dev-2")];
    let dead_after = connects("dev-3");
    let secs = t0.elapsed().as_secs_f64();
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let rate = |i: usize| (after[i] - before[i]) / secs;
    eprintln!(
        "back to back: {:.0} polls/s; others {:.1} and {:.1} polls/s",
        rate(0),
        rate(1),
        rate(2)
    );
    // Far above what the shortest interval (1 ms, with skipped ticks) used to give.
    // A timer would cap it near 1000 polls/s (tokio rounds deadlines up to the next ms).
    assert!(rate(0) > 1500.0, "back to back: {:.0} polls/s", rate(0));
    for i in [1, 2] {
        assert!(
            rate(i) >= 9.0 && rate(i) <= 10.6,
            "dev-{i}: {:.1} polls/s, configured 10",
            rate(i)
        );
    }
    // A dead device polled back to back is retried every 100 ms, not in a loop that spins a
    // core (its connect attempts fail at once while in their backoff).
    let dead_rate = (dead_after - dead_before) / secs;
    assert!(
        (3.0..=12.0).contains(&dead_rate),
        "dev-3 (no listener): {dead_rate:.1} attempts/s"
    );
    // Nothing lost: every sample collected was delivered.
    assert_eq!(
        stopped_field(&log, "delivered"),
        stopped_field(&log, "collected"),
        "{log}"
    );
    // Health records of the back-to-back device come at most every 100 ms, not every poll.
    let lp = std::fs::read_to_string(&out).unwrap();
    let health = lp
        .lines()
        .filter(|l| {
            l.starts_with("linetap_device,") && l.contains("device=dev-0") && l.contains(" up=")
        })
        .count();
    let values = lp
        .lines()
        .filter(|l| l.contains("device=dev-0") && l.contains(" value="))
        .count();
    assert!(
        values / 4 > health * 10,
        "{health} health records for {} polls",
        values / 4
    );
}
