//! The systemd notification protocol, against a socket the test listens on: READY=1 once the
//! agent runs, WATCHDOG=1 while the pipeline makes progress, none while a sink is stuck in a
//! write that does not return (its file is a pipe nobody reads), again once it is unstuck,
//! and STOPPING=1 on SIGTERM.

mod common;

use common::*;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Messages = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen(path: &std::path::Path) -> Messages {
    let socket = UnixDatagram::bind(path).unwrap();
    let got: Messages = Arc::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            sink.lock().unwrap().push((Instant::now(), msg));
        }
    });
    got
}

fn last(got: &Messages, key: &str) -> Option<Instant> {
    got.lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(_, m)| m.lines().any(|l| l == key))
        .map(|(t, _)| *t)
}

#[test]
fn ready_watchdog_only_while_making_progress_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let got = listen(&socket);
    // The file sink writes into a pipe the test drains, or stops draining.
    let fifo = dir.path().join("out.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let drain = Arc::new(AtomicBool::new(true));
    {
        // Read and write: opening a FIFO so never blocks, and the reader never sees EOF.
        let mut pipe = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let drain = drain.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                if drain.load(Relaxed) {
                    if pipe.read(&mut buf).is_err() {
                        return;
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
    }
    let data = dir.path().join("data").display().to_string();
    let out = fifo.display().to_string();
    let line = SimulatedLine::start(dir.path(), &["rig"], |a| {
        format!(
            "[line]\nid = \"lab\"\n\n[agent]\ndata_dir = \"{data}\"\nstuck_after = \"2s\"\n\n\
             [sinks.pipe]\ntype = \"file\"\npath = \"{out}\"\nflush_interval = \"50ms\"\n\n\
             [[devices]]\nid = \"rig\"\naddress = \"{}\"\npoll = \"10ms\"\n\n\
             [[devices.points]]\nname = \"value\"\naddress = 0\ntype = \"u16\"\ncount = 100\nindex_tag = \"i\"\n",
            a[0]
        )
    });
    let socket_env = socket.display().to_string();
    let agent = AgentProcess::start_with_env(
        &line.config,
        &[("NOTIFY_SOCKET", &socket_env), ("WATCHDOG_USEC", "1000000")],
    );

    let ready = wait_for(Duration::from_secs(30), || last(&got, "READY=1"));
    assert!(ready.is_some(), "no READY=1:\n{}", agent.stderr());
    // Fed while the pipeline makes progress: every 0.5 s.
    let fed = wait_for(Duration::from_secs(10), || {
        let n = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.contains("WATCHDOG=1"))
            .count();
        (n >= 3).then_some(())
    });
    assert!(
        fed.is_some(),
        "no WATCHDOG=1 while polling:\n{}",
        agent.stderr()
    );
    assert!(
        got.lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.contains("STATUS=1/1 devices up")),
        "STATUS= with the devices up: {:?}",
        got.lock().unwrap()
    );

    // The sink's writes block: after stuck_after (2 s) the watchdog is no longer fed.
    drain.store(false, Relaxed);
    let stuck = wait_for(Duration::from_secs(20), || {
        agent
            .stderr()
            .contains("the pipeline is stuck")
            .then_some(Instant::now())
    });
    let stuck = stuck.unwrap_or_else(|| panic!("never reported stuck:\n{}", agent.stderr()));
    assert!(agent.stderr().contains("sink pipe"), "{}", agent.stderr());
    // A wall-clock window by design: stuck for 2 s more, the watchdog must stay unfed.
    std::thread::sleep(Duration::from_secs(2));
    let fed_last = last(&got, "WATCHDOG=1").unwrap();
    assert!(
        fed_last < stuck,
        "WATCHDOG=1 was sent while the sink was stuck"
    );

    // Unstuck: fed again.
    let resumed_at = Instant::now();
    drain.store(true, Relaxed);
    let again = wait_for(Duration::from_secs(10), || {
        last(&got, "WATCHDOG=1").filter(|t| *t > resumed_at)
    });
    assert!(
        again.is_some(),
        "the watchdog was not fed again:\n{}",
        agent.stderr()
    );

    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        got.lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1: {:?}",
        got.lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect::<Vec<_>>()
    );
}

