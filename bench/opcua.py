#!/usr/bin/env python3
"""OPC UA load: one device with N monitored items (5,000 by default) on a Python asyncua server
that writes every variable once a second, delivered to a real VictoriaMetrics (v2 API).

Reports the time from start to the first value of every item (the items are created in
batches of `max_items_per_call`), and the agent's CPU seconds per million values delivered.

    cargo build --profile dist        # or --release (bench/e2e.py picks the binary)
    python3 bench/opcua.py --items 5000 --seconds 60 [--batch 1000]

Needs Python asyncua (LINETAP_ASYNCUA_PYTHON, default /opt/asyncua-venv/bin/python). The server
is a separate process: its CPU is not counted.
"""
import argparse, json, os, subprocess, sys, tempfile, time, urllib.parse
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (free_port, http, wait_ok, metric, proc_cpu_seconds, proc_peak_rss_mb)

PY = os.environ.get("LINETAP_ASYNCUA_PYTHON", "/opt/asyncua-venv/bin/python")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--batch", type=int, default=1000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="linetap-opcua-")
    procs = []
    try:
        port = e2e.free_port()
        server = subprocess.Popen([PY, os.path.join(os.path.dirname(__file__), "opcua_server.py"),
                                   "--port", str(port), "--items", str(a.items)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(server)
        if server.stdout.readline().strip() != "READY":
            sys.exit("the asyncua server did not start")
        vm_port = e2e.free_port()
        vm = subprocess.Popen(["victoria-metrics", f"-storageDataPath={tmp}/vm", f"-httpListenAddr=127.0.0.1:{vm_port}",
                               "-retentionPeriod=100y", "-loggerLevel=ERROR", "-search.latencyOffset=0s"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(vm)
        vm_url = f"http://127.0.0.1:{vm_port}"
        e2e.wait_ok(vm_url + "/health", vm, "victoria-metrics")
        metrics_port = e2e.free_port()
        cfg = os.path.join(tmp, "opcua.toml")
        with open(cfg, "w") as f:
            f.write(f'[line]\nid = "bench"\n[agent]\ndata_dir = "{tmp}/data"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
                    f'self_interval = "0s"\n[sinks.vm]\ntype = "influxdb"\nurl = "{vm_url}"\napi = "v2"\norg = "lab"\n'
                    f'bucket = "bench"\ntoken_env = "BENCH_TOKEN"\nbatch_size = 5000\nflush_interval = "1s"\n'
                    f'[[devices]]\nid = "ua"\nprotocol = "opcua"\nendpoint = "opc.tcp://127.0.0.1:{port}/"\npoll = "1s"\n'
                    f'timeout = "30s"\nmax_items_per_call = {a.batch}\n'
                    f'[[devices.points]]\nname = "v"\nmeasurement = "bench"\nnode = "nsu=urn:linetap:bench;s=v0"\n')
            for i in range(1, a.items):
                f.write(f'[[devices.points]]\nname = "v{i}"\nmeasurement = "bench"\nnode = "nsu=urn:linetap:bench;s=v{i}"\n')
        env = dict(os.environ, BENCH_TOKEN="t", LINETAP_LOG="warn")
        started = time.time()
        agent = subprocess.Popen([e2e.BIN, "run", "--config", cfg], env=env,
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "agent.log"), "w"))
        procs.append(agent)
        all_items = None
        while time.time() - started < 120:
            try:
                if e2e.metric(metrics_port, "linetap_opcua_values_total") >= a.items:
                    all_items = time.time() - started
                    break
            except Exception:
                pass
            time.sleep(0.05)
        time.sleep(3)
        cpu0 = e2e.proc_cpu_seconds(agent.pid)
        t0 = time.time()
        time.sleep(a.seconds)
        cpu1 = e2e.proc_cpu_seconds(agent.pid)
        t1 = time.time()
        values = e2e.metric(metrics_port, 'linetap_opcua_values_total')
        rss = e2e.proc_peak_rss_mb(agent.pid)
        agent.terminate()
        agent.wait(timeout=30)
        e2e.http(vm_url + "/internal/force_flush")
        time.sleep(1)
        q = f'sum(count_over_time({{__name__=~"bench_v[0-9]*"}}[{int(t1 - t0)}s]))'
        r = json.loads(e2e.http(vm_url + "/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": f"{t1:.3f}"})))
        res = r["data"]["result"]
        delivered = float(res[0]["value"][1]) if res else 0.0
        cpu = cpu1 - cpu0
        print(json.dumps({
            "items": a.items, "max_items_per_call": a.batch,
            "seconds_to_every_item_first_value": round(all_items, 2) if all_items else None,
            "seconds": round(t1 - t0, 1), "values_delivered": int(delivered),
            "values_per_s": round(delivered / (t1 - t0)),
            "agent_cpu_seconds": round(cpu, 3),
            "cpu_seconds_per_million_values": round(cpu / (delivered / 1e6), 3) if delivered else None,
            "cpu_percent_of_one_core": round(100 * cpu / (t1 - t0), 2),
            "agent_peak_rss_mb": round(rss, 1), "opcua_values_total": int(values),
        }))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except Exception:
                    p.kill()


if __name__ == "__main__":
    main()
