#!/usr/bin/env python3
"""End-to-end benchmark: N simulated devices x 100 f32 values at 10 Hz, polled by the agent
and delivered to a real VictoriaMetrics through the InfluxDB v2 write API.

Reports the agent's CPU seconds per million values delivered and its peak RSS.

    cargo build --profile dist        # what the package ships (else target/release is used)
    python3 bench/e2e.py --devices 20 --seconds 60
    python3 bench/e2e.py --devices 200 --seconds 60
    python3 bench/e2e.py --devices 200 --poll 1s --listed --seconds 65   # 20,000 listed points
    python3 bench/e2e.py --devices 20 --seconds 90 --outage 30   # drain rate after an outage
    python3 bench/e2e.py --devices 20 --rtde 10 --seconds 60     # + ten UR robots over RTDE at 500 Hz
    python3 bench/e2e.py --devices 20 --seconds 30 --floor       # W1 against the bare libmodbus loop, run first
    python3 bench/e2e.py --devices 20 --seconds 30 --floor-beside  # ... run at the same time instead
    LINETAP_BIN=/path/to/other/linetap python3 bench/e2e.py ...  # compare another build

Also reports the durable buffer's bytes written per million samples (eMMC/SD wear).

The simulator runs as a separate process (`linetap simulate`), so its CPU is not counted.
Everything listens on 127.0.0.1 only.
"""
import argparse, json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request, urllib.parse

EXTRA = os.environ.get("BENCH_SINK_EXTRA", "").replace(";", "\n") + "\n"
# Extra [agent] keys, e.g. BENCH_AGENT_EXTRA='self_interval = "0s"'.
AGENT_EXTRA = os.environ.get("BENCH_AGENT_EXTRA", "").replace(";", "\n") + "\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_bin():
    """The `dist` build (what the Debian package ships) when there is one, else the release build."""
    dist = os.path.join(ROOT, "target", "dist", "linetap")
    return dist if os.path.exists(dist) else os.path.join(ROOT, "target", "release", "linetap")


BIN = os.environ.get("LINETAP_BIN") or default_bin()


def evict_page_cache(path):
    """Drops the binary's pages from the page cache, as after a reboot: how they were last
    written or read (the linker, `cp`, readahead) changes how many of them a process maps — the
    same binary measured 19.8 or 20.6 MB at the end of the listed-points line — so every run
    starts from the same state. Pages other processes map stay."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


TAKEN = set()


def free_port():
    """A free loopback port, never one handed out before in this run (the kernel may hand a
    just-closed port out again: a simulated device on the metrics port hangs the run)."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p not in TAKEN:
            TAKEN.add(p)
            return p


def http(url, data=None):
    with urllib.request.urlopen(url, data=data, timeout=60) as r:
        return r.read().decode()


def wait_ok(url, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"{what} exited")
        try:
            http(url)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{what} not ready")


def proc_cpu_seconds(pid):
    user, system = proc_cpu_split(pid)
    return user + system


def cgroup2_mount():
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or its `unified` directory on
    a hybrid system), or None."""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None


class AgentCpu:
    """The agent's CPU time. From a cgroup v2 of its own when one can be made (root): `cpu.stat`
    counts every thread, exited ones too, in microseconds. Otherwise from /proc/PID/stat, whose
    user and system times are whole 10 ms ticks: up to 20 ms off at each reading, which is
    +-10 % of the ~0.35 CPU-s W1's agent spends in 30 s (the floor measures itself with
    getrusage, in microseconds)."""

    def __init__(self):
        self.dir = None
        root = cgroup2_mount()
        if root:
            path = os.path.join(root, f"linetap-bench-{os.getpid()}")
            try:
                os.mkdir(path)
                self.dir = path
            except OSError:
                pass
        self.pid = None

    def join(self):
        """Runs in the agent's process before it starts: moves it into the cgroup."""
        if self.dir:
            try:
                with open(os.path.join(self.dir, "cgroup.procs"), "w") as f:
                    f.write("0")
            except OSError:
                pass

    def started(self, pid):
        self.pid = pid
        if self.dir:
            try:
                with open(os.path.join(self.dir, "cgroup.procs")) as f:
                    if str(pid) not in f.read().split():
                        self.close()
            except OSError:
                self.close()

    def source(self):
        return "cgroup cpu.stat (us)" if self.dir else "/proc/PID/stat (10 ms ticks)"

    def split(self):
        """(user, system) CPU seconds so far."""
        if self.dir:
            stat = {}
            with open(os.path.join(self.dir, "cpu.stat")) as f:
                for line in f:
                    k, v = line.split()
                    stat[k] = int(v)
            # usage is exact; its split into user and system is the kernel's estimate.
            usage = stat["usage_usec"] / 1e6
            user = stat.get("user_usec", 0) / 1e6
            return user, usage - user
        return proc_cpu_split(self.pid)

    def seconds(self):
        return sum(self.split())

    def close(self):
        """Removes the cgroup (once the agent is gone; empty cgroups only)."""
        if self.dir:
            try:
                os.rmdir(self.dir)
            except OSError:
                pass
            self.dir = None


