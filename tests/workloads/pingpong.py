"""One thread ping-ponging a byte through a pipe: ~1-2 M GIL release/acquire a second.

Every os.write/os.read drops and retakes the GIL, never contended. Truth: zero
GIL waits. Prints the loop rate, which the overhead benchmark compares.
Usage: pingpong.py [seconds=2]
"""
import os
import sys
import time

from rate import Rate

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
r, w = os.pipe()
n = 0
rate = Rate()
deadline = rate.start + seconds
while True:
    for _ in range(1000):
        os.write(w, b"x")
        os.read(r, 1)
    n += 1000
    if time.perf_counter() >= deadline:
        break
rate.report(n, "round trips")
