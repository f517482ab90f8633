#!/usr/bin/env python3
"""MQTT ingest benchmark: a real Mosquitto on loopback, the agent with one MQTT device
(JSON: K values per message through one JSON array pointer; or Sparkplug B: K metrics per DDATA
by alias), a file sink on a tmpfs, and `examples/mqtt_load` publishing N messages at QoS 0 as
fast as the broker takes them. Reports the agent's samples/s while it drains the load and its
CPU seconds per million samples (its own process only), from receiving to delivering.
`--sink mqtt-json|mqtt-linetap|sparkplug` delivers back to the broker through the MQTT sink
(QoS 1 for json/linetap: every flush waits for its PUBACKs), which measures the sink's publish
rate too.

    cargo build --release --bins --examples
    python3 bench/mqtt.py --format json --messages 200000 --values 10
    python3 bench/mqtt.py --format sparkplug --messages 100000 --values 50
"""
import argparse, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("LINETAP_BIN") or os.path.join(ROOT, "target", "release", "linetap")
LOAD = os.path.join(ROOT, "target", "release", "examples", "mqtt_load")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port, name):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except Exception:
        return None
    for line in body.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", choices=["json", "sparkplug"], default="json")
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--values", type=int, default=10)
    ap.add_argument("--sink", choices=["file", "mqtt-json", "mqtt-linetap", "sparkplug"], default="file",
                    help="where the agent delivers: a file on tmpfs, or back to the broker through the MQTT sink")
    a = ap.parse_args()
    for b in (BIN, LOAD):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: cargo build --release --bins --examples")
    work = tempfile.mkdtemp(prefix="linetap-mqtt-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    bport, mport = free_port(), free_port()
    with open(f"{work}/m.conf", "w") as f:
        f.write(f"user root\nlistener {bport} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 10000000\nmax_inflight_messages 0\n")
    broker = subprocess.Popen(["mosquitto", "-c", f"{work}/m.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    k = a.values
    if a.format == "json":
        device = (f'[[devices]]\nid = "dev"\nprotocol = "mqtt"\nbroker = "b"\ntopic = "bench/dev/telemetry"\nqos = 0\n'
                  f'timestamp = "/ts"\n\n[[devices.points]]\nname = "v"\njson = "/v"\ncount = {k}\nindex_tag = "i"\n')
    else:
        device = ('[[devices]]\nid = "dev"\nprotocol = "mqtt"\nbroker = "b"\nformat = "sparkplug-b"\n'
                  'sparkplug = { group = "bench", node = "edge", device = "dev" }\n')
    if a.sink == "file":
        sink = f'[sinks.f]\ntype = "file"\npath = "{work}/out.lp"\nmax_file_bytes = "64MiB"\nmax_files = 2\n'
    elif a.sink == "sparkplug":
        sink = f'[sinks.f]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:{bport}"\nformat = "sparkplug-b"\nsparkplug = {{ group = "out", node = "bench" }}\n'
    else:
        fmt = a.sink.split("-")[1]
        sink = f'[sinks.f]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:{bport}"\nformat = "{fmt}"\nqos = 1\ntopic = "out/{{device}}"\n'
    config = (f'[line]\nid = "bench"\n[agent]\ndata_dir = "{work}/data"\nself_interval = "0s"\n'
              f'metrics_listen = "127.0.0.1:{mport}"\n[brokers.b]\nurl = "mqtt://127.0.0.1:{bport}"\n'
              f'{sink}\n{device}')
    with open(f"{work}/line.toml", "w") as f:
        f.write(config)
    agent = subprocess.Popen([BIN, "run", "-c", f"{work}/line.toml"], stdout=subprocess.DEVNULL, stderr=open(f"{work}/agent.log", "w"))
    try:
        for _ in range(100):
            if metric(mport, 'linetap_mqtt_connected{broker="b"}') == 1.0:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        expected = a.messages * k
        c0, t0 = cpu(agent.pid), time.time()
        counter = 'linetap_samples_delivered_total{sink="f"}'
        dbase = metric(mport, counter) or 0
        load = subprocess.run([LOAD, str(bport), a.format, str(a.messages), str(k)], capture_output=True, text=True)
        print("load:", load.stdout.strip() or load.stderr.strip())
        last, got, seen = time.time(), 0, 0
        while True:
            now = metric(mport, counter) or 0
            got = now - dbase
            if got >= expected or time.time() - last > 10:
                break
            if now != seen:
                seen, last = now, time.time()
            if os.environ.get("BENCH_DEBUG"):
                print(f"{time.time() - t0:.2f} s: delivered {now}", flush=True)
            time.sleep(0.05)
        c1, t1 = cpu(agent.pid), time.time()
        if got < expected * 0.99:
            print("agent log tail:\n" + open(f"{work}/agent.log").read()[-2000:])
            body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()
            print("\n".join(l for l in body.splitlines() if "mqtt" in l or "collected" in l or "delivered" in l or "dropped" in l and not l.endswith(" 0")))
        if got <= 0:
            print(open(f"{work}/agent.log").read()[-3000:])
            print(urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()[:3000])
            sys.exit("the agent collected nothing")
        print(f"{a.format} -> {a.sink}: {a.messages} messages x {k} values; agent delivered {got:.0f} samples "
              f"(health records included) in {t1 - t0:.2f} s: {got / (t1 - t0):,.0f} samples/s, "
              f"{a.messages / (t1 - t0):,.0f} messages/s; agent CPU {c1 - c0:.2f} s = "
              f"{(c1 - c0) / (got / 1e6):.2f} CPU-s per million samples")
    finally:
        agent.terminate()
        agent.wait()
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