def proc_cpu_split(pid):
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks  # utime, stime


def proc_rss_mb(pid, key="VmRSS:"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def proc_peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


DATA_DIR = ""
METRICS_PORT = 0


def metric(port, name):
    """Sum of a metric's series on the agent's /metrics."""
    total = 0.0
    for line in http(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.split()[-1])
    return total


def poll_stats(port, since=None):
    """Polls, missed ticks and polls slower than 5 ms / 10 ms so far (or since `since`)."""
    now = {
        "polls": metric(port, "linetap_poll_duration_seconds_count"),
        "missed_ticks": metric(port, "linetap_poll_missed_ticks_total"),
        "le_5ms": sum(float(l.split()[-1]) for l in http(f"http://127.0.0.1:{port}/metrics").splitlines()
                      if l.startswith("linetap_poll_duration_seconds_bucket") and 'le="0.005"' in l),
        "le_10ms": sum(float(l.split()[-1]) for l in http(f"http://127.0.0.1:{port}/metrics").splitlines()
                       if l.startswith("linetap_poll_duration_seconds_bucket") and 'le="0.01"' in l),
    }
    if since is None:
        return now
    d = {k: now[k] - since[k] for k in now}
    polls = d["polls"] or 1
    return {"polls": int(d["polls"]), "missed_ticks": int(d["missed_ticks"]),
            "share_over_5ms": round(1 - d["le_5ms"] / polls, 4),
            "share_over_10ms": round(1 - d["le_10ms"] / polls, 4)}


def poll_seconds(poll):
    if poll.endswith("ms"):
        return float(poll[:-2]) / 1000.0
    return float(poll.rstrip("s"))


def floor_command(tmp, ports, poll, seconds):
    """Builds the bare libmodbus loop (bench/floor.c); its command line against `ports`."""
    exe = os.path.join(tmp, "floor")
    src = os.path.join(ROOT, "bench", "floor.c")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libmodbus"], capture_output=True, text=True)
    if flags.returncode != 0:
        sys.exit("--floor needs libmodbus-dev (apt-get install libmodbus-dev) and pkg-config")
    subprocess.run(["cc", "-O2", "-o", exe, src] + flags.stdout.split(), check=True)
    return [exe, ",".join(str(p) for p in ports), str(poll_seconds(poll) * 1000.0), str(seconds), "200"]


def floor_result(stdout, when):
    r = json.loads(stdout)
    r["cpu_seconds_per_million_values"] = round(r["cpu_seconds"] / (r["values"] / 1e6), 4) if r["values"] else None
    r["values_per_s"] = round(r["values"] / r["seconds"])
    r["polls_per_s"] = round(r["values"] / 100 / r["seconds"])
    r["when"] = when
    return r


def run_floor(tmp, ports, poll, seconds):
    """The bare libmodbus loop against the same simulated devices: CPU per million values read."""
    out = subprocess.run(floor_command(tmp, ports, poll, seconds), capture_output=True, text=True, check=True)
    return floor_result(out.stdout, "before the agent")


def points(listed):
    """One array of 100 f32 per device, or (--listed) 100 individually named f32 points v0..v99,
    one per register pair, as register maps are usually written."""
    if not listed:
        return ('[[devices.points]]\nname = "value"\nmeasurement = "bench"\naddress = 0\ntype = "f32"\n'
                'count = 100\nindex_tag = "i"\n')
    return "".join(f'[[devices.points]]\nname = "v{j}"\nmeasurement = "bench"\naddress = {2 * j}\ntype = "f32"\n'
                   for j in range(100))


def rtde_devices(ports, frequency):
    """Universal Robots read over RTDE with the whole ur-rtde recipe (73 values a package)."""
    return [f'[[devices]]\nid = "ur-{i:02}"\nprotocol = "rtde"\naddress = "127.0.0.1:{p}"\n'
            f'profile = "ur-rtde"\nfrequency = {frequency}\n' for i, p in enumerate(ports)]


def config(n, ports, vm_url, poll, listed=False, rtde=()):
    out = [
        '[line]\nid = "bench"\nsite = "lab"\n',
        f'[agent]\ndata_dir = "{DATA_DIR}"\nmetrics_listen = "127.0.0.1:{METRICS_PORT}"\n' + AGENT_EXTRA,
        f'[sinks.vm]\ntype = "influxdb"\nurl = "{vm_url}"\napi = "v2"\norg = "lab"\nbucket = "bench"\n'
        'token_env = "BENCH_TOKEN"\nbatch_size = 5000\nflush_interval = "1s"\n' + EXTRA,
    ]
    for i in range(n):
        out.append(
            f'[[devices]]\nid = "dev-{i:03}"\nkind = "robot"\naddress = "127.0.0.1:{ports[i]}"\nunit = 1\n'
            f'poll = "{poll}"\ntimeout = "1s"\n' + points(listed)
        )
    out.extend(rtde)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--poll", default="100ms")
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--floor-beside", action="store_true",
                    help="as --floor, but run the floor at the same time as the agent's measured window "
                         "(both poll the same simulated devices), so both see the same machine")
    ap.add_argument("--floor", action="store_true",
                    help="first run the bare libmodbus polling loop (bench/floor.c) against the same "
                         "simulator for the same time, and print linetap's CPU per million values "
                         "as a ratio of it (needs cc and libmodbus-dev)")
    ap.add_argument("--gzip", action="store_true",
                    help="compress the writes to the store (off by default for a loopback store)")
    ap.add_argument("--outage", type=float, default=0,
                    help="stop VictoriaMetrics this many seconds in the middle and measure the drain rate")
    ap.add_argument("--listed", action="store_true",
                    help="write each device's 100 values as individually listed points v0..v99 "
                         "(one [[devices.points]] each) instead of one array point")
    ap.add_argument("--rtde", type=int, default=0,
                    help="also read this many Universal Robots over RTDE (profile ur-rtde), served "
                         "by the simulator, and report whether the Modbus devices keep their rate")
    ap.add_argument("--rtde-frequency", type=int, default=500)
    a = ap.parse_args()
    global EXTRA
    if a.gzip:
        EXTRA += "gzip = true\n"
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --profile dist (or --release)")
    vm_bin = shutil.which("victoria-metrics") or sys.exit("apt-get install victoria-metrics")
    tmp = tempfile.mkdtemp(prefix="linetap-e2e-")
    procs = []
    meter = AgentCpu()
    try:
        vm_port = free_port()
        vm_args = [vm_bin, f"-storageDataPath={tmp}/vm", f"-httpListenAddr=127.0.0.1:{vm_port}",
                   "-retentionPeriod=100y", "-loggerLevel=ERROR", "-search.latencyOffset=0s", "-dedup.minScrapeInterval=1ms"]
        vm = subprocess.Popen(vm_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(vm)
        vm_url = f"http://127.0.0.1:{vm_port}"
        wait_ok(vm_url + "/health", vm, "victoria-metrics")
        global DATA_DIR, METRICS_PORT
        DATA_DIR = os.path.join(tmp, "agent-data")
        METRICS_PORT = free_port()
        ports = [free_port() for _ in range(a.devices)]
        cfg_path = os.path.join(tmp, "bench.toml")
        with open(cfg_path, "w") as f:
            rtde_ports = [free_port() for _ in range(a.rtde)]
            f.write(config(a.devices, ports, vm_url, a.poll, a.listed,
                           rtde_devices(rtde_ports, a.rtde_frequency)))
        cfg_bytes = os.path.getsize(cfg_path)
        evicted = evict_page_cache(BIN)
        sim = subprocess.Popen([BIN, "simulate", "--config", cfg_path], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sim)
        time.sleep(1.0)
        floor = None
        floor_proc = None
        if a.floor:
            floor = run_floor(tmp, ports, a.poll, a.seconds)
        elif a.floor_beside:
            floor_cmd = floor_command(tmp, ports, a.poll, a.seconds)
        env = dict(os.environ, BENCH_TOKEN="t", LINETAP_LOG="warn")
        agent = subprocess.Popen([BIN, "run", "--config", cfg_path], env=env, preexec_fn=meter.join,
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "agent.log"), "w"))
        procs.append(agent)
        meter.started(agent.pid)
        started = time.time()
        startup = None
        while time.time() - started < a.warmup:
            try:
                if metric(METRICS_PORT, "linetap_samples_collected_total") > 0:
                    startup = time.time() - started
                    break
            except Exception:
                pass
            time.sleep(0.02)
        time.sleep(max(0.0, a.warmup - (time.time() - started)))
        if a.floor_beside:
            floor_proc = subprocess.Popen(floor_cmd, stdout=subprocess.PIPE, text=True)
            procs.append(floor_proc)
        split0 = meter.split()
        cpu0 = sum(split0)
        polls0 = metric(METRICS_PORT, "linetap_poll_duration_seconds_count")
        collected0 = metric(METRICS_PORT, "linetap_samples_collected_total")
        t0 = time.time()
        drain = None
        if a.outage > 0:
            steady0 = poll_stats(METRICS_PORT)
            time.sleep(min(5.0, a.outage))
            steady = poll_stats(METRICS_PORT, steady0)
            vm.send_signal(15)
            vm.wait(timeout=30)
            time.sleep(a.outage)
            backlog = metric(METRICS_PORT, "linetap_buffer_bytes")
            collected_before = metric(METRICS_PORT, "linetap_samples_collected_total")
            delivered_before = metric(METRICS_PORT, "linetap_samples_delivered_total")
            vm = subprocess.Popen(vm_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(vm)
            wait_ok(vm_url + "/health", vm, "victoria-metrics")
            r0 = time.time()
            during0 = poll_stats(METRICS_PORT)
            while metric(METRICS_PORT, "linetap_buffer_bytes") > 256 * 1024 and time.time() - r0 < 300:
                time.sleep(0.05)
            r1 = time.time()
            during = poll_stats(METRICS_PORT, during0)
            behind = collected_before - delivered_before
            delivered_after = metric(METRICS_PORT, "linetap_samples_delivered_total")
            drain = {
                "outage_s": a.outage, "backlog_bytes": backlog, "backlog_samples": int(behind),
                "caught_up_in_s": round(r1 - r0, 2),
                "delivered_samples_per_s_while_draining": round((delivered_after - delivered_before) / (r1 - r0)),
                "ingest_samples_per_s": round(collected_before / (time.time() - t0 + a.warmup)),
                "polls_steady": steady, "polls_while_draining": during,
            }
        remaining = a.seconds - (time.time() - t0)
        if remaining > 0:
            time.sleep(remaining)
        split1 = meter.split()
        cpu1 = sum(split1)
        t1 = time.time()
        if floor_proc is not None:
            floor = floor_result(floor_proc.communicate(timeout=60)[0], "beside the agent")
        try:
            polls_per_s = (metric(METRICS_PORT, "linetap_poll_duration_seconds_count") - polls0) / (t1 - t0)
            collected_per_s = (metric(METRICS_PORT, "linetap_samples_collected_total") - collected0) / (t1 - t0)
        except Exception:
            polls_per_s = collected_per_s = None
        rss = proc_peak_rss_mb(agent.pid)
        steady_rss = proc_rss_mb(agent.pid)
        # Resident memory of its own (heap, stacks) apart from the binary's file pages (clean,
        # shared, evictable: they grow with the binary, not with the line).
        anon_rss = proc_rss_mb(agent.pid, "RssAnon:")
        written, collected_total = None, 0.0
        metric_at_end = {}
        try:
            for line in http(f"http://127.0.0.1:{METRICS_PORT}/metrics").splitlines():
                if line.startswith("linetap_rtde_"):
                    name = line.split("{")[0].split()[0]
                    metric_at_end[name] = metric_at_end.get(name, 0) + float(line.split()[-1])
                if line.startswith("linetap_buffer_written_bytes_total "):
                    written = float(line.split()[1])
                if line.startswith("linetap_samples_collected_total"):
                    collected_total += float(line.split()[1])
        except Exception:
            pass  # an agent without /metrics (an older build): no disk figures
        agent.terminate()
        agent.wait(timeout=30)
        http(vm_url + "/internal/force_flush")
        time.sleep(1)
        # Values delivered with timestamps inside the measured window.
        series = '{__name__=~"bench_v[0-9]+"}' if a.listed else "bench_value"

        def count(series):
            q = f'sum(count_over_time({series}[{int(t1 - t0)}s]))'
            r = json.loads(http(vm_url + "/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": f"{t1:.3f}"})))
            res = r["data"]["result"]
            return float(res[0]["value"][1]) if res else 0.0
        delivered = count(series)
        modbus_delivered = delivered
        rtde = None
        if a.rtde:
            robots = count('{device=~"ur-[0-9]+", __name__!~"linetap_.*"}')
            delivered += robots
            rtde = {"robots": a.rtde, "frequency": a.rtde_frequency, "values_delivered": int(robots),
                    "values_per_s": round(robots / (t1 - t0)),
                    "packages_per_s": round(metric_at_end.get("linetap_rtde_packages_total", 0) / (t1 - t0 + a.warmup)),
                    "packages_skipped": int(metric_at_end.get("linetap_rtde_packages_skipped_total", 0)),
                    "clock_reanchors": int(metric_at_end.get("linetap_rtde_clock_reanchors_total", 0))}
        poll_s = poll_seconds(a.poll)
        expected = a.devices * 100 * (t1 - t0) / poll_s if poll_s > 0 else 0
        modbus_polls_expected = a.devices / poll_s if poll_s > 0 else 0
        cpu = cpu1 - cpu0
        per_million = cpu / (delivered / 1e6) if delivered else float("inf")
        print(json.dumps({
            "binary": os.path.relpath(BIN, ROOT), "binary_page_cache_evicted": evicted, "devices": a.devices, "seconds": round(t1 - t0, 1), "values_delivered": int(delivered),
            "values_expected": int(expected), "delivery_ratio": round(modbus_delivered / expected, 4) if expected else None,
            "agent_cpu_seconds": round(cpu, 4), "agent_cpu_measured_by": meter.source(), "agent_user_s": round(split1[0] - split0[0], 2), "agent_system_s": round(split1[1] - split0[1], 2), "cpu_seconds_per_million_values": round(per_million, 4),
            "startup_s_to_first_sample": round(startup, 2) if startup is not None else None,
            "config_bytes": cfg_bytes,
            "agent_peak_rss_mb": round(rss, 1), "agent_anon_rss_mb_at_end": round(anon_rss, 1), "agent_rss_mb_at_end": round(steady_rss, 1), "cpu_percent_of_one_core": round(100 * cpu / (t1 - t0), 2),
            "drain": drain,
            "buffer_bytes_written_per_million_samples": round(written / (collected_total / 1e6)) if written and collected_total else None,
            "values_per_s": round(delivered / (t1 - t0)),
            "polls_per_s": round(polls_per_s) if polls_per_s is not None else None,
            "samples_collected_per_s": round(collected_per_s) if collected_per_s is not None else None,
            "modbus_values_delivered": int(modbus_delivered),
            "modbus_polls_share_of_expected": round(polls_per_s / modbus_polls_expected, 4)
                if polls_per_s is not None and modbus_polls_expected else None,
            "rtde": rtde,
            "floor": floor,
            "ratio_to_floor": round(per_million / floor["cpu_seconds_per_million_values"], 3)
                if floor and floor.get("cpu_seconds_per_million_values") else None,
        }))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except Exception:
                    p.kill()
        meter.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
