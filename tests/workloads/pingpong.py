"""One thread ping-ponging a byte through a pipe: ~1-2 M GIL release/acquire a second.

Every os.write/os.read drops and retakes the GIL, never contended. Truth: zero
GIL waits. Prints the loop rate, which the overhead benchmark compares.
Usage: pingpong.py [seconds=2]
"""
import os
import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
r, w = os.pipe()
n = 0
cpu_start = time.process_time()
start = time.perf_counter()
deadline = start + seconds
while True:
    for _ in range(1000):
        os.write(w, b"x")
        os.read(r, 1)
    n += 1000
    if time.perf_counter() >= deadline:
        break
elapsed = time.perf_counter() - start
cpu = time.process_time() - cpu_start
print(f"{n / elapsed:.0f} round trips/s ({n / cpu:.0f} per CPU-s)")
