#!/usr/bin/env python3
"""What contention spans cost the watched program: the 4-thread CPU workload under
`gilscope run` with spans on (episode records from the kernel) and with --no-spans,
in interleaved pairs; prints the median per-CPU-second loop rates and their ratio
(without / with; 1.000 = free).

The endpoint need not listen: the kernel records, the drain and the span building
happen either way (unsent spans are retried and dropped in the agent, not in the
workload). Usage: tests/bench/spans_overhead.py [--pairs 5] [--endpoint URL] [--gilscope PATH]
"""
import argparse
import os
import re
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RATE = re.compile(r"([\d.]+) loops/s \(([\d.]+) per CPU-s\)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--endpoint", default="http://127.0.0.1:4317")
    p.add_argument("--python", default=os.path.expanduser("~/.pyenv/versions/3.11.7/bin/python3.11"))
    p.add_argument("--gilscope", default=os.path.join(ROOT, "target", "release", "gilscope"))
    a = p.parse_args()
    workload = os.path.join(ROOT, "tests", "workloads", "cpu_threads.py")
    rates = {"spans": [], "no-spans": []}
    for i in range(a.pairs):
        for mode in (["spans", "no-spans"] if i % 2 == 0 else ["no-spans", "spans"]):
            mark = f"spansbench{os.getpid()}x{i}{mode}"
            cmd = [a.gilscope, "run", "--endpoint", a.endpoint, "--include-cmdline", mark,
                   "--interval", "1s", "--poll", "50ms", "--duration", f"{a.seconds + 4}s"]
            if mode == "no-spans":
                cmd.append("--no-spans")
            daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.8)  # loaded and attached before the workload starts
            out = subprocess.run([a.python, workload, "4", str(a.seconds), mark],
                                 stdout=subprocess.PIPE, text=True).stdout
            rates[mode].append(float(RATE.findall(out)[-1][1]))
            daemon.wait()
    with_, without = statistics.median(rates["spans"]), statistics.median(rates["no-spans"])
    print(f"per-CPU-s loop rate, median of {a.pairs}: spans {with_:,.0f}  no-spans {without:,.0f}")
    print(f"ratio without/with = {without / with_:.3f} (1.000 = free)")


if __name__ == "__main__":
    main()