/// `when_full = "block"` with the store down holds the pollers back. A reload that restarts a
/// device (and changes the catalog) must not wait for the store: it finishes within 5 s, the
/// watchdog keeps being fed (a held poller is waiting, not stuck), and a SIGTERM right behind a
/// second reload stops the agent within its grace period.
#[test]
fn a_reload_and_a_stop_while_the_buffer_holds_the_sources_back() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let got = listen(&socket);
    let data = dir.path().join("data").display().to_string();
    // A store that is down: nothing listens there.
    let store = format!("http://127.0.0.1:{}", free_port());
    let text = |a: &[String], extra: &str| {
        format!(
            "[line]\nid = \"held\"\n\n[agent]\ndata_dir = \"{data}\"\nstuck_after = \"2s\"\nshutdown_grace = \"2s\"\n\n\
             [buffer]\nmax_bytes = \"1MiB\"\nwhen_full = \"block\"\n\n\
             [sinks.central]\ntype = \"influxdb\"\nurl = \"{store}\"\napi = \"v1\"\ndatabase = \"x\"\n\n\
             [[devices]]\nid = \"a\"\naddress = \"{}\"\npoll = \"10ms\"\n\n\
             [[devices.points]]\nname = \"value\"\naddress = 0\ntype = \"u16\"\ncount = 100\nindex_tag = \"i\"\n\n\
             [[devices]]\nid = \"b\"\naddress = \"{}\"\npoll = \"10ms\"\n\n\
             [[devices.points]]\nname = \"value\"\naddress = 0\ntype = \"u16\"\ncount = 100\nindex_tag = \"i\"\n{extra}",
            a[0], a[1]
        )
    };
    let line = SimulatedLine::start(dir.path(), &["a", "b"], |a| text(a, ""));
    let socket_env = socket.display().to_string();
    let agent = AgentProcess::start_with_env(
        &line.config,
        &[("NOTIFY_SOCKET", &socket_env), ("WATCHDOG_USEC", "1000000")],
    );
    wait_for(Duration::from_secs(60), || {
        agent
            .stderr()
            .contains("holding the sources back")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the buffer never held the sources back:\n{}",
            agent.stderr()
        )
    });

    // Device b gets a new point: its poller restarts and the catalog changes.
    let extra = "\n[[devices.points]]\nname = \"extra\"\naddress = 100\ntype = \"u16\"\n";
    std::fs::write(&line.config, text(&line.addresses, extra)).unwrap();
    let hup = Instant::now();
    agent.signal("HUP");
    wait_for(Duration::from_secs(5), || {
        agent
            .stderr()
            .contains("configuration reloaded")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the reload did not finish within 5 s:\n{}", agent.stderr()));
    eprintln!("reload finished in {:?}", hup.elapsed());
    // The watchdog is fed on: the held pollers are waiting, not stuck.
    let after = Instant::now() + Duration::from_secs(3);
    wait_for(Duration::from_secs(10), || {
        last(&got, "WATCHDOG=1").filter(|t| *t > after)
    })
    .unwrap_or_else(|| {
        panic!(
            "the watchdog was not fed after the reload:\n{}",
            agent.stderr()
        )
    });
    assert!(
        !agent.stderr().contains("the pipeline is stuck"),
        "{}",
        agent.stderr()
    );

    // A second reload, and a SIGTERM right behind it.
    std::fs::write(&line.config, text(&line.addresses, "")).unwrap();
    agent.signal("HUP");
    let term = Instant::now();
    let (code, log) = agent.stop();
    let took = term.elapsed();
    eprintln!("stopped {took:?} after SIGTERM");
    assert_eq!(code, Some(0), "{log}");
    assert!(
        took < Duration::from_secs(2 + 4),
        "stopping took {took:?}:\n{log}"
    );
}
