"""N threads appending to one shared list: on a free-threaded build they contend
on the list's PyMutex (critical section) instead of the GIL.

Truth: with the GIL off, threads park on the list's lock; with it on, they
wait for the GIL instead.
Prints the append rate, which the overhead benchmark compares.
Usage: shared_list.py [threads=4] [seconds=3]
"""
import sys
import threading
import time

from rate import Rate

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 4
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
deadline = time.monotonic() + seconds
shared = []
appends = [0] * threads


def append(index):
    n = 0
    while time.monotonic() < deadline:
        for i in range(1000):
            shared.append(i)
        n += 1000
        if len(shared) > 1_000_000:
            shared.clear()
    appends[index] = n


rate = Rate()
workers = [
    threading.Thread(target=append, args=(i,), name=f"append-{i}") for i in range(threads)
]
for w in workers:
    w.start()
for w in workers:
    w.join()
rate.report(sum(appends), "appends")
