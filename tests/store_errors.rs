//! Store errors a person can fix never delete accepted data, and a refused line never takes
//! its batch with it. Against a real InfluxDB 1.x with authentication on:
//! - the agent's user does not exist yet (401), then its database does not exist yet (404):
//!   the data is held, `/readyz` fails and says why, the errors are counted by reason; once
//!   both are fixed every sample arrives and none is counted as rejected;
//! - a line the store refuses (a field type conflict, HTTP 400) is isolated: every other line
//!   of its batches is delivered, and the refused lines are in the dead-letter file;
//! - a password file rewritten while the store refuses the old password is read again before
//!   the next retry (no signal), and at a reload (SIGHUP): the data is held while the password
//!   is wrong and all of it arrives once it is right.

mod common;

use common::*;
use std::time::Duration;

const ADMIN: (&str, &str) = ("admin", "admin-pw");

fn line_text(url: &str, data: &str, port: u16, addrs: &[String], points: &str) -> String {
    let mut s = format!(
        "[line]\nid = \"held\"\n\n[agent]\ndata_dir = \"{data}\"\nmetrics_listen = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\"\n# Exact sample counts below: no linetap_agent records.\nself_interval = \"0s\"\n\n\
         [sinks.central]\ntype = \"influxdb\"\nurl = \"{url}\"\napi = \"v1\"\ndatabase = \"late\"\nusername = \"writer\"\npassword_env = \"LINETAP_TEST_PW\"\nflush_interval = \"200ms\"\n\n"
    );
    for (i, a) in addrs.iter().enumerate() {
        s.push_str(&format!(
            "[[devices]]\nid = \"dev-{i}\"\nkind = \"robot\"\naddress = \"{a}\"\npoll = \"100ms\"\ntimeout = \"300ms\"\n\n{points}"
        ));
    }
    s
}

const VALUES: &str = "[[devices.points]]\nname = \"value\"\nmeasurement = \"m\"\naddress = 0\ntype = \"u16\"\ncount = 5\nindex_tag = \"i\"\n\n";

fn count(influx: &Influx1, q: &str) -> u64 {
    let v = influx.query_as(ADMIN.0, ADMIN.1, "late", q);
    v["results"][0]["series"][0]["values"][0][1]
        .as_u64()
        .unwrap_or(0)
}

/// Stops the agent and checks that nothing was lost: every collected sample delivered, none
/// dropped, and every value (5 of every 9 samples a poll; 4 are health fields) in the store.
/// Returns (collected, delivered, values stored).
fn stop_with_everything_stored(agent: AgentProcess, influx: &Influx1) -> (u64, u64, u64) {
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let collected = stopped_field(&log, "collected");
    let delivered = stopped_field(&log, "delivered");
    assert_eq!(delivered, collected, "{log}");
    assert!(!log.contains("dropped"), "{log}");
    assert_eq!(collected % 9, 0);
    let expected = collected / 9 * 5;
    let stored = wait_for(Duration::from_secs(10), || {
        let n = count(influx, "SELECT count(value) FROM m");
        (n == expected).then_some(n)
    })
    .unwrap_or_else(|| count(influx, "SELECT count(value) FROM m"));
    assert_eq!(stored, expected, "values in the store != values collected");
    (collected, delivered, stored)
}

fn readyz(port: u16) -> (u16, String) {
    request("GET", &format!("http://127.0.0.1:{port}/readyz"), None)
        .map(|r| (r.status, r.body))
        .unwrap_or((0, String::new()))
}

