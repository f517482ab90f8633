#!/usr/bin/env python3
"""Durable QoS 1 ingest: one MQTT device read at QoS 1 over one broker connection with a
persistent session, every PUBACK sent only once what the message carried is appended and synced
to the buffer (group commit: one fdatasync covers every message waiting).

A real Mosquitto on loopback with `max_inflight_messages` as given (`--inflight default` leaves
Mosquitto's default, 20). The agent starts once to make its persistent session and subscription,
stops, `examples/mqtt_load` publishes N JSON messages at QoS 1 (the broker queues them for the
offline session), and the agent starts again: the broker then hands the backlog over at the
rate the agent acknowledges it, at most `max_inflight_messages` unacknowledged at a time. The rate
is the messages received from the first to the last (the broker sends no more than its window
before PUBACKs come back, so it is also the acknowledgement rate). The agent's buffer (its
data_dir) is on a real file system (`--data-parent`, default the system temp directory: check it
is not a tmpfs, where fdatasync costs nothing); the file sink writes to tmpfs.

`--live` publishes while the agent runs instead (the load generator then shares the cores).

    cargo build --release --bins --examples
    python3 bench/mqtt_qos1.py --inflight default --messages 50000
    python3 bench/mqtt_qos1.py --inflight 1000 --messages 200000
"""
import argparse, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mqtt import BIN, LOAD, cpu, free_port, metric  # noqa: E402


def fs_type(path):
    out = subprocess.run(["df", "--output=fstype", path], capture_output=True, text=True)
    lines = out.stdout.split()
    return lines[-1] if out.returncode == 0 and lines else "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--values", type=int, default=10)
    ap.add_argument("--inflight", default="default",
                    help="Mosquitto max_inflight_messages (a number, or 'default': 20)")
    ap.add_argument("--data-parent", default=tempfile.gettempdir(),
                    help="where the agent's data_dir (its buffer) is made: a real disk")
    ap.add_argument("--live", action="store_true",
                    help="publish while the agent runs, rather than a backlog queued while it was stopped")
    ap.add_argument("--mqtt-version", default="5", choices=["5", "3.1.1"])
    a = ap.parse_args()
    for b in (BIN, LOAD):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: cargo build --release --bins --examples")
    work = tempfile.mkdtemp(prefix="linetap-qos1-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    data = tempfile.mkdtemp(prefix="linetap-qos1-data-", dir=a.data_parent)
    bport, mport = free_port(), free_port()
    inflight = "" if a.inflight == "default" else f"max_inflight_messages {int(a.inflight)}\n"
    with open(f"{work}/m.conf", "w") as f:
        f.write(f"user root\nlistener {bport} 127.0.0.1\nallow_anonymous true\n"
                f"max_queued_messages 10000000\n{inflight}")
    broker = subprocess.Popen(["mosquitto", "-c", f"{work}/m.conf"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    k = a.values
    config = (f'[line]\nid = "bench"\n[agent]\ndata_dir = "{data}"\nself_interval = "0s"\n'
              f'metrics_listen = "127.0.0.1:{mport}"\n'
              f'[brokers.b]\nurl = "mqtt://127.0.0.1:{bport}"\nmqtt_version = "{a.mqtt_version}"\n'
              f'[sinks.f]\ntype = "file"\npath = "{work}/out.lp"\nmax_file_bytes = "64MiB"\nmax_files = 2\n'
              f'[[devices]]\nid = "dev"\nprotocol = "mqtt"\nbroker = "b"\ntopic = "bench/dev/telemetry"\nqos = 1\n'
              f'timestamp = "/ts"\n\n[[devices.points]]\nname = "v"\njson = "/v"\ncount = {k}\nindex_tag = "i"\n')
    with open(f"{work}/line.toml", "w") as f:
        f.write(config)
    counter = 'linetap_mqtt_messages_total{device="dev",result="ok"}'
    agent = None

    def start_agent():
        p = subprocess.Popen([BIN, "run", "-c", f"{work}/line.toml"], stdout=subprocess.DEVNULL,
                             stderr=open(f"{work}/agent.log", "a"))
        for _ in range(200):
            if metric(mport, 'linetap_mqtt_connected{broker="b"}') == 1.0:
                return p
            time.sleep(0.02)
        sys.exit("the agent did not connect:\n" + open(f"{work}/agent.log").read()[-2000:])

    try:
        agent = start_agent()
        if not a.live:
            # The session and its subscription exist now: stop, queue the backlog, start again.
            time.sleep(0.5)
            agent.terminate()
            agent.wait(timeout=30)
            load = subprocess.run([LOAD, str(bport), "json", str(a.messages), str(k), "1"],
                                  capture_output=True, text=True)
            print("load (queued while the agent was stopped):", load.stdout.strip() or load.stderr.strip())
            agent = start_agent()
        else:
            time.sleep(0.5)
            load = subprocess.Popen([LOAD, str(bport), "json", str(a.messages), str(k), "1"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        c0 = cpu(agent.pid)
        first = None
        last_change, seen = time.time(), -1.0
        while True:
            n = metric(mport, counter) or 0.0
            now = time.time()
            if first is None and n > 0:
                first = (now, n)
            if n >= a.messages:
                break
            if n != seen:
                seen, last_change = n, now
            elif now - last_change > 10:
                print("stalled at", n, "messages; agent log tail:\n" + open(f"{work}/agent.log").read()[-2000:])
                break
            time.sleep(0.01)
        t1, c1 = time.time(), cpu(agent.pid)
        if a.live:
            print("load (while the agent ran):", load.communicate(timeout=60)[0].strip())
        if first is None:
            sys.exit("the agent received nothing")
        t0, n0 = first
        got = n - n0
        secs = max(t1 - t0, 1e-6)
        print(f"QoS 1 json x {k} values, inflight {a.inflight}, MQTT {a.mqtt_version}, buffer on "
              f"{fs_type(data)}{' (live)' if a.live else ''}: {n:.0f} messages received, {got:.0f} "
              f"in {secs:.2f} s = {got / secs:,.0f} messages/s; agent CPU {c1 - c0:.2f} s = "
              f"{(c1 - c0) / (n / 1e6):.1f} CPU-s per million messages")
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait()
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
