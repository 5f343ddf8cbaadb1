#!/usr/bin/env python3
"""What gilscope costs the program it watches, measured side by side.

Runs each workload in interleaved pairs (without gilscope, with gilscope attached
from the start via `gilscope check -- ...`), alternating which goes first, and
prints the median slowdown ratio (rate without / rate with; 1.00 = free):

  (a) one thread ping-ponging a pipe: ~2 M GIL drops and takes a second
  (b) four CPU-bound threads serialized by the GIL
  (c) = (a) under --precise (uprobes on take_gil/drop_gil), to show why it is opt-in
  (d) free-threaded 3.13t, GIL off: four threads appending to one list, contending
      on its PyMutex (what the _PyParkingLot_Park uprobes cost); skipped, with a
      line saying so, when 3.13t is not built

Usage: tests/bench/overhead.py [--pairs 5] [--seconds 3] [--python PATH] [--gilscope PATH]
                               [--only abcd] [--gilscope-args '--sample-hz 10']
"""
import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKLOADS = os.path.join(ROOT, "tests", "workloads")
from benchlib import RATE, default_python


def rate_of(cmd):
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    found = RATE.findall(out.stdout)
    if not found:
        sys.exit(f"no rate printed by: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    wall_rate, cpu_rate = found[-1]
    return float(wall_rate), float(cpu_rate)


def free_threaded_python():
    script = os.path.join(ROOT, "tests", "interpreters", "build-cpython.sh")
    out = subprocess.run(["bash", script, "--print-path", "3.13t"], stdout=subprocess.PIPE, text=True)
    path = out.stdout.strip()
    return path if out.returncode == 0 and os.path.exists(path) else None


def measure(name, python, workload, gilscope_args, args):
    plain = [python] + workload
    watched = [args.gilscope, "check", "--output", os.devnull] + gilscope_args + ["--"] + plain
    wall, cpu = [], []
    for i in range(args.pairs):
        if i % 2 == 0:
            without, with_ = rate_of(plain), rate_of(watched)
        else:
            with_, without = rate_of(watched), rate_of(plain)
        wall.append(without[0] / with_[0])
        cpu.append(without[1] / with_[1])
        print(f"  {name} pair {i + 1}: without {without[0]:,.0f}/s  with {with_[0]:,.0f}/s  "
              f"wall slowdown {wall[-1]:.3f}  CPU-time slowdown {cpu[-1]:.3f}", flush=True)
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--python", default=default_python())
    parser.add_argument("--gilscope", default=os.path.join(ROOT, "target", "release", "gilscope"))
    parser.add_argument("--only", default="abcd", help="cases to run, e.g. 'b'")
    parser.add_argument("--gilscope-args", default="", help="extra gilscope check flags, e.g. '--sample-hz 10'")
    args = parser.parse_args()
    secs = str(args.seconds)
    py = args.python
    cases = [
        ("(a) ping-pong, default", py, [os.path.join(WORKLOADS, "pingpong.py"), secs], [], 1.02),
        ("(b) 4 CPU threads, default", py, [os.path.join(WORKLOADS, "cpu_threads.py"), "4", secs], [], 1.01),
        ("(c) ping-pong, --precise", py, [os.path.join(WORKLOADS, "pingpong.py"), secs], ["--precise"], None),
    ]
    ft = free_threaded_python()
    if ft:
        cases.append(("(d) 3.13t shared list, default", ft,
                      [os.path.join(WORKLOADS, "shared_list.py"), "4", secs], [], None))
    else:
        print("(d) skipped: CPython 3.13t not built (bash tests/interpreters/build-cpython.sh 3.13t)")
    print(f"python: {args.python}\ngilscope: {args.gilscope}\npairs: {args.pairs}, {secs} s a run\n")
    cases = [c for c in cases if c[0][1] in args.only]
    results = []
    for name, python, workload, extra, target in cases:
        extra = extra + args.gilscope_args.split()
        wall, cpu = measure(name, python, workload, extra, args)
        results.append((name, wall, cpu, target))
    print("\nmedian slowdown = rate without gilscope / rate with it (1.000 = free):")
    print(f"  {'case':<28} {'wall':>7} {'CPU-time':>9}  target")
    for name, wall, cpu, target in results:
        w, c = statistics.median(wall), statistics.median(cpu)
        verdict = "-" if target is None else "<= %.2f: %s" % (target, "met" if max(w, c) <= target else "MISSED")
        print(f"  {name:<28} {w:7.3f} {c:9.3f}  {verdict}")
    print("\nwall: loop rate over elapsed time (what a user feels; noisy on a shared VM).")
    print("CPU-time: loop rate per CPU-second of the workload (probe work done in its context counts).")


if __name__ == "__main__":
    main()
