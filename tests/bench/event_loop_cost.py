#!/usr/bin/env python3
"""What the event-loop probe (ebpf/event_loop.bpf.c) costs, measured two ways.

(a) A neighbour that is NOT watched and calls epoll_wait(timeout 0) several
    hundred thousand times a second (tests/bench/epoll_spin.py), while
    `gilscope check --pid` watches another (idle) Python process:
      - mechanism: the probe's programs' run count and run time during the
        spin (kernel.bpf_stats_enabled=1, `bpftool prog show -j`);
      - wall: the spinner's ns per call, in interleaved pairs without and with
        the check running (stats off).
(b) A watched, healthy asyncio server under load (tests/workloads/healthy_loop.py,
    50 connections from a client process that is not watched):
      - mechanism: the programs' runs per second and ns per run;
      - wall: the client's requests/s without and with `gilscope check --pid SERVER`.
(c) The worst case of a watched loop: epoll_spin.py itself watched (nothing but
    the probed call): ns per epoll_wait(0) without and with `gilscope check --pid`,
    the uprobe + uretprobe's cost per iteration.

The sysctl is restored to its previous value at the end.
Usage: tests/bench/event_loop_cost.py [--pairs 5] [--seconds 4] [--python PATH] [--gilscope PATH]
                                      [--only abc] [--agent check|run] [--against-check]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import default_python, program_totals

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPIN = os.path.join(ROOT, "tests", "bench", "epoll_spin.py")
SERVER = os.path.join(ROOT, "tests", "workloads", "healthy_loop.py")
PROGRAMS = ("poll_enter", "poll_return")
STATS = "/proc/sys/kernel/bpf_stats_enabled"


def prog_stats():
    """(runs, ns) summed over the event-loop probe's programs now loaded."""
    return program_totals(PROGRAMS)


class Check:
    """The agent watching process PID in the background while inside the block:
    `gilscope check --pid PID`, or with --agent run the daemon as shipped
    (`gilscope run`, limited to that process), with the loop probe or without."""

    def __init__(self, args, pid, seconds, loops=True):
        if args.agent == "run":
            self.cmd = [args.gilscope, "run", "--duration", str(seconds), "--include-cmdline",
                        rf"^\S+ {re.escape(SERVER)}|{re.escape(SPIN)}",
                        "--interval", "5s"] + (["--event-loops"] if loops else [])
        else:
            self.cmd = [args.gilscope, "check", "--pid", str(pid), "--duration", str(seconds),
                        "--output", os.devnull] + ([] if loops else ["--no-event-loops"])

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)  # loaded and attached (BTF parsing takes a moment)
        if self.proc.poll() is not None:
            sys.exit(f"gilscope ended early: {self.proc.stderr.read()}")
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


def spin(args):
    out = subprocess.run([args.python, SPIN, str(args.seconds)], capture_output=True, text=True)
    return json.loads(out.stdout)


def unwatched_neighbour(args):
    idle = subprocess.Popen([args.python, "-c", "import time; time.sleep(3600)"])
    try:
        with Check(args, idle.pid, 3600):
            set_stats(1)
            before = prog_stats()
            s = spin(args)
            after = prog_stats()
            set_stats(0)
        runs, ns = after[0] - before[0], after[1] - before[1]
        print(f"(a) mechanism: {s['calls']} epoll_wait calls by an unwatched process; "
              f"event-loop programs ran {runs} times ({ns} ns)")
        without, with_ = [], []
        for i in range(args.pairs):
            order = [False, True] if i % 2 == 0 else [True, False]
            for watched in order:
                if watched:
                    with Check(args, idle.pid, 3600):
                        with_.append(spin(args)["ns_per_call"])
                else:
                    without.append(spin(args)["ns_per_call"])
        print(f"(a) wall: ns per epoll_wait(0) of the unwatched spinner, median of {args.pairs}: "
              f"{statistics.median(without):.0f} without, {statistics.median(with_):.0f} with "
              f"gilscope check running (spread {min(without):.0f}-{max(without):.0f} / "
              f"{min(with_):.0f}-{max(with_):.0f})")
    finally:
        idle.kill()
        idle.wait()


