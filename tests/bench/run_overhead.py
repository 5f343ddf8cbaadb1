#!/usr/bin/env python3
"""Cost of `gilscope run`: agent CPU and RSS while it watches N Python processes
of T threads each, and OTLP bytes on the wire per process per interval.

The agent exports to rotel through a small TCP proxy that counts the bytes in
both directions (HTTP/2 framing and gzip included: what a thin link carries).
Usage (root): run_overhead.py --processes 20 --threads 4 --seconds 60 [--interval 10]
Prints one JSON line; BENCHMARKS.md quotes it. `agent_cpu_by_thread_name` splits
the agent's CPU by thread name (main loop `gilscope`, samplers, exporter), from
/proc/AGENT/task/*/stat at the start and end of the measurement.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECEIVERS = os.environ.get("GILSCOPE_RECEIVERS", "/var/cache/gilscope/receivers")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingProxy:
    """Forwards 127.0.0.1:listen -> 127.0.0.1:target and counts bytes each way."""

    def __init__(self, listen, target):
        self.port = listen
        self.up = 0
        self.down = 0
        self.lock = threading.Lock()
        self.target = target
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", listen))
        self.server.listen(16)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self.pipe, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self.pipe, args=(upstream, client, "down"), daemon=True).start()

    def pipe(self, src, dst, way):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    setattr(self, way, getattr(self, way) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def counted_blackhole():
    """rotel taking OTLP and discarding it, behind a CountingProxy: the far end of
    the link whose bytes a benchmark counts. Returns (rotel, proxy); the agent
    exports OTLP/gRPC to 127.0.0.1:proxy.port."""
    grpc, http = free_port(), free_port()
    rotel = subprocess.Popen([os.path.join(RECEIVERS, "bin/rotel"), "start",
                              "--otlp-grpc-endpoint", f"127.0.0.1:{grpc}",
                              "--otlp-http-endpoint", f"127.0.0.1:{http}",
                              "--exporter", "blackhole"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    return rotel, CountingProxy(free_port(), grpc)


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu_s(pid):
    """CPU seconds of each live thread of `pid`, by tid: {tid: (name, seconds)}."""
    out = {}
    task = f"/proc/{pid}/task"
    for tid in os.listdir(task):
        try:
            with open(f"{task}/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue  # exited meanwhile
        fields = rest.split()
        out[tid] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / TICK)
    return out


def cpu_by_thread_name(before, after, wall):
    """Share of one core per thread name between two `thread_cpu_s` readings
    (threads of one name, e.g. one sampler per process, are added up)."""
    shares = {}
    for tid, (name, s1) in after.items():
        s0 = before.get(tid, (name, 0.0))[1]
        shares[name] = shares.get(name, 0.0) + (s1 - s0) / wall
    return {n: round(v, 4) for n, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=12)
    ap.add_argument("--python", default="python3")
    ap.add_argument("--gilscope", default=os.path.join(ROOT, "target/release/gilscope"))
    ap.add_argument("--extra", default="", help="more gilscope run flags")
    args = ap.parse_args()

    tag = f"bench{os.getpid()}"
    total = args.warmup + args.seconds + 10
    workloads = [
        subprocess.Popen([args.python, os.path.join(ROOT, "tests/workloads/idle_threads.py"),
                          str(args.threads), str(total), tag],
                         env=dict(os.environ, OTEL_SERVICE_NAME=f"bench-{i}"))
        for i in range(args.processes)
    ]
    rotel, proxy = counted_blackhole()
    agent = subprocess.Popen([args.gilscope, "run", "--interval", f"{args.interval}s",
                              "--endpoint", f"http://127.0.0.1:{proxy.port}",
                              "--include-cmdline", tag] + args.extra.split(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(args.warmup)
        c0, b0, t0 = cpu_s(agent.pid), proxy.up + proxy.down, time.monotonic()
        threads0 = thread_cpu_s(agent.pid)
        rss = []
        end = t0 + args.seconds
        while time.monotonic() < end:
            time.sleep(1)
            rss.append(rss_mb(agent.pid))
        c1, b1, t1 = cpu_s(agent.pid), proxy.up + proxy.down, time.monotonic()
        threads1 = thread_cpu_s(agent.pid)
    finally:
        agent.terminate()
        t_stop = time.monotonic()
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
        stop_s = time.monotonic() - t_stop
        rotel.terminate()
        for w in workloads:
            w.kill()
    wall = t1 - t0
    intervals = wall / args.interval
    result = {
        "processes": args.processes,
        "threads_per_process": args.threads,
        "interval_s": args.interval,
        "measured_s": round(wall, 1),
        "agent_cpu_share_of_one_core": round((c1 - c0) / wall, 4),
        "agent_cpu_by_thread_name": cpu_by_thread_name(threads0, threads1, wall),
        "agent_threads": len(threads1),
        "agent_rss_mb_max": round(max(rss), 1),
        "wire_bytes_per_process_per_interval": round((b1 - b0) / intervals / args.processes),
        "wire_bytes_per_process_per_hour": round((b1 - b0) / wall * 3600 / args.processes),
        "agent_stop_s": round(stop_s, 2),
        "extra_flags": args.extra,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
