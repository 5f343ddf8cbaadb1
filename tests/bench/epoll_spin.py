"""A program that calls epoll_wait(timeout 0) as fast as it can: the poll-heavy
neighbour of the event-loop probe's cost benchmark (tests/bench/event_loop_cost.py).

Unwatched, it shows what the probe costs the other processes of a node (its
uprobes live in the watched processes only: nothing); watched, it is the worst
case of a watched loop (nothing but the probed call, so the uprobe and
uretprobe's cost per call is the whole difference). Each thread spins on its
own epoll instance (one registered, never-ready pipe); the total rate is
printed at the end.

Usage: epoll_spin.py [seconds=10] [threads=1] [delay=0]
  delay: seconds to sleep before spinning (time for an agent to attach to it).
Prints: one JSON line {"calls": N, "seconds": S, "calls_per_s": R, "ns_per_call": T}
"""
import json
import os
import select
import sys
import threading
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
counts = [0] * threads


def spin(i, deadline):
    ep = select.epoll()
    r, _ = os.pipe()
    ep.register(r, select.EPOLLIN)
    poll = ep.poll
    n = 0
    # Check the clock every 4096 calls: the loop is the syscall, not time.monotonic().
    while True:
        for _ in range(4096):
            poll(0)
        n += 4096
        if time.monotonic() >= deadline:
            break
    counts[i] = n


time.sleep(delay)
start = time.monotonic()
deadline = start + seconds
workers = [threading.Thread(target=spin, args=(i, deadline)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
elapsed = time.monotonic() - start
calls = sum(counts)
print(
    json.dumps(
        {
            "calls": calls,
            "seconds": round(elapsed, 3),
            "calls_per_s": round(calls / elapsed),
            "ns_per_call": round(elapsed * threads * 1e9 / calls, 1),
        }
    )
)
