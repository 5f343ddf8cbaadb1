#!/usr/bin/env python3
"""What naming the GIL holder's code costs in the kernel, counted, not timed.

The wait probe (ebpf/gil_wait.bpf.c, one program on sched_switch) now also
walks the holder's Python frames when a take wait begins. Two workloads run
under `gilscope check -- …` for each binary given, with
kernel.bpf_stats_enabled=1, and the program's run count and run time are read
with `bpftool prog show -j` before and after:

  ping-pong (tests/workloads/pingpong.py): ~1-2 M GIL drop/take a second, never
      contended: the program must run a vanishing share of that rate (it runs on
      context switches, never on the GIL fast path);
  4 CPU threads (tests/workloads/cpu_threads.py 4): contended hand-overs, where
      the capture runs: ns per program run, beside the same count of a binary
      without the capture.

Usage: tests/bench/attribution_cost.py --gilscope NEW [--gilscope OLD ...] [--seconds 4]
The sysctl is restored at the end.
"""
import argparse
import os
import subprocess
import time

from benchlib import RATE, default_python, program_totals

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKLOADS = os.path.join(ROOT, "tests", "workloads")
STATS = "/proc/sys/kernel/bpf_stats_enabled"
PROGRAM = "sched_switch"


def totals():
    """(runs, ns) of every loaded program named sched_switch."""
    return program_totals((PROGRAM,))


def measure(gilscope, python, workload, args):
    """Runs the workload under check; (program runs, ns, workload ops/s, wall s)."""
    cmd = [gilscope, "check", "--output", os.devnull, "--", python,
           os.path.join(WORKLOADS, workload), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The program is loaded once check attached: sample the counters while it lives.
    first = None
    last = (0, 0)
    while proc.poll() is None:
        now = totals()
        if now[0] and first is None:
            first = now
        if now[0]:
            last = now
        time.sleep(0.2)
    out, err = proc.communicate()
    first = first or (0, 0)
    rate = RATE.search(out + err)
    return last[0] - first[0], last[1] - first[1], float(rate.group(1)) if rate else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gilscope", action="append", required=True)
    ap.add_argument("--python", default=default_python())
    ap.add_argument("--seconds", default="4")
    a = ap.parse_args()
    before = open(STATS).read().strip()
    with open(STATS, "w") as f:
        f.write("1")
    try:
        for g in a.gilscope:
            for name, wl, args in [("ping-pong", "pingpong.py", [a.seconds]),
                                   ("4 CPU threads", "cpu_threads.py", ["4", a.seconds])]:
                runs, ns, rate = measure(g, a.python, wl, args)
                per_run = ns / runs if runs else 0.0
                secs = float(a.seconds)
                share = (runs / secs) / rate if rate else 0.0
                print(f"{g}: {name}: {runs} program runs ({runs / secs:,.0f}/s, "
                      f"{per_run:,.0f} ns a run); workload {rate:,.0f} ops/s; "
                      f"runs per op {share:.5f}")
    finally:
        with open(STATS, "w") as f:
            f.write(before)


if __name__ == "__main__":
    main()