def start_server(args, seconds):
    portfile = os.path.join(tempfile.mkdtemp(prefix="gilscope-loop-"), "port")
    server = subprocess.Popen([args.python, SERVER, "serve", portfile, str(seconds)])
    while not os.path.exists(portfile):
        if server.poll() is not None:
            sys.exit("healthy_loop.py serve ended early")
        time.sleep(0.05)
    with open(portfile) as f:
        return server, f.read().strip()


def load(args, port):
    out = subprocess.run([args.python, SERVER, "load", port, "50", str(args.seconds)],
                         capture_output=True, text=True)
    return float(out.stdout.split()[0])


def watched_server(args):
    server, port = start_server(args, 3600)
    try:
        with Check(args, server.pid, 3600):
            set_stats(1)
            before, t = prog_stats(), time.monotonic()
            rate = load(args, port)
            after, elapsed = prog_stats(), time.monotonic() - t
            set_stats(0)
        runs, ns = after[0] - before[0], after[1] - before[1]
        print(f"(b) mechanism: server at {rate:.0f} requests/s; programs ran "
              f"{runs / elapsed:.0f} times/s at {ns / max(runs, 1):.0f} ns a run "
              f"({ns / elapsed / 1e6:.2f} ms of CPU per s)")
        without, with_ = [], []
        for i in range(args.pairs):
            order = [False, True] if i % 2 == 0 else [True, False]
            for watched in order:
                if watched:
                    with Check(args, server.pid, 3600):
                        with_.append(load(args, port))
                elif args.against_check:
                    with Check(args, server.pid, 3600, loops=False):
                        without.append(load(args, port))
                else:
                    without.append(load(args, port))
        ratio = statistics.median(w / x for w, x in zip(without, with_))
        base = f"{args.agent} without the loop probe" if args.against_check else "without"
        print(f"(b) wall: requests/s, median of {args.pairs}: {statistics.median(without):.0f} "
              f"{base}, {statistics.median(with_):.0f} with gilscope {args.agent}; median slowdown "
              f"{ratio:.3f} (spread {min(without):.0f}-{max(without):.0f} / "
              f"{min(with_):.0f}-{max(with_):.0f})")
    finally:
        server.kill()
        server.wait()


def spin_watched(args, watched):
    """ns per epoll_wait(0) of a spinner, watched by `gilscope check` or not."""
    delay = 2.5  # the check is loaded and attached before the spinning starts
    proc = subprocess.Popen([args.python, SPIN, str(args.seconds), "1", str(delay)],
                            stdout=subprocess.PIPE, text=True)
    check = None
    if watched:
        check = subprocess.Popen([args.gilscope, "check", "--pid", str(proc.pid), "--duration",
                                  str(args.seconds + delay + 5), "--output", os.devnull],
                                 stderr=subprocess.DEVNULL)
    out, _ = proc.communicate()
    if check:
        check.terminate()
        check.wait()
    return json.loads(out)["ns_per_call"]


def watched_spinner(args):
    without, with_ = [], []
    for i in range(args.pairs):
        order = [False, True] if i % 2 == 0 else [True, False]
        for watched in order:
            (with_ if watched else without).append(spin_watched(args, watched))
    added = statistics.median(w - x for w, x in zip(with_, without))
    print(f"(c) wall: ns per epoll_wait(0) of a WATCHED spinner, median of {args.pairs}: "
          f"{statistics.median(without):.0f} without, {statistics.median(with_):.0f} with; "
          f"median added per call (pairs) {added:.0f} ns (spread {min(without):.0f}-"
          f"{max(without):.0f} / {min(with_):.0f}-{max(with_):.0f})")


def set_stats(value):
    with open(STATS, "w") as f:
        f.write(str(value))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--python", default=default_python())
    p.add_argument("--gilscope", default=os.path.join(ROOT, "target", "release", "gilscope"))
    p.add_argument("--only", default="abc")
    p.add_argument("--agent", choices=("check", "run"), default="check",
                   help="the agent that watches: `gilscope check --pid` or the daemon")
    p.add_argument("--against-check", action="store_true",
                   help="(b): compare with the agent running without the loop probe, not with "
                        "nothing: what the loop probe adds to the rest of the agent")
    args = p.parse_args()
    with open(STATS) as f:
        previous = f.read().strip()
    try:
        if "a" in args.only:
            unwatched_neighbour(args)
        if "b" in args.only:
            watched_server(args)
        if "c" in args.only:
            watched_spinner(args)
    finally:
        set_stats(previous)


main()
