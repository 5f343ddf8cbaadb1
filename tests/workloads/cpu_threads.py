"""N CPU-bound threads for a fixed time: the GIL serializes them.

Truth: the GIL is held ~100% of the time; with 4 threads each waits ~75%.
Prints the total loop rate, which the overhead benchmark compares.
Usage: cpu_threads.py [threads=4] [seconds=5]
"""
import sys
import threading
import time

from rate import Rate

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 4
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
deadline = time.monotonic() + seconds


loops = [0] * threads


def spin(index):
    n = 0
    while time.monotonic() < deadline:
        for _ in range(1000):
            n += 1
    loops[index] = n


rate = Rate()
workers = [threading.Thread(target=spin, args=(i,), name=f"cpu-{i}") for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
rate.report(sum(loops), "loops")
