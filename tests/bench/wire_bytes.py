#!/usr/bin/env python3
"""Bytes on the wire of `gilscope run`: the default export against the same data
sent as cumulative OTLP/gRPC + gzip with 8192 data points a request (the
OpenTelemetry Collector's batch default). The issue's target: ratio <= 0.5.

One set of Python processes runs for the whole benchmark, a mix where some
series change every interval and some never do:
  1 CPU-bound process (3 threads fighting for the GIL),
  4 I/O processes (4 threads blocked on pipes, woken every 10 ms),
  9 quiet services (4 threads waking every 100 ms for a little work),
  6 idle processes (one thread asleep).
Each side starts its own `gilscope run` exporting through a TCP proxy in front of
rotel (blackhole exporter); the proxy counts every byte both ways (HTTP/2
framing, gRPC, compression: what a thin link carries). After a warm-up, the
bytes over `--seconds` are normalized to bytes per watched process per hour.
The sides alternate (A B A B ...) for `--rounds` rounds and the ratio is taken
of the summed bytes, so a drift in the workloads affects both sides alike.

Usage (root): wire_bytes.py [--seconds 120] [--interval 10] [--rounds 1]
                            [--default-args "..."] [--baseline-args "..."]
Prints a line per side and round, then one JSON line; BENCHMARKS.md quotes it.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_overhead import counted_blackhole  # noqa: E402  (same folder)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKLOADS = os.path.join(ROOT, "tests/workloads")
BASELINE_CONFIG = (
    "export:\n  compression: gzip\n  temporality: cumulative\n  batch_size: 8192\n"
    "  encoding: standard\n"
)


def start_workloads(python, seconds, tag):
    """The process mix; every command line carries `tag` for the include rule."""
    s = str(seconds)
    cmds = [[python, f"{WORKLOADS}/cpu_threads.py", "3", s, tag]]
    cmds += [[python, f"{WORKLOADS}/io_threads.py", "4", s, tag]] * 4
    cmds += [[python, f"{WORKLOADS}/idle_threads.py", "4", s, tag]] * 9
    cmds += [[python, "-c", f"import time; time.sleep({s})", tag]] * 6
    return [
        subprocess.Popen(c, env=dict(os.environ, OTEL_SERVICE_NAME=f"wire-{i}"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i, c in enumerate(cmds)
    ]


def one_side(args, proxy, tag, flags):
    """Runs one agent; returns (bytes counted over the window, window seconds,
    export failures the agent logged: bytes of rejected requests count too)."""
    log = tempfile.TemporaryFile()
    agent = subprocess.Popen([args.gilscope, "run", "--interval", f"{args.interval}s",
                              "--endpoint", f"http://127.0.0.1:{proxy.port}",
                              "--include-cmdline", tag] + flags,
                             stdout=subprocess.DEVNULL, stderr=log)
    try:
        time.sleep(args.warmup)
        if agent.poll() is not None:
            log.seek(0)
            raise SystemExit(f"gilscope run exited: {log.read().decode()}")
        b0, t0 = proxy.up + proxy.down, time.monotonic()
        time.sleep(args.seconds)
        b1, t1 = proxy.up + proxy.down, time.monotonic()
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
    log.seek(0)
    failures = sum(1 for line in log.read().decode(errors="replace").splitlines()
                   if "failing" in line)
    return b1 - b0, t1 - t0, failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120, help="measured window per side and round")
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=15)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--python", default="python3")
    ap.add_argument("--gilscope", default=os.path.join(ROOT, "target/release/gilscope"))
    ap.add_argument("--default-args", default="", help="flags for the 'default' side")
    ap.add_argument("--baseline-args", default="", help="more flags for the baseline side")
    args = ap.parse_args()

    tag = f"wire{os.getpid()}"
    per_side = args.warmup + args.seconds + 5
    workloads = start_workloads(args.python, 2 * args.rounds * per_side + 30, tag)
    rotel, proxy = counted_blackhole()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(BASELINE_CONFIG)
        baseline_config = f.name
    sides = {
        "default": args.default_args.split(),
        "baseline": ["--config", baseline_config] + args.baseline_args.split(),
    }
    totals = {k: [0, 0.0] for k in sides}
    try:
        for r in range(args.rounds):
            order = ["default", "baseline"] if r % 2 == 0 else ["baseline", "default"]
            for side in order:
                b, t, failures = one_side(args, proxy, tag, sides[side])
                if failures:
                    raise SystemExit(f"{side}: the receiver rejected requests "
                                     f"({failures} warnings): bytes would not be comparable")
                totals[side][0] += b
                totals[side][1] += t
                hourly = b / t * 3600 / len(workloads)
                print(f"round {r + 1} {side:8s}: {b:8d} bytes in {t:5.1f} s = "
                      f"{hourly / 1000:7.1f} KB / process / hour", flush=True)
    finally:
        rotel.terminate()
        for w in workloads:
            w.kill()
        os.unlink(baseline_config)
    per_hour = {k: b / t * 3600 / len(workloads) for k, (b, t) in totals.items()}
    result = {
        "processes": len(workloads),
        "interval_s": args.interval,
        "measured_s_per_side": round(totals["default"][1], 1),
        "default_bytes_per_process_per_hour": round(per_hour["default"]),
        "baseline_bytes_per_process_per_hour": round(per_hour["baseline"]),
        "ratio": round(per_hour["default"] / per_hour["baseline"], 3),
        "target": "<= 0.5",
        "default_args": args.default_args,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