#[test]
fn a_missing_user_and_database_hold_the_data_until_fixed() {
    std::env::set_var("LINETAP_TEST_PW", "writer-pw");
    let influx = Influx1::start_with("auth-enabled = true");
    influx.query(
        "",
        &format!(
            "CREATE USER {} WITH PASSWORD '{}' WITH ALL PRIVILEGES",
            ADMIN.0, ADMIN.1
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let port = free_port();
    let line = SimulatedLine::start(dir.path(), &["dev-0", "dev-1"], |a| {
        line_text(&influx.url, &data, port, a, VALUES)
    });
    let metrics = format!("http://127.0.0.1:{port}");
    let agent = AgentProcess::start(&line.config);

    // 401: the user does not exist. Held, counted, and /readyz says why.
    wait_for(Duration::from_secs(30), || {
        metric(
            &metrics,
            "linetap_sink_errors_total{sink=\"central\",reason=\"unauthorized\"}",
        )
        .filter(|n| *n >= 3.0)
    })
    .unwrap_or_else(|| panic!("no unauthorized errors counted:\n{}", agent.stderr()));
    let (status, body) = readyz(port);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("sink central") && body.contains("credentials"),
        "{body}"
    );
    assert!(
        agent.stderr().contains("held in the buffer"),
        "{}",
        agent.stderr()
    );
    // Held through several retries (the backoff grows to seconds), not for a fixed time.
    wait_for(Duration::from_secs(60), || {
        metric(
            &metrics,
            "linetap_sink_errors_total{sink=\"central\",reason=\"unauthorized\"}",
        )
        .filter(|n| *n >= 6.0)
    })
    .unwrap_or_else(|| panic!("no more retries:\n{}", agent.stderr()));

    // 404: the user exists now, the database does not.
    influx.query_as(
        ADMIN.0,
        ADMIN.1,
        "",
        "CREATE USER writer WITH PASSWORD 'writer-pw' WITH ALL PRIVILEGES",
    );
    wait_for(Duration::from_secs(30), || {
        metric(
            &metrics,
            "linetap_sink_errors_total{sink=\"central\",reason=\"not_found\"}",
        )
        .filter(|n| *n >= 1.0)
    })
    .unwrap_or_else(|| panic!("no not_found errors counted:\n{}", agent.stderr()));
    assert!(readyz(port).1.contains("database"), "{}", readyz(port).1);
    // Held through several retries, then the backlog is checked.
    wait_for(Duration::from_secs(60), || {
        metric(
            &metrics,
            "linetap_sink_errors_total{sink=\"central\",reason=\"not_found\"}",
        )
        .filter(|n| *n >= 4.0)
    })
    .unwrap_or_else(|| panic!("no more retries:\n{}", agent.stderr()));
    let held = metric(&metrics, "linetap_buffer_bytes{sink=\"central\"}").unwrap_or(0.0);
    assert!(held > 0.0, "nothing was held");

    // Fixed: everything held arrives.
    influx.query_as(ADMIN.0, ADMIN.1, "", "CREATE DATABASE late");
    wait_for(Duration::from_secs(60), || {
        (readyz(port).0 == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("/readyz did not recover: {:?}", readyz(port)));
    let (collected, delivered, stored) = stop_with_everything_stored(agent, &influx);
    assert_eq!(delivered, collected);
    assert_eq!(stored, collected / 9 * 5);
    assert!(!dir.path().join("data/dead-letter").exists());
}

#[test]
fn a_refused_line_is_dead_lettered_and_the_rest_of_its_batch_delivered() {
    std::env::set_var("LINETAP_TEST_PW", "writer-pw");
    let influx = Influx1::start_with("auth-enabled = true");
    for q in [
        format!(
            "CREATE USER {} WITH PASSWORD '{}' WITH ALL PRIVILEGES",
            ADMIN.0, ADMIN.1
        ),
        "CREATE USER writer WITH PASSWORD 'writer-pw' WITH ALL PRIVILEGES".to_string(),
        "CREATE DATABASE late".to_string(),
    ] {
        influx.query_as(ADMIN.0, ADMIN.1, "", &q);
    }
    // `m.speed` already exists as a string in this week's shard: every integer value of it is
    // refused (HTTP 400, field type conflict); everything else must arrive.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let r = request(
        "POST",
        &format!("{}/write?db=late&u={}&p={}", influx.url, ADMIN.0, ADMIN.1),
        // Field types are per shard (a week): plant the string in the next minutes' shard
        // too, in case the test runs across a shard boundary.
        Some(&format!(
            "m,device=planted speed=\"text\" {now_ns}\nm,device=planted speed=\"text\" {}",
            now_ns + 120_000_000_000
        )),
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let port = free_port();
    let points = format!(
        "{VALUES}[[devices.points]]\nname = \"speed\"\nmeasurement = \"m\"\naddress = 10\ntype = \"u16\"\n\n"
    );
    let line = SimulatedLine::start(dir.path(), &["dev-0", "dev-1"], |a| {
        line_text(&influx.url, &data, port, a, &points)
    });
    let agent = AgentProcess::start(&line.config);
    let metrics = format!("http://127.0.0.1:{port}");
    wait_for(Duration::from_secs(30), || {
        metric(
            &metrics,
            "linetap_samples_dropped_total{sink=\"central\",reason=\"rejected\"}",
        )
        .filter(|n| *n >= 10.0)
    })
    .unwrap_or_else(|| panic!("no line was rejected:\n{}", agent.stderr()));
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let collected = stopped_field(&log, "collected");
    let delivered = stopped_field(&log, "delivered");
    let rejected = metric_from_log_or_zero(&log);
    // 10 samples per poll (5 values, speed, 4 health fields); the speed is refused, once per poll.
    assert_eq!(collected % 10, 0);
    let polls = collected / 10;
    let dead = std::fs::read_to_string(dir.path().join("data/dead-letter/central.lp"))
        .expect("a dead-letter file");
    let dead_lines: Vec<&str> = dead.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        dead_lines
            .iter()
            .all(|l| l.starts_with("m,") && l.contains(" speed=")),
        "only speed lines are refused: {dead_lines:?}"
    );
    assert!(
        dead.contains("field type conflict"),
        "the server's reason is kept: {dead}"
    );
    assert_eq!(delivered + dead_lines.len() as u64, collected, "{log}");
    assert_eq!(rejected, dead_lines.len() as u64);
    // One refused line per poll, and every value of every poll is in the store.
    assert_eq!(dead_lines.len() as u64, polls, "{log}");
    let values = wait_for(Duration::from_secs(10), || {
        let n = count(&influx, "SELECT count(value) FROM m");
        (n == polls * 5).then_some(n)
    })
    .unwrap_or_else(|| count(&influx, "SELECT count(value) FROM m"));
    assert_eq!(values, polls * 5, "every value of every poll");
}

/// The `rejected=` field of the sinks' stop report (0 when absent).
fn metric_from_log_or_zero(log: &str) -> u64 {
    log.lines()
        .rev()
        .find(|l| l.contains("sink stopped"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("rejected="))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_rewritten_password_file_is_used_without_a_restart() {
    let influx = Influx1::start_with("auth-enabled = true");
    influx.query(
        "",
        &format!(
            "CREATE USER {} WITH PASSWORD '{}' WITH ALL PRIVILEGES",
            ADMIN.0, ADMIN.1
        ),
    );
    for q in [
        "CREATE USER writer WITH PASSWORD 'writer-pw' WITH ALL PRIVILEGES",
        "CREATE DATABASE late",
    ] {
        influx.query_as(ADMIN.0, ADMIN.1, "", q);
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "wrong-1\n").unwrap();
    let port = free_port();
    let line = SimulatedLine::start(dir.path(), &["dev-0", "dev-1"], |a| {
        line_text(&influx.url, &data, port, a, VALUES).replace(
            "password_env = \"LINETAP_TEST_PW\"",
            &format!("password_file = \"{}\"", pw.display()),
        )
    });
    let metrics = format!("http://127.0.0.1:{port}");
    let agent = AgentProcess::start(&line.config);
    let unauthorized = || {
        metric(
            &metrics,
            "linetap_sink_errors_total{sink=\"central\",reason=\"unauthorized\"}",
        )
        .unwrap_or(0.0)
    };
    let delivered = || {
        metric(
            &metrics,
            "linetap_samples_delivered_total{sink=\"central\"}",
        )
    };
    let held = |what: &str| {
        let (status, body) = wait_for(Duration::from_secs(30), || {
            let r = readyz(port);
            (r.0 == 503 && r.1.contains("credentials")).then_some(r)
        })
        .unwrap_or_else(|| readyz(port));
        assert_eq!(status, 503, "{what}: {body}\n{}", agent.stderr());
    };
    let ready = |what: &str| {
        wait_for(Duration::from_secs(30), || {
            (readyz(port).0 == 200).then_some(())
        })
        .unwrap_or_else(|| panic!("{what}: {:?}\n{}", readyz(port), agent.stderr()));
    };

    // A wrong password: held.
    wait_for(Duration::from_secs(30), || {
        (unauthorized() >= 3.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no unauthorized errors counted:\n{}", agent.stderr()));
    held("wrong password at start");
    assert_eq!(delivered(), Some(0.0));

    // The right one written into the file, no signal: read again before the next retry.
    std::fs::write(&pw, "writer-pw\n").unwrap();
    ready("right password written");
    assert!(
        agent.stderr().contains("the credentials changed"),
        "{}",
        agent.stderr()
    );
    let first = delivered().unwrap_or(0.0);
    assert!(first > 0.0);

    // A wrong one + SIGHUP: the sink restarts with it (its fingerprint covers the content).
    std::fs::write(&pw, "wrong-2\n").unwrap();
    let errors_before = unauthorized();
    agent.signal("HUP");
    wait_for(Duration::from_secs(30), || {
        agent
            .stderr()
            .lines()
            .any(|l| l.contains("configuration reloaded") && l.contains("restarted=sink central"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the sink was not restarted:\n{}", agent.stderr()));
    wait_for(Duration::from_secs(30), || {
        (unauthorized() >= errors_before + 3.0).then_some(())
    })
    .unwrap_or_else(|| panic!("the wrong password was not used:\n{}", agent.stderr()));
    held("wrong password after SIGHUP");
    let during = delivered().unwrap_or(0.0);
    // A wall-clock window by design: held, nothing may be delivered in these 500 ms.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        delivered().unwrap_or(0.0),
        during,
        "nothing is delivered while held"
    );

    // The right one again, no signal.
    std::fs::write(&pw, "writer-pw\n").unwrap();
    ready("right password again");
    let (collected, delivered, stored) = stop_with_everything_stored(agent, &influx);
    println!(
        "collected {collected}, delivered {delivered}, values stored {stored} of {}",
        collected / 9 * 5
    );
}
